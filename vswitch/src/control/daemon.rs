//! The daemon: owns the datapath, the address pools and the list of attached containers, and
//! answers control requests. Requests are served one at a time (attach and detach touch
//! netlink, the store and the datapath together); the datapath keeps forwarding meanwhile.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use ipnet::{IpNet, Ipv4Net};
use netns::{NetNs, NsRef, Offloads};
use tracing::{info, warn};

use super::api::{
    AttachRequest, Attachment, DetachRequest, FdbView, NetworkView, PeerView, PortView, Reply,
    Request, Response, StatusView, Traffic,
};
use super::attach::{self, mac_for};
use super::config::{Config, ConfigError, NetworkConfig};
use super::leases::Leases;
use super::state::{PortRecord, PortStore};
use crate::fdb::{FdbConfig, FdbEntry, Location};
use crate::io::{Datapath, DatapathStopped, IoCounters, TapQueue};
use crate::switch::{self, Gateway, PeerStats, PortConfig, PortId, PortStats, Site, SwitchConfig};
use crate::wire::Vni;

/// A network as the daemon runs it.
struct Network {
    config: NetworkConfig,
    vni: Vni,
    node_subnet: Ipv4Net,
    gateway: Ipv4Addr,
}

/// A configured peer.
struct Peer {
    endpoint: SocketAddr,
    networks: Vec<String>,
}

/// An attached container's port.
struct Port {
    record: PortRecord,
    id: PortId,
}

/// Everything the control plane changes; behind one lock.
struct State {
    config: Config,
    networks: BTreeMap<String, Network>,
    peers: BTreeMap<String, Peer>,
    ports: Vec<Port>,
    store: PortStore,
    leases: Leases,
}

/// The running daemon.
pub struct Daemon {
    config_path: PathBuf,
    started: Instant,
    datapath: Datapath,
    state: Mutex<State>,
}

fn switch_config(config: &Config) -> SwitchConfig {
    let tuning = &config.switch;
    SwitchConfig {
        fdb: FdbConfig {
            aging: tuning.fdb_aging(),
            max_entries: tuning.fdb_max_entries,
            max_per_port: tuning.fdb_max_per_port,
            max_per_peer: tuning.fdb_max_per_peer,
        },
        accept_unknown_peers: tuning.accept_unknown_peers,
        max_dynamic_peers: tuning.max_dynamic_peers,
        flood_dynamic_peers: tuning.flood_dynamic_peers,
        flood_rate: tuning.flood_rate,
        flood_burst: tuning.flood_burst,
        allowed_ethertypes: tuning.allowed_ethertypes.clone(),
        arp_suppression: tuning.arp_suppression,
        vxlan_port: config.node.port,
    }
}

impl Daemon {
    /// Binds the underlay, opens the stores, sets up networks and peers, and re-adopts the
    /// containers attached before a restart.
    pub fn start(config_path: &Path, config: Config) -> anyhow::Result<Arc<Self>> {
        let address = config
            .node
            .address
            .context("node.address was not resolved")?;
        let local = SocketAddr::new(address, config.node.port);
        let datapath = Datapath::start(
            switch_config(&config),
            local,
            config.node.source_ports,
            config.node.workers,
        )
        .with_context(|| format!("binding the VXLAN socket on {local}"))?;
        let store = PortStore::open(&config.node.state_dir)?;
        let leases = Leases::open(&config).context("opening the address store")?;
        let daemon = Arc::new(Self {
            config_path: config_path.to_owned(),
            started: Instant::now(),
            datapath,
            state: Mutex::new(State {
                config: config.clone(),
                networks: BTreeMap::new(),
                peers: BTreeMap::new(),
                ports: Vec::new(),
                store,
                leases,
            }),
        });
        {
            let mut state = daemon.lock();
            for network in &config.networks {
                daemon.add_network(&mut state, network.clone())?;
            }
            for peer in &config.peers {
                daemon.add_peer(&mut state, peer)?;
            }
            daemon.restore(&mut state)?;
        }
        info!(
            node = %config.node.name,
            endpoint = %daemon.datapath.local_addr(),
            networks = config.networks.len(),
            peers = config.peers.len(),
            "vswitchd ready"
        );
        Ok(daemon)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Serves one request.
    pub fn handle(&self, request: Request) -> Response {
        let mut state = self.lock();
        let result = match request {
            Request::Attach(r) => self.attach(&mut state, r).map(Reply::Attached),
            Request::Detach(r) => self.detach(&mut state, &r).map(Reply::Detached),
            Request::Status => self.status(&state).map(|s| Reply::Status(Box::new(s))),
            Request::Ports => self.ports(&state).map(Reply::Ports),
            Request::Fdb => self.fdb(&state).map(Reply::Fdb),
            Request::Peers => self.peers(&state).map(Reply::Peers),
            Request::Reload => self.reload(&mut state).map(Reply::Reloaded),
        };
        match result {
            Ok(reply) => Response::Ok(reply),
            Err(e) => Response::Error(format!("{e:#}")),
        }
    }

    /// Re-reads the config file and applies what changed.
    pub fn reload_from_disk(&self) -> anyhow::Result<String> {
        let mut state = self.lock();
        self.reload(&mut state)
    }

    /// Detaches containers whose namespace has disappeared (the container is gone and nobody
    /// called detach), releasing their addresses.
    pub fn sweep(&self) {
        let mut state = self.lock();
        let gone: Vec<(String, String)> = state
            .ports
            .iter()
            .filter(|p| open_recorded(&p.record).is_none())
            .map(|p| {
                (
                    p.record.attachment.container_id.clone(),
                    p.record.attachment.ifname.clone(),
                )
            })
            .collect();
        for (container_id, ifname) in gone {
            info!(%container_id, %ifname, "namespace gone: detaching");
            let request = DetachRequest {
                container_id,
                ifname: Some(ifname),
            };
            if let Err(e) = self.detach(&mut state, &request) {
                warn!("detaching a vanished container: {e:#}");
            }
        }
    }

    fn add_network(&self, state: &mut State, config: NetworkConfig) -> anyhow::Result<()> {
        let vni = config.vni();
        let node_subnet = state.leases.open_pool(&config)?;
        let gateway = first_host(node_subnet);
        let switch_network = switch::NetworkConfig {
            vni,
            mtu: config.mtu,
            gateway: Some(Gateway {
                ip: gateway,
                mac: mac_for(gateway),
            }),
            sealed: false,
        };
        agreed(
            self.datapath
                .run(move |w| w.switch().add_network(switch_network.clone()))?,
        )?;
        info!(network = %config.name, %vni, %node_subnet, %gateway, "network up");
        state.networks.insert(
            config.name.clone(),
            Network {
                config,
                vni,
                node_subnet,
                gateway,
            },
        );
        Ok(())
    }

    fn add_peer(&self, state: &mut State, peer: &super::config::PeerConfig) -> anyhow::Result<()> {
        let endpoint = peer.endpoint(state.config.node.port);
        let networks: Vec<String> = match &peer.networks {
            Some(names) => names.clone(),
            None => state.networks.keys().cloned().collect(),
        };
        let vnis: Vec<Vni> = networks
            .iter()
            .filter_map(|n| state.networks.get(n).map(|n| n.vni))
            .collect();
        self.datapath
            .run(move |w| w.switch().add_peer(endpoint, &vnis))?;
        state
            .peers
            .insert(peer.name.clone(), Peer { endpoint, networks });
        Ok(())
    }

    /// Re-creates the ports of containers attached before a restart; forgets those whose
    /// namespace is gone and releases every lease nobody holds.
    fn restore(&self, state: &mut State) -> anyhow::Result<()> {
        let records = state.store.load()?;
        let mut kept = Vec::new();
        for record in records {
            let a = &record.attachment;
            let Some(ns) = open_recorded(&record) else {
                info!(container = %a.container_id, "namespace gone since last run: releasing");
                continue;
            };
            match self.plug(state, &record, &ns) {
                Ok(id) => {
                    state.ports.push(Port {
                        record: record.clone(),
                        id,
                    });
                    kept.push(record);
                }
                Err(e) => {
                    warn!(container = %a.container_id, "cannot restore the port: {e:#}");
                    let _ = attach::remove_interface(a, &ns);
                }
            }
        }
        state.store.save(&kept)?;
        let live: Vec<(String, String, String)> = kept
            .iter()
            .map(|r| {
                let a = &r.attachment;
                (a.network.clone(), a.container_id.clone(), a.ifname.clone())
            })
            .collect();
        let released = state.leases.retain(&live)?;
        if released > 0 {
            info!(released, "released leases of containers that are gone");
        }
        if !kept.is_empty() {
            info!(ports = kept.len(), "re-adopted attached containers");
        }
        Ok(())
    }

    /// Puts the interface in place and hands its TAP to the datapath.
    fn plug(&self, state: &State, record: &PortRecord, ns: &NetNs) -> anyhow::Result<PortId> {
        let a = &record.attachment;
        let network = state
            .networks
            .get(&a.network)
            .with_context(|| format!("network {:?} is no longer configured", a.network))?;
        let tap =
            attach::ensure_interface(a, ns, state.config.node.offloads, self.datapath.workers())?;
        let vnet_hdr = tap.vnet_hdr_len() > 0;
        let uso = tap.offloads().contains(Offloads::USO4);
        let queues: Arc<[Arc<TapQueue>]> = tap
            .into_queues()
            .into_iter()
            .map(|fd| Arc::new(TapQueue::new(fd, vnet_hdr).with_uso(uso)))
            .collect();
        let port = PortConfig {
            vni: network.vni,
            mac: a.mac,
            ips: [Some(a.address.addr()), a.address6.map(|v6| v6.addr())]
                .into_iter()
                .flatten()
                .collect(),
            port_security: true,
        };
        let added = self
            .datapath
            .run(move |w| w.add_port(&queues, port.clone()))?;
        let ids: Vec<PortId> = added
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        match agreed(added) {
            Ok(id) => Ok(id),
            Err(e) => {
                // Take back what the workers that succeeded added.
                if let Some(&id) = ids.first() {
                    self.datapath.run(move |w| w.remove_port(id))?;
                }
                Err(e)
            }
        }
    }

    fn attach(&self, state: &mut State, r: AttachRequest) -> anyhow::Result<Attachment> {
        let network_name = r.network.clone().unwrap_or_else(|| "default".into());
        let ifname = r.ifname.clone().unwrap_or_else(|| "eth0".into());
        let container_id = r.container_id.clone().unwrap_or_else(|| r.netns.clone());
        netns::validate_ifname(&ifname).context("--ifname")?;
        let Some(network) = state.networks.get(&network_name) else {
            let known: Vec<&str> = state.networks.keys().map(String::as_str).collect();
            anyhow::bail!(
                "no network is named {network_name:?}; this node carries: {}",
                known.join(", ")
            );
        };
        if let Some(existing) = state.ports.iter().find(|p| {
            p.record.attachment.container_id == container_id && p.record.attachment.ifname == ifname
        }) {
            let a = &existing.record.attachment;
            anyhow::ensure!(
                a.network == network_name,
                "{container_id} {ifname} is already attached to network {:?}; detach it first",
                a.network
            );
            return Ok(a.clone());
        }
        let ns_ref: NsRef = r
            .netns
            .parse()
            .with_context(|| format!("network namespace {:?}", r.netns))?;
        let ns = NetNs::open(&ns_ref)?;
        let (network_vni, mtu, gateway) = (network.vni, network.config.mtu, network.gateway);
        let addresses = state
            .leases
            .allocate(&network_name, &container_id, &ifname, r.ip)?;
        let IpAddr::V4(v4) = addresses.v4.addr() else {
            anyhow::bail!("IPv4 address expected from the pool, got {}", addresses.v4);
        };
        let attachment = Attachment {
            container_id: container_id.clone(),
            netns: r.netns.clone(),
            ifname: ifname.clone(),
            network: network_name.clone(),
            vni: network_vni.get(),
            mac: r.mac.unwrap_or_else(|| mac_for(v4)),
            address: addresses.v4,
            address6: addresses.v6,
            gateway: IpAddr::V4(gateway),
            mtu,
        };
        let id = ns.id();
        let record = PortRecord {
            attachment: attachment.clone(),
            netns_id: (id.dev, id.ino),
        };
        // Recorded before the interface exists: a crash from here on is finished (or undone)
        // by the next start, never left half done.
        let mut records: Vec<PortRecord> = state.ports.iter().map(|p| p.record.clone()).collect();
        records.push(record.clone());
        if let Err(e) = state.store.save(&records) {
            let _ = state.leases.release(&network_name, &container_id, &ifname);
            return Err(e.into());
        }
        match self.plug(state, &record, &ns) {
            Ok(id) => {
                state.ports.push(Port { record, id });
                info!(container = %container_id, %ifname, address = %attachment.address, "attached");
                Ok(attachment)
            }
            Err(e) => {
                let _ = attach::remove_interface(&attachment, &ns);
                let _ = state.leases.release(&network_name, &container_id, &ifname);
                records.pop();
                let _ = state.store.save(&records);
                Err(e.context(format!("attaching {container_id} to {network_name}")))
            }
        }
    }

    fn detach(&self, state: &mut State, r: &DetachRequest) -> anyhow::Result<bool> {
        let ifname = r.ifname.clone().unwrap_or_else(|| "eth0".into());
        let Some(index) = state.ports.iter().position(|p| {
            p.record.attachment.container_id == r.container_id
                && p.record.attachment.ifname == ifname
        }) else {
            return Ok(false);
        };
        let port = state.ports.remove(index);
        let id = port.id;
        self.datapath.run(move |w| w.remove_port(id))?;
        let a = &port.record.attachment;
        if let Some(ns) = open_recorded(&port.record) {
            attach::remove_interface(a, &ns)?;
        }
        let records: Vec<PortRecord> = state.ports.iter().map(|p| p.record.clone()).collect();
        state.store.save(&records)?;
        state
            .leases
            .release(&a.network, &a.container_id, &a.ifname)?;
        info!(container = %a.container_id, ifname = %a.ifname, "detached");
        Ok(true)
    }

    fn reload(&self, state: &mut State) -> anyhow::Result<String> {
        let mut config = Config::load(&self.config_path)?;
        resolve_underlay(&mut config, &self.config_path)?;
        let mut changes = Vec::new();
        if config.node.name != state.config.node.name
            || config.node.interface != state.config.node.interface
            || (config.node.interface.is_none() && config.node.address != state.config.node.address)
            || config.node.port != state.config.node.port
            || config.node.workers != state.config.node.workers
            || config.node.source_ports != state.config.node.source_ports
            || config.node.offloads != state.config.node.offloads
        {
            changes.push("node settings changed: restart vswitchd to apply them".to_owned());
        }
        // Networks: removed ones take their containers with them; changed ones are updated.
        let removed: Vec<String> = state
            .networks
            .keys()
            .filter(|name| config.network(name).is_none())
            .cloned()
            .collect();
        for name in removed {
            let attached: Vec<(String, String)> = state
                .ports
                .iter()
                .filter(|p| p.record.attachment.network == name)
                .map(|p| {
                    (
                        p.record.attachment.container_id.clone(),
                        p.record.attachment.ifname.clone(),
                    )
                })
                .collect();
            for (container_id, ifname) in attached {
                self.detach(
                    state,
                    &DetachRequest {
                        container_id,
                        ifname: Some(ifname),
                    },
                )?;
            }
            if let Some(network) = state.networks.remove(&name) {
                let vni = network.vni;
                self.datapath.run(move |w| w.switch().remove_network(vni))?;
            }
            changes.push(format!("network {name} removed"));
        }
        for network in &config.networks {
            match state.networks.get(&network.name) {
                None => {
                    self.add_network(state, network.clone())?;
                    changes.push(format!("network {} added", network.name));
                }
                Some(current)
                    if current.config.vni != network.vni
                        || current.config.subnet != network.subnet =>
                {
                    changes.push(format!(
                        "network {}: VNI and subnet changes need a restart",
                        network.name
                    ));
                }
                Some(current) if current.config.mtu != network.mtu => {
                    let update = switch::NetworkConfig {
                        vni: current.vni,
                        mtu: network.mtu,
                        gateway: Some(Gateway {
                            ip: current.gateway,
                            mac: mac_for(current.gateway),
                        }),
                        sealed: false,
                    };
                    agreed(
                        self.datapath
                            .run(move |w| w.switch().add_network(update.clone()))?,
                    )?;
                    if let Some(current) = state.networks.get_mut(&network.name) {
                        current.config.mtu = network.mtu;
                    }
                    changes.push(format!("network {}: MTU {}", network.name, network.mtu));
                }
                Some(_) => {}
            }
        }
        // Peers: removed ones go (with what was learned behind them), new ones come.
        let old_peers: Vec<String> = state.peers.keys().cloned().collect();
        for name in old_peers {
            let wanted = config.peers.iter().find(|p| p.name == name);
            let current = &state.peers[&name];
            let same = wanted.is_some_and(|w| {
                w.endpoint(config.node.port) == current.endpoint
                    && w.networks
                        .clone()
                        .unwrap_or_else(|| config.networks.iter().map(|n| n.name.clone()).collect())
                        == current.networks
            });
            if !same {
                if let Some(peer) = state.peers.remove(&name) {
                    let endpoint = peer.endpoint;
                    self.datapath.run(move |w| {
                        let id = w.switch().peer_id(endpoint);
                        id.is_some_and(|id| w.switch().remove_peer(id))
                    })?;
                }
                if wanted.is_none() {
                    changes.push(format!("peer {name} removed"));
                }
            }
        }
        state.config = config.clone();
        for peer in &config.peers {
            if !state.peers.contains_key(&peer.name) {
                self.add_peer(state, peer)?;
                changes.push(format!("peer {} set", peer.name));
            }
        }
        let summary = if changes.is_empty() {
            "no change".to_owned()
        } else {
            changes.join("; ")
        };
        info!(%summary, "config reloaded");
        Ok(summary)
    }

    fn network_name(state: &State, vni: Vni) -> String {
        state
            .networks
            .values()
            .find(|n| n.vni == vni)
            .map(|n| n.config.name.clone())
            .unwrap_or_else(|| vni.to_string())
    }

    fn status(&self, state: &State) -> anyhow::Result<StatusView> {
        let Totals {
            counters,
            io,
            fdb_entries,
            workers,
        } = self.totals()?;
        let networks = state
            .networks
            .values()
            .map(|n| NetworkView {
                name: n.config.name.clone(),
                vni: n.vni.get(),
                subnet: IpNet::V4(n.config.subnet),
                node_subnet: IpNet::V4(n.node_subnet),
                gateway: IpAddr::V4(n.gateway),
                mtu: n.config.mtu,
                ports: state
                    .ports
                    .iter()
                    .filter(|p| p.record.attachment.network == n.config.name)
                    .count(),
            })
            .collect();
        Ok(StatusView {
            node: state.config.node.name.clone(),
            endpoint: self.datapath.local_addr(),
            uptime_secs: self.started.elapsed().as_secs(),
            store: state.config.store.to_string(),
            networks,
            peers: state.peers.len(),
            fdb_entries,
            traffic: traffic_of(&counters),
            drops: counters
                .drops
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(reason, n)| (reason.as_str().to_owned(), n))
                .collect(),
            tap_write_errors: io.tap_write_errors,
            udp_send_errors: io.udp_send_errors,
            offload_errors: io.offload_errors,
            workers,
        })
    }

    /// The switch and I/O counters summed over the workers, the FDB's size, and each worker's
    /// traffic.
    fn totals(&self) -> anyhow::Result<Totals> {
        let per_worker = self.datapath.run(|w| {
            (
                w.switch().counters().clone(),
                w.io_counters(),
                w.switch().fdb().len(),
            )
        })?;
        let mut totals = Totals::default();
        for (counters, io, fdb_entries) in &per_worker {
            totals.counters.add(counters);
            totals.io.add(io);
            // Every worker holds the whole table (its own entries and its siblings').
            totals.fdb_entries = totals.fdb_entries.max(*fdb_entries);
            totals.workers.push(traffic_of(counters));
        }
        Ok(totals)
    }

    fn ports(&self, state: &State) -> anyhow::Result<Vec<PortView>> {
        let ids: Vec<PortId> = state.ports.iter().map(|p| p.id).collect();
        let per_worker = self.datapath.run(move |w| {
            ids.iter()
                .map(|&id| w.switch().port_stats(id).copied().unwrap_or_default())
                .collect::<Vec<_>>()
        })?;
        let stats = sum_columns(per_worker, PortStats::add);
        Ok(state
            .ports
            .iter()
            .zip(stats)
            .map(|(p, s)| PortView {
                attachment: p.record.attachment.clone(),
                traffic: Traffic {
                    rx_frames: s.rx_frames,
                    rx_bytes: s.rx_bytes,
                    tx_frames: s.tx_frames,
                    tx_bytes: s.tx_bytes,
                    drops: s.drops,
                },
            })
            .collect())
    }

    fn fdb(&self, state: &State) -> anyhow::Result<Vec<FdbView>> {
        let now = Instant::now();
        let per_worker = self.datapath.run(move |w| {
            let switch = w.switch();
            // Peers by address: ids of peers that appeared on their own differ between workers.
            switch
                .fdb_entries(now)
                .filter_map(|e| {
                    let site = match e.location {
                        Location::Port(port) => Site::Port(port),
                        Location::Peer(peer) => Site::Peer(switch.peer(peer)?.addr),
                    };
                    Some((e, site))
                })
                .collect::<Vec<_>>()
        })?;
        // One row per MAC: the entry of the worker that learned it (the others mirror it).
        let mut entries: BTreeMap<(u32, [u8; 6]), (FdbEntry, Site)> = BTreeMap::new();
        for (entry, site) in per_worker.into_iter().flatten() {
            let key = (entry.vni.get(), entry.mac.0);
            match entries.get(&key) {
                Some((known, _)) if !known.mirrored || entry.mirrored => {}
                _ => {
                    entries.insert(key, (entry, site));
                }
            }
        }
        let mut views: Vec<FdbView> = entries
            .into_values()
            .map(|(e, site)| (e.vni, e.mac, site, e.is_static, e.age.unwrap_or_default()))
            .map(|(vni, mac, location, is_static, age)| FdbView {
                network: Self::network_name(state, vni),
                vni: vni.get(),
                mac,
                location: self.describe(state, location),
                is_static,
                age_secs: if is_static { 0 } else { age.as_secs() },
            })
            .collect();
        views.sort_by_key(|v| (v.vni, v.mac));
        Ok(views)
    }

    fn describe(&self, state: &State, site: Site) -> String {
        match site {
            Site::Port(id) => state
                .ports
                .iter()
                .find(|p| p.id == id)
                .map(|p| {
                    format!(
                        "port {}@{}",
                        p.record.attachment.ifname, p.record.attachment.container_id
                    )
                })
                .unwrap_or_else(|| format!("port {id:?}")),
            Site::Peer(addr) => state
                .peers
                .iter()
                .find(|(_, p)| p.endpoint.ip() == addr.ip())
                .map(|(name, p)| format!("peer {name} {}", p.endpoint))
                .unwrap_or_else(|| format!("peer {addr}")),
        }
    }

    fn peers(&self, state: &State) -> anyhow::Result<Vec<PeerView>> {
        let endpoints: Vec<SocketAddr> = state.peers.values().map(|p| p.endpoint).collect();
        let now = Instant::now();
        let per_worker = self.datapath.run(move |w| {
            let switch = w.switch();
            endpoints
                .iter()
                .map(|&endpoint| {
                    let Some(id) = switch.peer_id(endpoint) else {
                        return (PeerStats::default(), 0);
                    };
                    let macs = switch
                        .fdb_entries(now)
                        .filter(|e| e.location == Location::Peer(id))
                        .count();
                    (switch.peer_stats(id).copied().unwrap_or_default(), macs)
                })
                .collect::<Vec<_>>()
        })?;
        let stats = sum_columns(per_worker, |total: &mut (PeerStats, usize), one| {
            total.0.add(&one.0);
            // Every worker lists every MAC (learned or mirrored): the most is the count.
            total.1 = total.1.max(one.1);
        });
        Ok(state
            .peers
            .iter()
            .zip(stats)
            .map(|((name, p), (s, macs))| PeerView {
                name: name.clone(),
                endpoint: p.endpoint,
                networks: p.networks.clone(),
                macs,
                traffic: Traffic {
                    rx_frames: s.rx_datagrams,
                    rx_bytes: s.rx_bytes,
                    tx_frames: s.tx_datagrams,
                    tx_bytes: s.tx_bytes,
                    drops: s.drops,
                },
            })
            .collect())
    }

    /// The daemon's counters in the Prometheus text format.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let state = self.lock();
        let totals = self.totals()?;
        let ports = self.ports(&state)?;
        let peers = self.peers(&state)?;
        Ok(super::metrics::render(&super::metrics::Snapshot {
            counters: &totals.counters,
            io: totals.io,
            fdb_entries: totals.fdb_entries,
            ports: &ports,
            peers: &peers,
            workers: &totals.workers,
        }))
    }

    /// Stops the datapath. Containers keep their (persistent) interfaces; the next start
    /// re-adopts them.
    pub fn shutdown(self: Arc<Self>) -> anyhow::Result<()> {
        match Arc::try_unwrap(self) {
            Ok(daemon) => daemon.datapath.stop().context("stopping the datapath"),
            Err(_) => Ok(()),
        }
    }
}

/// Looks up the underlay address of `node.interface` (its first IPv4 address, else its first
/// global IPv6 one) and checks the peers against it; nothing to do with `node.address`.
pub fn resolve_underlay(config: &mut Config, path: &Path) -> Result<(), ConfigError> {
    let fail = |key: &str, reason: String| ConfigError {
        path: path.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let Some(interface) = config.node.interface.clone() else {
        return Ok(());
    };
    let addresses = netns::Netlink::current()
        .and_then(|nl| nl.addresses(&interface))
        .map_err(|e| fail("node.interface", e.to_string()))?;
    let address = addresses
        .iter()
        .map(IpNet::addr)
        .find(IpAddr::is_ipv4)
        .or_else(|| {
            addresses.iter().map(IpNet::addr).find(|a| match a {
                IpAddr::V6(v6) => !v6.is_unicast_link_local() && !v6.is_loopback(),
                IpAddr::V4(_) => false,
            })
        })
        .ok_or_else(|| {
            fail(
                "node.interface",
                format!("{interface} has no usable address"),
            )
        })?;
    config
        .set_underlay_address(address)
        .map_err(|(key, reason)| fail(&key, reason))
}

/// Opens the namespace a record was made in, if it still exists and is the same one.
fn open_recorded(record: &PortRecord) -> Option<NetNs> {
    let ns_ref: NsRef = record.attachment.netns.parse().ok()?;
    let ns = NetNs::open(&ns_ref).ok()?;
    let id = ns.id();
    ((id.dev, id.ino) == record.netns_id).then_some(ns)
}

/// The first host address of a subnet: the gateway.
pub fn first_host(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

/// How often the daemon looks for containers that vanished without a detach.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Counters summed over the workers.
#[derive(Default)]
struct Totals {
    counters: switch::Counters,
    io: IoCounters,
    fdb_entries: usize,
    workers: Vec<Traffic>,
}

/// Everything in and out, from the switch's counters.
fn traffic_of(counters: &switch::Counters) -> Traffic {
    Traffic {
        rx_frames: counters.port_rx_frames + counters.peer_rx_datagrams,
        rx_bytes: counters.port_rx_bytes + counters.peer_rx_bytes,
        tx_frames: counters.port_tx_frames + counters.peer_tx_datagrams,
        tx_bytes: counters.port_tx_bytes + counters.peer_tx_bytes,
        drops: counters.drops.total(),
    }
}

/// The one answer of a change every worker made: the first refusal, else the first result
/// (the workers apply the same changes in the same order, so they agree).
fn agreed<T, E>(results: Vec<Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut first = None;
    for result in results {
        let value = result?;
        first.get_or_insert(value);
    }
    first.ok_or_else(|| DatapathStopped.into())
}

/// Folds the workers' rows of per-item values into one row, item by item.
fn sum_columns<T: Default + Clone>(per_worker: Vec<Vec<T>>, add: impl Fn(&mut T, &T)) -> Vec<T> {
    let mut rows = per_worker.into_iter();
    let mut total = rows.next().unwrap_or_default();
    for row in rows {
        for (sum, one) in total.iter_mut().zip(&row) {
            add(sum, one);
        }
    }
    total
}
