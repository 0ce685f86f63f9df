//! `vswitch demo`: a two-host cluster built in namespaces on this machine, two containers per
//! host, shown working (every container reaches every other, across hosts and on one host), a
//! network policy that keeps one pair open and closes another, explained; a sealed network
//! beside the plain one, with what a capture of the underlay sees of each; a rate-limited
//! container measured against its limit; then both networks measured against the Linux
//! kernel's VXLAN and bridge in the same topology, then removed, on Ctrl-C or failure too.

use std::time::Duration;

use anyhow::{Context, bail};

use std::collections::BTreeMap;

use crate::control::api::{AttachRequest, Reply, Request};
use crate::control::policy::{ExplainRequest, PolicyApply};
use crate::lab::capture::{self, UnderlayCapture};
use crate::lab::{HostKind, Lab, NetworkSpec, traffic};
use crate::policy::BitRate;
use crate::tunnel::Kind;

/// The apps the four containers run, by container: the policy selects by these labels.
const APPS: [&str; 4] = ["web", "db", "web", "batch"];

/// The demo's sealed network, beside the default one.
const SEALED: NetworkSpec<'static> = NetworkSpec {
    name: "sealed",
    vni: 43,
    subnet: std::net::Ipv4Addr::new(10, 245, 0, 0),
    sealed: true,
};

/// UDP payloads sent on each network while the underlay is captured.
const PLAIN_MARKER: &[u8] = b"vswitch-demo-marker-on-the-plain-network";
const SEALED_MARKER: &[u8] = b"vswitch-demo-marker-on-the-sealed-network";
/// How many of each.
const MARKERS: usize = 20;

/// Knobs of the demo.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Seconds each throughput measurement runs.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Skip the throughput measurements.
    #[arg(long)]
    pub no_throughput: bool,
}

/// Runs the demo, printing as it goes.
pub fn run(options: &DemoOptions) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo creates network namespaces: run it as root");
    }
    println!("Building a two-host cluster in network namespaces...");
    let mut lab = Lab::new("demo").context("creating the lab")?;
    let cleanup = lab.cleanup_handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing the signal handler")?;
    let signal_handle = signals.handle();
    let watcher = std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("\ninterrupted: removing the demo cluster");
            cleanup
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .run();
            std::process::exit(128 + signal);
        }
    });
    let result = demo(&mut lab, options);
    lab.teardown();
    signal_handle.close();
    let _ = watcher.join();
    if result.is_ok() {
        println!("\nRemoved every namespace, link and process the demo created.");
    }
    result
}

fn demo(lab: &mut Lab, options: &DemoOptions) -> anyhow::Result<()> {
    let networks = [NetworkSpec::DEFAULT, SEALED];
    for _ in 0..2 {
        lab.add_host(HostKind::Vswitch)?;
    }
    for host in 0..2 {
        lab.start_vswitchd(host, &networks, "")?;
        let h = &lab.hosts[host];
        println!(
            "  host {} ({}): vswitchd up, underlay {}, VXLAN port 4789",
            h.name,
            h.ns.label(),
            h.address
        );
    }
    for host in 0..2 {
        for _ in 0..2 {
            let app = APPS[lab.containers.len()];
            let c = lab.add_container_attached(
                host,
                AttachRequest {
                    labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
                    ..Default::default()
                },
            )?;
            let c = &lab.containers[c];
            println!(
                "  container {} on h{host}: eth0 {}/16 mac {} app={app}",
                c.name, c.ip, c.mac
            );
        }
    }

    println!("\nConnectivity (ICMP echo, every container to every other):");
    matrix(lab, &[])?;

    let gateway = lab.containers[0]
        .attachment
        .as_ref()
        .map(|a| a.gateway)
        .context("container without attachment")?;
    let std::net::IpAddr::V4(gateway) = gateway else {
        bail!("IPv4 gateway expected");
    };
    let rtts = traffic::ping(
        &lab.containers[0].ns,
        gateway,
        1,
        Duration::ZERO,
        Duration::from_secs(1),
    )?;
    println!(
        "  gateway {gateway} answers from the switch itself: {}",
        if rtts.is_empty() { "no" } else { "yes" }
    );

    if let Reply::Fdb(entries) = lab.call(0, &Request::Fdb)? {
        println!("\nMAC table of h0 (vswitch fdb):");
        print!("{}", crate::control::render::fdb(&entries));
    }

    policy(lab)?;
    let sealed = sealed_network(lab)?;

    if options.no_throughput {
        return Ok(());
    }
    rate_limit(lab)?;
    throughput(lab, options, sealed)
}

/// Pings every container from every other and prints the matrix; `closed` are the pairs
/// policy is expected to deny (shown as such), every other pair must answer.
fn matrix(lab: &Lab, closed: &[(usize, usize)]) -> anyhow::Result<()> {
    let names: Vec<String> = (0..lab.containers.len())
        .map(|i| format!("c{i}@h{}", lab.containers[i].host))
        .collect();
    let mut rows = Vec::new();
    let mut failures = 0;
    for (i, from) in lab.containers.iter().enumerate() {
        let mut row = vec![names[i].clone()];
        for (j, to) in lab.containers.iter().enumerate() {
            if i == j {
                row.push("-".into());
                continue;
            }
            let denied = closed.contains(&(i, j));
            let rtts = traffic::ping(
                &from.ns,
                to.ip,
                if denied { 1 } else { 3 },
                Duration::from_millis(10),
                Duration::from_secs(1),
            )?;
            if rtts.is_empty() {
                if denied {
                    row.push("denied".into());
                } else {
                    failures += 1;
                    row.push("FAIL".into());
                }
            } else if denied {
                failures += 1;
                row.push("OPEN?".into());
            } else {
                let best = rtts.iter().min().copied().unwrap_or_default();
                row.push(format!("ok {:.0}us", best.as_secs_f64() * 1e6));
            }
        }
        rows.push(row);
    }
    let mut headers = vec!["from \\ to"];
    headers.extend(names.iter().map(String::as_str));
    print!("{}", crate::control::render::table(&headers, &rows));
    if failures > 0 {
        bail!("{failures} container pairs did not behave as the policy says");
    }
    Ok(())
}

/// Applies a policy on both hosts that lets web (c0 on h0 by label, c2 on h1 by address) reach
/// db (c1) and nothing else, shows the matrix, and explains the closed pair.
fn policy(lab: &Lab) -> anyhow::Result<()> {
    let (db, remote_web, batch) = (1, 2, 3);
    let text = format!(
        "[[policy]]\nname = \"db\"\nselector = {{ app = \"db\" }}\n\
         [[policy.ingress]]\npeers = [{{ selector = {{ app = \"web\" }} }}, {{ cidr = \"{}/32\" }}]\n",
        lab.containers[remote_web].ip
    );
    println!("\nPolicy (vswitch policy apply -f db.toml, on both hosts):\n{text}");
    let policies = crate::policy::parse_toml(&text)?;
    for host in 0..lab.hosts.len() {
        lab.call(
            host,
            &Request::PolicyApply(PolicyApply {
                policies: policies.clone(),
            }),
        )?;
    }
    println!("Connectivity with the policy: web -> db open (c0, c2), batch -> db closed (c3):");
    matrix(lab, &[(batch, db)])?;
    let (from, to) = (&lab.containers[batch], &lab.containers[db]);
    let reply = lab.call(
        to.host,
        &Request::PolicyExplain(ExplainRequest {
            src: from.ip.into(),
            dst: to.ip.into(),
            protocol: "icmp".into(),
            port: 8,
        }),
    )?;
    if let Reply::Explained(e) = reply {
        println!(
            "\nWhy c3 cannot reach c1 (vswitch policy explain {} {} icmp 8, on h{}):\n{}",
            from.ip, to.ip, to.host, e.text
        );
    }
    Ok(())
}

/// Attaches a container limited to 50 Mbit/s and measures TCP into it.
fn rate_limit(lab: &mut Lab) -> anyhow::Result<()> {
    let rate: BitRate = "50M".parse()?;
    let limited = lab.add_container_attached(
        1,
        AttachRequest {
            rate: Some(rate),
            ..Default::default()
        },
    )?;
    let (from, to) = (&lab.containers[0], &lab.containers[limited]);
    let measured = traffic::tcp_throughput(&from.ns, &to.ns, to.ip, 2, Duration::from_secs(2))?;
    println!(
        "\nRate limit: c{limited}@h1 attached with --rate {rate} (each direction); two TCP \
         streams from c0@h0 for 2s: {:.1} Mbit/s measured, limit {:.1} Mbit/s",
        measured / 1e6,
        rate.bits_per_sec() as f64 / 1e6
    );
    Ok(())
}

fn throughput(lab: &mut Lab, options: &DemoOptions, sealed: (usize, usize)) -> anyhow::Result<()> {
    let seconds = Duration::from_secs(options.seconds.max(1));
    println!(
        "\nThroughput, container on h0 to container on h1, {}s each, single TCP stream:",
        seconds.as_secs()
    );
    let baseline = lab.add_kernel_baseline()?;
    let (ours_from, ours_to) = (0, 2);
    let ours = traffic::tcp_throughput(
        &lab.containers[ours_from].ns,
        &lab.containers[ours_to].ns,
        lab.containers[ours_to].ip,
        1,
        seconds,
    )?;
    let kernel = traffic::tcp_throughput(
        &lab.containers[baseline[0]].ns,
        &lab.containers[baseline[1]].ns,
        lab.containers[baseline[1]].ip,
        1,
        seconds,
    )?;
    let (sealed_from, sealed_to) = sealed;
    let ours_sealed = traffic::tcp_throughput(
        &lab.containers[sealed_from].ns,
        &lab.containers[sealed_to].ns,
        lab.containers[sealed_to].ip,
        1,
        seconds,
    )?;
    let rows = vec![
        vec!["vswitch (userspace)".to_owned(), gbit(ours)],
        vec!["vswitch, sealed network".to_owned(), gbit(ours_sealed)],
        vec!["Linux kernel VXLAN + bridge".to_owned(), gbit(kernel)],
    ];
    print!(
        "{}",
        crate::control::render::table(&["PATH", "THROUGHPUT"], &rows)
    );
    if kernel > 0.0 && ours > 0.0 {
        println!(
            "  ratio vswitch / kernel: {:.2}, sealed / plain: {:.2}",
            ours / kernel,
            ours_sealed / ours
        );
    }
    Ok(())
}

/// Attaches a container per host to the sealed network, sends a marker on each network while
/// the underlay is captured, and shows what the capture holds; fails if the sealed marker
/// shows in clear. Returns the sealed containers.
fn sealed_network(lab: &mut Lab) -> anyhow::Result<(usize, usize)> {
    println!(
        "\nA sealed network beside the plain one: \"{}\" (VNI {}), encryption = true",
        SEALED.name, SEALED.vni
    );
    let pcap_path = lab.dir().join("underlay.pcap");
    let capture = UnderlayCapture::start(&lab.hosts[1].ns, &pcap_path)?;
    let mut sealed = Vec::new();
    for host in 0..2 {
        let c = lab.add_container(host, SEALED.name, None)?;
        sealed.push(c);
        let c = &lab.containers[c];
        println!(
            "  container {} on h{host}: eth0 {}/16 mac {}",
            c.name, c.ip, c.mac
        );
    }
    let (from, to) = (sealed[0], sealed[1]);
    // Within a second of the sealed containers' attach.
    let c = &lab.containers;
    let arrived = [
        capture::send_marker(&c[0].ns, &c[2].ns, c[2].ip, PLAIN_MARKER, MARKERS)?,
        capture::send_marker(&c[from].ns, &c[to].ns, c[to].ip, SEALED_MARKER, MARKERS)?,
    ];
    let rtts = traffic::ping(
        &c[from].ns,
        c[to].ip,
        3,
        Duration::from_millis(10),
        Duration::from_secs(1),
    )?;
    let best = rtts
        .iter()
        .min()
        .copied()
        .context("no echo reply across the sealed network")?;
    println!(
        "  {}@h0 -> {}@h1 over the sealed network: ok {:.0}us",
        c[from].name,
        c[to].name,
        best.as_secs_f64() * 1e6
    );
    if let Reply::Peers(peers) = lab.call(0, &Request::Peers)?
        && let Some(session) = peers.first().and_then(|p| p.session.as_ref())
    {
        println!(
            "  h0's session with h1 (vswitch peers): {}, {} handshakes",
            session.state, session.handshakes
        );
    }
    let pcap = capture.finish()?;
    let plain = capture::seen(
        &pcap,
        Kind::Plain,
        Some(NetworkSpec::DEFAULT.vni),
        PLAIN_MARKER,
    );
    let sealed_seen = capture::seen(&pcap, Kind::Sealed, Some(SEALED.vni), SEALED_MARKER);
    // The sealed marker anywhere in clear, and anything plain on the sealed VNI.
    let leaked = [Kind::Plain, Kind::Sealed, Kind::Handshake]
        .into_iter()
        .map(|kind| capture::seen(&pcap, kind, None, SEALED_MARKER).markers)
        .sum::<usize>()
        + capture::seen(&pcap, Kind::Plain, Some(SEALED.vni), b"").packets;
    println!(
        "\nWhat the underlay sees (tcpdump on h1's eth0, UDP 4789) of a UDP marker sent {MARKERS} \
         times on each network:"
    );
    let rows = vec![
        vec![
            NetworkSpec::DEFAULT.name.to_owned(),
            NetworkSpec::DEFAULT.vni.to_string(),
            "plain VXLAN (0x08)".to_owned(),
            arrived[0].to_string(),
            plain.packets.to_string(),
            format!("{} times", plain.markers),
        ],
        vec![
            SEALED.name.to_owned(),
            SEALED.vni.to_string(),
            "sealed (0x48)".to_owned(),
            arrived[1].to_string(),
            sealed_seen.packets.to_string(),
            match leaked {
                0 => "never".to_owned(),
                n => format!("{n} times"),
            },
        ],
    ];
    print!(
        "{}",
        crate::control::render::table(
            &[
                "NETWORK",
                "VNI",
                "FORMAT",
                "DELIVERED",
                "PACKETS",
                "MARKER IN CLEAR"
            ],
            &rows
        )
    );
    println!("  (packets as captured: a train of datagrams sent with GSO counts once)");
    if leaked > 0 {
        bail!("the sealed network's marker crossed the underlay in clear");
    }
    if plain.markers == 0 {
        bail!("the capture did not see the plain network's marker");
    }
    Ok((from, to))
}

fn gbit(bits_per_second: f64) -> String {
    format!("{:.2} Gbit/s", bits_per_second / 1e9)
}
