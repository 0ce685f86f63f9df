//! Interface and namespace name rules shared by every operation that takes a name.

use crate::error::{Error, Result};

/// Longest interface name the kernel accepts, in bytes (`IFNAMSIZ - 1`).
pub const IFNAME_MAX: usize = 15;

/// Checks `name` against the kernel's rules for interface names: 1 to 15 bytes,
/// no `/`, `:` or whitespace, and neither `.` nor `..`.
pub fn validate_ifname(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("interface name is empty")
    } else if name.len() > IFNAME_MAX {
        Some("interface name is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("interface name cannot be . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        Some("interface name contains '/', ':', NUL or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a namespace name as `ip netns` would store it under `/run/netns`.
pub(crate) fn validate_ns_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("namespace name is empty")
    } else if name.len() > 255 {
        Some("namespace name is longer than 255 bytes")
    } else if name == "." || name == ".." {
        Some("namespace name cannot be . or ..")
    } else if name.contains(['/', '\0']) {
        Some("namespace name contains '/' or NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("abcdefghijklmno").is_ok());
        assert!(validate_ifname("abcdefghijklmnop").is_err());
        assert!(validate_ifname("").is_err());
        assert!(validate_ifname(".").is_err());
        assert!(validate_ifname("..").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("a:b").is_err());
        assert!(validate_ifname("a b").is_err());
        assert!(validate_ifname("a\0").is_err());
    }

    #[test]
    fn namespace_names() {
        assert!(validate_ns_name("ctr-1").is_ok());
        assert!(validate_ns_name("").is_err());
        assert!(validate_ns_name("..").is_err());
        assert!(validate_ns_name("a/b").is_err());
        assert!(validate_ns_name(&"x".repeat(256)).is_err());
    }
}
