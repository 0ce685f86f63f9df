//! Network policy and QoS end to end: a policy matrix across two hosts with two workers per
//! daemon (allowed and denied pairs both ways, replies of allowed connections passing, many
//! flows), `vswitch policy explain` and `list`, policies kept across a restart, and a
//! rate-limited port whose TCP throughput stays under its limit.

use std::collections::BTreeMap;
use std::process::Command;
use std::thread;
use std::time::Duration;

use vswitch::control::api::{AttachRequest, PortView, Reply, Request, StatusView};
use vswitch::control::policy::{PolicyList, QosRequest};
use vswitch::lab::traffic::tcp_throughput;
use vswitch::policy::BitRate;
use vswitch_e2e::{Lab, NetworkSpec, drops, reaches, tcp_transfer};

fn lab_with_workers(tag: &str, hosts: usize) -> Lab {
    let mut lab = Lab::new(tag).expect("creating the lab");
    for _ in 0..hosts {
        lab.add_host(vswitch_e2e::HostKind::Vswitch)
            .expect("adding a host");
    }
    for host in 0..hosts {
        lab.start_vswitchd_with(host, &[NetworkSpec::DEFAULT], "workers = 2", "")
            .expect("starting vswitchd");
    }
    lab
}

fn labelled(lab: &mut Lab, host: usize, app: &str) -> usize {
    lab.add_container_attached(
        host,
        AttachRequest {
            labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
            ..Default::default()
        },
    )
    .expect("attaching a labelled container")
}

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

fn list(lab: &Lab, host: usize) -> PolicyList {
    match lab.call(host, &Request::PolicyList).expect("policy list") {
        Reply::Policies(list) => *list,
        other => panic!("unexpected reply {other:?}"),
    }
}

fn status(lab: &Lab, host: usize) -> StatusView {
    match lab.call(host, &Request::Status).expect("vswitch status") {
        Reply::Status(status) => *status,
        other => panic!("unexpected reply {other:?}"),
    }
}

fn ports(lab: &Lab, host: usize) -> Vec<PortView> {
    match lab.call(host, &Request::Ports).expect("vswitch ports") {
        Reply::Ports(ports) => ports,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn a_policy_matrix_across_two_hosts_holds_on_every_worker_and_across_a_restart() {
    let mut lab = lab_with_workers("pol", 2);
    let web0 = labelled(&mut lab, 0, "web");
    let db0 = labelled(&mut lab, 0, "db");
    let other0 = labelled(&mut lab, 0, "other");
    let web1 = labelled(&mut lab, 1, "web");
    let db1 = labelled(&mut lab, 1, "db");
    let other1 = labelled(&mut lab, 1, "other");
    let ip = |c: usize| lab.containers[c].ip;
    // db takes anything from web (local ones by label, the other host's by address) and opens
    // nothing itself: its replies pass as part of connections web opened.
    let text = format!(
        r#"
[[policy]]
name = "db"
selector = {{ app = "db" }}
[[policy.ingress]]
peers = [{{ selector = {{ app = "web" }} }}, {{ cidr = "{}/32" }}, {{ cidr = "{}/32" }}]
[[policy.egress]]
action = "deny"
"#,
        ip(web0),
        ip(web1)
    );
    let file = lab.dir().join("db.toml");
    std::fs::write(&file, &text).unwrap();
    for host in 0..2 {
        let out = vswitch_cli(
            &lab,
            host,
            &["policy", "apply", "-f", file.to_str().unwrap()],
        );
        assert!(out.contains("applied db"), "{out}");
    }

    let c = |i: usize| &lab.containers[i];
    let check = |lab: &Lab, from: usize, to: usize, allowed: bool| {
        let (f, t) = (&lab.containers[from], &lab.containers[to]);
        assert_eq!(
            reaches(&f.ns, t.ip),
            allowed,
            "{} (host {}) -> {} (host {})",
            f.name,
            f.host,
            t.name,
            t.host
        );
    };
    for (from, to, allowed) in [
        (web0, db0, true),
        (web1, db0, true),
        (web0, db1, true),
        (web1, db1, true),
        (other0, db0, false),
        (other1, db0, false),
        (other0, db1, false),
        (db0, web0, false),
        (db0, other1, false),
        (db1, web0, false),
        (other0, web1, true),
        (web1, other0, true),
    ] {
        check(&lab, from, to, allowed);
    }

    // Many connections at once, each way across the hosts: both workers of each daemon carry
    // some, and every reply finds the connection whichever worker reads it.
    let transfers: Vec<_> = (0..16)
        .map(|i| {
            let (from, to) = if i % 2 == 0 { (web0, db1) } else { (web1, db0) };
            let (from_ns, to_ns, to_ip) = (c(from).ns.clone(), c(to).ns.clone(), c(to).ip);
            thread::spawn(move || tcp_transfer(&from_ns, &to_ns, to_ip, 1 << 20))
        })
        .collect();
    for transfer in transfers {
        transfer
            .join()
            .expect("a transfer between allowed containers failed");
    }
    for host in 0..2 {
        let s = status(&lab, host);
        let busy = s.workers.iter().filter(|w| w.rx_frames > 100).count();
        assert_eq!(busy, 2, "host {host}: {:?}", s.workers);
        assert!(drops(&lab, host, "policy_denied") > 0, "host {host}");
        let listed = list(&lab, host);
        let ingress = listed
            .rules
            .iter()
            .find(|r| r.direction == "ingress")
            .unwrap();
        // A rule counts what it decides: the first packet of each connection (eight
        // transfers and the pings to each db), not the packets conntrack lets through after.
        assert!(ingress.hits >= 8, "{ingress:?}");
        assert!(listed.connections > 0);
    }
    // Denied flows are logged with the rule that denied them (rate-limited).
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    assert!(
        log.contains("policy denied a flow: rule #")
            && log.contains("db")
            && log.contains("egress[0]"),
        "{log}"
    );
    let db0_port = ports(&lab, 0)
        .into_iter()
        .find(|p| p.attachment.container_id == c(db0).name)
        .unwrap();
    assert!(db0_port.denied > 0, "{db0_port:?}");

    // Explain, as an operator reads it.
    let (o, d, w) = (
        ip(other0).to_string(),
        ip(db0).to_string(),
        ip(web0).to_string(),
    );
    let out = vswitch_cli(&lab, 0, &["policy", "explain", &o, &d, "tcp", "5432"]);
    assert!(out.contains(": denied"), "{out}");
    assert!(
        out.contains("is selected for ingress by db and no rule allows this"),
        "{out}"
    );
    let out = vswitch_cli(&lab, 0, &["policy", "explain", &w, &d, "tcp", "5432"]);
    assert!(out.contains(": allowed"), "{out}");
    assert!(out.contains("allowed by policy \"db\" ingress[0]"), "{out}");
    let out = vswitch_cli(&lab, 0, &["policy", "explain", &d, &w, "icmp", "8"]);
    assert!(out.contains("denied by policy \"db\" egress[0]"), "{out}");
    let out = vswitch_cli(&lab, 0, &["policy", "list"]);
    assert!(out.contains("db") && out.contains("applied"), "{out}");

    // A restart keeps the policy, and it is enforced again at once.
    lab.stop_vswitchd(0, false).unwrap();
    lab.spawn_vswitchd(0).unwrap();
    let listed = list(&lab, 0);
    assert_eq!(listed.policies.len(), 1);
    assert_eq!(listed.sources["db"], "applied");
    check(&lab, other0, db0, false);
    check(&lab, web0, db0, true);

    // Deleting it opens db again.
    let out = vswitch_cli(&lab, 0, &["policy", "delete", "db"]);
    assert!(out.contains("deleted db"), "{out}");
    check(&lab, other0, db0, true);
    assert!(list(&lab, 0).policies.is_empty());
}

#[test]
fn a_rate_limited_port_stays_under_its_rate_plus_burst() {
    let mut lab = lab_with_workers("qos", 2);
    let rate: BitRate = "20M".parse().unwrap();
    let burst = 64 * 1024;
    let sender = lab.add_container(0, "default", None).unwrap();
    let limited = lab
        .add_container_attached(
            1,
            AttachRequest {
                rate: Some(rate),
                burst: Some(burst),
                ..Default::default()
            },
        )
        .unwrap();
    let (from, to) = (&lab.containers[sender], &lab.containers[limited]);
    let duration = Duration::from_secs(2);
    let bps = tcp_throughput(&from.ns, &to.ns, to.ip, 4, duration).expect("measuring TCP");
    // The receiver counts payload (less than what the bucket is charged) from its first accept
    // to the last byte: about `duration`, at least half of it. Over that time at most
    // rate x time + burst can pass the bucket, and a little more (allowed: a tenth) may have
    // passed between the connections opening and the count starting.
    let ceiling = rate.bits_per_sec() as f64 * 1.1 + (burst * 8) as f64;
    assert!(
        bps <= ceiling,
        "{:.1} Mbit/s measured through a {rate} limit (ceiling {:.1} Mbit/s)",
        bps / 1e6,
        ceiling / 1e6
    );
    eprintln!(
        "{:.1} Mbit/s through a {rate} limit with a {burst}-byte burst",
        bps / 1e6
    );
    assert!(bps > 0.0);
    let port = ports(&lab, 1)
        .into_iter()
        .find(|p| p.attachment.container_id == to.name)
        .unwrap();
    assert!(port.limited > 0, "{port:?}");
    assert_eq!(port.attachment.qos.map(|q| q.rate), Some(rate));
    assert!(drops(&lab, 1, "rate_limited") > 0);

    // Lifted at run time, the same port carries far more.
    let reply = lab
        .call(
            1,
            &Request::Qos(QosRequest {
                container_id: to.name.clone(),
                ifname: None,
                rate: None,
                burst: None,
            }),
        )
        .unwrap();
    assert!(matches!(reply, Reply::Attached(a) if a.qos.is_none()));
    let free = tcp_throughput(&from.ns, &to.ns, to.ip, 4, Duration::from_secs(1)).unwrap();
    assert!(free > ceiling, "{:.1} Mbit/s without a limit", free / 1e6);
}
