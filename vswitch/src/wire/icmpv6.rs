//! ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861) messages: the type, and the target
//! address of the messages that carry one, enough for port security to judge what a container
//! may announce.

use core::net::Ipv6Addr;

use super::{Error, Result};

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const TARGET: core::ops::Range<usize> = 8..24;
}

/// ICMPv6 message types.
pub mod icmpv6_type {
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
    }
}
