//! The daemon's side of the fleet: what it publishes about itself, how it applies what the
//! fleet decides, and the health loop.
//!
//! One `fleet` thread runs a small runtime of its own with two tasks: the etcd session (with
//! `[store] kind = "etcd"` only, [`crate::fleet::membership`]) and the health loop (always:
//! every probe interval, a probe to every peer on the VXLAN path, then the peers judged from
//! the workers' published counters, [`crate::fleet::health`]). The thread holds the daemon
//! only weakly; [`Daemon::stop_fleet`] ends it (revoking the membership lease).
//!
//! With `fleet.dns`, the switch hands DNS queries to gateways to the name server
//! ([`crate::fleet::dns`]), which answers from the fleet's endpoints and this node's ports and
//! writes answers back through the first worker; attach writes the container's resolv.conf.
//!
//! Changes reach the workers as [`FleetChange`]s, all of one plan in one
//! [`Command::ApplyFleet`], in plan order. A
//! node that is also a static peer (same name or address) keeps its static entry: the fleet
//! pins its endpoints to it but never adds or removes it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Daemon, Peer, State, View};
use crate::control::api::Attachment;
use crate::control::api::{NetworkView, PeerView, StatusView};
use crate::control::config::{Config, StoreConfig};
use crate::fleet::dns::{NameServer, NameTable, upstreams_from};
use crate::fleet::health::{Health, Transition};
use crate::fleet::membership::{self, Local, MembershipConfig, Sink};
use crate::fleet::record::{EndpointRecord, NetworkRef, NodeRecord, endpoint_name};
use crate::fleet::registry::{Change, Registry};
use crate::io::{Command, FleetChange};
use crate::policy::Endpoint;
use crate::switch::{self, Gateway};
use crate::wire::Vni;

/// Time allowed for each etcd request of the membership session.
const ETCD_TIMEOUT: Duration = Duration::from_secs(3);

/// The running fleet thread and what it shares with the daemon.
pub(super) struct FleetLink {
    local: watch::Sender<Local>,
    /// The name server, with `fleet.dns`.
    dns: Option<NameServer>,
    /// With `fleet.resolv_conf`: write containers' resolv.conf.
    resolv_conf: bool,
    /// The other nodes' endpoints, as last read from the registry.
    remote_endpoints: Mutex<Vec<EndpointRecord>>,
    /// Names of the peers found through the fleet (for queries, which take no daemon lock).
    discovered: Mutex<std::collections::BTreeSet<String>>,
    health: Mutex<Health>,
    stop: watch::Sender<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A boot id: different at every start.
fn boot_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

fn v4s(ips: &[IpAddr]) -> Vec<Ipv4Addr> {
    ips.iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// What this node publishes, from the daemon's view.
fn local_of(view: &View, endpoint: SocketAddr, boot: &str, public_key: Option<&str>) -> Local {
    Local {
        node: NodeRecord {
            name: view.node.clone(),
            endpoint,
            networks: view
                .networks
                .iter()
                .map(|n| NetworkRef {
                    name: n.name.clone(),
                    vni: n.vni,
                })
                .collect(),
            public_key: public_key.map(str::to_owned),
            boot: boot.to_owned(),
        },
        endpoints: view
            .ports
            .iter()
            .map(|(_, a)| EndpointRecord {
                node: view.node.clone(),
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
                name: endpoint_name(&a.netns, &a.container_id, &a.labels),
                network: a.network.clone(),
                vni: a.vni,
                mac: a.mac,
                ips: [Some(a.address.addr()), a.address6.map(|v6| v6.addr())]
                    .into_iter()
                    .flatten()
                    .collect(),
                labels: a.labels.clone(),
            })
            .collect(),
    }
}

/// The other nodes' containers on networks this node carries (same name and VNI), as policy
/// endpoints: their labels let rules' selectors match them.
fn policy_endpoints(remote: &[EndpointRecord], networks: &[NetworkView]) -> Vec<Endpoint> {
    remote
        .iter()
        .filter(|e| {
            networks
                .iter()
                .any(|n| n.name == e.network && n.vni == e.vni)
        })
        .map(|e| {
            let container = if e.ifname == "eth0" {
                e.container_id.clone()
            } else {
                format!("{}/{}", e.container_id, e.ifname)
            };
            Endpoint {
                id: format!("{container}@{}", e.node),
                labels: e.labels.clone(),
                ips: e.ips.clone(),
                local: None,
            }
        })
        .collect()
}

/// Applies the session's plans to the daemon.
struct Applier(Weak<Daemon>);

impl Sink for Applier {
    fn apply(&self, changes: Vec<Change>, registry: &Registry) {
        if let Some(daemon) = self.0.upgrade() {
            daemon.apply_fleet(changes);
            if let Some(fleet) = daemon.fleet.get() {
                let me = fleet.local.borrow().node.name.clone();
                let remote: Vec<EndpointRecord> = registry
                    .endpoints()
                    .values()
                    .filter(|e| e.node != me)
                    .cloned()
                    .collect();
                let endpoints = policy_endpoints(&remote, &daemon.view().networks);
                *lock(&fleet.remote_endpoints) = remote;
                fleet.refresh_names();
                if let Err(e) = daemon.policy.set_remote(&daemon.datapath, endpoints) {
                    warn!("fleet: handing remote containers to the policies: {e:#}");
                }
            }
        }
    }

    fn store_reachable(&self, reachable: bool) {
        if let Some(daemon) = self.0.upgrade()
            && let Some(fleet) = daemon.fleet.get()
        {
            lock(&fleet.health).set_store(reachable);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the fleet thread: membership (with an etcd store) and health.
pub(super) fn start(daemon: &Arc<Daemon>, config: &Config) -> anyhow::Result<()> {
    let membership = match &config.store {
        StoreConfig::Etcd {
            endpoints, prefix, ..
        } => Some(MembershipConfig {
            endpoints: endpoints.clone(),
            prefix: prefix.clone(),
            ttl: config.fleet.ttl(),
            timeout: ETCD_TIMEOUT.min(config.fleet.ttl()),
        }),
        StoreConfig::Embedded => None,
    };
    let endpoint = daemon.datapath.local_addr();
    // Published for the fleet's sealed networks; a key that cannot be read was already
    // reported by the sealing layer when a network needs it.
    let public_key = config
        .node
        .private_key
        .as_ref()
        .and_then(|path| crate::control::sealing::read_private_key(path).ok())
        .map(|secret| secret.public_key().to_string());
    let local = local_of(&daemon.view(), endpoint, &boot_id(), public_key.as_deref());
    let (local_tx, local_rx) = watch::channel(local);
    let (stop_tx, stop_rx) = watch::channel(false);
    let interval = config.fleet.probe_interval();
    let probes = UdpSocket::bind(SocketAddr::new(endpoint.ip(), 0))
        .with_context(|| format!("binding the probe socket on {}", endpoint.ip()))?;
    probes
        .set_nonblocking(true)
        .context("setting the probe socket non-blocking")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the fleet runtime")?;
    let weak = Arc::downgrade(daemon);
    let health = Health::new(
        interval,
        membership.as_ref().map(|_| false),
        SystemTime::now(),
    );
    let dns = if config.fleet.dns {
        Some(start_name_server(daemon)?)
    } else {
        None
    };
    let link = FleetLink {
        local: local_tx,
        dns,
        resolv_conf: config.fleet.dns && config.fleet.resolv_conf,
        remote_endpoints: Mutex::new(Vec::new()),
        discovered: Mutex::default(),
        health: Mutex::new(health),
        stop: stop_tx,
        thread: Mutex::new(None),
    };
    if daemon.fleet.set(link).is_err() {
        anyhow::bail!("the fleet was started twice");
    }
    let thread = std::thread::Builder::new()
        .name("fleet".into())
        .spawn(move || {
            runtime.block_on(async move {
                let members = membership.map(|config| {
                    tokio::spawn(membership::run(
                        config,
                        local_rx,
                        Arc::new(Applier(weak.clone())),
                        stop_rx.clone(),
                    ))
                });
                health_loop(weak, interval, probes, stop_rx).await;
                if let Some(members) = members {
                    let _ = members.await;
                }
            });
        })
        .context("starting the fleet thread")?;
    if let Some(link) = daemon.fleet.get() {
        *lock(&link.thread) = Some(thread);
        link.refresh_names();
    }
    Ok(())
}

/// Where the host's resolvers are listed.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Queries waiting for the name server at most; beyond, the workers drop and count them.
const DNS_QUEUE: usize = 256;
/// The first line of every resolv.conf the daemon writes: only such files are removed.
const RESOLV_CONF_MARK: &str = "# written by vswitchd: the network's gateway answers names";

/// Starts the name server and tells the workers to hand it DNS queries to gateways.
fn start_name_server(daemon: &Arc<Daemon>) -> anyhow::Result<NameServer> {
    let (requests_tx, requests) = std::sync::mpsc::sync_channel(DNS_QUEUE);
    let weak = Arc::downgrade(daemon);
    let ports = Arc::new(move |port| {
        let daemon = weak.upgrade()?;
        let view = daemon.view();
        let (_, a) = view.ports.iter().find(|(id, _)| *id == port)?;
        let IpAddr::V4(ip) = a.gateway else {
            return None;
        };
        Some((
            a.network.clone(),
            Gateway {
                ip,
                mac: crate::control::attach::mac_for(ip),
            },
        ))
    });
    let workers = daemon.datapath.remote();
    let write = Arc::new(move |port, frame: Vec<u8>| {
        let _ = workers.tell_first(Command::WriteToPort { port, frame });
    });
    let upstreams = upstreams_from(&std::fs::read_to_string(RESOLV_CONF).unwrap_or_default());
    if upstreams.is_empty() {
        warn!("dns: no name server in {RESOLV_CONF}: names other than containers' get SERVFAIL");
    }
    let server =
        NameServer::start(requests, ports, write, upstreams).context("starting the name server")?;
    daemon
        .datapath
        .ask(|reply| Command::ServeGatewayDns {
            requests: requests_tx.clone(),
            reply,
        })
        .context("handing DNS queries to the name server")?;
    Ok(server)
}

impl FleetLink {
    /// Rebuilds the names the name server answers: the other nodes' containers and ours.
    fn refresh_names(&self) {
        if let Some(dns) = &self.dns {
            let remote = lock(&self.remote_endpoints);
            let local = self.local.borrow();
            dns.set_names(NameTable::from_endpoints(
                remote.iter().chain(local.endpoints.iter()),
            ));
        }
    }
}

/// The resolv.conf of a container attached by namespace name, if it was.
fn resolv_conf_path(a: &Attachment) -> Option<std::path::PathBuf> {
    let name = &a.netns;
    let plain = !name.is_empty()
        && !name.contains('/')
        && !name.starts_with("pid:")
        && name != "."
        && name != "..";
    plain.then(|| {
        std::path::Path::new("/etc/netns")
            .join(name)
            .join("resolv.conf")
    })
}

/// Every `interval`: probe every peer, then judge them.
async fn health_loop(
    daemon: Weak<Daemon>,
    interval: Duration,
    probes: UdpSocket,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(daemon) = daemon.upgrade() else {
            return;
        };
        daemon.health_round(&probes);
    }
}

impl Daemon {
    /// Stops the fleet thread (revoking the membership lease) and waits for it.
    pub(super) fn stop_fleet(&self) {
        if let Some(fleet) = self.fleet.get() {
            fleet.stop.send_replace(true);
            if let Some(thread) = lock(&fleet.thread).take() {
                let _ = thread.join();
            }
        }
    }

    /// Tells the fleet what this node now holds (after every change).
    pub(super) fn fleet_view_published(&self, view: &View) {
        if let Some(fleet) = self.fleet.get() {
            let (boot, key) = {
                let current = fleet.local.borrow();
                (current.node.boot.clone(), current.node.public_key.clone())
            };
            let local = local_of(view, self.datapath.local_addr(), &boot, key.as_deref());
            let changed = fleet.local.send_if_modified(|current| {
                let changed = *current != local;
                if changed {
                    *current = local;
                }
                changed
            });
            if changed {
                fleet.refresh_names();
            }
        }
    }

    /// Writes the resolv.conf of a container attached by namespace name (`ip netns exec` puts
    /// it in place), naming its gateway; a failure is logged, not fatal to the attach.
    pub(super) fn fleet_attached(&self, a: &Attachment) {
        let Some(fleet) = self.fleet.get() else {
            return;
        };
        let Some(path) = resolv_conf_path(a).filter(|_| fleet.resolv_conf) else {
            return;
        };
        let text = format!(
            "{RESOLV_CONF_MARK}
nameserver {}
search {}
",
            a.gateway, a.network
        );
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, text));
        if let Err(e) = written {
            warn!(container = %a.container_id, "writing {}: {e}", path.display());
        }
    }

    /// The name server a container attached now is given: its gateway, with `fleet.dns`.
    pub(super) fn fleet_name_server(&self, gateway: IpAddr) -> Option<IpAddr> {
        self.fleet
            .get()
            .filter(|fleet| fleet.dns.is_some())
            .map(|_| gateway)
    }

    /// Removes the resolv.conf written at attach (only one the daemon wrote).
    pub(super) fn fleet_detached(&self, a: &Attachment) {
        let Some(path) = resolv_conf_path(a) else {
            return;
        };
        let ours = std::fs::read_to_string(&path).is_ok_and(|t| t.starts_with(RESOLV_CONF_MARK));
        if ours {
            let _ = std::fs::remove_file(&path);
            if let Some(dir) = path.parent() {
                // Only if empty: anything else there is someone else's.
                let _ = std::fs::remove_dir(dir);
            }
        }
    }

    /// One probe to every peer; then every peer judged by what arrived from it.
    fn health_round(&self, probes: &UdpSocket) {
        let Some(fleet) = self.fleet.get() else {
            return;
        };
        let view = self.view();
        for (_, endpoint, _) in &view.peers {
            // A full socket buffer loses a probe: the peer is judged on the next.
            let _ = probes.send_to(switch::probe_datagram(), endpoint);
        }
        let mut rx: BTreeMap<IpAddr, u64> = view
            .peers
            .iter()
            .map(|(_, endpoint, _)| (endpoint.ip(), 0))
            .collect();
        for snapshot in self.datapath.snapshots() {
            for (addr, stats) in &snapshot.peers {
                if let Some(count) = rx.get_mut(&addr.ip()) {
                    *count += stats.rx_datagrams;
                }
            }
        }
        let transitions = lock(&fleet.health).observe(Instant::now(), SystemTime::now(), &rx);
        for transition in transitions {
            match transition {
                Transition::Peer { addr, from, to } => {
                    let name = view
                        .peers
                        .iter()
                        .find(|(_, endpoint, _)| endpoint.ip() == addr)
                        .map_or_else(|| addr.to_string(), |(name, _, _)| name.clone());
                    info!(peer = %name, %addr, %from, %to, "peer {to}");
                }
                Transition::Node { from, to } => info!(%from, %to, "node {to}"),
            }
        }
    }

    /// The node's health.
    pub(super) fn fleet_health(&self) -> Option<crate::fleet::health::NodeHealthView> {
        self.fleet.get().map(|fleet| lock(&fleet.health).node())
    }

    /// Adds health to a status reply.
    pub(super) fn fleet_status(&self, status: &mut StatusView) {
        if let Some(fleet) = self.fleet.get() {
            status.health = Some(lock(&fleet.health).node());
        }
    }

    /// Adds health to peer rows.
    pub(super) fn fleet_peers(&self, peers: &mut [PeerView]) {
        if let Some(fleet) = self.fleet.get() {
            let discovered = lock(&fleet.discovered);
            let health = lock(&fleet.health);
            let now = Instant::now();
            for peer in peers.iter_mut() {
                peer.health = health.peer(peer.endpoint.ip(), now);
                peer.discovered = discovered.contains(&peer.name);
            }
        }
    }

    /// Applies one plan of the membership session: peers joined and left, endpoints pinned and
    /// unpinned, all reaching the workers in one command.
    fn apply_fleet(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut state = self.lock();
        let mut ops = Vec::new();
        for change in changes {
            match change {
                Change::Leave(node) => leave(&mut state, &node, &mut ops),
                Change::Join(node) => join(&mut state, &node, &mut ops),
                Change::Pin { node, endpoint } => {
                    if let Some(vni) = local_vni(&state, endpoint.vni) {
                        ops.push(FleetChange::Pin {
                            peer: node.endpoint,
                            vni,
                            mac: endpoint.mac,
                            ips: v4s(&endpoint.ips),
                        });
                    }
                }
                Change::Unpin(endpoint) => {
                    if let Some(vni) = local_vni(&state, endpoint.vni) {
                        ops.push(FleetChange::Unpin {
                            vni,
                            mac: endpoint.mac,
                            ips: v4s(&endpoint.ips),
                        });
                    }
                }
            }
        }
        let changes: Arc<[FleetChange]> = ops.into();
        if let Err(e) = self.datapath.ask(|reply| Command::ApplyFleet {
            changes: Arc::clone(&changes),
            reply,
        }) {
            warn!("fleet: applying changes: {e}");
        }
        if let Some(fleet) = self.fleet.get() {
            *lock(&fleet.discovered) = state
                .peers
                .iter()
                .filter(|(_, p)| p.from_fleet)
                .map(|(name, _)| name.clone())
                .collect();
        }
        self.publish_view(&state);
    }
}

/// The local network with this VNI.
fn local_vni(state: &State, vni: u32) -> Option<Vni> {
    state
        .networks
        .values()
        .find(|n| n.vni.get() == vni)
        .map(|n| n.vni)
}

/// Whether a static peer stands for this node (same name or address).
fn static_peer(state: &State, node: &NodeRecord) -> bool {
    state.peers.iter().any(|(name, p)| {
        !p.from_fleet && (*name == node.name || p.endpoint.ip() == node.endpoint.ip())
    })
}

fn join(state: &mut State, node: &NodeRecord, ops: &mut Vec<FleetChange>) {
    if static_peer(state, node) {
        info!(node = %node.name, endpoint = %node.endpoint, "fleet: node joined (configured as a static peer: kept as configured)");
        return;
    }
    let mut networks = Vec::new();
    let mut vnis = Vec::new();
    for theirs in &node.networks {
        match state.networks.get(&theirs.name) {
            Some(ours) if ours.vni.get() == theirs.vni => {
                networks.push(theirs.name.clone());
                vnis.push(ours.vni);
            }
            Some(ours) => warn!(
                node = %node.name,
                network = %theirs.name,
                "fleet: the node carries this network on VNI {}, this node on {}: not shared",
                theirs.vni,
                ours.vni
            ),
            None => {}
        }
    }
    info!(node = %node.name, endpoint = %node.endpoint, networks = %networks.join(","), "fleet: node joined");
    ops.push(FleetChange::AddPeer {
        addr: node.endpoint,
        vnis,
    });
    state.peers.insert(
        node.name.clone(),
        Peer {
            endpoint: node.endpoint,
            networks,
            from_fleet: true,
        },
    );
}

fn leave(state: &mut State, node: &NodeRecord, ops: &mut Vec<FleetChange>) {
    if !state.peers.get(&node.name).is_some_and(|p| p.from_fleet) {
        return;
    }
    if let Some(peer) = state.peers.remove(&node.name) {
        info!(node = %node.name, endpoint = %peer.endpoint, "fleet: node left; forgetting what was learned behind it");
        ops.push(FleetChange::RemovePeer {
            addr: peer.endpoint,
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::wire::MacAddr;

    fn network(name: &str, vni: u32) -> NetworkView {
        NetworkView {
            name: name.into(),
            vni,
            subnet: "10.244.0.0/16".parse().unwrap(),
            node_subnet: "10.244.1.0/24".parse().unwrap(),
            gateway: "10.244.1.1".parse().unwrap(),
            mtu: 1450,
            ports: 0,
        }
    }

    fn record(container: &str, ifname: &str, network: &str, vni: u32, ip: &str) -> EndpointRecord {
        EndpointRecord {
            node: "b".into(),
            container_id: container.into(),
            ifname: ifname.into(),
            name: container.into(),
            network: network.into(),
            vni,
            mac: MacAddr([2, 0, 0, 0, 0, 9]),
            ips: vec![ip.parse().unwrap()],
            labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
        }
    }

    #[test]
    fn remote_containers_reach_the_policies_with_their_labels_on_shared_networks_only() {
        let networks = [network("blue", 100)];
        let remote = [
            record("web-1", "eth0", "blue", 100, "10.244.2.5"),
            record("web-2", "net1", "blue", 100, "10.244.2.6"),
            record("web-3", "eth0", "blue", 101, "10.244.2.7"),
            record("web-4", "eth0", "red", 100, "10.244.2.8"),
        ];
        let endpoints = policy_endpoints(&remote, &networks);
        let ids: Vec<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["web-1@b", "web-2/net1@b"]);
        assert!(endpoints.iter().all(|e| e.local.is_none()));
        assert_eq!(endpoints[0].labels["app"], "web");
        assert_eq!(endpoints[1].ips, [IpAddr::from([10, 244, 2, 6])]);
    }
}
