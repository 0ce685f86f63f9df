//! The control plane as an operator uses it: attaching by namespace name, path and PID; the
//! `vswitch` tables and `--json`; config reloads that add a network and drop a peer while the
//! rest keeps working; and an IPv6 underlay.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use vswitch::control::api::{AttachRequest, Reply, Request};
use vswitch_e2e::{
    HostKind, Lab, NetworkSpec, reaches, tcp_transfer, vswitch_lab, vswitch_lab_with,
};

fn vswitch_cli(lab: &Lab, host: usize, args: &[&str]) -> String {
    let exe = vswitch::lab::vswitchd_path().with_file_name("vswitch");
    let out = Command::new(&exe)
        .arg("--socket")
        .arg(&lab.hosts[host].socket)
        .args(args)
        .output()
        .expect("running vswitch");
    assert!(
        out.status.success(),
        "vswitch {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn containers_are_attached_by_name_path_or_pid() {
    let mut lab = vswitch_lab("ap", 1, &[NetworkSpec::DEFAULT], "");
    let by_name = lab.add_container(0, "default", None).unwrap();
    // By path.
    let path_ns = netns::NetNs::create(&format!("{}p", lab.containers[by_name].name)).unwrap();
    let path = format!("/run/netns/{}p", lab.containers[by_name].name);
    // By PID: a process sleeping in its own namespace.
    let pid_ns_name = format!("{}q", lab.containers[by_name].name);
    let pid_ns = netns::NetNs::create(&pid_ns_name).unwrap();
    let mut sleeper = pid_ns
        .command("sleep")
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = sleeper.id();
    let mut addresses = Vec::new();
    for netns in [path.clone(), format!("pid:{pid}")] {
        let reply = lab
            .call(
                0,
                &Request::Attach(AttachRequest {
                    netns,
                    ..Default::default()
                }),
            )
            .unwrap();
        let Reply::Attached(a) = reply else {
            panic!("{reply:?}")
        };
        let std::net::IpAddr::V4(ip) = a.address.addr() else {
            panic!()
        };
        addresses.push(ip);
    }
    assert!(
        reaches(&lab.containers[by_name].ns, addresses[0]),
        "by path"
    );
    assert!(reaches(&lab.containers[by_name].ns, addresses[1]), "by pid");
    assert!(reaches(&path_ns, lab.containers[by_name].ip));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    drop((path_ns, pid_ns));
    let _ = netns::NetNs::delete(&path[11..]);
    let _ = netns::NetNs::delete(&pid_ns_name);
}

#[test]
fn the_cli_prints_tables_and_json() {
    let mut lab = vswitch_lab("cl", 2, &[NetworkSpec::DEFAULT], "");
    let a = lab.add_container(0, "default", None).unwrap();
    let b = lab.add_container(1, "default", None).unwrap();
    assert!(reaches(&lab.containers[a].ns, lab.containers[b].ip));
    let status = vswitch_cli(&lab, 0, &["status"]);
    assert!(
        status.contains("node h0") && status.contains("10.244.1.0/24"),
        "{status}"
    );
    let ports = vswitch_cli(&lab, 0, &["ports"]);
    assert!(ports.contains(&lab.containers[a].ip.to_string()), "{ports}");
    let fdb = vswitch_cli(&lab, 0, &["fdb"]);
    assert!(
        fdb.contains(&lab.containers[b].mac.to_string()) && fdb.contains("peer h1"),
        "{fdb}"
    );
    let peers = vswitch_cli(&lab, 0, &["peers"]);
    assert!(peers.contains("198.18.0.2:4789"), "{peers}");
    let json: serde_json::Value =
        serde_json::from_str(&vswitch_cli(&lab, 0, &["status", "--json"])).unwrap();
    assert_eq!(json["node"], "h0");
    let json: serde_json::Value =
        serde_json::from_str(&vswitch_cli(&lab, 0, &["fdb", "--json"])).unwrap();
    assert!(json.as_array().is_some_and(|entries| entries.len() >= 2));
}

#[test]
fn reload_adds_networks_and_drops_peers_without_disturbing_the_rest() {
    let mut lab = vswitch_lab("rl", 3, &[NetworkSpec::DEFAULT], "");
    let a = lab.add_container(0, "default", None).unwrap();
    let b = lab.add_container(1, "default", None).unwrap();
    let c = lab.add_container(2, "default", None).unwrap();
    assert!(reaches(&lab.containers[a].ns, lab.containers[c].ip));
    // Drop h2 from h0's peers and add a network.
    let config = std::fs::read_to_string(&lab.hosts[0].config).unwrap();
    let without_h2: String = config
        .split_inclusive("\n\n")
        .filter(|block| !block.starts_with("[[peers]]\nname = \"h2\""))
        .collect();
    assert_ne!(config, without_h2);
    std::fs::write(
        &lab.hosts[0].config,
        format!("{without_h2}\n[[networks]]\nname = \"blue\"\nvni = 77\nsubnet = \"10.77.0.0/16\"\nnode_subnet = \"10.77.1.0/24\"\n"),
    )
    .unwrap();
    let summary = vswitch_cli(&lab, 0, &["reload"]);
    assert!(
        summary.contains("peer h2 removed") && summary.contains("network blue added"),
        "{summary}"
    );
    // Traffic to h1 flows on; h2 is gone, with what was learned behind it.
    tcp_transfer(
        &lab.containers[a].ns,
        &lab.containers[b].ns,
        lab.containers[b].ip,
        1 << 20,
    );
    assert!(!reaches(&lab.containers[a].ns, lab.containers[c].ip));
    let fdb = vswitch_cli(&lab, 0, &["fdb"]);
    assert!(!fdb.contains("peer h2"), "{fdb}");
    // The new network takes containers.
    let blue = lab.add_container(0, "blue", None).unwrap();
    assert_eq!(lab.containers[blue].ip, Ipv4Addr::new(10, 77, 1, 2));
    // SIGHUP does the same: put h2 back.
    std::fs::write(&lab.hosts[0].config, &config).unwrap();
    let pid = lab.hosts[0].daemon_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !reaches(&lab.containers[a].ns, lab.containers[c].ip) {
        assert!(
            std::time::Instant::now() < deadline,
            "h2 not back after SIGHUP"
        );
    }
}

#[test]
fn vxlan_runs_over_an_ipv6_underlay() {
    let mut lab = vswitch_lab_with("v6", 2, &[NetworkSpec::DEFAULT], "", |lab| {
        lab.ipv6_underlay = true;
    });
    let a = lab.add_container(0, "default", None).unwrap();
    let b = lab.add_container(1, "default", None).unwrap();
    let c = &lab.containers;
    assert!(reaches(&c[a].ns, c[b].ip));
    tcp_transfer(&c[a].ns, &c[b].ns, c[b].ip, 8 << 20);
    tcp_transfer(&c[b].ns, &c[a].ns, c[a].ip, 8 << 20);
    let peers = vswitch_cli(&lab, 0, &["peers"]);
    assert!(peers.contains("[fd00:c6:12::2]:4789"), "{peers}");
}

#[test]
fn the_underlay_can_be_named_by_interface() {
    let mut lab = vswitch_lab_with("if", 2, &[NetworkSpec::DEFAULT], "", |lab| {
        lab.underlay_by_interface = true;
    });
    let a = lab.add_container(0, "default", None).unwrap();
    let b = lab.add_container(1, "default", None).unwrap();
    assert!(reaches(&lab.containers[a].ns, lab.containers[b].ip));
    let status = vswitch_cli(&lab, 0, &["status"]);
    assert!(status.contains("endpoint 198.18.0.1:4789"), "{status}");
}

#[test]
fn prometheus_scrapes_get_the_counters() {
    let mut lab = Lab::new("pm").unwrap();
    lab.add_host(HostKind::Vswitch).unwrap();
    lab.start_vswitchd_with(
        0,
        &[NetworkSpec::DEFAULT],
        "metrics_address = \"127.0.0.1:9489\"",
        "",
    )
    .unwrap();
    let a = lab.add_container(0, "default", None).unwrap();
    let gateway = Ipv4Addr::new(10, 244, 1, 1);
    assert!(reaches(&lab.containers[a].ns, gateway));
    // The scrape comes from the host's own loopback, inside its namespace.
    let scrape = |path: &str| {
        lab.hosts[0]
            .ns
            .run(|| {
                use std::io::{Read, Write};
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", 9489))?;
                write!(stream, "GET {path} HTTP/1.1\r\nHost: vswitchd\r\n\r\n")?;
                let mut response = String::new();
                stream.read_to_string(&mut response)?;
                Ok::<_, std::io::Error>(response)
            })
            .unwrap()
            .unwrap()
    };
    let metrics = scrape("/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(metrics.contains("vswitch_ports 1\n"), "{metrics}");
    assert!(
        metrics.contains("vswitch_drops_total{reason=\"spoofed_source\"} 0\n"),
        "{metrics}"
    );
    assert!(metrics.contains("direction=\"rx\"}"), "{metrics}");
    assert!(scrape("/").starts_with("HTTP/1.1 404"));
}
