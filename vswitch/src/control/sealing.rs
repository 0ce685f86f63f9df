//! Sealed networks on the control plane: this node's private key, the handshakes with its
//! peers, and the sessions installed on every worker.
//!
//! One thread owns the [`crypto::Handshaker`]. The workers hand it the handshake messages they
//! receive and the peers they hold frames for; it answers, retransmits and rekeys on its
//! timers, sends its messages through the first worker's underlay, and installs each session
//! it completes on every worker (each its own counter lane) and retires old ones. It connects
//! to every peer of a sealed network at start, so sessions are usually up before the first
//! frame.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use crypto::{Event, Handshaker, PublicKey, Role, SessionKeys, StaticSecret};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::config::Config;
use crate::io::{Command, SealingEvent, Workers};

/// How one peer's session stands, for `vswitch peers` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// `up` once a session was made, `handshaking` before.
    pub state: String,
    /// Seconds since the last session was made, if one was.
    pub last_handshake_secs: Option<u64>,
    /// Sessions made with the peer since start (the first one and every rekey).
    pub handshakes: u64,
}

/// Each sealed peer's session and when it was last made, shared by the handshake thread and
/// queries.
type StatusBoard = Arc<Mutex<BTreeMap<SocketAddr, (SessionStatus, Option<Instant>)>>>;

/// The handshake thread's view for queries. The thread itself ends when the datapath's
/// workers, which send it its events, are gone.
pub struct Sealing {
    status: StatusBoard,
}

/// Reads a private key file written by [`write_private_key`].
pub fn read_private_key(path: &Path) -> anyhow::Result<StaticSecret> {
    let text = zeroize::Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    StaticSecret::from_base64(text.trim())
        .with_context(|| format!("{} does not hold a private key", path.display()))
}

/// Writes a new private key to `path`, mode 0600, refusing to replace an existing file.
pub fn write_private_key(path: &Path, secret: &StaticSecret) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (an existing key is never replaced)",
                path.display()
            )
        })?;
    let text = secret.to_base64();
    file.write_all(text.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

impl Sealing {
    /// Starts the handshake thread when a network is sealed; `None` when none is.
    pub fn start(config: &Config, workers: Workers) -> anyhow::Result<Option<Sealing>> {
        if !config.networks.iter().any(|n| n.encryption) {
            return Ok(None);
        }
        let path = config
            .node
            .private_key
            .as_deref()
            .context("node.private_key is needed for a sealed network")?;
        let secret = read_private_key(path)?;
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut handshaker =
            Handshaker::new(secret, Instant::now(), unix).context("setting up the handshakes")?;
        let mut peers = Vec::new();
        for (i, peer) in config.peers.iter().enumerate() {
            let Some(text) = &peer.public_key else {
                continue;
            };
            if !config.peer_networks(peer).any(|n| n.encryption) {
                continue;
            }
            let key: PublicKey = text
                .parse()
                .with_context(|| format!("peers[{i}].public_key"))?;
            let id = handshaker
                .add_peer(key, None)
                .with_context(|| format!("peers[{i}].public_key"))?;
            peers.push((id, peer.endpoint(config.node.port)));
        }
        let (events, inbox) = mpsc::channel();
        workers
            .ask(|reply| Command::SetSealingEvents {
                events: events.clone(),
                reply,
            })
            .context("reaching the datapath")?;
        let status = Arc::new(Mutex::new(
            peers
                .iter()
                .map(|&(_, addr)| (addr, (SessionStatus::default(), None)))
                .collect(),
        ));
        let mut thread = Handshakes {
            handshaker,
            rng: StdRng::from_os_rng(),
            peers,
            workers,
            inbox,
            status: Arc::clone(&status),
        };
        std::thread::Builder::new()
            .name("handshakes".into())
            .spawn(move || thread.run())
            .context("starting the handshake thread")?;
        Ok(Some(Sealing { status }))
    }

    /// Each sealed peer's session, by address.
    pub fn status(&self) -> BTreeMap<SocketAddr, SessionStatus> {
        let now = Instant::now();
        let status = self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        status
            .iter()
            .map(|(&addr, (s, at))| {
                let mut s = s.clone();
                s.last_handshake_secs = at.map(|at| now.saturating_duration_since(at).as_secs());
                if s.state.is_empty() {
                    s.state = "handshaking".into();
                }
                (addr, s)
            })
            .collect()
    }
}

/// The state of the handshake thread.
struct Handshakes {
    handshaker: Handshaker,
    rng: StdRng,
    peers: Vec<(crypto::PeerId, SocketAddr)>,
    workers: Workers,
    inbox: mpsc::Receiver<SealingEvent>,
    status: StatusBoard,
}

/// Longest the thread sleeps without looking at its timers.
const TICK: Duration = Duration::from_secs(1);

impl Handshakes {
    fn run(&mut self) {
        let now = Instant::now();
        for &(peer, _) in &self.peers {
            if let Err(e) = self.handshaker.connect(peer, now, &mut self.rng) {
                warn!("starting a handshake: {e}");
            }
        }
        self.flush();
        loop {
            let wait = self
                .handshaker
                .poll_timeout()
                .map_or(TICK, |t| t.saturating_duration_since(Instant::now()))
                .min(TICK);
            match self.inbox.recv_timeout(wait) {
                Ok(SealingEvent::Handshake { from, message }) => self.on_message(from, &message),
                Ok(SealingEvent::SessionWanted(addr)) => {
                    if let Some(peer) = self.peer_at(addr)
                        && let Err(e) = self.handshaker.connect(peer, Instant::now(), &mut self.rng)
                    {
                        warn!(%addr, "starting a handshake: {e}");
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.handshaker
                .handle_timeout(Instant::now(), &mut self.rng);
            self.flush();
        }
    }

    fn on_message(&mut self, from: SocketAddr, message: &[u8]) {
        match self
            .handshaker
            .handle_message(Instant::now(), from, message, &mut self.rng)
        {
            Ok(outcome) => {
                if let Some(reply) = outcome.reply {
                    // To the peer's VXLAN port: `from` is the port its worker sent from, which
                    // receives nothing.
                    let to = self
                        .peer_at(from)
                        .and_then(|peer| self.addr_of(peer))
                        .unwrap_or(from);
                    self.send(to, reply);
                }
                if let Some(keys) = outcome.established {
                    self.install(keys);
                }
            }
            // Counted by the handshaker; never answered.
            Err(e) => debug!(%from, "handshake message refused: {e}"),
        }
    }

    fn flush(&mut self) {
        while let Some(transmit) = self.handshaker.poll_transmit() {
            if let Some(addr) = self.addr_of(transmit.peer) {
                self.send(addr, transmit.bytes);
            }
        }
        while let Some(event) = self.handshaker.poll_event() {
            match event {
                Event::Retire { local_index, .. } => {
                    let _ = self
                        .workers
                        .ask(|reply| Command::RetireSession { local_index, reply });
                }
                Event::GaveUp { peer } => {
                    if let Some(addr) = self.addr_of(peer) {
                        warn!(%addr, "no answer to handshakes for 90 s; trying again when there is traffic");
                    }
                }
                other => debug!("handshake event {other:?}"),
            }
        }
    }

    fn send(&self, addr: SocketAddr, bytes: Vec<u8>) {
        let _ = self.workers.tell_first(Command::SendRaw { addr, bytes });
    }

    fn install(&mut self, keys: SessionKeys) {
        let Some(addr) = self.addr_of(keys.peer) else {
            return;
        };
        let send_now = keys.role == Role::Initiator;
        let replay = Arc::new(keys.replay());
        let local_index = keys.local_index;
        let keys = Arc::new(keys);
        let installed = self.workers.ask(|reply| Command::InstallSession {
            peer: addr,
            keys: Arc::clone(&keys),
            replay: Arc::clone(&replay),
            send_now,
            reply,
        });
        if installed.is_ok_and(|all| all.iter().all(Result::is_ok)) {
            info!(%addr, local_index, "session up");
            let mut status = self
                .status
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let entry = status.entry(addr).or_default();
            entry.0.state = "up".into();
            entry.0.handshakes += 1;
            entry.1 = Some(Instant::now());
        } else {
            warn!(%addr, "could not install a session on every worker");
        }
    }

    fn peer_at(&self, addr: SocketAddr) -> Option<crypto::PeerId> {
        self.peers
            .iter()
            .find(|&&(_, a)| a.ip() == addr.ip())
            .map(|&(id, _)| id)
    }

    fn addr_of(&self, peer: crypto::PeerId) -> Option<SocketAddr> {
        self.peers
            .iter()
            .find(|&&(id, _)| id == peer)
            .map(|&(_, addr)| addr)
    }
}
