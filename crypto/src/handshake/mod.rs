//! Session establishment: a sans-IO handshake engine per node, [`Handshaker`], running
//! `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` (through the `snow` crate) with every peer it knows.
//!
//! # Why Noise IKpsk2 through snow
//!
//! IKpsk2 is the pattern WireGuard runs: one round trip, mutual authentication by static keys
//! the initiator already knows, forward secrecy from ephemeral keys, identity hiding of the
//! initiator, and an optional pre-shared key mixed in so a future break of X25519 alone does not
//! expose recorded traffic. `snow` is the maintained Rust implementation of the Noise framework,
//! checked against the Noise test vectors; we only frame its messages, pick the keys and keep
//! the timers. Its split gives two 32-byte ChaCha20-Poly1305 keys that go into ring (our fast
//! AEAD) rather than snow's own transport, so the data path stays as it is.
//!
//! # How to drive it
//!
//! One `Handshaker` per node, owned by one thread (handshakes are rare; the data path forwards
//! datagrams whose first byte is [`TYPE_INITIATION`] or [`TYPE_RESPONSE`] to it).
//!
//! 1. [`handle_message`](Handshaker::handle_message) for every such datagram: send
//!    [`Outcome::reply`] back to the source address, install [`Outcome::established`] keys.
//! 2. [`connect`](Handshaker::connect) when there is something to send to a peer and no
//!    session, when a sealed packet from a peer's address names an index we do not know (the
//!    peer restarted), and for every peer at start.
//! 3. [`note_sent`](Handshaker::note_sent) now and then with packets sent per session, so the
//!    count-based rekey can happen.
//! 4. After each of the above and at [`poll_timeout`](Handshaker::poll_timeout):
//!    [`handle_timeout`](Handshaker::handle_timeout), then drain
//!    [`poll_transmit`](Handshaker::poll_transmit) (send to the peer's address) and
//!    [`poll_event`](Handshaker::poll_event) (retire keys; install keys that completed).
//!
//! # Sessions
//!
//! Per peer, at most two sessions are live: *current* and *previous*. A new session moves
//! current to previous and retires the old previous; any session is retired
//! [`REJECT_AFTER_TIME`] after it was established. So in-flight packets of the previous keys
//! still open after a rekey, and no key outlives three minutes. The side that initiated a
//! session starts the next handshake [`REKEY_AFTER_TIME`] after it, or once
//! [`REKEY_AFTER_MESSAGES`] packets were sent on it; the responder does the same
//! [`RESPONDER_REKEY_SLACK`] later if the initiator has not, which covers an initiator that is
//! gone or restarted.
//!
//! A restarted node has no sessions; its initiations carry a newer timestamp (wall clock given
//! at construction, see [`Handshaker::new`]), so peers accept them and replace their sessions
//! with no manual step. Every session's keys come from fresh ephemeral keys, so no nonce is
//! reused under a key, whatever restarts.

pub mod message;
mod ratelimit;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use zeroize::{Zeroize, Zeroizing};

use crate::Error;
use crate::identity::{IDENTITY_KEY_LEN, PresharedKey, PublicKey, StaticSecret};
use crate::session::{PeerId, Role, SessionKeys};
use message::{INITIATION_LEN, RESPONSE_LEN, TIMESTAMP_LEN, TYPE_INITIATION, TYPE_RESPONSE, field};
pub use ratelimit::{GLOBAL_BURST, GLOBAL_RATE, MAX_SOURCES, PER_SOURCE_BURST, PER_SOURCE_RATE};

/// Age of a session at which its initiator starts the next handshake.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// How much later than [`REKEY_AFTER_TIME`] the responder of a session starts a handshake if
/// none has replaced the session by then.
pub const RESPONDER_REKEY_SLACK: Duration = Duration::from_secs(10);
/// Age at which a session is retired: its keys must no longer seal or open anything.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Packets sent on a session (all lanes together) after which a handshake starts.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 40;
/// First retransmission delay of an unanswered initiation.
pub const RETRANSMIT_INITIAL: Duration = Duration::from_secs(1);
/// Largest retransmission delay; delays double from [`RETRANSMIT_INITIAL`] up to it.
pub const RETRANSMIT_MAX: Duration = Duration::from_secs(16);
/// Each retransmission delay is drawn within this many percent either side of its nominal value.
pub const RETRANSMIT_JITTER_PERCENT: u32 = 20;
/// How long initiations are retransmitted before the attempt is given up.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);

/// What [`Handshaker::handle_message`] produced.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Outcome {
    /// A message to send back to the address the handled message came from.
    pub reply: Option<Vec<u8>>,
    /// A session that is now established: install its keys.
    pub established: Option<SessionKeys>,
}

/// A handshake message to send to a peer's address.
#[derive(Debug)]
pub struct Transmit {
    /// The peer to send to.
    pub peer: PeerId,
    /// The whole UDP payload.
    pub bytes: Vec<u8>,
}

/// Something the data path must act on that no message returned.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// Drop the keys of this session, both directions: it reached [`REJECT_AFTER_TIME`] or two
    /// newer sessions replaced it. If it was the session you send on, send on the peer's newest
    /// one, or call [`Handshaker::connect`] if there is none.
    Retire {
        /// The peer of the session.
        peer: PeerId,
        /// The session's [`SessionKeys::local_index`].
        local_index: u32,
    },
    /// No response came within [`REKEY_ATTEMPT_TIME`]; initiations stop until the next
    /// [`Handshaker::connect`].
    GaveUp {
        /// The peer that did not answer.
        peer: PeerId,
    },
}

/// Counters of what [`Handshaker::handle_message`] did with what it was given.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeStats {
    /// Initiations answered.
    pub initiations_accepted: u64,
    /// Responses that completed a handshake.
    pub responses_accepted: u64,
    /// Messages dropped over the rate limit, before any Diffie-Hellman.
    pub rate_limited: u64,
    /// Messages dropped for a wrong length, type or mac1, before rate limiting.
    pub junk: u64,
    /// Messages dropped after rate limiting: failed authentication, unknown key or index, stale.
    pub rejected: u64,
}

struct Pending {
    state: snow::HandshakeState,
    local_index: u32,
    first_sent: Instant,
    attempt: u32,
    retransmit_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Live {
    local_index: u32,
    role: Role,
    established_at: Instant,
    sent: u64,
}

impl Live {
    /// When this side starts the next handshake: the initiator at `rekey_after`, the responder
    /// [`RESPONDER_REKEY_SLACK`] later (or half of a shortened `rekey_after`, whichever is less,
    /// so that two nodes that are each the responder of their current session still rekey
    /// soon).
    fn rekey_at(&self, rekey_after: Duration) -> Instant {
        match self.role {
            Role::Initiator => self.established_at + rekey_after,
            Role::Responder => {
                self.established_at + rekey_after + RESPONDER_REKEY_SLACK.min(rekey_after / 2)
            }
        }
    }

    fn expires_at(&self) -> Instant {
        self.established_at + REJECT_AFTER_TIME
    }
}

struct Peer {
    public: PublicKey,
    psk: PresharedKey,
    mac1_key: [u8; 32],
    /// Greatest initiation timestamp accepted from this peer.
    last_timestamp: Option<[u8; TIMESTAMP_LEN]>,
    pending: Option<Pending>,
    current: Option<Live>,
    previous: Option<Live>,
}

/// The handshake engine of one node: its static key, its peers, and per peer the handshake in
/// progress and the live sessions. No I/O, no clock: time and randomness are parameters. See the
/// [module docs](self) for the order of calls.
pub struct Handshaker {
    secret: StaticSecret,
    mac1_key: [u8; 32],
    params: snow::params::NoiseParams,
    peers: Vec<Peer>,
    by_key: HashMap<PublicKey, PeerId>,
    /// Local indices of pending handshakes and live sessions.
    indices: HashMap<u32, PeerId>,
    limiter: ratelimit::RateLimiter,
    /// Session age at which its initiator rekeys: [`REKEY_AFTER_TIME`] unless set shorter.
    rekey_after: Duration,
    /// Packets sent on a session after which a handshake starts: [`REKEY_AFTER_MESSAGES`]
    /// unless set lower.
    rekey_after_messages: u64,
    clock_base: Instant,
    unix_base: Duration,
    last_timestamp: [u8; TIMESTAMP_LEN],
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: HandshakeStats,
}

impl Handshaker {
    /// A node with this static key and no peers yet.
    ///
    /// `unix_time` is the wall-clock time at `now`, as a duration since the Unix epoch; it only
    /// orders this node's initiations across restarts (peers reject an initiation not newer
    /// than the last they accepted), so it must not go back between two runs.
    pub fn new(secret: StaticSecret, now: Instant, unix_time: Duration) -> Result<Self, Error> {
        let params = message::NOISE_PARAMS
            .parse()
            .map_err(|_| Error::NoiseSetup)?;
        Ok(Self {
            mac1_key: message::mac1_key(&secret.public_key()),
            secret,
            params,
            peers: Vec::new(),
            by_key: HashMap::new(),
            indices: HashMap::new(),
            limiter: ratelimit::RateLimiter::new(now),
            rekey_after: REKEY_AFTER_TIME,
            rekey_after_messages: REKEY_AFTER_MESSAGES,
            clock_base: now,
            unix_base: unix_time,
            last_timestamp: [0; TIMESTAMP_LEN],
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: HandshakeStats::default(),
        })
    }

    /// Rekeys sessions after `after` instead of [`REKEY_AFTER_TIME`], for tests that want many
    /// rekeys quickly. Only shorter is allowed (a longer time would let keys be retired at
    /// [`REJECT_AFTER_TIME`] before their successor is made); zero is refused too.
    pub fn set_rekey_after(&mut self, after: Duration) -> Result<(), Error> {
        if after.is_zero() || after > REKEY_AFTER_TIME {
            return Err(Error::RekeyTime);
        }
        self.rekey_after = after;
        Ok(())
    }

    /// Rekeys sessions after `packets` sent instead of [`REKEY_AFTER_MESSAGES`], for tests
    /// that want rekeys by count. Only lower is allowed, and not zero.
    pub fn set_rekey_after_messages(&mut self, packets: u64) -> Result<(), Error> {
        if packets == 0 || packets > REKEY_AFTER_MESSAGES {
            return Err(Error::RekeyCount);
        }
        self.rekey_after_messages = packets;
        Ok(())
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.secret.public_key()
    }

    /// Adds a peer by its public key, with the network's pre-shared key if it has one.
    pub fn add_peer(
        &mut self,
        public: PublicKey,
        psk: Option<&PresharedKey>,
    ) -> Result<PeerId, Error> {
        if self.by_key.contains_key(&public) || public == self.public_key() {
            return Err(Error::DuplicatePeer);
        }
        let id = PeerId(u32::try_from(self.peers.len()).map_err(|_| Error::DuplicatePeer)?);
        self.peers.push(Peer {
            public,
            psk: psk.map_or_else(|| PresharedKey::from_bytes([0; 32]), PresharedKey::copy),
            mac1_key: message::mac1_key(&public),
            last_timestamp: None,
            pending: None,
            current: None,
            previous: None,
        });
        self.by_key.insert(public, id);
        Ok(id)
    }

    /// The peer with this public key.
    pub fn peer(&self, public: &PublicKey) -> Option<PeerId> {
        self.by_key.get(public).copied()
    }

    /// The public key of a peer.
    pub fn peer_key(&self, peer: PeerId) -> Option<PublicKey> {
        self.peers.get(peer.index()).map(|p| p.public)
    }

    /// What was done with the messages handled so far.
    pub fn stats(&self) -> HandshakeStats {
        self.stats
    }

    /// Whether a handshake with `peer` is in progress.
    pub fn is_handshaking(&self, peer: PeerId) -> bool {
        self.peers
            .get(peer.index())
            .is_some_and(|p| p.pending.is_some())
    }

    /// Local index of the peer's current session, if any.
    pub fn current_session(&self, peer: PeerId) -> Option<u32> {
        self.peers
            .get(peer.index())
            .and_then(|p| p.current.map(|c| c.local_index))
    }

    /// Starts a handshake with `peer` unless one is in progress or the current session is
    /// younger than its rekey time. The initiation is then ready at
    /// [`poll_transmit`](Self::poll_transmit).
    pub fn connect<R: CryptoRng + RngCore>(
        &mut self,
        peer: PeerId,
        now: Instant,
        rng: &mut R,
    ) -> Result<(), Error> {
        let p = self.peers.get(peer.index()).ok_or(Error::NoSuchPeer)?;
        if p.pending.is_some()
            || p.current
                .is_some_and(|c| now < c.rekey_at(self.rekey_after))
        {
            return Ok(());
        }
        self.initiate(peer, now, now, 0, rng)
    }

    /// Adds `packets` to the count of packets sent on the session `local_index` of `peer`;
    /// starts a handshake once the current session reaches [`REKEY_AFTER_MESSAGES`] (or what
    /// [`set_rekey_after_messages`](Self::set_rekey_after_messages) set).
    pub fn note_sent<R: CryptoRng + RngCore>(
        &mut self,
        peer: PeerId,
        local_index: u32,
        packets: u64,
        now: Instant,
        rng: &mut R,
    ) -> Result<(), Error> {
        let p = self.peers.get_mut(peer.index()).ok_or(Error::NoSuchPeer)?;
        let Some(current) = p.current.as_mut().filter(|c| c.local_index == local_index) else {
            return Ok(());
        };
        current.sent = current.sent.saturating_add(packets);
        if current.sent >= self.rekey_after_messages && p.pending.is_none() {
            self.initiate(peer, now, now, 0, rng)?;
        }
        Ok(())
    }

    /// Handles one handshake datagram from `from`. Errors are for counting and dropping (see
    /// [`Error::is_peer_fault`]); on error nothing is sent and no session changes.
    pub fn handle_message<R: CryptoRng + RngCore>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        rng: &mut R,
    ) -> Result<Outcome, Error> {
        let result = match bytes.first() {
            Some(&TYPE_INITIATION) => self.handle_initiation(now, from, bytes, rng),
            Some(&TYPE_RESPONSE) => self.handle_response(now, from, bytes),
            _ => Err(Error::Malformed { len: bytes.len() }),
        };
        match &result {
            Ok(outcome) if outcome.reply.is_some() => self.stats.initiations_accepted += 1,
            Ok(_) => self.stats.responses_accepted += 1,
            Err(Error::RateLimited) => self.stats.rate_limited += 1,
            Err(Error::Malformed { .. } | Error::Mac1) => self.stats.junk += 1,
            Err(_) => self.stats.rejected += 1,
        }
        result
    }

    /// The next handshake message to send, to the peer's configured address.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event to act on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .iter()
            .flat_map(|p| {
                let retransmit = p.pending.as_ref().map(|h| h.retransmit_at);
                let rekey = p
                    .current
                    .filter(|_| p.pending.is_none())
                    .map(|c| c.rekey_at(self.rekey_after));
                let expiry = [p.current, p.previous]
                    .into_iter()
                    .flatten()
                    .map(|s| s.expires_at());
                retransmit.into_iter().chain(rekey).chain(expiry)
            })
            .min()
    }

    /// Retires expired sessions, retransmits or gives up unanswered initiations, and starts
    /// handshakes for sessions due for a rekey.
    pub fn handle_timeout<R: CryptoRng + RngCore>(&mut self, now: Instant, rng: &mut R) {
        for i in 0..self.peers.len() {
            let peer = PeerId(u32::try_from(i).unwrap_or(u32::MAX));
            let p = &mut self.peers[i];
            let expired = [
                p.previous.take_if(|s| now >= s.expires_at()),
                p.current.take_if(|s| now >= s.expires_at()),
            ];
            let unanswered = p.pending.take_if(|h| now >= h.retransmit_at);
            let rekey_due = p.pending.is_none()
                && unanswered.is_none()
                && p.current
                    .is_some_and(|c| now >= c.rekey_at(self.rekey_after));
            for live in expired.into_iter().flatten() {
                self.indices.remove(&live.local_index);
                self.events.push_back(Event::Retire {
                    peer,
                    local_index: live.local_index,
                });
            }
            // A failure to build an initiation leaves the peer idle; the next connect retries.
            if let Some(old) = unanswered {
                self.indices.remove(&old.local_index);
                if now.saturating_duration_since(old.first_sent) >= REKEY_ATTEMPT_TIME {
                    self.events.push_back(Event::GaveUp { peer });
                } else {
                    let _ = self.initiate(peer, now, old.first_sent, old.attempt + 1, rng);
                }
            } else if rekey_due {
                let _ = self.initiate(peer, now, now, 0, rng);
            }
        }
    }

    /// Builds and queues an initiation to `peer`: attempt number `attempt` of a handshake first
    /// tried at `first_sent`.
    fn initiate<R: CryptoRng + RngCore>(
        &mut self,
        peer: PeerId,
        now: Instant,
        first_sent: Instant,
        attempt: u32,
        rng: &mut R,
    ) -> Result<(), Error> {
        let timestamp = self.next_timestamp(now);
        let p = &self.peers[peer.index()];
        let mut state = self
            .noise_builder(rng)
            .remote_public_key(p.public.as_bytes())
            .and_then(|b| b.psk(2, p.psk.as_bytes()))
            .and_then(snow::Builder::build_initiator)
            .map_err(|_| Error::NoiseSetup)?;
        let local_index = self.new_index(rng);
        let mut bytes = vec![0u8; INITIATION_LEN];
        bytes[field::TYPE] = TYPE_INITIATION;
        bytes[field::SENDER].copy_from_slice(&local_index.to_le_bytes());
        let written = state
            .write_message(&timestamp, &mut bytes[field::INIT_NOISE])
            .map_err(|_| Error::NoiseSetup)?;
        debug_assert_eq!(written, field::INIT_NOISE.len());
        message::seal_macs(&p.mac1_key, &mut bytes);

        let delay = retransmit_delay(attempt, rng);
        self.indices.insert(local_index, peer);
        self.peers[peer.index()].pending = Some(Pending {
            state,
            local_index,
            first_sent,
            attempt,
            retransmit_at: now + delay,
        });
        self.transmits.push_back(Transmit { peer, bytes });
        Ok(())
    }

    fn handle_initiation<R: CryptoRng + RngCore>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        rng: &mut R,
    ) -> Result<Outcome, Error> {
        if bytes.len() != INITIATION_LEN || bytes[field::RESERVED] != [0; 3] {
            return Err(Error::Malformed { len: bytes.len() });
        }
        if !message::mac1_ok(&self.mac1_key, bytes) {
            return Err(Error::Mac1);
        }
        if !self.limiter.allow(from.ip(), now) {
            return Err(Error::RateLimited);
        }
        let remote_index = message::read_u32(bytes, field::SENDER);
        let mut state = self
            .noise_builder(rng)
            .build_responder()
            .map_err(|_| Error::NoiseSetup)?;
        let mut timestamp = [0u8; TIMESTAMP_LEN];
        let read = state
            .read_message(&bytes[field::INIT_NOISE], &mut timestamp)
            .map_err(|_| Error::Handshake)?;
        if read != TIMESTAMP_LEN {
            return Err(Error::Handshake);
        }
        let remote = state
            .get_remote_static()
            .and_then(|s| <[u8; IDENTITY_KEY_LEN]>::try_from(s).ok())
            .map(PublicKey::from_bytes)
            .ok_or(Error::Handshake)?;
        let peer = self.peer(&remote).ok_or(Error::UnknownStaticKey)?;
        let p = &self.peers[peer.index()];
        if p.last_timestamp.is_some_and(|last| timestamp <= last) {
            return Err(Error::StaleInitiation);
        }
        state
            .set_psk(2, p.psk.as_bytes())
            .map_err(|_| Error::NoiseSetup)?;
        let local_index = self.new_index(rng);
        let mut reply = vec![0u8; RESPONSE_LEN];
        reply[field::TYPE] = TYPE_RESPONSE;
        reply[field::SENDER].copy_from_slice(&local_index.to_le_bytes());
        reply[field::RECEIVER].copy_from_slice(&remote_index.to_le_bytes());
        let written = state
            .write_message(&[], &mut reply[field::RESP_NOISE])
            .map_err(|_| Error::NoiseSetup)?;
        debug_assert_eq!(written, field::RESP_NOISE.len());
        message::seal_macs(&p.mac1_key, &mut reply);
        let (to_responder, to_initiator) = split(&mut state);

        self.peers[peer.index()].last_timestamp = Some(timestamp);
        let keys = SessionKeys {
            peer,
            local_index,
            remote_index,
            role: Role::Responder,
            established_at: now,
            send: to_initiator,
            recv: to_responder,
        };
        self.install(peer, &keys);
        Ok(Outcome {
            reply: Some(reply),
            established: Some(keys),
        })
    }

    fn handle_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<Outcome, Error> {
        if bytes.len() != RESPONSE_LEN || bytes[field::RESERVED] != [0; 3] {
            return Err(Error::Malformed { len: bytes.len() });
        }
        if !message::mac1_ok(&self.mac1_key, bytes) {
            return Err(Error::Mac1);
        }
        let index = message::read_u32(bytes, field::RECEIVER);
        let peer = self
            .indices
            .get(&index)
            .copied()
            .filter(|peer| {
                self.peers[peer.index()]
                    .pending
                    .as_ref()
                    .is_some_and(|h| h.local_index == index)
            })
            .ok_or(Error::UnknownIndex { index })?;
        if !self.limiter.allow(from.ip(), now) {
            return Err(Error::RateLimited);
        }
        let p = &mut self.peers[peer.index()];
        let Some(pending) = p.pending.as_mut() else {
            return Err(Error::UnknownIndex { index });
        };
        // snow restores its symmetric state when reading fails, so a forged response leaves the
        // handshake able to read the genuine one.
        let mut payload = [0u8; 0];
        pending
            .state
            .read_message(&bytes[field::RESP_NOISE], &mut payload)
            .map_err(|_| Error::Handshake)?;
        let Some(mut pending) = p.pending.take() else {
            return Err(Error::UnknownIndex { index });
        };
        let (to_responder, to_initiator) = split(&mut pending.state);
        let keys = SessionKeys {
            peer,
            local_index: index,
            remote_index: message::read_u32(bytes, field::SENDER),
            role: Role::Initiator,
            established_at: now,
            send: to_responder,
            recv: to_initiator,
        };
        self.install(peer, &keys);
        Ok(Outcome {
            reply: None,
            established: Some(keys),
        })
    }

    /// Makes `keys` the peer's current session, the current one previous, and retires the
    /// previous one.
    fn install(&mut self, peer: PeerId, keys: &SessionKeys) {
        let p = &mut self.peers[peer.index()];
        let live = Live {
            local_index: keys.local_index,
            role: keys.role,
            established_at: keys.established_at,
            sent: 0,
        };
        if let Some(old) = p.previous.take() {
            self.indices.remove(&old.local_index);
            self.events.push_back(Event::Retire {
                peer,
                local_index: old.local_index,
            });
        }
        p.previous = p.current.replace(live);
        self.indices.insert(keys.local_index, peer);
    }

    /// A snow builder with this node's static key, the prologue, and an RNG seeded from `rng`
    /// for the ephemeral key.
    fn noise_builder<R: CryptoRng + RngCore>(&self, rng: &mut R) -> snow::Builder<'_> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut seed[..]);
        let builder =
            snow::Builder::with_resolver(self.params.clone(), Box::new(SeededResolver { seed }));
        // Both only fail when called twice on one builder.
        match builder.local_private_key(self.secret.as_bytes()) {
            Ok(b) => b
                .prologue(message::PROLOGUE)
                .unwrap_or_else(|_| unreachable!()),
            Err(_) => unreachable!("local key set once"),
        }
    }

    /// A random local index not in use by this node.
    fn new_index<R: RngCore>(&self, rng: &mut R) -> u32 {
        loop {
            let index = rng.next_u32();
            if !self.indices.contains_key(&index) {
                return index;
            }
        }
    }

    /// The wall-clock timestamp at `now`, strictly above the last one this node sent.
    fn next_timestamp(&mut self, now: Instant) -> [u8; TIMESTAMP_LEN] {
        let unix = self.unix_base + now.saturating_duration_since(self.clock_base);
        let mut ts = message::timestamp(unix.as_nanos());
        if ts <= self.last_timestamp {
            ts = message::timestamp(timestamp_nanos(&self.last_timestamp) + 1);
        }
        self.last_timestamp = ts;
        ts
    }
}

impl core::fmt::Debug for Handshaker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Handshaker")
            .field("public", &self.public_key())
            .field("peers", &self.peers.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn timestamp_nanos(ts: &[u8; TIMESTAMP_LEN]) -> u128 {
    let mut secs = [0u8; 8];
    secs.copy_from_slice(&ts[..8]);
    let mut nanos = [0u8; 4];
    nanos.copy_from_slice(&ts[8..]);
    u128::from(u64::from_be_bytes(secs)) * 1_000_000_000 + u128::from(u32::from_be_bytes(nanos))
}

/// The delay before retransmission `attempt + 1`: 1 s doubling up to 16 s, ±20% jitter.
fn retransmit_delay<R: RngCore>(attempt: u32, rng: &mut R) -> Duration {
    let nominal = RETRANSMIT_INITIAL
        .saturating_mul(1u32 << attempt.min(16))
        .min(RETRANSMIT_MAX);
    let span = 2 * RETRANSMIT_JITTER_PERCENT + 1;
    let percent = 100 - RETRANSMIT_JITTER_PERCENT + rng.next_u32() % span;
    nominal * percent / 100
}

/// The two transport keys of a finished handshake: (initiator to responder, responder to
/// initiator).
fn split(
    state: &mut snow::HandshakeState,
) -> (
    Zeroizing<[u8; IDENTITY_KEY_LEN]>,
    Zeroizing<[u8; IDENTITY_KEY_LEN]>,
) {
    let (mut a, mut b) = state.dangerously_get_raw_split();
    let keys = (Zeroizing::new(a), Zeroizing::new(b));
    a.zeroize();
    b.zeroize();
    keys
}

/// snow's default primitives, with the randomness (the ephemeral key) from a ChaCha20 RNG seeded
/// by the caller's RNG, so handshakes are deterministic under a seeded test RNG.
struct SeededResolver {
    seed: Zeroizing<[u8; 32]>,
}

struct SeededRandom(ChaCha20Rng);

impl snow::types::Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(*self.seed))))
    }

    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(
        &self,
        choice: &snow::params::HashChoice,
    ) -> Option<Box<dyn snow::types::Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(
        &self,
        choice: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}
