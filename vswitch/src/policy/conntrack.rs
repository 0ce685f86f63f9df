//! Connection tracking: which connections policy allowed, so their replies pass without a
//! rule of their own. One table shared by every worker.
//!
//! A connection's two directions may be read by different workers (the container's kernel picks
//! the TAP queue, the peer's source port the socket), and a reply can come back within
//! microseconds of the packet that opened the connection: sooner than replicas exchanging
//! `Update`s between batches could promise to have mirrored the entry. So the table is shared,
//! split into shards (a power of two, 64 by default) each behind its own `Mutex`, with the
//! shard chosen by hash: a lookup locks one shard for a hash probe, and two workers meet on a
//! lock only when their flows fall in the same shard at the same moment. The benches measure
//! the cost (`conntrack/*` in `benches/benches/policy.rs`).
//!
//! Entries are keyed by the normalized 5-tuple, so both directions find one entry (ICMP echo by
//! addresses and identifier). Timeouts, refreshed by every packet:
//!
//! | state | timeout |
//! |---|---|
//! | TCP opening (SYN or first packet seen, no reply yet) | 60 s |
//! | TCP established (both directions seen) | 2 h 5 min: outlives Linux's 2 h keepalive |
//! | TCP FIN seen in one direction | 120 s |
//! | TCP FIN seen both ways, or RST | 10 s |
//! | UDP and other protocols, no reply yet | 30 s |
//! | UDP and other protocols, replied | 180 s |
//! | ICMP echo | 30 s |
//!
//! The table is bounded: each shard holds at most `capacity / shards` entries, allocated up
//! front. A full shard first drops expired entries it meets, then evicts by second chance (an
//! entry used since the last pass is spared once), counting evictions. Time is a parameter.

use core::hash::{Hash, Hasher};
use core::net::IpAddr;
use core::sync::atomic::{AtomicU64, Ordering};
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHasher};

use super::compile::RuleId;
use super::flow::{FlowInfo, FlowKey};
use crate::wire::{IpProtocol, TcpPacket};

type Tcp = TcpPacket<&'static [u8]>;

/// How long entries live without traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP before the reply direction was seen.
    pub tcp_opening: Duration,
    /// TCP with both directions seen.
    pub tcp_established: Duration,
    /// TCP after a FIN in one direction.
    pub tcp_fin_wait: Duration,
    /// TCP after FINs both ways or a RST.
    pub tcp_closed: Duration,
    /// UDP (and other protocols) before a reply.
    pub udp_unreplied: Duration,
    /// UDP (and other protocols) once replied.
    pub udp_replied: Duration,
    /// ICMP echo.
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_opening: Duration::from_secs(60),
            tcp_established: Duration::from_secs(2 * 3600 + 300),
            tcp_fin_wait: Duration::from_secs(120),
            tcp_closed: Duration::from_secs(10),
            udp_unreplied: Duration::from_secs(30),
            udp_replied: Duration::from_secs(180),
            icmp: Duration::from_secs(30),
        }
    }
}

/// Size and timeouts of a [`Conntrack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Most entries held (rounded up to a multiple of `shards`).
    pub capacity: usize,
    /// Number of shards, rounded up to a power of two.
    pub shards: usize,
    /// Timeouts.
    pub timeouts: Timeouts,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            capacity: 65_536,
            shards: 64,
            timeouts: Timeouts::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CtKey {
    a: IpAddr,
    b: IpAddr,
    a_port: u16,
    b_port: u16,
    proto: u8,
}

/// The normalized key and whether the packet travels from `a` to `b`. `None` for what is
/// not tracked (ICMP other than echo).
fn ct_key(key: &FlowKey) -> Option<(CtKey, bool)> {
    let (sp, dp) = if key.is_icmp() {
        if !(key.is_echo_request() || key.is_echo_reply()) {
            return None;
        }
        (key.src_port, key.src_port)
    } else {
        (key.src_port, key.dst_port)
    };
    let forward = (key.src, sp) <= (key.dst, dp);
    let (a, a_port, b, b_port) = if forward {
        (key.src, sp, key.dst, dp)
    } else {
        (key.dst, dp, key.src, sp)
    };
    Some((
        CtKey {
            a,
            b,
            a_port,
            b_port,
            proto: key.proto.0,
        },
        forward,
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcpState {
    Opening,
    Established,
    FinWait,
    Closed,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    expires: Instant,
    /// The opening packet travelled from `a` to `b`.
    orig_forward: bool,
    replied: bool,
    tcp: TcpState,
    fin_orig: bool,
    fin_reply: bool,
    referenced: bool,
    seq: u32,
    epoch: u64,
    limits: Limits,
}

/// The `limit` rules an entry's opening direction was charged to: at the egress port, at the
/// ingress port.
pub type Limits = [Option<RuleId>; 2];

/// What the table knows of a packet's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// No live entry: policy decides.
    New,
    /// A tracked connection.
    Known {
        /// True when the packet travels the way the opening packet did.
        original: bool,
        /// The policy epoch the connection was last allowed under.
        epoch: u64,
        /// Its `limit` rules (apply to the original direction).
        limits: Limits,
    },
}

#[derive(Debug)]
struct Shard {
    map: FxHashMap<CtKey, Entry>,
    order: VecDeque<(CtKey, u32)>,
    cap: usize,
    seq: u32,
}

#[derive(Debug)]
#[repr(align(64))]
struct PaddedShard(Mutex<Shard>);

/// Counters of the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackStats {
    /// Entries now held.
    pub entries: u64,
    /// Connections opened.
    pub opened: u64,
    /// Entries that timed out.
    pub expired: u64,
    /// Live entries pushed out by a full table.
    pub evicted: u64,
}

/// The shared connection table.
#[derive(Debug)]
pub struct Conntrack {
    shards: Box<[PaddedShard]>,
    mask: usize,
    timeouts: Timeouts,
    opened: AtomicU64,
    expired: AtomicU64,
    evicted: AtomicU64,
}

impl Shard {
    fn new(cap: usize) -> Self {
        Shard {
            map: FxHashMap::with_capacity_and_hasher(cap, Default::default()),
            order: VecDeque::with_capacity(2 * cap + 1),
            cap,
            seq: 0,
        }
    }

    /// Makes room for one entry. Returns (expired, evicted) removals.
    fn make_room(&mut self, now: Instant) -> (u64, u64) {
        let (mut expired, mut evicted) = (0, 0);
        let mut budget = 2 * self.order.len() + 2;
        while self.map.len() >= self.cap && budget > 0 {
            budget -= 1;
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            let Some(e) = self.map.get_mut(&key) else {
                continue;
            };
            if e.seq != seq {
                continue;
            }
            if e.expires <= now {
                self.map.remove(&key);
                expired += 1;
            } else if e.referenced {
                e.referenced = false;
                self.order.push_back((key, seq));
            } else {
                self.map.remove(&key);
                evicted += 1;
            }
        }
        if self.map.len() >= self.cap {
            // Unreachable while `order` lists every entry; a guard all the same.
            if let Some(key) = self.map.keys().next().copied() {
                self.map.remove(&key);
                evicted += 1;
            }
        }
        (expired, evicted)
    }

    fn compact(&mut self) {
        if self.order.len() > 2 * self.cap {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
    }
}

impl Conntrack {
    /// An empty table.
    pub fn new(config: ConntrackConfig) -> Self {
        let shards = config.shards.max(1).next_power_of_two();
        let per = config.capacity.max(1).div_ceil(shards);
        Conntrack {
            shards: (0..shards)
                .map(|_| PaddedShard(Mutex::new(Shard::new(per))))
                .collect(),
            mask: shards - 1,
            timeouts: config.timeouts,
            opened: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    #[inline]
    fn shard(&self, key: &CtKey) -> MutexGuard<'_, Shard> {
        let mut h = FxHasher::default();
        key.hash(&mut h);
        let x = h.finish();
        let i = ((x >> 32) ^ x) as usize & self.mask;
        // A worker that panicked holding the lock left a table that is still consistent
        // (every update is a single map operation): carry on with it.
        self.shards[i]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks a packet up and, when its connection is known, advances its state and timeout.
    pub fn track(&self, now: Instant, flow: &FlowInfo) -> Tracked {
        let Some((key, forward)) = ct_key(&flow.key) else {
            return Tracked::New;
        };
        let mut shard = self.shard(&key);
        let Some(e) = shard.map.get_mut(&key) else {
            return Tracked::New;
        };
        if e.expires <= now {
            shard.map.remove(&key);
            drop(shard);
            self.expired.fetch_add(1, Ordering::Relaxed);
            return Tracked::New;
        }
        let original = forward == e.orig_forward;
        let is_tcp = flow.key.proto == IpProtocol::TCP;
        let syn_only = flow.tcp_flags & (Tcp::SYN | Tcp::ACK) == Tcp::SYN;
        if is_tcp && syn_only && e.tcp == TcpState::Closed && !original {
            // The other end opens a new connection on a finished tuple: policy decides.
            shard.map.remove(&key);
            return Tracked::New;
        }
        let t = &self.timeouts;
        let timeout = if is_tcp {
            let f = flow.tcp_flags;
            if syn_only && e.tcp == TcpState::Closed {
                // Port reuse: the same connection opens again.
                e.tcp = TcpState::Opening;
                e.replied = false;
                (e.fin_orig, e.fin_reply) = (false, false);
            }
            if !original {
                e.replied = true;
                if e.tcp == TcpState::Opening {
                    e.tcp = TcpState::Established;
                }
            }
            if f & Tcp::RST != 0 {
                e.tcp = TcpState::Closed;
            } else if f & Tcp::FIN != 0 {
                if original {
                    e.fin_orig = true;
                } else {
                    e.fin_reply = true;
                }
                e.tcp = if e.fin_orig && e.fin_reply {
                    TcpState::Closed
                } else {
                    TcpState::FinWait
                };
            }
            match e.tcp {
                TcpState::Opening => t.tcp_opening,
                TcpState::Established => t.tcp_established,
                TcpState::FinWait => t.tcp_fin_wait,
                TcpState::Closed => t.tcp_closed,
            }
        } else if flow.key.is_icmp() {
            // A reply must be an echo reply, and the opening side must send requests.
            if original != flow.key.is_echo_request() {
                return Tracked::New;
            }
            t.icmp
        } else {
            if !original {
                e.replied = true;
            }
            if e.replied {
                t.udp_replied
            } else {
                t.udp_unreplied
            }
        };
        e.expires = now + timeout;
        e.referenced = true;
        Tracked::Known {
            original,
            epoch: e.epoch,
            limits: e.limits,
        }
    }

    /// Records a connection policy allowed (its first packet, `flow`) under `epoch`. Replaces
    /// an entry of the same tuple. Not tracked: ICMP other than echo requests.
    pub fn open(&self, now: Instant, flow: &FlowInfo, epoch: u64, limits: Limits) {
        if flow.key.is_icmp() && !flow.key.is_echo_request() {
            return;
        }
        let Some((key, forward)) = ct_key(&flow.key) else {
            return;
        };
        let t = &self.timeouts;
        let (tcp, timeout) = if flow.key.proto == IpProtocol::TCP {
            if flow.tcp_flags & Tcp::RST != 0 {
                return;
            }
            (TcpState::Opening, t.tcp_opening)
        } else if flow.key.is_icmp() {
            (TcpState::Opening, t.icmp)
        } else {
            (TcpState::Opening, t.udp_unreplied)
        };
        let mut shard = self.shard(&key);
        let (mut expired, mut evicted) = (0, 0);
        if !shard.map.contains_key(&key) && shard.map.len() >= shard.cap {
            (expired, evicted) = shard.make_room(now);
        }
        shard.seq = shard.seq.wrapping_add(1);
        let seq = shard.seq;
        shard.map.insert(
            key,
            Entry {
                expires: now + timeout,
                orig_forward: forward,
                replied: false,
                tcp,
                fin_orig: false,
                fin_reply: false,
                referenced: false,
                seq,
                epoch,
                limits,
            },
        );
        shard.order.push_back((key, seq));
        shard.compact();
        drop(shard);
        self.opened.fetch_add(1, Ordering::Relaxed);
        if expired > 0 {
            self.expired.fetch_add(expired, Ordering::Relaxed);
        }
        if evicted > 0 {
            self.evicted.fetch_add(evicted, Ordering::Relaxed);
        }
    }

    /// Marks a known connection allowed under `epoch` (after a policy change re-evaluated it).
    pub fn revalidate(&self, flow: &FlowInfo, epoch: u64, limits: Limits) {
        let Some((key, _)) = ct_key(&flow.key) else {
            return;
        };
        if let Some(e) = self.shard(&key).map.get_mut(&key) {
            e.epoch = epoch;
            e.limits = limits;
        }
    }

    /// Ends a connection (a policy change now denies it).
    pub fn remove(&self, flow: &FlowInfo) {
        if let Some((key, _)) = ct_key(&flow.key) {
            self.shard(&key).map.remove(&key);
        }
    }

    /// True when the connection `key` belongs to (either direction) is tracked and live; for
    /// ICMP errors quoting one of its packets.
    pub fn contains(&self, now: Instant, key: &FlowKey) -> bool {
        ct_key(key)
            .is_some_and(|(k, _)| self.shard(&k).map.get(&k).is_some_and(|e| e.expires > now))
    }

    /// Drops every expired entry; call now and then (every few seconds) from any thread. Locks
    /// one shard at a time.
    pub fn sweep(&self, now: Instant) {
        let mut expired = 0u64;
        for s in self.shards.iter() {
            let mut shard = s.0.lock().unwrap_or_else(PoisonError::into_inner);
            let before = shard.map.len();
            shard.map.retain(|_, e| e.expires > now);
            expired += (before - shard.map.len()) as u64;
            shard.compact();
        }
        self.expired.fetch_add(expired, Ordering::Relaxed);
    }

    /// Counters, and the entries held now (locks each shard briefly).
    pub fn stats(&self) -> ConntrackStats {
        let entries = self
            .shards
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(PoisonError::into_inner).map.len() as u64)
            .sum();
        ConntrackStats {
            entries,
            opened: self.opened.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

impl Default for Conntrack {
    fn default() -> Self {
        Self::new(ConntrackConfig::default())
    }
}
