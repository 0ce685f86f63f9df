//! Many threads and several processes allocate and release on one embedded store at once; no
//! address may end up leased twice and no lease may be lost.
//!
//! The processes are this test binary run again with `IPAM_CONCURRENCY_CHILD` set, which makes
//! `child_process_worker` do the work instead of returning at once.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ipam::{EmbeddedStore, Owner, Pool, PoolConfig, Store};

const CHILD_ENV: &str = "IPAM_CONCURRENCY_CHILD";
const PER_WORKER: usize = 30;
const THREADS: usize = 6;
const PROCESSES: usize = 3;

fn config() -> PoolConfig {
    PoolConfig {
        node_prefix: Some(22),
        hold: Duration::ZERO,
        ..PoolConfig::default()
    }
}

/// Allocates `PER_WORKER` addresses for owners named after `worker`, releasing every third one
/// right away, so that released addresses are reused under contention. Returns the owners kept.
fn work(store: Arc<dyn Store>, worker: &str) -> Vec<Owner> {
    let pool = Pool::open(store, &config(), "node-a").unwrap();
    let mut kept = Vec::new();
    for i in 0..PER_WORKER {
        let owner = Owner::new(format!("{worker}-{i}"), "eth0").unwrap();
        let lease = pool.allocate(&owner, None).unwrap();
        assert_eq!(pool.allocate(&owner, None).unwrap().address, lease.address);
        if i % 3 == 0 {
            assert!(pool.release(&owner).unwrap().is_some());
        } else {
            kept.push(owner);
        }
    }
    kept
}

/// The worker process: does nothing unless started by the test below.
#[test]
fn child_process_worker() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (path, worker) = spec.split_once('|').unwrap();
    work(Arc::new(EmbeddedStore::open(path).unwrap()), worker);
}

fn spawn_worker(path: &Path, worker: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_worker",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{}|{worker}", path.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn threads_and_processes_allocate_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    let shared: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).unwrap());
    // Claim the node subnet before the workers race for it.
    Pool::open(shared.clone(), &config(), "node-a").unwrap();

    let children: Vec<_> = (0..PROCESSES)
        .map(|p| spawn_worker(&path, &format!("proc{p}")))
        .collect();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            // Half the threads share one handle, the others open their own.
            let store: Arc<dyn Store> = if t % 2 == 0 {
                shared.clone()
            } else {
                Arc::new(EmbeddedStore::open(&path).unwrap())
            };
            std::thread::spawn(move || work(store, &format!("thread{t}")))
        })
        .collect();
    let mut expected: HashSet<Owner> = HashSet::new();
    for t in threads {
        expected.extend(t.join().unwrap());
    }
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a worker process failed");
    }
    for p in 0..PROCESSES {
        for i in (0..PER_WORKER).filter(|i| i % 3 != 0) {
            expected.insert(Owner::new(format!("proc{p}-{i}"), "eth0").unwrap());
        }
    }

    let pool = Pool::open(shared, &config(), "node-a").unwrap();
    let leases = pool.leases().unwrap();
    let owners: HashSet<Owner> = leases.iter().map(|l| l.owner.clone()).collect();
    assert_eq!(
        owners, expected,
        "every kept lease is there, every released one gone"
    );
    let addresses: HashSet<_> = leases.iter().map(|l| l.address).collect();
    assert_eq!(addresses.len(), leases.len(), "an address was leased twice");
    let audit = pool.audit().unwrap();
    assert!(audit.problems.is_empty(), "{:?}", audit.problems);
    assert_eq!(audit.leases, expected.len());
}

#[test]
fn threads_on_one_memory_store() {
    let store: Arc<dyn Store> = Arc::new(ipam::MemStore::new());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || work(store, &format!("t{t}")))
        })
        .collect();
    let kept: usize = threads.into_iter().map(|t| t.join().unwrap().len()).sum();
    let pool = Pool::open(store, &config(), "node-a").unwrap();
    let leases = pool.leases().unwrap();
    let addresses: HashSet<_> = leases.iter().map(|l| l.address).collect();
    assert_eq!((leases.len(), addresses.len()), (kept, kept));
}
