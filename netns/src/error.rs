//! The crate's error type: which operation failed, on which object, and why.

use std::io;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an operation on a namespace, link or TAP failed.
///
/// Every variant names the operation (`op`, e.g. "creating veth") and the object it
/// was applied to (`object`, e.g. "vs0a/vs0b"), so the message reads
/// `creating veth vs0a/vs0b: File exists (os error 17)`. Kernel error codes stay
/// visible through [`Error::errno`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call or a netlink request failed with an error code.
    #[error("{op} {object}: {source}")]
    Os {
        /// The operation that failed.
        op: &'static str,
        /// The namespace, link or device it was applied to.
        object: String,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
    /// A link the operation refers to does not exist.
    #[error("{op} {object}: no link named {link}")]
    NoSuchLink {
        /// The operation that failed.
        op: &'static str,
        /// The object it was applied to.
        object: String,
        /// The missing link.
        link: String,
    },
    /// An interface or namespace name breaks the kernel's naming rules.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An argument is out of range or inconsistent with another.
    #[error("{op} {object}: {reason}")]
    InvalidArgument {
        /// The operation that was refused.
        op: &'static str,
        /// The object it was meant for.
        object: String,
        /// What is wrong with the arguments.
        reason: &'static str,
    },
    /// The netlink layer failed without a kernel error code (malformed or
    /// unexpected reply, closed connection).
    #[error("{op} {object}: netlink: {message}")]
    Netlink {
        /// The operation that failed.
        op: &'static str,
        /// The object it was applied to.
        object: String,
        /// What the netlink layer reported.
        message: String,
    },
}

impl Error {
    pub(crate) fn os(op: &'static str, object: impl Into<String>, source: io::Error) -> Self {
        Error::Os {
            op,
            object: object.into(),
            source,
        }
    }

    pub(crate) fn from_errno(
        op: &'static str,
        object: impl Into<String>,
        errno: nix::Error,
    ) -> Self {
        Self::os(op, object, io::Error::from_raw_os_error(errno as i32))
    }

    pub(crate) fn invalid(
        op: &'static str,
        object: impl Into<String>,
        reason: &'static str,
    ) -> Self {
        Error::InvalidArgument {
            op,
            object: object.into(),
            reason,
        }
    }

    pub(crate) fn from_rtnetlink(
        op: &'static str,
        object: impl Into<String>,
        err: rtnetlink::Error,
    ) -> Self {
        match err {
            rtnetlink::Error::NetlinkError(msg) if msg.code.is_some() => {
                Self::os(op, object, msg.to_io())
            }
            other => Error::Netlink {
                op,
                object: object.into(),
                message: other.to_string(),
            },
        }
    }

    /// The kernel error code behind this error, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the object (link, namespace, device, route) does not exist:
    /// `ENOENT`, `ENODEV`, `ESRCH` or a link looked up by name that is absent.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NoSuchLink { .. })
            || matches!(
                self.errno(),
                Some(libc::ENOENT | libc::ENODEV | libc::ESRCH)
            )
    }

    /// True when the object to be created exists already (`EEXIST`).
    pub fn is_already_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// True when the caller lacks the privilege (`EPERM`, `EACCES`).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self.errno(), Some(libc::EPERM | libc::EACCES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_operation_and_object() {
        let e = Error::os(
            "creating veth",
            "vs0a/vs0b",
            io::Error::from_raw_os_error(libc::EEXIST),
        );
        assert_eq!(
            e.to_string(),
            "creating veth vs0a/vs0b: File exists (os error 17)"
        );
        assert!(e.is_already_exists());
        assert!(!e.is_not_found());
        assert_eq!(e.errno(), Some(libc::EEXIST));
    }

    #[test]
    fn not_found_kinds() {
        for code in [libc::ENOENT, libc::ENODEV, libc::ESRCH] {
            let e = Error::os("deleting link", "x", io::Error::from_raw_os_error(code));
            assert!(e.is_not_found());
        }
        let e = Error::NoSuchLink {
            op: "setting mtu of",
            object: "eth0".into(),
            link: "eth0".into(),
        };
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "setting mtu of eth0: no link named eth0");
    }
}
