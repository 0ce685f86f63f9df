//! `vswitch demo`: a two-host cluster built in namespaces on this machine, two containers per
//! host, shown working (every container reaches every other, across hosts and on one host), then
//! measured against the Linux kernel's VXLAN and bridge in the same topology, then removed, on
//! Ctrl-C or failure too.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::control::api::{Reply, Request};
use crate::lab::{HostKind, Lab, NetworkSpec, traffic};

/// Knobs of the demo.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Seconds each throughput measurement runs.
    #[arg(long, default_value_t = 5)]
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
    let networks = [NetworkSpec::DEFAULT];
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
            let c = lab.add_container(host, "default", None)?;
            let c = &lab.containers[c];
            println!(
                "  container {} on h{host}: eth0 {}/16 mac {}",
                c.name, c.ip, c.mac
            );
        }
    }

    println!("\nConnectivity (ICMP echo, every container to every other):");
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
            let rtts = traffic::ping(
                &from.ns,
                to.ip,
                3,
                Duration::from_millis(10),
                Duration::from_secs(1),
            )?;
            if rtts.is_empty() {
                failures += 1;
                row.push("FAIL".into());
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
        bail!("{failures} container pairs could not reach each other");
    }

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

    if options.no_throughput {
        return Ok(());
    }
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
    let rows = vec![
        vec!["vswitch (userspace)".to_owned(), gbit(ours)],
        vec!["Linux kernel VXLAN + bridge".to_owned(), gbit(kernel)],
    ];
    print!(
        "{}",
        crate::control::render::table(&["PATH", "THROUGHPUT"], &rows)
    );
    if kernel > 0.0 {
        println!("  ratio vswitch / kernel: {:.2}", ours / kernel);
    }
    Ok(())
}

fn gbit(bits_per_second: f64) -> String {
    format!("{:.2} Gbit/s", bits_per_second / 1e9)
}
