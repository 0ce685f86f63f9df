//! The crate's one error type.
//!
//! Variants fall in two groups that callers treat differently ([`Error::is_peer_fault`]): faults
//! of the peer or the network (what arrived was short, forged, replayed, stale, unknown or over
//! the rate limit), which the data path drops and counts, and misuse, misconfiguration or
//! exhaustion on our side (the rest), which an operator or the control plane must act on.

use crate::key::{KEY_LEN, TAG_LEN};

/// Everything that can go wrong while building keys, handshaking, sealing, opening or checking
/// replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Key material given to [`SessionKey::new`](crate::SessionKey::new) is not exactly
    /// [`KEY_LEN`] bytes long.
    #[error("session key must be {KEY_LEN} bytes, got {len}")]
    KeyLength {
        /// Length of the rejected key material.
        len: usize,
    },
    /// HKDF-SHA256 refused to produce a key from the given inputs.
    #[error("session key derivation failed")]
    KeyDerivation,
    /// Every counter of this key has been used; sealing again would reuse a nonce. Replace the key.
    #[error("nonce counters of this key are exhausted; replace the key")]
    CounterExhausted,
    /// The sealer reached the limit set with [`Sealer::set_limit`](crate::Sealer::set_limit).
    /// Persist a higher high-water mark, then raise the limit.
    #[error("nonce counter reached the reserved limit {limit}; persist a new high-water mark")]
    CounterLimit {
        /// The limit that was reached: no counter at or above it may be used yet.
        limit: u64,
    },
    /// The buffer given to seal is shorter than the [`TAG_LEN`]-byte tag it must end with.
    #[error("buffer of {len} bytes has no room for the {TAG_LEN}-byte tag")]
    NoTagRoom {
        /// Length of the buffer given.
        len: usize,
    },
    /// The payload is longer than ChaCha20-Poly1305 can seal under one nonce.
    #[error("payload too long to seal")]
    TooLong,
    /// A received packet is too short to hold the [`TAG_LEN`]-byte tag.
    #[error("sealed payload of {len} bytes is shorter than the {TAG_LEN}-byte tag")]
    Truncated {
        /// Length of the sealed payload received.
        len: usize,
    },
    /// A received packet did not authenticate: forged or corrupted ciphertext, tag, associated
    /// data or counter, or sealed under another key.
    #[error("sealed payload failed authentication")]
    Authentication,
    /// A packet with this counter was already accepted.
    #[error("counter {counter} was already received")]
    Replayed {
        /// The repeated counter.
        counter: u64,
    },
    /// The counter lies below the replay window: too old to tell whether it was seen.
    #[error("counter {counter} is older than the replay window")]
    TooOld {
        /// The rejected counter.
        counter: u64,
    },
    /// A handshake message has the wrong length, type or reserved bytes for its type.
    #[error("malformed handshake message of {len} bytes")]
    Malformed {
        /// Length of the rejected message.
        len: usize,
    },
    /// A handshake message's mac1 is wrong: junk, or sent to another node's public key. Rejected
    /// before any Diffie-Hellman.
    #[error("handshake message has a wrong mac1")]
    Mac1,
    /// Too many handshake messages from this source or from everywhere; dropped unanswered
    /// before any Diffie-Hellman.
    #[error("handshake message over the rate limit")]
    RateLimited,
    /// The Noise handshake failed: a tampered message, or a peer using another static key or
    /// pre-shared key than configured.
    #[error("handshake did not authenticate")]
    Handshake,
    /// An initiation authenticated, but its static key is not one of the configured peers.
    #[error("handshake from a static key that is not a configured peer")]
    UnknownStaticKey,
    /// An initiation's timestamp is not newer than the last one accepted from that peer: a
    /// replayed or reordered initiation.
    #[error("handshake initiation is not newer than the last one accepted")]
    StaleInitiation,
    /// A response names a receiver index that belongs to no handshake in progress.
    #[error("handshake response for unknown index {index}")]
    UnknownIndex {
        /// The receiver index the response carried.
        index: u32,
    },
    /// A key's text form is not base64 of exactly 32 bytes.
    #[error("key is not base64 of 32 bytes")]
    KeyEncoding,
    /// A lane number at or above [`MAX_LANES`](crate::MAX_LANES).
    #[error("lane {lane} is out of range")]
    Lane {
        /// The lane asked for.
        lane: usize,
    },
    /// A [`PeerId`](crate::PeerId) that this handshaker did not hand out.
    #[error("no such peer")]
    NoSuchPeer,
    /// A peer with this public key was added already, or it is this node's own key.
    #[error("peer public key is configured twice or is this node's own")]
    DuplicatePeer,
    /// The Noise library refused to set up a handshake state; a bug or a build without the
    /// required primitives, not a fault of the peer.
    #[error("handshake state could not be set up")]
    NoiseSetup,
    /// A rekey time of zero or longer than the default two minutes.
    #[error("the rekey time must be more than zero and at most 120 s")]
    RekeyTime,
    /// A rekey packet count of zero or above the default 2^40.
    #[error("the rekey packet count must be more than zero and at most 2^40")]
    RekeyCount,
}

impl Error {
    /// True for faults caused by what a peer or the network sent (drop and count), false for
    /// misuse or exhaustion on this side.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            Error::Truncated { .. }
                | Error::Authentication
                | Error::Replayed { .. }
                | Error::TooOld { .. }
                | Error::Malformed { .. }
                | Error::Mac1
                | Error::RateLimited
                | Error::Handshake
                | Error::UnknownStaticKey
                | Error::StaleInitiation
                | Error::UnknownIndex { .. }
        )
    }
}
