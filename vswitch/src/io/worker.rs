//! One datapath worker: a thread that owns a replica of the switch core, an underlay of its own
//! and one queue of every TAP, waits on them with epoll (mio), and feeds the core in bounded
//! batches.
//!
//! Workers share nothing on the per-frame path. The control plane reaches them with typed
//! [`Command`]s applied between batches; what a worker's switch learns from traffic reaches its
//! siblings as [`Update`] messages, applied between their batches.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use quinn_udp::RecvMeta;
use rustc_hash::FxHashMap;

use super::command::Command;
use super::datapath::{
    FDB_LISTING_INTERVAL, FdbListing, SNAPSHOT_INTERVAL, SnapshotSlot, WorkerSnapshot,
};
use super::tap::TapQueue;
use super::udp::Underlay;
use crate::offload::{
    self, Coalescer, Offload, Segments, VNET_HDR_LEN, VnetHdr, complete_partial_checksum,
};
use crate::switch::{
    Counters, Output, PortConfig, PortId, SessionInstall, Site, Switch, SwitchError, Update,
};
use crate::tunnel::{self, SEALED_HEADER_LEN, SEALED_TAG_LEN, VXLAN_HEADER_LEN};
use crate::wire::Vni;

pub(super) const WAKER: Token = Token(0);
pub(super) const UNDERLAY: Token = Token(1);
const FIRST_PORT: usize = 2;

/// Frames read from one TAP queue before the worker turns to the others.
const PORT_BUDGET: usize = 64;
/// recvmmsg calls per round before the worker turns to the TAP queues.
const UNDERLAY_BUDGET: usize = 4;
/// Room for one frame read from a TAP queue (a 64 KB super-frame when offloads are on).
const FRAME_BUFFER: usize = 65_536 + VNET_HDR_LEN;
/// Room for one (possibly GRO-coalesced) receive.
const DATAGRAM_BUFFER: usize = 65_536;
/// Bytes one recvmmsg aims to bring in: few enough that they are still in cache when they are
/// coalesced and written to a TAP. Four 64 KB GRO datagrams a call gave 12% more single-stream
/// TCP than thirty-two; small datagrams still come thirty-two a call.
const RECV_BYTES: usize = 4 * DATAGRAM_BUFFER;

/// What a worker tells the control plane about sealed networks.
#[derive(Debug)]
pub enum SealingEvent {
    /// A handshake message arrived on the VXLAN port.
    Handshake {
        /// Who sent it.
        from: SocketAddr,
        /// The message.
        message: Vec<u8>,
    },
    /// Frames wait for a session with the peer at this address.
    SessionWanted(SocketAddr),
}

/// Why a port could not be added.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The core refused the port's configuration.
    #[error(transparent)]
    Switch(#[from] SwitchError),
    /// The TAP queue could not be watched.
    #[error("watching the TAP queue: {0}")]
    Register(io::Error),
}

/// A frame for a gateway service, from a port.
#[derive(Debug, Clone)]
pub struct ServiceRequest {
    /// The port it came from (and the answer goes to).
    pub port: PortId,
    /// The whole frame.
    pub frame: Vec<u8>,
}

/// Counters of the I/O shell itself (the core counts what it drops and why).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct IoCounters {
    /// Frames the kernel refused on a TAP write.
    pub tap_write_errors: u64,
    /// Datagrams the kernel refused to send.
    pub udp_send_errors: u64,
    /// Send system calls made.
    pub udp_send_calls: u64,
    /// Receive system calls made.
    pub udp_recv_calls: u64,
    /// Loop iterations (wakeups).
    pub wakeups: u64,
    /// Super-frames or offload headers from a TAP that could not be segmented or completed.
    pub offload_errors: u64,
    /// Updates received from sibling workers and applied.
    pub updates_applied: u64,
    /// Gateway service requests (DNS queries) dropped because the name server's queue was full.
    pub service_overflows: u64,
}

impl IoCounters {
    /// Adds another worker's counters to these.
    pub fn add(&mut self, other: &IoCounters) {
        self.tap_write_errors += other.tap_write_errors;
        self.udp_send_errors += other.udp_send_errors;
        self.udp_send_calls += other.udp_send_calls;
        self.udp_recv_calls += other.udp_recv_calls;
        self.wakeups += other.wakeups;
        self.offload_errors += other.offload_errors;
        self.updates_applied += other.updates_applied;
        self.service_overflows += other.service_overflows;
    }
}

/// How a worker reaches one of its siblings.
pub(super) struct Sibling {
    pub(super) updates: mpsc::Sender<Arc<[Update]>>,
    pub(super) waker: Arc<Waker>,
}

/// A port as one worker serves it.
struct PortSlot {
    id: PortId,
    /// The queue this worker reads, if the TAP has one for it.
    read: Option<Arc<TapQueue>>,
    /// The queue this worker writes to.
    write: Arc<TapQueue>,
    /// Readable and not yet drained (epoll is edge-triggered).
    pending: bool,
}

/// The state a datapath thread owns; the control plane changes it only by [`Command`]s.
pub struct Worker {
    index: usize,
    switch: Switch,
    underlay: Underlay,
    poll: Poll,
    inbox: mpsc::Receiver<Command>,
    updates: mpsc::Receiver<Arc<[Update]>>,
    siblings: Vec<Sibling>,
    published: Vec<Update>,
    ports: Vec<Option<PortSlot>>,
    slots: FxHashMap<PortId, usize>,
    out: Output,
    segments: Segments,
    coalescer: Coalescer,
    /// Datagrams to ask for in the next recvmmsg, from the size of the last ones.
    recv_batch: usize,
    counters: IoCounters,
    pub(super) running: bool,
    /// Where handshake messages and requests for sessions go; `None` without sealed networks.
    sealing: Option<mpsc::Sender<SealingEvent>>,
    /// Where gateway service requests (DNS queries) go; `None` without a name server.
    services: Option<mpsc::SyncSender<ServiceRequest>>,
    /// Scratch for the switch's lists of peers.
    addrs: Vec<SocketAddr>,
    snapshot: Arc<SnapshotSlot>,
    /// What the last snapshot showed, to tell whether anything changed since.
    snapshot_counters: (Counters, IoCounters),
    snapshot_taken: Instant,
    /// A command was applied: publish at once.
    snapshot_stale: bool,
    fdb_listing: Arc<FdbListing>,
    /// The MAC table changed after its last listing (listings are rate-limited).
    fdb_listing_behind: bool,
}

/// What a worker is built from.
pub(super) struct WorkerParts {
    pub(super) index: usize,
    pub(super) switch: Switch,
    pub(super) underlay: Underlay,
    pub(super) poll: Poll,
    pub(super) inbox: mpsc::Receiver<Command>,
    pub(super) updates: mpsc::Receiver<Arc<[Update]>>,
    pub(super) siblings: Vec<Sibling>,
    pub(super) snapshot: Arc<SnapshotSlot>,
}

impl Worker {
    pub(super) fn new(parts: WorkerParts) -> io::Result<Self> {
        let WorkerParts {
            index,
            mut switch,
            underlay,
            poll,
            inbox,
            updates,
            siblings,
            snapshot,
        } = parts;
        poll.registry().register(
            &mut SourceFd(&underlay.receiver_fd()),
            UNDERLAY,
            Interest::READABLE,
        )?;
        switch.set_replicated(!siblings.is_empty());
        Ok(Worker {
            index,
            switch,
            underlay,
            poll,
            inbox,
            updates,
            siblings,
            published: Vec::new(),
            ports: Vec::new(),
            slots: FxHashMap::default(),
            out: Output::default(),
            segments: Segments::with_headroom(VXLAN_HEADER_LEN),
            coalescer: Coalescer::new(),
            recv_batch: quinn_udp::BATCH_SIZE,
            counters: IoCounters::default(),
            running: true,
            sealing: None,
            services: None,
            addrs: Vec::new(),
            snapshot,
            snapshot_counters: Default::default(),
            snapshot_taken: Instant::now(),
            snapshot_stale: true,
            fdb_listing: WorkerSnapshot::default().fdb,
            fdb_listing_behind: false,
        })
    }

    /// This worker's position among the datapath's workers, from 0.
    pub(super) fn index(&self) -> usize {
        self.index
    }

    /// The switch core, for control-plane changes.
    pub(super) fn switch(&mut self) -> &mut Switch {
        &mut self.switch
    }

    /// Adds a port to the core and starts serving the TAP: this worker reads the queue with its
    /// own index, if there is one, and writes to queue `index % queues.len()`.
    pub(super) fn add_port(
        &mut self,
        queues: &[Arc<TapQueue>],
        config: PortConfig,
    ) -> Result<PortId, PortError> {
        self.serve_tap(queues, |switch| switch.add_port(config))
    }

    /// Adds the network's host port (see [`Switch::add_host_port`]) served by the TAP, as
    /// [`Worker::add_port`] does for a container's.
    pub fn add_host_port(
        &mut self,
        queues: &[Arc<TapQueue>],
        vni: Vni,
    ) -> Result<PortId, PortError> {
        self.serve_tap(queues, |switch| switch.add_host_port(vni))
    }

    fn serve_tap(
        &mut self,
        queues: &[Arc<TapQueue>],
        add: impl FnOnce(&mut Switch) -> Result<PortId, SwitchError>,
    ) -> Result<PortId, PortError> {
        let Some(write) = queues.get(self.index % queues.len().max(1)).cloned() else {
            return Err(PortError::Register(io::Error::other(
                "the TAP has no queue",
            )));
        };
        let read = queues.get(self.index).cloned();
        let id = add(&mut self.switch)?;
        if write.has_vnet_hdr() && !write.takes_uso() {
            // A kernel without USO on TAPs: UDP is written as it came, datagram by datagram.
            self.coalescer.set_udp(false);
        }
        let slot = match self.ports.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.ports.push(None);
                self.ports.len() - 1
            }
        };
        if let Some(queue) = &read
            && let Err(e) = self.poll.registry().register(
                &mut SourceFd(&queue.raw_fd()),
                Token(FIRST_PORT + slot),
                Interest::READABLE,
            )
        {
            self.switch.remove_port(id);
            return Err(PortError::Register(e));
        }
        // Frames may already be queued: edge-triggered readiness would not report them.
        self.ports[slot] = Some(PortSlot {
            id,
            pending: read.is_some(),
            read,
            write,
        });
        self.slots.insert(id, slot);
        Ok(id)
    }

    /// Removes a port from the core and stops serving its TAP.
    pub(super) fn remove_port(&mut self, id: PortId) -> bool {
        let removed = self.switch.remove_port(id);
        if let Some(slot) = self.slots.remove(&id)
            && let Some(port) = self.ports[slot].take()
            && let Some(queue) = &port.read
        {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&queue.raw_fd()));
        }
        removed
    }

    pub(super) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut frame = vec![0u8; FRAME_BUFFER];
        let mut datagrams: Vec<Vec<u8>> = (0..quinn_udp::BATCH_SIZE)
            .map(|_| vec![0u8; DATAGRAM_BUFFER])
            .collect();
        let mut meta = vec![RecvMeta::default(); quinn_udp::BATCH_SIZE];
        let mut underlay_pending = true;
        let mut next_tick: Option<Instant> = None;
        let mut next_snapshot: Option<Instant> = None;

        while self.running {
            let busy = underlay_pending || self.ports.iter().flatten().any(|p| p.pending);
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                let wake = [next_tick, next_snapshot].into_iter().flatten().min();
                wake.map(|t| t.saturating_duration_since(Instant::now()))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.counters.wakeups += 1;
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    UNDERLAY => underlay_pending = true,
                    Token(t) => {
                        if let Some(Some(port)) = self.ports.get_mut(t - FIRST_PORT) {
                            port.pending = true;
                        }
                    }
                }
            }
            while let Ok(command) = self.inbox.try_recv() {
                self.execute(command);
                self.snapshot_stale = true;
            }

            let now = Instant::now();
            while let Ok(updates) = self.updates.try_recv() {
                for update in updates.iter() {
                    self.switch.apply(now, update);
                }
                self.counters.updates_applied += updates.len() as u64;
            }
            if underlay_pending {
                underlay_pending = self.receive_datagrams(now, &mut datagrams, &mut meta);
            }
            for slot in 0..self.ports.len() {
                if self.ports[slot].as_ref().is_some_and(|p| p.pending) {
                    self.read_port(now, slot, &mut frame);
                }
            }
            self.flush();
            self.sealing_housekeeping();
            self.log_denied();

            if next_tick.is_none_or(|t| t <= now) {
                self.switch.handle_timeout(now);
                next_tick = self.switch.poll_timeout();
            }
            self.publish();
            next_snapshot = self.publish_snapshot(now);
        }
        Ok(())
    }

    /// Publishes a snapshot for queries when something changed and the last one is at least
    /// [`SNAPSHOT_INTERVAL`] old (at once after a command); otherwise returns when to try
    /// again, `None` when nothing waits to be published.
    fn publish_snapshot(&mut self, now: Instant) -> Option<Instant> {
        if self
            .snapshot
            .wanted
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            self.snapshot_stale = true;
        }
        let (counters, io) = &self.snapshot_counters;
        let counted = self.switch.counters() != counters
            || self.counters.tap_write_errors != io.tap_write_errors
            || self.counters.udp_send_errors != io.udp_send_errors
            || self.counters.offload_errors != io.offload_errors
            || self.counters.updates_applied != io.updates_applied;
        let listing_due = self.fdb_listing.taken + FDB_LISTING_INTERVAL;
        if !self.snapshot_stale {
            if counted && now < self.snapshot_taken + SNAPSHOT_INTERVAL {
                return Some(self.snapshot_taken + SNAPSHOT_INTERVAL);
            }
            if !counted {
                // Only the MAC table listing may lag behind.
                return match self.fdb_listing_behind {
                    false => None,
                    true if now < listing_due => Some(listing_due),
                    true => {
                        self.list_fdb(now);
                        self.store_snapshot(now);
                        None
                    }
                };
            }
        }
        if self.snapshot_stale || now >= listing_due {
            self.list_fdb(now);
        } else {
            self.fdb_listing_behind = true;
        }
        self.store_snapshot(now);
        self.fdb_listing_behind.then_some(listing_due)
    }

    /// Lists the MAC table for queries (peers by address: ids differ between workers).
    fn list_fdb(&mut self, now: Instant) {
        let switch = &self.switch;
        let entries = switch
            .fdb_entries(now)
            .filter_map(|e| {
                let site = match e.location {
                    crate::fdb::Location::Port(port) => Site::Port(port),
                    crate::fdb::Location::Peer(peer) => Site::Peer(switch.peer(peer)?.addr),
                };
                Some((e, site))
            })
            .collect();
        self.fdb_listing = Arc::new(FdbListing {
            taken: now,
            entries,
        });
        self.fdb_listing_behind = false;
    }

    fn store_snapshot(&mut self, now: Instant) {
        let snapshot = Arc::new(WorkerSnapshot {
            taken: now,
            counters: self.switch.counters().clone(),
            io: self.counters,
            fdb_entries: self.switch.fdb().len(),
            ports: self.switch.ports().map(|p| (p.id, *p.stats)).collect(),
            peers: self.switch.peers().map(|p| (p.addr, *p.stats)).collect(),
            fdb: Arc::clone(&self.fdb_listing),
        });
        self.snapshot_counters = (snapshot.counters.clone(), self.counters);
        self.snapshot_taken = now;
        self.snapshot_stale = false;
        *self
            .snapshot
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = snapshot;
    }

    /// Sends what this worker's switch learned to its siblings.
    fn publish(&mut self) {
        if !self.switch.has_updates() {
            return;
        }
        self.switch.take_updates(&mut self.published);
        let updates: Arc<[Update]> = self.published.drain(..).collect();
        for sibling in &self.siblings {
            // A sibling that stopped takes no more updates; the datapath is shutting down.
            if sibling.updates.send(Arc::clone(&updates)).is_ok() {
                let _ = sibling.waker.wake();
            }
        }
    }

    /// Drains up to `UNDERLAY_BUDGET` receive calls; true when more may be waiting. Frames for
    /// ports with offloads are coalesced per flow and written at the end of the batch.
    fn receive_datagrams(
        &mut self,
        now: Instant,
        buffers: &mut [Vec<u8>],
        meta: &mut [RecvMeta],
    ) -> bool {
        let mut more = true;
        for _ in 0..UNDERLAY_BUDGET {
            let mut free = buffers.iter_mut();
            let mut slices: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] = std::array::from_fn(|_| {
                IoSliceMut::new(free.next().map_or(&mut [][..], |b| b.as_mut_slice()))
            });
            self.counters.udp_recv_calls += 1;
            let batch = self.recv_batch.min(meta.len());
            let count = match self.underlay.recv(&mut slices[..batch], &mut meta[..batch]) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // WouldBlock: drained. Other errors (an ICMP error queued on the socket)
                    // concern one earlier datagram; the next wakeup carries on.
                    more = false;
                    break;
                }
            };
            let received: usize = meta.iter().take(count).map(|m| m.len).sum();
            self.recv_batch = next_recv_batch(count, received, meta.len());
            for (buffer, meta) in buffers.iter_mut().zip(meta.iter()).take(count) {
                let stride = meta.stride.max(1);
                let len = meta.len.min(buffer.len());
                for datagram in buffer[..len].chunks_mut(stride) {
                    if tunnel::classify(datagram) == tunnel::Kind::Handshake {
                        if let Some(events) = &self.sealing {
                            let _ = events.send(SealingEvent::Handshake {
                                from: meta.addr,
                                message: datagram.to_vec(),
                            });
                        }
                        continue;
                    }
                    self.switch
                        .handle_datagram(now, meta.addr, datagram, &mut self.out);
                    self.send_peer_reply();
                    if self.out.ports().is_empty() {
                        continue;
                    }
                    let Some(frame) = datagram.get_mut(self.out.frame_range()) else {
                        continue;
                    };
                    let Self {
                        out,
                        ports,
                        slots,
                        coalescer,
                        counters,
                        segments,
                        ..
                    } = self;
                    let mut deliver = |frame: &[u8]| {
                        for id in out.ports() {
                            let Some(&slot) = slots.get(id) else { continue };
                            let Some(Some(port)) = ports.get(slot) else {
                                continue;
                            };
                            if port.write.has_vnet_hdr() {
                                coalescer.push(slot as u32, frame, &mut |slot, hdr, bytes| {
                                    write_slot(ports, counters, slot as usize, hdr, bytes);
                                });
                            } else if port.write.write(&VnetHdr::default(), frame).is_err() {
                                counters.tap_write_errors += 1;
                            }
                        }
                    };
                    let offload = *out.offload();
                    if offload.is_gso() {
                        // A peer that kept offloads end to end sent a TCP super-frame: cut it
                        // into MTU-sized segments with full checksums, as GSO would have.
                        segments.clear();
                        if offload::segment(&offload.hdr, frame, segments).is_err() {
                            counters.offload_errors += 1;
                            continue;
                        }
                        segments.iter().for_each(&mut deliver);
                        continue;
                    }
                    // A sender whose checksum offload never ran (a Linux peer behind a veth)
                    // left only the pseudo-header sum: finish it, as its NIC would have.
                    complete_partial_checksum(frame);
                    deliver(frame);
                }
            }
        }
        let Self {
            ports,
            coalescer,
            counters,
            ..
        } = self;
        coalescer.flush(&mut |slot, hdr, bytes| {
            write_slot(ports, counters, slot as usize, hdr, bytes);
        });
        more
    }

    /// Reads up to `PORT_BUDGET` frames from one TAP queue.
    fn read_port(&mut self, now: Instant, slot: usize, buf: &mut [u8]) {
        for _ in 0..PORT_BUDGET {
            let Some((id, queue)) = self.ports[slot]
                .as_ref()
                .and_then(|p| Some((p.id, p.read.as_ref()?)))
            else {
                return;
            };
            let n = match queue.read(buf) {
                Ok(n) => n.min(buf.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // WouldBlock: drained. Any other error: the device is gone; detach cleans up.
                    if let Some(port) = self.ports[slot].as_mut() {
                        port.pending = false;
                    }
                    return;
                }
            };
            if queue.has_vnet_hdr() {
                self.switch
                    .handle_tap_read(now, id, &buf[..n], &mut self.out);
            } else {
                self.switch.handle_frame(now, id, &buf[..n], &mut self.out);
            }
            // Routed (MACs, TTL) or clamped (MSS), the frame is patched before it goes anywhere.
            self.out.rewrite(buf);
            let range = self.out.frame_range();
            let frame = &buf[range.clone()];
            // Only the header the switch rebuilt is acted on, never the one the container wrote.
            let offload = *self.out.offload();
            let needs_work = offload.hdr != VnetHdr::default();
            // Whether the frame has been cut into `self.segments`, once an output needs it.
            let mut segmented = None;
            for &dest in self.out.ports() {
                let Some(&dest_slot) = self.slots.get(&dest) else {
                    continue;
                };
                let Some(Some(port)) = self.ports.get(dest_slot) else {
                    continue;
                };
                let takes_whole =
                    port.write.has_vnet_hdr() && (!offload.is_uso() || port.write.takes_uso());
                if takes_whole || !needs_work {
                    write_slot(
                        &self.ports,
                        &mut self.counters,
                        dest_slot,
                        &offload.hdr,
                        frame,
                    );
                    continue;
                }
                // This port takes only finished, MTU-sized frames.
                if !cut_once(
                    &mut self.segments,
                    &mut self.counters,
                    &offload.hdr,
                    frame,
                    &mut segmented,
                ) {
                    break;
                }
                for piece in self.segments.iter() {
                    write_slot(
                        &self.ports,
                        &mut self.counters,
                        dest_slot,
                        &VnetHdr::default(),
                        piece,
                    );
                }
            }
            if let Some((reply_port, reply)) = self.out.reply() {
                if let Some(&reply_slot) = self.slots.get(&reply_port) {
                    write_slot(
                        &self.ports,
                        &mut self.counters,
                        reply_slot,
                        &VnetHdr::default(),
                        reply,
                    );
                }
            }
            if let Some(port) = self.out.service() {
                self.hand_to_service(port, frame);
            }
            if self.out.transmits().is_empty() {
                continue;
            }
            if self.out.sealed() {
                self.send_sealed(&offload, &mut buf[range], &mut segmented);
                continue;
            }
            if offload.is_gso() {
                if cut_once(
                    &mut self.segments,
                    &mut self.counters,
                    &offload.hdr,
                    frame,
                    &mut segmented,
                ) {
                    self.send_segments();
                }
                continue;
            }
            // Ports have had the frame as it came: its checksum can now be finished in place.
            let frame = &mut buf[range];
            if offload::complete_checksum(&offload.hdr, frame).is_err() {
                self.counters.offload_errors += 1;
                continue;
            }
            for transmit in self.out.transmits() {
                self.underlay.queue(
                    transmit.addr,
                    self.out.flow_hash(),
                    self.out.vxlan_header(),
                    frame,
                );
            }
        }
    }

    /// Sends `frame` (cut into segments first when it is a super-frame) sealed to every
    /// transmit of the last output: each datagram sealed in place in the underlay's batch.
    /// Frames for a peer without a session wait in the switch until it is up.
    fn send_sealed(&mut self, offload: &Offload, frame: &mut [u8], segmented: &mut Option<bool>) {
        let vni = self.out.vni();
        let hash = self.out.flow_hash();
        let single = if offload.is_gso() {
            if !cut_once(
                &mut self.segments,
                &mut self.counters,
                &offload.hdr,
                frame,
                segmented,
            ) {
                return;
            }
            false
        } else {
            if offload::complete_checksum(&offload.hdr, frame).is_err() {
                self.counters.offload_errors += 1;
                return;
            }
            true
        };
        let Self {
            out,
            switch,
            underlay,
            segments,
            ..
        } = self;
        let frame: &[u8] = frame;
        for transmit in out.transmits() {
            let mut send = |piece: &[u8]| {
                if !switch.has_session(transmit.peer) {
                    switch.hold(transmit.peer, vni, piece);
                    return;
                }
                let datagram = underlay.queue_with_room(
                    transmit.addr,
                    hash,
                    &[0; SEALED_HEADER_LEN],
                    piece,
                    SEALED_TAG_LEN,
                );
                // Sealing fails only when the session's counters run out, and sessions are
                // rekeyed long before.
                let _ = switch.seal(transmit.peer, vni, datagram);
            };
            if single {
                send(frame);
            } else {
                segments.iter().for_each(&mut send);
            }
        }
    }

    /// Sends gateway service requests (DNS queries) to `services` from now on; when its queue
    /// is full, requests are dropped and counted (`service_overflows`).
    pub(super) fn set_services(&mut self, services: mpsc::SyncSender<ServiceRequest>) {
        self.services = Some(services);
    }

    fn hand_to_service(&mut self, port: PortId, frame: &[u8]) {
        if let Some(services) = &self.services {
            let request = ServiceRequest {
                port,
                frame: frame.to_vec(),
            };
            if services.try_send(request).is_err() {
                self.counters.service_overflows += 1;
            }
        }
    }

    /// Writes a frame the control plane made (a DNS answer) to a port.
    pub(super) fn write_to_port(&mut self, port: PortId, frame: &[u8]) {
        if let Some(&slot) = self.slots.get(&port) {
            write_slot(
                &self.ports,
                &mut self.counters,
                slot,
                &VnetHdr::default(),
                frame,
            );
        }
    }

    /// Logs the denied flows the core kept (as many as the shared log limiter allowed).
    fn log_denied(&mut self) {
        if !self.switch.has_denied() {
            return;
        }
        let Some(compiled) = self.switch.policy().cloned() else {
            return;
        };
        for d in self.switch.take_denied() {
            let rule = d.rule.map_or_else(
                || "default deny (selected, no rule allows it)".to_owned(),
                |r| format!("rule #{} {}", r.0, compiled.describe(r)),
            );
            let f = &d.flow;
            tracing::info!(
                src = %f.src, dst = %f.dst, proto = f.proto.0, sport = f.src_port,
                dport = f.dst_port, direction = %d.direction, suppressed = d.suppressed,
                "policy denied a flow: {rule}"
            );
        }
    }

    /// Sends the frame the switch generated for a peer (an ICMP error answering its frame), if
    /// any: sealed on a sealed network (dropped while the session is not up: it only answers).
    fn send_peer_reply(&mut self) {
        let Self {
            out,
            switch,
            underlay,
            ..
        } = self;
        let Some((transmit, reply)) = out.peer_reply() else {
            return;
        };
        if !out.sealed() {
            underlay.queue(transmit.addr, out.flow_hash(), out.vxlan_header(), reply);
        } else if switch.has_session(transmit.peer) {
            let datagram = underlay.queue_with_room(
                transmit.addr,
                out.flow_hash(),
                &[0; SEALED_HEADER_LEN],
                reply,
                SEALED_TAG_LEN,
            );
            let _ = switch.seal(transmit.peer, out.vni(), datagram);
        }
    }

    /// Sends handshake messages and requests for sessions to `events` from now on.
    pub(super) fn set_sealing_events(&mut self, events: mpsc::Sender<SealingEvent>) {
        self.sealing = Some(events);
    }

    /// Tells the control plane which peers need a session, and sends what waited for peers
    /// whose session came up.
    fn sealing_housekeeping(&mut self) {
        self.switch.take_handshakes_wanted(&mut self.addrs);
        for addr in self.addrs.drain(..) {
            if let Some(events) = &self.sealing {
                let _ = events.send(SealingEvent::SessionWanted(addr));
            }
        }
        let mut ready = std::mem::take(&mut self.addrs);
        self.switch.take_sessions_ready(&mut ready);
        for addr in ready.drain(..) {
            self.send_held(addr);
        }
        self.addrs = ready;
    }

    /// Seals and sends what the switch held for the peer at `addr` while its session came up.
    fn send_held(&mut self, addr: SocketAddr) {
        let Some(peer) = self.switch.peer_id(addr) else {
            return;
        };
        for (vni, frame) in self.switch.take_held(peer) {
            let hash = crate::wire::flow_hash(&frame);
            let datagram = self.underlay.queue_with_room(
                addr,
                hash,
                &[0; SEALED_HEADER_LEN],
                &frame,
                SEALED_TAG_LEN,
            );
            let _ = self.switch.seal(peer, vni, datagram);
        }
        self.flush();
    }

    /// Sends one datagram as it is (a handshake message) to `addr`.
    pub(super) fn send_raw(&mut self, addr: SocketAddr, bytes: &[u8]) {
        self.underlay.queue(addr, 0, &[], bytes);
        self.flush();
    }

    /// Installs a session on this worker's switch and sends what waited for it. The first
    /// worker of the side that sends at once also sends a keepalive, so that the peer (which
    /// sends on a new session only once something arrived on it) can answer at once.
    pub(super) fn install_session(&mut self, install: SessionInstall) {
        let addr = install.peer;
        let send_now = install.send_now;
        if self.switch.install_session(install) && send_now {
            if self.index == 0
                && let Some(peer) = self.switch.peer_id(addr)
            {
                let datagram = self.underlay.queue_with_room(
                    addr,
                    0,
                    &[0; SEALED_HEADER_LEN],
                    &[],
                    SEALED_TAG_LEN,
                );
                let _ = self
                    .switch
                    .seal(peer, crate::wire::Vni::default(), datagram);
            }
            self.send_held(addr);
        }
    }

    /// Sends the segments of a super-frame, which already sit behind room for the VXLAN
    /// header, to the transmits of the last output: one GSO train per peer.
    fn send_segments(&mut self) {
        self.segments.fill_headroom(self.out.vxlan_header());
        // Segmentation cuts at one size, only the last segment shorter: always uniform.
        let Some(len) = self.segments.uniform_len() else {
            return;
        };
        for transmit in self.out.transmits() {
            self.underlay.send_train(
                transmit.addr,
                self.out.flow_hash(),
                self.segments.as_bytes(),
                len + VXLAN_HEADER_LEN,
            );
        }
    }

    fn flush(&mut self) {
        let stats = self.underlay.flush();
        self.counters.udp_send_calls += stats.syscalls;
        self.counters.udp_send_errors += stats.failed;
    }
}

/// Cuts `frame` into `segments` unless `done` says it already was (or could not be); true when
/// the segments are there. A frame that cannot be segmented is counted once.
fn cut_once(
    segments: &mut Segments,
    counters: &mut IoCounters,
    hdr: &VnetHdr,
    frame: &[u8],
    done: &mut Option<bool>,
) -> bool {
    *done.get_or_insert_with(|| {
        segments.clear();
        let cut = offload::segment(hdr, frame, segments).is_ok();
        if !cut {
            counters.offload_errors += 1;
        }
        cut
    })
}

/// How many datagrams to ask for after a receive of `count` datagrams totalling `received`
/// bytes: as many as bring in about [`RECV_BYTES`], from 1 to `most`.
fn next_recv_batch(count: usize, received: usize, most: usize) -> usize {
    (RECV_BYTES * count / received.max(1)).clamp(1, most)
}

/// Writes one frame to the port in `slot`, counting a refusal.
fn write_slot(
    ports: &[Option<PortSlot>],
    counters: &mut IoCounters,
    slot: usize,
    hdr: &VnetHdr,
    frame: &[u8],
) {
    if let Some(Some(port)) = ports.get(slot)
        && port.write.write(hdr, frame).is_err()
    {
        counters.tap_write_errors += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_batches_shrink_for_large_datagrams_and_grow_back() {
        // Full GRO datagrams: four a call.
        assert_eq!(next_recv_batch(2, 2 * DATAGRAM_BUFFER, 32), 4);
        // Small datagrams (or nothing measurable): as many as allowed.
        assert_eq!(next_recv_batch(32, 32 * 1500, 32), 32);
        assert_eq!(next_recv_batch(1, 0, 32), 32);
        // Never less than one.
        assert_eq!(next_recv_batch(1, 10 * RECV_BYTES, 32), 1);
    }
}
