//! The outer format, whole: plain VXLAN (RFC 7348), sealed VXLAN, and how a received datagram
//! is told apart from a handshake message, into and out of caller-provided buffers.
//!
//! Plain: on send the header carries the I flag and every reserved bit zero. On receipt the I
//! flag is required and the reserved bits are ignored, as section 5 of the RFC says, so that a
//! Linux `vxlan` device or Open vSwitch on the other end interoperates in both directions.
//!
//! Sealed (`docs/wire.md` has the diagram): the VXLAN header with the S bit (0x40) beside the
//! I flag, the receiver's session index and the 64-bit counter, all authenticated as associated
//! data, then the inner frame encrypted with ChaCha20-Poly1305 and its 16-byte tag. No VXLAN
//! extension assigns the S bit, so a plain receiver such as a Linux `vxlan` device drops a
//! sealed datagram instead of delivering it. Handshake messages start with a byte no VXLAN
//! header has (0xC1, 0xC2, 0xC3: both reserved high bits set).

use core::ops::Range;

use crate::switch::DropReason;
use crate::wire::{ETHERNET_HEADER_LEN, Vni, VxlanHeader};

/// Length of the VXLAN header.
pub const VXLAN_HEADER_LEN: usize = 8;
/// The IANA-assigned VXLAN UDP port.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN over IPv4 adds to an inner frame on the underlay: outer IPv4 (20), UDP (8),
/// VXLAN (8) and the inner Ethernet header (14). 1500 - 50 is the default inner MTU of 1450.
pub const VXLAN_IPV4_OVERHEAD: usize = 50;

/// The flags byte of a sealed datagram: the I flag and the S bit.
pub const SEALED_FLAGS: u8 = 0x48;
/// The sealed header: the VXLAN header, the receiver's index (4 bytes) and the counter (8),
/// authenticated as associated data.
pub const SEALED_HEADER_LEN: usize = 20;
/// The authentication tag after the encrypted frame.
pub const SEALED_TAG_LEN: usize = crypto::TAG_LEN;
/// Bytes a sealed datagram carries beyond a plain one: 12 of header and 16 of tag. The default
/// inner MTU of a sealed network on a 1500-byte IPv4 underlay is 1450 - 28 = 1422.
pub const SEALED_OVERHEAD: usize = SEALED_HEADER_LEN - VXLAN_HEADER_LEN + SEALED_TAG_LEN;

/// What a datagram received on the VXLAN port is, by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain VXLAN (or anything else that is not the below: decapsulation judges it).
    Plain,
    /// A sealed datagram.
    Sealed,
    /// A handshake message for the session layer.
    Handshake,
}

/// Tells a received datagram's kind from its first byte.
pub fn classify(datagram: &[u8]) -> Kind {
    match datagram.first() {
        Some(&SEALED_FLAGS) => Kind::Sealed,
        Some(0xc1..=0xc3) => Kind::Handshake,
        _ => Kind::Plain,
    }
}

/// The parsed header of a sealed datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedHeader {
    /// The network.
    pub vni: Vni,
    /// The receiver's index of the session the datagram was sealed under.
    pub receiver: u32,
    /// The counter it was sealed with (its top byte is the sender's lane).
    pub counter: u64,
}

impl SealedHeader {
    /// Writes the header into the first [`SEALED_HEADER_LEN`] bytes of `buf`.
    pub fn write(&self, buf: &mut [u8; SEALED_HEADER_LEN]) {
        buf[..VXLAN_HEADER_LEN].copy_from_slice(&encap_header(self.vni));
        buf[0] = SEALED_FLAGS;
        buf[8..12].copy_from_slice(&self.receiver.to_be_bytes());
        buf[12..20].copy_from_slice(&self.counter.to_be_bytes());
    }

    /// Reads the header of a sealed datagram. `Runt` when it cannot hold a header and a tag
    /// (with nothing between them it is a keepalive, which confirms a session), or holds less
    /// than an Ethernet header between them.
    pub fn read(datagram: &[u8]) -> Result<SealedHeader, DropReason> {
        let body = datagram
            .len()
            .checked_sub(SEALED_HEADER_LEN + SEALED_TAG_LEN)
            .ok_or(DropReason::Runt)?;
        if body != 0 && body < ETHERNET_HEADER_LEN {
            return Err(DropReason::Runt);
        }
        let be32 = |at: usize| {
            u32::from_be_bytes([
                datagram[at],
                datagram[at + 1],
                datagram[at + 2],
                datagram[at + 3],
            ])
        };
        let counter = (u64::from(be32(12)) << 32) | u64::from(be32(16));
        Ok(SealedHeader {
            vni: Vni::from_u24(be32(4) >> 8),
            receiver: be32(8),
            counter,
        })
    }
}

/// The first UDP source port used for tunnel packets (RFC 7348 recommends 49152..=65535).
pub const SOURCE_PORT_MIN: u16 = 49152;

/// The 8-byte header that prefixes every inner frame sent on `vni`.
pub fn encap_header(vni: Vni) -> [u8; VXLAN_HEADER_LEN] {
    let mut header = [0u8; VXLAN_HEADER_LEN];
    VxlanHeader::new_unchecked(&mut header[..]).fill(vni);
    header
}

/// Writes `header` followed by `frame` into `buf`, replacing its contents.
///
/// `buf` keeps its capacity between calls, so a reused buffer does not allocate once it has held
/// the largest datagram.
pub fn encap_into(header: &[u8; VXLAN_HEADER_LEN], frame: &[u8], buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(header);
    buf.extend_from_slice(frame);
}

/// The outer UDP source port for a frame with flow hash `hash`: in 49152..=65535, so that every
/// flow keeps one port and different flows spread over underlay paths.
pub fn source_port(hash: u32) -> u16 {
    let span = u32::from(u16::MAX - SOURCE_PORT_MIN) + 1;
    SOURCE_PORT_MIN + (hash % span) as u16
}

/// Checks a received VXLAN datagram and returns its VNI and the inner Ethernet frame.
///
/// Errors: [`DropReason::Runt`] when the datagram is shorter than the header plus an Ethernet
/// header, [`DropReason::BadFlags`] when the I flag is clear.
pub fn decap(datagram: &[u8]) -> Result<(Vni, &[u8]), DropReason> {
    let (vni, range) = decap_range(datagram)?;
    Ok((vni, &datagram[range]))
}

/// Like [`decap`], returning where the inner frame sits in `datagram` instead of a slice.
pub fn decap_range(datagram: &[u8]) -> Result<(Vni, Range<usize>), DropReason> {
    if datagram.len() < VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN {
        return Err(DropReason::Runt);
    }
    let header = VxlanHeader::new_unchecked(datagram);
    if !header.has_vni() {
        return Err(DropReason::BadFlags);
    }
    Ok((header.vni(), VXLAN_HEADER_LEN..datagram.len()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // The VXLAN header of a datagram sent by a Linux `vxlan` device with `id 42`.
    const LINUX_VNI_42: [u8; 8] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00];

    fn inner() -> [u8; 14] {
        [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x06,
        ]
    }

    #[test]
    fn header_matches_linux() {
        assert_eq!(encap_header(Vni::DEFAULT), LINUX_VNI_42);
        let vni = Vni::try_from(0x12_3456).unwrap();
        assert_eq!(encap_header(vni), [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0x00]);
        assert_eq!(
            encap_header(Vni::try_from(Vni::MAX).unwrap()),
            [0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0x00]
        );
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encap_into(&encap_header(Vni::DEFAULT), &inner(), &mut buf);
        assert_eq!(&buf[..8], &LINUX_VNI_42);
        let (vni, frame) = decap(&buf).unwrap();
        assert_eq!(vni, Vni::DEFAULT);
        assert_eq!(frame, &inner());
        assert_eq!(decap_range(&buf).unwrap().1, 8..22);
    }

    #[test]
    fn reserved_bits_ignored_on_receipt() {
        let mut buf = vec![0xf7, 0xff, 0xff, 0xff, 0x00, 0x00, 0x2a, 0xff];
        buf[0] |= 0x08;
        buf.extend_from_slice(&inner());
        assert_eq!(decap(&buf).unwrap().0, Vni::DEFAULT);
    }

    #[test]
    fn i_flag_required() {
        let mut buf = LINUX_VNI_42.to_vec();
        buf[0] = 0x00;
        buf.extend_from_slice(&inner());
        assert_eq!(decap(&buf).unwrap_err(), DropReason::BadFlags);
        buf[0] = 0xf7;
        assert_eq!(decap(&buf).unwrap_err(), DropReason::BadFlags);
    }

    #[test]
    fn runts() {
        let mut buf = LINUX_VNI_42.to_vec();
        buf.extend_from_slice(&inner());
        for len in 0..buf.len() {
            assert_eq!(decap(&buf[..len]).unwrap_err(), DropReason::Runt, "{len}");
        }
    }

    #[test]
    fn sealed_header_round_trip_and_kinds() {
        let header = SealedHeader {
            vni: Vni::DEFAULT,
            receiver: 0x0102_0304,
            counter: 0x0700_0000_0000_0009,
        };
        let mut bytes = [0u8; SEALED_HEADER_LEN];
        header.write(&mut bytes);
        assert_eq!(
            bytes,
            [
                0x48, 0, 0, 0, 0, 0, 0x2a, 0, 1, 2, 3, 4, 7, 0, 0, 0, 0, 0, 0, 9
            ]
        );
        let mut datagram = bytes.to_vec();
        datagram.resize(SEALED_HEADER_LEN + 14 + SEALED_TAG_LEN, 0);
        assert_eq!(SealedHeader::read(&datagram), Ok(header));
        assert_eq!(
            SealedHeader::read(&datagram[..datagram.len() - 1]),
            Err(DropReason::Runt)
        );
        let keepalive = &datagram[..SEALED_HEADER_LEN + SEALED_TAG_LEN];
        assert_eq!(SealedHeader::read(keepalive), Ok(header));
        assert_eq!(
            SealedHeader::read(&keepalive[..keepalive.len() - 1]),
            Err(DropReason::Runt)
        );
        assert_eq!(classify(&datagram), Kind::Sealed);
        assert_eq!(classify(&LINUX_VNI_42), Kind::Plain);
        assert_eq!(classify(&[0xc1, 0, 0, 0]), Kind::Handshake);
        assert_eq!(classify(&[]), Kind::Plain);
        assert_eq!(SEALED_OVERHEAD, 28);
    }

    #[test]
    fn source_ports_in_dynamic_range() {
        assert_eq!(source_port(0), 49152);
        assert_eq!(source_port(16383), 65535);
        assert_eq!(source_port(16384), 49152);
        assert_eq!(source_port(u32::MAX), 49152 + (u32::MAX % 16384) as u16);
    }
}
