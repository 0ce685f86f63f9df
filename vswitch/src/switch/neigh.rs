//! The neighbour table: IPv4 address to MAC per VNI, for answering ARP locally.
//!
//! Port addresses are static entries; addresses seen in ARP traffic on the VNI are learned and age
//! like FDB entries. Learned entries are bounded in number.

use core::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::wire::{MacAddr, Vni};

/// One neighbour, as listed for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighbourEntry {
    /// The VNI.
    pub vni: Vni,
    /// The IPv4 address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: MacAddr,
    /// True for port addresses, which never age.
    pub is_static: bool,
    /// Time since last seen in ARP; `None` for static entries.
    pub age: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    mac: MacAddr,
    last_seen: Option<Instant>,
}

#[derive(Debug, Clone)]
pub(super) struct Neighbours {
    entries: FxHashMap<(u32, u32), Entry>,
    learned: usize,
    max_learned: usize,
    aging: Duration,
}

fn key(vni: Vni, ip: Ipv4Addr) -> (u32, u32) {
    (vni.get(), ip.to_bits())
}

impl Neighbours {
    pub(super) fn new(max_learned: usize, aging: Duration) -> Self {
        Neighbours {
            entries: FxHashMap::default(),
            learned: 0,
            max_learned,
            aging,
        }
    }

    pub(super) fn lookup(&self, vni: Vni, ip: Ipv4Addr) -> Option<MacAddr> {
        self.entries.get(&key(vni, ip)).map(|e| e.mac)
    }

    /// Records `ip` at `mac`; returns true when a new entry was created. Static entries win.
    pub(super) fn learn(&mut self, now: Instant, vni: Vni, ip: Ipv4Addr, mac: MacAddr) -> bool {
        if let Some(entry) = self.entries.get_mut(&key(vni, ip)) {
            if let Some(seen) = entry.last_seen.as_mut() {
                *seen = now;
                entry.mac = mac;
            }
            return false;
        }
        if self.learned >= self.max_learned {
            return false;
        }
        self.entries.insert(
            key(vni, ip),
            Entry {
                mac,
                last_seen: Some(now),
            },
        );
        self.learned += 1;
        true
    }

    pub(super) fn insert_static(&mut self, vni: Vni, ip: Ipv4Addr, mac: MacAddr) {
        let old = self.entries.insert(
            key(vni, ip),
            Entry {
                mac,
                last_seen: None,
            },
        );
        if old.is_some_and(|old| old.last_seen.is_some()) {
            self.learned -= 1;
        }
    }

    /// Removes the static entry for `ip` if it still maps to `mac`.
    pub(super) fn remove_static(&mut self, vni: Vni, ip: Ipv4Addr, mac: MacAddr) {
        let k = key(vni, ip);
        if self
            .entries
            .get(&k)
            .is_some_and(|e| e.last_seen.is_none() && e.mac == mac)
        {
            self.entries.remove(&k);
        }
    }

    pub(super) fn remove_vni(&mut self, vni: Vni) -> usize {
        let vni = vni.get();
        self.remove_where(|k, _| k.0 == vni)
    }

    pub(super) fn expire(&mut self, now: Instant) -> usize {
        let aging = self.aging;
        self.remove_where(|_, e| {
            e.last_seen
                .is_some_and(|seen| now.saturating_duration_since(seen) >= aging)
        })
    }

    pub(super) fn learned_len(&self) -> usize {
        self.learned
    }

    pub(super) fn iter(&self, now: Instant) -> impl Iterator<Item = NeighbourEntry> + '_ {
        self.entries
            .iter()
            .map(move |(&(vni, ip), e)| NeighbourEntry {
                vni: Vni::from_u24(vni),
                ip: Ipv4Addr::from_bits(ip),
                mac: e.mac,
                is_static: e.last_seen.is_none(),
                age: e.last_seen.map(|seen| now.saturating_duration_since(seen)),
            })
    }

    fn remove_where(&mut self, mut pred: impl FnMut(&(u32, u32), &Entry) -> bool) -> usize {
        let before = self.entries.len();
        let mut learned = 0;
        self.entries.retain(|k, e| {
            let remove = pred(k, e);
            if remove && e.last_seen.is_some() {
                learned += 1;
            }
            !remove
        });
        self.learned -= learned;
        before - self.entries.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn learn_static_age_bound() {
        let t0 = Instant::now();
        let vni = Vni::DEFAULT;
        let ip = |n: u8| Ipv4Addr::new(10, 0, 0, n);
        let mac = |n: u8| MacAddr([2, 0, 0, 0, 0, n]);
        let mut n = Neighbours::new(2, Duration::from_secs(60));
        assert!(n.learn(t0, vni, ip(1), mac(1)));
        assert!(!n.learn(t0, vni, ip(1), mac(9)));
        assert_eq!(n.lookup(vni, ip(1)), Some(mac(9)));
        assert!(n.learn(t0, vni, ip(2), mac(2)));
        assert!(!n.learn(t0, vni, ip(3), mac(3)));
        assert_eq!(n.lookup(vni, ip(3)), None);
        n.insert_static(vni, ip(1), mac(1));
        assert_eq!(n.learned_len(), 1);
        assert!(!n.learn(t0, vni, ip(1), mac(7)));
        assert_eq!(n.lookup(vni, ip(1)), Some(mac(1)));
        assert_eq!(n.expire(t0 + Duration::from_secs(60)), 1);
        assert_eq!(n.lookup(vni, ip(2)), None);
        n.remove_static(vni, ip(1), mac(2));
        assert_eq!(n.lookup(vni, ip(1)), Some(mac(1)));
        n.remove_static(vni, ip(1), mac(1));
        assert_eq!(n.lookup(vni, ip(1)), None);
        assert_eq!(n.learned_len(), 0);
    }
}
