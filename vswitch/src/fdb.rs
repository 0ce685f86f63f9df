//! The forwarding database: where each MAC address of each VNI was last seen.
//!
//! Entries are learned from source addresses and age out after [`FdbConfig::aging`] without
//! traffic; static entries (the MACs of local ports) never age and learning never overwrites
//! them. Memory is bounded: learned entries never exceed [`FdbConfig::max_entries`] in total,
//! [`FdbConfig::max_per_port`] on one local port nor [`FdbConfig::max_per_peer`] behind one
//! peer, so no single source can fill the table for everyone else; a MAC that would break a
//! limit is not learned (the switch still forwards its frame).
//! Aging is a sweep the switch runs from its timer, not work done per frame.
//!
//! When the switch runs as several replicas (one per datapath worker), an entry one replica
//! learned reaches the others as a *mirrored* entry: it forwards like any other, never ages on
//! its own and goes when the replica that learned it forgets it. Traffic seen locally turns a
//! mirrored entry into a learned one.

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::switch::{PeerId, PortId};
use crate::wire::{MacAddr, Vni};

/// Where frames for a MAC address go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// A local port.
    Port(PortId),
    /// A remote VTEP.
    Peer(PeerId),
}

/// Limits and timers of the forwarding database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbConfig {
    /// How long a learned entry lives without traffic. Default 300 s.
    pub aging: Duration,
    /// Most learned entries over all VNIs. Default 65536.
    pub max_entries: usize,
    /// Most learned entries on one local port. Default 1024.
    pub max_per_port: usize,
    /// Most learned entries behind one peer. Default 4096.
    pub max_per_peer: usize,
}

impl Default for FdbConfig {
    fn default() -> Self {
        FdbConfig {
            aging: Duration::from_secs(300),
            max_entries: 65536,
            max_per_port: 1024,
            max_per_peer: 4096,
        }
    }
}

/// What [`Fdb::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Learned {
    /// A new entry.
    New,
    /// The entry was already there, at this location; its age was reset.
    Refreshed,
    /// The entry moved here from another location.
    Moved {
        /// Where the MAC was before.
        from: Location,
    },
    /// A static entry holds the MAC; nothing changed.
    Static,
    /// A limit prevented learning; nothing changed.
    Full,
}

/// One entry, as listed for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// The VNI.
    pub vni: Vni,
    /// The MAC address.
    pub mac: MacAddr,
    /// Where frames for it go.
    pub location: Location,
    /// True for entries that never age.
    pub is_static: bool,
    /// Time since the MAC was last seen (or mirrored); `None` for static entries.
    pub age: Option<Duration>,
    /// True for entries another replica learned.
    pub mirrored: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    vni: u32,
    mac: u64,
}

impl Key {
    fn new(vni: Vni, mac: MacAddr) -> Self {
        let m = mac.0;
        let mac = u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]]);
        Key {
            vni: vni.get(),
            mac,
        }
    }

    fn vni(self) -> Vni {
        Vni::from_u24(self.vni)
    }

    fn mac(self) -> MacAddr {
        let b = self.mac.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    location: Location,
    /// `None` for static entries.
    last_seen: Option<Instant>,
    /// Learned by another replica: never aged here.
    mirrored: bool,
}

/// What [`Fdb::forget_mirrored`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgotten {
    /// The mirrored entry was removed.
    Removed,
    /// The entry was learned by this replica too, and stays.
    Kept(Location),
    /// A static entry holds the MAC, and stays.
    Static,
    /// There was no entry.
    Absent,
}

/// MAC learning per VNI.
#[derive(Debug, Clone)]
pub struct Fdb {
    config: FdbConfig,
    entries: FxHashMap<Key, Entry>,
    learned: usize,
    per_location: FxHashMap<Location, usize>,
}

impl Fdb {
    /// An empty database.
    pub fn new(config: FdbConfig) -> Self {
        Fdb {
            config,
            entries: FxHashMap::default(),
            learned: 0,
            per_location: FxHashMap::default(),
        }
    }

    /// The limits and timers in force.
    pub fn config(&self) -> &FdbConfig {
        &self.config
    }

    /// Where frames to `mac` on `vni` go, if known.
    #[inline]
    pub fn lookup(&self, vni: Vni, mac: MacAddr) -> Option<Location> {
        self.entries.get(&Key::new(vni, mac)).map(|e| e.location)
    }

    /// Records that `mac` was seen as a source on `vni` at `location`.
    pub fn learn(&mut self, now: Instant, vni: Vni, mac: MacAddr, location: Location) -> Learned {
        let key = Key::new(vni, mac);
        if let Some(entry) = self.entries.get_mut(&key) {
            let Some(last_seen) = entry.last_seen.as_mut() else {
                return Learned::Static;
            };
            if entry.location == location {
                *last_seen = now;
                entry.mirrored = false;
                return Learned::Refreshed;
            }
        }
        let full = self.location_full(location);
        if let Some(entry) = self.entries.get_mut(&key) {
            if full {
                return Learned::Full;
            }
            let from = entry.location;
            entry.location = location;
            entry.mirrored = false;
            entry.last_seen = Some(now);
            self.uncount(from);
            self.count(location);
            return Learned::Moved { from };
        }
        if self.learned >= self.config.max_entries || full {
            return Learned::Full;
        }
        self.entries.insert(
            key,
            Entry {
                location,
                last_seen: Some(now),
                mirrored: false,
            },
        );
        self.learned += 1;
        self.count(location);
        Learned::New
    }

    /// Records what another replica learned: `mac` on `vni` is at `location`. Static entries
    /// and this replica's own entry at the same location stay as they are; otherwise the entry
    /// becomes a mirrored one (limits permitting). Returns true when something changed.
    pub fn mirror(&mut self, now: Instant, vni: Vni, mac: MacAddr, location: Location) -> bool {
        let key = Key::new(vni, mac);
        if let Some(entry) = self.entries.get_mut(&key) {
            if entry.last_seen.is_none() || entry.location == location {
                return false;
            }
            let from = entry.location;
            entry.location = location;
            entry.last_seen = Some(now);
            entry.mirrored = true;
            self.uncount(from);
            self.count(location);
            return true;
        }
        if self.learned >= self.config.max_entries {
            return false;
        }
        self.entries.insert(
            key,
            Entry {
                location,
                last_seen: Some(now),
                mirrored: true,
            },
        );
        self.learned += 1;
        self.count(location);
        true
    }

    /// Another replica forgot `mac` on `vni`: removes the entry if it is mirrored.
    pub fn forget_mirrored(&mut self, vni: Vni, mac: MacAddr) -> Forgotten {
        let key = Key::new(vni, mac);
        match self.entries.get(&key) {
            None => Forgotten::Absent,
            Some(entry) if entry.last_seen.is_none() => Forgotten::Static,
            Some(entry) if !entry.mirrored => Forgotten::Kept(entry.location),
            Some(_) => {
                if let Some(old) = self.entries.remove(&key) {
                    self.forget(&old);
                }
                Forgotten::Removed
            }
        }
    }

    /// Pins `mac` on `vni` to `location`: never aged, never overwritten by learning. Replaces any
    /// entry for the MAC and returns its location.
    pub fn insert_static(
        &mut self,
        vni: Vni,
        mac: MacAddr,
        location: Location,
    ) -> Option<Location> {
        let old = self.entries.insert(
            Key::new(vni, mac),
            Entry {
                location,
                last_seen: None,
                mirrored: false,
            },
        );
        old.map(|old| {
            self.forget(&old);
            old.location
        })
    }

    /// Whether `mac` on `vni` has a static entry.
    pub fn is_static(&self, vni: Vni, mac: MacAddr) -> bool {
        self.entries
            .get(&Key::new(vni, mac))
            .is_some_and(|e| e.last_seen.is_none())
    }

    /// Removes the entry for `mac` on `vni`, static or learned, and returns its location.
    pub fn remove(&mut self, vni: Vni, mac: MacAddr) -> Option<Location> {
        let old = self.entries.remove(&Key::new(vni, mac))?;
        self.forget(&old);
        Some(old.location)
    }

    /// Removes every entry pointing at a local port; returns how many.
    pub fn remove_port(&mut self, port: PortId) -> usize {
        self.remove_where(|_, e| e.location == Location::Port(port))
    }

    /// Removes every entry pointing at a peer; returns how many.
    pub fn remove_peer(&mut self, peer: PeerId) -> usize {
        self.remove_where(|_, e| e.location == Location::Peer(peer))
    }

    /// Removes every entry of a VNI; returns how many.
    pub fn remove_vni(&mut self, vni: Vni) -> usize {
        let vni = vni.get();
        self.remove_where(|k, _| k.vni == vni)
    }

    /// Removes the learned entries not seen for the aging time; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        self.expire_with(now, |_, _| {})
    }

    /// Like [`expire`](Fdb::expire), telling `expired` of each entry removed. Mirrored entries
    /// never expire here.
    pub fn expire_with(&mut self, now: Instant, mut expired: impl FnMut(Vni, MacAddr)) -> usize {
        let aging = self.config.aging;
        self.remove_where(|key, e| {
            let old = !e.mirrored
                && e.last_seen
                    .is_some_and(|seen| now.saturating_duration_since(seen) >= aging);
            if old {
                expired(key.vni(), key.mac());
            }
            old
        })
    }

    /// Number of entries, static included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of learned entries (those that count against the limits).
    pub fn learned_len(&self) -> usize {
        self.learned
    }

    /// Number of learned entries on a local port.
    pub fn port_len(&self, port: PortId) -> usize {
        self.location_len(Location::Port(port))
    }

    /// Number of learned entries behind a peer.
    pub fn peer_len(&self, peer: PeerId) -> usize {
        self.location_len(Location::Peer(peer))
    }

    fn location_len(&self, location: Location) -> usize {
        self.per_location.get(&location).copied().unwrap_or(0)
    }

    fn location_full(&self, location: Location) -> bool {
        let limit = match location {
            Location::Port(_) => self.config.max_per_port,
            Location::Peer(_) => self.config.max_per_peer,
        };
        self.location_len(location) >= limit
    }

    /// Every entry, with ages relative to `now`, in no particular order.
    pub fn iter(&self, now: Instant) -> impl Iterator<Item = FdbEntry> + '_ {
        self.entries.iter().map(move |(key, entry)| FdbEntry {
            vni: key.vni(),
            mac: key.mac(),
            location: entry.location,
            is_static: entry.last_seen.is_none(),
            age: entry
                .last_seen
                .map(|seen| now.saturating_duration_since(seen)),
            mirrored: entry.mirrored,
        })
    }

    fn remove_where(&mut self, mut pred: impl FnMut(&Key, &Entry) -> bool) -> usize {
        let before = self.entries.len();
        let mut learned = 0;
        let per_location = &mut self.per_location;
        self.entries.retain(|key, entry| {
            if !pred(key, entry) {
                return true;
            }
            if entry.last_seen.is_some() {
                learned += 1;
                if let Some(n) = per_location.get_mut(&entry.location) {
                    *n = n.saturating_sub(1);
                }
            }
            false
        });
        self.learned -= learned;
        self.per_location.retain(|_, n| *n > 0);
        before - self.entries.len()
    }

    fn forget(&mut self, old: &Entry) {
        if old.last_seen.is_some() {
            self.learned -= 1;
            self.uncount(old.location);
        }
    }

    fn count(&mut self, location: Location) {
        *self.per_location.entry(location).or_insert(0) += 1;
    }

    fn uncount(&mut self, location: Location) {
        if let Some(n) = self.per_location.get_mut(&location) {
            *n -= 1;
            if *n == 0 {
                self.per_location.remove(&location);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([0x02, 0, b[0], b[1], b[2], b[3]])
    }

    fn vni(n: u32) -> Vni {
        Vni::try_from(n).unwrap()
    }

    const P1: Location = Location::Port(PortId(1));
    const P2: Location = Location::Port(PortId(2));
    const R1: Location = Location::Peer(PeerId(1));
    const R2: Location = Location::Peer(PeerId(2));

    #[test]
    fn learn_lookup_refresh() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig::default());
        assert_eq!(fdb.lookup(vni(42), mac(1)), None);
        assert_eq!(fdb.learn(t0, vni(42), mac(1), P1), Learned::New);
        assert_eq!(fdb.lookup(vni(42), mac(1)), Some(P1));
        assert_eq!(fdb.lookup(vni(43), mac(1)), None);
        assert_eq!(fdb.learn(t0, vni(42), mac(1), P1), Learned::Refreshed);
        assert_eq!(fdb.learned_len(), 1);
        assert_eq!(fdb.port_len(PortId(1)), 1);
    }

    #[test]
    fn aging_default_300s() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig::default());
        let _ = fdb.learn(t0, vni(42), mac(1), P1);
        let _ = fdb.learn(t0 + Duration::from_secs(100), vni(42), mac(2), R1);
        assert_eq!(fdb.expire(t0 + Duration::from_secs(299)), 0);
        assert_eq!(fdb.expire(t0 + Duration::from_secs(300)), 1);
        assert_eq!(fdb.lookup(vni(42), mac(1)), None);
        assert_eq!(fdb.lookup(vni(42), mac(2)), Some(R1));
        assert_eq!(fdb.port_len(PortId(1)), 0);
        assert_eq!(fdb.expire(t0 + Duration::from_secs(400)), 1);
        assert!(fdb.is_empty());
        assert_eq!(fdb.learned_len(), 0);
    }

    #[test]
    fn refresh_postpones_aging() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig {
            aging: Duration::from_secs(10),
            ..FdbConfig::default()
        });
        let _ = fdb.learn(t0, vni(42), mac(1), P1);
        let _ = fdb.learn(t0 + Duration::from_secs(8), vni(42), mac(1), P1);
        assert_eq!(fdb.expire(t0 + Duration::from_secs(12)), 0);
        assert_eq!(fdb.expire(t0 + Duration::from_secs(18)), 1);
    }

    #[test]
    fn moves() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig::default());
        let _ = fdb.learn(t0, vni(42), mac(1), P1);
        assert_eq!(
            fdb.learn(t0, vni(42), mac(1), R1),
            Learned::Moved { from: P1 }
        );
        assert_eq!(fdb.port_len(PortId(1)), 0);
        assert_eq!(
            fdb.learn(t0, vni(42), mac(1), R2),
            Learned::Moved { from: R1 }
        );
        assert_eq!(
            fdb.learn(t0, vni(42), mac(1), P2),
            Learned::Moved { from: R2 }
        );
        assert_eq!(fdb.port_len(PortId(2)), 1);
        assert_eq!(fdb.lookup(vni(42), mac(1)), Some(P2));
        assert_eq!(fdb.learned_len(), 1);
    }

    #[test]
    fn mirrored_entries_follow_the_replica_that_learned_them() {
        let t0 = Instant::now();
        let aging = FdbConfig::default().aging;
        let mut fdb = Fdb::new(FdbConfig::default());
        assert!(fdb.mirror(t0, vni(42), mac(1), R1));
        assert!(!fdb.mirror(t0, vni(42), mac(1), R1));
        assert_eq!(fdb.lookup(vni(42), mac(1)), Some(R1));
        assert!(fdb.iter(t0).next().unwrap().mirrored);
        // Mirrored entries never age here; the replica that learned them says when they go.
        assert_eq!(fdb.expire(t0 + aging * 2), 0);
        assert_eq!(fdb.forget_mirrored(vni(42), mac(1)), Forgotten::Removed);
        assert_eq!(fdb.forget_mirrored(vni(42), mac(1)), Forgotten::Absent);
        assert_eq!(fdb.learned_len(), 0);

        // Local traffic makes a mirrored entry this replica's own.
        assert!(fdb.mirror(t0, vni(42), mac(2), R1));
        assert_eq!(fdb.learn(t0, vni(42), mac(2), R1), Learned::Refreshed);
        assert_eq!(fdb.forget_mirrored(vni(42), mac(2)), Forgotten::Kept(R1));
        // A move seen by another replica overrides an own entry.
        assert!(fdb.mirror(t0, vni(42), mac(2), P1));
        assert_eq!(fdb.lookup(vni(42), mac(2)), Some(P1));
        assert_eq!(fdb.port_len(PortId(1)), 1);

        // Static entries win.
        let _ = fdb.insert_static(vni(42), mac(3), P2);
        assert!(!fdb.mirror(t0, vni(42), mac(3), R2));
        assert_eq!(fdb.forget_mirrored(vni(42), mac(3)), Forgotten::Static);

        // Own entries that expire are reported.
        let _ = fdb.learn(t0, vni(42), mac(4), R2);
        let mut expired = Vec::new();
        fdb.expire_with(t0 + aging, |v, m| expired.push((v, m)));
        assert_eq!(expired, vec![(vni(42), mac(4))]);
    }

    #[test]
    fn static_entries() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig::default());
        let _ = fdb.learn(t0, vni(42), mac(1), R1);
        assert_eq!(fdb.insert_static(vni(42), mac(1), P1), Some(R1));
        assert_eq!(fdb.learned_len(), 0);
        assert_eq!(fdb.learn(t0, vni(42), mac(1), R2), Learned::Static);
        assert_eq!(fdb.lookup(vni(42), mac(1)), Some(P1));
        assert_eq!(fdb.expire(t0 + Duration::from_secs(10_000)), 0);
        let entry = fdb.iter(t0).next().unwrap();
        assert!(entry.is_static);
        assert_eq!(entry.age, None);
        assert_eq!(fdb.remove(vni(42), mac(1)), Some(P1));
        assert!(fdb.is_empty());
    }

    #[test]
    fn limits_hold() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig {
            max_entries: 100,
            max_per_port: 10,
            ..FdbConfig::default()
        });
        for n in 0..50 {
            let _ = fdb.learn(t0, vni(42), mac(n), P1);
        }
        assert_eq!(fdb.port_len(PortId(1)), 10);
        assert_eq!(fdb.learn(t0, vni(42), mac(1000), P1), Learned::Full);
        for n in 100..1000 {
            let _ = fdb.learn(t0, vni(42), mac(n), R1);
        }
        assert_eq!(fdb.learned_len(), 100);
        assert_eq!(fdb.len(), 100);
        assert_eq!(fdb.learn(t0, vni(42), mac(5000), R2), Learned::Full);
        // A move into a full port is refused; the entry stays where it was.
        assert_eq!(fdb.learn(t0, vni(42), mac(100), P1), Learned::Full);
        assert_eq!(fdb.lookup(vni(42), mac(100)), Some(R1));
        // Statics do not count against the learned limit.
        assert_eq!(fdb.insert_static(vni(42), mac(9999), P2), None);
        assert_eq!(fdb.learned_len(), 100);
    }

    #[test]
    fn bulk_removal() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig::default());
        let _ = fdb.learn(t0, vni(42), mac(1), P1);
        let _ = fdb.learn(t0, vni(42), mac(2), R1);
        let _ = fdb.learn(t0, vni(43), mac(3), R1);
        let _ = fdb.learn(t0, vni(43), mac(4), R2);
        let _ = fdb.insert_static(vni(42), mac(5), P1);
        assert_eq!(fdb.remove_port(PortId(1)), 2);
        assert_eq!(fdb.port_len(PortId(1)), 0);
        assert_eq!(fdb.remove_peer(PeerId(1)), 2);
        assert_eq!(fdb.lookup(vni(43), mac(4)), Some(R2));
        assert_eq!(fdb.remove_vni(vni(43)), 1);
        assert!(fdb.is_empty());
        assert_eq!(fdb.learned_len(), 0);
    }

    #[test]
    fn iter_reports_everything() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig::default());
        let _ = fdb.learn(t0, vni(7), mac(1), R1);
        let entries: Vec<_> = fdb.iter(t0 + Duration::from_secs(3)).collect();
        assert_eq!(
            entries,
            vec![FdbEntry {
                vni: vni(7),
                mac: mac(1),
                location: R1,
                is_static: false,
                age: Some(Duration::from_secs(3)),
                mirrored: false,
            }]
        );
    }
}
