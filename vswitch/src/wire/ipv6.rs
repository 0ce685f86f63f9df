//! IPv6 fixed headers (RFC 8200).

use core::net::Ipv6Addr;

use super::{Error, IpProtocol, Result, read_u16, write_u16};

mod field {
    pub const VER: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;

/// A view of an IPv6 packet's fixed header.
///
/// [`Ipv6Packet::new_checked`] requires version 6 and the 40-byte header; the payload is what
/// follows, up to the payload length or the end of the buffer, whichever is shorter.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps a buffer after checking version and length.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let data = buffer.as_ref();
        if data.len() < IPV6_HEADER_LEN {
            return Err(Error::Truncated);
        }
        if data[field::VER] >> 4 != 6 {
            return Err(Error::Malformed);
        }
        Ok(Self::new_unchecked(buffer))
    }

    /// Payload length field.
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }

    /// Next header (the payload protocol when there are no extension headers).
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::NEXT_HEADER])
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        addr_at(self.buffer.as_ref(), field::SRC)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr_at(self.buffer.as_ref(), field::DST)
    }

    /// The payload, bounded by both the payload length and the buffer.
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = (IPV6_HEADER_LEN + usize::from(self.payload_len())).min(data.len());
        &data[IPV6_HEADER_LEN..end]
    }

    /// The upper-layer protocol and its bytes, past the extension headers (hop-by-hop,
    /// routing, fragment, destination options, authentication). `Malformed` when an extension
    /// header runs past the payload or there are more than [`MAX_EXTENSION_HEADERS`].
    pub fn upper_layer(&self) -> Result<UpperLayer<'_>> {
        let mut protocol = self.next_header();
        let mut rest = self.payload();
        let mut later_fragment = false;
        for _ in 0..MAX_EXTENSION_HEADERS {
            let len = match protocol.0 {
                ext::HOP_BY_HOP | ext::ROUTING | ext::DESTINATION => {
                    (usize::from(*rest.get(1).ok_or(Error::Malformed)?) + 1) * 8
                }
                ext::FRAGMENT => {
                    let offset = read_u16(rest.get(..4).ok_or(Error::Malformed)?, 2) >> 3;
                    later_fragment |= offset != 0;
                    8
                }
                ext::AUTHENTICATION => (usize::from(*rest.get(1).ok_or(Error::Malformed)?) + 2) * 4,
                _ => {
                    return Ok(UpperLayer {
                        protocol,
                        payload: rest,
                        later_fragment,
                    });
                }
            };
            let next = IpProtocol(*rest.first().ok_or(Error::Malformed)?);
            rest = rest.get(len..).ok_or(Error::Malformed)?;
            protocol = next;
        }
        Err(Error::Malformed)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets version 6, traffic class 0 and flow label 0.
    pub fn set_version(&mut self) {
        self.buffer.as_mut()[field::VER..field::VER + 4].copy_from_slice(&[0x60, 0, 0, 0]);
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::PAYLOAD_LEN, len);
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, protocol: IpProtocol) {
        self.buffer.as_mut()[field::NEXT_HEADER] = protocol.0;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC..field::SRC + 16].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST..field::DST + 16].copy_from_slice(&addr.octets());
    }

    /// The payload, bounded by both the payload length and the buffer, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end =
            (IPV6_HEADER_LEN + usize::from(self.payload_len())).min(self.buffer.as_ref().len());
        &mut self.buffer.as_mut()[IPV6_HEADER_LEN..end]
    }
}

/// The most extension headers [`Ipv6Packet::upper_layer`] walks before calling a packet
/// malformed.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Extension header numbers.
mod ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTHENTICATION: u8 = 51;
    pub const DESTINATION: u8 = 60;
}

/// What an IPv6 packet carries past its extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer<'a> {
    /// The upper-layer protocol.
    pub protocol: IpProtocol,
    /// Its bytes (the rest of the payload).
    pub payload: &'a [u8],
    /// The packet is a fragment other than the first: `payload` is not the protocol's header.
    pub later_fragment: bool,
}

fn addr_at(data: &[u8], at: usize) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&data[at..at + 16]);
    Ipv6Addr::from(octets)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        let mut buf = [0u8; 48];
        buf[0] = 0x60;
        buf[5] = 8;
        buf[6] = 17;
        buf[7] = 64;
        buf[8] = 0xfe;
        buf[9] = 0x80;
        buf[23] = 1;
        buf[24] = 0xff;
        buf[25] = 0x02;
        buf[39] = 1;
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.next_header(), IpProtocol::UDP);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), "fe80::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "ff02::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.payload().len(), 8);
        assert_eq!(
            Ipv6Packet::new_checked(&buf[..39]).unwrap_err(),
            Error::Truncated
        );
        buf[0] = 0x40;
        assert_eq!(
            Ipv6Packet::new_checked(&buf[..]).unwrap_err(),
            Error::Malformed
        );
    }

    /// An IPv6 header with `payload` behind next header `next`.
    fn packet(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p[6] = next;
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn upper_layer_walks_extension_headers() {
        let icmp = [135u8, 0, 0, 0];
        let plain = packet(58, &icmp);
        let p = Ipv6Packet::new_checked(&plain[..]).unwrap();
        let up = p.upper_layer().unwrap();
        assert_eq!(
            (up.protocol, up.payload, up.later_fragment),
            (IpProtocol(58), &icmp[..], false)
        );
        // Hop-by-hop (8 bytes), destination options (16 bytes), first fragment, then ICMPv6.
        let mut chain = vec![60, 0, 0, 0, 0, 0, 0, 0];
        chain.extend_from_slice(&[44, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        chain.extend_from_slice(&[58, 0, 0, 0, 0, 0, 0, 1]);
        chain.extend_from_slice(&icmp);
        let hidden = packet(0, &chain);
        let p = Ipv6Packet::new_checked(&hidden[..]).unwrap();
        let up = p.upper_layer().unwrap();
        assert_eq!(
            (up.protocol, up.payload, up.later_fragment),
            (IpProtocol(58), &icmp[..], false)
        );
        // A later fragment says so.
        let later = packet(44, &[58, 0, 0, 8, 0, 0, 0, 1, 9, 9]);
        let p = Ipv6Packet::new_checked(&later[..]).unwrap();
        assert!(p.upper_layer().unwrap().later_fragment);
        // An extension header longer than the packet, or a chain too long, is malformed.
        let short = packet(0, &[58, 1, 0, 0]);
        let p = Ipv6Packet::new_checked(&short[..]).unwrap();
        assert_eq!(p.upper_layer(), Err(Error::Malformed));
        let endless = packet(60, &[60, 0, 0, 0, 0, 0, 0, 0].repeat(9));
        let p = Ipv6Packet::new_checked(&endless[..]).unwrap();
        assert_eq!(p.upper_layer(), Err(Error::Malformed));
    }
}
