//! Sealed networks in the core: the sessions this replica seals and opens with, and the frames
//! held for a peer whose session is not up yet.
//!
//! The control plane runs the handshakes (`crypto::Handshaker`) and installs each session on
//! every replica: a sealer of the replica's own counter lane (so no two workers ever use one
//! nonce), an opener, and the session's replay window, shared by every replica because the
//! sender's source port, not the session, picks the receiving worker. A frame for a peer
//! without a session is held (a few per peer, then dropped and counted) and the peer is named
//! in [`Switch::take_handshakes_wanted`]; it leaves sealed once the session is installed. A
//! sealed network never sends in clear and never accepts a plain datagram.

use core::net::SocketAddr;
use core::ops::Range;
use std::collections::VecDeque;
use std::sync::Arc;

use crypto::{Opener, Sealer, SharedReplay};

use super::{DropReason, PeerId, Switch};
use crate::tunnel::{SEALED_HEADER_LEN, SEALED_TAG_LEN, SealedHeader};
use crate::wire::Vni;

/// Frames held for one peer while its session comes up, at most.
pub const HELD_FRAMES: usize = 32;
/// Bytes held for one peer, at most.
pub const HELD_BYTES: usize = 256 * 1024;

/// One session as a replica installs it.
pub struct SessionInstall {
    /// The peer's configured underlay address.
    pub peer: SocketAddr,
    /// This node's index of the session: received datagrams carry it.
    pub local_index: u32,
    /// The peer's index: sent datagrams carry it.
    pub remote_index: u32,
    /// The replica's sealer: its own counter lane of the session's send key.
    pub sealer: Sealer,
    /// Seal with this session at once (the initiator's side), or only once the peer's first
    /// datagram opens under it (the responder's side: until then the peer may not have the
    /// keys, so the current session goes on carrying what is sent).
    pub send_now: bool,
    /// The opener for the peer's datagrams.
    pub opener: Opener,
    /// The session's replay window, shared by every replica.
    pub replay: Arc<SharedReplay>,
}

/// What a replica seals with towards one peer.
pub(super) struct SendSession {
    local_index: u32,
    remote_index: u32,
    sealer: Sealer,
    /// The sealer's first counter: how far it got since is what this replica sent.
    first_counter: u64,
}

impl SendSession {
    fn new(local_index: u32, remote_index: u32, sealer: Sealer) -> Self {
        Self {
            local_index,
            remote_index,
            first_counter: sealer.next_counter(),
            sealer,
        }
    }
}

/// What a replica opens with, by local index.
pub(super) struct RecvSession {
    peer: PeerId,
    opener: Opener,
    replay: Arc<SharedReplay>,
    /// The sealer to switch to when the first datagram opens under this session.
    pending_send: Option<(u32, Sealer)>,
}

/// Per-peer sealing state.
#[derive(Default)]
pub(super) struct PeerSealing {
    send: Option<SendSession>,
    held: VecDeque<(Vni, Vec<u8>)>,
    held_bytes: usize,
    wanted: bool,
}

impl core::fmt::Debug for PeerSealing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PeerSealing")
            .field("session", &self.send.as_ref().map(|s| s.remote_index))
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl Clone for PeerSealing {
    /// Sessions are installed per replica, never copied: a clone starts without one.
    fn clone(&self) -> Self {
        PeerSealing::default()
    }
}

/// Sessions this replica opens with, by local index.
#[derive(Default)]
pub(super) struct Sessions {
    recv: rustc_hash::FxHashMap<u32, RecvSession>,
    /// Peers whose send session came up on receipt since the last look.
    ready: Vec<SocketAddr>,
}

impl core::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sessions")
            .field("open", &self.recv.len())
            .finish()
    }
}

impl Sessions {
    /// Forgets every session with a peer that is gone.
    pub(super) fn remove_peer(&mut self, peer: PeerId) {
        self.recv.retain(|_, s| s.peer != peer);
    }
}

impl Clone for Sessions {
    /// Sessions are installed per replica, never copied: a clone starts without any.
    fn clone(&self) -> Self {
        Sessions::default()
    }
}

impl Switch {
    /// Installs a session with the peer at `install.peer`; false when there is no such peer.
    pub fn install_session(&mut self, install: SessionInstall) -> bool {
        let Some(id) = self.peer_id(install.peer) else {
            return false;
        };
        let mut pending_send = Some((install.remote_index, install.sealer));
        if install.send_now
            && let Some(p) = self.peer_mut(id)
            && let Some((remote_index, sealer)) = pending_send.take()
        {
            p.sealing.send = Some(SendSession::new(install.local_index, remote_index, sealer));
            p.sealing.wanted = false;
        }
        let recv = RecvSession {
            peer: id,
            opener: install.opener,
            replay: install.replay,
            pending_send,
        };
        self.sessions.recv.insert(install.local_index, recv);
        true
    }

    /// Forgets the session with `local_index`, in both directions.
    pub fn retire_session(&mut self, local_index: u32) {
        self.sessions.recv.remove(&local_index);
        for peer in self.peers.iter_mut().flatten() {
            if peer
                .sealing
                .send
                .as_ref()
                .is_some_and(|s| s.local_index == local_index)
            {
                peer.sealing.send = None;
            }
        }
    }

    /// Datagrams this replica sealed under the session `local_index`, for the count-based
    /// rekey; 0 when it does not send on that session.
    pub fn sealed_on(&self, local_index: u32) -> u64 {
        self.peers
            .iter()
            .flatten()
            .filter_map(|p| p.sealing.send.as_ref())
            .find(|s| s.local_index == local_index)
            .map_or(0, |s| s.sealer.next_counter() - s.first_counter)
    }

    /// Whether frames to `peer` can be sealed now.
    pub fn has_session(&self, peer: PeerId) -> bool {
        self.peers
            .get(peer.0 as usize)
            .and_then(Option::as_ref)
            .is_some_and(|p| p.sealing.send.is_some())
    }

    /// Seals one datagram for `peer` on `vni` in place: `datagram` is
    /// [`SEALED_HEADER_LEN`] bytes of room, the frame, and [`SEALED_TAG_LEN`] bytes of room.
    /// `NoSession` when the peer has no session yet (hold the frame: [`Switch::hold`]).
    pub fn seal(&mut self, peer: PeerId, vni: Vni, datagram: &mut [u8]) -> Result<(), DropReason> {
        let Some(session) = self.peer_mut(peer).and_then(|p| p.sealing.send.as_mut()) else {
            return Err(DropReason::NoSession);
        };
        if datagram.len() < SEALED_HEADER_LEN + SEALED_TAG_LEN {
            return Err(DropReason::Runt);
        }
        let remote_index = session.remote_index;
        let reserved = session
            .sealer
            .reserve()
            .map_err(|_| DropReason::NoSession)?;
        let header = SealedHeader {
            vni,
            receiver: remote_index,
            counter: reserved.counter(),
        };
        let (aad, body) = datagram.split_at_mut(SEALED_HEADER_LEN);
        let Ok(aad) = <&mut [u8; SEALED_HEADER_LEN]>::try_from(aad) else {
            return Err(DropReason::Runt);
        };
        header.write(aad);
        reserved
            .seal_in_place(aad, body)
            .map_err(|_| DropReason::Runt)
    }

    /// Holds `frame` for `peer` until its session is up, and asks for a handshake. Counts a
    /// `no_session` drop when the peer's queue is full.
    pub fn hold(&mut self, peer: PeerId, vni: Vni, frame: &[u8]) {
        let Some(p) = self.peer_mut(peer) else {
            return;
        };
        let full =
            p.sealing.held.len() >= HELD_FRAMES || p.sealing.held_bytes + frame.len() > HELD_BYTES;
        let ask = !p.sealing.wanted;
        p.sealing.wanted = true;
        if full {
            p.stats.drops += 1;
            p.stats.drop_reasons.bump(DropReason::NoSession);
        } else {
            p.sealing.held_bytes += frame.len();
            p.sealing.held.push_back((vni, frame.to_vec()));
        }
        let addr = p.addr;
        if full {
            self.counters.drops.bump(DropReason::NoSession);
        }
        if ask {
            self.handshakes_wanted.push(addr);
        }
    }

    /// The frames held for `peer`, oldest first, to seal and send now that its session is up.
    pub fn take_held(&mut self, peer: PeerId) -> VecDeque<(Vni, Vec<u8>)> {
        match self.peer_mut(peer) {
            Some(p) => {
                p.sealing.held_bytes = 0;
                std::mem::take(&mut p.sealing.held)
            }
            None => VecDeque::new(),
        }
    }

    /// Peers that have frames to send on a sealed network and no session: the control plane
    /// should start (or hurry) a handshake with each.
    pub fn take_handshakes_wanted(&mut self, out: &mut Vec<SocketAddr>) {
        out.append(&mut self.handshakes_wanted);
    }

    /// Peers whose session to send on came up when their first datagram on it opened (the
    /// responder's side): what was held for them can go now.
    pub fn take_sessions_ready(&mut self, out: &mut Vec<SocketAddr>) {
        out.append(&mut self.sessions.ready);
    }

    /// Opens a sealed datagram in place; returns its VNI, where the frame now sits, and the
    /// peer whose session it came on.
    pub(super) fn open(
        &mut self,
        datagram: &mut [u8],
    ) -> Result<(Vni, Range<usize>, PeerId), DropReason> {
        let header = SealedHeader::read(datagram)?;
        let Some(session) = self.sessions.recv.get_mut(&header.receiver) else {
            return Err(DropReason::NoSession);
        };
        let (aad, body) = datagram.split_at_mut(SEALED_HEADER_LEN);
        let opened =
            session
                .opener
                .open_in_place_shared(&session.replay, header.counter, aad, body);
        let len = match opened {
            Ok(plain) => plain.len(),
            Err(crypto::Error::Replayed { .. } | crypto::Error::TooOld { .. }) => {
                return Err(DropReason::Replayed);
            }
            Err(_) => return Err(DropReason::Unauthentic),
        };
        let peer = session.peer;
        if session.pending_send.is_some() {
            self.confirm_session(header.receiver);
            self.publish(super::Update::SessionConfirmed {
                local_index: header.receiver,
            });
        }
        Ok((header.vni, SEALED_HEADER_LEN..SEALED_HEADER_LEN + len, peer))
    }

    /// Seals with the session `local_index` from now on, if it waited for the peer's first
    /// datagram (this replica's or a sibling's), and lets what was held for the peer go.
    pub(super) fn confirm_session(&mut self, local_index: u32) {
        let Some(recv) = self.sessions.recv.get_mut(&local_index) else {
            return;
        };
        let Some((remote_index, sealer)) = recv.pending_send.take() else {
            return;
        };
        let peer = recv.peer;
        if let Some(p) = self.peer_mut(peer) {
            p.sealing.send = Some(SendSession::new(local_index, remote_index, sealer));
            p.sealing.wanted = false;
            let addr = p.addr;
            self.sessions.ready.push(addr);
        }
    }

    fn peer_mut(&mut self, peer: PeerId) -> Option<&mut super::Peer> {
        self.peers.get_mut(peer.0 as usize).and_then(Option::as_mut)
    }
}
