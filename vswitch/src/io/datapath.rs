//! The datapath: one worker thread per core, each with a replica of the switch core, its own
//! underlay sockets (sharing the VXLAN port through `SO_REUSEPORT`) and its own queue of every
//! multi-queue TAP. The kernel keeps each flow on one TAP queue and one socket of the group, so
//! each flow stays on one worker and nothing is reordered.
//!
//! The control plane never shares a core: it sends the same jobs to every worker, in the same
//! order, and waits for their answers, so the per-frame path takes no lock and the replicas
//! agree on ports and configured peers.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use mio::{Poll, Waker};

use super::udp::Underlay;
use super::worker::{Job, Sibling, WAKER, Worker, WorkerParts};
use crate::switch::{Switch, SwitchConfig};

/// The datapath has stopped (it failed or was shut down), so a job could not run.
#[derive(Debug, thiserror::Error)]
#[error("the datapath is not running")]
pub struct DatapathStopped;

/// How the control plane reaches one worker.
struct Handle {
    jobs: mpsc::Sender<Job>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// A handle on the running worker threads.
pub struct Datapath {
    workers: Vec<Handle>,
    local: SocketAddr,
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
            let (jobs, inbox) = mpsc::channel();
            let worker = Worker::new(WorkerParts {
                index,
                switch: Switch::new(config.clone()),
                underlay,
                poll,
                inbox,
                updates,
                siblings,
            })?;
            let thread = std::thread::Builder::new()
                .name(format!("datapath-{index}"))
                .spawn(move || worker.run())?;
            handles.push(Handle {
                jobs,
                waker: Arc::clone(&wakers[index]),
                thread: Some(thread),
            });
        }
        Ok(Self {
            workers: handles,
            local,
        })
    }

    /// The address VXLAN is received on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// How many workers run.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Runs `job` on every worker, in worker order, and waits for all the results. Jobs sent
    /// one after another reach every worker in that order.
    pub fn run<R, F>(&self, job: F) -> Result<Vec<R>, DatapathStopped>
    where
        R: Send + 'static,
        F: Fn(&mut Worker) -> R + Send + Sync + 'static,
    {
        let job = Arc::new(job);
        let mut answers = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let (reply, answer) = mpsc::sync_channel(1);
            let job = Arc::clone(&job);
            worker
                .jobs
                .send(Box::new(move |w: &mut Worker| {
                    let _ = reply.send(job(w));
                }))
                .map_err(|_| DatapathStopped)?;
            worker.waker.wake().map_err(|_| DatapathStopped)?;
            answers.push(answer);
        }
        answers
            .into_iter()
            .map(|answer| answer.recv().map_err(|_| DatapathStopped))
            .collect()
    }

    /// Stops the workers and waits for them; returns the first error one stopped on, if any.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        for worker in &self.workers {
            let _ = worker
                .jobs
                .send(Box::new(|w: &mut Worker| w.running = false));
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

impl Drop for Datapath {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
