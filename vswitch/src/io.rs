//! The thin shell around the sans-IO core: TAP queues, the underlay UDP sockets, and the workers
//! (one per core) whose loops move bytes between them and their replica of
//! [`crate::switch::Switch`] in bounded batches.
//!
//! Everything here is mechanism: what to do with a frame is decided by the core.

mod command;
mod datapath;
mod tap;
mod udp;
mod worker;

pub use command::{Command, FleetChange, Reply};
pub use datapath::{
    Datapath, DatapathStopped, FDB_LISTING_INTERVAL, FRESH_INTERVAL, FdbListing, SNAPSHOT_INTERVAL,
    TEST_PANIC_ENV, WorkerSnapshot, Workers,
};
pub use tap::TapQueue;
pub use udp::{FlushStats, Underlay};
pub use worker::{IoCounters, PortError, SealingEvent, ServiceRequest};
