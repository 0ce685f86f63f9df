//! Health: is each peer reachable over the tunnel, and is this node part of the fleet.
//!
//! Every probe interval the node sends each peer a probe on the VXLAN path (UDP to the peer's
//! VXLAN port, from this node's underlay address: [`crate::switch::PROBE`]); the peer's
//! datapath counts it against this node like any datagram. A peer is judged by what arrives
//! *from* it, probes and traffic alike, read off the workers' published counters:
//!
//! - **up**: heard within [`UP_WITHIN`] probe intervals;
//! - **degraded**: silent for longer (probes lost), but heard within [`DOWN_AFTER`] intervals;
//! - **down**: silent for longer than that, or never heard.
//!
//! The node is **Ready** when its store is reachable (or it has none) and every peer is up;
//! **Disconnected** when it reaches neither its store nor any peer (every peer down);
//! **Degraded** otherwise.
//! Every change is logged once, with the time it happened.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Probe intervals of silence after which an up peer is degraded.
pub const UP_WITHIN: u32 = 3;
/// Probe intervals of silence after which a peer is down.
pub const DOWN_AFTER: u32 = 8;

/// A peer's tunnel state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Heard lately.
    Up,
    /// Probes lost lately.
    Degraded,
    /// Not heard for long, or never.
    Down,
}

/// The node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Store reachable (or none), every peer up.
    Ready,
    /// Store unreachable, or some peer not up.
    Degraded,
    /// Neither the store nor any peer reachable.
    Disconnected,
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerState::Up => "up",
            PeerState::Degraded => "degraded",
            PeerState::Down => "down",
        })
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Ready => "Ready",
            NodeState::Degraded => "Degraded",
            NodeState::Disconnected => "Disconnected",
        })
    }
}

/// One peer's health, for queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHealthView {
    /// Its state.
    pub state: PeerState,
    /// When it entered that state (seconds since the Unix epoch).
    pub since_unix_secs: u64,
    /// Milliseconds since anything arrived from it; `None` if nothing ever did.
    pub last_heard_ms: Option<u64>,
}

/// The node's health, for queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealthView {
    /// Its state.
    pub state: NodeState,
    /// When it entered that state (seconds since the Unix epoch).
    pub since_unix_secs: u64,
    /// Whether etcd answers; `None` without etcd.
    pub store_reachable: Option<bool>,
    /// Peers up.
    pub peers_up: usize,
    /// Peers in all.
    pub peers: usize,
}

/// A state change, to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// A peer changed state.
    Peer {
        /// Its address.
        addr: IpAddr,
        /// Before.
        from: PeerState,
        /// Now.
        to: PeerState,
    },
    /// The node changed state.
    Node {
        /// Before.
        from: NodeState,
        /// Now.
        to: NodeState,
    },
}

#[derive(Debug, Clone)]
struct Tracked {
    state: PeerState,
    since: SystemTime,
    added: Instant,
    heard: Option<Instant>,
    rx: u64,
}

/// The health of every peer and of the node, updated from counters.
#[derive(Debug)]
pub struct Health {
    interval: Duration,
    peers: BTreeMap<IpAddr, Tracked>,
    node: NodeState,
    node_since: SystemTime,
    store: Option<bool>,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl Health {
    /// Health judged on probes sent every `interval`; `store` is `Some(reachable)` with etcd.
    pub fn new(interval: Duration, store: Option<bool>, wall: SystemTime) -> Self {
        Self {
            interval,
            peers: BTreeMap::new(),
            node: NodeState::Ready,
            node_since: wall,
            store,
        }
    }

    /// Records whether the store answers.
    pub fn set_store(&mut self, reachable: bool) {
        if self.store.is_some() {
            self.store = Some(reachable);
        }
    }

    /// Takes in the datagrams received so far from each peer (`rx`, by underlay address,
    /// cumulative) at `now`; peers not in `rx` are no longer peers. Returns what changed.
    pub fn observe(
        &mut self,
        now: Instant,
        wall: SystemTime,
        rx: &BTreeMap<IpAddr, u64>,
    ) -> Vec<Transition> {
        let mut changes = Vec::new();
        self.peers.retain(|addr, _| rx.contains_key(addr));
        for (&addr, &count) in rx {
            let tracked = self.peers.entry(addr).or_insert(Tracked {
                state: PeerState::Down,
                since: wall,
                added: now,
                heard: None,
                rx: count,
            });
            if count != tracked.rx {
                tracked.rx = count;
                tracked.heard = Some(now);
            }
            let silent = now.saturating_duration_since(tracked.heard.unwrap_or(tracked.added));
            let state = if tracked.heard.is_none() {
                PeerState::Down
            } else if silent <= self.interval * UP_WITHIN {
                PeerState::Up
            } else if silent <= self.interval * DOWN_AFTER {
                PeerState::Degraded
            } else {
                PeerState::Down
            };
            if state != tracked.state {
                changes.push(Transition::Peer {
                    addr,
                    from: tracked.state,
                    to: state,
                });
                tracked.state = state;
                tracked.since = wall;
            }
        }
        let node = self.node_state();
        if node != self.node {
            changes.push(Transition::Node {
                from: self.node,
                to: node,
            });
            self.node = node;
            self.node_since = wall;
        }
        changes
    }

    fn node_state(&self) -> NodeState {
        let up = self
            .peers
            .values()
            .filter(|p| p.state == PeerState::Up)
            .count();
        let reachable = self
            .peers
            .values()
            .filter(|p| p.state != PeerState::Down)
            .count();
        let store_ok = self.store.unwrap_or(true);
        let store_down = self.store == Some(false);
        if store_ok && up == self.peers.len() {
            NodeState::Ready
        } else if reachable == 0 && (store_down || (self.store.is_none() && !self.peers.is_empty()))
        {
            NodeState::Disconnected
        } else {
            NodeState::Degraded
        }
    }

    /// One peer's health.
    pub fn peer(&self, addr: IpAddr, now: Instant) -> Option<PeerHealthView> {
        self.peers.get(&addr).map(|p| PeerHealthView {
            state: p.state,
            since_unix_secs: unix_secs(p.since),
            last_heard_ms: p
                .heard
                .map(|h| now.saturating_duration_since(h).as_millis() as u64),
        })
    }

    /// The node's health.
    pub fn node(&self) -> NodeHealthView {
        NodeHealthView {
            state: self.node,
            since_unix_secs: unix_secs(self.node_since),
            store_reachable: self.store,
            peers_up: self
                .peers
                .values()
                .filter(|p| p.state == PeerState::Up)
                .count(),
            peers: self.peers.len(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn addr(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn peers_go_up_degraded_and_down_with_silence() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut h = Health::new(SECOND, None, wall);
        let mut rx = BTreeMap::from([(addr(1), 0)]);
        let changes = h.observe(t0, wall, &rx);
        assert_eq!(
            changes,
            [Transition::Node {
                from: NodeState::Ready,
                to: NodeState::Disconnected
            }]
        );
        rx.insert(addr(1), 1);
        let changes = h.observe(t0 + SECOND, wall, &rx);
        assert!(changes.contains(&Transition::Peer {
            addr: addr(1),
            from: PeerState::Down,
            to: PeerState::Up
        }));
        assert_eq!(h.node().state, NodeState::Ready);
        assert!(h.observe(t0 + 4 * SECOND, wall, &rx).is_empty());
        let changes = h.observe(t0 + 5 * SECOND, wall, &rx);
        assert_eq!(
            changes[0],
            Transition::Peer {
                addr: addr(1),
                from: PeerState::Up,
                to: PeerState::Degraded
            }
        );
        assert_eq!(h.node().state, NodeState::Degraded);
        h.observe(t0 + 10 * SECOND, wall, &rx);
        assert_eq!(h.peer(addr(1), t0).unwrap().state, PeerState::Down);
        rx.insert(addr(1), 2);
        h.observe(t0 + 11 * SECOND, wall, &rx);
        assert_eq!(h.peer(addr(1), t0).unwrap().state, PeerState::Up);
        assert_eq!(h.node().peers_up, 1);
    }

    #[test]
    fn the_node_state_weighs_the_store_and_the_peers() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut h = Health::new(SECOND, Some(true), wall);
        assert!(h.observe(t0, wall, &BTreeMap::new()).is_empty());
        assert_eq!(h.node().state, NodeState::Ready);
        h.set_store(false);
        h.observe(t0, wall, &BTreeMap::new());
        assert_eq!(h.node().state, NodeState::Disconnected);
        let mut rx = BTreeMap::from([(addr(1), 0), (addr(2), 0)]);
        h.observe(t0, wall, &rx);
        rx.insert(addr(1), 5);
        h.observe(t0 + SECOND, wall, &rx);
        assert_eq!(
            h.node().state,
            NodeState::Degraded,
            "cut off from etcd only"
        );
        h.set_store(true);
        h.observe(t0 + SECOND, wall, &rx);
        assert_eq!(h.node().state, NodeState::Degraded, "a peer is down");
        rx.insert(addr(2), 1);
        h.observe(t0 + 2 * SECOND, wall, &rx);
        assert_eq!(h.node().state, NodeState::Ready);
        // A peer that is gone is no longer judged.
        rx.remove(&addr(2));
        h.observe(t0 + 3 * SECOND, wall, &rx);
        assert_eq!(h.node().peers, 1);
        assert!(h.peer(addr(2), t0).is_none());
    }
}
