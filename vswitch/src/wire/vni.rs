//! The 24-bit VXLAN network identifier.

use core::fmt;

/// A VXLAN network identifier: 24 bits, so at most [`Vni::MAX`].
///
/// Built only through `TryFrom<u32>`, which rejects out-of-range values; serialized as an integer
/// and validated the same way on deserialization.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI, `2^24 - 1`.
    pub const MAX: u32 = 0x00ff_ffff;
    /// The VNI of a network that does not name one.
    pub const DEFAULT: Vni = Vni(42);

    /// The VNI as an integer.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The VNI from the 24 low bits of `value`; used by wire parsers, which read exactly 24 bits.
    pub(crate) const fn from_u24(value: u32) -> Self {
        Vni(value & Self::MAX)
    }
}

impl Default for Vni {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A value that does not fit the 24 bits of a VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("VNI {value} out of range: a VNI is 24 bits, 0..={max}", max = Vni::MAX)]
pub struct VniError {
    /// The rejected value.
    pub value: u32,
}

impl TryFrom<u32> for Vni {
    type Error = VniError;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        if value > Self::MAX {
            Err(VniError { value })
        } else {
            Ok(Vni(value))
        }
    }
}

impl From<Vni> for u32 {
    fn from(vni: Vni) -> Self {
        vni.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn range_is_24_bits() {
        assert_eq!(Vni::try_from(0).unwrap().get(), 0);
        assert_eq!(Vni::try_from(0xff_ffff).unwrap().get(), 0xff_ffff);
        let err = Vni::try_from(0x100_0000).unwrap_err();
        assert_eq!(err.value, 0x100_0000);
        let msg = err.to_string();
        assert!(
            msg.contains("16777216") && msg.contains("16777215"),
            "{msg}"
        );
        assert_eq!(Vni::DEFAULT.get(), 42);
        assert_eq!(Vni::DEFAULT.to_string(), "42");
    }

    #[test]
    fn serde_validates() {
        let vni: Vni = serde_json::from_str("4096").unwrap();
        assert_eq!(vni.get(), 4096);
        assert_eq!(serde_json::to_string(&vni).unwrap(), "4096");
        assert!(serde_json::from_str::<Vni>("16777216").is_err());
        assert!(serde_json::from_str::<Vni>("-1").is_err());
    }
}
