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

mod config;
mod counters;
mod neigh;
mod output;

#[cfg(test)]
mod tests;

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::fdb::{Fdb, FdbEntry, Learned, Location};
use crate::tunnel::{self, VXLAN_HEADER_LEN};
use crate::wire::{
    self, ArpOperation, ArpPacket, ETHERNET_HEADER_LEN, EtherType, EthernetFrame,
    ICMPV4_ECHO_REPLY, ICMPV4_ECHO_REQUEST, Icmpv4Packet, IpProtocol, Ipv4Packet, Ipv6Packet,
    MacAddr, Vni,
};

pub use config::{Gateway, NetworkConfig, PortConfig, SwitchConfig, SwitchError};
pub use counters::{Counters, DropCounters, DropReason, PeerStats, PortStats};
pub use neigh::NeighbourEntry;
pub use output::{Output, Transmit};

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
    stats: PortStats,
}

#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    vnis: Vec<Vni>,
    dynamic: bool,
    last_seen: Option<Instant>,
    stats: PeerStats,
}

#[derive(Debug, Clone)]
struct Network {
    config: NetworkConfig,
    header: [u8; VXLAN_HEADER_LEN],
    ports: Vec<PortId>,
    transmits: Vec<Transmit>,
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
    peer_by_addr: FxHashMap<SocketAddr, PeerId>,
    dynamic_peers: usize,
    fdb: Fdb,
    neighbours: Neighbours,
    counters: Counters,
    next_sweep: Option<Instant>,
}

const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(1);
const ARP_FRAME_LEN: usize = ETHERNET_HEADER_LEN + ArpPacket::<&[u8]>::LEN;

impl Switch {
    /// A switch with no networks, ports or peers.
    pub fn new(config: SwitchConfig) -> Self {
        let fdb = Fdb::new(config.fdb.clone());
        let neighbours = Neighbours::new(config.fdb.max_entries, config.fdb.aging);
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
        let transmits = self
            .peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
            .filter(|(_, p)| p.vnis.contains(&vni))
            .map(|(i, p)| Transmit {
                peer: PeerId(i as u32),
                addr: p.addr,
            })
            .collect();
        self.networks.insert(
            vni,
            Network {
                config,
                header: tunnel::encap_header(vni),
                ports: Vec::new(),
                transmits,
            },
        );
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
        if let Some(&id) = self.peer_by_addr.get(&addr) {
            let Some(peer) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
                return id;
            };
            if peer.dynamic {
                peer.dynamic = false;
                self.dynamic_peers -= 1;
            }
            if peer.vnis != vnis {
                peer.vnis = vnis;
                self.fdb.remove_peer(id);
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
        self.peer_by_addr.remove(&removed.addr);
        for vni in &removed.vnis {
            if let Some(net) = self.networks.get_mut(vni) {
                net.transmits.retain(|t| t.peer != peer);
            }
        }
        self.fdb.remove_peer(peer);
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
        self.peer_by_addr.get(&addr).copied()
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
            stats: PeerStats::default(),
        };
        match self.peers.get_mut(id.0 as usize) {
            Some(slot) => *slot = Some(peer),
            None => self.peers.push(Some(peer)),
        }
        if dynamic {
            self.dynamic_peers += 1;
        }
        self.peer_by_addr.insert(addr, id);
        self.rebuild_membership(id);
        id
    }

    /// Makes the networks' transmit lists agree with the peer's VNIs.
    fn rebuild_membership(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get(id.0 as usize).and_then(Option::as_ref) else {
            return;
        };
        for (vni, net) in &mut self.networks {
            let member = peer.vnis.contains(vni);
            let listed = net.transmits.iter().any(|t| t.peer == id);
            if member && !listed {
                net.transmits.push(Transmit {
                    peer: id,
                    addr: peer.addr,
                });
            } else if !member && listed {
                net.transmits.retain(|t| t.peer != id);
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
        self.counters.fdb_aged += self.fdb.expire(now) as u64;
        self.counters.neighbours_aged += self.neighbours.expire(now) as u64;
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

    // ---- the per-frame path ----

    /// Switches one frame read from a local port.
    pub fn handle_frame(&mut self, now: Instant, port: PortId, frame: &[u8], out: &mut Output) {
        out.clear();
        out.frame = 0..frame.len();
        let len = frame.len() as u64;
        let Some(p) = self.ports.get_mut(port.0 as usize).and_then(Option::as_mut) else {
            self.counters.drops.bump(DropReason::UnknownPort);
            out.dropped = Some(DropReason::UnknownPort);
            return;
        };
        p.stats.rx_frames += 1;
        p.stats.rx_bytes += len;
        self.counters.port_rx_frames += 1;
        self.counters.port_rx_bytes += len;
        match self.frame_from_port(now, port, frame, out) {
            Ok(()) => self.count_output(len, out),
            Err(reason) => {
                self.drop_output(reason, out);
                if let Some(p) = self.ports.get_mut(port.0 as usize).and_then(Option::as_mut) {
                    p.stats.drops += 1;
                }
            }
        }
    }

    /// Switches one VXLAN datagram (the UDP payload) received from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut Output,
    ) {
        out.clear();
        let len = datagram.len() as u64;
        self.counters.peer_rx_datagrams += 1;
        self.counters.peer_rx_bytes += len;
        let mut peer = self.peer_by_addr.get(&from).copied();
        if let Some(id) = peer
            && let Some(p) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut)
        {
            p.stats.rx_datagrams += 1;
            p.stats.rx_bytes += len;
        }
        let result = self.datagram_from_peer(now, from, &mut peer, datagram, out);
        match result {
            Ok(()) => {
                let inner_len = out.frame.len() as u64;
                self.count_output(inner_len, out);
            }
            Err(reason) => {
                self.drop_output(reason, out);
                if let Some(id) = peer
                    && let Some(p) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut)
                {
                    p.stats.drops += 1;
                }
            }
        }
    }

    fn drop_output(&mut self, reason: DropReason, out: &mut Output) {
        out.ports.clear();
        out.transmits.clear();
        out.reply_port = None;
        out.reply.clear();
        out.dropped = Some(reason);
        self.counters.drops.bump(reason);
    }

    fn count_output(&mut self, frame_len: u64, out: &Output) {
        for &port in &out.ports {
            if let Some(p) = self.ports.get_mut(port.0 as usize).and_then(Option::as_mut) {
                p.stats.tx_frames += 1;
                p.stats.tx_bytes += frame_len;
            }
        }
        let n = out.ports.len() as u64;
        self.counters.port_tx_frames += n;
        self.counters.port_tx_bytes += n * frame_len;
        let datagram_len = frame_len + VXLAN_HEADER_LEN as u64;
        for t in &out.transmits {
            if let Some(p) = self
                .peers
                .get_mut(t.peer.0 as usize)
                .and_then(Option::as_mut)
            {
                p.stats.tx_datagrams += 1;
                p.stats.tx_bytes += datagram_len;
            }
        }
        let n = out.transmits.len() as u64;
        self.counters.peer_tx_datagrams += n;
        self.counters.peer_tx_bytes += n * datagram_len;
        if let Some((port, reply)) = out.reply() {
            let reply_len = reply.len() as u64;
            if let Some(p) = self.ports.get_mut(port.0 as usize).and_then(Option::as_mut) {
                p.stats.tx_frames += 1;
                p.stats.tx_bytes += reply_len;
            }
            self.counters.port_tx_frames += 1;
            self.counters.port_tx_bytes += reply_len;
        }
    }

    fn learn(
        &mut self,
        now: Instant,
        vni: Vni,
        mac: MacAddr,
        at: Location,
    ) -> Result<(), DropReason> {
        match self.fdb.learn(now, vni, mac, at) {
            Learned::New => {
                self.counters.fdb_learned += 1;
                self.schedule_sweep(now);
            }
            Learned::Moved { .. } => self.counters.fdb_moves += 1,
            Learned::Refreshed | Learned::Static => {}
            Learned::Full => return Err(DropReason::FdbFull),
        }
        Ok(())
    }

    fn snoop_arp(&mut self, now: Instant, vni: Vni, arp: &ArpPacket<&[u8]>) {
        let ip = arp.sender_ip();
        let mac = arp.sender_mac();
        if ip.is_unspecified() || !mac.is_unicast() || mac.is_zero() {
            return;
        }
        if self.neighbours.learn(now, vni, ip, mac) {
            self.schedule_sweep(now);
        }
    }

    fn frame_from_port(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &[u8],
        out: &mut Output,
    ) -> Result<(), DropReason> {
        let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Runt)?;
        let Some(p) = self.port_ref(port) else {
            return Err(DropReason::UnknownPort);
        };
        let vni = p.config.vni;
        let src = eth.src_addr();
        let dst = eth.dst_addr();
        if p.config.port_security && src != p.config.mac {
            return Err(DropReason::SpoofedSource);
        }
        if !src.is_unicast() || src.is_zero() {
            return Err(DropReason::Malformed);
        }
        let Some(net) = self.networks.get(&vni) else {
            return Err(DropReason::UnknownVni);
        };
        if frame.len() > eth.header_len() + usize::from(net.config.mtu) {
            return Err(DropReason::OverMtu);
        }
        let gateway = net.config.gateway;
        let ethertype = eth.ethertype();
        let payload = eth.payload();
        let arp = if ethertype == EtherType::ARP {
            Some(ArpPacket::new_checked(payload).map_err(|_| DropReason::Malformed)?)
        } else {
            None
        };
        if p.config.port_security {
            check_source(p, ethertype, payload, arp.as_ref())?;
        }
        self.learn(now, vni, src, Location::Port(port))?;

        if let Some(arp) = arp {
            self.snoop_arp(now, vni, &arp);
            if arp.operation() == ArpOperation::Request && !eth.is_tagged() {
                let target = arp.target_ip();
                let answer = match gateway {
                    Some(gw) if gw.ip == target => {
                        self.counters.gateway_arp_replies += 1;
                        Some(gw.mac)
                    }
                    _ if self.config.arp_suppression => self
                        .neighbours
                        .lookup(vni, target)
                        .filter(|&mac| mac != arp.sender_mac() && mac != src)
                        .inspect(|_| self.counters.arp_suppressed += 1),
                    _ => None,
                };
                if let Some(mac) = answer {
                    write_arp_reply(&mut out.reply, src, &arp, mac);
                    out.reply_port = Some(port);
                    return Ok(());
                }
            }
        }

        if let Some(gw) = gateway
            && dst == gw.mac
        {
            if write_echo_reply(&mut out.reply, &eth, gw)? {
                self.counters.gateway_echo_replies += 1;
                out.reply_port = Some(port);
                return Ok(());
            }
            return Err(DropReason::Gateway);
        }

        let Some(net) = self.networks.get(&vni) else {
            return Err(DropReason::UnknownVni);
        };
        let known = if dst.is_unicast() {
            self.fdb.lookup(vni, dst)
        } else {
            None
        };
        match known {
            Some(Location::Port(to)) if to == port => return Err(DropReason::Hairpin),
            Some(Location::Port(to)) => out.ports.push(to),
            Some(Location::Peer(to)) => {
                let Some(peer) = self.peers.get(to.0 as usize).and_then(Option::as_ref) else {
                    return Err(DropReason::UnknownPeer);
                };
                out.transmits.push(Transmit {
                    peer: to,
                    addr: peer.addr,
                });
            }
            None => {
                out.ports
                    .extend(net.ports.iter().copied().filter(|&p| p != port));
                out.transmits.extend_from_slice(&net.transmits);
                if out.ports.is_empty() && out.transmits.is_empty() {
                    return Err(DropReason::NoMembers);
                }
                self.counters.flooded += 1;
            }
        }
        if !out.transmits.is_empty() {
            out.header = net.header;
            out.flow_hash = wire::flow_hash(frame);
        }
        Ok(())
    }

    fn datagram_from_peer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        peer: &mut Option<PeerId>,
        datagram: &[u8],
        out: &mut Output,
    ) -> Result<(), DropReason> {
        if peer.is_none() && !self.config.accept_unknown_peers {
            return Err(DropReason::UnknownPeer);
        }
        let (vni, range) = tunnel::decap_range(datagram)?;
        out.frame = range.clone();
        let Some(net) = self.networks.get(&vni) else {
            return Err(DropReason::UnknownVni);
        };
        let gateway = net.config.gateway;
        let id = match *peer {
            Some(id) => {
                let Some(p) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
                    return Err(DropReason::UnknownPeer);
                };
                if p.dynamic {
                    p.last_seen = Some(now);
                }
                if !p.vnis.contains(&vni) {
                    if !p.dynamic {
                        return Err(DropReason::NotMember);
                    }
                    p.vnis.push(vni);
                    p.vnis.sort_unstable();
                    self.rebuild_membership(id);
                }
                id
            }
            None => {
                if self.dynamic_peers >= self.config.max_dynamic_peers {
                    return Err(DropReason::UnknownPeer);
                }
                let id = self.insert_peer(from, vec![vni], true, Some(now));
                self.counters.dynamic_peers_created += 1;
                self.schedule_sweep(now);
                if let Some(p) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) {
                    p.stats.rx_datagrams += 1;
                    p.stats.rx_bytes += datagram.len() as u64;
                }
                *peer = Some(id);
                id
            }
        };

        let inner = &datagram[range];
        let eth = EthernetFrame::new_checked(inner).map_err(|_| DropReason::Runt)?;
        let src = eth.src_addr();
        let dst = eth.dst_addr();
        if !src.is_unicast() || src.is_zero() {
            return Err(DropReason::Malformed);
        }
        let arp = if eth.ethertype() == EtherType::ARP {
            Some(ArpPacket::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?)
        } else {
            None
        };
        self.learn(now, vni, src, Location::Peer(id))?;
        if let Some(arp) = arp {
            self.snoop_arp(now, vni, &arp);
        }
        if gateway.is_some_and(|gw| gw.mac == dst) {
            return Err(DropReason::Gateway);
        }
        let known = if dst.is_unicast() {
            self.fdb.lookup(vni, dst)
        } else {
            None
        };
        match known {
            Some(Location::Port(to)) => out.ports.push(to),
            Some(Location::Peer(_)) => return Err(DropReason::NotLocal),
            None => {
                let Some(net) = self.networks.get(&vni) else {
                    return Err(DropReason::UnknownVni);
                };
                out.ports.extend_from_slice(&net.ports);
                if out.ports.is_empty() {
                    return Err(DropReason::NoMembers);
                }
                self.counters.flooded += 1;
            }
        }
        Ok(())
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

/// Port security on addresses: IPv4 source and ARP sender must be the port's (or unspecified),
/// IPv6 source the port's, link-local or unspecified. Each family is checked only when the port
/// has addresses of that family; the ARP sender MAC must always be the port's.
fn check_source(
    port: &Port,
    ethertype: EtherType,
    payload: &[u8],
    arp: Option<&ArpPacket<&[u8]>>,
) -> Result<(), DropReason> {
    let v4_ok =
        |ip: Ipv4Addr| port.ipv4.is_empty() || ip.is_unspecified() || port.ipv4.contains(&ip);
    match ethertype {
        EtherType::ARP => {
            if let Some(arp) = arp
                && (arp.sender_mac() != port.config.mac || !v4_ok(arp.sender_ip()))
            {
                return Err(DropReason::SpoofedSource);
            }
        }
        EtherType::IPV4 => {
            let ip = Ipv4Packet::new_checked(payload).map_err(|_| DropReason::Malformed)?;
            if !v4_ok(ip.src_addr()) {
                return Err(DropReason::SpoofedSource);
            }
        }
        EtherType::IPV6 => {
            let ip = Ipv6Packet::new_checked(payload).map_err(|_| DropReason::Malformed)?;
            let src = ip.src_addr();
            if !port.ipv6.is_empty()
                && !src.is_unspecified()
                && !src.is_unicast_link_local()
                && !port.ipv6.contains(&src)
            {
                return Err(DropReason::SpoofedSource);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Writes into `buf` the ARP reply to `request` (sent by `requester`) saying the target IP is at
/// `mac`.
fn write_arp_reply(
    buf: &mut Vec<u8>,
    requester: MacAddr,
    request: &ArpPacket<&[u8]>,
    mac: MacAddr,
) {
    buf.clear();
    buf.resize(ARP_FRAME_LEN, 0);
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_dst_addr(requester);
    eth.set_src_addr(mac);
    eth.set_outer_ethertype(EtherType::ARP);
    let mut arp = ArpPacket::new_unchecked(eth.payload_mut());
    arp.fill_header();
    arp.set_operation(ArpOperation::Reply);
    arp.set_sender_mac(mac);
    arp.set_sender_ip(request.target_ip());
    arp.set_target_mac(request.sender_mac());
    arp.set_target_ip(request.sender_ip());
}

/// If `eth` is an ICMP echo request to the gateway, writes the echo reply into `buf` and returns
/// true; false if it is something else for the gateway; an error if it is malformed.
fn write_echo_reply(
    buf: &mut Vec<u8>,
    eth: &EthernetFrame<&[u8]>,
    gw: Gateway,
) -> Result<bool, DropReason> {
    if eth.is_tagged() || eth.ethertype() != EtherType::IPV4 {
        return Ok(false);
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
    if !ip.verify_checksum() {
        return Err(DropReason::Malformed);
    }
    if ip.dst_addr() != gw.ip || ip.protocol() != IpProtocol::ICMP || ip.is_fragment() {
        return Ok(false);
    }
    let icmp = Icmpv4Packet::new_checked(ip.payload()).map_err(|_| DropReason::Malformed)?;
    if icmp.msg_type() != ICMPV4_ECHO_REQUEST || icmp.code() != 0 {
        return Ok(false);
    }
    if !icmp.verify_checksum() {
        return Err(DropReason::Malformed);
    }
    let requester = eth.src_addr();
    let requester_ip = ip.src_addr();
    let len = ETHERNET_HEADER_LEN + usize::from(ip.total_len());
    let Some(request) = eth.clone().into_inner().get(..len) else {
        return Err(DropReason::Malformed);
    };
    buf.clear();
    buf.extend_from_slice(request);
    let mut reply = EthernetFrame::new_unchecked(&mut buf[..]);
    reply.set_dst_addr(requester);
    reply.set_src_addr(gw.mac);
    let mut ip = Ipv4Packet::new_unchecked(reply.payload_mut());
    ip.set_src_addr(gw.ip);
    ip.set_dst_addr(requester_ip);
    ip.set_ttl(64);
    ip.fill_checksum();
    let mut icmp = Icmpv4Packet::new_unchecked(ip.payload_mut());
    icmp.set_msg_type(ICMPV4_ECHO_REPLY);
    icmp.fill_checksum();
    Ok(true)
}
