//! Replicas: the same switch run once per datapath worker, each fed its own share of the
//! traffic. Control-plane changes reach every replica in the same order, so ports and
//! configured peers agree by construction; what a replica learns from traffic (MACs,
//! neighbours, peers that appeared on their own) it publishes as [`Update`]s, and its siblings
//! [`apply`](Switch::apply) them as mirrored entries that follow the publisher: they never age
//! on their own and go when the publisher forgets them.

use core::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use crate::fdb::{Forgotten, Location};
use crate::wire::{MacAddr, Vni};

use super::{PortId, Switch};

/// Where a MAC is, in terms every replica resolves alike: peers by address, since peers that
/// appear on their own get different ids on different replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// A local port.
    Port(PortId),
    /// The peer at this underlay address.
    Peer(SocketAddr),
}

/// Something one replica learned or forgot that its siblings should know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// A MAC was learned, or moved.
    Learned {
        /// The VNI.
        vni: Vni,
        /// The MAC address.
        mac: MacAddr,
        /// Where it is now.
        site: Site,
    },
    /// A learned MAC aged out.
    Forgot {
        /// The VNI.
        vni: Vni,
        /// The MAC address.
        mac: MacAddr,
    },
    /// An IPv4 neighbour was learned from ARP, or changed MAC.
    Neighbour {
        /// The VNI.
        vni: Vni,
        /// The address.
        ip: Ipv4Addr,
        /// Its MAC.
        mac: MacAddr,
    },
    /// A learned neighbour aged out.
    NeighbourForgot {
        /// The VNI.
        vni: Vni,
        /// The address.
        ip: Ipv4Addr,
    },
    /// A peer that is not configured appeared (or joined another VNI).
    PeerFound {
        /// Its VXLAN address.
        addr: SocketAddr,
        /// The VNI it sent on.
        vni: Vni,
    },
    /// Such a peer went quiet and was forgotten.
    PeerLost {
        /// Its VXLAN address.
        addr: SocketAddr,
    },
    /// The peer's first datagram on a session opened: every replica may seal with it now.
    SessionConfirmed {
        /// This node's index of the session.
        local_index: u32,
    },
}

impl Switch {
    /// Makes this switch one of several replicas: from now on it collects [`Update`]s for
    /// [`take_updates`](Switch::take_updates). Off by default.
    pub fn set_replicated(&mut self, replicated: bool) {
        self.replicated = replicated;
        if !replicated {
            self.updates.clear();
        }
    }

    /// True when updates were published since the last [`take_updates`](Switch::take_updates).
    pub fn has_updates(&self) -> bool {
        !self.updates.is_empty()
    }

    /// Moves the updates published so far to the end of `into`.
    pub fn take_updates(&mut self, into: &mut Vec<Update>) {
        into.append(&mut self.updates);
    }

    /// Applies an update a sibling published. Updates naming a port or peer this replica does
    /// not have (it was removed meanwhile) are ignored. An update saying a sibling forgot
    /// something this replica still sees itself is answered with a fresh announcement.
    pub fn apply(&mut self, now: Instant, update: &Update) {
        match *update {
            Update::Learned { vni, mac, site } => {
                let location = match site {
                    Site::Port(port) => match self.port_ref(port) {
                        Some(p) if p.config.vni == vni => Location::Port(port),
                        _ => return,
                    },
                    Site::Peer(addr) => match self.peer_id(addr) {
                        Some(peer) => Location::Peer(peer),
                        None => return,
                    },
                };
                if self.fdb.mirror(now, vni, mac, location) {
                    self.schedule_sweep(now);
                }
            }
            Update::Forgot { vni, mac } => {
                if let Forgotten::Kept(location) = self.fdb.forget_mirrored(vni, mac) {
                    self.publish_learned(vni, mac, location);
                }
            }
            Update::Neighbour { vni, ip, mac } => {
                if self.neighbours.mirror(now, vni, ip, mac) {
                    self.schedule_sweep(now);
                }
            }
            Update::NeighbourForgot { vni, ip } => {
                if let Some(mac) = self.neighbours.forget_mirrored(vni, ip) {
                    self.publish(Update::Neighbour { vni, ip, mac });
                }
            }
            Update::PeerFound { addr, vni } => {
                if !self.networks.contains_key(&vni) {
                    return;
                }
                match self.peer_id(addr) {
                    Some(id) => {
                        let Some(p) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut)
                        else {
                            return;
                        };
                        if p.dynamic && !p.vnis.contains(&vni) {
                            p.vnis.push(vni);
                            p.vnis.sort_unstable();
                            self.rebuild_membership(id);
                        }
                    }
                    None if self.dynamic_peers < self.config.max_dynamic_peers => {
                        // No last-seen time: a mirrored peer does not age here.
                        self.insert_peer(addr, vec![vni], true, None);
                        self.schedule_sweep(now);
                    }
                    None => {}
                }
            }
            Update::SessionConfirmed { local_index } => self.confirm_session(local_index),
            Update::PeerLost { addr } => {
                let Some(id) = self.peer_id(addr) else { return };
                let Some(p) = self.peers.get(id.0 as usize).and_then(Option::as_ref) else {
                    return;
                };
                if !p.dynamic {
                    return;
                }
                if p.last_seen.is_none() {
                    self.remove_peer(id);
                } else {
                    for vni in p.vnis.clone() {
                        self.publish(Update::PeerFound { addr, vni });
                    }
                }
            }
        }
    }

    pub(super) fn publish(&mut self, update: Update) {
        if self.replicated {
            self.updates.push(update);
        }
    }

    pub(super) fn publish_learned(&mut self, vni: Vni, mac: MacAddr, location: Location) {
        if !self.replicated {
            return;
        }
        let site = match location {
            Location::Port(port) => Site::Port(port),
            Location::Peer(peer) => match self.peer(peer) {
                Some(p) => Site::Peer(p.addr),
                None => return,
            },
        };
        self.updates.push(Update::Learned { vni, mac, site });
    }
}
