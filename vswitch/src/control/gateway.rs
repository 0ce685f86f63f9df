//! The node's side of the gateway: host ports, routes between networks, egress masquerade and
//! published ports.
//!
//! - A network with a host port gets an interface in the daemon's namespace, `vsw-NAME`, a TAP
//!   holding the gateway's MAC and address (with the network's prefix) and served by the switch
//!   as the network's host port: the host reaches containers, and containers the host, by the
//!   gateway address. It is not persistent: it goes with the daemon.
//! - Routes between networks (`routes_to`, both ways) are handed to the switch, which routes
//!   where frames enter.
//! - Masquerade and published ports are nftables rules in the table `inet vswitch`
//!   ([`netns::nft`]), replaced whole at every change, deleted when nothing needs them and
//!   when the daemon stops; the host's forwarding between two host ports is dropped there too,
//!   so that networks the switch does not connect stay apart on the host as well.
//! - IPv4 forwarding is turned on in the daemon's namespace when a network is masqueraded or a
//!   port published, and left on afterwards (other software may rely on it by then).

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context;
use ipnet::Ipv4Net;
use netns::nft::{self, Masquerade, NatRules, Protocol, PublishedPort};
use netns::{Netlink, Offloads, Tap};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::attach::{mac_for, tap_options};
use super::config::NetworkConfig;
use crate::io::{Command, Datapath, TapQueue};
use crate::switch::{PortId, Route};
use crate::wire::Vni;

/// The nftables table (family `inet`) holding every rule the daemon makes.
pub const NFT_TABLE: &str = "vswitch";

/// Host port interfaces are named with this prefix.
pub const HOST_PORT_PREFIX: &str = "vsw-";

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// A published port: connections to `host_port` on the host's addresses reach the container's
/// `container_port`. Written `8080:80/tcp` (`/tcp` may be left out; `/udp` for UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// The host's port.
    pub host_port: u16,
    /// The container's port.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: Transport,
}

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = match self.protocol {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        };
        write!(f, "{}:{}/{protocol}", self.host_port, self.container_port)
    }
}

impl FromStr for PortMapping {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ports, protocol) = match s.split_once('/') {
            Some((ports, "tcp")) => (ports, Transport::Tcp),
            Some((ports, "udp")) => (ports, Transport::Udp),
            Some((_, other)) => return Err(format!("{other:?} is not tcp or udp")),
            None => (s, Transport::Tcp),
        };
        let Some((host, container)) = ports.split_once(':') else {
            return Err(format!("{s:?} is not HOST_PORT:CONTAINER_PORT[/tcp|/udp]"));
        };
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{p:?} is not a port number (1-65535)")),
            Ok(n) => Ok(n),
        };
        Ok(PortMapping {
            host_port: port(host)?,
            container_port: port(container)?,
            protocol,
        })
    }
}

/// Checks the gateway keys of every network: `routes_to` names other networks, a masqueraded
/// network has its host port. Errors are `(key, reason)`.
pub(super) fn validate(networks: &[NetworkConfig]) -> Result<(), (String, String)> {
    for (i, net) in networks.iter().enumerate() {
        let key = |field: &str| format!("networks[{i}].{field}");
        if net.masquerade && net.host_port_setting == Some(false) {
            return Err((
                key("masquerade"),
                "traffic leaves through the host port: set host_port = true, or masquerade = \
                 false"
                    .into(),
            ));
        }
        for (j, target) in net.routes_to.iter().enumerate() {
            let key = format!("networks[{i}].routes_to[{j}]");
            if *target == net.name {
                return Err((key, "a network cannot route to itself".into()));
            }
            if !networks.iter().any(|n| n.name == *target) {
                return Err((key, format!("no network is named {target:?}")));
            }
        }
    }
    Ok(())
}

/// The name of a network's host port interface: `vsw-NAME`, or `vsw-` and a hash of the name
/// when that would not fit in 15 bytes.
pub fn host_ifname(network: &str) -> String {
    let name = format!("{HOST_PORT_PREFIX}{network}");
    if name.len() <= netns::IFNAME_MAX {
        return name;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    network.hash(&mut hasher);
    format!("{HOST_PORT_PREFIX}{:08x}", hasher.finish() as u32)
}

/// A network as the gateway needs to know it.
pub(super) struct GatewayNetwork<'a> {
    pub config: &'a NetworkConfig,
    pub vni: Vni,
    pub gateway: Ipv4Addr,
}

/// A published port of an attached container.
pub(super) struct Published {
    pub mapping: PortMapping,
    pub address: Ipv4Addr,
    pub network: Ipv4Net,
}

/// What the daemon made for the gateway: its host ports.
#[derive(Default)]
pub(super) struct Gateways {
    /// Host ports by network name.
    host_ports: BTreeMap<String, PortId>,
    /// Whether the nftables table holds rules of ours.
    nat_installed: bool,
}

impl Gateways {
    /// Makes the host ports and the routes agree with `networks`.
    pub fn sync(
        &mut self,
        datapath: &Datapath,
        networks: &[GatewayNetwork<'_>],
        offloads: bool,
    ) -> anyhow::Result<()> {
        let unwanted: Vec<String> = self
            .host_ports
            .keys()
            .filter(|name| {
                !networks
                    .iter()
                    .any(|n| n.config.name == **name && n.config.host_port())
            })
            .cloned()
            .collect();
        for name in unwanted {
            self.remove_host_port(datapath, &name)?;
        }
        for net in networks.iter().filter(|n| n.config.host_port()) {
            if !self.host_ports.contains_key(&net.config.name) {
                let id = add_host_port(datapath, net, offloads)?;
                self.host_ports.insert(net.config.name.clone(), id);
            }
        }
        let routes: Vec<(Vni, Vec<Route>)> = networks
            .iter()
            .map(|from| {
                let to = networks
                    .iter()
                    .filter(|to| {
                        from.config.routes_to.contains(&to.config.name)
                            || to.config.routes_to.contains(&from.config.name)
                    })
                    .map(|to| Route {
                        vni: to.vni,
                        subnet: to.config.subnet,
                    })
                    .collect();
                (from.vni, to)
            })
            .collect();
        let routes: Arc<[(Vni, Vec<Route>)]> = routes.into();
        let results = datapath.ask(|reply| Command::SetRoutes {
            routes: routes.clone(),
            reply,
        })?;
        for result in results {
            result.context("setting routes between networks")?;
        }
        Ok(())
    }

    /// Takes a network's host port off the switch and removes its interface.
    pub fn remove_host_port(&mut self, datapath: &Datapath, network: &str) -> anyhow::Result<()> {
        if let Some(id) = self.host_ports.remove(network) {
            datapath.ask(|reply| Command::RemovePort { id, reply })?;
        }
        let ifname = host_ifname(network);
        Netlink::current()?
            .delete_link(&ifname)
            .with_context(|| format!("removing the host port {ifname}"))?;
        Ok(())
    }

    /// Makes the nftables table hold the masquerade of `networks` and the `published` ports,
    /// and drop the host's forwarding between host ports; deletes it when nothing needs it.
    pub fn sync_nat(
        &mut self,
        networks: &[GatewayNetwork<'_>],
        published: &[Published],
    ) -> anyhow::Result<()> {
        let cluster: Vec<Ipv4Net> = networks.iter().map(|n| n.config.subnet).collect();
        let rules = NatRules {
            masquerade: networks
                .iter()
                .filter(|n| n.config.masquerade)
                .map(|n| Masquerade {
                    source: n.config.subnet,
                    cluster: cluster.clone(),
                })
                .collect(),
            published: published
                .iter()
                .map(|p| PublishedPort {
                    protocol: match p.mapping.protocol {
                        Transport::Tcp => Protocol::Tcp,
                        Transport::Udp => Protocol::Udp,
                    },
                    host_port: p.mapping.host_port,
                    target: SocketAddrV4::new(p.address, p.mapping.container_port),
                    network: p.network,
                })
                .collect(),
            isolated: if self.host_ports.len() > 1 {
                self.host_ports.keys().map(|n| host_ifname(n)).collect()
            } else {
                Vec::new()
            },
        };
        if rules == NatRules::default() {
            return self.teardown();
        }
        if !rules.masquerade.is_empty() || !rules.published.is_empty() {
            enable_forwarding()?;
        }
        nft::apply(NFT_TABLE, &rules).context("writing the nftables table inet vswitch")?;
        self.nat_installed = true;
        Ok(())
    }

    /// Removes the nftables table if there are rules of ours in it; the host ports go with
    /// the daemon's descriptors.
    pub fn teardown(&mut self) -> anyhow::Result<()> {
        if self.nat_installed {
            nft::delete_table(NFT_TABLE).context("removing the nftables table inet vswitch")?;
            self.nat_installed = false;
        }
        Ok(())
    }

    /// At start: removes the table a daemon that could not clean up (killed outright) left.
    /// A failure is only worth a warning: a node without nftables runs on without NAT.
    pub fn remove_leftovers(&mut self) {
        match nft::delete_table(NFT_TABLE) {
            Ok(true) => info!("removed the nftables table inet {NFT_TABLE} of an earlier run"),
            Ok(false) => {}
            Err(e) => warn!("looking for an nftables table of an earlier run: {e}"),
        }
    }
}

/// Creates (again, after a restart) the network's host port interface and hands its TAP to
/// the datapath.
fn add_host_port(
    datapath: &Datapath,
    net: &GatewayNetwork<'_>,
    offloads: bool,
) -> anyhow::Result<PortId> {
    let ifname = host_ifname(&net.config.name);
    let nl = Netlink::current()?;
    // A leftover of a daemon that could not clean up.
    nl.delete_link(&ifname)?;
    let mut options = tap_options(&ifname, offloads, datapath.workers());
    options.persist = false;
    let tap = Tap::create(&options).with_context(|| format!("creating the host port {ifname}"))?;
    let configured = (|| -> netns::Result<()> {
        nl.set_mac(&ifname, mac_for(net.gateway).0)?;
        nl.set_mtu(&ifname, u32::from(net.config.mtu()))?;
        nl.add_address(
            &ifname,
            IpAddr::V4(net.gateway),
            net.config.subnet.prefix_len(),
        )?;
        nl.set_up(&ifname)
    })();
    configured.with_context(|| format!("configuring the host port {ifname}"))?;
    let vnet_hdr = tap.vnet_hdr_len() > 0;
    let uso = tap.offloads().contains(Offloads::USO4);
    let queues: Arc<[Arc<TapQueue>]> = tap
        .into_queues()
        .into_iter()
        .map(|fd| Arc::new(TapQueue::new(fd, vnet_hdr).with_uso(uso)))
        .collect();
    let vni = net.vni;
    let added = datapath.ask(|reply| Command::AddHostPort {
        queues: queues.clone(),
        vni,
        reply,
    })?;
    let mut id = None;
    for result in added {
        let got = result.with_context(|| format!("adding the host port {ifname} to the switch"));
        match got {
            Ok(got) => {
                id.get_or_insert(got);
            }
            Err(e) => {
                if let Some(id) = id {
                    datapath.ask(|reply| Command::RemovePort { id, reply })?;
                }
                return Err(e);
            }
        }
    }
    let id = id.context("the datapath has stopped")?;
    info!(network = %net.config.name, %ifname, gateway = %net.gateway, "host port up");
    Ok(id)
}

fn enable_forwarding() -> anyhow::Result<()> {
    let on = std::fs::read_to_string(IP_FORWARD).is_ok_and(|v| v.trim() == "1");
    if !on {
        std::fs::write(IP_FORWARD, "1").with_context(|| format!("turning on {IP_FORWARD}"))?;
        info!("IPv4 forwarding turned on for masquerade and published ports");
    }
    Ok(())
}

/// `vswitch node clean`: removes, in the calling thread's namespace, the nftables table and
/// every interface the daemon makes there (host ports `vsw-*`, and TAPs `vs*` left between
/// creation and a move into a container by an interrupted attach). Returns what it removed.
pub fn clean() -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    if nft::delete_table(NFT_TABLE).context("removing the nftables table inet vswitch")? {
        removed.push(format!("nftables table inet {NFT_TABLE}"));
    }
    let nl = Netlink::current()?;
    for link in nl.links()? {
        let ours =
            link.name.starts_with(HOST_PORT_PREFIX) || super::attach::is_staging_name(&link.name);
        if ours && link.kind.as_deref() == Some("tun") && nl.delete_link(&link.name)? {
            removed.push(format!("interface {}", link.name));
        }
    }
    Ok(removed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_parse_and_print() {
        let m: PortMapping = "8080:80/tcp".parse().unwrap();
        assert_eq!(
            m,
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Transport::Tcp
            }
        );
        assert_eq!(m.to_string(), "8080:80/tcp");
        let u: PortMapping = "5353:53/udp".parse().unwrap();
        assert_eq!(u.protocol, Transport::Udp);
        assert_eq!("8080:80".parse::<PortMapping>().unwrap(), m);
        for bad in [
            "8080",
            "0:80",
            "8080:70000",
            "a:80",
            "8080:80/sctp",
            ":80/tcp",
        ] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(
            json,
            r#"{"host_port":5353,"container_port":53,"protocol":"udp"}"#
        );
    }

    #[test]
    fn host_port_names_fit() {
        assert_eq!(host_ifname("default"), "vsw-default");
        let long = host_ifname("a-rather-long-network-name");
        assert!(
            long.len() <= 15 && long.starts_with(HOST_PORT_PREFIX),
            "{long}"
        );
        assert_eq!(long, host_ifname("a-rather-long-network-name"), "stable");
    }

    fn net(name: &str) -> NetworkConfig {
        NetworkConfig::named(name)
    }

    #[test]
    fn routes_name_other_networks_and_masquerade_needs_the_host_port() {
        let mut a = net("a");
        a.routes_to = vec!["b".into()];
        assert!(validate(&[a.clone(), net("b")]).is_ok());
        let (key, why) = validate(&[a.clone()]).unwrap_err();
        assert_eq!(key, "networks[0].routes_to[0]");
        assert!(why.contains("\"b\""), "{why}");
        a.routes_to = vec!["a".into()];
        assert!(validate(&[a]).is_err());
        let mut m = net("m");
        m.masquerade = true;
        assert!(m.host_port(), "masquerade brings the host port");
        m.host_port_setting = Some(false);
        let (key, _) = validate(&[m]).unwrap_err();
        assert_eq!(key, "networks[0].masquerade");
    }
}
