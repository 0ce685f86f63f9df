//! The end-to-end benchmark: two hosts in namespaces, container to container across the
//! underlay, through `vswitchd` and through the Linux kernel's VXLAN + bridge in the same
//! topology and the same run, in interleaved rounds. Reports medians, per-round ratios to the
//! kernel, round-trip times and the daemons' memory.
//!
//! Small-packet UDP is reported as RFC 2544 throughput: the highest offered rate of 64-byte
//! datagrams each path forwards with less than 1% loss, found by an unpaced trial and then a
//! binary search over paced rates ([`traffic::udp_throughput`]). A lone unpaced flood measures
//! the sender as much as the path: into the kernel's VXLAN the sending thread pays for the whole
//! path in its own `send` and so never outruns it, while into a TAP it only fills the TAP's ring,
//! outruns the daemon draining it and shows mostly as loss. The unpaced flood stays in the table
//! as its own row, with its loss in the notes.
//!
//! Run: `cargo build --release --bins && cargo bench -p vswitch-benches --bench e2e`
//! (as root). `VSWITCH_BENCH_ROUNDS` (default 3) and `VSWITCH_BENCH_SECONDS` (default 5) set
//! the length; each UDP search takes up to about five times `VSWITCH_BENCH_SECONDS` per path.
//! `VSWITCH_BENCH_ONLY` (`tcp`, `udp`, `rtt` or `nat`) runs one kind of test;
//! `VSWITCH_BENCH_WORKERS` sets the daemons' worker count.
//!
//! Single-stream TCP is also measured, in the same round as the plain run, with one allow-all
//! policy and with a policy of 1,000 rules (the last one allowing) in force on both daemons:
//! their rows give the ratio to the run with no policy.
//!
//! Egress through NAT: a container on h0 sends to a server in an "outside" namespace joined to
//! h0 by a veth, masqueraded behind h0's address, through `vswitchd` (a network with
//! `masquerade = true`: the host port, then the kernel's forwarding and nftables NAT) and
//! through the kernel's own bridge and masquerade (a bridge holding the gateway address, a
//! container behind a veth, a masquerade rule made with `nft` in h0, as Docker's bridge does).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use netns::{NetNs, Netlink};
use vswitch::control::api::Request;
use vswitch::control::policy::{PolicyApply, PolicyDelete};
use vswitch::lab::{HostKind, Lab, NetworkSpec, traffic};
use vswitch::policy::{Policy, parse_toml};

/// The policies single-stream TCP is measured under, each against no policy.
fn bench_policies() -> Vec<(&'static str, Vec<Policy>)> {
    let allow_all = "[[policy]]\nname = \"bench\"\n[[policy.ingress]]\n[[policy.egress]]\n";
    let mut many = String::from("[[policy]]\nname = \"bench\"\n");
    for i in 0..999 {
        many.push_str(&format!(
            "[[policy.ingress]]\npeers = [{{ cidr = \"192.0.{}.{}/32\" }}]\nprotocol = \"tcp\"\nports = [{}]\n",
            i / 250,
            i % 250 + 1,
            1000 + i
        ));
    }
    many.push_str("[[policy.ingress]]\n[[policy.egress]]\n");
    [
        ("allow-all policy", allow_all),
        ("1,000 rules", many.as_str()),
    ]
    .into_iter()
    .map(|(name, text)| (name, parse_toml(text).expect("bench policy")))
    .collect()
}

/// Puts `policies` in force on every daemon of the lab (none: removes the bench policy).
fn set_policies(lab: &Lab, policies: Option<&[Policy]>) {
    for host in 0..lab.hosts.len() {
        let request = match policies {
            Some(p) => Request::PolicyApply(PolicyApply {
                policies: p.to_vec(),
            }),
            None => Request::PolicyDelete(PolicyDelete {
                name: "bench".into(),
            }),
        };
        lab.call(host, &request).expect("setting the bench policy");
    }
}

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

/// Loss below which a UDP rate counts as forwarded.
const MAX_LOSS: f64 = 0.01;

/// One measurement, taken for both paths; it may fill several rows.
#[derive(Clone, Copy)]
enum Test {
    Tcp(usize),
    Udp64,
    Rtt,
    /// Single-stream TCP from a container to the outside through NAT.
    Nat,
}

impl Test {
    fn rows(self) -> Vec<String> {
        match self {
            Test::Tcp(1) => vec!["TCP, 1 stream (Gbit/s)".into()],
            Test::Tcp(n) => vec![format!("TCP, {n} streams (Gbit/s)")],
            Test::Udp64 => vec![
                "UDP 64 B at <1% loss (kpps)".into(),
                "UDP 64 B unpaced flood delivered (kpps)".into(),
            ],
            Test::Rtt => vec!["RTT p50 (us, lower is better)".into()],
            Test::Nat => vec!["TCP, 1 stream, container to outside through NAT (Gbit/s)".into()],
        }
    }
}

/// Where a test's traffic goes: from a namespace to an address served in another.
struct Path<'a> {
    from: &'a NetNs,
    to: &'a NetNs,
    ip: Ipv4Addr,
}

impl<'a> Path<'a> {
    fn containers(lab: &'a Lab, from: usize, to: usize) -> Self {
        Path {
            from: &lab.containers[from].ns,
            to: &lab.containers[to].ns,
            ip: lab.containers[to].ip,
        }
    }
}

/// The value and note of each of the test's rows.
fn measure(path: &Path<'_>, test: Test, seconds: Duration) -> Vec<(f64, String)> {
    let (from, to, ip) = (path.from, path.to, path.ip);
    match test {
        Test::Tcp(streams) => {
            let bps =
                traffic::tcp_throughput(from, to, ip, streams, seconds).expect("TCP throughput");
            vec![(bps / 1e9, String::new())]
        }
        Test::Nat => {
            let bps = traffic::tcp_throughput(from, to, ip, 1, seconds).expect("TCP throughput");
            vec![(bps / 1e9, String::new())]
        }
        Test::Udp64 => {
            let found = traffic::udp_throughput(from, to, ip, 64, seconds, MAX_LOSS)
                .expect("UDP throughput");
            let at_rate = match found.best {
                Some(best) => format!(
                    "loss {:.2}% at {:.1} kpps offered ({} trials)",
                    best.loss() * 100.0,
                    best.offered_pps / 1e3,
                    found.trials
                ),
                None => format!(
                    "no rate under {}% loss ({} trials)",
                    MAX_LOSS * 100.0,
                    found.trials
                ),
            };
            let unpaced = found.unpaced;
            vec![
                (found.delivered_pps() / 1e3, at_rate),
                (
                    unpaced.delivered_pps / 1e3,
                    format!(
                        "loss {:.1}% of {:.1} kpps sent",
                        unpaced.loss() * 100.0,
                        unpaced.offered_pps / 1e3
                    ),
                ),
            ]
        }
        Test::Rtt => {
            let mut rtts = traffic::ping(
                from,
                ip,
                50,
                Duration::from_millis(20),
                Duration::from_secs(1),
            )
            .expect("ping");
            rtts.sort();
            let p50 = rtts.get(rtts.len() / 2).copied().unwrap_or_default();
            vec![(p50.as_secs_f64() * 1e6, format!("{} replies", rtts.len()))]
        }
    }
}

/// One row's figures over the rounds.
#[derive(Default)]
struct Row {
    ours: Vec<f64>,
    kernel: Vec<f64>,
    ratios: Vec<f64>,
    notes: Vec<String>,
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we do not support.
    let rounds = env_or("VSWITCH_BENCH_ROUNDS", 3).max(1);
    let seconds = Duration::from_secs(env_or("VSWITCH_BENCH_SECONDS", 5).max(1));
    // `VSWITCH_BENCH_WORKERS=N` runs the daemons with N workers (default: one per CPU).
    let node_extra = std::env::var("VSWITCH_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(|n| format!("workers = {n}"))
        .unwrap_or_default();
    let mut lab = Lab::new("bench").expect("creating the lab");
    for _ in 0..2 {
        lab.add_host(HostKind::Vswitch).expect("adding a host");
    }
    let sealed_network = NetworkSpec {
        name: "sealed",
        vni: 43,
        subnet: std::net::Ipv4Addr::new(10, 245, 0, 0),
        sealed: true,
    };
    let outside = Outside::new(&lab);
    for host in 0..2 {
        lab.start_vswitchd_with(
            host,
            &[NetworkSpec::DEFAULT, sealed_network],
            &node_extra,
            &format!(
                "[[networks]]\nname = \"egress\"\nvni = 44\nsubnet = \"10.246.0.0/16\"\n\
                 node_subnet = \"10.246.{}.0/24\"\nmasquerade = true\n",
                host + 1
            ),
        )
        .expect("starting vswitchd");
    }
    let egress = lab.add_container(0, "egress", None).expect("container");
    let a = lab.add_container(0, "default", None).expect("container");
    let b = lab.add_container(1, "default", None).expect("container");
    let (sealed_from, sealed_to) = (
        lab.add_container(0, "sealed", None).expect("container"),
        lab.add_container(1, "sealed", None).expect("container"),
    );
    let kernel = lab.add_kernel_baseline().expect("kernel baseline");
    let kernel_nat = outside.kernel_bridge(&lab.hosts[0].ns);
    let sealed = Path::containers(&lab, sealed_from, sealed_to);
    let ours = Path::containers(&lab, a, b);
    let theirs = Path::containers(&lab, kernel[0], kernel[1]);
    let ours_nat = Path {
        from: &lab.containers[egress].ns,
        to: &outside.ns.ns,
        ip: OUTSIDE,
    };
    let theirs_nat = Path {
        from: &kernel_nat.ns,
        to: &outside.ns.ns,
        ip: OUTSIDE,
    };
    // Warm up ARP and the FDB on every path.
    for path in [&ours, &theirs, &sealed, &ours_nat, &theirs_nat] {
        measure(path, Test::Rtt, seconds);
    }
    // `VSWITCH_BENCH_ONLY=rtt` (or `tcp`, `udp`) runs the tests whose rows name it.
    let only = std::env::var("VSWITCH_BENCH_ONLY")
        .unwrap_or_default()
        .to_lowercase();
    let tests: Vec<Test> = [
        Test::Tcp(1),
        Test::Tcp(4),
        Test::Udp64,
        Test::Rtt,
        Test::Nat,
    ]
    .into_iter()
    .filter(|t| t.rows().iter().any(|r| r.to_lowercase().contains(&only)))
    .collect();
    println!(
        "end-to-end: {rounds} rounds x {}s, container on h0 -> container on h1",
        seconds.as_secs()
    );
    let mut rows = Vec::new();
    let mut sealed_row = Row::default();
    let policies = bench_policies();
    let mut policy_rows: Vec<Row> = policies.iter().map(|_| Row::default()).collect();
    for test in tests {
        let names = test.rows();
        let mut figures: Vec<Row> = names.iter().map(|_| Row::default()).collect();
        for round in 0..rounds {
            // Alternate which path goes first so drift on a noisy machine hits both alike.
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            let (mut o, mut k) = (Vec::new(), Vec::new());
            for is_ours in order {
                let path = match (test, is_ours) {
                    (Test::Nat, true) => &ours_nat,
                    (Test::Nat, false) => &theirs_nat,
                    (_, true) => &ours,
                    (_, false) => &theirs,
                };
                let results = measure(path, test, seconds);
                let label = if is_ours { "vswitch" } else { "kernel" };
                for ((_, note), row) in results.iter().zip(&mut figures) {
                    if !note.is_empty() {
                        row.notes.push(format!("r{round} {label} {note}"));
                    }
                }
                let values = results.into_iter().map(|(value, _)| value).collect();
                if is_ours {
                    o = values;
                } else {
                    k = values;
                }
            }
            if matches!(test, Test::Tcp(1)) {
                // The sealed network in the same round, against the plain one.
                let s = measure(&sealed, test, seconds)
                    .first()
                    .map_or(0.0, |&(value, _)| value);
                let plain = o.first().copied().unwrap_or(0.0);
                sealed_row.ours.push(s);
                sealed_row.kernel.push(plain);
                sealed_row
                    .ratios
                    .push(if plain > 0.0 { s / plain } else { 0.0 });
                // The plain network under each policy, in the same round.
                for ((_, set), row) in policies.iter().zip(&mut policy_rows) {
                    set_policies(&lab, Some(set));
                    let p = measure(&ours, test, seconds)
                        .first()
                        .map_or(0.0, |&(value, _)| value);
                    set_policies(&lab, None);
                    row.ours.push(p);
                    row.kernel.push(plain);
                    row.ratios.push(if plain > 0.0 { p / plain } else { 0.0 });
                }
            }
            for ((o, k), row) in o.into_iter().zip(k).zip(&mut figures) {
                row.ours.push(o);
                row.kernel.push(k);
                row.ratios.push(if k > 0.0 { o / k } else { 0.0 });
            }
        }
        for (name, mut row) in names.into_iter().zip(figures) {
            let per_round = row
                .ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" ");
            if !row.notes.is_empty() {
                println!("  {name}: {}", row.notes.join(", "));
            }
            rows.push(vec![
                name,
                format!("{:.2}", median(&mut row.ours)),
                format!("{:.2}", median(&mut row.kernel)),
                format!("{:.2}", median(&mut row.ratios)),
                per_round,
            ]);
        }
    }
    if !sealed_row.ratios.is_empty() {
        let per_round = sealed_row
            .ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ");
        rows.push(vec![
            "TCP, 1 stream, sealed / plain (Gbit/s)".into(),
            format!("{:.2}", median(&mut sealed_row.ours)),
            format!("plain {:.2}", median(&mut sealed_row.kernel)),
            format!("{:.2}", median(&mut sealed_row.ratios)),
            per_round,
        ]);
    }
    for ((name, _), mut row) in policies.iter().zip(policy_rows) {
        if row.ratios.is_empty() {
            continue;
        }
        let per_round = row
            .ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ");
        rows.push(vec![
            format!("TCP, 1 stream, {name} / none (Gbit/s)"),
            format!("{:.2}", median(&mut row.ours)),
            format!("none {:.2}", median(&mut row.kernel)),
            format!("{:.2}", median(&mut row.ratios)),
            per_round,
        ]);
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

/// The outside's address, and h0's on the veth to it (TEST-NET-3: only inside the lab).
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const HOST_OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// A namespace of the benchmark's own, deleted on drop.
struct OwnNs {
    name: String,
    ns: NetNs,
}

impl OwnNs {
    fn new(suffix: &str) -> Self {
        let name = format!("bench{}-{suffix}", std::process::id());
        let _ = NetNs::delete(&name);
        let ns = NetNs::create(&name).expect("creating a namespace");
        Netlink::in_namespace(&ns)
            .expect("netlink")
            .set_up("lo")
            .expect("lo up");
        OwnNs { name, ns }
    }
}

impl Drop for OwnNs {
    fn drop(&mut self) {
        let _ = NetNs::delete(&self.name);
    }
}

/// The outside world, joined to h0 by a veth: h0 at 203.0.113.1/24 on `out0`, the outside at
/// 203.0.113.2/24, with no route back into any container network.
struct Outside {
    ns: OwnNs,
}

impl Outside {
    fn new(lab: &Lab) -> Self {
        let ns = OwnNs::new("out");
        let host = Netlink::in_namespace(&lab.hosts[0].ns).expect("netlink");
        host.create_veth("out0", "out1").expect("veth");
        host.move_to_namespace_as("out1", &ns.ns, "eth0")
            .expect("moving the veth");
        host.add_address("out0", IpAddr::V4(HOST_OUTSIDE), 24)
            .expect("address");
        host.set_up("out0").expect("up");
        let out = Netlink::in_namespace(&ns.ns).expect("netlink");
        out.add_address("eth0", IpAddr::V4(OUTSIDE), 24)
            .expect("address");
        out.set_up("eth0").expect("up");
        Outside { ns }
    }

    /// The kernel's baseline in `host`: a bridge `nbr0` holding 10.250.0.1/24, a container
    /// behind a veth at 10.250.0.2 with its default route through the bridge, and a masquerade
    /// rule for 10.250.0.0/24 leaving by `out0`.
    fn kernel_bridge(&self, host: &NetNs) -> OwnNs {
        let container = OwnNs::new("nc");
        let nl = Netlink::in_namespace(host).expect("netlink");
        nl.create_bridge("nbr0").expect("bridge");
        nl.add_address("nbr0", IpAddr::V4(Ipv4Addr::new(10, 250, 0, 1)), 24)
            .expect("address");
        nl.set_up("nbr0").expect("up");
        nl.create_veth("nv0", "nv1").expect("veth");
        nl.set_master("nv0", "nbr0").expect("bridge port");
        nl.set_up("nv0").expect("up");
        nl.move_to_namespace_as("nv1", &container.ns, "eth0")
            .expect("moving the veth");
        let inside = Netlink::in_namespace(&container.ns).expect("netlink");
        inside
            .add_address("eth0", IpAddr::V4(Ipv4Addr::new(10, 250, 0, 2)), 24)
            .expect("address");
        inside.set_up("eth0").expect("up");
        inside
            .add_route(
                "0.0.0.0/0".parse().expect("prefix"),
                Some(IpAddr::V4(Ipv4Addr::new(10, 250, 0, 1))),
                None,
            )
            .expect("default route");
        let rules = "table ip kbench {\n chain post {\n  type nat hook postrouting priority 100;\n  \
                     ip saddr 10.250.0.0/24 oifname \"out0\" masquerade\n }\n}\n";
        let file = std::env::temp_dir().join(format!("bench{}-nat.nft", std::process::id()));
        std::fs::write(&file, rules).expect("writing the rules");
        let status = host
            .command("nft")
            .arg("-f")
            .arg(&file)
            .status()
            .expect("running nft");
        let _ = std::fs::remove_file(&file);
        assert!(status.success(), "nft -f refused the baseline's rules");
        host.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
            .expect("entering h0")
            .expect("turning on forwarding");
        container
    }
}
