//! Sealed networks on the control plane: this node's private key, the handshakes with its
//! peers, and the sessions installed on every worker.
//!
//! One thread owns the [`crypto::Handshaker`]. The workers hand it the handshake messages they
//! receive and the peers they hold frames for; it answers, retransmits and rekeys on its
//! timers (and by count: each second it sums what every worker sealed per session), sends its
//! messages through the first worker's underlay, and installs each session it completes on
//! every worker (each its own counter lane) and retires old ones. It connects to every peer of
//! a sealed network at start, so sessions are usually up before the first frame.
//!
//! One handshake covers a pair of nodes, so the pre-shared key of a sealed network
//! (`networks[].psk_file`) is the key of the session with each of its peers: every sealed
//! network shared with one peer must name the same key file, or none ([`validate`]). Key files
//! are read only if no one but their owner may read them.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use crypto::{Event, Handshaker, PresharedKey, PublicKey, Role, SessionKeys, StaticSecret};
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
    /// Sessions made while one was up: rekeys, and new sessions after the peer restarted.
    #[serde(default)]
    pub rekeys: u64,
    /// Handshake messages from the peer's address that were refused: they did not
    /// authenticate (a wrong pre-shared key or node key), were stale, or named no handshake
    /// in progress.
    #[serde(default)]
    pub refused: u64,
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
    let text = read_secret(path)?;
    StaticSecret::from_base64(text.trim())
        .with_context(|| format!("{} does not hold a private key", path.display()))
}

/// Reads a pre-shared key file written by [`write_psk`].
pub fn read_psk(path: &Path) -> anyhow::Result<PresharedKey> {
    let text = read_secret(path)?;
    PresharedKey::from_base64(text.trim())
        .with_context(|| format!("{} does not hold a pre-shared key", path.display()))
}

/// The text of a key file, refused when anyone but its owner may read or write it.
fn read_secret(path: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let mode = fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{} is mode {:04o}: a key file must be readable by its owner only (chmod 600)",
            path.display(),
            mode & 0o7777
        );
    }
    Ok(zeroize::Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    ))
}

/// Writes a new private key to `path`, mode 0600, refusing to replace an existing file.
pub fn write_private_key(path: &Path, secret: &StaticSecret) -> anyhow::Result<()> {
    write_secret(path, &secret.to_base64())
}

/// Writes a new pre-shared key to `path`, mode 0600, refusing to replace an existing file.
pub fn write_psk(path: &Path, psk: &PresharedKey) -> anyhow::Result<()> {
    write_secret(path, &psk.to_base64())
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
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
    file.write_all(text.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Checks the sealing settings no other key covers: a pre-shared key only on a sealed
/// network, one pre-shared key per peer, a rekey time within bounds. Errors name the key.
pub(super) fn validate(config: &Config) -> Result<(), (String, String)> {
    for (i, network) in config.networks.iter().enumerate() {
        if network.psk_file.is_some() && !network.encryption {
            return Err((
                format!("networks[{i}].psk_file"),
                "a pre-shared key needs encryption = true".into(),
            ));
        }
    }
    for (i, peer) in config.peers.iter().enumerate() {
        let mut sealed = config.peer_networks(peer).filter(|n| n.encryption);
        let Some(first) = sealed.next() else {
            continue;
        };
        if let Some(other) = sealed.find(|n| n.psk_file != first.psk_file) {
            let j = config
                .networks
                .iter()
                .position(|n| n.name == other.name)
                .unwrap_or_default();
            return Err((
                format!("networks[{j}].psk_file"),
                format!(
                    "peers[{i}] ({}) carries the sealed networks {:?} and {:?}, which name \
                     different pre-shared keys: one handshake covers a pair of nodes, so the \
                     sealed networks two nodes share must name the same psk_file, or none",
                    peer.name, first.name, other.name
                ),
            ));
        }
    }
    if let Some(secs) = config.node.rekey_after_secs {
        let most = crypto::handshake::REKEY_AFTER_TIME.as_secs();
        if secs == 0 || secs > most {
            return Err((
                "node.rekey_after_secs".into(),
                format!("must be between 1 and {most}"),
            ));
        }
    }
    if let Some(packets) = config.node.rekey_after_messages {
        let most = crypto::handshake::REKEY_AFTER_MESSAGES;
        if packets == 0 || packets > most {
            return Err((
                "node.rekey_after_messages".into(),
                format!("must be between 1 and {most}"),
            ));
        }
    }
    Ok(())
}

/// What `vswitch reload` cannot apply to sealed networks (the handshakes are set up at start):
/// a line asking for a restart when keys, pre-shared keys, encryption or rekey settings differ.
pub(super) fn reload_changes(old: &Config, new: &Config) -> Option<String> {
    let sealing = |c: &Config| {
        (
            (
                c.node.private_key.clone(),
                c.node.rekey_after_secs,
                c.node.rekey_after_messages,
            ),
            c.networks
                .iter()
                .map(|n| (n.name.clone(), n.encryption, n.psk_file.clone()))
                .collect::<Vec<_>>(),
            c.peers
                .iter()
                .map(|p| (p.name.clone(), p.public_key.clone()))
                .collect::<Vec<_>>(),
        )
    };
    (sealing(old) != sealing(new)).then(|| {
        "sealing settings changed (keys, psk_file, encryption, peers' public keys, rekey): restart \
         vswitchd to apply them"
            .to_owned()
    })
}

/// The pre-shared key file of the sealed networks shared with `peer`, if they name one.
fn psk_file_of<'a>(config: &'a Config, peer: &'a super::config::PeerConfig) -> Option<&'a PathBuf> {
    config
        .peer_networks(peer)
        .filter(|n| n.encryption)
        .find_map(|n| n.psk_file.as_ref())
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
        if let Some(secs) = config.node.rekey_after_secs {
            handshaker
                .set_rekey_after(Duration::from_secs(secs))
                .context("node.rekey_after_secs")?;
        }
        if let Some(packets) = config.node.rekey_after_messages {
            handshaker
                .set_rekey_after_messages(packets)
                .context("node.rekey_after_messages")?;
        }
        let mut psks: BTreeMap<&Path, PresharedKey> = BTreeMap::new();
        for (i, network) in config.networks.iter().enumerate() {
            if let Some(path) = network.psk_file.as_deref()
                && !psks.contains_key(path)
            {
                let psk = read_psk(path).with_context(|| format!("networks[{i}].psk_file"))?;
                psks.insert(path, psk);
            }
        }
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
            let psk = psk_file_of(config, peer).and_then(|path| psks.get(path.as_path()));
            let id = handshaker
                .add_peer(key, psk)
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
            counted: BTreeMap::new(),
            counted_at: Instant::now(),
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
    /// Datagrams sent on each current session as last told to the handshaker, by local index.
    counted: BTreeMap<u32, u64>,
    /// When the workers were last asked for those counts.
    counted_at: Instant,
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
            if self.counted_at.elapsed() >= TICK {
                self.count_sent();
            }
            self.handshaker
                .handle_timeout(Instant::now(), &mut self.rng);
            self.flush();
        }
    }

    /// Asks the workers (once for all peers) how much each current session carried and tells
    /// the handshaker what is new since the last time; it rekeys a session that reached its
    /// count.
    fn count_sent(&mut self) {
        let now = Instant::now();
        self.counted_at = now;
        let current: Vec<(crypto::PeerId, u32)> = self
            .peers
            .iter()
            .filter_map(|&(peer, _)| Some((peer, self.handshaker.current_session(peer)?)))
            .collect();
        if current.is_empty() {
            return;
        }
        let local_indices: Arc<[u32]> = current.iter().map(|&(_, index)| index).collect();
        let Ok(per_worker) = self.workers.ask(|reply| Command::CountSealed {
            local_indices: Arc::clone(&local_indices),
            reply,
        }) else {
            return;
        };
        let mut counted = BTreeMap::new();
        for (i, &(peer, index)) in current.iter().enumerate() {
            let total: u64 = per_worker.iter().filter_map(|counts| counts.get(i)).sum();
            let before = self.counted.get(&index).copied().unwrap_or_default();
            let new = total.saturating_sub(before);
            if let Err(e) = self
                .handshaker
                .note_sent(peer, index, new, now, &mut self.rng)
            {
                warn!("counting a session's datagrams: {e}");
            }
            counted.insert(index, total);
        }
        self.counted = counted;
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
            Err(e) => {
                debug!(%from, "handshake message refused: {e}");
                let refused = matches!(
                    e,
                    crypto::Error::Handshake
                        | crypto::Error::UnknownStaticKey
                        | crypto::Error::StaleInitiation
                        | crypto::Error::UnknownIndex { .. }
                );
                if refused && let Some(addr) = self.peer_at(from).and_then(|p| self.addr_of(p)) {
                    let mut status = self
                        .status
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    status.entry(addr).or_default().0.refused += 1;
                }
            }
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
            if entry.0.state == "up" {
                entry.0.rekeys += 1;
            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NODE: &str = "[node]\nname = \"a\"\naddress = \"192.0.2.1\"\nprivate_key = \"/k\"\n";
    const PEERS: &str = "[[peers]]\nname = \"b\"\naddress = \"192.0.2.2\"\npublic_key = \
                         \"71ESAd88VA+JdhZ7xotAGJo4ZqAxGgGPZGXgOVhF/XQ=\"\n\
                         [[peers]]\nname = \"c\"\naddress = \"192.0.2.3\"\npublic_key = \
                         \"AAAAAd88VA+JdhZ7xotAGJo4ZqAxGgGPZGXgOVhF/XQ=\"\nnetworks = [\"s1\"]\n";

    fn network(name: &str, vni: u32, sealed: bool, psk: Option<&str>) -> String {
        let psk = psk.map_or(String::new(), |p| format!("psk_file = \"{p}\"\n"));
        format!("[[networks]]\nname = \"{name}\"\nvni = {vni}\nencryption = {sealed}\n{psk}")
    }

    fn check(text: &str) -> Result<Config, (String, String)> {
        Config::parse(Path::new("/etc/vswitch.toml"), text).map_err(|e| (e.key, e.reason))
    }

    #[test]
    fn one_pre_shared_key_per_peer() {
        // Both sealed networks name one key: fine.
        let same = format!(
            "{NODE}{}{}{PEERS}",
            network("s1", 43, true, Some("/psk")),
            network("s2", 44, true, Some("/psk")),
        );
        let config = check(&same).unwrap();
        assert_eq!(
            psk_file_of(&config, &config.peers[0]).map(PathBuf::as_path),
            Some(Path::new("/psk"))
        );
        // Peer b carries s1 and s2 with different keys: an error naming the second network.
        let different = format!(
            "{NODE}{}{}{PEERS}",
            network("s1", 43, true, Some("/psk1")),
            network("s2", 44, true, Some("/psk2")),
        );
        let (key, reason) = check(&different).unwrap_err();
        assert_eq!(key, "networks[1].psk_file");
        assert!(reason.contains("peers[0] (b)"), "{reason}");
        // A key on one sealed network and none on the other is as different.
        let one = format!(
            "{NODE}{}{}{PEERS}",
            network("s1", 43, true, None),
            network("s2", 44, true, Some("/psk2")),
        );
        assert_eq!(check(&one).unwrap_err().0, "networks[1].psk_file");
        // Peer c carries only s1, peer b only s2: each its own key.
        let apart = format!(
            "{NODE}{}{}{}",
            network("s1", 43, true, Some("/psk1")),
            network("s2", 44, true, Some("/psk2")),
            PEERS.replacen("public_key", "networks = [\"s2\"]\npublic_key", 1),
        );
        let config = check(&apart).unwrap();
        let files: Vec<_> = config
            .peers
            .iter()
            .map(|p| psk_file_of(&config, p).unwrap().clone())
            .collect();
        assert_eq!(files, [PathBuf::from("/psk2"), PathBuf::from("/psk1")]);
    }

    #[test]
    fn reload_asks_for_a_restart_when_sealing_settings_change() {
        let text = format!("{NODE}{}{PEERS}", network("s1", 43, true, Some("/psk")));
        let old = check(&text).unwrap();
        assert_eq!(reload_changes(&old, &check(&text).unwrap()), None);
        for changed in [
            text.replace("/psk", "/psk2"),
            text.replace(
                "encryption = true\npsk_file = \"/psk\"\n",
                "encryption = false\n",
            ),
            text.replace("71ESAd88", "81ESAd88"),
            text.replace("[node]\n", "[node]\nrekey_after_secs = 5\n"),
        ] {
            let new = check(&changed).unwrap();
            assert!(reload_changes(&old, &new).is_some(), "{changed}");
        }
    }

    #[test]
    fn a_pre_shared_key_needs_a_sealed_network_and_rekey_time_is_bounded() {
        let plain = format!("{NODE}{}", network("p", 42, false, Some("/psk")));
        assert_eq!(check(&plain).unwrap_err().0, "networks[0].psk_file");
        for (secs, ok) in [(0, false), (1, true), (120, true), (121, false)] {
            let text = NODE.replace("[node]\n", &format!("[node]\nrekey_after_secs = {secs}\n"));
            assert_eq!(check(&text).is_ok(), ok, "rekey_after_secs = {secs}");
            if !ok {
                assert_eq!(check(&text).unwrap_err().0, "node.rekey_after_secs");
            }
        }
    }

    #[test]
    fn key_files_are_written_0600_never_replaced_and_read_only_when_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.psk");
        let psk = PresharedKey::generate(&mut rand::rngs::StdRng::seed_from_u64(1));
        write_psk(&path, &psk).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_psk(&path).unwrap().to_base64(), psk.to_base64());
        assert!(write_psk(&path, &psk).is_err(), "an existing key is kept");
        assert!(
            read_private_key(&path).is_ok(),
            "any 32 bytes are a private key"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = format!("{:#}", read_psk(&path).unwrap_err());
        assert!(err.contains("mode 0640"), "{err}");
        assert!(read_private_key(&path).is_err());
        fs::write(dir.path().join("junk"), "not a key").unwrap();
        fs::set_permissions(dir.path().join("junk"), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_psk(&dir.path().join("junk")).is_err());
    }
}
