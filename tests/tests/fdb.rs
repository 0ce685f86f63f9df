//! The MAC table as operators see it through `vswitch fdb`: learned entries age out, and a MAC
//! that moves (container re-attached elsewhere with the same MAC) is followed local <-> remote
//! and peer <-> peer.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use vswitch::control::api::{DetachRequest, Reply, Request};
use vswitch::wire::MacAddr;
use vswitch_e2e::{NetworkSpec, fdb, reaches, vswitch_lab};

fn location_of(lab: &vswitch_e2e::Lab, host: usize, mac: MacAddr) -> Option<String> {
    fdb(lab, host)
        .into_iter()
        .find(|e| e.mac == mac)
        .map(|e| e.location)
}

#[test]
fn learned_entries_age_out() {
    let mut lab = vswitch_lab(
        "age",
        2,
        &[NetworkSpec::DEFAULT],
        "[switch]\nfdb_aging_secs = 2\n",
    );
    let a = lab.add_container(0, "default", None).unwrap();
    let b = lab.add_container(1, "default", None).unwrap();
    assert!(reaches(&lab.containers[a].ns, lab.containers[b].ip));
    let remote = lab.containers[b].mac;
    let entry = location_of(&lab, 0, remote).expect("learned");
    assert!(entry.starts_with("peer h1"), "{entry}");
    // Static entries (the local port) stay; the learned one goes within aging + sweep.
    let deadline = Instant::now() + Duration::from_secs(10);
    while location_of(&lab, 0, remote).is_some() {
        assert!(Instant::now() < deadline, "entry did not age out");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(location_of(&lab, 0, lab.containers[a].mac).is_some());
}

#[test]
fn a_moving_mac_is_followed_between_ports_and_peers() {
    let mut lab = vswitch_lab("mv", 3, &[NetworkSpec::DEFAULT], "");
    let observer = lab.add_container(0, "default", None).unwrap();
    let mac: MacAddr = "0a:aa:00:00:00:01".parse().unwrap();
    let moved_to = |lab: &mut vswitch_e2e::Lab, host: usize, ip: Ipv4Addr| {
        let c = lab
            .add_container_with(host, "default", Some(ip), Some(mac))
            .unwrap();
        assert!(
            reaches(&lab.containers[observer].ns, ip),
            "observer -> {ip} on h{host}"
        );
        c
    };
    let detach = |lab: &vswitch_e2e::Lab, c: usize| {
        let container = &lab.containers[c];
        let reply = lab
            .call(
                container.host,
                &Request::Detach(DetachRequest {
                    container_id: container.name.clone(),
                    ifname: None,
                }),
            )
            .unwrap();
        assert!(matches!(reply, Reply::Detached(true)));
    };

    let first = moved_to(&mut lab, 1, Ipv4Addr::new(10, 244, 2, 50));
    assert!(location_of(&lab, 0, mac).unwrap().starts_with("peer h1"));
    detach(&lab, first);
    // peer -> peer
    let second = moved_to(&mut lab, 2, Ipv4Addr::new(10, 244, 3, 50));
    assert!(location_of(&lab, 0, mac).unwrap().starts_with("peer h2"));
    detach(&lab, second);
    // remote -> local
    moved_to(&mut lab, 0, Ipv4Addr::new(10, 244, 1, 50));
    assert!(location_of(&lab, 0, mac).unwrap().starts_with("port "));
}
