//! The daemon: owns the datapath, the address pools and the list of attached containers, and
//! answers control requests. Changes (attach, detach, reload, the sweep) are made one at a time
//! (they touch netlink, the store and the datapath together); the datapath keeps forwarding
//! meanwhile. Queries (status, ports, peers, fdb, metrics) never wait for a change and never
//! run on a datapath worker: they read the [`View`] published after every change and the
//! snapshots the workers publish themselves (control queries may ask for a snapshot out of
//! turn, granted at most every [`crate::io::FRESH_INTERVAL`] whatever the number of queries).
//!
//! Two rules keep the attachment list and the address leases together:
//!
//! - a container is "gone" only when its namespace is: the file is missing (`ENOENT`, `ESRCH`)
//!   or is another namespace than the recorded one. An error that says nothing about the
//!   namespace (`EMFILE`, `ENFILE`, `ENOMEM`, `EACCES`, ...) keeps the port and its lease, and
//!   the question is asked again at the next sweep;
//! - the list is saved before anything is forgotten: a detach whose save fails (a full disk)
//!   changes nothing and says so; a lease is released only once no saved record holds it, and
//!   a release that fails is retried by the sweep;
//! - an attach is done whole or not at all, a daemon killed midway included (`transaction`).

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
    ApiError, AttachRequest, Attachment, DetachRequest, ErrorKind, FdbView, MtuView, NetworkView,
    PeerView, PortView, Reply, Request, Response, RoutingView, StatusView, Traffic,
};
use super::attach::{self, mac_for};
use super::config::{Config, ConfigError, NetworkConfig};
use super::gateway::{GatewayNetwork, Gateways, Published};
use super::leases::Leases;
use super::state::{PortRecord, PortStore};
use crate::fdb::{FdbConfig, FdbEntry};
use crate::io::{Command, Datapath, DatapathStopped, IoCounters, TapQueue, WorkerSnapshot};
use crate::switch::{self, Gateway, PeerStats, PortConfig, PortId, PortStats, Site, SwitchConfig};
use crate::wire::Vni;
use rustc_hash::FxHashMap;

mod fleet;
mod handoff;
mod reservations;
mod transaction;
pub use transaction::{AttachStep, FAIL_ATTACH_ENV, KILL_ATTACH_ENV};

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
    /// Found through the fleet's registry rather than configured.
    from_fleet: bool,
}

/// An attached container's port.
struct Port {
    record: PortRecord,
    id: PortId,
}

/// An attach request that may proceed: its names resolved, and the container's record when it
/// is attached already.
struct Admitted {
    container_id: String,
    ifname: String,
    network: String,
    existing: Option<PortRecord>,
}

/// A lease's owner: network, container id, interface.
type Owner = (String, String, String);

/// Everything the control plane changes; behind one lock.
struct State {
    config: Config,
    networks: BTreeMap<String, Network>,
    peers: BTreeMap<String, Peer>,
    ports: Vec<Port>,
    /// Recorded attachments (saved, their lease held) not served now: their namespace could not
    /// be looked at, or their port not plugged. The sweep tries again.
    waiting: Vec<PortRecord>,
    /// Leases no saved record holds any more whose release failed; the sweep tries again.
    unreleased: Vec<Owner>,
    /// Attaches that did not finish, saved with their intent, whose undo could not finish yet
    /// (their lease is held); the sweep tries again.
    undoing: Vec<PortRecord>,
    /// Attaches reserved for a helper (saved with their intent, their lease held), waiting
    /// for its queues (`handoff`).
    reserved: Vec<PortRecord>,
    store: PortStore,
    leases: Leases,
    gateways: Gateways,
    /// Addresses reserved for runtimes that move interfaces themselves, and their TAPs.
    reservations: reservations::Reservations,
}

impl State {
    /// Every record the list on disk must hold.
    fn records(&self) -> Vec<PortRecord> {
        self.ports
            .iter()
            .map(|p| p.record.clone())
            .chain(self.waiting.iter().cloned())
            .chain(self.undoing.iter().cloned())
            .chain(self.reserved.iter().cloned())
            .collect()
    }
}

/// What queries read: a copy of the daemon's lists, replaced after every change, so that a
/// query never waits for a change in progress.
#[derive(Default)]
struct View {
    node: String,
    store: String,
    networks: Vec<NetworkView>,
    /// Name, endpoint and networks of each configured peer.
    peers: Vec<(String, SocketAddr, Vec<String>)>,
    ports: Vec<(PortId, Attachment)>,
}

/// The running daemon.
pub struct Daemon {
    config_path: PathBuf,
    started: Instant,
    datapath: Datapath,
    /// The handshake thread's view, when a network is sealed.
    sealing: std::sync::OnceLock<super::sealing::Sealing>,
    state: Mutex<State>,
    view: Mutex<Arc<View>>,
    /// Membership and health ([`fleet`]).
    fleet: std::sync::OnceLock<fleet::FleetLink>,
    policy: super::policy::PolicyPlane,
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
        let policy = super::policy::PolicyPlane::open(&config.node.state_dir, &config.policies)?;
        let daemon = Arc::new(Self {
            config_path: config_path.to_owned(),
            started: Instant::now(),
            datapath,
            sealing: std::sync::OnceLock::new(),
            state: Mutex::new(State {
                config: config.clone(),
                networks: BTreeMap::new(),
                peers: BTreeMap::new(),
                ports: Vec::new(),
                waiting: Vec::new(),
                unreleased: Vec::new(),
                undoing: Vec::new(),
                reserved: Vec::new(),
                store,
                leases,
                gateways: Gateways::default(),
                reservations: reservations::Reservations::new(
                    super::host_tap::ReservationStore::new(&config.node.state_dir),
                ),
            }),
            view: Mutex::default(),
            fleet: std::sync::OnceLock::new(),
            policy,
        });
        {
            let mut state = daemon.lock();
            for network in &config.networks {
                daemon.add_network(&mut state, network.clone())?;
            }
            for peer in &config.peers {
                daemon.add_peer(&mut state, peer)?;
            }
            state.gateways.remove_leftovers();
            daemon.sync_gateway(&mut state, true)?;
            // Policies in force before any container is back: each stays closed until the
            // compilation that knows it arrives.
            daemon.publish_view(&state);
            daemon.restore(&mut state)?;
            daemon.sync_gateway(&mut state, false)?;
            daemon.publish_view(&state);
        }
        if let Some(sealing) = super::sealing::Sealing::start(&config, daemon.datapath.remote())? {
            let _ = daemon.sealing.set(sealing);
        }
        fleet::start(&daemon, &config)?;
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
        let result = match request {
            Request::Attach(r) => self.change(|state| self.attach(state, r).map(Reply::Attached)),
            Request::Detach(r) => self.change(|state| self.detach(state, &r).map(Reply::Detached)),
            Request::Reload => self.change(|state| self.reload(state).map(Reply::Reloaded)),
            Request::Status => Ok(Reply::Status(Box::new(self.status()))),
            Request::Ports => Ok(Reply::Ports(self.ports())),
            Request::Fdb => Ok(Reply::Fdb(self.fdb())),
            Request::Peers => Ok(Reply::Peers(self.peers())),
            Request::PolicyApply(r) => self
                .change(|_| self.policy.apply(&self.datapath, r.policies))
                .map(Reply::Policy),
            Request::PolicyDelete(r) => self.change(|_| {
                let deleted = self.policy.delete(&self.datapath, &r.name)?;
                Ok(Reply::Policy(if deleted {
                    format!("deleted {}", r.name)
                } else {
                    format!("no policy is named {:?}", r.name)
                }))
            }),
            Request::PolicyList => Ok(Reply::Policies(Box::new(self.policy.list()))),
            Request::PolicyExplain(r) => self
                .policy
                .explain(&r)
                .map(Reply::Explained)
                .map_err(anyhow::Error::new),
            Request::Qos(r) => self.change(|state| self.set_qos(state, &r).map(Reply::Attached)),
            Request::Reserve(r) => self.change(|state| self.reserve(state, r).map(Reply::Reserved)),
            Request::Unreserve(r) => {
                self.change(|state| self.unreserve(state, &r).map(Reply::Unreserved))
            }
            Request::PlugTap(r) => {
                self.change(|state| self.plug_reserved_tap(state, r).map(Reply::Reserved))
            }
            Request::UnplugTap(r) => {
                self.change(|state| self.unplug_reserved_tap(state, &r).map(Reply::Unplugged))
            }
            Request::Reservations => Ok(Reply::Reservations(self.lock().reservations.list())),
            Request::HelperReserve(_) | Request::Plug(_) => Err(ApiError::new(
                ErrorKind::BadRequest,
                "reserve and plug are one exchange on one control connection (vswitch attach \
                 --helper)",
            )
            .into()),
        };
        match result {
            Ok(reply) => Response::Ok(reply),
            Err(e) => Response::Error(api_error(&e)),
        }
    }

    /// Makes a change under the lock and publishes the view queries read.
    fn change<R>(&self, f: impl FnOnce(&mut State) -> anyhow::Result<R>) -> anyhow::Result<R> {
        let mut state = self.lock();
        let result = f(&mut state);
        self.publish_view(&state);
        result
    }

    fn publish_view(&self, state: &State) {
        let view = View {
            node: state.config.node.name.clone(),
            store: state.config.store.to_string(),
            networks: state
                .networks
                .values()
                .map(|n| NetworkView {
                    name: n.config.name.clone(),
                    vni: n.vni.get(),
                    subnet: IpNet::V4(n.config.subnet),
                    node_subnet: IpNet::V4(n.node_subnet),
                    gateway: IpAddr::V4(n.gateway),
                    mtu: n.config.mtu(),
                    ports: state
                        .ports
                        .iter()
                        .filter(|p| p.record.attachment.network == n.config.name)
                        .count()
                        + state.reservations.plugged_on(&n.config.name),
                })
                .collect(),
            peers: state
                .peers
                .iter()
                .map(|(name, p)| (name.clone(), p.endpoint, p.networks.clone()))
                .collect(),
            ports: state
                .ports
                .iter()
                .map(|p| (p.id, p.record.attachment.clone()))
                .chain(state.reservations.attachments())
                .collect(),
        };
        self.fleet_view_published(&view);
        *self
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(view);
        let ports: Vec<_> = state
            .ports
            .iter()
            .map(|p| (p.id, &p.record.attachment))
            .collect();
        if let Err(e) = self
            .policy
            .sync(&self.datapath, &state.config.policies, &ports)
        {
            warn!("putting policies and rate limits in force: {e:#}");
        }
    }

    /// Sets or clears the rate limit of an attached container's port, and saves it.
    fn set_qos(
        &self,
        state: &mut State,
        r: &super::policy::QosRequest,
    ) -> anyhow::Result<Attachment> {
        let ifname = r.ifname.as_deref().unwrap_or("eth0");
        let Some(i) = state.ports.iter().position(|p| {
            p.record.attachment.container_id == r.container_id
                && p.record.attachment.ifname == ifname
        }) else {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!("{} {ifname} is not attached here", r.container_id),
            )
            .field("container_id")
            .into());
        };
        let mtu = state.ports[i].record.attachment.mtu;
        let qos = super::policy::qos_setting(r.rate, r.burst, mtu)?;
        let mut records = state.records();
        records[i].attachment.qos = qos;
        state
            .store
            .save(&records)
            .context("saving the attachment list")?;
        state.ports[i].record.attachment.qos = qos;
        Ok(state.ports[i].record.attachment.clone())
    }

    fn view(&self) -> Arc<View> {
        Arc::clone(
            &self
                .view
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Re-reads the config file and applies what changed.
    pub fn reload_from_disk(&self) -> anyhow::Result<String> {
        self.change(|state| self.reload(state))
    }

    /// Resolves (to why) once the datapath has stopped on its own: a worker panicked or failed.
    pub fn datapath_failed(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.datapath.failed()
    }

    /// Detaches containers whose namespace has disappeared (the container is gone and nobody
    /// called detach), releasing their addresses; plugs recorded containers that could not be
    /// served before; retries failed lease releases. A namespace that cannot be looked at now
    /// (descriptors exhausted, no memory, no permission) is not taken for gone.
    pub fn sweep(&self) {
        let mut state = self.lock();
        let mut gone = Vec::new();
        for port in &state.ports {
            let a = &port.record.attachment;
            match open_recorded(&port.record) {
                Recorded::Present(_) => {}
                Recorded::Gone(why) => gone.push((a.container_id.clone(), a.ifname.clone(), why)),
                Recorded::Unknown(e) => warn!(
                    container = %a.container_id,
                    "cannot tell whether the namespace is still there; keeping the port: {e:#}"
                ),
            }
        }
        let waiting = std::mem::take(&mut state.waiting);
        for record in waiting {
            let a = &record.attachment;
            match open_recorded(&record) {
                // Its helper re-sends the queues; the daemon does not open them itself.
                Recorded::Present(_) if record.by_helper => state.waiting.push(record),
                Recorded::Present(ns) => match self.plug(&state, &record, &ns) {
                    Ok(id) => {
                        info!(container = %a.container_id, ifname = %a.ifname, "port restored");
                        state.ports.push(Port { record, id });
                    }
                    Err(e) => {
                        warn!(container = %a.container_id, "cannot restore the port yet: {e:#}");
                        state.waiting.push(record);
                    }
                },
                Recorded::Gone(why) => {
                    gone.push((a.container_id.clone(), a.ifname.clone(), why));
                    state.waiting.push(record);
                }
                Recorded::Unknown(e) => {
                    warn!(
                        container = %a.container_id,
                        "cannot tell whether the namespace is still there; keeping it: {e:#}"
                    );
                    state.waiting.push(record);
                }
            }
        }
        for (container_id, ifname, why) in gone {
            info!(%container_id, %ifname, "namespace gone ({why}): detaching");
            let request = DetachRequest {
                container_id,
                ifname: Some(ifname),
            };
            if let Err(e) = self.detach(&mut state, &request) {
                warn!("detaching a vanished container: {e:#}");
            }
        }
        self.sweep_reservations(&mut state);
        self.retry_undos(&mut state);
        self.retry_releases(&mut state);
        self.policy.sweep();
        self.publish_view(&state);
    }

    /// Releases the leases whose release failed before, unless a record holds them again.
    fn retry_releases(&self, state: &mut State) {
        let pending = std::mem::take(&mut state.unreleased);
        let records = state.records();
        for owner in pending {
            let (network, container_id, ifname) = &owner;
            let held = records.iter().any(|r| {
                let a = &r.attachment;
                &a.network == network && &a.container_id == container_id && &a.ifname == ifname
            });
            if held {
                continue;
            }
            match state.leases.release(network, container_id, ifname) {
                Ok(()) => info!(%container_id, %ifname, "address released"),
                Err(e) => {
                    warn!(%container_id, %ifname, "releasing the address, again: {e:#}");
                    state.unreleased.push(owner);
                }
            }
        }
    }

    fn add_network(&self, state: &mut State, config: NetworkConfig) -> anyhow::Result<()> {
        let vni = config.vni();
        let node_subnet = state.leases.open_pool(&config)?;
        let gateway = first_host(node_subnet);
        let switch_network = switch::NetworkConfig {
            vni,
            mtu: config.mtu(),
            gateway: Some(Gateway {
                ip: gateway,
                mac: mac_for(gateway),
            }),
            sealed: config.encryption,
            clamp_mss: config.clamp_mss,
        };
        agreed(self.datapath.ask(|reply| Command::AddNetwork {
            config: switch_network.clone(),
            reply,
        })?)?;
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
        self.datapath.ask(|reply| Command::AddPeer {
            addr: endpoint,
            vnis: vnis.clone(),
            reply,
        })?;
        state.peers.insert(
            peer.name.clone(),
            Peer {
                endpoint,
                networks,
                from_fleet: false,
            },
        );
        Ok(())
    }

    /// Re-creates the ports of containers attached before a restart; forgets those whose
    /// namespace is gone and releases every lease nobody holds. A container whose namespace
    /// cannot be looked at now, or whose port cannot be plugged now, is kept (record and lease)
    /// and tried again by the sweep.
    fn restore(&self, state: &mut State) -> anyhow::Result<()> {
        self.restore_reservations(state)?;
        let records = state.store.load()?;
        let mut kept = self.kept_queues(state);
        for record in records {
            let a = &record.attachment;
            if record.intent.is_some() && record.by_helper {
                // Its helper undoes the interface (it was never answered); the lease goes below.
                if let Err(e) = transaction::undo_setup(&record) {
                    info!(container = %a.container_id, "an unfinished attach by a helper dropped; its interface is the helper's to remove: {e:#}");
                }
                self.forget_kept(state, &record);
                continue;
            }
            if record.intent.is_some() {
                // An attach the daemon died in: undone, and its lease released below.
                match transaction::undo_setup(&record) {
                    Ok(()) => info!(container = %a.container_id, "unfinished attach undone"),
                    Err(e) => {
                        warn!(container = %a.container_id, "undoing an unfinished attach, retrying: {e:#}");
                        state.undoing.push(record);
                    }
                }
                continue;
            }
            let ns = match open_recorded(&record) {
                Recorded::Present(ns) => ns,
                Recorded::Gone(why) => {
                    info!(container = %a.container_id, "namespace gone since last run ({why}): releasing");
                    continue;
                }
                Recorded::Unknown(e) => {
                    warn!(
                        container = %a.container_id,
                        "cannot tell whether the namespace is still there; keeping it: {e:#}"
                    );
                    state.waiting.push(record);
                    continue;
                }
            };
            if !state.networks.contains_key(&a.network) {
                warn!(container = %a.container_id, network = %a.network, "network no longer configured: detaching");
                let _ = attach::remove_interface(a, &ns);
                continue;
            }
            if record.by_helper {
                match self.readopt_kept(state, &record, &mut kept) {
                    Ok(id) => state.ports.push(Port { record, id }),
                    Err(e) => {
                        info!(container = %a.container_id, "waiting for its helper to send the queues again: {e:#}");
                        state.waiting.push(record);
                    }
                }
                continue;
            }
            match self.plug(state, &record, &ns) {
                Ok(id) => state.ports.push(Port { record, id }),
                Err(e) => {
                    warn!(container = %a.container_id, "cannot restore the port yet, retrying: {e:#}");
                    state.waiting.push(record);
                }
            }
        }
        self.forget_unclaimed(state, kept);
        let kept = state.records();
        state.store.save(&kept)?;
        let live: Vec<Owner> = kept
            .iter()
            .map(|r| {
                let a = &r.attachment;
                (a.network.clone(), a.container_id.clone(), a.ifname.clone())
            })
            .chain(state.reservations.owners())
            .collect();
        let released = state.leases.retain(&live)?;
        if released > 0 {
            info!(released, "released leases of containers that are gone");
        }
        if !state.ports.is_empty() {
            info!(ports = state.ports.len(), "re-adopted attached containers");
        }
        Ok(())
    }

    /// Puts the interface in place and hands its TAP to the datapath.
    fn plug(&self, state: &State, record: &PortRecord, ns: &NetNs) -> anyhow::Result<PortId> {
        let a = &record.attachment;
        let tap =
            attach::ensure_interface(a, ns, state.config.node.offloads, self.datapath.workers())?;
        self.plug_tap(state, record, tap)
    }

    /// Hands an attachment's TAP to the datapath.
    fn plug_tap(
        &self,
        state: &State,
        record: &PortRecord,
        tap: netns::Tap,
    ) -> anyhow::Result<PortId> {
        let a = &record.attachment;
        let network = state
            .networks
            .get(&a.network)
            .with_context(|| format!("network {:?} is no longer configured", a.network))?;
        let ips = [Some(a.address.addr()), a.address6.map(|v6| v6.addr())]
            .into_iter()
            .flatten()
            .collect();
        self.add_port(network.vni, a.mac, ips, tap)
    }

    /// Hands an open TAP to the datapath as a port of network `vni`.
    fn add_port(
        &self,
        vni: Vni,
        mac: crate::wire::MacAddr,
        ips: Vec<IpAddr>,
        tap: netns::Tap,
    ) -> anyhow::Result<PortId> {
        let vnet_hdr = tap.vnet_hdr_len() > 0;
        let uso = tap.offloads().contains(Offloads::USO4);
        let queues: Arc<[Arc<TapQueue>]> = tap
            .into_queues()
            .into_iter()
            .map(|fd| Arc::new(TapQueue::new(fd, vnet_hdr).with_uso(uso)))
            .collect();
        let port = PortConfig {
            vni,
            mac,
            ips,
            port_security: true,
        };
        let added = self.datapath.ask(|reply| Command::AddPort {
            queues: Arc::clone(&queues),
            config: port.clone(),
            reply,
        })?;
        let ids: Vec<PortId> = added
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        match agreed(added) {
            Ok(id) => Ok(id),
            Err(e) => {
                // Take back what the workers that succeeded added.
                if let Some(&id) = ids.first() {
                    self.datapath
                        .ask(|reply| Command::RemovePort { id, reply })?;
                }
                Err(e)
            }
        }
    }

    fn attach(&self, state: &mut State, r: AttachRequest) -> anyhow::Result<Attachment> {
        let admitted = self.admit(state, &r)?;
        if let Some(existing) = admitted.existing {
            return Ok(existing.attachment);
        }
        let ns = open_namespace(&r.netns)?;
        let qos = qos_of(state, &admitted.network, r.rate, r.burst)?;
        self.attach_in_steps(
            state,
            transaction::Plan {
                wanted: transaction::Wanted {
                    container_id: admitted.container_id,
                    netns: r.netns,
                    ifname: admitted.ifname,
                    network: admitted.network,
                    ip: r.ip,
                    mac: r.mac,
                    labels: r.labels,
                    qos,
                    published: r.publish,
                },
                ns,
            },
        )
    }

    /// Checks an attach request against the configuration and the attachments: its names, its
    /// network, its labels, and whether the container is attached already (to that network:
    /// then its record is returned; to another: refused).
    fn admit(&self, state: &State, r: &AttachRequest) -> anyhow::Result<Admitted> {
        let network_name = r.network.clone().unwrap_or_else(|| "default".into());
        let ifname = r.ifname.clone().unwrap_or_else(|| "eth0".into());
        let container_id = r.container_id.clone().unwrap_or_else(|| r.netns.clone());
        netns::validate_ifname(&ifname).map_err(|e| {
            ApiError::new(
                ErrorKind::BadRequest,
                format!("interface name {ifname:?}: {e}; choose another --ifname"),
            )
            .field("ifname")
        })?;
        if !state.networks.contains_key(&network_name) {
            return Err(unknown_network(state, &network_name).into());
        }
        if let Some(existing) = state
            .ports
            .iter()
            .map(|p| &p.record)
            .chain(&state.waiting)
            .find(|r| r.attachment.container_id == container_id && r.attachment.ifname == ifname)
        {
            let a = &existing.attachment;
            if a.network != network_name {
                return Err(ApiError::new(
                    ErrorKind::AlreadyAttached,
                    format!(
                        "{container_id} {ifname} is already attached to network {:?}; detach it \
                         first (vswitch detach {container_id} --ifname {ifname}) or use another \
                         interface name",
                        a.network
                    ),
                )
                .field("container_id")
                .into());
            }
            return Ok(Admitted {
                container_id,
                ifname,
                network: network_name,
                existing: Some(existing.clone()),
            });
        }
        check_labels(&r.labels)?;
        if !r.publish.is_empty()
            && !state
                .networks
                .get(&network_name)
                .is_some_and(|n| n.config.host_port())
        {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!(
                    "network {network_name:?} has no host port for published ports to go \
                     through: set host_port = true (or masquerade = true) on it"
                ),
            )
            .field("publish")
            .into());
        }
        check_published(state, &container_id, &r.publish)?;
        Ok(Admitted {
            container_id,
            ifname,
            network: network_name,
            existing: None,
        })
    }

    /// Releases the lease of an owner no saved record holds; if that fails, remembers it for
    /// the sweep and adds that to `error`.
    fn release_or_keep(
        &self,
        state: &mut State,
        owner: Owner,
        error: anyhow::Error,
    ) -> anyhow::Error {
        let (network, container_id, ifname) = &owner;
        match state.leases.release(network, container_id, ifname) {
            Ok(()) => error,
            Err(e) => {
                warn!(%container_id, %ifname, "releasing the address: {e:#}");
                state.unreleased.push(owner);
                error.context(format!(
                    "and its address could not be released yet ({e:#}); retried every {}s",
                    SWEEP_INTERVAL.as_secs()
                ))
            }
        }
    }

    fn detach(&self, state: &mut State, r: &DetachRequest) -> anyhow::Result<bool> {
        let ifname = r.ifname.clone().unwrap_or_else(|| "eth0".into());
        let matches = |record: &PortRecord| {
            record.attachment.container_id == r.container_id && record.attachment.ifname == ifname
        };
        let port_index = state.ports.iter().position(|p| matches(&p.record));
        let waiting_index = state.waiting.iter().position(matches);
        let record = match (port_index, waiting_index) {
            (Some(i), _) => state.ports[i].record.clone(),
            (None, Some(i)) => state.waiting[i].clone(),
            (None, None) => return Ok(false),
        };
        let a = &record.attachment;
        // Saved before anything is forgotten: when the list cannot be written, nothing changes.
        let remaining: Vec<PortRecord> = state
            .records()
            .into_iter()
            .filter(|r| !matches(r))
            .collect();
        state.store.save(&remaining).with_context(|| {
            format!(
                "detaching {} {}: nothing was changed (the container keeps its port and its \
                 address); try again once the state directory can be written",
                a.container_id, a.ifname
            )
        })?;
        if let Some(i) = port_index {
            let id = state.ports.remove(i).id;
            self.datapath
                .ask(|reply| Command::RemovePort { id, reply })?;
            if !a.published.is_empty() {
                self.sync_gateway(state, false)?;
            }
        } else if let Some(i) = waiting_index {
            state.waiting.remove(i);
        }
        let removed = match open_recorded(&record) {
            // The helper that made the interface removes it.
            _ if record.by_helper => Ok(()),
            Recorded::Present(ns) => attach::remove_interface(a, &ns)
                .map(drop)
                .map_err(anyhow::Error::new),
            Recorded::Gone(_) => Ok(()),
            Recorded::Unknown(e) => Err(e),
        };
        if let Err(e) = removed {
            // The interface may still carry the address: the lease stays (the next start
            // releases it, the record being gone).
            return Err(e.context(format!(
                "{} {} is off the switch, but its interface could not be removed; its address \
                 stays leased until vswitchd restarts",
                a.container_id, a.ifname
            )));
        }
        let owner = (a.network.clone(), a.container_id.clone(), a.ifname.clone());
        if let Err(e) = state.leases.release(&a.network, &a.container_id, &a.ifname) {
            state.unreleased.push(owner);
            return Err(e.context(format!(
                "{} {} is detached, but its address could not be released yet; retried every {}s",
                a.container_id,
                a.ifname,
                SWEEP_INTERVAL.as_secs()
            )));
        }
        if record.by_helper {
            self.forget_kept(state, &record);
        }
        self.fleet_detached(a);
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
        changes.extend(super::sealing::reload_changes(&state.config, &config));
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
            state.gateways.remove_host_port(&self.datapath, &name)?;
            if let Some(network) = state.networks.remove(&name) {
                let vni = network.vni;
                self.datapath
                    .ask(|reply| Command::RemoveNetwork { vni, reply })?;
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
                Some(current)
                    if current.config.mtu() != network.mtu()
                        || current.config.clamp_mss != network.clamp_mss =>
                {
                    let update = switch::NetworkConfig {
                        vni: current.vni,
                        mtu: network.mtu(),
                        gateway: Some(Gateway {
                            ip: current.gateway,
                            mac: mac_for(current.gateway),
                        }),
                        sealed: network.encryption,
                        clamp_mss: network.clamp_mss,
                    };
                    agreed(self.datapath.ask(|reply| Command::AddNetwork {
                        config: update.clone(),
                        reply,
                    })?)?;
                    if let Some(current) = state.networks.get_mut(&network.name) {
                        current.config.mtu_setting = network.mtu_setting;
                        current.config.clamp_mss = network.clamp_mss;
                    }
                    changes.push(format!(
                        "network {}: MTU {}, MSS clamping {}",
                        network.name,
                        network.mtu(),
                        if network.clamp_mss { "on" } else { "off" }
                    ));
                }
                Some(_) => {}
            }
        }
        // Peers: removed ones go (with what was learned behind them), new ones come.
        let old_peers: Vec<String> = state
            .peers
            .iter()
            .filter(|(_, p)| !p.from_fleet)
            .map(|(name, _)| name.clone())
            .collect();
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
                    self.datapath.ask(|reply| Command::RemovePeer {
                        addr: endpoint,
                        reply,
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
        for network in &config.networks {
            let Some(current) = state.networks.get_mut(&network.name) else {
                continue;
            };
            let before = &current.config;
            if before.host_port() != network.host_port()
                || before.masquerade != network.masquerade
                || before.routes_to != network.routes_to
            {
                current.config.host_port_setting = network.host_port_setting;
                current.config.masquerade = network.masquerade;
                current.config.routes_to = network.routes_to.clone();
                changes.push(format!("network {}: gateway settings", network.name));
            }
        }
        self.sync_gateway(state, true)?;
        let summary = if changes.is_empty() {
            "no change".to_owned()
        } else {
            changes.join("; ")
        };
        info!(%summary, "config reloaded");
        Ok(summary)
    }

    /// Makes the host ports and routes (with `ports_too`) and the NAT rules agree with the
    /// networks and the attached containers' published ports.
    fn sync_gateway(&self, state: &mut State, ports_too: bool) -> anyhow::Result<()> {
        let State {
            networks,
            gateways,
            ports,
            config,
            ..
        } = state;
        let nets: Vec<GatewayNetwork<'_>> = networks
            .values()
            .map(|n| GatewayNetwork {
                config: &n.config,
                vni: n.vni,
                gateway: n.gateway,
            })
            .collect();
        if ports_too {
            gateways.sync(&self.datapath, &nets, config.node.offloads)?;
        }
        let published: Vec<Published> = ports
            .iter()
            .flat_map(|p| {
                let a = &p.record.attachment;
                let network = networks.get(&a.network).map(|n| n.config.subnet);
                a.published
                    .iter()
                    .filter_map(move |&mapping| match a.address.addr() {
                        IpAddr::V4(address) => Some(Published {
                            mapping,
                            address,
                            network: network?,
                        }),
                        IpAddr::V6(_) => None,
                    })
            })
            .collect();
        gateways.sync_nat(&nets, &published)
    }

    fn network_name(view: &View, vni: Vni) -> String {
        view.networks
            .iter()
            .find(|n| n.vni == vni.get())
            .map(|n| n.name.clone())
            .unwrap_or_else(|| vni.to_string())
    }

    fn status(&self) -> StatusView {
        let view = self.view();
        let Totals {
            counters,
            io,
            fdb_entries,
            workers,
        } = totals(&self.datapath.fresh_snapshots());
        let mut status = StatusView {
            node: view.node.clone(),
            endpoint: self.datapath.local_addr(),
            uptime_secs: self.started.elapsed().as_secs(),
            store: view.store.clone(),
            networks: view.networks.clone(),
            peers: view.peers.len(),
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
            mtu: MtuView {
                too_big_sent: counters.too_big_sent,
                too_big_limited: counters.too_big_limited,
                mss_clamped: counters.mss_clamped,
            },
            routing: RoutingView {
                routed: counters.routed,
                route_resolves: counters.route_resolves,
                ttl_exceeded: counters.ttl_exceeded,
            },
            health: None,
        };
        self.fleet_status(&mut status);
        status
    }

    fn ports_of(view: &View, snapshots: &[Arc<WorkerSnapshot>]) -> Vec<PortView> {
        let mut stats: FxHashMap<PortId, PortStats> = FxHashMap::default();
        for snapshot in snapshots {
            for (id, one) in &snapshot.ports {
                stats.entry(*id).or_default().add(one);
            }
        }
        view.ports
            .iter()
            .map(|(id, attachment)| {
                let s = stats.get(id).copied().unwrap_or_default();
                PortView {
                    attachment: attachment.clone(),
                    traffic: Traffic {
                        rx_frames: s.rx_frames,
                        rx_bytes: s.rx_bytes,
                        tx_frames: s.tx_frames,
                        tx_bytes: s.tx_bytes,
                        drops: s.drops,
                    },
                    denied: s.denied,
                    limited: s.limited,
                }
            })
            .collect()
    }

    fn ports(&self) -> Vec<PortView> {
        Self::ports_of(&self.view(), &self.datapath.fresh_snapshots())
    }

    fn fdb(&self) -> Vec<FdbView> {
        let view = self.view();
        let now = Instant::now();
        // One row per MAC: the entry of the worker that learned it (the others mirror it).
        let mut entries: BTreeMap<(u32, [u8; 6]), (FdbEntry, Site, Duration)> = BTreeMap::new();
        for snapshot in self.datapath.fresh_snapshots() {
            let since = now.saturating_duration_since(snapshot.fdb.taken);
            for (entry, site) in &snapshot.fdb.entries {
                let key = (entry.vni.get(), entry.mac.0);
                match entries.get(&key) {
                    Some((known, _, _)) if !known.mirrored || entry.mirrored => {}
                    _ => {
                        entries.insert(key, (*entry, *site, since));
                    }
                }
            }
        }
        let mut views: Vec<FdbView> = entries
            .into_values()
            .map(|(e, site, since)| FdbView {
                network: Self::network_name(&view, e.vni),
                vni: e.vni.get(),
                mac: e.mac,
                location: describe(&view, site),
                is_static: e.is_static,
                age_secs: if e.is_static {
                    0
                } else {
                    (e.age.unwrap_or_default() + since).as_secs()
                },
            })
            .collect();
        views.sort_by_key(|v| (v.vni, v.mac));
        views
    }

    fn peers_of(view: &View, snapshots: &[Arc<WorkerSnapshot>]) -> Vec<PeerView> {
        // Peers by address (ids of peers that appeared on their own differ between workers).
        let mut stats: FxHashMap<IpAddr, PeerStats> = FxHashMap::default();
        let mut macs: FxHashMap<IpAddr, usize> = FxHashMap::default();
        for snapshot in snapshots {
            for (addr, one) in &snapshot.peers {
                stats.entry(addr.ip()).or_default().add(one);
            }
            let mut here: FxHashMap<IpAddr, usize> = FxHashMap::default();
            for (_, site) in &snapshot.fdb.entries {
                if let Site::Peer(addr) = site {
                    *here.entry(addr.ip()).or_default() += 1;
                }
            }
            // Every worker lists every MAC (learned or mirrored): the most is the count.
            for (ip, n) in here {
                let most = macs.entry(ip).or_default();
                *most = (*most).max(n);
            }
        }
        view.peers
            .iter()
            .map(|(name, endpoint, networks)| {
                let s = stats.get(&endpoint.ip()).copied().unwrap_or_default();
                PeerView {
                    name: name.clone(),
                    endpoint: *endpoint,
                    networks: networks.clone(),
                    macs: macs.get(&endpoint.ip()).copied().unwrap_or_default(),
                    traffic: Traffic {
                        rx_frames: s.rx_datagrams,
                        rx_bytes: s.rx_bytes,
                        tx_frames: s.tx_datagrams,
                        tx_bytes: s.tx_bytes,
                        drops: s.drops,
                    },
                    session: None,
                    drops_by_reason: s
                        .drop_reasons
                        .iter()
                        .filter(|&(_, n)| n > 0)
                        .map(|(reason, n)| (reason.as_str().to_owned(), n))
                        .collect(),
                    health: None,
                    discovered: false,
                }
            })
            .collect()
    }

    fn peers(&self) -> Vec<PeerView> {
        let mut peers = Self::peers_of(&self.view(), &self.datapath.fresh_snapshots());
        self.fleet_peers(&mut peers);
        self.with_sessions(peers)
    }

    /// `peers` with each sealed peer's session filled in.
    fn with_sessions(&self, mut peers: Vec<PeerView>) -> Vec<PeerView> {
        if let Some(sealing) = self.sealing.get() {
            let sessions = sealing.status();
            for peer in &mut peers {
                peer.session = sessions.get(&peer.endpoint).cloned();
            }
        }
        peers
    }

    /// The daemon's counters for a scrape, from the workers' latest snapshots.
    pub fn metrics(&self) -> super::metrics::Scrape {
        let view = self.view();
        let snapshots = self.datapath.snapshots();
        let totals = totals(&snapshots);
        let mut peers = Self::peers_of(&view, &snapshots);
        self.fleet_peers(&mut peers);
        super::metrics::Scrape {
            counters: totals.counters,
            io: totals.io,
            fdb_entries: totals.fdb_entries,
            ports: Self::ports_of(&view, &snapshots),
            peers: self.with_sessions(peers),
            workers: totals.workers,
            health: self.fleet_health(),
            policy: self.policy.list(),
        }
    }

    /// Stops the datapath. Containers keep their (persistent) interfaces; the next start
    /// re-adopts them.
    pub fn shutdown(self: Arc<Self>) -> anyhow::Result<()> {
        if let Err(e) = self.lock().gateways.teardown() {
            warn!("{e:#}");
        }
        self.stop_fleet();
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

/// What became of the namespace a record was made in.
enum Recorded {
    /// It is there, and it is the same one.
    Present(NetNs),
    /// It is not: no such file or process, or the file is another namespace (or none).
    Gone(String),
    /// It could not be looked at (descriptors exhausted, no memory, no permission, ...): that
    /// says nothing about the container.
    Unknown(anyhow::Error),
}

/// The error for a network this node does not carry, naming those it does.
fn unknown_network(state: &State, name: &str) -> ApiError {
    let known: Vec<&str> = state.networks.keys().map(String::as_str).collect();
    ApiError::new(
        ErrorKind::UnknownNetwork,
        format!(
            "no network is named {name:?}; this node carries: {} (add it to [[networks]] in the \
             config and run vswitch reload, or pick one of those)",
            known.join(", ")
        ),
    )
    .field("network")
}

/// Opens the namespace a record was made in, telling "gone" apart from "cannot tell now".
fn open_recorded(record: &PortRecord) -> Recorded {
    let ns_ref: NsRef = match record.attachment.netns.parse() {
        Ok(ns_ref) => ns_ref,
        Err(e) => return Recorded::Unknown(anyhow::Error::new(e)),
    };
    match NetNs::open(&ns_ref) {
        Ok(ns) => {
            let id = ns.id();
            if (id.dev, id.ino) == record.netns_id {
                Recorded::Present(ns)
            } else {
                Recorded::Gone(format!("{ns_ref} is now another namespace, {id}"))
            }
        }
        Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::ESRCH)) => {
            Recorded::Gone(e.to_string())
        }
        // A file that is no network namespace at all is not the recorded one either.
        Err(e @ netns::Error::InvalidArgument { .. }) => Recorded::Gone(e.to_string()),
        Err(e) => Recorded::Unknown(anyhow::Error::new(e)),
    }
}

/// Where an FDB entry points, for people.
fn describe(view: &View, site: Site) -> String {
    match site {
        Site::Port(id) => view
            .ports
            .iter()
            .find(|(port, _)| *port == id)
            .map(|(_, a)| format!("port {}@{}", a.ifname, a.container_id))
            .unwrap_or_else(|| format!("port {id:?}")),
        Site::Peer(addr) => view
            .peers
            .iter()
            .find(|(_, endpoint, _)| endpoint.ip() == addr.ip())
            .map(|(name, endpoint, _)| format!("peer {name} {endpoint}"))
            .unwrap_or_else(|| format!("peer {addr}")),
    }
}

/// The switch and I/O counters summed over the workers' snapshots, the FDB's size, and each
/// worker's traffic.
fn totals(snapshots: &[Arc<WorkerSnapshot>]) -> Totals {
    let mut totals = Totals::default();
    for snapshot in snapshots {
        totals.counters.add(&snapshot.counters);
        totals.io.add(&snapshot.io);
        // Every worker holds the whole table (its own entries and its siblings').
        totals.fdb_entries = totals.fdb_entries.max(snapshot.fdb_entries);
        totals.workers.push(traffic_of(&snapshot.counters));
    }
    totals
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

/// Refuses ports another container has published (or that the request names twice).
fn check_published(
    state: &State,
    container_id: &str,
    publish: &[super::gateway::PortMapping],
) -> Result<(), ApiError> {
    for (i, wanted) in publish.iter().enumerate() {
        let same = |m: &super::gateway::PortMapping| {
            m.host_port == wanted.host_port && m.protocol == wanted.protocol
        };
        if publish[..i].iter().any(same) {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!("{wanted} is asked for twice"),
            )
            .field("publish"));
        }
        let holder = state
            .ports
            .iter()
            .map(|p| &p.record)
            .chain(&state.waiting)
            .chain(&state.reserved)
            .map(|r| &r.attachment)
            .find(|a| a.container_id != container_id && a.published.iter().any(same));
        if let Some(holder) = holder {
            return Err(ApiError::new(
                ErrorKind::PortTaken,
                format!(
                    "host port {wanted} is published already by {} ({} {}): pick another \
                     host port, or detach that container first",
                    holder.container_id, holder.network, holder.address
                ),
            )
            .field("publish"));
        }
    }
    Ok(())
}

/// Labels must be few and short, and say something: a key of at most 253 bytes and a value of
/// at most 253, neither with control characters, at most 64 of them.
fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let bad = |why: String| ApiError::new(ErrorKind::BadRequest, why).field("labels");
    if labels.len() > 64 {
        return Err(bad(format!("{} labels; at most 64 are kept", labels.len())));
    }
    for (key, value) in labels {
        if key.is_empty() || key.len() > 253 || value.len() > 253 {
            return Err(bad(format!(
                "label {key:?}: keys are 1 to 253 bytes long, values at most 253"
            )));
        }
        if key.chars().chain(value.chars()).any(char::is_control) {
            return Err(bad(format!(
                "label {key:?}: control characters are not allowed"
            )));
        }
    }
    Ok(())
}

/// Opens the namespace an attach names, saying what is wrong and what to do when it cannot.
fn open_namespace(netns: &str) -> Result<NetNs, ApiError> {
    let ns_ref: NsRef = netns.parse().map_err(|e| {
        ApiError::new(
            ErrorKind::BadRequest,
            format!(
                "network namespace {netns:?}: {e}; give an `ip netns` name, a path such as \
                 /proc/PID/ns/net, or pid:PID"
            ),
        )
        .field("netns")
    })?;
    NetNs::open(&ns_ref).map_err(|e| {
        let path = ns_ref.path();
        let path = path.display();
        let (kind, message) = match (e.errno(), &ns_ref) {
            (Some(libc::ENOENT | libc::ESRCH), NsRef::Name(name)) => (
                ErrorKind::NamespaceNotFound,
                format!(
                    "no network namespace is named {name:?} (there is no {path}): create it \
                     (ip netns add {name}), or name the container's namespace by path or pid:PID"
                ),
            ),
            (Some(libc::ENOENT | libc::ESRCH), NsRef::Pid(pid)) => (
                ErrorKind::NamespaceNotFound,
                format!(
                    "no process {pid} (there is no {path}): give the PID of a process running \
                     in the container"
                ),
            ),
            (Some(libc::ENOENT | libc::ESRCH), NsRef::Path(_)) => (
                ErrorKind::NamespaceNotFound,
                format!(
                    "no network namespace at {path}: check the path (it must exist for as long \
                     as the container does)"
                ),
            ),
            (Some(libc::EACCES | libc::EPERM), _) => (
                ErrorKind::PermissionDenied,
                format!(
                    "vswitchd may not open {path} ({e}): run vswitchd as root (it needs \
                     CAP_SYS_ADMIN and CAP_NET_ADMIN), or attach as root with vswitch attach \
                     --helper"
                ),
            ),
            _ => (
                ErrorKind::BadRequest,
                format!("network namespace {netns:?}: {e}"),
            ),
        };
        ApiError::new(kind, message).field("netns")
    })
}

/// The typed form of a failed request: the kind of the first error of the chain that has one
/// (an [`ApiError`] raised on purpose, an address pool's refusal, the kernel's permission
/// error), with the whole chain of context as the message.
fn api_error(e: &anyhow::Error) -> ApiError {
    let mut message = format!("{e:#}");
    let (kind, field, raised) =
        e.chain()
            .find_map(kind_of)
            .unwrap_or((ErrorKind::Internal, None, false));
    if kind == ErrorKind::PermissionDenied && !raised {
        message.push_str(
            " (vswitchd needs root, or CAP_NET_ADMIN and CAP_SYS_ADMIN, to set up interfaces; \
             without them, attach as root with vswitch attach --helper)",
        );
    }
    ApiError {
        kind,
        message,
        field,
    }
}

/// The kind of one error of a chain, the field it concerns, and whether it was raised as an
/// [`ApiError`]; `None` when it says nothing about the kind.
fn kind_of(e: &(dyn std::error::Error + 'static)) -> Option<(ErrorKind, Option<String>, bool)> {
    let permission = |denied: bool| denied.then_some((ErrorKind::PermissionDenied, None, false));
    if let Some(e) = e.downcast_ref::<ApiError>() {
        return Some((e.kind, e.field.clone(), true));
    }
    if let Some(e) = e.downcast_ref::<ipam::Error>() {
        let (kind, field) = match e {
            ipam::Error::AddressesExhausted { .. } => (ErrorKind::AddressExhausted, None),
            ipam::Error::AddressInUse { .. } | ipam::Error::OwnerHoldsOther { .. } => {
                (ErrorKind::AddressTaken, Some("ip"))
            }
            ipam::Error::AddressOutsideSubnet { .. } | ipam::Error::AddressReserved { .. } => {
                (ErrorKind::BadRequest, Some("ip"))
            }
            ipam::Error::InvalidName { field, .. } => (
                ErrorKind::BadRequest,
                match *field {
                    "container id" => Some("container_id"),
                    "interface name" => Some("ifname"),
                    _ => None,
                },
            ),
            ipam::Error::Etcd(_)
            | ipam::Error::EtcdTimeout { .. }
            | ipam::Error::Contention { .. } => (ErrorKind::Unavailable, None),
            _ => (ErrorKind::Internal, None),
        };
        return Some((kind, field.map(str::to_owned), false));
    }
    match e.downcast_ref::<attach::AttachError>() {
        Some(attach::AttachError::NameTaken { .. }) => {
            return Some((ErrorKind::NameTaken, Some("ifname".into()), false));
        }
        Some(attach::AttachError::Netns(e)) => return permission(e.is_permission_denied()),
        None => {}
    }
    if let Some(e) = e.downcast_ref::<netns::Error>() {
        return permission(e.is_permission_denied());
    }
    if let Some(e) = e.downcast_ref::<std::io::Error>() {
        return permission(e.kind() == std::io::ErrorKind::PermissionDenied);
    }
    None
}

/// The rate limit an attach asks for, checked against the network's MTU.
fn qos_of(
    state: &State,
    network: &str,
    rate: Option<crate::policy::BitRate>,
    burst: Option<u64>,
) -> Result<Option<super::policy::QosSetting>, ApiError> {
    let mtu = state
        .networks
        .get(network)
        .map(|n| n.config.mtu())
        .unwrap_or_default();
    super::policy::qos_setting(rate, burst, mtu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_kind_field_and_context() {
        let raised = anyhow::Error::new(
            ApiError::new(ErrorKind::UnknownNetwork, "no network is named \"red\"")
                .field("network"),
        )
        .context("attaching c1");
        let e = api_error(&raised);
        assert_eq!(e.kind, ErrorKind::UnknownNetwork);
        assert_eq!(e.field.as_deref(), Some("network"));
        assert_eq!(e.message, "attaching c1: no network is named \"red\"");

        let name_taken = anyhow::Error::new(attach::AttachError::NameTaken {
            ifname: "eth0".into(),
            netns: "c1".into(),
        });
        let e = api_error(&name_taken);
        assert_eq!(
            (e.kind, e.field.as_deref()),
            (ErrorKind::NameTaken, Some("ifname"))
        );

        let denied = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EPERM))
            .context("creating the TAP");
        let e = api_error(&denied);
        assert_eq!(e.kind, ErrorKind::PermissionDenied);
        assert!(e.message.contains("needs root"), "{}", e.message);

        let other = anyhow::anyhow!("something broke");
        assert_eq!(api_error(&other).kind, ErrorKind::Internal);
    }

    #[test]
    fn missing_namespaces_say_what_to_do() {
        let e = open_namespace("vswitch-test-no-such-ns").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NamespaceNotFound);
        assert!(e.message.contains("ip netns add"), "{}", e.message);
        let e = open_namespace("pid:4000000").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NamespaceNotFound);
        assert!(e.message.contains("no process 4000000"), "{}", e.message);
        let e = open_namespace("pid:x").unwrap_err();
        assert_eq!(
            (e.kind, e.field.as_deref()),
            (ErrorKind::BadRequest, Some("netns"))
        );
    }
}
