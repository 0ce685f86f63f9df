//! TCP headers (RFC 9293): ports, sequence numbers, flags, the checksum and the MSS option.

use super::{Error, Result, read_u16, read_u32, write_u16};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: usize = 16;
}

/// Option kinds (RFC 9293 section 3.2).
mod option {
    pub const END: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const MSS_LEN: u8 = 4;
}

/// Offset of the checksum field in a TCP header.
pub const TCP_CHECKSUM_AT: usize = field::CHECKSUM;

/// Length of a TCP header without options.
pub const TCP_MIN_HEADER_LEN: usize = 20;

/// A view of a TCP segment's header.
///
/// [`TcpPacket::new_checked`] requires a data offset of at least 20 bytes that fits the buffer.
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// TCP FIN flag.
    pub const FIN: u8 = 0x01;
    /// TCP SYN flag.
    pub const SYN: u8 = 0x02;
    /// TCP RST flag.
    pub const RST: u8 = 0x04;
    /// TCP PSH flag.
    pub const PSH: u8 = 0x08;
    /// TCP ACK flag.
    pub const ACK: u8 = 0x10;

    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps a buffer after checking the header and its options fit.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let data = buffer.as_ref();
        if data.len() < TCP_MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let packet = Self::new_unchecked(buffer);
        let header_len = packet.header_len();
        if header_len < TCP_MIN_HEADER_LEN {
            return Err(Error::Malformed);
        }
        if packet.buffer.as_ref().len() < header_len {
            return Err(Error::Truncated);
        }
        Ok(packet)
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ)
    }

    /// Acknowledgement number.
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK)
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::OFFSET] >> 4) * 4
    }

    /// The flags byte (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The payload after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The Maximum Segment Size option: where its 16-bit value sits (from the start of the
    /// header) and the value. `None` when the options hold no well-formed MSS option, or are
    /// themselves malformed (an option running past the header, a length below 2).
    pub fn mss(&self) -> Option<(usize, u16)> {
        let data = self.buffer.as_ref();
        let options = data.get(TCP_MIN_HEADER_LEN..self.header_len())?;
        let mut at = 0;
        while let Some(&kind) = options.get(at) {
            match kind {
                option::END => return None,
                option::NOP => at += 1,
                _ => {
                    let len = usize::from(*options.get(at + 1)?);
                    if len < 2 || at + len > options.len() {
                        return None;
                    }
                    if kind == option::MSS {
                        if len != usize::from(option::MSS_LEN) {
                            return None;
                        }
                        let value_at = TCP_MIN_HEADER_LEN + at + 2;
                        return Some((value_at, read_u16(data, value_at)));
                    }
                    at += len;
                }
            }
        }
        None
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // A SYN 10.244.0.2:40000 -> 10.244.1.2:80 with 20 bytes of options, as Linux sends it.
    const SYN: [u8; 40] = [
        0x9c, 0x40, 0x00, 0x50, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 0xa0, 0x02, 0xfa, 0xf0, 0, 0,
        0, 0, 0x02, 0x04, 0x05, 0x82, 0x04, 0x02, 0x08, 0x0a, 0, 0, 0, 1, 0, 0, 0, 0, 0x01, 0x03,
        0x03, 0x07,
    ];

    #[test]
    fn parse() {
        let p = TcpPacket::new_checked(&SYN[..]).unwrap();
        assert_eq!(p.src_port(), 40000);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq_number(), 0x1234_5678);
        assert_eq!(p.ack_number(), 0);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), TcpPacket::<&[u8]>::SYN);
        assert!(p.payload().is_empty());
    }

    #[test]
    fn mss_option() {
        let p = TcpPacket::new_checked(&SYN[..]).unwrap();
        assert_eq!(p.mss(), Some((22, 1410)));
        // Behind a NOP, at an odd offset.
        let mut nop = SYN;
        nop[20..26].copy_from_slice(&[1, 2, 4, 0x05, 0xb4, 1]);
        let p = TcpPacket::new_checked(&nop[..]).unwrap();
        assert_eq!(p.mss(), Some((23, 1460)));
        // Past the end-of-options mark, with a wrong length, or with no options at all: none.
        let mut end = SYN;
        end[20] = 0;
        assert_eq!(TcpPacket::new_checked(&end[..]).unwrap().mss(), None);
        let mut bad_len = SYN;
        bad_len[21] = 3;
        assert_eq!(TcpPacket::new_checked(&bad_len[..]).unwrap().mss(), None);
        let mut bare = SYN;
        bare[12] = 0x50;
        assert_eq!(TcpPacket::new_checked(&bare[..]).unwrap().mss(), None);
        // An option whose length runs past the header.
        let mut long = SYN;
        long[36..40].copy_from_slice(&[1, 1, 8, 10]);
        long[20..24].copy_from_slice(&[1, 1, 1, 1]);
        long[24..36].fill(1);
        assert_eq!(TcpPacket::new_checked(&long[..]).unwrap().mss(), None);
    }

    #[test]
    fn rejects_bad_offset() {
        assert_eq!(
            TcpPacket::new_checked(&SYN[..39]).unwrap_err(),
            Error::Truncated
        );
        let mut bad = SYN;
        bad[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&bad[..]).unwrap_err(),
            Error::Malformed
        );
    }
}
