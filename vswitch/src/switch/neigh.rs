//! The neighbour table: IPv4 address to MAC per VNI, for answering ARP locally.
//!
//! Port addresses are static entries; addresses seen in ARP traffic on the VNI are learned and age
//! like FDB entries. Learned entries are bounded in number, in total and per port or peer they
//! were heard from (the FDB's limits), so one peer's ARP flood cannot crowd out the rest.
//! Entries another replica learned are mirrored as in the FDB: they never age here and go when
//! that replica forgets them.

use core::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::fdb::{FdbConfig, Location};
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
    mirrored: bool,
    /// Where this replica heard it, for learned entries (not static or mirrored ones).
    from: Option<Location>,
}

/// What [`Neighbours::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Heard {
    /// A new entry, or a new MAC for the address.
    News,
    /// Nothing new.
    Known,
    /// A limit kept it out.
    Full,
}

#[derive(Debug, Clone)]
pub(super) struct Neighbours {
    entries: FxHashMap<(u32, u32), Entry>,
    learned: usize,
    max_learned: usize,
    max_per_port: usize,
    max_per_peer: usize,
    per_location: FxHashMap<Location, usize>,
    aging: Duration,
}

fn key(vni: Vni, ip: Ipv4Addr) -> (u32, u32) {
    (vni.get(), ip.to_bits())
}

impl Neighbours {
    pub(super) fn new(limits: &FdbConfig) -> Self {
        Neighbours {
            entries: FxHashMap::default(),
            learned: 0,
            max_learned: limits.max_entries,
            max_per_port: limits.max_per_port,
            max_per_peer: limits.max_per_peer,
            per_location: FxHashMap::default(),
            aging: limits.aging,
        }
    }

    pub(super) fn lookup(&self, vni: Vni, ip: Ipv4Addr) -> Option<MacAddr> {
        self.entries.get(&key(vni, ip)).map(|e| e.mac)
    }

    /// Records `ip` at `mac`, heard from `from`. Static entries win.
    pub(super) fn learn(
        &mut self,
        now: Instant,
        vni: Vni,
        ip: Ipv4Addr,
        mac: MacAddr,
        from: Location,
    ) -> Heard {
        self.record(now, vni, ip, mac, Some(from))
    }

    /// Records what another replica learned; returns true when something changed.
    pub(super) fn mirror(&mut self, now: Instant, vni: Vni, ip: Ipv4Addr, mac: MacAddr) -> bool {
        self.record(now, vni, ip, mac, None) == Heard::News
    }

    fn record(
        &mut self,
        now: Instant,
        vni: Vni,
        ip: Ipv4Addr,
        mac: MacAddr,
        from: Option<Location>,
    ) -> Heard {
        let full = from.is_some_and(|at| self.location_full(at));
        if let Some(entry) = self.entries.get_mut(&key(vni, ip)) {
            let Some(seen) = entry.last_seen.as_mut() else {
                return Heard::Known;
            };
            let changed = entry.mac != mac;
            if from.is_none() && !changed {
                return Heard::Known;
            }
            if from.is_some() && entry.from != from && full {
                return Heard::Full;
            }
            *seen = now;
            entry.mac = mac;
            entry.mirrored = from.is_none();
            let before = std::mem::replace(&mut entry.from, from);
            uncount(&mut self.per_location, before);
            count(&mut self.per_location, from);
            return if changed { Heard::News } else { Heard::Known };
        }
        if self.learned >= self.max_learned || full {
            return Heard::Full;
        }
        self.entries.insert(
            key(vni, ip),
            Entry {
                mac,
                last_seen: Some(now),
                mirrored: from.is_none(),
                from,
            },
        );
        count(&mut self.per_location, from);
        self.learned += 1;
        Heard::News
    }

    fn location_full(&self, at: Location) -> bool {
        let limit = match at {
            Location::Port(_) => self.max_per_port,
            Location::Peer(_) => self.max_per_peer,
        };
        self.per_location.get(&at).copied().unwrap_or(0) >= limit
    }

    /// Forgets what was learned from (or pinned to) a port or peer that is gone.
    pub(super) fn remove_location(&mut self, at: Location) -> usize {
        self.remove_where(|_, e| e.from == Some(at))
    }

    /// Another replica forgot `ip`: removes a mirrored entry and returns `None`; returns the
    /// MAC of an entry this replica learned itself, which stays.
    pub(super) fn forget_mirrored(&mut self, vni: Vni, ip: Ipv4Addr) -> Option<MacAddr> {
        let k = key(vni, ip);
        let entry = self.entries.get(&k)?;
        match (entry.mirrored, entry.last_seen) {
            (true, _) => {
                if let Some(old) = self.entries.remove(&k) {
                    uncount(&mut self.per_location, old.from);
                }
                self.learned -= 1;
                None
            }
            (false, Some(_)) => Some(entry.mac),
            (false, None) => None,
        }
    }

    pub(super) fn insert_static(&mut self, vni: Vni, ip: Ipv4Addr, mac: MacAddr) {
        self.insert_static_at(vni, ip, mac, None);
    }

    /// A static entry that goes with `from` ([`Neighbours::remove_location`]) when given.
    pub(super) fn insert_static_at(
        &mut self,
        vni: Vni,
        ip: Ipv4Addr,
        mac: MacAddr,
        from: Option<Location>,
    ) {
        let old = self.entries.insert(
            key(vni, ip),
            Entry {
                mac,
                last_seen: None,
                mirrored: false,
                from,
            },
        );
        if let Some(old) = old
            && old.last_seen.is_some()
        {
            self.learned -= 1;
            uncount(&mut self.per_location, old.from);
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

    /// Removes learned entries not seen for the aging time, telling `expired` of each.
    pub(super) fn expire_with(
        &mut self,
        now: Instant,
        mut expired: impl FnMut(Vni, Ipv4Addr),
    ) -> usize {
        let aging = self.aging;
        self.remove_where(|&(vni, ip), e| {
            let old = !e.mirrored
                && e.last_seen
                    .is_some_and(|seen| now.saturating_duration_since(seen) >= aging);
            if old {
                expired(Vni::from_u24(vni), Ipv4Addr::from_bits(ip));
            }
            old
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
        let per_location = &mut self.per_location;
        self.entries.retain(|k, e| {
            let remove = pred(k, e);
            if remove && e.last_seen.is_some() {
                learned += 1;
                uncount(per_location, e.from);
            }
            !remove
        });
        self.learned -= learned;
        before - self.entries.len()
    }
}

fn count(per_location: &mut FxHashMap<Location, usize>, at: Option<Location>) {
    if let Some(at) = at {
        *per_location.entry(at).or_insert(0) += 1;
    }
}

fn uncount(per_location: &mut FxHashMap<Location, usize>, at: Option<Location>) {
    if let Some(at) = at
        && let Some(n) = per_location.get_mut(&at)
    {
        *n -= 1;
        if *n == 0 {
            per_location.remove(&at);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use crate::switch::{PeerId, PortId};

    fn limits(max_entries: usize, max_per_peer: usize) -> FdbConfig {
        FdbConfig {
            aging: Duration::from_secs(60),
            max_entries,
            max_per_port: max_entries,
            max_per_peer,
        }
    }

    const PORT: Location = Location::Port(PortId(0));

    #[test]
    fn learn_static_age_bound() {
        let t0 = Instant::now();
        let vni = Vni::DEFAULT;
        let ip = |n: u8| Ipv4Addr::new(10, 0, 0, n);
        let mac = |n: u8| MacAddr([2, 0, 0, 0, 0, n]);
        let mut n = Neighbours::new(&limits(2, 2));
        assert_eq!(n.learn(t0, vni, ip(1), mac(1), PORT), Heard::News);
        assert_eq!(n.learn(t0, vni, ip(1), mac(9), PORT), Heard::News);
        assert_eq!(n.learn(t0, vni, ip(1), mac(9), PORT), Heard::Known);
        assert_eq!(n.lookup(vni, ip(1)), Some(mac(9)));
        assert_eq!(n.learn(t0, vni, ip(2), mac(2), PORT), Heard::News);
        assert_eq!(n.learn(t0, vni, ip(3), mac(3), PORT), Heard::Full);
        assert_eq!(n.lookup(vni, ip(3)), None);
        n.insert_static(vni, ip(1), mac(1));
        assert_eq!(n.learned_len(), 1);
        assert_eq!(n.learn(t0, vni, ip(1), mac(7), PORT), Heard::Known);
        assert_eq!(n.lookup(vni, ip(1)), Some(mac(1)));
        assert_eq!(n.expire_with(t0 + Duration::from_secs(60), |_, _| {}), 1);
        assert_eq!(n.lookup(vni, ip(2)), None);
        n.remove_static(vni, ip(1), mac(2));
        assert_eq!(n.lookup(vni, ip(1)), Some(mac(1)));
        n.remove_static(vni, ip(1), mac(1));
        assert_eq!(n.lookup(vni, ip(1)), None);
        assert_eq!(n.learned_len(), 0);
    }

    #[test]
    fn one_peer_cannot_fill_the_table() {
        let t0 = Instant::now();
        let vni = Vni::DEFAULT;
        let a = Location::Peer(PeerId(0));
        let b = Location::Peer(PeerId(1));
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let mut n = Neighbours::new(&limits(100, 10));
        for i in 0..50 {
            n.learn(t0, vni, Ipv4Addr::new(10, 0, 1, i), mac, a);
        }
        assert_eq!(n.learned_len(), 10);
        assert_eq!(
            n.learn(t0, vni, Ipv4Addr::new(10, 0, 2, 1), mac, b),
            Heard::News
        );
        // An address peer A holds cannot move to A's full share from B either way round.
        assert_eq!(
            n.learn(t0, vni, Ipv4Addr::new(10, 0, 2, 1), mac, a),
            Heard::Full
        );
        assert_eq!(n.remove_location(a), 10);
        assert_eq!(n.learned_len(), 1);
        assert_eq!(
            n.learn(t0, vni, Ipv4Addr::new(10, 0, 1, 0), mac, a),
            Heard::News
        );
    }

    #[test]
    fn mirrored_entries_do_not_age_and_go_when_told() {
        let t0 = Instant::now();
        let vni = Vni::DEFAULT;
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let mac = |n: u8| MacAddr([2, 0, 0, 0, 0, n]);
        let mut n = Neighbours::new(&limits(4, 4));
        assert!(n.mirror(t0, vni, ip, mac(1)));
        assert!(!n.mirror(t0, vni, ip, mac(1)));
        assert_eq!(n.expire_with(t0 + Duration::from_secs(600), |_, _| {}), 0);
        assert_eq!(n.forget_mirrored(vni, ip), None);
        assert_eq!(n.lookup(vni, ip), None);
        assert_eq!(n.learned_len(), 0);
        // Seen here: the entry is this replica's own and outlives the other replica's.
        assert!(n.mirror(t0, vni, ip, mac(1)));
        assert_eq!(n.learn(t0, vni, ip, mac(1), PORT), Heard::Known);
        assert_eq!(n.forget_mirrored(vni, ip), Some(mac(1)));
        let mut expired = Vec::new();
        n.expire_with(t0 + Duration::from_secs(60), |v, i| expired.push((v, i)));
        assert_eq!(expired, vec![(vni, ip)]);
    }
}
