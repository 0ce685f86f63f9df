//! The embedded store: one redb file, shared by every process of the machine that opens it.
//!
//! The database is opened in redb's `MultiWriter` mode: any number of processes (the daemon and
//! concurrent CNI plugin invocations) keep it open at once, and redb serializes their write
//! transactions with a byte-range lock on the file. Each transaction commits with
//! `Durability::Immediate` and 2-phase commit, so a process killed at any instant leaves either
//! the state before or the state after its transaction, and the next opener recovers at once.
//!
//! This mode was chosen by measurement against the two ways of sharing an exclusively locked
//! file: opening the database for every operation, with a separate lock file or with retries on
//! the lock. See the crate documentation for the figures.

use std::path::{Path, PathBuf};

use redb::{ConcurrencyMode, Database, ReadableTable, Table, TableDefinition};

use super::{Body, Store, Txn};
use crate::error::Error;

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("ipam");

/// A local store in one redb file, safe for concurrent threads and processes.
pub struct EmbeddedStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens the store at `path`, creating the file if needed (not its directory).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let db = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::MultiWriter)
            .create(&path)
            .map_err(|e| Error::embedded(&path, e))?;
        Ok(Self { db, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

struct RedbTxn<'t> {
    table: Table<'t, &'static str, &'static [u8]>,
    path: &'t Path,
    dirty: bool,
}

impl RedbTxn<'_> {
    fn err(&self, e: impl Into<redb::Error>) -> Error {
        Error::embedded(self.path, e)
    }

    fn under(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let mut out = Vec::new();
        let range = self.table.range(prefix..).map_err(|e| self.err(e))?;
        for entry in range {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            if out.len() >= limit || !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }
}

impl Txn for RedbTxn<'_> {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let value = self.table.get(key).map_err(|e| self.err(e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn first(&mut self, prefix: &str) -> Result<Option<(String, Vec<u8>)>, Error> {
        Ok(self.under(prefix, 1)?.into_iter().next())
    }

    fn scan(&mut self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
        self.under(prefix, usize::MAX)
    }

    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.dirty = true;
        let path = self.path;
        self.table
            .insert(key, value)
            .map_err(|e| Error::embedded(path, e))?;
        Ok(())
    }

    fn put_session(&mut self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.put(key, value)
    }

    fn delete(&mut self, key: &str) -> Result<(), Error> {
        self.dirty = true;
        let path = self.path;
        self.table
            .remove(key)
            .map_err(|e| Error::embedded(path, e))?;
        Ok(())
    }
}

impl Store for EmbeddedStore {
    fn transact(&self, body: &mut Body<'_>) -> Result<(), Error> {
        let err = |e: redb::Error| Error::embedded(&self.path, e);
        let mut wtx = self.db.begin_write().map_err(|e| err(e.into()))?;
        wtx.set_quick_repair(true);
        let dirty = {
            let table = wtx.open_table(TABLE).map_err(|e| err(e.into()))?;
            let mut txn = RedbTxn {
                table,
                path: &self.path,
                dirty: false,
            };
            body(&mut txn)?;
            txn.dirty
        };
        if dirty {
            wtx.commit().map_err(|e| err(e.into()))
        } else {
            wtx.abort().map_err(|e| err(e.into()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_aborts_failed_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.redb");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store
                .transact(&mut |tx| {
                    tx.put("k/1", b"one")?;
                    tx.put("k/2", b"two")?;
                    tx.put("l/1", b"other")?;
                    Ok(())
                })
                .unwrap();
            let failed = store.transact(&mut |tx| {
                tx.delete("k/1")?;
                Err(Error::ShutDown)
            });
            assert!(matches!(failed, Err(Error::ShutDown)));
        }
        let store = EmbeddedStore::open(&path).unwrap();
        store
            .transact(&mut |tx| {
                assert_eq!(tx.get("k/1")?, Some(b"one".to_vec()));
                assert_eq!(tx.first("k/")?.map(|(k, _)| k), Some("k/1".into()));
                assert_eq!(tx.scan("k/")?.len(), 2);
                assert_eq!(tx.first("m/")?, None);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn two_handles_in_one_process_share_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.redb");
        let a = EmbeddedStore::open(&path).unwrap();
        let b = EmbeddedStore::open(&path).unwrap();
        a.transact(&mut |tx| tx.put("x", b"1")).unwrap();
        b.transact(&mut |tx| {
            assert_eq!(tx.get("x")?, Some(b"1".to_vec()));
            tx.put("y", b"2")
        })
        .unwrap();
        a.transact(&mut |tx| {
            assert_eq!(tx.get("y")?, Some(b"2".to_vec()));
            Ok(())
        })
        .unwrap();
    }
}
