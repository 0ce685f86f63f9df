//! A fleet that finds itself through a real etcd (in the lab's underlay namespace): daemons
//! with no static peers find each other and pin each other's containers; a node killed with
//! SIGKILL is removed everywhere within its lease TTL + 2 s, with every MAC behind it; a node
//! restarted with new containers leaves no stale MAC anywhere; an etcd outage changes nothing
//! for running traffic, and the fleet reconciles when etcd returns; a container's name is
//! answered by its gateway on another host; a policy's label selector matches containers the
//! fleet published from another host.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use vswitch::control::api::{AttachRequest, PeerView, Reply, Request, StatusView};
use vswitch::control::policy::ExplainRequest;
use vswitch::fleet::health::{NodeState, PeerState};
use vswitch::lab::Container;
use vswitch::lab::etcd::Etcd;
use vswitch::wire::MacAddr;
use vswitch_e2e::{HostKind, Lab, fdb, reaches};

/// The membership lease's TTL in these tests.
const TTL: Duration = Duration::from_secs(3);

/// Writes host `index`'s config (no static peers; the fleet in etcd under `prefix`) and
/// starts its daemon, keeping its state in `state`.
fn start_node(lab: &mut Lab, index: usize, state: &str, prefix: &str) {
    start_node_with(lab, index, state, Some(prefix), "");
}

/// [`start_node`] with `extra` config appended; no store (the embedded one) without `prefix`.
fn start_node_with(lab: &mut Lab, index: usize, state: &str, prefix: Option<&str>, extra: &str) {
    let host = &lab.hosts[index];
    let mut config = format!(
        "[node]\nname = \"{}\"\naddress = \"{}\"\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\n\n",
        host.name,
        host.address,
        lab.dir().join(&host.name).join(state).display(),
        host.socket.display(),
    );
    let _ = write!(
        config,
        "[[networks]]\nname = \"default\"\nvni = 42\nsubnet = \"10.244.0.0/16\"\nnode_subnet = \"10.244.{}.0/24\"\n\n",
        index + 1
    );
    if let Some(prefix) = prefix {
        config.push_str(&Etcd::store_config(prefix));
    }
    config.push_str(extra);
    let _ = write!(
        config,
        "\n[fleet]\nttl_secs = {}\nprobe_interval_ms = 200\n",
        TTL.as_secs()
    );
    std::fs::write(&lab.hosts[index].config, config).expect("writing the config");
    lab.spawn_vswitchd(index).expect("starting vswitchd");
}

fn peers(lab: &Lab, host: usize) -> Vec<PeerView> {
    match lab.call(host, &Request::Peers).expect("vswitch peers") {
        Reply::Peers(peers) => peers,
        other => panic!("unexpected reply {other:?}"),
    }
}

fn peer_names(lab: &Lab, host: usize) -> Vec<String> {
    let mut names: Vec<String> = peers(lab, host).into_iter().map(|p| p.name).collect();
    names.sort();
    names
}

fn status(lab: &Lab, host: usize) -> StatusView {
    match lab.call(host, &Request::Status).expect("vswitch status") {
        Reply::Status(s) => *s,
        other => panic!("unexpected reply {other:?}"),
    }
}

/// Whether host `host` has `mac` in its MAC table, and whether as a static entry.
fn has_mac(lab: &Lab, host: usize, mac: MacAddr) -> Option<bool> {
    fdb(lab, host)
        .into_iter()
        .find(|e| e.mac == mac)
        .map(|e| e.is_static)
}

/// Polls `check` until it holds or `limit` passes; returns the time it took.
fn within(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A DNS query for `name` (type A) sent from `container` to `server` with python3: the
/// response code and the addresses answered, as `RCODE IP...`.
fn resolve(container: &Container, server: IpAddr, name: &str) -> String {
    const SCRIPT: &str = r#"
import socket, struct, sys
name, server = sys.argv[1], sys.argv[2]
labels = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".") if l)
query = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(query, (server, 53))
r, _ = s.recvfrom(4096)
assert r[:2] == b"\x42\x42"
count = struct.unpack(">H", r[6:8])[0]
i = 12
while r[i]:
    i += r[i] + 1
i += 5
ips = []
for _ in range(count):
    if r[i] & 0xC0 == 0xC0:
        i += 2
    else:
        while r[i]:
            i += r[i] + 1
        i += 1
    kind, _, _, length = struct.unpack(">HHIH", r[i : i + 10])
    i += 10
    if kind == 1:
        ips.append(socket.inet_ntoa(r[i : i + length]))
    i += length
print(" ".join([str(r[3] & 15)] + ips))
"#;
    let out = container
        .ns
        .command("python3")
        .args(["-c", SCRIPT, name, &server.to_string()])
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "the DNS query failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn log_of(lab: &Lab, host: usize) -> String {
    std::fs::read_to_string(&lab.hosts[host].log).unwrap_or_default()
}

#[test]
fn nodes_find_each_other_and_a_killed_node_leaves_no_trace() {
    let mut lab = Lab::new("fl").unwrap();
    for _ in 0..3 {
        lab.add_host(HostKind::Vswitch).unwrap();
    }
    let _etcd = Etcd::start(&lab).unwrap();
    for host in 0..3 {
        start_node(&mut lab, host, "state", "/fleet-a");
    }
    let c: Vec<usize> = (0..3)
        .map(|host| lab.add_container(host, "default", None).unwrap())
        .collect();
    let names: Vec<String> = lab.hosts.iter().map(|h| h.name.clone()).collect();
    let found = within(Duration::from_secs(10), || {
        (0..3).all(|h| peer_names(&lab, h).len() == 2)
    });
    assert!(
        found.is_some(),
        "nodes did not find each other: {:?}",
        (0..3).map(|h| peer_names(&lab, h)).collect::<Vec<_>>()
    );
    assert!(peers(&lab, 0).iter().all(|p| p.discovered));
    // Every container is pinned everywhere before it sent anything: no flooding needed.
    let pinned = within(Duration::from_secs(5), || {
        (0..3).all(|h| (0..3).all(|o| has_mac(&lab, h, lab.containers[c[o]].mac) == Some(true)))
    });
    assert!(pinned.is_some(), "endpoints were not pinned everywhere");
    for &from in &c {
        for &to in &c {
            if from != to {
                assert!(
                    reaches(&lab.containers[from].ns, lab.containers[to].ip),
                    "{from} -> {to}"
                );
            }
        }
    }
    let healthy = within(Duration::from_secs(5), || {
        (0..3).all(|h| {
            status(&lab, h)
                .health
                .is_some_and(|n| n.state == NodeState::Ready && n.peers_up == 2)
                && peers(&lab, h)
                    .iter()
                    .all(|p| p.health.is_some_and(|x| x.state == PeerState::Up))
        })
    });
    assert!(
        healthy.is_some(),
        "the fleet is not Ready with every peer up"
    );

    // Names: a container on host 0 asks its gateway for a container of host 1, by NAME and by
    // NAME.NETWORK; an unknown name is NXDOMAIN.
    let asker = &lab.containers[c[0]];
    let gateway = asker.attachment.as_ref().unwrap().gateway;
    assert_eq!(asker.attachment.as_ref().unwrap().dns, Some(gateway));
    let other = &lab.containers[c[1]];
    assert_eq!(
        resolve(asker, gateway, &other.name),
        format!("0 {}", other.ip)
    );
    assert_eq!(
        resolve(asker, gateway, &format!("{}.default.", other.name)),
        format!("0 {}", other.ip)
    );
    assert_eq!(resolve(asker, gateway, "no-such-container"), "3");
    let resolv_conf = std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", asker.name))
        .expect("attach wrote the container's resolv.conf");
    assert!(
        resolv_conf.contains(&format!("nameserver {gateway}")),
        "{resolv_conf}"
    );

    // SIGKILL: no goodbye; the lease expires and every node forgets the node and its MACs.
    let old_mac = lab.containers[c[2]].mac;
    lab.stop_vswitchd(2, true).unwrap();
    let removed = within(TTL + Duration::from_secs(2), || {
        (0..2).all(|h| {
            !peer_names(&lab, h).contains(&names[2]) && has_mac(&lab, h, old_mac).is_none()
        })
    });
    assert!(
        removed.is_some(),
        "a killed node was not removed within TTL + 2 s: {:?}",
        (0..2).map(|h| peer_names(&lab, h)).collect::<Vec<_>>()
    );
    let degraded = within(Duration::from_secs(3), || {
        status(&lab, 0)
            .health
            .is_some_and(|n| n.peers == 1 && n.state == NodeState::Ready)
    });
    assert!(
        degraded.is_some(),
        "the survivors judge only the peers left"
    );

    // Restarted as a new boot (its old containers gone) with a new container.
    start_node(&mut lab, 2, "state-after-restart", "/fleet-a");
    let new_mac = MacAddr([0x02, 0x42, 0, 0, 0x77, 0x01]);
    let fresh = lab
        .add_container_with(2, "default", None, Some(new_mac))
        .unwrap();
    let back = within(Duration::from_secs(10), || {
        (0..2).all(|h| {
            peer_names(&lab, h).contains(&names[2]) && has_mac(&lab, h, new_mac) == Some(true)
        })
    });
    assert!(back.is_some(), "the restarted node was not found again");
    assert!(reaches(&lab.containers[c[0]].ns, lab.containers[fresh].ip));
    assert!(reaches(&lab.containers[fresh].ns, lab.containers[c[1]].ip));
    for h in 0..3 {
        assert_eq!(
            has_mac(&lab, h, old_mac),
            None,
            "host {h} still holds the MAC of a container gone with the restart"
        );
    }
}

#[test]
fn an_etcd_outage_changes_nothing_for_running_traffic() {
    let mut lab = Lab::new("fo").unwrap();
    for _ in 0..2 {
        lab.add_host(HostKind::Vswitch).unwrap();
    }
    let mut etcd = Etcd::start(&lab).unwrap();
    for host in 0..2 {
        start_node(&mut lab, host, "state", "/fleet-b");
    }
    let a = lab.add_container(0, "default", None).unwrap();
    let b = lab.add_container(1, "default", None).unwrap();
    let found = within(Duration::from_secs(10), || {
        (0..2).all(|h| {
            peer_names(&lab, h).len() == 1
                && status(&lab, h)
                    .health
                    .is_some_and(|n| n.state == NodeState::Ready)
        })
    });
    assert!(found.is_some(), "the two nodes did not find each other");
    let (a_ns, b_ip) = (&lab.containers[a].ns, lab.containers[b].ip);
    assert!(reaches(a_ns, b_ip));

    etcd.stop();
    let cut_off = within(Duration::from_secs(10), || {
        (0..2).all(|h| {
            status(&lab, h)
                .health
                .is_some_and(|n| n.store_reachable == Some(false) && n.state == NodeState::Degraded)
        })
    });
    assert!(cut_off.is_some(), "the nodes did not notice etcd was gone");
    // Longer than the lease: nothing is flushed, traffic flows both ways.
    std::thread::sleep(TTL + Duration::from_secs(1));
    for h in 0..2 {
        assert_eq!(peer_names(&lab, h).len(), 1, "host {h} dropped its peer");
    }
    assert_eq!(has_mac(&lab, 0, lab.containers[b].mac), Some(true));
    assert!(reaches(a_ns, b_ip));
    assert!(reaches(&lab.containers[b].ns, lab.containers[a].ip));

    etcd.resume(&lab).unwrap();
    let back = within(Duration::from_secs(15), || {
        (0..2).all(|h| {
            status(&lab, h)
                .health
                .is_some_and(|n| n.store_reachable == Some(true) && n.state == NodeState::Ready)
        })
    });
    assert!(
        back.is_some(),
        "the nodes did not reconcile once etcd returned"
    );
    assert!(reaches(a_ns, b_ip));
    for h in 0..2 {
        assert_eq!(peer_names(&lab, h).len(), 1);
        assert!(
            !log_of(&lab, h).contains("node left"),
            "host {h} removed its peer over the outage:\n{}",
            log_of(&lab, h)
        );
    }
}

#[test]
fn static_peers_mix_with_the_fleet() {
    let mut lab = Lab::new("fs").unwrap();
    for _ in 0..3 {
        lab.add_host(HostKind::Vswitch).unwrap();
    }
    let _etcd = Etcd::start(&lab).unwrap();
    let static_peer = |lab: &Lab, host: usize| {
        let h = &lab.hosts[host];
        format!(
            "[[peers]]\nname = \"{}\"\naddress = \"{}\"\n\n",
            h.name, h.address
        )
    };
    // Host 2 is no member of the fleet: host 0 knows it from its config, and it knows host 0.
    let to_2 = static_peer(&lab, 2);
    let to_0 = static_peer(&lab, 0);
    start_node_with(&mut lab, 0, "state", Some("/fleet-c"), &to_2);
    start_node(&mut lab, 1, "state", "/fleet-c");
    start_node_with(&mut lab, 2, "state", None, &to_0);
    let c: Vec<usize> = (0..3)
        .map(|host| lab.add_container(host, "default", None).unwrap())
        .collect();
    let (h1, h2) = (lab.hosts[1].name.clone(), lab.hosts[2].name.clone());
    let mixed = within(Duration::from_secs(10), || {
        peer_names(&lab, 0) == vec![h1.clone(), h2.clone()]
    });
    assert!(mixed.is_some(), "host 0 peers: {:?}", peer_names(&lab, 0));
    for peer in peers(&lab, 0) {
        assert_eq!(peer.discovered, peer.name == h1, "{}", peer.name);
    }
    assert!(reaches(&lab.containers[c[0]].ns, lab.containers[c[1]].ip));
    assert!(reaches(&lab.containers[c[0]].ns, lab.containers[c[2]].ip));
    assert!(reaches(&lab.containers[c[2]].ns, lab.containers[c[0]].ip));
    // The static peer is probed and judged like any other.
    let up = within(Duration::from_secs(5), || {
        peers(&lab, 0)
            .iter()
            .all(|p| p.health.is_some_and(|h| h.state == PeerState::Up))
    });
    assert!(up.is_some(), "host 0 does not see both peers up");
}

#[test]
fn policies_match_the_fleets_remote_containers_by_label() {
    let mut lab = Lab::new("fp").unwrap();
    for _ in 0..2 {
        lab.add_host(HostKind::Vswitch).unwrap();
    }
    let _etcd = Etcd::start(&lab).unwrap();
    // Host 0's db takes traffic from containers labelled web only, wherever they run.
    let policy = "[[policies]]\nname = \"db\"\nselector = { app = \"db\" }\n\
                  [[policies.ingress]]\npeers = [{ selector = { app = \"web\" } }]\n\n";
    start_node_with(&mut lab, 0, "state", Some("/fleet-p"), policy);
    start_node(&mut lab, 1, "state", "/fleet-p");
    let labelled = |lab: &mut Lab, host: usize, app: &str| {
        lab.add_container_attached(
            host,
            AttachRequest {
                labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
                ..Default::default()
            },
        )
        .expect("attaching a labelled container")
    };
    let db = labelled(&mut lab, 0, "db");
    let web = labelled(&mut lab, 1, "web");
    let other = labelled(&mut lab, 1, "other");
    let (db, web, other) = (
        &lab.containers[db],
        &lab.containers[web],
        &lab.containers[other],
    );
    // Allowed once host 0 has the remote web's labels from the fleet.
    let allowed = within(Duration::from_secs(10), || reaches(&web.ns, db.ip));
    assert!(
        allowed.is_some(),
        "web on host 1 never reached db on host 0"
    );
    assert!(!reaches(&other.ns, db.ip), "other reached db");
    assert!(
        reaches(&web.ns, other.ip),
        "host 1's own containers are open"
    );
    let explained = match lab.call(
        0,
        &Request::PolicyExplain(ExplainRequest {
            src: web.ip.into(),
            dst: db.ip.into(),
            protocol: "tcp".into(),
            port: 5432,
        }),
    ) {
        Ok(reply) => format!("{reply:?}"),
        Err(e) => panic!("policy explain: {e}"),
    };
    assert!(
        explained.contains(&format!(
            "{}@{}",
            web.attachment.as_ref().unwrap().container_id,
            lab.hosts[1].name
        )),
        "{explained}"
    );
}
