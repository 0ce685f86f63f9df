//! The thin shell around the sans-IO core: TAP queues, the underlay UDP sockets, and the worker
//! loop that moves bytes between them and [`crate::switch::Switch`] in bounded batches.
//!
//! Everything here is mechanism: what to do with a frame is decided by the core.

mod datapath;
mod tap;
mod udp;

pub use datapath::{Datapath, DatapathStopped, IoCounters, PortError, Worker};
pub use tap::TapQueue;
pub use udp::{FlushStats, Underlay};
