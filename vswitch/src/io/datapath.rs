//! The datapath worker: one thread that owns the switch core, the underlay sockets and every
//! TAP queue, waits on all of them with epoll (mio), and feeds the core in bounded batches.
//!
//! The control plane never shares the core: it sends jobs (closures run on the worker between
//! batches) and waits for their answer, so the per-frame path takes no lock.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use quinn_udp::RecvMeta;
use rustc_hash::FxHashMap;

use super::tap::TapQueue;
use super::udp::Underlay;
use crate::offload::{self, Coalescer, Segments, VNET_HDR_LEN, VnetHdr, complete_partial_checksum};
use crate::switch::{Output, PortConfig, PortId, Switch, SwitchConfig, SwitchError};
use crate::tunnel::VXLAN_HEADER_LEN;

const WAKER: Token = Token(0);
const UNDERLAY: Token = Token(1);
const FIRST_PORT: usize = 2;

/// Frames read from one TAP queue before the worker turns to the others.
const PORT_BUDGET: usize = 64;
/// recvmmsg calls per round before the worker turns to the TAP queues.
const UNDERLAY_BUDGET: usize = 4;
/// Room for one frame read from a TAP queue (a 64 KB super-frame when offloads are on).
const FRAME_BUFFER: usize = 65_536 + VNET_HDR_LEN;
/// Room for one (possibly GRO-coalesced) receive.
const DATAGRAM_BUFFER: usize = 65_536;

/// A unit of control-plane work, run on the worker between batches.
type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// The datapath has stopped (it failed or was shut down), so a job could not run.
#[derive(Debug, thiserror::Error)]
#[error("the datapath is not running")]
pub struct DatapathStopped;

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
}

/// A handle on the running datapath thread.
pub struct Datapath {
    jobs: mpsc::Sender<Job>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<io::Result<()>>>,
    local: SocketAddr,
}

impl Datapath {
    /// Binds the underlay sockets and starts the worker thread.
    pub fn start(config: SwitchConfig, local: SocketAddr, source_ports: usize) -> io::Result<Self> {
        let underlay = Underlay::bind(local, source_ports)?;
        let local = underlay.local_addr()?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        poll.registry().register(
            &mut SourceFd(&underlay.receiver_fd()),
            UNDERLAY,
            Interest::READABLE,
        )?;
        let (jobs, inbox) = mpsc::channel();
        let worker = Worker {
            switch: Switch::new(config),
            underlay,
            poll,
            inbox,
            ports: Vec::new(),
            slots: FxHashMap::default(),
            out: Output::default(),
            segments: Segments::with_headroom(VXLAN_HEADER_LEN),
            coalescer: Coalescer::new(),
            counters: IoCounters::default(),
            running: true,
        };
        let thread = std::thread::Builder::new()
            .name("datapath".into())
            .spawn(move || worker.run())?;
        Ok(Self {
            jobs,
            waker,
            thread: Some(thread),
            local,
        })
    }

    /// The address VXLAN is received on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Runs `job` on the worker and waits for its result.
    pub fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Worker) -> R + Send + 'static,
    ) -> Result<R, DatapathStopped> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |worker: &mut Worker| {
                let _ = reply.send(job(worker));
            }))
            .map_err(|_| DatapathStopped)?;
        self.waker.wake().map_err(|_| DatapathStopped)?;
        answer.recv().map_err(|_| DatapathStopped)
    }

    /// Stops the worker and waits for it; returns the error it stopped on, if any.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        let _ = self
            .jobs
            .send(Box::new(|worker: &mut Worker| worker.running = false));
        let _ = self.waker.wake();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the datapath thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// A TAP queue registered with the worker.
struct PortSlot {
    id: PortId,
    queue: TapQueue,
    /// Readable and not yet drained (epoll is edge-triggered).
    pending: bool,
}

/// The state the datapath thread owns. Jobs get `&mut Worker`.
pub struct Worker {
    switch: Switch,
    underlay: Underlay,
    poll: Poll,
    inbox: mpsc::Receiver<Job>,
    ports: Vec<Option<PortSlot>>,
    slots: FxHashMap<PortId, usize>,
    out: Output,
    segments: Segments,
    coalescer: Coalescer,
    counters: IoCounters,
    running: bool,
}

impl Worker {
    /// The switch core, for control-plane changes and inspection.
    pub fn switch(&mut self) -> &mut Switch {
        &mut self.switch
    }

    /// Counters of the I/O shell.
    pub fn io_counters(&self) -> IoCounters {
        self.counters
    }

    /// Adds a port to the core and starts serving its TAP queue.
    pub fn add_port(&mut self, queue: TapQueue, config: PortConfig) -> Result<PortId, PortError> {
        let id = self.switch.add_port(config)?;
        let slot = match self.ports.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.ports.push(None);
                self.ports.len() - 1
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&queue.raw_fd()),
            Token(FIRST_PORT + slot),
            Interest::READABLE,
        ) {
            self.switch.remove_port(id);
            return Err(PortError::Register(e));
        }
        // Frames may already be queued: edge-triggered readiness would not report them.
        self.ports[slot] = Some(PortSlot {
            id,
            queue,
            pending: true,
        });
        self.slots.insert(id, slot);
        Ok(id)
    }

    /// Removes a port from the core and closes its TAP queue.
    pub fn remove_port(&mut self, id: PortId) -> bool {
        let removed = self.switch.remove_port(id);
        if let Some(slot) = self.slots.remove(&id) {
            if let Some(port) = self.ports[slot].take() {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&port.queue.raw_fd()));
            }
        }
        removed
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut frame = vec![0u8; FRAME_BUFFER];
        let mut datagrams: Vec<Vec<u8>> = (0..quinn_udp::BATCH_SIZE)
            .map(|_| vec![0u8; DATAGRAM_BUFFER])
            .collect();
        let mut meta = vec![RecvMeta::default(); quinn_udp::BATCH_SIZE];
        let mut underlay_pending = true;
        let mut next_tick: Option<Instant> = None;

        while self.running {
            let busy = underlay_pending || self.ports.iter().flatten().any(|p| p.pending);
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                next_tick.map(|t| t.saturating_duration_since(Instant::now()))
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
            while let Ok(job) = self.inbox.try_recv() {
                job(&mut self);
            }

            let now = Instant::now();
            if underlay_pending {
                underlay_pending = self.receive_datagrams(now, &mut datagrams, &mut meta);
            }
            for slot in 0..self.ports.len() {
                if self.ports[slot].as_ref().is_some_and(|p| p.pending) {
                    self.read_port(now, slot, &mut frame);
                }
            }
            self.flush();

            if next_tick.is_none_or(|t| t <= now) {
                self.switch.handle_timeout(now);
                next_tick = self.switch.poll_timeout();
            }
        }
        Ok(())
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
            let count = match self.underlay.recv(&mut slices, meta) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // WouldBlock: drained. Other errors (an ICMP error queued on the socket)
                    // concern one earlier datagram; the next wakeup carries on.
                    more = false;
                    break;
                }
            };
            for (buffer, meta) in buffers.iter_mut().zip(meta.iter()).take(count) {
                let stride = meta.stride.max(1);
                let len = meta.len.min(buffer.len());
                for datagram in buffer[..len].chunks_mut(stride) {
                    self.switch
                        .handle_datagram(now, meta.addr, datagram, &mut self.out);
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
                        ..
                    } = self;
                    // A sender whose checksum offload never ran (a Linux peer behind a veth)
                    // left only the pseudo-header sum: finish it, as its NIC would have.
                    complete_partial_checksum(frame);
                    for id in out.ports() {
                        let Some(&slot) = slots.get(id) else { continue };
                        let Some(Some(port)) = ports.get(slot) else {
                            continue;
                        };
                        if port.queue.has_vnet_hdr() {
                            coalescer.push(slot as u32, frame, &mut |slot, hdr, bytes| {
                                write_slot(ports, counters, slot as usize, hdr, bytes);
                            });
                        } else if port.queue.write(&VnetHdr::default(), frame).is_err() {
                            counters.tap_write_errors += 1;
                        }
                    }
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
            let Some(port) = self.ports[slot].as_ref() else {
                return;
            };
            let (hdr, range) = match port.queue.read(buf) {
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.counters.offload_errors += 1;
                    continue;
                }
                Err(_) => {
                    // WouldBlock: drained. Any other error: the device is gone; detach cleans up.
                    if let Some(port) = self.ports[slot].as_mut() {
                        port.pending = false;
                    }
                    return;
                }
            };
            let id = port.id;
            let frame = &buf[range];
            let segment_len = if hdr.is_gso() {
                usize::from(hdr.hdr_len) + usize::from(hdr.gso_size)
            } else {
                frame.len()
            };
            self.switch
                .handle_frame_segmented(now, id, frame, segment_len, &mut self.out);
            let needs_work = hdr.is_gso() || hdr.flags & VnetHdr::F_NEEDS_CSUM != 0;
            let mut segmented = false;
            for &dest in self.out.ports() {
                let Some(&dest_slot) = self.slots.get(&dest) else {
                    continue;
                };
                let Some(Some(port)) = self.ports.get(dest_slot) else {
                    continue;
                };
                if port.queue.has_vnet_hdr() || !needs_work {
                    write_slot(&self.ports, &mut self.counters, dest_slot, &hdr, frame);
                    continue;
                }
                // A port without offloads takes only finished, MTU-sized frames.
                if !segmented {
                    self.segments.clear();
                    if offload::segment(&hdr, frame, &mut self.segments).is_err() {
                        self.counters.offload_errors += 1;
                        break;
                    }
                    segmented = true;
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
            if self.out.transmits().is_empty() {
                continue;
            }
            if needs_work && !segmented {
                self.segments.clear();
                if offload::segment(&hdr, frame, &mut self.segments).is_err() {
                    self.counters.offload_errors += 1;
                    continue;
                }
                segmented = true;
            }
            if !segmented {
                for transmit in self.out.transmits() {
                    self.underlay.queue(
                        transmit.addr,
                        self.out.flow_hash(),
                        self.out.vxlan_header(),
                        frame,
                    );
                }
                continue;
            }
            // The segments already sit behind room for the VXLAN header: fill it in and send
            // them as they lie, one GSO train per peer.
            self.segments.fill_headroom(self.out.vxlan_header());
            let stride = self
                .segments
                .uniform_len()
                .map(|len| len + VXLAN_HEADER_LEN);
            for transmit in self.out.transmits() {
                match stride {
                    Some(stride) => self.underlay.send_train(
                        transmit.addr,
                        self.out.flow_hash(),
                        self.segments.as_bytes(),
                        stride,
                    ),
                    None => {
                        for piece in self.segments.iter() {
                            self.underlay.queue(
                                transmit.addr,
                                self.out.flow_hash(),
                                self.out.vxlan_header(),
                                piece,
                            );
                        }
                    }
                }
            }
        }
    }

    fn flush(&mut self) {
        let stats = self.underlay.flush();
        self.counters.udp_send_calls += stats.syscalls;
        self.counters.udp_send_errors += stats.failed;
    }
}

/// Writes one frame to the port in `slot`, counting a refusal.
fn write_slot(
    ports: &[Option<PortSlot>],
    counters: &mut IoCounters,
    slot: usize,
    hdr: &VnetHdr,
    frame: &[u8],
) {
    if let Some(Some(port)) = ports.get(slot) {
        if port.queue.write(hdr, frame).is_err() {
            counters.tap_write_errors += 1;
        }
    }
}
