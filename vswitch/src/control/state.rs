//! What the daemon must remember across restarts: the containers it attached, and the attach
//! in progress, if any (a record with an [`Intent`], saved before the attach changes anything
//! outside the daemon, so that the next start can undo it). One JSON file in the state
//! directory, replaced atomically (write, fsync, rename, fsync the directory) so a crash leaves
//! either the old or the new list, never a torn one.
//!
//! The state directory is the daemon's own: created mode 0700, and refused when it is not a
//! directory, belongs to another user, or is writable by group or others (anyone who can write
//! there could swap the files). Files are created mode 0600, never through a symlink
//! (`O_NOFOLLOW`, a fresh temporary file, a rename over the old one), and a symlink found at
//! the list's path is an error.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
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
    /// Present while the attach is in progress: it was not answered, and is undone (not
    /// finished) if the daemon stops before it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
    /// The interface was set up by a privileged helper, which handed its queues over: the
    /// daemon never sets it up, re-opens or removes it itself (it may lack the privilege);
    /// only the helper does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_helper: bool,
}

/// What undoing an attach in progress needs beyond its attachment: how `lo` was in the
/// container before (the attach brings it up, and the kernel gives it addresses then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Whether `lo` was up.
    pub lo_was_up: bool,
    /// The addresses `lo` had.
    #[serde(default)]
    pub lo_addresses: Vec<IpNet>,
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
    /// The state directory could be tampered with by someone else.
    #[error("state directory {path}: {reason}")]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
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
    /// The list kept in `state_dir`, which is created (mode 0700) if needed and checked.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        prepare_state_dir(state_dir)?;
        let path = state_dir.join("ports.json");
        // A list written by an older daemon may be readable by others: no longer.
        if let Ok(meta) = fs::symlink_metadata(&path)
            && meta.is_file()
            && meta.mode() & 0o077 != 0
        {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|source| {
                StateError::Io {
                    op: "restricting",
                    path: path.clone(),
                    source,
                }
            })?;
        }
        Ok(Self { path })
    }

    /// Every recorded attachment; none when the file does not exist yet.
    pub fn load(&self) -> Result<Vec<PortRecord>, StateError> {
        let io = |op| {
            let path = self.path.clone();
            move |source| StateError::Io { op, path, source }
        };
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&self.path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(io("refusing to follow a symlink at")(e));
            }
            Err(source) => return Err(io("reading")(source)),
        };
        if !file.metadata().map_err(io("reading"))?.is_file() {
            return Err(io("reading")(std::io::Error::other("not a regular file")));
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io("reading"))?;
        serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
            path: self.path.clone(),
            source,
        })
    }

    /// Replaces the list, durably.
    pub fn save(&self, records: &[PortRecord]) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(records).map_err(|source| StateError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        write_private(&self.path, &json)
    }
}

/// Replaces the file at `path` (in the state directory) with `bytes`, durably and atomically:
/// a fresh private temporary file, fsync, rename over the old one, fsync the directory.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Io { op, path, source }
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A fresh file: never one left behind, never through a symlink put in its place.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("removing", &tmp)(e));
        }
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    let written = file
        .write_all(bytes)
        .map_err(io("writing", &tmp))
        .and_then(|()| file.sync_all().map_err(io("syncing", &tmp)))
        .and_then(|()| fs::rename(&tmp, path).map_err(io("renaming", &tmp)));
    if let Err(e) = written {
        // Leave no half-written file holding the space that ran out.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", dir))?;
    }
    Ok(())
}

/// Creates the state directory (mode 0700) or checks the one there: a directory (a symlink to
/// one is followed: an administrator's choice), owned by this user, not writable by group or
/// others.
fn prepare_state_dir(dir: &Path) -> Result<(), StateError> {
    let unsafe_dir = |reason: String| StateError::Unsafe {
        path: dir.to_owned(),
        reason,
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| StateError::Io {
            op: "creating",
            path: parent.to_owned(),
            source,
        })?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(StateError::Io {
                op: "creating",
                path: dir.to_owned(),
                source,
            });
        }
    }
    let meta = fs::metadata(dir).map_err(|source| StateError::Io {
        op: "checking",
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(unsafe_dir("not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_dir(format!(
            "owned by uid {}, not by the daemon's uid {me}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "mode {:o} lets group or others write in it; chmod go-w it",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> PortRecord {
        PortRecord {
            attachment: Attachment::example(id),
            netns_id: (4, 4026532000),
            intent: None,
            by_helper: false,
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
        // An attach in progress keeps its intent; a record without one reads as done.
        let mut pending = record("c");
        pending.intent = Some(Intent {
            lo_was_up: false,
            lo_addresses: Vec::new(),
        });
        store.save(&[pending.clone()]).unwrap();
        assert_eq!(store.load().unwrap(), vec![pending]);
        let text = fs::read_to_string(dir.path().join("ports.json")).unwrap();
        assert!(!text.contains("\"intent\": null"), "{text}");
    }

    #[test]
    fn files_are_private_and_never_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = PortStore::open(&state).unwrap();
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        store.save(&[record("a")]).unwrap();
        let list = state.join("ports.json");
        assert_eq!(fs::metadata(&list).unwrap().mode() & 0o777, 0o600);

        // A symlink at the list's path is refused, and replaced (not followed) by a save.
        let target = dir.path().join("target");
        fs::write(&target, "precious").unwrap();
        fs::remove_file(&list).unwrap();
        std::os::unix::fs::symlink(&target, &list).unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        store.save(&[record("b")]).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert!(!fs::symlink_metadata(&list).unwrap().is_symlink());

        // So is one at the temporary file's path.
        std::os::unix::fs::symlink(&target, state.join("ports.json.tmp")).unwrap();
        store.save(&[record("c")]).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(store.load().unwrap(), vec![record("c")]);
    }

    #[test]
    fn a_state_dir_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
        let e = PortStore::open(&state).unwrap_err().to_string();
        assert!(e.contains("group or others"), "{e}");
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        PortStore::open(&state).unwrap();
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        let e = PortStore::open(&file).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
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
