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

mod coalesce;
mod partial;
mod segment;
mod validate;
mod vnet;

#[cfg(test)]
pub(crate) mod fixtures;

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

    pub const PROTO_TCP: u8 = 6;
    pub const PROTO_UDP: u8 = 17;
    pub const ETH_LEN: usize = 14;
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
    pub type Ip = crate::wire::IpHeaders;

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

    /// Walks Ethernet, its VLAN tags and IPv4/IPv6 ([`Ip::locate`]), checking every declared
    /// length against the frame. IPv6 extension headers are not walked: `proto` is then the
    /// extension's number.
    pub fn parse_ip(frame: &[u8]) -> Result<Ip, OffloadError> {
        Ip::locate(frame).map_err(|e| match e {
            crate::wire::Error::Truncated => OffloadError::Truncated,
            crate::wire::Error::Unsupported => {
                OffloadError::UnsupportedFrame("not IP, or an IPv6 jumbogram")
            }
            _ => OffloadError::BadHeader("IP header"),
        })
    }

    /// The pseudo-header sum of the packet at `ip` for a transport length of `len`.
    pub fn pseudo(frame: &[u8], ip: &Ip, len: usize) -> u32 {
        let addrs = ip.addresses(frame);
        if ip.v6 {
            crate::wire::pseudo_header_v6_raw(addrs, ip.proto, len as u32)
        } else {
            crate::wire::pseudo_header_v4_raw(addrs, ip.proto, len as u32)
        }
    }
}
