//! The datapath: one worker thread per core, each with a replica of the switch core, its own
//! underlay sockets (sharing the VXLAN port through `SO_REUSEPORT`) and its own queue of every
//! multi-queue TAP. The kernel keeps each flow on one TAP queue and one socket of the group, so
//! each flow stays on one worker and nothing is reordered.
//!
//! The control plane never shares a core: it sends the same [`Command`]s to every worker, in
//! the same order, and waits for their answers, so the per-frame path takes no lock and the
//! replicas agree on ports and configured peers.
//!
//! Queries (status, ports, peers, the MAC table, metrics) never run on a worker: each worker
//! publishes a [`WorkerSnapshot`] of its counters and tables from its own loop, at most every
//! [`SNAPSHOT_INTERVAL`] and only when something changed (the MAC table listing at most every
//! [`FDB_LISTING_INTERVAL`]), and right after every command; queries read the latest ones.
//! A query that wants figures newer than that ([`Datapath::fresh_snapshots`]) may ask the
//! workers to publish at once, but such asks are granted at most once per
//! [`FRESH_INTERVAL`] for all queries together: however many queries arrive, a worker does
//! a bounded amount of work for them.
//!
//! A worker that panics or fails stops the datapath: [`Datapath::failed`] reports it, and the
//! daemon exits so that a supervisor restarts it (re-adoption brings the containers back)
//! rather than living on without a datapath.

use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Poll, Waker};
use tokio::sync::watch;

use super::command::{Command, Reply};
use super::udp::Underlay;
use super::worker::{IoCounters, Sibling, WAKER, Worker, WorkerParts};
use crate::fdb::FdbEntry;
use crate::switch::{Counters, PeerStats, PortId, PortStats, Site, Switch, SwitchConfig};

/// Most often a worker publishes its counters.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(200);
/// Most often a worker lists its MAC table for queries (it costs a walk over the table).
pub const FDB_LISTING_INTERVAL: Duration = Duration::from_secs(1);
/// Most often queries together may ask the workers for a snapshot out of turn.
pub const FRESH_INTERVAL: Duration = Duration::from_millis(100);

/// Test-only: `VSWITCH_TEST_PANIC_WORKER_AFTER=MS` makes worker 0 panic MS milliseconds after
/// the datapath starts, so tests can check that the daemon exits instead of living on without
/// a datapath. Not for production use.
pub const TEST_PANIC_ENV: &str = "VSWITCH_TEST_PANIC_WORKER_AFTER";

/// What one worker last published for queries.
#[derive(Debug, Clone)]
pub struct WorkerSnapshot {
    /// When it was taken.
    pub taken: Instant,
    /// The switch replica's counters.
    pub counters: Counters,
    /// The I/O shell's counters.
    pub io: IoCounters,
    /// Entries in the replica's MAC table (learned, mirrored and static).
    pub fdb_entries: usize,
    /// Counters of every port the replica serves.
    pub ports: Vec<(PortId, PortStats)>,
    /// Counters of every peer the replica knows, by address.
    pub peers: Vec<(SocketAddr, PeerStats)>,
    /// The replica's MAC table, as last listed.
    pub fdb: Arc<FdbListing>,
}

/// A worker's MAC table as listed at one instant.
#[derive(Debug, Clone)]
pub struct FdbListing {
    /// When it was listed: entry ages are relative to this.
    pub taken: Instant,
    /// Every entry, with where it points (peers by address).
    pub entries: Vec<(FdbEntry, Site)>,
}

impl Default for WorkerSnapshot {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            taken: now,
            counters: Counters::default(),
            io: IoCounters::default(),
            fdb_entries: 0,
            ports: Vec::new(),
            peers: Vec::new(),
            fdb: Arc::new(FdbListing {
                taken: now,
                entries: Vec::new(),
            }),
        }
    }
}

/// Where a worker puts its snapshots and queries take them: the lock is held only to swap or
/// clone an `Arc`.
#[derive(Default)]
pub(super) struct SnapshotSlot {
    pub(super) latest: Mutex<Arc<WorkerSnapshot>>,
    /// A query asked for a snapshot out of turn.
    pub(super) wanted: AtomicBool,
}

/// The datapath has stopped (it failed or was shut down), so a command could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("the datapath is not running")]
pub struct DatapathStopped;

/// How the control plane reaches one worker.
struct Handle {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// Sends commands to the workers, from any thread; cheap to clone.
#[derive(Clone)]
pub struct Workers {
    lanes: Arc<[(mpsc::Sender<Command>, Arc<Waker>)]>,
}

impl Workers {
    /// Sends every worker the command `command` builds around a reply, in worker order, and
    /// waits for all the answers. Commands sent one after another reach every worker in that
    /// order.
    pub fn ask<T: Send + 'static>(
        &self,
        mut command: impl FnMut(Reply<T>) -> Command,
    ) -> Result<Vec<T>, DatapathStopped> {
        let mut answers = Vec::with_capacity(self.lanes.len());
        for (commands, waker) in self.lanes.iter() {
            let (reply, answer) = Reply::channel();
            commands.send(command(reply)).map_err(|_| DatapathStopped)?;
            waker.wake().map_err(|_| DatapathStopped)?;
            answers.push(answer);
        }
        answers
            .into_iter()
            .map(|answer| answer.recv().map_err(|_| DatapathStopped))
            .collect()
    }

    /// Sends `command` to the first worker only, without waiting for it.
    pub fn tell_first(&self, command: Command) -> Result<(), DatapathStopped> {
        let (commands, waker) = self.lanes.first().ok_or(DatapathStopped)?;
        commands.send(command).map_err(|_| DatapathStopped)?;
        waker.wake().map_err(|_| DatapathStopped)
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }
}

/// A handle on the running worker threads.
pub struct Datapath {
    workers: Vec<Handle>,
    local: SocketAddr,
    snapshots: Vec<Arc<SnapshotSlot>>,
    /// When queries last asked for snapshots out of turn.
    last_fresh: Mutex<Option<Instant>>,
    failed: watch::Receiver<Option<String>>,
}

impl Datapath {
    /// Binds the underlay sockets and starts `workers` worker threads (at least one).
    pub fn start(
        config: SwitchConfig,
        local: SocketAddr,
        source_ports: usize,
        workers: usize,
    ) -> io::Result<Self> {
        let count = workers.max(1);
        let shared = count > 1;
        let mut underlays = Vec::with_capacity(count);
        let first = Underlay::bind(local, source_ports, shared)?;
        // With port 0 the kernel picked one: the others join the same.
        let local = first.local_addr()?;
        underlays.push(first);
        while underlays.len() < count {
            underlays.push(Underlay::bind(local, source_ports, shared)?);
        }
        let mut polls = Vec::with_capacity(count);
        let mut wakers = Vec::with_capacity(count);
        for _ in 0..count {
            let poll = Poll::new()?;
            wakers.push(Arc::new(Waker::new(poll.registry(), WAKER)?));
            polls.push(poll);
        }
        let (update_senders, update_inboxes): (Vec<_>, Vec<_>) =
            (0..count).map(|_| mpsc::channel()).unzip();

        let (failure, failed) = watch::channel(None);
        let mut snapshots = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(count);
        let parts = underlays.into_iter().zip(polls).zip(update_inboxes);
        for (index, ((underlay, poll), updates)) in parts.enumerate() {
            let siblings = (0..count)
                .filter(|&i| i != index)
                .map(|i| Sibling {
                    updates: update_senders[i].clone(),
                    waker: Arc::clone(&wakers[i]),
                })
                .collect();
            let (commands, inbox) = mpsc::channel();
            let snapshot = Arc::new(SnapshotSlot::default());
            snapshots.push(Arc::clone(&snapshot));
            let worker = Worker::new(WorkerParts {
                index,
                switch: Switch::new(config.clone()),
                underlay,
                poll,
                inbox,
                updates,
                siblings,
                snapshot,
            })?;
            let failure = failure.clone();
            let thread = std::thread::Builder::new()
                .name(format!("datapath-{index}"))
                .spawn(move || {
                    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| worker.run()));
                    let message = match &outcome {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(format!("datapath worker {index} failed: {e}")),
                        Err(panic) => Some(format!(
                            "datapath worker {index} panicked: {}",
                            panic_message(panic.as_ref())
                        )),
                    };
                    if let Some(message) = message {
                        failure.send_replace(Some(message));
                    }
                    match outcome {
                        Ok(result) => result,
                        Err(_) => Err(io::Error::other("a datapath thread panicked")),
                    }
                })?;
            handles.push(Handle {
                commands,
                waker: Arc::clone(&wakers[index]),
                thread: Some(thread),
            });
        }
        let datapath = Self {
            workers: handles,
            local,
            snapshots,
            last_fresh: Mutex::new(None),
            failed,
        };
        if let Some(after) = std::env::var(TEST_PANIC_ENV)
            .ok()
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            datapath.panic_worker_after(Duration::from_millis(after));
        }
        Ok(datapath)
    }

    /// Test-only (see [`TEST_PANIC_ENV`]): worker 0 panics after `delay`, inside its loop.
    fn panic_worker_after(&self, delay: Duration) {
        tracing::warn!(
            "{TEST_PANIC_ENV} is set: datapath worker 0 will panic in {delay:?} (test only)"
        );
        let workers = self.remote();
        let _ = std::thread::Builder::new()
            .name("test-panic".into())
            .spawn(move || {
                std::thread::sleep(delay);
                let _ = workers.tell_first(Command::Panic);
            });
    }

    /// Resolves to why the datapath stopped, once a worker has panicked or failed.
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.failed.clone()
    }

    /// Every worker's latest snapshot, in worker order.
    pub fn snapshots(&self) -> Vec<Arc<WorkerSnapshot>> {
        self.snapshots
            .iter()
            .map(|slot| {
                Arc::clone(
                    &slot
                        .latest
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                )
            })
            .collect()
    }

    /// Every worker's snapshot, published after this call when queries have not asked for one
    /// in the last [`FRESH_INTERVAL`] (otherwise the latest ones): waits up to
    /// [`FRESH_INTERVAL`] for the workers to publish. Blocks: call it off the async runtime.
    pub fn fresh_snapshots(&self) -> Vec<Arc<WorkerSnapshot>> {
        let asked = Instant::now();
        {
            let mut last = self
                .last_fresh
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|last| asked < last + FRESH_INTERVAL) {
                return self.snapshots();
            }
            *last = Some(asked);
        }
        for (slot, worker) in self.snapshots.iter().zip(&self.workers) {
            if !slot.wanted.swap(true, Ordering::AcqRel) {
                let _ = worker.waker.wake();
            }
        }
        let deadline = asked + FRESH_INTERVAL;
        loop {
            let snapshots = self.snapshots();
            if snapshots.iter().all(|s| s.taken >= asked) || Instant::now() >= deadline {
                return snapshots;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The address VXLAN is received on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// How many workers run.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Sends every worker the command `command` builds around a reply, in worker order, and
    /// waits for all the answers. Commands sent one after another reach every worker in that
    /// order.
    pub fn ask<T: Send + 'static>(
        &self,
        command: impl FnMut(Reply<T>) -> Command,
    ) -> Result<Vec<T>, DatapathStopped> {
        self.remote().ask(command)
    }

    /// A handle that sends commands to the workers from another thread.
    pub fn remote(&self) -> Workers {
        Workers {
            lanes: self
                .workers
                .iter()
                .map(|w| (w.commands.clone(), Arc::clone(&w.waker)))
                .collect(),
        }
    }

    /// Stops the workers and waits for them; returns the first error one stopped on, if any.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        for worker in &self.workers {
            let _ = worker.commands.send(Command::Stop);
            let _ = worker.waker.wake();
        }
        let mut result = Ok(());
        for worker in &mut self.workers {
            let outcome = match worker.thread.take().map(JoinHandle::join) {
                Some(Ok(outcome)) => outcome,
                Some(Err(_)) => Err(io::Error::other("a datapath thread panicked")),
                None => Ok(()),
            };
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
