//! The queue keeper: a small process, of the daemon's user and without privileges, that holds
//! a copy of the queues helpers handed to the daemon, so that a daemon restarted without
//! privileges gets them back (it could not re-open them: a TAP is found by name in the
//! namespace of the process that opens `/dev/net/tun`, and only `CAP_SYS_ADMIN` enters the
//! container's).
//!
//! The daemon starts it (`vswitchd --config FILE --keep-queues`, in a process group of its own
//! so that it outlives the daemon) the first time it needs it, and speaks to it on
//! `keeper.sock` in the state directory: only its own user may (`SO_PEERCRED`). One JSON line
//! per message, queues attached as `SCM_RIGHTS`:
//!
//! - `{"op":"keep","key":K,"offloads":N}` with the queues: keeps them under `K` (replacing);
//! - `{"op":"drop","key":K}`: closes them;
//! - `{"op":"give"}`: answered with one `{"key":K,"offloads":N}` message per entry, queues
//!   attached, then `{"end":true}`.
//!
//! It holds nothing else and does nothing else. It exits when its socket file is removed (the
//! state directory went away) and when it holds nothing after a drop.

use std::collections::BTreeMap;
use std::io::ErrorKind as IoKind;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The keeper's socket in a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("keeper.sock")
}

/// A message to the keeper.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Message {
    Keep { key: String, offloads: u32 },
    Drop { key: String },
    Give,
}

/// One entry given back, or the end of them.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Given {
    #[serde(default)]
    key: String,
    #[serde(default)]
    offloads: u32,
    #[serde(default)]
    end: bool,
}

/// Queues the keeper gave back: key, offloads, descriptors.
pub type Kept = Vec<(String, u32, Vec<OwnedFd>)>;

/// Why talking to the keeper failed.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    /// The socket.
    #[error("queue keeper: {0}")]
    Io(#[from] std::io::Error),
    /// Sending or receiving descriptors.
    #[error("queue keeper: {0}")]
    Fds(#[from] netns::Error),
    /// A message that is not one.
    #[error("queue keeper: malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

fn send(stream: &UnixStream, message: &impl Serialize, fds: &[OwnedFd]) -> Result<(), KeeperError> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    netns::send_with_fds(stream.as_fd(), &line, &netns::borrow_all(fds))?;
    Ok(())
}

/// One message: its bytes and the descriptors that came with them.
type Received = (Vec<u8>, Vec<OwnedFd>);

/// Reads one message (one `recvmsg`: the sender writes each line whole).
fn receive(stream: &UnixStream) -> Result<Option<Received>, KeeperError> {
    let mut buf = vec![0u8; 4096];
    let (n, fds) = netns::recv_with_fds(stream.as_fd(), &mut buf, netns::MAX_FDS)?;
    if n == 0 {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some((buf, fds)))
}

fn connect(socket: &Path) -> Result<UnixStream, KeeperError> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    Ok(stream)
}

/// Has the keeper at `socket` keep `queues` under `key` (it gets its own copies).
pub fn keep(
    socket: &Path,
    key: &str,
    offloads: u32,
    queues: &[OwnedFd],
) -> Result<(), KeeperError> {
    let stream = connect(socket)?;
    send(
        &stream,
        &Message::Keep {
            key: key.to_owned(),
            offloads,
        },
        queues,
    )
}

/// Has the keeper close what it keeps under `key`.
pub fn drop_kept(socket: &Path, key: &str) -> Result<(), KeeperError> {
    let stream = connect(socket)?;
    send(
        &stream,
        &Message::Drop {
            key: key.to_owned(),
        },
        &[],
    )
}

/// Everything the keeper at `socket` keeps (copies: it keeps them too).
pub fn give(socket: &Path) -> Result<Kept, KeeperError> {
    let stream = connect(socket)?;
    send(&stream, &Message::Give, &[])?;
    let mut kept = Vec::new();
    while let Some((line, fds)) = receive(&stream)? {
        let given: Given = serde_json::from_slice(&line)?;
        if given.end {
            break;
        }
        kept.push((given.key, given.offloads, fds));
    }
    Ok(kept)
}

/// Whether a keeper answers at `socket`.
pub fn is_running(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// Runs the keeper on `socket` until its socket file is removed, or it holds nothing after a
/// drop. Only clients of its own user are served.
pub fn run(socket: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    if socket.exists() {
        std::fs::remove_file(socket).with_context(|| format!("removing {}", socket.display()))?;
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", socket.display()))?;
    listener.set_nonblocking(true)?;
    let own = nix::unistd::getuid().as_raw();
    let mut kept: BTreeMap<String, (u32, Vec<OwnedFd>)> = BTreeMap::new();
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == IoKind::WouldBlock => {
                if !socket.exists() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Err(e) => {
                tracing::warn!("queue keeper: {e}");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let same_user =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .is_ok_and(|cred| cred.uid() == own);
        if !same_user || stream.set_nonblocking(false).is_err() {
            continue;
        }
        let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
        let _ = stream.set_write_timeout(Some(ANSWER_TIMEOUT));
        match serve(&stream, &mut kept) {
            Ok(true) if kept.is_empty() => return Ok(()),
            Ok(_) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// Serves one message; `Ok(true)` after a drop.
fn serve(
    stream: &UnixStream,
    kept: &mut BTreeMap<String, (u32, Vec<OwnedFd>)>,
) -> Result<bool, KeeperError> {
    let Some((line, fds)) = receive(stream)? else {
        return Ok(false);
    };
    match serde_json::from_slice::<Message>(&line)? {
        Message::Keep { key, offloads } => {
            kept.insert(key, (offloads, fds));
            Ok(false)
        }
        Message::Drop { key } => {
            kept.remove(&key);
            Ok(true)
        }
        Message::Give => {
            for (key, (offloads, queues)) in kept.iter() {
                let copies = queues
                    .iter()
                    .map(OwnedFd::try_clone)
                    .collect::<Result<Vec<_>, _>>()?;
                let given = Given {
                    key: key.clone(),
                    offloads: *offloads,
                    end: false,
                };
                send(stream, &given, &copies)?;
            }
            let end = Given {
                key: String::new(),
                offloads: 0,
                end: true,
            };
            send(stream, &end, &[])?;
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_queues_come_back_and_dropped_ones_do_not() {
        let dir = std::env::temp_dir().join(format!("vswitch-keeper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = socket_path(&dir);
        let keeper = {
            let socket = socket.clone();
            std::thread::spawn(move || run(&socket))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !is_running(&socket) {
            assert!(
                std::time::Instant::now() < deadline,
                "the keeper did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let (mine, theirs) = UnixStream::pair().unwrap();
        keep(&socket, "c1/eth0", 3, &[OwnedFd::from(theirs)]).unwrap();
        let (other, _) = UnixStream::pair().unwrap();
        keep(&socket, "c2/eth0", 0, &[OwnedFd::from(other)]).unwrap();
        let mut given = give(&socket).unwrap();
        assert_eq!(given.len(), 2);
        let (key, offloads, fds) = given.remove(0);
        assert_eq!((key.as_str(), offloads, fds.len()), ("c1/eth0", 3, 1));
        // The copy given back is the same socket: what is written to it reaches `mine`.
        let copy = UnixStream::from(fds.into_iter().next().unwrap());
        std::io::Write::write_all(&mut &copy, b"x").unwrap();
        let mut got = [0u8; 1];
        std::io::Read::read_exact(&mut &mine, &mut got).unwrap();
        drop_kept(&socket, "c1/eth0").unwrap();
        let given = give(&socket).unwrap();
        assert_eq!(given.len(), 1);
        assert_eq!(given[0].0, "c2/eth0");
        drop_kept(&socket, "c2/eth0").unwrap();
        // Holding nothing after a drop, it exits.
        keeper.join().unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
