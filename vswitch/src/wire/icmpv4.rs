//! ICMPv4 messages (RFC 792): echo, enough for the gateway's echo reply, and "fragmentation
//! needed" (RFC 1191), the error that tells a sender the path's MTU.

use super::{Error, Result, internet_checksum, read_u16, write_u16};

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const IDENT: usize = 4;
    pub const SEQ: usize = 6;
    pub const NEXT_HOP_MTU: usize = 6;
}

/// ICMP type of an echo reply.
pub const ICMPV4_ECHO_REPLY: u8 = 0;
/// ICMP type of an echo request.
pub const ICMPV4_ECHO_REQUEST: u8 = 8;
/// ICMP type "destination unreachable".
pub const ICMPV4_DEST_UNREACHABLE: u8 = 3;
/// Code of "destination unreachable": fragmentation needed and DF set (RFC 1191).
pub const ICMPV4_FRAG_NEEDED: u8 = 4;

/// Types of ICMP error messages (destination unreachable, source quench, redirect, time
/// exceeded, parameter problem): never answered with an error (RFC 1122 section 3.2.2).
const ERROR_TYPES: [u8; 5] = [3, 4, 5, 11, 12];

const HEADER_LEN: usize = 8;

/// A view of an ICMPv4 message; the checksum covers the whole buffer.
#[derive(Debug, Clone)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv4Packet { buffer }
    }

    /// Wraps a buffer after checking it holds the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self::new_unchecked(buffer))
    }

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Message code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Echo identifier.
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// Echo sequence number.
    pub fn echo_seq(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SEQ)
    }

    /// The next-hop MTU of a "fragmentation needed" message.
    pub fn next_hop_mtu(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::NEXT_HOP_MTU)
    }

    /// True for an error message (as opposed to a query such as echo).
    pub fn is_error(&self) -> bool {
        ERROR_TYPES.contains(&self.msg_type())
    }

    /// The message past the 8-byte header: the echo data, or the packet an error quotes.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// True when the checksum over the whole message is correct.
    pub fn verify_checksum(&self) -> bool {
        internet_checksum(self.buffer.as_ref()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    /// Sets the message type.
    pub fn set_msg_type(&mut self, msg_type: u8) {
        self.buffer.as_mut()[field::TYPE] = msg_type;
    }

    /// Sets the message code.
    pub fn set_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::CODE] = code;
    }

    /// Sets the four bytes after the checksum to "unused" (zero) and the next-hop MTU: the
    /// rest of a "fragmentation needed" header.
    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, 0);
        write_u16(self.buffer.as_mut(), field::NEXT_HOP_MTU, mtu);
    }

    /// The message past the 8-byte header, mutable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }

    /// Computes the checksum over the whole message and writes it.
    pub fn fill_checksum(&mut self) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, 0);
        let sum = internet_checksum(self.buffer.as_ref());
        write_u16(self.buffer.as_mut(), field::CHECKSUM, sum);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksum() {
        // Echo request id 0x1234 seq 1, payload "abcd".
        let mut buf = [8, 0, 0, 0, 0x12, 0x34, 0x00, 0x01, b'a', b'b', b'c', b'd'];
        let mut p = Icmpv4Packet::new_checked(&mut buf[..]).unwrap();
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.checksum(), 0x2104);
        assert_eq!((p.echo_ident(), p.echo_seq()), (0x1234, 1));
        p.set_msg_type(ICMPV4_ECHO_REPLY);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert_eq!(p.checksum(), 0x2904);
        assert!(!p.is_error());
        assert_eq!(p.data(), b"abcd");
        assert_eq!(
            Icmpv4Packet::new_checked(&buf[..7]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn frag_needed() {
        // Type 3 code 4, next-hop MTU 1400, quoting 4 bytes.
        let mut buf = [0xffu8; 12];
        let mut p = Icmpv4Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(ICMPV4_DEST_UNREACHABLE);
        p.set_code(ICMPV4_FRAG_NEEDED);
        p.set_next_hop_mtu(1400);
        p.data_mut().copy_from_slice(&[0x45, 0, 0x05, 0xdc]);
        p.fill_checksum();
        let p = Icmpv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(&buf[..8], &[3, 4, 0xac, 0xa7, 0, 0, 0x05, 0x78]);
        assert!(p.verify_checksum() && p.is_error());
        assert_eq!(p.next_hop_mtu(), 1400);
    }
}
