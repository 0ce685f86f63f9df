//! Offloads done in userspace: virtio-net headers, segmentation of TSO/USO super-frames,
//! coalescing of TCP segments and UDP datagrams (userspace GRO) and a fast Internet checksum.
//!
//! A TAP queue opened with `IFF_VNET_HDR` and `TUNSETOFFLOAD` hands the switch 64 KB TCP and
//! UDP super-frames with partial checksums, each behind a [`VnetHdr`]. Peers only take real,
//! MTU-sized frames with complete checksums: [`segment`] cuts a super-frame into them the way
//! Linux's GSO does, into a reusable [`Segments`] buffer. In the other direction, a
//! [`Coalescer`] merges consecutive TCP segments or UDP datagrams of a flow arriving from
//! peers into one super-frame marked GSO (TSO or USO), so the container's kernel handles one
//! large packet instead of many; [`complete_partial_checksum`] finishes checksums a software
//! sender left to an offload that never ran. A vnet header is written by the container and
//! trusted for nothing: [`validate`] checks it against the frame before anything acts on it.
//!
//! Everything here works on caller-owned, reused buffers, reads headers at fixed offsets, and
//! returns an [`OffloadError`] (or passes the frame through) on any input it cannot handle.

mod checksum;
mod coalesce;
mod partial;
mod segment;
mod validate;
mod vnet;

#[cfg(test)]
pub(crate) mod fixtures;

pub use checksum::{checksum, fold, partial_sum, pseudo_header_v4, pseudo_header_v6};
pub use coalesce::Coalescer;
pub use partial::complete_partial_checksum;
pub use segment::{MAX_SEGMENTS, Segments, complete_checksum, segment};
pub use validate::{MIN_GSO_SIZE, Offload, validate};
pub use vnet::{VNET_HDR_LEN, VnetHdr};

/// Why a frame could not be segmented or its checksum completed.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[non_exhaustive]
pub enum OffloadError {
    /// The input ends before a header, or before the length a header declares.
    #[error("truncated frame or header")]
    Truncated,
    /// A header field holds a value that cannot be right (the argument names the field).
    #[error("bad header: {0}")]
    BadHeader(&'static str),
    /// The vnet header asks for a GSO type this module does not implement (UFO, unknown types).
    #[error("unsupported GSO type {0:#04x}")]
    Unsupported(u8),
    /// The frame is well formed but uses something segmentation does not handle (the argument
    /// says what: IPv6 extension headers, jumbograms, fragments).
    #[error("unsupported frame: {0}")]
    UnsupportedFrame(&'static str),
    /// Segmenting the frame would produce more than [`MAX_SEGMENTS`] segments.
    #[error("more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    /// A GSO frame's `gso_size` is below [`MIN_GSO_SIZE`].
    #[error("gso_size {0} is below the floor of {MIN_GSO_SIZE}")]
    GsoSizeTooSmall(u16),
    /// A TCP super-frame carries SYN, RST or URG, which segmentation would copy into every
    /// segment.
    #[error("SYN, RST or URG on a TCP super-frame")]
    TsoFlags,
}

/// Fixed offsets and the one header walk shared by segmentation and coalescing.
pub(crate) mod layout {
    use super::OffloadError;

    pub const ETHERTYPE_VLAN: u16 = 0x8100;
    pub const ETHERTYPE_IPV4: u16 = 0x0800;
    pub const ETHERTYPE_IPV6: u16 = 0x86dd;
    pub const PROTO_TCP: u8 = 6;
    pub const PROTO_UDP: u8 = 17;
    pub const ETH_LEN: usize = 14;
    pub const VLAN_ETH_LEN: usize = 18;
    pub const IPV4_MIN_LEN: usize = 20;
    pub const IPV6_LEN: usize = 40;
    pub const TCP_MIN_LEN: usize = 20;
    pub const UDP_LEN: usize = 8;
    /// The largest IP packet (header included) a 16-bit length field can describe.
    pub const MAX_IP_LEN: usize = 65535;

    /// Offsets of the TCP header fields.
    pub const TCP_SEQ: usize = 4;
    pub const TCP_ACK: usize = 8;
    pub const TCP_OFF: usize = 12;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_CSUM: usize = 16;
    pub const UDP_LEN_FIELD: usize = 4;
    pub const UDP_CSUM: usize = 6;

    pub const FIN: u8 = 0x01;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const CWR: u8 = 0x80;

    /// Where the IP and transport headers of an Ethernet frame sit.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Ip {
        /// Offset of the IP header (after Ethernet and at most one 802.1Q tag).
        pub l3: usize,
        /// Offset of the transport header.
        pub l4: usize,
        /// End of the IP packet as its header declares it (frame padding excluded).
        pub end: usize,
        /// IPv6 rather than IPv4.
        pub v6: bool,
        /// The transport protocol (IPv4 protocol or IPv6 next header).
        pub proto: u8,
        /// IPv4 only: the packet is a fragment (MF set or a non-zero offset).
        pub fragment: bool,
    }

    pub fn be16(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
    }

    pub fn be32(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_be_bytes([
            *b.get(at)?,
            *b.get(at + 1)?,
            *b.get(at + 2)?,
            *b.get(at + 3)?,
        ]))
    }

    /// Writes `v` at `at` when it fits; callers have validated the offset.
    pub fn put16(b: &mut [u8], at: usize, v: u16) {
        if let Some(dst) = b.get_mut(at..at + 2) {
            dst.copy_from_slice(&v.to_be_bytes());
        }
    }

    pub fn put32(b: &mut [u8], at: usize, v: u32) {
        if let Some(dst) = b.get_mut(at..at + 4) {
            dst.copy_from_slice(&v.to_be_bytes());
        }
    }

    /// Walks Ethernet (optionally one 802.1Q tag) and IPv4/IPv6 and checks every declared
    /// length against the frame. IPv6 extension headers are not walked: `proto` is then the
    /// extension's number.
    pub fn parse_ip(frame: &[u8]) -> Result<Ip, OffloadError> {
        let mut l3 = ETH_LEN;
        let mut ethertype = be16(frame, 12).ok_or(OffloadError::Truncated)?;
        if ethertype == ETHERTYPE_VLAN {
            ethertype = be16(frame, 16).ok_or(OffloadError::Truncated)?;
            l3 = VLAN_ETH_LEN;
        }
        match ethertype {
            ETHERTYPE_IPV4 => {
                let vihl = *frame.get(l3).ok_or(OffloadError::Truncated)?;
                if vihl >> 4 != 4 {
                    return Err(OffloadError::BadHeader("IPv4 version"));
                }
                let ihl = usize::from(vihl & 0x0f) * 4;
                if ihl < IPV4_MIN_LEN {
                    return Err(OffloadError::BadHeader("IPv4 header length"));
                }
                let total = usize::from(be16(frame, l3 + 2).ok_or(OffloadError::Truncated)?);
                if total < ihl {
                    return Err(OffloadError::BadHeader("IPv4 total length"));
                }
                if frame.len() < l3 + total {
                    return Err(OffloadError::Truncated);
                }
                let frag = be16(frame, l3 + 6).ok_or(OffloadError::Truncated)?;
                Ok(Ip {
                    l3,
                    l4: l3 + ihl,
                    end: l3 + total,
                    v6: false,
                    proto: frame[l3 + 9],
                    fragment: frag & 0x3fff != 0,
                })
            }
            ETHERTYPE_IPV6 => {
                if frame.len() < l3 + IPV6_LEN {
                    return Err(OffloadError::Truncated);
                }
                if frame[l3] >> 4 != 6 {
                    return Err(OffloadError::BadHeader("IPv6 version"));
                }
                let payload = usize::from(be16(frame, l3 + 4).ok_or(OffloadError::Truncated)?);
                if payload == 0 {
                    return Err(OffloadError::UnsupportedFrame("IPv6 jumbogram"));
                }
                if frame.len() < l3 + IPV6_LEN + payload {
                    return Err(OffloadError::Truncated);
                }
                Ok(Ip {
                    l3,
                    l4: l3 + IPV6_LEN,
                    end: l3 + IPV6_LEN + payload,
                    v6: true,
                    proto: frame[l3 + 6],
                    fragment: false,
                })
            }
            _ => Err(OffloadError::UnsupportedFrame("not IP")),
        }
    }

    /// The pseudo-header sum of the packet at `ip` for a transport length of `len`.
    pub fn pseudo(frame: &[u8], ip: &Ip, len: usize) -> u32 {
        if ip.v6 {
            let a = frame.get(ip.l3 + 8..ip.l3 + 40).unwrap_or(&[]);
            super::checksum::pseudo_header_v6_raw(a, ip.proto, len as u32)
        } else {
            let a = frame.get(ip.l3 + 12..ip.l3 + 20).unwrap_or(&[]);
            super::checksum::pseudo_header_v4_raw(a, ip.proto, len as u32)
        }
    }
}
