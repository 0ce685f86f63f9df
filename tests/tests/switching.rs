//! Containers on two `vswitchd` hosts reach each other across hosts and on one host, by ICMP
//! and TCP; networks with different VNIs stay apart.

use std::net::Ipv4Addr;

use vswitch::lab::traffic;
use vswitch_e2e::{NetworkSpec, reaches, tcp_transfer, vswitch_lab};

#[test]
fn containers_reach_each_other_across_hosts_and_on_one_host() {
    let mut lab = vswitch_lab("sw", 2, &[NetworkSpec::DEFAULT], "");
    for host in [0, 0, 1, 1] {
        lab.add_container(host, "default", None).unwrap();
    }
    for (i, from) in lab.containers.iter().enumerate() {
        for (j, to) in lab.containers.iter().enumerate() {
            if i != j {
                assert!(reaches(&from.ns, to.ip), "c{i} -> c{j} ({})", to.ip);
            }
        }
    }
    let c = &lab.containers;
    // Across hosts, both directions, and on one host.
    tcp_transfer(&c[0].ns, &c[2].ns, c[2].ip, 4 << 20);
    tcp_transfer(&c[3].ns, &c[1].ns, c[1].ip, 4 << 20);
    tcp_transfer(&c[0].ns, &c[1].ns, c[1].ip, 4 << 20);
}

#[test]
fn the_gateway_answers_arp_and_ping() {
    let mut lab = vswitch_lab("gw", 1, &[NetworkSpec::DEFAULT], "");
    lab.add_container(0, "default", None).unwrap();
    let c = &lab.containers[0];
    let gateway = c.attachment.as_ref().unwrap().gateway;
    assert_eq!(gateway, std::net::IpAddr::V4(Ipv4Addr::new(10, 244, 1, 1)));
    let rtts = traffic::ping(
        &c.ns,
        Ipv4Addr::new(10, 244, 1, 1),
        3,
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(rtts.len(), 3);
}

#[test]
fn networks_with_different_vnis_are_isolated() {
    // Both networks use the same subnet, so only the VNI keeps them apart.
    let blue = NetworkSpec {
        name: "blue",
        vni: 100,
        subnet: Ipv4Addr::new(10, 244, 0, 0),
        sealed: false,
    };
    let red = NetworkSpec {
        name: "red",
        vni: 200,
        ..blue
    };
    let mut lab = vswitch_lab("iso", 2, &[blue, red], "");
    let blue0 = lab.add_container(0, "blue", None).unwrap();
    let blue1 = lab
        .add_container(1, "blue", Some(Ipv4Addr::new(10, 244, 2, 10)))
        .unwrap();
    let red1 = lab
        .add_container(1, "red", Some(Ipv4Addr::new(10, 244, 2, 20)))
        .unwrap();
    let red0 = lab
        .add_container(0, "red", Some(Ipv4Addr::new(10, 244, 1, 20)))
        .unwrap();
    let c = &lab.containers;
    assert!(reaches(&c[blue0].ns, c[blue1].ip), "blue to blue");
    assert!(reaches(&c[red0].ns, c[red1].ip), "red to red");
    assert!(
        !reaches(&c[blue0].ns, c[red1].ip),
        "blue reached red across hosts"
    );
    assert!(
        !reaches(&c[blue0].ns, c[red0].ip),
        "blue reached red on one host"
    );
    assert!(
        !reaches(&c[red1].ns, c[blue1].ip),
        "red reached blue on one host"
    );
}
