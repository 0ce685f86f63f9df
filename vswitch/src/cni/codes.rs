//! Error codes: the spec's (below 100) and `vswitch-cni`'s own (from 100), and which control
//! API refusal becomes which.

use super::types::CniError;
use crate::control::api::{ClientError, ErrorKind};

/// The spec's: the configuration's `cniVersion` is not one the plugin speaks.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// The spec's: a field of the configuration the plugin does not support (`bandwidth`).
pub const UNSUPPORTED_FIELD: u32 = 2;
/// The spec's: the container is unknown or does not exist (CHECK of a container never attached,
/// a namespace that does not exist).
pub const UNKNOWN_CONTAINER: u32 = 3;
/// The spec's: a `CNI_*` variable is missing or invalid.
pub const INVALID_ENVIRONMENT: u32 = 4;
/// The spec's: reading stdin or writing stdout failed.
pub const IO_FAILURE: u32 = 5;
/// The spec's: stdin or `prevResult` is not the JSON the spec describes.
pub const DECODE_FAILURE: u32 = 6;
/// The spec's: the configuration is valid JSON but cannot work (an address or MAC that does not
/// parse, two addresses of one family).
pub const INVALID_NETWORK_CONFIG: u32 = 7;
/// The spec's: a transient failure; the runtime may try again later.
pub const TRY_AGAIN_LATER: u32 = 11;
/// The spec's (1.1, STATUS): the plugin cannot serve ADD now.
pub const NOT_AVAILABLE: u32 = 50;

/// Ours: `vswitchd` is not running (no control socket, or nobody listening on it).
pub const DAEMON_NOT_RUNNING: u32 = 100;
/// Ours: the daemon carries no network of that name.
pub const UNKNOWN_NETWORK: u32 = 101;
/// Ours: this node's address pool for the network is full.
pub const ADDRESS_EXHAUSTED: u32 = 102;
/// Ours: the container's interface is already attached to another network.
pub const ALREADY_ATTACHED: u32 = 103;
/// Ours: the requested static address is leased to another container.
pub const ADDRESS_TAKEN: u32 = 104;
/// Ours: the interface name is taken in the container by a device that is not ours.
pub const NAME_TAKEN: u32 = 105;
/// Ours: a host port of `portMappings` is published by another container.
pub const PORT_TAKEN: u32 = 108;
/// Ours: the plugin may not use the control socket, or the daemon may not do what it must.
pub const PERMISSION_DENIED: u32 = 106;
/// Ours (CHECK): the container's interface is not what was attached.
pub const CHECK_FAILED: u32 = 107;
/// Ours: the daemon failed for another reason; the details say which.
pub const DAEMON_ERROR: u32 = 110;

/// An error of `code` with a short message and the details.
pub fn error(version: &str, code: u32, msg: &str, details: impl Into<String>) -> CniError {
    CniError {
        cni_version: version.to_owned(),
        code,
        msg: msg.to_owned(),
        details: Some(details.into()),
    }
}

/// The CNI error for a failed control request.
pub fn from_client(version: &str, e: &ClientError) -> CniError {
    let details = e.to_string();
    if e.is_daemon_missing() {
        let details = format!(
            "{details} (for vswitch-cni, the \"socket\" key of its entry in the conflist \
             names the socket)"
        );
        return error(
            version,
            DAEMON_NOT_RUNNING,
            "vswitchd is not running",
            details,
        );
    }
    let field = match e {
        ClientError::Refused(refusal) => refusal.field.as_deref(),
        _ => None,
    };
    let (code, msg) = match e.kind() {
        Some(ErrorKind::UnknownNetwork) => (UNKNOWN_NETWORK, "unknown network"),
        Some(ErrorKind::AddressExhausted) => (ADDRESS_EXHAUSTED, "no address left"),
        Some(ErrorKind::AlreadyAttached) => (ALREADY_ATTACHED, "container already attached"),
        Some(ErrorKind::AddressTaken) => (ADDRESS_TAKEN, "address taken"),
        Some(ErrorKind::NameTaken) => (NAME_TAKEN, "interface name taken"),
        Some(ErrorKind::PortTaken) => (PORT_TAKEN, "host port published already"),
        Some(ErrorKind::PermissionDenied) => (PERMISSION_DENIED, "permission denied"),
        Some(ErrorKind::NamespaceNotFound) => (UNKNOWN_CONTAINER, "no such network namespace"),
        Some(ErrorKind::Unavailable) => (TRY_AGAIN_LATER, "vswitchd is busy; try again later"),
        // What the runtime set (CNI_NETNS, CNI_IFNAME, CNI_CONTAINERID) or the configuration.
        Some(ErrorKind::BadRequest) => match field {
            Some("netns" | "ifname" | "container_id") => {
                (INVALID_ENVIRONMENT, "invalid CNI_* variable")
            }
            _ => (INVALID_NETWORK_CONFIG, "invalid network configuration"),
        },
        _ => (DAEMON_ERROR, "vswitchd failed"),
    };
    error(version, code, msg, details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::ApiError;

    fn refused(kind: ErrorKind, field: Option<&str>) -> ClientError {
        let mut e = ApiError::new(kind, "m");
        e.field = field.map(str::to_owned);
        ClientError::Refused(e)
    }

    #[test]
    fn each_refusal_has_its_own_code() {
        let cases = [
            (refused(ErrorKind::UnknownNetwork, Some("network")), 101),
            (refused(ErrorKind::AddressExhausted, None), 102),
            (refused(ErrorKind::AlreadyAttached, None), 103),
            (refused(ErrorKind::AddressTaken, Some("ip")), 104),
            (refused(ErrorKind::NameTaken, Some("ifname")), 105),
            (refused(ErrorKind::PermissionDenied, None), 106),
            (refused(ErrorKind::NamespaceNotFound, Some("netns")), 3),
            (refused(ErrorKind::Unavailable, None), 11),
            (refused(ErrorKind::BadRequest, Some("ifname")), 4),
            (refused(ErrorKind::BadRequest, Some("ip")), 7),
            (refused(ErrorKind::Internal, None), 110),
        ];
        for (e, code) in cases {
            assert_eq!(from_client("1.0.0", &e).code, code, "{e:?}");
        }
        let missing = ClientError::Connect {
            path: "/run/x.sock".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        let e = from_client("1.0.0", &missing);
        assert_eq!(e.code, DAEMON_NOT_RUNNING);
        assert!(e.details.unwrap().contains("/run/x.sock"));
    }
}
