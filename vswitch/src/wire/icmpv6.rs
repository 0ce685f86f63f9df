//! ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861) messages: the type, and the target
//! address of the messages that carry one, enough for port security to judge what a container
//! may announce; and "packet too big", the error that tells a sender the path's MTU.

use core::net::Ipv6Addr;

use super::{Error, IpProtocol, Result, checksum, pseudo_header_v6, read_u16, write_u16};

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const MTU: usize = 4;
    pub const TARGET: core::ops::Range<usize> = 8..24;
}

/// Length of the header of an error message: type, code, checksum and four bytes (the MTU of
/// "packet too big"); the quoted packet follows.
pub const ICMPV6_ERROR_HEADER_LEN: usize = 8;

/// ICMPv6 message types.
pub mod icmpv6_type {
    /// Packet Too Big.
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Router Solicitation.
    pub const ROUTER_SOLICITATION: u8 = 133;
    /// Router Advertisement.
    pub const ROUTER_ADVERTISEMENT: u8 = 134;
    /// Neighbor Solicitation.
    pub const NEIGHBOR_SOLICITATION: u8 = 135;
    /// Neighbor Advertisement.
    pub const NEIGHBOR_ADVERTISEMENT: u8 = 136;
    /// Redirect.
    pub const REDIRECT: u8 = 137;
}

const HEADER_LEN: usize = 4;

/// A view of an ICMPv6 message.
#[derive(Debug, Clone)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv6Packet { buffer }
    }

    /// Wraps a buffer after checking it holds the type, code and checksum.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Icmpv6Packet { buffer })
    }

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Message code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// True for an error message (types below 128, RFC 4443 section 2.1).
    pub fn is_error(&self) -> bool {
        self.msg_type() < 128
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The MTU of a "packet too big" message; `Truncated` when the message is too short.
    pub fn mtu(&self) -> Result<u32> {
        let bytes = self
            .buffer
            .as_ref()
            .get(field::MTU..field::MTU + 4)
            .ok_or(Error::Truncated)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// True when the checksum over the message and the pseudo-header of `src` and `dst` is
    /// correct.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let data = self.buffer.as_ref();
        let Ok(len) = u32::try_from(data.len()) else {
            return false;
        };
        let pseudo = pseudo_header_v6(src.octets(), dst.octets(), IpProtocol::ICMPV6.0, len);
        checksum(data, pseudo) == 0
    }

    /// The target address of a Neighbor Solicitation, Neighbor Advertisement or Redirect;
    /// `Truncated` when the message is too short to hold one.
    pub fn target_addr(&self) -> Result<Ipv6Addr> {
        let bytes = self
            .buffer
            .as_ref()
            .get(field::TARGET)
            .ok_or(Error::Truncated)?;
        let mut octets = [0u8; 16];
        octets.copy_from_slice(bytes);
        Ok(Ipv6Addr::from(octets))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    /// Sets the message type.
    pub fn set_msg_type(&mut self, msg_type: u8) {
        self.buffer.as_mut()[field::TYPE] = msg_type;
    }

    /// Sets the message code.
    pub fn set_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::CODE] = code;
    }

    /// Sets the MTU of a "packet too big" message (the buffer holds at least its 8-byte header).
    pub fn set_mtu(&mut self, mtu: u32) {
        self.buffer.as_mut()[field::MTU..field::MTU + 4].copy_from_slice(&mtu.to_be_bytes());
    }

    /// The message past the 8-byte header of an error: the quoted packet, mutable.
    pub fn error_data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[ICMPV6_ERROR_HEADER_LEN..]
    }

    /// Computes the checksum over the message and the pseudo-header of `src` and `dst`, and
    /// writes it. The message is at most an IPv6 payload long (65535 bytes).
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, 0);
        let len = u32::try_from(self.buffer.as_ref().len()).unwrap_or(u32::MAX);
        let pseudo = pseudo_header_v6(src.octets(), dst.octets(), IpProtocol::ICMPV6.0, len);
        let sum = checksum(self.buffer.as_ref(), pseudo);
        write_u16(self.buffer.as_mut(), field::CHECKSUM, sum);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn neighbor_advertisement_target() {
        let mut na = [0u8; 24];
        na[0] = icmpv6_type::NEIGHBOR_ADVERTISEMENT;
        na[8] = 0xfe;
        na[9] = 0x80;
        na[23] = 7;
        let p = Icmpv6Packet::new_checked(&na[..]).unwrap();
        assert_eq!(p.msg_type(), 136);
        assert_eq!(p.code(), 0);
        assert_eq!(
            p.target_addr().unwrap(),
            "fe80::7".parse::<Ipv6Addr>().unwrap()
        );
        let short = Icmpv6Packet::new_checked(&na[..23]).unwrap();
        assert_eq!(short.target_addr(), Err(Error::Truncated));
        assert!(Icmpv6Packet::new_checked(&na[..3]).is_err());
        assert!(!p.is_error());
    }

    #[test]
    fn packet_too_big() {
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00::2".parse().unwrap();
        let mut buf = [0xaau8; 16];
        let mut p = Icmpv6Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(icmpv6_type::PACKET_TOO_BIG);
        p.set_code(0);
        p.set_mtu(1400);
        p.error_data_mut().fill(0x60);
        p.fill_checksum(src, dst);
        let p = Icmpv6Packet::new_checked(&buf[..]).unwrap();
        assert!(p.is_error() && p.verify_checksum(src, dst));
        assert_eq!(p.mtu().unwrap(), 1400);
        assert_eq!(&buf[4..8], &[0, 0, 0x05, 0x78]);
    }
}
