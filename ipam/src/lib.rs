//! Address management for vswitch: node subnets, leases, recycling, and where they are kept.
//!
//! A [`Pool`] is one node's handle on a named pool (one per network). The pool's cluster network
//! (default `10.244.0.0/16`) is cut into node subnets (default /24; /64 for IPv6); each node
//! claims one, fixed by configuration or the first free one, and leases container addresses
//! from it. The network, gateway (first host) and broadcast addresses of a node subnet are never
//! leased. Leases are keyed by [`Owner`] (container id and interface name): asking again returns
//! the same lease, releasing is idempotent, a particular address can be requested. A released
//! address rests for a hold time (default 30 s) before it is reused, oldest release first,
//! unless nothing else is free. [`Pool::gc`] releases the leases of owners that no longer exist.
//!
//! ```no_run
//! # fn main() -> Result<(), ipam::Error> {
//! use std::sync::Arc;
//! use ipam::{EmbeddedStore, Owner, Pool, PoolConfig};
//!
//! let store = Arc::new(EmbeddedStore::open("/var/lib/vswitch/ipam.redb")?);
//! let pool = Pool::open(store, &PoolConfig::default(), "host-a")?;
//! let owner = Owner::new("4f1c0e", "eth0")?;
//! let lease = pool.allocate(&owner, None)?;
//! println!("{} via {}", lease.interface_address(), lease.gateway); // 10.244.0.2/16 via 10.244.0.1
//! pool.release(&owner)?;
//! # Ok(()) }
//! ```
//!
//! # Stores
//!
//! All state goes through the [`Store`] trait, a small transactional key-value interface; the
//! allocator is written once against it.
//!
//! - [`EmbeddedStore`], the default: one redb file, opened in redb's multi-writer mode so that
//!   the daemon and concurrent CNI plugin processes share it; every transaction is durable before
//!   it returns and survives `kill -9` at any instant. Measured on the development machine (ext4,
//!   2 cores), per durable allocation-sized commit: redb held open 0.54 ms; multi-writer mode
//!   0.70 ms alone and 0.88 ms of wall time per commit with four processes committing at once;
//!   opening the file for each operation 1.6 ms behind an `fs4` lock file (2.2 ms with four
//!   processes) and 1.8 ms retrying on redb's own lock (2.0 ms); a JSON rewrite with fsync and
//!   rename 0.75 ms for 250 leases, growing with the lease count. Multi-writer keeps the cost of
//!   a held-open database and needs no lock file or retry loop.
//! - [`EtcdStore`]: for a fleet. Node subnet claims are bound to a lease with a TTL kept alive by
//!   the process, so a dead node's subnet is freed a TTL later; address claims commit as
//!   compare-and-swap transactions, so two nodes never lease the same address.
//! - [`MemStore`]: in memory, for tests.

#![forbid(unsafe_code)]

mod alloc;
mod config;
mod error;
mod owner;
mod pool;
mod store;
mod subnet;

pub use alloc::{Audit, Problem};
pub use config::{
    DEFAULT_CLUSTER_V4, DEFAULT_CLUSTER_V6, DEFAULT_HOLD, DEFAULT_NODE_PREFIX_V4,
    DEFAULT_NODE_PREFIX_V6, PoolConfig,
};
pub use error::{ConfigProblem, Error, NameProblem, Reserved};
pub use owner::{
    MAX_CONTAINER_ID_LEN, MAX_IFNAME_LEN, MAX_NODE_NAME_LEN, MAX_POOL_NAME_LEN, Owner,
};
pub use pool::{Lease, Pool};
pub use store::{
    Body, DEFAULT_EMBEDDED_PATH, EmbeddedStore, EtcdConfig, EtcdStore, MemStore, Store,
    StoreConfig, Txn,
};
