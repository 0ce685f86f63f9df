//! Rates as people write them: bits per second with SI suffixes ("100M", "1.5G", "800k").

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a rate string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateError {
    /// The string is empty.
    #[error("empty rate")]
    Empty,
    /// The string is not a decimal number with an optional suffix k, M, G or T.
    #[error("{0:?} is not a rate (write bits per second like 800k, 100M, 1.5G)")]
    Syntax(String),
    /// The rate is zero: nothing would ever pass.
    #[error("a rate of 0 lets nothing pass")]
    Zero,
    /// The rate does not fit in 64 bits, or has more decimals than its suffix has digits.
    #[error("{0:?} is out of range or finer than one bit per second")]
    Range(String),
}

/// A rate in bits per second, never zero.
///
/// Read from `"<number>[k|K|M|G|T]"` where the suffix is an SI multiplier (k = 1000, M = 10^6,
/// G = 10^9, T = 10^12) and the number may have decimals (`"1.5G"`). Plain numbers are bits per
/// second. Parsed exactly, without floating point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BitRate(u64);

impl BitRate {
    /// A rate of `bits` per second; `None` for zero.
    pub const fn new(bits: u64) -> Option<Self> {
        if bits == 0 { None } else { Some(BitRate(bits)) }
    }

    /// Bits per second.
    pub const fn bits_per_sec(self) -> u64 {
        self.0
    }
}

impl FromStr for BitRate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, RateError> {
        let text = s.trim();
        if text.is_empty() {
            return Err(RateError::Empty);
        }
        let syntax = || RateError::Syntax(s.to_owned());
        let range = || RateError::Range(s.to_owned());
        let (number, exponent) = match text.as_bytes()[text.len() - 1] {
            b'k' | b'K' => (&text[..text.len() - 1], 3u32),
            b'M' => (&text[..text.len() - 1], 6),
            b'G' => (&text[..text.len() - 1], 9),
            b'T' => (&text[..text.len() - 1], 12),
            _ => (text, 0),
        };
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || (number.contains('.') && !digits(frac)) {
            return Err(syntax());
        }
        if frac.len() > exponent as usize {
            return Err(range());
        }
        let scale = 10u64.pow(exponent);
        let whole: u64 = whole.parse().map_err(|_| range())?;
        let frac_value: u64 = if frac.is_empty() {
            0
        } else {
            let f: u64 = frac.parse().map_err(|_| range())?;
            f * 10u64.pow(exponent - frac.len() as u32)
        };
        let bits = whole
            .checked_mul(scale)
            .and_then(|b| b.checked_add(frac_value))
            .ok_or_else(range)?;
        BitRate::new(bits).ok_or(RateError::Zero)
    }
}

impl fmt::Display for BitRate {
    /// The shortest exact form: `100M`, `1500k`, `1.5G`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (exp, suffix) in [(12u32, "T"), (9, "G"), (6, "M"), (3, "k")] {
            let scale = 10u64.pow(exp);
            if self.0 >= scale {
                let (whole, frac) = (self.0 / scale, self.0 % scale);
                if frac == 0 {
                    return write!(f, "{whole}{suffix}");
                }
                let mut frac = format!("{frac:0width$}", width = exp as usize);
                while frac.ends_with('0') {
                    frac.pop();
                }
                return write!(f, "{whole}.{frac}{suffix}");
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for BitRate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BitRate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => {
                BitRate::new(n).ok_or_else(|| serde::de::Error::custom(RateError::Zero))
            }
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn si_suffixes_are_bits_per_second() {
        let r = |s: &str| s.parse::<BitRate>().map(BitRate::bits_per_sec);
        assert_eq!(r("100M"), Ok(100_000_000));
        assert_eq!(r("1.5G"), Ok(1_500_000_000));
        assert_eq!(r("800k"), Ok(800_000));
        assert_eq!(r("800K"), Ok(800_000));
        assert_eq!(r("2.25k"), Ok(2_250));
        assert_eq!(r("9600"), Ok(9_600));
        assert_eq!(r("1T"), Ok(1_000_000_000_000));
        assert_eq!(r(""), Err(RateError::Empty));
        assert_eq!(r("0"), Err(RateError::Zero));
        assert_eq!(r("0.0M"), Err(RateError::Zero));
        assert!(matches!(r("fast"), Err(RateError::Syntax(_))));
        assert!(matches!(r("1.M"), Err(RateError::Syntax(_))));
        assert!(matches!(r("-1M"), Err(RateError::Syntax(_))));
        assert!(matches!(r("10 Mbit"), Err(RateError::Syntax(_))));
        assert!(matches!(r("1.0001k"), Err(RateError::Range(_))));
        assert!(matches!(r("99999999999T"), Err(RateError::Range(_))));
    }

    #[test]
    fn display_round_trips() {
        for s in ["100M", "1.5G", "800k", "9.6k", "999", "1.000001M", "2T"] {
            assert_eq!(s.parse::<BitRate>().unwrap().to_string(), s);
        }
    }
}
