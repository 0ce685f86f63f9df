//! Criterion benches of policy on the frame path: evaluation with 1, 100 and 10,000 rules
//! through the flow cache (hit) and without it (miss: a full evaluation), the whole per-frame
//! check of an established connection, the shared connection table (hit, miss, two threads),
//! and the lock-free token bucket (one thread, two threads).

#![allow(missing_docs)]

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use vswitch::policy::{
    Compiled, Conntrack, Direction, Endpoint, FlowCache, FlowInfo, FlowKey, Ports, SharedBucket,
    parse_toml,
};
use vswitch::switch::PortId;
use vswitch::wire::IpProtocol;

const RULES: [usize; 3] = [1, 100, 10_000];

/// A policy on "web" (port 1) with `n` ingress rules, each allowing TCP 80 from its own /24;
/// the flow benched matches only the last one, so a full evaluation reads them all.
fn policy(n: usize) -> Compiled {
    let mut text = String::from("[[policy]]\nname = \"web\"\nselector = { app = \"web\" }\n");
    for i in 0..n {
        let net = if i + 1 == n {
            "192.0.2.0/24".to_owned()
        } else {
            format!("10.{}.{}.0/24", 100 + i / 256, i % 256)
        };
        text.push_str(&format!(
            "[[policy.ingress]]\npeers = [{{ cidr = \"{net}\" }}]\nprotocol = \"tcp\"\nports = [80]\n"
        ));
    }
    let policies = parse_toml(&text).expect("policy");
    let endpoints = vec![Endpoint {
        id: "web".into(),
        labels: [("app".to_owned(), "web".to_owned())].into(),
        ips: vec!["10.0.0.1".parse().expect("ip")],
        local: Some(PortId::from_raw(1)),
    }];
    Compiled::new(&policies, &endpoints, Instant::now())
}

fn key(sport: u16) -> FlowKey {
    let (src, dst): (IpAddr, IpAddr) = (
        "192.0.2.7".parse().expect("ip"),
        "10.0.0.1".parse().expect("ip"),
    );
    FlowKey::new(src, dst, IpProtocol::TCP, sport, 80)
}

fn info(k: FlowKey, flags: u8) -> FlowInfo {
    FlowInfo {
        key: k,
        tcp_flags: flags,
        later_fragment: false,
        related: None,
    }
}

fn short(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group("policy");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    g
}

fn evaluation(c: &mut Criterion) {
    let mut g = short(c);
    let port = PortId::from_raw(1);
    for n in RULES {
        let compiled = policy(n);
        let k = key(40000);
        assert!(
            compiled
                .evaluate(port, Direction::Ingress, &k)
                .verdict
                .allows()
        );
        let mut cache = FlowCache::default();
        g.bench_with_input(BenchmarkId::new("cache_hit", n), &n, |b, _| {
            b.iter(|| {
                compiled.evaluate_cached(&mut cache, port, Direction::Ingress, black_box(&k), 1500)
            })
        });
        g.bench_with_input(BenchmarkId::new("miss_full_evaluation", n), &n, |b, _| {
            b.iter(|| compiled.evaluate(port, Direction::Ingress, black_box(&k)))
        });
        let ct = Conntrack::default();
        let t0 = Instant::now();
        let ports = Ports {
            from: None,
            to: Some(port),
        };
        assert!(
            compiled
                .check(t0, &mut cache, &ct, &info(k, 0x02), ports, 74)
                .passes()
        );
        let f = info(k, 0x10);
        g.bench_with_input(BenchmarkId::new("check_established", n), &n, |b, _| {
            b.iter(|| compiled.check(t0, &mut cache, &ct, black_box(&f), ports, 1500))
        });
    }
    g.finish();
}

fn conntrack(c: &mut Criterion) {
    let mut g = short(c);
    let ct = Arc::new(Conntrack::default());
    let t0 = Instant::now();
    for p in 0..10_000u16 {
        ct.open(t0, &info(key(p), 0x02), 1, [None, None]);
    }
    let hit = info(key(5000).reversed(), 0x10);
    g.bench_function("conntrack/hit", |b| {
        b.iter(|| ct.track(t0, black_box(&hit)))
    });
    let miss = info(key(50_000), 0x10);
    g.bench_function("conntrack/miss", |b| {
        b.iter(|| ct.track(t0, black_box(&miss)))
    });
    // The same lookups while another thread hammers the table with its own flows.
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (ct, stop) = (ct.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut p = 0u16;
            while !stop.load(Ordering::Relaxed) {
                p = (p + 1) % 10_000;
                black_box(ct.track(t0, &info(key(p), 0x10)));
            }
        })
    };
    g.bench_function("conntrack/hit_with_2_threads", |b| {
        b.iter(|| ct.track(t0, black_box(&hit)))
    });
    stop.store(true, Ordering::Relaxed);
    let _ = other.join();
    g.finish();
}

fn bucket(c: &mut Criterion) {
    let mut g = short(c);
    let t0 = Instant::now();
    let bucket = Arc::new(SharedBucket::new(u64::MAX / 4, 8, 1 << 40, t0));
    g.bench_function("bucket/take", |b| {
        b.iter(|| bucket.take(t0, black_box(1500)))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (bucket, stop) = (bucket.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                black_box(bucket.take(t0, 1500));
            }
        })
    };
    g.bench_function("bucket/take_with_2_threads", |b| {
        b.iter(|| bucket.take(t0, black_box(1500)))
    });
    stop.store(true, Ordering::Relaxed);
    let _ = other.join();
    g.finish();
}

criterion_group!(benches, evaluation, conntrack, bucket);
criterion_main!(benches);
