//! The sans-IO core: turns one input into actions, with no syscalls, clock reads or locks.
//!
//! The switch owns the networks (by VNI), the local ports, the peers (remote VTEPs), the FDB and
//! the neighbour table. The caller drives it:
//!
//! 1. [`Switch::handle_frame`] for every frame read from a port, [`Switch::handle_datagram`] for
//!    every VXLAN datagram received from the underlay. Each fills an [`Output`] the caller owns
//!    and reuses: write the frame to [`Output::ports`], send [`Output::vxlan_header`] + frame to
//!    [`Output::transmits`], write [`Output::reply`] to its port.
//! 2. [`Switch::poll_timeout`] after any input or configuration change says when to call
//!    [`Switch::handle_timeout`] next; that call ages the tables.
//!
//! Ports and peers are small `Copy` handles into tables; ids of removed ports and peers are reused.
//! Time is an [`Instant`] passed in: tests run on a virtual clock.

mod bucket;
mod config;
mod counters;
mod mtu;
mod neigh;
mod output;
mod path;
mod pinned;
mod policy;
mod replica;
mod route;
mod sealing;
mod security;
mod services;

#[cfg(test)]
mod tests;

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::fdb::{Fdb, FdbEntry, Location};
use crate::tunnel::{self, VXLAN_HEADER_LEN};
use crate::wire::Vni;

pub use bucket::TokenBucket;
pub use config::{Gateway, NetworkConfig, PortConfig, SwitchConfig, SwitchError};
pub use counters::{Counters, DropCounters, DropReason, PeerStats, PortStats};
pub use mtu::{TOO_BIG_BURST, TOO_BIG_RATE};
pub use neigh::NeighbourEntry;
pub use output::{Output, Transmit};
pub use pinned::{PROBE, Pinned, is_probe, probe_datagram};
pub use policy::{DeniedFlow, PolicyInstall};
pub use replica::{Site, Update};
pub use route::Route;
pub use sealing::{HELD_BYTES, HELD_FRAMES, SessionInstall};
pub use services::DNS_PORT;

use neigh::Neighbours;

/// Handle of a local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub(crate) u32);

impl PortId {
    /// The handle with this raw number (as printed by `Display` and [`PortId::get`]).
    pub const fn from_raw(raw: u32) -> Self {
        PortId(raw)
    }

    /// The raw number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Handle of a peer (a remote VTEP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub(crate) u32);

impl PeerId {
    /// The handle with this raw number (as printed by `Display` and [`PeerId::get`]).
    pub const fn from_raw(raw: u32) -> Self {
        PeerId(raw)
    }

    /// The raw number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A port, as listed for status.
#[derive(Debug, Clone, Copy)]
pub struct PortInfo<'a> {
    /// Its handle.
    pub id: PortId,
    /// Its configuration.
    pub config: &'a PortConfig,
    /// Its counters.
    pub stats: &'a PortStats,
}

/// A peer, as listed for status.
#[derive(Debug, Clone, Copy)]
pub struct PeerInfo<'a> {
    /// Its handle.
    pub id: PeerId,
    /// Its underlay address.
    pub addr: SocketAddr,
    /// The VNIs it is a member of.
    pub vnis: &'a [Vni],
    /// True when created by `accept_unknown_peers` rather than configured.
    pub dynamic: bool,
    /// Its counters.
    pub stats: &'a PeerStats,
}

#[derive(Debug, Clone)]
struct Port {
    config: PortConfig,
    ipv4: Vec<Ipv4Addr>,
    ipv6: Vec<Ipv6Addr>,
    /// The link-local address the interface forms from its MAC.
    link_local: Ipv6Addr,
    /// "Too big" errors the port may still draw.
    too_big: TokenBucket,
    /// Floods and ARP requests the port may still send.
    floods: TokenBucket,
    stats: PortStats,
}

#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    vnis: Vec<Vni>,
    dynamic: bool,
    last_seen: Option<Instant>,
    /// "Too big" errors the peer may still draw.
    too_big: TokenBucket,
    stats: PeerStats,
    sealing: sealing::PeerSealing,
}

#[derive(Debug, Clone)]
struct Network {
    config: NetworkConfig,
    header: [u8; VXLAN_HEADER_LEN],
    ports: Vec<PortId>,
    /// Configured peers of the network: every flood goes to each.
    transmits: Vec<Transmit>,
    /// Peers that showed up on their own: floods go to the first `flood_dynamic_peers`.
    dynamic: Vec<Transmit>,
}

/// The switch. See the module documentation for how to drive it.
#[derive(Debug, Clone)]
pub struct Switch {
    config: SwitchConfig,
    networks: FxHashMap<Vni, Network>,
    ports: Vec<Option<Port>>,
    free_ports: Vec<u32>,
    peers: Vec<Option<Peer>>,
    free_peers: Vec<u32>,
    /// Peers by underlay IP: a VTEP sends from any source port (a hash of the inner flow).
    peer_by_addr: FxHashMap<IpAddr, PeerId>,
    dynamic_peers: usize,
    fdb: Fdb,
    neighbours: Neighbours,
    counters: Counters,
    next_sweep: Option<Instant>,
    replicated: bool,
    updates: Vec<Update>,
    sessions: sealing::Sessions,
    handshakes_wanted: Vec<SocketAddr>,
    router: route::Router,
    /// DNS queries to gateways go to the caller ([`services`]).
    gateway_dns: bool,
    enforcement: policy::Enforcement,
}

const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(1);

impl Switch {
    /// A switch with no networks, ports or peers.
    pub fn new(config: SwitchConfig) -> Self {
        let fdb = Fdb::new(config.fdb.clone());
        let neighbours = Neighbours::new(&config.fdb);
        Switch {
            config,
            networks: FxHashMap::default(),
            ports: Vec::new(),
            free_ports: Vec::new(),
            peers: Vec::new(),
            free_peers: Vec::new(),
            peer_by_addr: FxHashMap::default(),
            dynamic_peers: 0,
            fdb,
            neighbours,
            counters: Counters::default(),
            next_sweep: None,
            replicated: false,
            updates: Vec::new(),
            sessions: sealing::Sessions::default(),
            handshakes_wanted: Vec::new(),
            router: route::Router::default(),
            gateway_dns: false,
            enforcement: policy::Enforcement::default(),
        }
    }

    /// The configuration the switch was built with.
    pub fn config(&self) -> &SwitchConfig {
        &self.config
    }

    // ---- networks ----

    /// Adds a network, or updates the MTU and gateway of the network with that VNI.
    pub fn add_network(&mut self, config: NetworkConfig) -> Result<(), SwitchError> {
        if config.mtu < NetworkConfig::MIN_MTU {
            return Err(SwitchError::InvalidMtu { mtu: config.mtu });
        }
        if let Some(net) = self.networks.get_mut(&config.vni) {
            net.config = config;
            return Ok(());
        }
        let vni = config.vni;
        self.networks.insert(
            vni,
            Network {
                config,
                header: tunnel::encap_header(vni),
                ports: Vec::new(),
                transmits: Vec::new(),
                dynamic: Vec::new(),
            },
        );
        for id in 0..self.peers.len() {
            self.rebuild_membership(PeerId(id as u32));
        }
        Ok(())
    }

    /// Removes a network with its ports, FDB entries and neighbours; returns the removed ports.
    pub fn remove_network(&mut self, vni: Vni) -> Vec<PortId> {
        let Some(net) = self.networks.get(&vni) else {
            return Vec::new();
        };
        let ports = net.ports.clone();
        for &port in &ports {
            self.remove_port(port);
        }
        self.networks.remove(&vni);
        self.router.remove_vni(vni);
        self.fdb.remove_vni(vni);
        self.neighbours.remove_vni(vni);
        ports
    }

    /// The configuration of one network.
    pub fn network(&self, vni: Vni) -> Option<&NetworkConfig> {
        self.networks.get(&vni).map(|n| &n.config)
    }

    /// Every network, in no particular order.
    pub fn networks(&self) -> impl Iterator<Item = &NetworkConfig> + '_ {
        self.networks.values().map(|n| &n.config)
    }

    /// The local ports of a network.
    pub fn network_ports(&self, vni: Vni) -> &[PortId] {
        self.networks.get(&vni).map_or(&[], |n| &n.ports)
    }

    // ---- ports ----

    /// Adds a port to an existing network. Its MAC becomes a static FDB entry and its IPv4
    /// addresses static neighbours.
    pub fn add_port(&mut self, config: PortConfig) -> Result<PortId, SwitchError> {
        let vni = config.vni;
        let Some(net) = self.networks.get(&vni) else {
            return Err(SwitchError::UnknownVni(vni));
        };
        let mac = config.mac;
        if !mac.is_unicast() || mac.is_zero() {
            return Err(SwitchError::InvalidMac(mac));
        }
        if net.config.gateway.is_some_and(|gw| gw.mac == mac) {
            return Err(SwitchError::GatewayMac { vni, mac });
        }
        self.insert_port(config)
    }

    /// Adds a port, whatever its MAC is (the host port has the gateway's).
    fn insert_port(&mut self, config: PortConfig) -> Result<PortId, SwitchError> {
        let vni = config.vni;
        let mac = config.mac;
        let Some(net) = self.networks.get(&vni) else {
            return Err(SwitchError::UnknownVni(vni));
        };
        if !mac.is_unicast() || mac.is_zero() {
            return Err(SwitchError::InvalidMac(mac));
        }
        if let Some(&port) = net
            .ports
            .iter()
            .find(|&&p| self.port_ref(p).is_some_and(|p| p.config.mac == mac))
        {
            return Err(SwitchError::MacInUse { vni, mac, port });
        }
        let id = match self.free_ports.pop() {
            Some(raw) => PortId(raw),
            None => PortId(self.ports.len() as u32),
        };
        let ipv4 = config
            .ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect::<Vec<_>>();
        let ipv6 = config
            .ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(v6) => Some(*v6),
                IpAddr::V4(_) => None,
            })
            .collect();
        for &ip in &ipv4 {
            self.neighbours.insert_static(vni, ip, mac);
        }
        let _ = self.fdb.insert_static(vni, mac, Location::Port(id));
        if let Some(net) = self.networks.get_mut(&vni) {
            net.ports.push(id);
        }
        let port = Port {
            config,
            ipv4,
            ipv6,
            link_local: mac.link_local(),
            too_big: TokenBucket::new(mtu::TOO_BIG_RATE, mtu::TOO_BIG_BURST),
            floods: TokenBucket::new(self.config.flood_rate, self.config.flood_burst),
            stats: PortStats::default(),
        };
        match self.ports.get_mut(id.0 as usize) {
            Some(slot) => *slot = Some(port),
            None => self.ports.push(Some(port)),
        }
        Ok(id)
    }

    /// Removes a port with its FDB entries and static neighbours; false if there was none.
    pub fn remove_port(&mut self, port: PortId) -> bool {
        let Some(removed) = self.ports.get_mut(port.0 as usize).and_then(Option::take) else {
            return false;
        };
        let vni = removed.config.vni;
        if let Some(net) = self.networks.get_mut(&vni) {
            net.ports.retain(|&p| p != port);
        }
        self.fdb.remove_port(port);
        self.router.remove_port(port);
        self.forget_port_qos(port);
        self.neighbours.remove_location(Location::Port(port));
        for &ip in &removed.ipv4 {
            self.neighbours.remove_static(vni, ip, removed.config.mac);
        }
        self.free_ports.push(port.0);
        true
    }

    /// One port.
    pub fn port(&self, port: PortId) -> Option<PortInfo<'_>> {
        self.port_ref(port).map(|p| PortInfo {
            id: port,
            config: &p.config,
            stats: &p.stats,
        })
    }

    /// Every port, by id.
    pub fn ports(&self) -> impl Iterator<Item = PortInfo<'_>> + '_ {
        self.ports.iter().enumerate().filter_map(|(i, p)| {
            p.as_ref().map(|p| PortInfo {
                id: PortId(i as u32),
                config: &p.config,
                stats: &p.stats,
            })
        })
    }

    /// Counters of one port.
    pub fn port_stats(&self, port: PortId) -> Option<&PortStats> {
        self.port_ref(port).map(|p| &p.stats)
    }

    fn port_ref(&self, port: PortId) -> Option<&Port> {
        self.ports.get(port.0 as usize).and_then(Option::as_ref)
    }

    // ---- peers ----

    /// Adds a peer at `addr`, member of `vnis`; for an existing address, replaces its VNIs (and
    /// makes a dynamic peer configured). Changing the VNIs forgets the peer's learned entries.
    pub fn add_peer(&mut self, addr: SocketAddr, vnis: &[Vni]) -> PeerId {
        let mut vnis = vnis.to_vec();
        vnis.sort_unstable();
        vnis.dedup();
        if let Some(&id) = self.peer_by_addr.get(&addr.ip()) {
            let Some(peer) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
                return id;
            };
            let was_dynamic = peer.dynamic;
            if was_dynamic {
                peer.dynamic = false;
                self.dynamic_peers -= 1;
            }
            if peer.vnis != vnis {
                peer.vnis = vnis;
                self.fdb.remove_peer(id);
                self.neighbours.remove_location(Location::Peer(id));
                self.rebuild_membership(id);
            } else if was_dynamic {
                self.rebuild_membership(id);
            }
            return id;
        }
        self.insert_peer(addr, vnis, false, None)
    }

    /// Removes a peer and forgets what was learned from it; false if there was none.
    pub fn remove_peer(&mut self, peer: PeerId) -> bool {
        let Some(removed) = self.peers.get_mut(peer.0 as usize).and_then(Option::take) else {
            return false;
        };
        if removed.dynamic {
            self.dynamic_peers -= 1;
        }
        self.peer_by_addr.remove(&removed.addr.ip());
        for vni in &removed.vnis {
            if let Some(net) = self.networks.get_mut(vni) {
                net.transmits.retain(|t| t.peer != peer);
                net.dynamic.retain(|t| t.peer != peer);
            }
        }
        self.fdb.remove_peer(peer);
        self.neighbours.remove_location(Location::Peer(peer));
        self.sessions.remove_peer(peer);
        self.free_peers.push(peer.0);
        true
    }

    /// One peer.
    pub fn peer(&self, peer: PeerId) -> Option<PeerInfo<'_>> {
        self.peers
            .get(peer.0 as usize)
            .and_then(Option::as_ref)
            .map(|p| peer_info(peer, p))
    }

    /// Counters of one peer.
    pub fn peer_stats(&self, peer: PeerId) -> Option<&PeerStats> {
        self.peers
            .get(peer.0 as usize)
            .and_then(Option::as_ref)
            .map(|p| &p.stats)
    }

    /// The peer at an underlay address.
    pub fn peer_id(&self, addr: SocketAddr) -> Option<PeerId> {
        self.peer_by_addr.get(&addr.ip()).copied()
    }

    /// Every peer, by id.
    pub fn peers(&self) -> impl Iterator<Item = PeerInfo<'_>> + '_ {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| peer_info(PeerId(i as u32), p)))
    }

    fn insert_peer(
        &mut self,
        addr: SocketAddr,
        vnis: Vec<Vni>,
        dynamic: bool,
        now: Option<Instant>,
    ) -> PeerId {
        let id = match self.free_peers.pop() {
            Some(raw) => PeerId(raw),
            None => PeerId(self.peers.len() as u32),
        };
        let peer = Peer {
            addr,
            vnis,
            dynamic,
            last_seen: now,
            too_big: TokenBucket::new(mtu::TOO_BIG_RATE, mtu::TOO_BIG_BURST),
            stats: PeerStats::default(),
            sealing: sealing::PeerSealing::default(),
        };
        match self.peers.get_mut(id.0 as usize) {
            Some(slot) => *slot = Some(peer),
            None => self.peers.push(Some(peer)),
        }
        if dynamic {
            self.dynamic_peers += 1;
        }
        self.peer_by_addr.insert(addr.ip(), id);
        self.rebuild_membership(id);
        id
    }

    /// Makes the networks' transmit lists agree with the peer's VNIs and kind.
    fn rebuild_membership(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get(id.0 as usize).and_then(Option::as_ref) else {
            return;
        };
        let transmit = Transmit {
            peer: id,
            addr: peer.addr,
        };
        for (vni, net) in &mut self.networks {
            let (list, other) = if peer.dynamic {
                (&mut net.dynamic, &mut net.transmits)
            } else {
                (&mut net.transmits, &mut net.dynamic)
            };
            other.retain(|t| t.peer != id);
            let member = peer.vnis.contains(vni);
            let listed = list.iter().any(|t| t.peer == id);
            if member && !listed {
                list.push(transmit);
            } else if !member && listed {
                list.retain(|t| t.peer != id);
            }
        }
    }

    // ---- tables and counters ----

    /// The forwarding database.
    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }

    /// Every FDB entry, with ages relative to `now`.
    pub fn fdb_entries(&self, now: Instant) -> impl Iterator<Item = FdbEntry> + '_ {
        self.fdb.iter(now)
    }

    /// Every neighbour (IPv4 to MAC), with ages relative to `now`.
    pub fn neighbours(&self, now: Instant) -> impl Iterator<Item = NeighbourEntry> + '_ {
        self.neighbours.iter(now)
    }

    /// Switch-wide counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    // ---- timers ----

    /// When [`handle_timeout`](Switch::handle_timeout) should next be called; `None` while
    /// nothing can age.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Ages the FDB, the neighbour table and dynamic peers, if their sweep is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|due| now < due) {
            return;
        }
        let mut forgotten = Vec::new();
        let publish = self.replicated;
        self.counters.fdb_aged += self.fdb.expire_with(now, |vni, mac| {
            if publish {
                forgotten.push(Update::Forgot { vni, mac });
            }
        }) as u64;
        self.counters.neighbours_aged += self.neighbours.expire_with(now, |vni, ip| {
            if publish {
                forgotten.push(Update::NeighbourForgot { vni, ip });
            }
        }) as u64;
        self.updates.append(&mut forgotten);
        if self.dynamic_peers > 0 {
            let aging = self.config.fdb.aging;
            let stale: Vec<PeerId> = self
                .peers
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.as_ref().map(|p| (PeerId(i as u32), p)))
                .filter(|(_, p)| {
                    p.dynamic
                        && p.last_seen
                            .is_some_and(|seen| now.saturating_duration_since(seen) >= aging)
                })
                .map(|(id, _)| id)
                .collect();
            for id in stale {
                if let Some(addr) = self.peer(id).map(|p| p.addr) {
                    self.publish(Update::PeerLost { addr });
                }
                self.remove_peer(id);
            }
        }
        self.next_sweep = if self.fdb.learned_len() > 0
            || self.neighbours.learned_len() > 0
            || self.dynamic_peers > 0
        {
            Some(now + self.sweep_interval())
        } else {
            None
        };
    }

    fn sweep_interval(&self) -> Duration {
        self.config
            .fdb
            .aging
            .clamp(MIN_SWEEP_INTERVAL, MAX_SWEEP_INTERVAL)
    }

    fn schedule_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + self.sweep_interval());
        }
    }
}

fn peer_info(id: PeerId, p: &Peer) -> PeerInfo<'_> {
    PeerInfo {
        id,
        addr: p.addr,
        vnis: &p.vnis,
        dynamic: p.dynamic,
        stats: &p.stats,
    }
}
