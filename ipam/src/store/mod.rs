//! The storage seam: a small transactional key-value interface that every store implements.
//!
//! The allocator ([`crate::alloc`]) is written once against [`Txn`]; a store only has to run a
//! transaction body atomically and in isolation from other writers, in this process or any other:
//!
//! - [`MemStore`]: a map behind a mutex, for tests and single-process use;
//! - [`EmbeddedStore`]: a redb file shared by concurrent processes;
//! - [`EtcdStore`]: an etcd cluster, with optimistic transactions checked at commit.
//!
//! Keys are `/`-separated UTF-8 strings, values are opaque bytes.

mod embedded;
mod etcd;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdConfig, EtcdStore};

use crate::error::Error;

/// One transaction's view of the store.
///
/// Reads see the transaction's own writes. What a commit guarantees about reads depends on the
/// kind of read: every key read with [`Txn::get`] is unchanged by others when the transaction
/// commits (otherwise the store runs the body again); [`Txn::peek`], [`Txn::first`] and
/// [`Txn::scan`] are reads that the commit does not check, so a body must `get` every key its
/// decision rests on.
pub trait Txn {
    /// The value of a key; the commit fails if another writer changes it meanwhile.
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, Error>;
    /// The value of a key, not checked at commit.
    fn peek(&mut self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.get(key)
    }
    /// The entry with the smallest key that starts with `prefix`.
    fn first(&mut self, prefix: &str) -> Result<Option<(String, Vec<u8>)>, Error>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan(&mut self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, Error>;
    /// Sets a key.
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), Error>;
    /// Sets a key that lives only as long as this store's session: with etcd it is bound to a
    /// lease kept alive by this process and vanishes a TTL after the process stops; elsewhere it
    /// is an ordinary key.
    fn put_session(&mut self, key: &str, value: &[u8]) -> Result<(), Error>;
    /// Removes a key; removing an absent key is not an error.
    fn delete(&mut self, key: &str) -> Result<(), Error>;
}

/// The body of a transaction. It may run several times, so it must act only through the [`Txn`].
pub type Body<'a> = dyn FnMut(&mut dyn Txn) -> Result<(), Error> + 'a;

/// A store of IPAM state.
pub trait Store: Send + Sync {
    /// Runs `body` as one atomic transaction, isolated from every other writer of the store.
    ///
    /// If `body` fails, nothing it wrote is kept and its error is returned. Stores with
    /// optimistic concurrency run `body` again when a concurrent writer got in the way.
    fn transact(&self, body: &mut Body<'_>) -> Result<(), Error>;
}

/// Default path of the embedded store.
pub const DEFAULT_EMBEDDED_PATH: &str = "/var/lib/vswitch/ipam.redb";

/// Which store to use, as written in configuration.
///
/// ```toml
/// kind = "embedded"                     # the default
/// path = "/var/lib/vswitch/ipam.redb"
/// ```
///
/// ```toml
/// kind = "etcd"
/// endpoints = ["http://10.0.0.1:2379"]  # plus the other keys of EtcdConfig
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum StoreConfig {
    /// A redb file on this machine.
    Embedded {
        /// The database file.
        path: PathBuf,
    },
    /// An etcd cluster shared by the fleet.
    Etcd(EtcdConfig),
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Embedded {
            path: PathBuf::from(DEFAULT_EMBEDDED_PATH),
        }
    }
}

impl StoreConfig {
    /// Opens (or connects to) the configured store.
    pub fn open(&self) -> Result<Arc<dyn Store>, Error> {
        Ok(match self {
            StoreConfig::Embedded { path } => Arc::new(EmbeddedStore::open(path)?),
            StoreConfig::Etcd(config) => Arc::new(EtcdStore::connect(config)?),
        })
    }
}

/// Writes buffered by a transaction until commit, consulted by its reads.
#[derive(Default, Debug)]
pub(crate) struct Overlay {
    /// `Some((value, session))` for a put, `None` for a delete.
    writes: BTreeMap<String, Option<(Vec<u8>, bool)>>,
}

impl Overlay {
    /// The buffered state of a key: `None` if untouched, `Some(None)` if deleted.
    pub(crate) fn get(&self, key: &str) -> Option<Option<Vec<u8>>> {
        self.writes
            .get(key)
            .map(|w| w.as_ref().map(|(v, _)| v.clone()))
    }

    pub(crate) fn put(&mut self, key: &str, value: &[u8], session: bool) {
        self.writes
            .insert(key.to_owned(), Some((value.to_vec(), session)));
    }

    pub(crate) fn delete(&mut self, key: &str) {
        self.writes.insert(key.to_owned(), None);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Deletes buffered under `prefix`: how many extra entries a limited read must fetch.
    pub(crate) fn deletes_under(&self, prefix: &str) -> usize {
        self.under(prefix).filter(|(_, w)| w.is_none()).count()
    }

    /// Applies the buffered writes to entries read from the store under `prefix`.
    pub(crate) fn merge(
        &self,
        prefix: &str,
        stored: Vec<(String, Vec<u8>)>,
    ) -> Vec<(String, Vec<u8>)> {
        let mut all: BTreeMap<String, Vec<u8>> = stored.into_iter().collect();
        for (k, w) in self.under(prefix) {
            match w {
                Some((v, _)) => all.insert(k.clone(), v.clone()),
                None => all.remove(k),
            };
        }
        all.into_iter().collect()
    }

    fn under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Option<(Vec<u8>, bool)>)> + 'a {
        self.writes
            .range(prefix.to_owned()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// The buffered writes, for commit.
    pub(crate) fn into_writes(self) -> impl Iterator<Item = (String, Option<(Vec<u8>, bool)>)> {
        self.writes.into_iter()
    }
}

/// Committed state that an [`OverlayTxn`] reads through.
pub(crate) trait Backing {
    /// A key's revision (0 when absent, or when the store keeps none) and value.
    fn fetch(&self, key: &str) -> Result<(i64, Option<Vec<u8>>), Error>;
    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    fn range(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, Error>;
}

/// A transaction that buffers its writes in an [`Overlay`] and records the revision of every key
/// it reads with `get`, for a commit to apply and check.
pub(crate) struct OverlayTxn<'a, B: Backing> {
    backing: &'a B,
    pub(crate) reads: HashMap<String, i64>,
    pub(crate) overlay: Overlay,
}

impl<'a, B: Backing> OverlayTxn<'a, B> {
    pub(crate) fn new(backing: &'a B) -> Self {
        Self {
            backing,
            reads: HashMap::new(),
            overlay: Overlay::default(),
        }
    }
}

impl<B: Backing> Txn for OverlayTxn<'_, B> {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        if let Some(buffered) = self.overlay.get(key) {
            return Ok(buffered);
        }
        let (revision, value) = self.backing.fetch(key)?;
        self.reads.entry(key.to_owned()).or_insert(revision);
        Ok(value)
    }

    fn peek(&mut self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.overlay.get(key) {
            Some(buffered) => Ok(buffered),
            None => Ok(self.backing.fetch(key)?.1),
        }
    }

    fn first(&mut self, prefix: &str) -> Result<Option<(String, Vec<u8>)>, Error> {
        let limit = 1 + self.overlay.deletes_under(prefix);
        let stored = self.backing.range(prefix, limit)?;
        Ok(self.overlay.merge(prefix, stored).into_iter().next())
    }

    fn scan(&mut self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let stored = self.backing.range(prefix, usize::MAX)?;
        Ok(self.overlay.merge(prefix, stored))
    }

    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.overlay.put(key, value, false);
        Ok(())
    }

    fn put_session(&mut self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.overlay.put(key, value, true);
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<(), Error> {
        self.overlay.delete(key);
        Ok(())
    }
}

/// An in-memory store: one mutex around an ordered map. Transactions are serialized by the mutex.
#[derive(Debug, Default)]
pub struct MemStore {
    map: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The committed map, as a [`Backing`] for [`OverlayTxn`].
struct MemView<'a>(&'a BTreeMap<String, Vec<u8>>);

impl Backing for MemView<'_> {
    fn fetch(&self, key: &str) -> Result<(i64, Option<Vec<u8>>), Error> {
        Ok((0, self.0.get(key).cloned()))
    }

    fn range(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, Error> {
        Ok(self
            .0
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl Store for MemStore {
    fn transact(&self, body: &mut Body<'_>) -> Result<(), Error> {
        // A body that panicked cannot have committed anything: the map is still consistent.
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let view = MemView(&map);
        let mut txn = OverlayTxn::new(&view);
        body(&mut txn)?;
        let overlay = txn.overlay;
        for (key, write) in overlay.into_writes() {
            match write {
                Some((value, _)) => map.insert(key, value),
                None => map.remove(&key),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn store_config_forms() {
        let e: StoreConfig =
            serde_json::from_str(r#"{"kind":"embedded","path":"/tmp/x"}"#).unwrap();
        assert_eq!(
            e,
            StoreConfig::Embedded {
                path: "/tmp/x".into()
            }
        );
        let t: StoreConfig =
            serde_json::from_str(r#"{"kind":"etcd","endpoints":["http://h:2379"],"ttl_secs":3}"#)
                .unwrap();
        let StoreConfig::Etcd(c) = t else {
            panic!("not etcd")
        };
        assert_eq!((c.endpoints.len(), c.ttl_secs, c.timeout_secs), (1, 3, 5));
    }

    #[test]
    fn overlay_is_visible_and_failed_bodies_leave_nothing() {
        let store = MemStore::new();
        store
            .transact(&mut |tx| {
                tx.put("a/1", b"x")?;
                tx.put("a/2", b"y")?;
                tx.put("b/1", b"z")?;
                assert_eq!(tx.get("a/1")?, Some(b"x".to_vec()));
                tx.delete("a/1")?;
                assert_eq!(tx.get("a/1")?, None);
                assert_eq!(tx.first("a/")?.map(|(k, _)| k), Some("a/2".to_owned()));
                Ok(())
            })
            .unwrap();
        let failed = store.transact(&mut |tx| {
            tx.delete("a/2")?;
            Err(Error::ShutDown)
        });
        assert!(failed.is_err());
        store
            .transact(&mut |tx| {
                let keys: Vec<String> = tx.scan("a/")?.into_iter().map(|(k, _)| k).collect();
                assert_eq!(keys, ["a/2"]);
                assert_eq!(tx.scan("")?.len(), 2);
                Ok(())
            })
            .unwrap();
    }
}
