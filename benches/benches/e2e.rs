//! The end-to-end benchmark: two hosts in namespaces, container to container across the
//! underlay, through `vswitchd` and through the Linux kernel's VXLAN + bridge in the same
//! topology and the same run, in interleaved rounds. Reports medians, per-round ratios to the
//! kernel, round-trip times and the daemons' memory.
//!
//! Run: `cargo build --release --bins && cargo bench -p vswitch-benches --bench e2e`
//! (as root). `VSWITCH_BENCH_ROUNDS` (default 3) and `VSWITCH_BENCH_SECONDS` (default 5) set
//! the length.

use std::time::Duration;

use vswitch::lab::{HostKind, Lab, NetworkSpec, traffic};

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

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One measurement, taken for both paths.
#[derive(Clone, Copy)]
enum Test {
    Tcp(usize),
    Udp64,
    Rtt,
}

impl Test {
    fn name(self) -> String {
        match self {
            Test::Tcp(1) => "TCP, 1 stream (Gbit/s)".into(),
            Test::Tcp(n) => format!("TCP, {n} streams (Gbit/s)"),
            Test::Udp64 => "UDP 64 B delivered (kpps)".into(),
            Test::Rtt => "RTT p50 (us, lower is better)".into(),
        }
    }
}

struct Path {
    from: usize,
    to: usize,
}

fn measure(lab: &Lab, path: &Path, test: Test, seconds: Duration) -> (f64, String) {
    let (from, to) = (&lab.containers[path.from], &lab.containers[path.to]);
    match test {
        Test::Tcp(streams) => {
            let bps = traffic::tcp_throughput(&from.ns, &to.ns, to.ip, streams, seconds)
                .expect("TCP throughput");
            (bps / 1e9, String::new())
        }
        Test::Udp64 => {
            let rate = traffic::udp_flood(&from.ns, &to.ns, to.ip, 64, seconds).expect("UDP flood");
            (
                rate.delivered_pps / 1e3,
                format!("loss {:.1}%", rate.loss() * 100.0),
            )
        }
        Test::Rtt => {
            let mut rtts = traffic::ping(
                &from.ns,
                to.ip,
                50,
                Duration::from_millis(20),
                Duration::from_secs(1),
            )
            .expect("ping");
            rtts.sort();
            let p50 = rtts.get(rtts.len() / 2).copied().unwrap_or_default();
            (p50.as_secs_f64() * 1e6, format!("{} replies", rtts.len()))
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we do not support.
    let rounds = env_or("VSWITCH_BENCH_ROUNDS", 3).max(1);
    let seconds = Duration::from_secs(env_or("VSWITCH_BENCH_SECONDS", 5).max(1));
    let mut lab = Lab::new("bench").expect("creating the lab");
    for _ in 0..2 {
        lab.add_host(HostKind::Vswitch).expect("adding a host");
    }
    for host in 0..2 {
        lab.start_vswitchd(host, &[NetworkSpec::DEFAULT], "")
            .expect("starting vswitchd");
    }
    let a = lab.add_container(0, "default", None).expect("container");
    let b = lab.add_container(1, "default", None).expect("container");
    let kernel = lab.add_kernel_baseline().expect("kernel baseline");
    let ours = Path { from: a, to: b };
    let theirs = Path {
        from: kernel[0],
        to: kernel[1],
    };
    // Warm up ARP and the FDB on both paths.
    for path in [&ours, &theirs] {
        measure(&lab, path, Test::Rtt, seconds);
    }
    let tests = [Test::Tcp(1), Test::Tcp(4), Test::Udp64, Test::Rtt];
    println!(
        "end-to-end: {rounds} rounds x {}s, container on h0 -> container on h1",
        seconds.as_secs()
    );
    let mut rows = Vec::new();
    for test in tests {
        let (mut ours_values, mut kernel_values, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut notes = Vec::new();
        for round in 0..rounds {
            // Alternate which path goes first so drift on a noisy machine hits both alike.
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            let (mut o, mut k) = (0.0, 0.0);
            for is_ours in order {
                let (value, note) =
                    measure(&lab, if is_ours { &ours } else { &theirs }, test, seconds);
                if is_ours {
                    o = value;
                    if !note.is_empty() {
                        notes.push(format!("vswitch {note}"));
                    }
                } else {
                    k = value;
                    if !note.is_empty() {
                        notes.push(format!("kernel {note}"));
                    }
                }
            }
            ours_values.push(o);
            kernel_values.push(k);
            ratios.push(if k > 0.0 { o / k } else { 0.0 });
        }
        let per_round = ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ");
        rows.push(vec![
            test.name(),
            format!("{:.2}", median(&mut ours_values)),
            format!("{:.2}", median(&mut kernel_values)),
            format!("{:.2}", median(&mut ratios.clone())),
            per_round,
        ]);
        if !notes.is_empty() {
            println!("  {}: {}", test.name(), notes.join(", "));
        }
    }
    print!(
        "{}",
        vswitch::control::render::table(
            &[
                "TEST",
                "VSWITCH",
                "KERNEL",
                "RATIO (median)",
                "RATIO PER ROUND"
            ],
            &rows
        )
    );
    for host in &lab.hosts {
        if let Some(rss) = rss_kib(host.daemon_pid()) {
            println!("vswitchd on {}: RSS {} KiB", host.name, rss);
        }
    }
}
