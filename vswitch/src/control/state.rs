//! What the daemon must remember across restarts: the containers it attached. One JSON file in
//! the state directory, replaced atomically (write, fsync, rename, fsync the directory) so a
//! crash leaves either the old or the new list, never a torn one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::api::Attachment;

/// An attachment and the identity of the namespace it was made in, so a namespace that was
/// deleted and re-created under the same name is not mistaken for the original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRecord {
    /// What was attached.
    pub attachment: Attachment,
    /// The namespace's (device, inode).
    pub netns_id: (u64, u64),
}

/// Why the attachment list could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file exists but is not a list of attachments.
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
}

/// The attachment list on disk.
#[derive(Debug)]
pub struct PortStore {
    path: PathBuf,
}

impl PortStore {
    /// The list kept in `state_dir`, created if needed.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        fs::create_dir_all(state_dir).map_err(|source| StateError::Io {
            op: "creating",
            path: state_dir.to_owned(),
            source,
        })?;
        Ok(Self {
            path: state_dir.join("ports.json"),
        })
    }

    /// Every recorded attachment; none when the file does not exist yet.
    pub fn load(&self) -> Result<Vec<PortRecord>, StateError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Io {
                    op: "reading",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
            path: self.path.clone(),
            source,
        })
    }

    /// Replaces the list, durably.
    pub fn save(&self, records: &[PortRecord]) -> Result<(), StateError> {
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { op, path, source }
        };
        let tmp = self.path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(records).map_err(|source| StateError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        let mut file = File::create(&tmp).map_err(io("creating", &tmp))?;
        file.write_all(&json).map_err(io("writing", &tmp))?;
        file.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, &self.path).map_err(io("renaming", &tmp))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing", dir))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> PortRecord {
        PortRecord {
            attachment: Attachment::example(id),
            netns_id: (4, 4026532000),
        }
    }

    #[test]
    fn records_survive_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = PortStore::open(dir.path()).unwrap();
        assert!(store.load().unwrap().is_empty());
        let records = vec![record("a"), record("b")];
        store.save(&records).unwrap();
        assert_eq!(store.load().unwrap(), records);
        store.save(&records[..1]).unwrap();
        assert_eq!(store.load().unwrap(), records[..1]);
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = PortStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("ports.json"), "{not json").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("ports.json is corrupt"), "{e}");
    }
}
