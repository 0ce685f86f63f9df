//! A fleet sharing its address state through a real etcd: two `vswitchd` hosts with no fixed
//! node subnet claim disjoint ones from etcd (running in the lab's underlay namespace, reachable
//! only from the lab's hosts), lease addresses from them, and their containers reach each other.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use vswitch::control::api::{Reply, Request};
use vswitch_e2e::{HostKind, Lab, NetworkSpec, reaches};

const ETCD: &str = "/usr/bin/etcd";
const ETCD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_etcd(lab: &Lab) -> Etcd {
    assert!(
        std::path::Path::new(ETCD).exists(),
        "{ETCD} is missing: scripts/install-deps installs etcd-server"
    );
    let nl = netns::Netlink::in_namespace(lab.underlay()).expect("netlink in the underlay");
    nl.add_address("br0", IpAddr::V4(ETCD_IP), 24)
        .expect("addressing the underlay bridge");
    let client = format!("http://{ETCD_IP}:2379");
    let peer = format!("http://{ETCD_IP}:2380");
    let child = lab
        .underlay()
        .command(ETCD)
        .arg("--data-dir")
        .arg(lab.dir().join("etcd"))
        .args(["--name", "lab", "--listen-client-urls", &client])
        .args([
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
        ])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("lab={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting etcd");
    let etcd = Etcd(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let host = &lab.hosts[0].ns;
    while host
        .run(|| {
            TcpStream::connect_timeout(
                &SocketAddr::from((ETCD_IP, 2379)),
                Duration::from_millis(200),
            )
        })
        .expect("entering a host namespace")
        .is_err()
    {
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    etcd
}

#[test]
fn a_fleet_shares_its_addresses_through_etcd() {
    let mut lab = Lab::new("ed").unwrap();
    lab.add_host(HostKind::Vswitch).unwrap();
    lab.add_host(HostKind::Vswitch).unwrap();
    let _etcd = start_etcd(&lab);
    lab.claim_node_subnets = true;
    let store = format!("[store]\nkind = \"etcd\"\nendpoints = [\"http://{ETCD_IP}:2379\"]\n");
    for host in 0..2 {
        lab.start_vswitchd(host, &[NetworkSpec::DEFAULT], &store)
            .unwrap();
    }
    let subnets: Vec<String> = (0..2)
        .map(|host| match lab.call(host, &Request::Status).unwrap() {
            Reply::Status(s) => s.networks[0].node_subnet.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_ne!(subnets[0], subnets[1], "both hosts claimed {}", subnets[0]);
    let a = lab.add_container(0, "default", None).unwrap();
    let b = lab.add_container(1, "default", None).unwrap();
    let c = &lab.containers;
    assert_ne!(c[a].ip, c[b].ip);
    assert!(reaches(&c[a].ns, c[b].ip));
    assert!(reaches(&c[b].ns, c[a].ip));
}
