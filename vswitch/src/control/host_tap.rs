//! Addresses and ports for container runtimes that move interfaces themselves (Docker's
//! libnetwork): an address is reserved first (the runtime's IPAM asks before any container
//! exists), later a TAP is created in the daemon's namespace for it and put on the switch, and
//! the runtime moves and renames that TAP into the container. The daemon keeps the TAP's
//! queues open, so the port keeps working wherever the device goes.
//!
//! Reservations are leases of the network's pool like those of `vswitch attach`, and are kept
//! in `reservations.json` in the state directory so that a restarted daemon keeps their
//! addresses and finds their TAPs again: in its own namespace under the name it gave, or in
//! the recorded sandbox under any name, by MAC.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ipnet::IpNet;
use netns::{NetNs, Netlink, NsRef, Tap};
use serde::{Deserialize, Serialize};

use crate::wire::MacAddr;

/// The interface name of every reservation's lease owner.
pub const OWNER_IFNAME: &str = "tap";

/// `reserve`: lease an address on a network, before any interface exists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    /// The network.
    pub network: String,
    /// A fixed address instead of the next free one; reserving an address already reserved
    /// returns that reservation.
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// The runtime's endpoint id, to plug and unplug the reservation by.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A fixed MAC instead of the one derived from the address.
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

/// `unreserve`: release a reservation (unplugging its TAP first).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnreserveRequest {
    /// The network.
    pub network: String,
    /// The reserved address.
    pub address: IpAddr,
}

/// `plug_tap`: create a TAP for a reservation in the daemon's namespace and switch it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlugTapRequest {
    /// The endpoint id given at reserve time.
    pub endpoint: String,
    /// The TAP's name in the daemon's namespace (at most 15 bytes).
    pub tap: String,
    /// The namespace the runtime moves it into (a path), where a restarted daemon finds it.
    pub sandbox: String,
}

/// `unplug_tap`: take an endpoint's TAP off the switch and delete it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnplugTapRequest {
    /// The endpoint id.
    pub endpoint: String,
}

/// A reserved address and, once plugged, its TAP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The network.
    pub network: String,
    /// Its VNI.
    pub vni: u32,
    /// The address with the network's prefix length.
    pub address: IpNet,
    /// The network's gateway on this node.
    pub gateway: IpAddr,
    /// The network's MTU.
    pub mtu: u16,
    /// The interface's MAC.
    pub mac: MacAddr,
    /// The lease's owner id in the pool.
    pub owner: String,
    /// The runtime's endpoint id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The TAP's name in the daemon's namespace, once plugged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// The namespace the TAP was handed to, once plugged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// The reservations on disk, replaced atomically (temporary file, fsync, rename).
#[derive(Debug)]
pub struct ReservationStore {
    path: PathBuf,
}

impl ReservationStore {
    /// The list in `state_dir` (which the port list has already created and checked).
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("reservations.json"),
        }
    }

    /// Every reservation; none when the file does not exist yet.
    pub fn load(&self) -> anyhow::Result<Vec<Reservation>> {
        let text = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)
        {
            Ok(mut file) => {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut file, &mut text)
                    .with_context(|| format!("reading {}", self.path.display()))?;
                text
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", self.path.display()))
    }

    /// Replaces the list, durably.
    pub fn save(&self, list: &[Reservation]) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(list)?;
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", tmp.display()));
            }
            _ => {}
        }
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .and_then(|mut file| {
                file.write_all(&json)?;
                file.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing {}", self.path.display()));
        }
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir).and_then(|d| d.sync_all())?;
        }
        Ok(())
    }
}

/// Whether `link` is the TAP of a reservation with MAC `mac`.
fn is_ours(link: &netns::LinkInfo, mac: MacAddr) -> bool {
    link.kind.as_deref() == Some("tun") && link.mac == Some(mac.0)
}

/// Creates the TAP of a reservation in the daemon's namespace, replacing a leftover of its own
/// (same name, a TAP with the reservation's MAC), with the reservation's MAC and MTU; the
/// runtime brings it up where it moves it. A link of that name that is not such a leftover is
/// left alone and the name refused.
pub fn create(name: &str, r: &Reservation, offloads: bool, queues: usize) -> anyhow::Result<Tap> {
    netns::validate_ifname(name).with_context(|| format!("TAP name {name:?}"))?;
    let here = Netlink::current()?;
    match here.link_info(name)? {
        Some(link) if is_ours(&link, r.mac) => {
            here.delete_link(name)?;
        }
        Some(_) => {
            return Err(super::api::ApiError::new(
                super::api::ErrorKind::NameTaken,
                format!(
                    "{name} already exists in vswitchd's namespace and is not this endpoint's TAP"
                ),
            )
            .field("tap")
            .into());
        }
        None => {}
    }
    let tap = Tap::create(&super::attach::tap_options(name, offloads, queues))?;
    let configured = here
        .set_mac(name, r.mac.0)
        .and_then(|()| here.set_mtu(name, u32::from(r.mtu)));
    if let Err(e) = configured {
        drop(tap);
        let _ = here.delete_link(name);
        return Err(e.into());
    }
    Ok(tap)
}

/// Where a reservation's TAP is: in the daemon's namespace under its name (not handed over
/// yet, or handed back), or in the sandbox under whatever name the runtime gave it, found by
/// MAC. `None` when it is in neither (the container is gone).
fn locate(r: &Reservation) -> anyhow::Result<Option<(Option<NetNs>, String)>> {
    let Some(name) = &r.tap else {
        return Ok(None);
    };
    if let Some(link) = Netlink::current()?.link_info(name)?
        && is_ours(&link, r.mac)
    {
        return Ok(Some((None, name.clone())));
    }
    let Some(sandbox) = &r.sandbox else {
        return Ok(None);
    };
    let ns_ref: NsRef = sandbox.parse()?;
    let ns = match NetNs::open(&ns_ref) {
        Ok(ns) => ns,
        Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::ESRCH | libc::EINVAL)) => {
            return Ok(None);
        }
        // A file that is no namespace any more: the sandbox is gone.
        Err(netns::Error::InvalidArgument { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let found = Netlink::in_namespace(&ns)?
        .links()?
        .into_iter()
        .find(|l| is_ours(l, r.mac));
    Ok(found.map(|link| (Some(ns), link.name)))
}

/// Opens a reservation's TAP again, wherever it is; `None` when it is gone.
pub fn reopen(r: &Reservation, offloads: bool, queues: usize) -> anyhow::Result<Option<Tap>> {
    let Some((ns, name)) = locate(r)? else {
        return Ok(None);
    };
    let options = super::attach::tap_options(&name, offloads, queues);
    Ok(Some(match ns {
        None => Tap::attach(&options)?,
        Some(ns) => ns.run(|| Tap::attach(&options))??,
    }))
}

/// Deletes a reservation's TAP wherever it is: a runtime that moves the device back after
/// the endpoint left (libnetwork does) finds nothing to move. `false` when it was gone.
pub fn delete(r: &Reservation) -> anyhow::Result<bool> {
    let Some((ns, name)) = locate(r)? else {
        return Ok(false);
    };
    let nl = match &ns {
        None => Netlink::current()?,
        Some(ns) => Netlink::in_namespace(ns)?,
    };
    Ok(nl.delete_link(&name)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_refuse_unknown_fields_and_reservations_round_trip() {
        let r: ReserveRequest = serde_json::from_str(r#"{"network":"app"}"#).unwrap();
        assert!(r.ip.is_none() && r.endpoint.is_none());
        assert!(serde_json::from_str::<PlugTapRequest>(r#"{"endpoint":"e","tap":"t"}"#).is_err());
        assert!(serde_json::from_str::<UnplugTapRequest>(r#"{"endpoint":"e","x":1}"#).is_err());
        let reservation = Reservation {
            network: "app".into(),
            vni: 7,
            address: "10.244.1.5/16".parse().unwrap(),
            gateway: "10.244.1.1".parse().unwrap(),
            mtu: 1450,
            mac: MacAddr([0x0a, 0x58, 10, 244, 1, 5]),
            owner: "reserved-1".into(),
            endpoint: Some("e1".into()),
            tap: None,
            sandbox: None,
        };
        let json = serde_json::to_string(&reservation).unwrap();
        assert!(!json.contains("tap"), "{json}");
        assert_eq!(
            serde_json::from_str::<Reservation>(&json).unwrap(),
            reservation
        );
    }

    #[test]
    fn the_store_keeps_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReservationStore::new(dir.path());
        assert!(store.load().unwrap().is_empty());
        let r = Reservation {
            network: "app".into(),
            vni: 7,
            address: "10.244.1.5/16".parse().unwrap(),
            gateway: "10.244.1.1".parse().unwrap(),
            mtu: 1450,
            mac: MacAddr([0x0a, 0x58, 10, 244, 1, 5]),
            owner: "reserved-1".into(),
            endpoint: None,
            tap: Some("vswabc".into()),
            sandbox: Some("/run/docker/netns/x".into()),
        };
        store.save(std::slice::from_ref(&r)).unwrap();
        assert_eq!(store.load().unwrap(), vec![r]);
    }
}
