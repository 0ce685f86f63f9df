//! The VXLAN header (RFC 7348 section 5).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use super::{Error, Result, Vni, read_u32};

mod field {
    pub const FLAGS: usize = 0;
    pub const VNI: usize = 4;
}

/// The I flag: the VNI is valid. The only flag RFC 7348 defines.
pub const VXLAN_FLAG_I: u8 = 0x08;

const HEADER_LEN: usize = 8;

/// A view of a VXLAN header.
#[derive(Debug, Clone)]
pub struct VxlanHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanHeader<T> {
    /// Length of the header.
    pub const LEN: usize = HEADER_LEN;

    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanHeader { buffer }
    }

    /// Wraps a buffer after checking it holds the header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self::new_unchecked(buffer))
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// True when the I flag is set.
    pub fn has_vni(&self) -> bool {
        self.flags() & VXLAN_FLAG_I != 0
    }

    /// The 24-bit VNI (bytes 4..7).
    pub fn vni(&self) -> Vni {
        Vni::from_u24(read_u32(self.buffer.as_ref(), field::VNI) >> 8)
    }

    /// The payload after the header: the inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanHeader<T> {
    /// Writes a header as RFC 7348 says to send it: I flag set, every reserved bit zero.
    pub fn fill(&mut self, vni: Vni) {
        let d = &mut self.buffer.as_mut()[..HEADER_LEN];
        let v = vni.get().to_be_bytes();
        d.copy_from_slice(&[VXLAN_FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn linux_fixture() {
        let hdr = [0x08, 0, 0, 0, 0, 0, 0x2a, 0];
        let h = VxlanHeader::new_checked(&hdr[..]).unwrap();
        assert!(h.has_vni());
        assert_eq!(h.vni().get(), 42);
        let mut out = [0xffu8; 8];
        VxlanHeader::new_unchecked(&mut out[..]).fill(Vni::DEFAULT);
        assert_eq!(out, hdr);
    }

    #[test]
    fn vni_uses_24_bits() {
        let hdr = [0x08, 0xff, 0xff, 0xff, 0xab, 0xcd, 0xef, 0xff];
        assert_eq!(VxlanHeader::new_unchecked(&hdr[..]).vni().get(), 0xab_cdef);
        assert_eq!(
            VxlanHeader::new_checked(&hdr[..7]).unwrap_err(),
            Error::Truncated
        );
    }
}
