//! Putting a container's interface in place and taking it away: a persistent TAP created in the
//! daemon's namespace under a staging name ([`create_staged`]), moved into the container's and
//! renamed there ([`move_in`]), addressed and routed ([`configure`]); [`ensure_interface`] does
//! it all, or re-opens the interface of a container attached before a restart.
//!
//! [`undo_interface`] takes back what an attach that did not finish put in place, and only
//! that: the TAP under its staging name, the container's interface when it is ours (a TAP with
//! the attachment's MAC: never a device of the container's own that merely has the name), and
//! `lo` down again when the attach found it down. Every step and the undo are idempotent.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use netns::{LinkInfo, NetNs, Netlink, Offloads, Tap, TapOptions};

use super::api::Attachment;
use super::state::Intent;
use crate::wire::MacAddr;

/// Why an interface could not be put in place or removed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A namespace, link or TAP operation failed.
    #[error(transparent)]
    Netns(#[from] netns::Error),
    /// The interface name is taken in the container by a device that is not ours.
    #[error(
        "{ifname} already exists in {netns} and is not an interface vswitch made for this \
         container: choose another --ifname (or remove that device)"
    )]
    NameTaken {
        /// The interface name.
        ifname: String,
        /// The namespace.
        netns: String,
    },
}

/// The MAC of an interface whose address is `ip`: `0a:58` and the IPv4 address, a locally
/// administered unicast MAC that is unique wherever the address is.
pub fn mac_for(ip: Ipv4Addr) -> MacAddr {
    let [a, b, c, d] = ip.octets();
    MacAddr([0x0a, 0x58, a, b, c, d])
}

/// The name a TAP carries in the daemon's namespace between its creation and its move into the
/// container: unique per attachment, at most 15 bytes.
fn staging_name(a: &Attachment) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&a.container_id, &a.ifname, &a.network).hash(&mut hasher);
    format!("vs{:08x}", hasher.finish() as u32)
}

/// Whether `name` is one a TAP carries between its creation and its move into a container.
pub(super) fn is_staging_name(name: &str) -> bool {
    name.len() == 10
        && name.starts_with("vs")
        && name[2..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Options for the container's TAP: always multi-queue, so that it can be re-adopted by a
/// daemon running any number of workers, with `queues` queues.
pub(crate) fn tap_options(name: &str, offloads: bool, queues: usize) -> TapOptions {
    let mut options = TapOptions::new(name);
    options.persist = true;
    options.multi_queue = true;
    options.queues = queues.max(1);
    if offloads {
        // The kernel may accept fewer; netns falls back and reports what it took.
        options.vnet_hdr = true;
        options.offloads =
            Offloads::CSUM | Offloads::TSO4 | Offloads::TSO6 | Offloads::USO4 | Offloads::USO6;
    }
    options
}

/// Makes sure the container has the interface `a` describes, fully configured, and returns the
/// open TAP with one queue per datapath worker (`queues`); a single-queue TAP made by an older
/// daemon is re-adopted with its one queue. Creates the interface when absent, re-opens it
/// when present. With `offloads`, the TAP carries virtio-net headers and takes checksum
/// offload and TCP/UDP segmentation offload.
pub fn ensure_interface(
    a: &Attachment,
    ns: &NetNs,
    offloads: bool,
    queues: usize,
) -> Result<Tap, AttachError> {
    let inside = Netlink::in_namespace(ns)?;
    let tap = if inside.link_index(&a.ifname)?.is_some() {
        let options = tap_options(&a.ifname, offloads, queues);
        let single = TapOptions {
            multi_queue: false,
            queues: 1,
            ..options.clone()
        };
        ns.run(|| Tap::attach(&options).or_else(|_| Tap::attach(&single)))?
            .map_err(|_| AttachError::NameTaken {
                ifname: a.ifname.clone(),
                netns: a.netns.clone(),
            })?
    } else {
        let tap = create_staged(a, offloads, queues)?;
        move_in(a, ns)?;
        tap
    };
    configure(&inside, a)?;
    Ok(tap)
}

/// Creates the container's TAP in the daemon's namespace under its staging name, with the
/// attachment's MAC and MTU, replacing a leftover of an attach that did not finish.
pub fn create_staged(a: &Attachment, offloads: bool, queues: usize) -> Result<Tap, AttachError> {
    let here = Netlink::current()?;
    let staging = staging_name(a);
    here.delete_link(&staging)?;
    let tap = Tap::create(&tap_options(&staging, offloads, queues))?;
    here.set_mac(&staging, a.mac.0)?;
    here.set_mtu(&staging, u32::from(a.mtu))?;
    Ok(tap)
}

/// Moves the staged TAP into the container's namespace under its interface name. The name must
/// be free there, or held by a leftover of ours (which is replaced); a device of the
/// container's own under that name is [`AttachError::NameTaken`].
pub fn move_in(a: &Attachment, ns: &NetNs) -> Result<(), AttachError> {
    let inside = Netlink::in_namespace(ns)?;
    if let Some(link) = inside.link_info(&a.ifname)? {
        if !is_ours(&link, a) {
            return Err(AttachError::NameTaken {
                ifname: a.ifname.clone(),
                netns: a.netns.clone(),
            });
        }
        inside.delete_link(&a.ifname)?;
    }
    Netlink::current()?.move_to_namespace_as(&staging_name(a), ns, &a.ifname)?;
    Ok(())
}

/// Whether a link is the interface of attachment `a`: a TAP carrying its MAC.
fn is_ours(link: &LinkInfo, a: &Attachment) -> bool {
    link.kind.as_deref() == Some("tun") && link.mac == Some(a.mac.0)
}

/// How `lo` is in the namespace `nl` is bound to, for an attach to put it back so.
pub fn loopback(nl: &Netlink) -> Result<Intent, AttachError> {
    let up = nl.link_info("lo")?.is_some_and(|lo| lo.up);
    Ok(Intent {
        lo_was_up: up,
        lo_addresses: if up { Vec::new() } else { nl.addresses("lo")? },
    })
}

/// Takes back what an unfinished attach of `a` may have put in place: the staged TAP in the
/// daemon's namespace, and in the container's namespace (when it is still there) the interface
/// if it is ours, and `lo` as `before` says it was (down, with only the addresses it had).
pub fn undo_interface(
    a: &Attachment,
    ns: Option<&NetNs>,
    before: &Intent,
) -> Result<(), AttachError> {
    Netlink::current()?.delete_link(&staging_name(a))?;
    let Some(ns) = ns else {
        return Ok(());
    };
    let inside = Netlink::in_namespace(ns)?;
    if let Some(link) = inside.link_info(&a.ifname)?
        && is_ours(&link, a)
    {
        inside.delete_link(&a.ifname)?;
    }
    if !before.lo_was_up && inside.link_index("lo")?.is_some() {
        inside.set_down("lo")?;
        for address in inside.addresses("lo")? {
            if !before.lo_addresses.contains(&address) {
                inside.delete_address("lo", address)?;
            }
        }
    }
    Ok(())
}

/// Gives the container's interface its MAC, MTU, addresses and default route, and brings it
/// and `lo` up.
pub fn configure(nl: &Netlink, a: &Attachment) -> Result<(), AttachError> {
    nl.set_mac(&a.ifname, a.mac.0)?;
    nl.set_mtu(&a.ifname, u32::from(a.mtu))?;
    ignore_exists(nl.add_address(&a.ifname, a.address.addr(), a.address.prefix_len()))?;
    if let Some(v6) = a.address6 {
        ignore_exists(nl.add_address(&a.ifname, v6.addr(), v6.prefix_len()))?;
    }
    nl.set_up("lo")?;
    nl.set_up(&a.ifname)?;
    let default = match a.gateway {
        IpAddr::V4(_) => IpNet::V4(Default::default()),
        IpAddr::V6(_) => IpNet::V6(Default::default()),
    };
    ignore_exists(nl.add_route(default, Some(a.gateway), Some(&a.ifname)))?;
    Ok(())
}

fn ignore_exists(result: Result<(), netns::Error>) -> Result<(), netns::Error> {
    match result {
        Err(e) if e.is_already_exists() => Ok(()),
        other => other,
    }
}

/// Removes the container's interface; `Ok(false)` when it was already gone.
pub fn remove_interface(a: &Attachment, ns: &NetNs) -> Result<bool, AttachError> {
    Ok(Netlink::in_namespace(ns)?.delete_link(&a.ifname)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_embed_the_address_and_are_locally_administered_unicast() {
        let mac = mac_for(Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(mac.to_string(), "0a:58:0a:f4:01:02");
        assert!(mac.is_unicast() && mac.is_locally_administered());
    }

    #[test]
    fn staging_names_fit_an_interface_name() {
        let a = Attachment::example("a-very-long-container-identifier-0123456789");
        let name = staging_name(&a);
        assert!(name.len() <= 15 && name.starts_with("vs"), "{name}");
        assert!(is_staging_name(&name), "{name}");
        assert!(!is_staging_name("vsw-default") && !is_staging_name("vswitch0"));
    }
}
