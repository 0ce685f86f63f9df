//! The virtio-net header (`struct virtio_net_hdr_v1`) that precedes every frame on a TAP
//! queue opened with `IFF_VNET_HDR` and a header size of 12.

use super::OffloadError;

/// Length of the header on the TAP (`TUNSETVNETHDRSZ` 12: `virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;

/// A parsed virtio-net header. All fields are little-endian on the wire; `num_buffers` is
/// ignored on read and written as zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM`, `F_DATA_VALID`.
    pub flags: u8,
    /// One of the `GSO_*` types, possibly with `GSO_ECN` set.
    pub gso_type: u8,
    /// Length of the headers (Ethernet to transport) of a GSO frame.
    pub hdr_len: u16,
    /// Payload bytes per segment of a GSO frame.
    pub gso_size: u16,
    /// Where checksumming starts (the transport header) when `F_NEEDS_CSUM` is set.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The transport checksum is partial: sum from `csum_start` to the end and store it at
    /// `csum_start + csum_offset`.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// The checksum has been verified already.
    pub const F_DATA_VALID: u8 = 2;
    /// Not a GSO frame.
    pub const GSO_NONE: u8 = 0;
    /// TCP over IPv4 segmentation (TSO4).
    pub const GSO_TCPV4: u8 = 1;
    /// UDP fragmentation offload (UFO), legacy; not supported by [`segment`](super::segment).
    pub const GSO_UDP: u8 = 3;
    /// TCP over IPv6 segmentation (TSO6).
    pub const GSO_TCPV6: u8 = 4;
    /// UDP segmentation (USO), IPv4 or IPv6.
    pub const GSO_UDP_L4: u8 = 5;
    /// Flag bit in `gso_type`: the TCP super-frame carries CWR (ECN).
    pub const GSO_ECN: u8 = 0x80;

    /// Parses the first [`VNET_HDR_LEN`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<VnetHdr, OffloadError> {
        let b = bytes.get(..VNET_HDR_LEN).ok_or(OffloadError::Truncated)?;
        let le16 = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le16(2),
            gso_size: le16(4),
            csum_start: le16(6),
            csum_offset: le16(8),
        })
    }

    /// The header's bytes as the TAP expects them.
    pub fn emit(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Whether the frame is a GSO super-frame (any type but `GSO_NONE`).
    pub fn is_gso(&self) -> bool {
        self.gso_type & !Self::GSO_ECN != Self::GSO_NONE
    }

    /// Whether the transport checksum is partial and still has to be completed.
    pub fn needs_csum(&self) -> bool {
        self.flags & Self::F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_tcpv4_fixture() {
        // NEEDS_CSUM, TCPV4, hdr_len 66, gso_size 1448, csum_start 34, csum_offset 16, nbufs 0.
        let bytes = [
            0x01, 0x01, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00, 0x00, 0x00,
        ];
        let hdr = VnetHdr::parse(&bytes).unwrap();
        assert_eq!(
            hdr,
            VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                gso_type: VnetHdr::GSO_TCPV4,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        assert!(hdr.is_gso());
        assert!(hdr.needs_csum());
        assert_eq!(hdr.emit(), bytes);
    }

    #[test]
    fn num_buffers_ignored_and_trailing_bytes_allowed() {
        let mut bytes = [0u8; 20];
        bytes[10] = 7;
        let hdr = VnetHdr::parse(&bytes).unwrap();
        assert_eq!(hdr, VnetHdr::default());
        assert!(!hdr.is_gso());
        assert_eq!(hdr.emit(), [0u8; 12]);
    }

    #[test]
    fn ecn_alone_is_not_gso() {
        let hdr = VnetHdr {
            gso_type: VnetHdr::GSO_ECN,
            ..VnetHdr::default()
        };
        assert!(!hdr.is_gso());
        let hdr = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV6 | VnetHdr::GSO_ECN,
            ..VnetHdr::default()
        };
        assert!(hdr.is_gso());
    }

    #[test]
    fn truncated() {
        assert_eq!(VnetHdr::parse(&[0u8; 11]), Err(OffloadError::Truncated));
        assert_eq!(VnetHdr::parse(&[]), Err(OffloadError::Truncated));
    }

    #[test]
    fn round_trip_all_fields() {
        let hdr = VnetHdr {
            flags: 3,
            gso_type: 0x85,
            hdr_len: 0x1234,
            gso_size: 0xfedc,
            csum_start: 0xab,
            csum_offset: 6,
        };
        assert_eq!(VnetHdr::parse(&hdr.emit()).unwrap(), hdr);
    }
}
