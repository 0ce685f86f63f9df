//! The fleet convergence benchmark: N `vswitchd` nodes in namespaces (one worker each, one
//! container each, no static peers) finding each other through a real etcd. Reports:
//!
//! - join: from spawning a node to every other node listing it as a peer with its container
//!   pinned, for each node after the first (median and max), and a ping across once all are
//!   up;
//! - removal: from SIGKILL of a node to every other node having forgotten it (the lease TTL is
//!   the floor);
//! - at rest: each daemon's CPU over a quiet spell (probes, lease renewals, snapshots) and its
//!   resident memory;
//! - queries: how long `status`, `peers` and `fdb` take on a node holding N-1 peers.
//!
//! Run (as root): `cargo build --release --bins && cargo bench -p vswitch-benches --bench
//! fleet`. `VSWITCH_BENCH_NODES` (default 20), `VSWITCH_BENCH_TTL` (seconds, default 5),
//! `VSWITCH_BENCH_IDLE` (seconds of the quiet spell, default 10). Everything is bounded: each
//! wait gives up after a fixed time and says so.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use vswitch::control::api::{Reply, Request};
use vswitch::lab::etcd::Etcd;
use vswitch::lab::{HostKind, Lab, traffic};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second of `/proc/PID/stat` times (Linux's USER_HZ, 100 on x86-64 and
/// arm64).
const USER_HZ: f64 = 100.0;

fn peer_names(lab: &Lab, host: usize) -> Vec<String> {
    match lab.call(host, &Request::Peers) {
        Ok(Reply::Peers(peers)) => peers.into_iter().map(|p| p.name).collect(),
        _ => Vec::new(),
    }
}

fn pinned(lab: &Lab, host: usize, mac: vswitch::wire::MacAddr) -> bool {
    match lab.call(host, &Request::Fdb) {
        Ok(Reply::Fdb(entries)) => entries.iter().any(|e| e.mac == mac && e.is_static),
        _ => false,
    }
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
fn within(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_config(lab: &Lab, index: usize, ttl: u64) {
    let host = &lab.hosts[index];
    let mut config = format!(
        "[node]\nname = \"{}\"\naddress = \"{}\"\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\nworkers = 1\n\n",
        host.name,
        host.address,
        lab.dir().join(&host.name).join("state").display(),
        host.socket.display(),
    );
    let _ = write!(
        config,
        "[[networks]]\nname = \"default\"\nvni = 42\nsubnet = \"10.244.0.0/16\"\nnode_subnet = \"10.244.{}.0/24\"\n\n{}\n[fleet]\nttl_secs = {ttl}\n",
        index + 1,
        Etcd::store_config("/bench")
    );
    if let Err(e) = std::fs::write(&host.config, config) {
        panic!("writing {}: {e}", host.config.display());
    }
}

fn main() {
    let nodes = env_or("VSWITCH_BENCH_NODES", 20).clamp(2, 200) as usize;
    let ttl = env_or("VSWITCH_BENCH_TTL", 5).max(2);
    let idle = Duration::from_secs(env_or("VSWITCH_BENCH_IDLE", 10));
    let mut lab = Lab::new("fb").expect("creating the lab");
    for _ in 0..nodes {
        lab.add_host(HostKind::Vswitch).expect("adding a host");
    }
    let _etcd = Etcd::start(&lab).expect("starting etcd");
    let limit = Duration::from_secs(30);
    let mut joins = Vec::new();
    let mut containers = Vec::new();
    for index in 0..nodes {
        write_config(&lab, index, ttl);
        let spawned = Instant::now();
        lab.spawn_vswitchd(index).expect("starting vswitchd");
        let c = lab
            .add_container(index, "default", None)
            .expect("attaching a container");
        containers.push(c);
        let name = lab.hosts[index].name.clone();
        let mac = lab.containers[c].mac;
        let seen = within(limit, || {
            (0..index)
                .all(|other| peer_names(&lab, other).contains(&name) && pinned(&lab, other, mac))
        });
        match seen {
            Some(_) if index > 0 => joins.push(spawned.elapsed().as_secs_f64()),
            Some(_) => {}
            None => panic!("node {index} was not found by every other within {limit:?}"),
        }
    }
    let everyone = within(limit, || {
        (0..nodes).all(|h| peer_names(&lab, h).len() == nodes - 1)
    });
    assert!(everyone.is_some(), "the fleet did not converge");
    let (first, last) = (containers[0], containers[nodes - 1]);
    let rtt = traffic::ping(
        &lab.containers[first].ns,
        lab.containers[last].ip,
        5,
        Duration::from_millis(50),
        Duration::from_millis(500),
    )
    .expect("pinging");
    assert!(
        !rtt.is_empty(),
        "the first node's container cannot reach the last's"
    );

    // At rest.
    let pids: Vec<u32> = lab.hosts.iter().filter_map(|h| h.daemon_pid()).collect();
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<Option<u64>> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    std::thread::sleep(idle);
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&before)
        .filter_map(|(&p, b)| Some((cpu_ticks(p)? - (*b)?) as f64))
        .map(|ticks| 100.0 * ticks / USER_HZ / idle.as_secs_f64())
        .collect();
    let mut rss: Vec<f64> = pids
        .iter()
        .filter_map(|&p| proc_status(p, "VmRSS:"))
        .map(|kib| kib as f64 / 1024.0)
        .collect();

    // Queries on a node holding every other as a peer.
    let mut query_ms = Vec::new();
    for request in [Request::Status, Request::Peers, Request::Fdb] {
        let mut times: Vec<f64> = (0..20)
            .map(|_| {
                let t = Instant::now();
                let _ = lab.call(0, &request);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        query_ms.push((format!("{request:?}"), median(&mut times), max(&times)));
    }

    // Death.
    let victim = nodes - 1;
    let name = lab.hosts[victim].name.clone();
    let killed = Instant::now();
    lab.stop_vswitchd(victim, true).expect("killing vswitchd");
    let removed = within(Duration::from_secs(ttl + 30), || {
        (0..victim).all(|h| !peer_names(&lab, h).contains(&name))
    })
    .map(|_| killed.elapsed().as_secs_f64());

    println!("\nfleet of {nodes} nodes (one worker, one container each), lease TTL {ttl} s\n");
    println!(
        "join: spawn to listed and pinned everywhere   median {:.2} s  max {:.2} s  ({} joins)",
        median(&mut joins.clone()),
        max(&joins),
        joins.len()
    );
    match removed {
        Some(s) => println!(
            "removal: SIGKILL to forgotten everywhere        {s:.2} s  (TTL {ttl} s, goal < TTL + 2 s)"
        ),
        None => println!("removal: not within TTL + 30 s"),
    }
    println!(
        "at rest: CPU per daemon over {} s            mean {:.2}%  max {:.2}%",
        idle.as_secs(),
        cpu.iter().sum::<f64>() / cpu.len().max(1) as f64,
        max(&cpu)
    );
    println!(
        "RSS per daemon                                median {:.1} MiB  max {:.1} MiB",
        median(&mut rss),
        max(&rss)
    );
    for (request, med, worst) in query_ms {
        println!(
            "query {request:<8} with {} peers               median {med:.2} ms  max {worst:.2} ms",
            nodes - 1
        );
    }
    drop(lab);
}
