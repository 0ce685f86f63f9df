//! A process allocating and releasing in a loop is killed with SIGKILL at random moments, many
//! times. After each kill the store opens, holds no duplicate and no broken record, and differs
//! from what the process reported as done by at most the one operation in flight.
//!
//! The process is this test binary run again with `IPAM_CRASH_CHILD` set, which makes
//! `child_process_churn` do the work instead of returning at once. It reports each finished
//! operation on stdout: `ready`, `alloc <container> <address>`, `release <container>`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipam::{EmbeddedStore, Owner, Pool, PoolConfig};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "IPAM_CRASH_CHILD";
const KILLS: usize = 40;

fn config() -> PoolConfig {
    PoolConfig {
        node_prefix: Some(23),
        hold: Duration::ZERO,
        ..PoolConfig::default()
    }
}

fn owner(container: &str) -> Owner {
    Owner::new(container, "eth0").unwrap()
}

/// The churning process: does nothing unless started by the test below.
#[test]
fn child_process_churn() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (path, run) = spec.split_once('|').unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(run.parse().unwrap());
    let store = Arc::new(EmbeddedStore::open(path).unwrap());
    let pool = Pool::open(store, &config(), "node-a").unwrap();
    let mut held: Vec<Owner> = pool
        .leases()
        .unwrap()
        .into_iter()
        .map(|l| l.owner)
        .collect();
    let mut out = std::io::stdout().lock();
    // libtest has printed "test child_process_churn ... " without a line end.
    writeln!(out, "\nready").unwrap();
    out.flush().unwrap();
    // Bounded: the parent kills it long before this ends.
    for n in 0..100_000 {
        if held.len() < 20 || (held.len() < 400 && rng.random_bool(0.6)) {
            let o = owner(&format!("r{run}-{n}"));
            let lease = pool.allocate(&o, None).unwrap();
            writeln!(out, "alloc {} {}", o.container_id(), lease.address).unwrap();
            held.push(o);
        } else {
            let o = held.swap_remove(rng.random_range(0..held.len()));
            pool.release(&o).unwrap();
            writeln!(out, "release {}", o.container_id()).unwrap();
        }
        out.flush().unwrap();
    }
}

/// Runs one child until a random moment, kills it, and returns the lines it printed.
fn run_and_kill(path: &std::path::Path, run: usize, rng: &mut impl Rng) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_churn",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{}|{run}", path.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut lines: Vec<String> = Vec::new();
    // Most runs die after a random number of finished operations plus a random delay, so kills
    // land anywhere inside an operation; every fifth run dies early, possibly while opening or
    // recovering the store.
    if run % 5 != 4 {
        let done = rng.random_range(0..15);
        let deadline = Instant::now() + Duration::from_secs(30);
        while lines
            .iter()
            .filter(|l| l.starts_with("alloc") || l.starts_with("release"))
            .count()
            < done
            || !lines.iter().any(|l| l == "ready")
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(e) => panic!("run {run}: the child stalled: {e}"),
            }
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..4000)));
    } else {
        std::thread::sleep(Duration::from_millis(rng.random_range(0..30)));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    lines
}

#[test]
fn kill_9_loses_at_most_the_operation_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.redb");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x1ba3);
    let mut expected: BTreeMap<String, IpAddr> = BTreeMap::new();
    let mut operations = 0;
    for run in 0..KILLS {
        let lines = run_and_kill(&path, run, &mut rng);
        for line in &lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["alloc", c, a] => {
                    expected.insert((*c).to_owned(), a.parse().unwrap());
                    operations += 1;
                }
                ["release", c] => {
                    expected.remove(*c);
                    operations += 1;
                }
                _ => {}
            }
        }

        let store = Arc::new(EmbeddedStore::open(&path).expect("the store opens after a kill"));
        let pool = Pool::open(store, &config(), "node-a").unwrap();
        let audit = pool.audit().unwrap();
        assert!(audit.problems.is_empty(), "run {run}: {:?}", audit.problems);
        let actual: BTreeMap<String, IpAddr> = pool
            .leases()
            .unwrap()
            .into_iter()
            .map(|l| (l.owner.container_id().to_owned(), l.address))
            .collect();
        let mut addresses: Vec<&IpAddr> = actual.values().collect();
        addresses.sort();
        addresses.dedup();
        assert_eq!(
            addresses.len(),
            actual.len(),
            "run {run}: an address is leased twice"
        );
        let missing: Vec<_> = expected
            .iter()
            .filter(|(c, a)| actual.get(*c) != Some(a))
            .collect();
        let extra: Vec<_> = actual
            .iter()
            .filter(|(c, a)| expected.get(*c) != Some(a))
            .collect();
        assert!(
            missing.len() + extra.len() <= 1,
            "run {run}: more than the operation in flight differs: missing {missing:?}, extra {extra:?}"
        );
        expected = actual;
    }
    assert!(
        operations > KILLS * 5,
        "the children did too little work ({operations} operations)"
    );
}
