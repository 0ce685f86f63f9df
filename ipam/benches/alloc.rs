//! Allocation throughput and storage cost of the IPAM stores.
//!
//! Criterion measures one allocation (a new owner each time, from an IPv6 /64 that never fills)
//! on the in-memory, embedded and etcd stores, and an allocate + release pair on the embedded
//! store. After that, a bulk run leases `IPAM_BENCH_LEASES` addresses (default 10000) on the
//! embedded and the etcd store, from four nodes at once, and reports allocations per second and
//! the cost per 100k leases: file size and process memory (for etcd: its database size and the
//! server's resident memory).
//!
//! `cargo bench -p ipam --bench alloc` (add `-- --quick` for a short run). The etcd part starts
//! `/usr/bin/etcd` on loopback.

#![allow(clippy::unwrap_used)]

#[path = "../tests/support/etcd_server.rs"]
mod etcd_server;

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use etcd_server::EtcdServer;
use ipam::{EmbeddedStore, EtcdConfig, EtcdStore, MemStore, Owner, Pool, PoolConfig, Store};

fn v6() -> PoolConfig {
    PoolConfig::default_v6()
}

fn etcd_store(server: &EtcdServer) -> Arc<dyn Store> {
    Arc::new(
        EtcdStore::connect(&EtcdConfig {
            endpoints: vec![server.endpoint.clone()],
            ..EtcdConfig::default()
        })
        .unwrap(),
    )
}

fn bench_allocate(c: &mut Criterion, name: &str, store: Arc<dyn Store>) {
    let pool = Pool::open(store, &v6(), "bench").unwrap();
    let next = AtomicUsize::new(0);
    let mut group = c.benchmark_group("allocate");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter(|| {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let owner = Owner::new(format!("{name}-{n}"), "eth0").unwrap();
            black_box(pool.allocate(&owner, None).unwrap())
        })
    });
    group.finish();
}

fn bench_cycle(c: &mut Criterion, store: Arc<dyn Store>) {
    let config = PoolConfig {
        hold: Duration::ZERO,
        ..PoolConfig::default()
    };
    let pool = Pool::open(store, &config, "bench").unwrap();
    let owner = Owner::new("cycle", "eth0").unwrap();
    let mut group = c.benchmark_group("allocate+release");
    group.throughput(Throughput::Elements(1));
    group.bench_function("embedded", |b| {
        b.iter(|| {
            black_box(pool.allocate(&owner, None).unwrap());
            pool.release(&owner).unwrap()
        })
    });
    group.finish();
}

/// Resident memory of a process, in bytes.
fn rss(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Leases `count` addresses from four nodes at once; returns allocations per second.
fn bulk(stores: &[Arc<dyn Store>], count: usize, tag: &str) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for (n, store) in stores.iter().enumerate() {
            let store = store.clone();
            s.spawn(move || {
                let pool = Pool::open(store, &v6(), &format!("bulk-{n}")).unwrap();
                for i in (n..count).step_by(stores.len()) {
                    let owner = Owner::new(format!("{tag}-{i}"), "eth0").unwrap();
                    pool.allocate(&owner, None).unwrap();
                }
            });
        }
    });
    count as f64 / start.elapsed().as_secs_f64()
}

fn per_100k(bytes: u64, count: usize) -> String {
    format!(
        "{:.1} MiB",
        bytes as f64 * 100_000.0 / count as f64 / (1 << 20) as f64
    )
}

fn bulk_report(server: &EtcdServer) {
    let count: usize = std::env::var("IPAM_BENCH_LEASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    println!("\nbulk: {count} leases from 4 nodes at once (IPAM_BENCH_LEASES to change)");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulk.redb");
    let rss_before = rss("self");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).unwrap());
    let rate = bulk(&vec![store; 4], count, "embedded");
    let file = file_size(&path);
    println!(
        "embedded: {rate:.0} allocations/s; per 100k leases: file {}, process memory +{}",
        per_100k(file, count),
        per_100k(rss("self").saturating_sub(rss_before), count)
    );

    let pid = server.pid().to_string();
    let (db_before, rss_before) = (etcd_db_size(server), rss(&pid));
    let stores: Vec<Arc<dyn Store>> = (0..4).map(|_| etcd_store(server)).collect();
    let rate = bulk(&stores, count, "etcd");
    let (db_after, rss_after) = (etcd_db_size(server), rss(&pid));
    println!(
        "etcd: {rate:.0} allocations/s; per 100k leases: etcd database +{}, etcd memory +{}",
        per_100k(db_after.saturating_sub(db_before), count),
        per_100k(rss_after.saturating_sub(rss_before), count)
    );
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn etcd_db_size(server: &EtcdServer) -> u64 {
    server.with_client(|mut client| async move {
        u64::try_from(client.status().await.unwrap().db_size()).unwrap_or(0)
    })
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let dir = tempfile::tempdir().unwrap();
    let server = EtcdServer::start();

    bench_allocate(&mut c, "memory", Arc::new(MemStore::new()));
    let embedded: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(dir.path().join("a.redb")).unwrap());
    bench_allocate(&mut c, "embedded", embedded.clone());
    bench_cycle(&mut c, embedded);
    bench_allocate(&mut c, "etcd", etcd_store(&server));
    c.final_summary();

    if !std::env::args().any(|a| a == "--list" || a == "--test") {
        bulk_report(&server);
    }
}
