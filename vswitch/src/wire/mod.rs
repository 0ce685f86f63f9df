//! Typed, zero-copy views over the bytes the switch reads and writes.
//!
//! Every view is a wrapper `Packet<T: AsRef<[u8]>>` over a caller's buffer, in the manner of
//! smoltcp. `new_checked` validates the buffer length (and the fields that say how long the rest
//! is) once; after it succeeded no getter panics. Getters need `T: AsRef<[u8]>`, setters
//! `T: AsMut<[u8]>`. `new_unchecked` skips validation: accessors may then panic on short buffers,
//! so it is only for buffers the caller sized itself.
//!
//! Besides the views this module holds the two identifiers every other layer uses, [`MacAddr`]
//! and [`Vni`], [`flow_hash`], the entropy for the outer UDP source port of a tunnel, the one
//! Internet [`checksum`], and [`IpHeaders`], the one walk from an Ethernet frame to its IP and
//! transport headers.

mod arp;
mod checksum;
mod ethernet;
mod flow;
mod headers;
mod icmpv4;
mod icmpv6;
mod ipv4;
mod ipv6;
mod mac;
mod tcp;
mod udp;
mod vni;
mod vxlan;

pub use arp::{ArpOperation, ArpPacket};
pub use checksum::{
    checksum, fold, internet_checksum, partial_sum, pseudo_header_v4, pseudo_header_v6,
    update_checksum,
};
pub(crate) use checksum::{pseudo_header_v4_raw, pseudo_header_v6_raw};
pub use ethernet::{ETHERNET_HEADER_LEN, EtherType, EthernetFrame, VLAN_TAG_LEN};
pub use flow::flow_hash;
pub use headers::{IpHeaders, MAX_VLAN_TAGS, VLAN_TPIDS, ethertype_past_tags};
pub use icmpv4::{
    ICMPV4_DEST_UNREACHABLE, ICMPV4_ECHO_REPLY, ICMPV4_ECHO_REQUEST, ICMPV4_FRAG_NEEDED,
    Icmpv4Packet,
};
pub use icmpv6::{ICMPV6_ERROR_HEADER_LEN, Icmpv6Packet, icmpv6_type};
pub use ipv4::{IPV4_MIN_HEADER_LEN, IpProtocol, Ipv4Packet};
pub use ipv6::{IPV6_HEADER_LEN, Ipv6Packet, MAX_EXTENSION_HEADERS, UpperLayer};
pub use mac::{MacAddr, ParseMacError};
pub use tcp::{TCP_CHECKSUM_AT, TCP_MIN_HEADER_LEN, TcpPacket};
pub use udp::{UDP_HEADER_LEN, UdpPacket};
pub use vni::{Vni, VniError};
pub use vxlan::{VXLAN_FLAG_I, VxlanHeader};

/// Why a buffer could not be viewed as a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The buffer is shorter than the header or than the length its fields announce.
    #[error("packet truncated")]
    Truncated,
    /// A field holds a value the format does not allow (version, header length, sizes).
    #[error("malformed packet")]
    Malformed,
    /// Well formed, but not something the view reads (a frame that is not IP, a jumbogram).
    #[error("unsupported packet")]
    Unsupported,
}

/// Result of parsing a packet view.
pub type Result<T> = core::result::Result<T, Error>;

/// Reads a big-endian `u16` at `at`; callers have checked the length.
#[inline]
fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

/// Reads a big-endian `u32` at `at`; callers have checked the length.
#[inline]
fn read_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// Writes a big-endian `u16` at `at`; callers have checked the length.
#[inline]
fn write_u16(data: &mut [u8], at: usize, value: u16) {
    data[at..at + 2].copy_from_slice(&value.to_be_bytes());
}
