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
//!   it returns and survives `kill -9` at any instant. Chosen by measurement on the development
//!   machine (ext4, 2 shared cores; fsync latency varied with the load of other builds, so each
//!   figure is a range over quiet and busy moments), per durable allocation-sized commit:
//!
//!   | how processes share the file                     | one process  | 4 processes, wall/commit |
//!   |--------------------------------------------------|--------------|--------------------------|
//!   | redb `MultiWriter`, held open (chosen)           | 0.7-1.2 ms   | 0.9 ms                   |
//!   | open per operation, behind an `fs4` lock file    | 1.6-2.7 ms   | 2.2 ms                   |
//!   | open per operation, retrying on redb's lock      | 1.8-2.3 ms   | 2.0 ms                   |
//!   | (one process only: redb held open, exclusive)    | 0.5-0.7 ms   | -                        |
//!   | (JSON rewrite + fsync + rename, 250 leases)      | 0.75-1.0 ms  | grows with the leases    |
//!
//!   Multi-writer mode costs one extra fsync per commit over an exclusive handle (its 2-phase
//!   commit, which also makes recovery after a crash instant) and needs no lock file or retry
//!   loop. A whole allocation through [`Pool`] measured 0.9-1.4 ms (Criterion, `benches/alloc.rs`).
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
