//! Who a lease belongs to: a container and one of its interfaces, validated once on entry.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, NameProblem};

/// Longest container id accepted, in bytes.
pub const MAX_CONTAINER_ID_LEN: usize = 255;
/// Longest interface name accepted, in bytes (the kernel's `IFNAMSIZ` less the terminator).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest node name accepted, in bytes.
pub const MAX_NODE_NAME_LEN: usize = 253;
/// Longest pool name accepted, in bytes.
pub const MAX_POOL_NAME_LEN: usize = 64;

/// The holder of a lease: a container id and an interface name inside that container.
///
/// Built only through [`Owner::new`], so every `Owner` is valid: both parts are non-empty, bounded
/// and free of control characters; the interface name also follows the kernel's rules (no `/`,
/// `:` or white space, not `.` or `..`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawOwner")]
pub struct Owner {
    container_id: String,
    ifname: String,
}

#[derive(Deserialize)]
struct RawOwner {
    container_id: String,
    ifname: String,
}

impl TryFrom<RawOwner> for Owner {
    type Error = Error;

    fn try_from(raw: RawOwner) -> Result<Self, Error> {
        Owner::new(raw.container_id, raw.ifname)
    }
}

impl Owner {
    /// Validates and builds an owner.
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Result<Self, Error> {
        let container_id = container_id.into();
        let ifname = ifname.into();
        check_text("container id", &container_id, MAX_CONTAINER_ID_LEN)?;
        check_text("interface name", &ifname, MAX_IFNAME_LEN)?;
        let bad = |problem| Error::InvalidName {
            field: "interface name",
            problem,
        };
        if let Some(c) = ifname
            .chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
        {
            return Err(bad(NameProblem::BadChar(c)));
        }
        if ifname == "." || ifname == ".." {
            return Err(bad(NameProblem::BadChar('.')));
        }
        Ok(Owner {
            container_id,
            ifname,
        })
    }

    /// The container id.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// The interface name inside the container.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The owner's part of a store key: both fields escaped, joined by `/`.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", escape(&self.container_id), escape(&self.ifname))
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "container {:?} interface {:?}",
            self.container_id, self.ifname
        )
    }
}

/// Checks a free-form name: non-empty, at most `max` bytes, no control characters.
pub(crate) fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), Error> {
    let problem = if value.is_empty() {
        NameProblem::Empty
    } else if value.len() > max {
        NameProblem::TooLong {
            len: value.len(),
            max,
        }
    } else if let Some(c) = value.chars().find(|c| c.is_control()) {
        NameProblem::ControlChar(c)
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { field, problem })
}

/// Checks a node name, which is free-form like a host name.
pub(crate) fn check_node_name(node: &str) -> Result<(), Error> {
    check_text("node name", node, MAX_NODE_NAME_LEN)
}

/// Checks a pool name: ASCII letters, digits, `.`, `_` and `-`, since it appears in store keys.
pub(crate) fn check_pool_name(pool: &str) -> Result<(), Error> {
    check_text("pool name", pool, MAX_POOL_NAME_LEN)?;
    match pool
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(Error::InvalidName {
            field: "pool name",
            problem: NameProblem::BadChar(c),
        }),
        None => Ok(()),
    }
}

/// Makes a name safe as one segment of a `/`-separated key.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_owner() {
        let o = Owner::new("0123abcd", "eth0").unwrap();
        assert_eq!(o.container_id(), "0123abcd");
        assert_eq!(o.ifname(), "eth0");
        assert_eq!(o.key(), "0123abcd/eth0");
    }

    #[test]
    fn rejects_bad_owners() {
        let long_id = "x".repeat(MAX_CONTAINER_ID_LEN + 1);
        for (cid, ifname) in [
            ("", "eth0"),
            ("abc", ""),
            (long_id.as_str(), "eth0"),
            ("abc", "0123456789abcdef"),
            ("a\nb", "eth0"),
            ("abc", "et\u{7f}h0"),
            ("abc", "eth/0"),
            ("abc", "eth 0"),
            ("abc", "eth:0"),
            ("abc", ".."),
        ] {
            assert!(
                matches!(Owner::new(cid, ifname), Err(Error::InvalidName { .. })),
                "{cid:?} {ifname:?}"
            );
        }
    }

    #[test]
    fn keys_are_unambiguous() {
        let a = Owner::new("a/b", "c").unwrap();
        let b = Owner::new("a", "b/c").unwrap_err();
        assert!(matches!(b, Error::InvalidName { .. }));
        let c = Owner::new("a%2Fb", "c").unwrap();
        assert_ne!(a.key(), c.key());
        assert_eq!(a.key(), "a%2Fb/c");
    }

    #[test]
    fn deserialize_validates() {
        let ok: Owner = serde_json::from_str(r#"{"container_id":"c","ifname":"eth0"}"#).unwrap();
        assert_eq!(ok.ifname(), "eth0");
        assert!(serde_json::from_str::<Owner>(r#"{"container_id":"","ifname":"eth0"}"#).is_err());
    }

    #[test]
    fn pool_names() {
        assert!(check_pool_name("default-v6.a_b").is_ok());
        assert!(check_pool_name("a/b").is_err());
        assert!(check_pool_name("").is_err());
    }
}
