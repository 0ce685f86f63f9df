//! What a completed handshake hands to the data path: the two directions' keys of one session,
//! and the helpers that turn them into [`Sealer`]s (one per sending worker) and an [`Opener`].
//!
//! # Nonces across workers
//!
//! A session has one send key, shared by every sending worker. Its 64-bit counter space is cut
//! into [`MAX_LANES`] lanes of 2^[`LANE_BITS`] counters: worker `w` seals only counters in
//! `[w << 56, (w + 1) << 56)` ([`Sealer::lane`]), so no two workers can produce the same nonce
//! and no coordination is needed per packet. The receiver keeps one replay window per lane
//! ([`SharedReplay`](crate::SharedReplay)); the lane is the counter's top 8 bits.
//!
//! Every session's keys come from fresh ephemeral Diffie-Hellman, so a restart, which always
//! makes a new session, never reuses a nonce under an old key; counters need no persisting.

use core::fmt;
use std::time::Instant;

use zeroize::Zeroizing;

use crate::identity::IDENTITY_KEY_LEN;
use crate::{Error, Opener, Sealer, SessionKey, SharedReplay};

/// Bits of the counter that number the packet within a lane.
pub const LANE_BITS: u32 = 56;
/// How many lanes (sending workers) one session's send key can serve.
pub const MAX_LANES: usize = 1 << (u64::BITS - LANE_BITS);

/// The lane a received counter belongs to.
pub fn lane_of(counter: u64) -> u8 {
    // The shift leaves 8 bits.
    (counter >> LANE_BITS) as u8
}

/// A peer of a [`Handshaker`](crate::Handshaker): a small handle, in the order peers were added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub(crate) u32);

impl PeerId {
    /// The handle as an index, 0 for the first peer added.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Which side of the handshake this node was for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This node sent the initiation. The peer has the keys already: send at once.
    Initiator,
    /// This node answered an initiation. The response may still be lost: receive at once, but
    /// keep sending on the previous session (if any) until a first packet opens under these
    /// keys, then switch.
    Responder,
}

/// The keys of one session with one peer, as the data path installs them.
///
/// Packets this node sends carry `remote_index` (the peer finds its keys by it); packets it
/// receives carry `local_index`. The key id of the send key is `remote_index` and that of the
/// receive key `local_index`, so the 96-bit nonce is `receiver index || counter` on both ends.
///
/// Not `Clone`; the key bytes are zeroized on drop and never shown by `Debug`.
pub struct SessionKeys {
    /// The peer this session is with.
    pub peer: PeerId,
    /// This node's index for the session: incoming packets carry it.
    pub local_index: u32,
    /// The peer's index for the session: outgoing packets carry it.
    pub remote_index: u32,
    /// Which side of the handshake this node was.
    pub role: Role,
    /// When the handshake completed on this node.
    pub established_at: Instant,
    pub(crate) send: Zeroizing<[u8; IDENTITY_KEY_LEN]>,
    pub(crate) recv: Zeroizing<[u8; IDENTITY_KEY_LEN]>,
}

impl SessionKeys {
    /// A sealer for sending worker `lane` (`< MAX_LANES`): counters
    /// `[lane << 56, (lane + 1) << 56)` under the session's send key.
    pub fn sealer(&self, lane: usize) -> Result<Sealer, Error> {
        Sealer::lane(SessionKey::new(self.remote_index, &self.send[..])?, lane)
    }

    /// The opener for packets the peer sends on this session.
    pub fn opener(&self) -> Result<Opener, Error> {
        Ok(Opener::new(SessionKey::new(
            self.local_index,
            &self.recv[..],
        )?))
    }

    /// A fresh replay state for this session's incoming packets, to share (in an `Arc`)
    /// between the receiving workers.
    pub fn replay(&self) -> SharedReplay {
        SharedReplay::new()
    }
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("peer", &self.peer)
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("role", &self.role)
            .field("established_at", &self.established_at)
            .finish_non_exhaustive()
    }
}
