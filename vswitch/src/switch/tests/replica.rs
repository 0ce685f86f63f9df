//! Replicas of one switch kept in step by their updates, as the datapath workers run them.

use std::time::{Duration, Instant};

use super::*;
use crate::fdb::FdbConfig;

/// `n` replicas of one host's switch: network 42, ports 0 and 1, peer 1 configured.
fn replicas(n: usize, config: SwitchConfig) -> (Vec<Switch>, Vec<PortId>) {
    let mut all = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..n {
        let (mut sw, p) = one_switch(config.clone(), 2);
        sw.add_peer(peer_addr(1), &[Vni::DEFAULT]);
        sw.set_replicated(true);
        ports = p;
        all.push(sw);
    }
    (all, ports)
}

/// Delivers every replica's updates to its siblings until none are left; returns how many.
fn sync(replicas: &mut [Switch], now: Instant) -> usize {
    let mut delivered = 0;
    loop {
        let mut moved = false;
        for from in 0..replicas.len() {
            let mut updates = Vec::new();
            replicas[from].take_updates(&mut updates);
            moved |= !updates.is_empty();
            for (to, sibling) in replicas.iter_mut().enumerate() {
                if to != from {
                    for update in &updates {
                        sibling.apply(now, update);
                        delivered += 1;
                    }
                }
            }
        }
        if !moved {
            return delivered;
        }
    }
}

/// Two replicas aging after 30 s, replica 0 having learned `mac(1, 0)` from peer 1 and told
/// replica 1: the replicas, the aging time, the frame it came in and when.
fn remote_mac_learned_by_replica_0() -> (Vec<Switch>, Duration, Vec<u8>, Instant) {
    let aging = Duration::from_secs(30);
    let config = SwitchConfig {
        fdb: FdbConfig {
            aging,
            ..FdbConfig::default()
        },
        ..SwitchConfig::default()
    };
    let (mut r, _) = replicas(2, config);
    let t0 = Instant::now();
    let frame = udp(mac(1, 0), mac(0, 0), ip(1, 10), ip(0, 10), 8);
    from_peer(&mut r[0], t0, peer_addr(1), &frame, &mut Output::new());
    sync(&mut r, t0);
    (r, aging, frame, t0)
}

/// Every replica's timer at `now`, then their updates delivered.
fn tick_all(r: &mut [Switch], now: Instant) {
    for sw in r.iter_mut() {
        sw.handle_timeout(now);
    }
    sync(r, now);
}

fn from_peer(sw: &mut Switch, now: Instant, peer: SocketAddr, frame: &[u8], out: &mut Output) {
    sw.handle_datagram(now, peer, &mut datagram(Vni::DEFAULT, frame), out);
}

#[test]
fn what_one_replica_learns_the_others_forward_by() {
    let (mut r, p) = replicas(2, SwitchConfig::default());
    let t0 = Instant::now();
    let mut out = Output::new();
    let remote = mac(1, 0);
    // Replica 0 sees the remote MAC arrive from peer 1.
    from_peer(
        &mut r[0],
        t0,
        peer_addr(1),
        &udp(remote, mac(0, 0), ip(1, 10), ip(0, 10), 8),
        &mut out,
    );
    assert_eq!(out.ports(), &[p[0]]);
    assert!(sync(&mut r, t0) > 0);
    // Replica 1 sends to it by unicast to that peer only, without flooding.
    let frame = udp(mac(0, 1), remote, ip(0, 11), ip(1, 10), 8);
    r[1].handle_frame(t0, p[1], &frame, &mut out);
    assert_eq!(out.transmits().len(), 1);
    assert!(out.ports().is_empty());
    assert_eq!(r[1].counters().flooded, 0);
    let entry = r[1].fdb_entries(t0).find(|e| e.mac == remote).unwrap();
    assert!(entry.mirrored);
    // Nothing more to say: updates do not echo.
    assert_eq!(sync(&mut r, t0), 0);
}

#[test]
fn mirrored_entries_go_when_their_replica_forgets_them() {
    let (mut r, aging, frame, t0) = remote_mac_learned_by_replica_0();
    let mut out = Output::new();
    let remote = mac(1, 0);
    // Replica 0 keeps seeing it: replica 1's copy does not age although it saw nothing.
    let t1 = t0 + aging - Duration::from_secs(1);
    from_peer(&mut r[0], t1, peer_addr(1), &frame, &mut out);
    let t2 = t0 + aging * 3 / 2;
    tick_all(&mut r, t2);
    assert!(r[1].fdb().lookup(Vni::DEFAULT, remote).is_some());
    // Replica 0 forgets it: so does replica 1.
    let t3 = t1 + aging;
    tick_all(&mut r, t3);
    assert!(r[0].fdb().lookup(Vni::DEFAULT, remote).is_none());
    assert!(r[1].fdb().lookup(Vni::DEFAULT, remote).is_none());
}

#[test]
fn a_replica_that_still_sees_a_mac_announces_it_again() {
    let (mut r, aging, frame, t0) = remote_mac_learned_by_replica_0();
    let mut out = Output::new();
    let remote = mac(1, 0);
    // The MAC's traffic moves to replica 1 (another flow); replica 0's entry ages out.
    let t1 = t0 + aging / 2;
    from_peer(&mut r[1], t1, peer_addr(1), &frame, &mut out);
    let t2 = t0 + aging;
    tick_all(&mut r, t2);
    // Replica 1 answered replica 0's forgetting with its own entry.
    assert!(r[1].fdb().lookup(Vni::DEFAULT, remote).is_some());
    let entry = r[0].fdb_entries(t2).find(|e| e.mac == remote).unwrap();
    assert!(entry.mirrored);
}

#[test]
fn local_moves_and_neighbours_reach_every_replica() {
    let (mut r, p) = replicas(3, SwitchConfig::default());
    let t0 = Instant::now();
    let mut out = Output::new();
    // An ARP request from the remote host teaches replica 2 its address.
    let remote = mac(1, 0);
    let req = arp_request(remote, ip(1, 10), ip(0, 10));
    from_peer(&mut r[2], t0, peer_addr(1), &req, &mut out);
    sync(&mut r, t0);
    // Replica 0 answers ARP for it locally.
    let ask = arp_request(mac(0, 0), ip(0, 10), ip(1, 10));
    r[0].handle_frame(t0, p[0], &ask, &mut out);
    let (to, _) = out.reply().unwrap();
    assert_eq!(to, p[0]);

    // The remote MAC moves behind local port 1 (a VM migrated here): replica 1 sees it.
    let moved = udp(remote, mac(0, 0), ip(1, 10), ip(0, 10), 8);
    let (mut r, p) = {
        let (mut r2, p2) = replicas(
            2,
            SwitchConfig {
                ..SwitchConfig::default()
            },
        );
        for sw in r2.iter_mut() {
            sw.remove_port(p2[1]);
            sw.add_port(PortConfig {
                port_security: false,
                ..port_cfg(Vni::DEFAULT, mac(0, 1), &[ip(0, 11)])
            })
            .unwrap();
        }
        (r2, p2)
    };
    from_peer(&mut r[0], t0, peer_addr(1), &moved, &mut out);
    sync(&mut r, t0);
    r[1].handle_frame(t0, p[1], &moved, &mut out);
    assert_eq!(r[1].counters().fdb_moves, 1);
    sync(&mut r, t0);
    assert_eq!(
        r[0].fdb().lookup(Vni::DEFAULT, remote),
        Some(Location::Port(p[1]))
    );
}

#[test]
fn peers_that_appear_on_their_own_are_shared_and_aged_by_their_replica() {
    let aging = Duration::from_secs(30);
    let config = SwitchConfig {
        accept_unknown_peers: true,
        fdb: FdbConfig {
            aging,
            ..FdbConfig::default()
        },
        ..SwitchConfig::default()
    };
    let (mut r, p) = replicas(2, config);
    let t0 = Instant::now();
    let mut out = Output::new();
    let stranger = peer_addr(9);
    let frame = udp(mac(9, 0), mac(0, 0), ip(9, 10), ip(0, 10), 8);
    from_peer(&mut r[0], t0, stranger, &frame, &mut out);
    assert_eq!(out.ports(), &[p[0]]);
    sync(&mut r, t0);
    // Replica 1 floods to it too, and unicasts to the MAC behind it.
    let bcast = udp(
        mac(0, 1),
        MacAddr::BROADCAST,
        ip(0, 11),
        Ipv4Addr::BROADCAST,
        8,
    );
    r[1].handle_frame(t0, p[1], &bcast, &mut out);
    assert_eq!(out.transmits().len(), 2);
    let unicast = udp(mac(0, 1), mac(9, 0), ip(0, 11), ip(9, 10), 8);
    r[1].handle_frame(t0, p[1], &unicast, &mut out);
    assert_eq!(out.transmits().len(), 1);
    assert_eq!(out.transmits()[0].addr.ip(), stranger.ip());
    // Quiet for the aging time: replica 0 forgets it, and replica 1 with it.
    let t1 = t0 + aging;
    tick_all(&mut r, t1);
    for sw in &r {
        assert!(sw.peer_id(stranger).is_none());
    }
}

#[test]
fn updates_naming_a_removed_port_are_ignored() {
    let (mut r, p) = replicas(2, SwitchConfig::default());
    let t0 = Instant::now();
    let update = Update::Learned {
        vni: Vni::DEFAULT,
        mac: mac(7, 7),
        site: Site::Port(p[1]),
    };
    r[1].remove_port(p[1]);
    r[1].apply(t0, &update);
    assert!(r[1].fdb().lookup(Vni::DEFAULT, mac(7, 7)).is_none());
    let update = Update::Learned {
        vni: Vni::DEFAULT,
        mac: mac(7, 7),
        site: Site::Peer(peer_addr(8)),
    };
    r[1].apply(t0, &update);
    assert!(r[1].fdb().lookup(Vni::DEFAULT, mac(7, 7)).is_none());
}

#[test]
fn a_lone_switch_publishes_nothing() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    sw.add_peer(peer_addr(1), &[Vni::DEFAULT]);
    let t0 = Instant::now();
    let mut out = Output::new();
    from_peer(
        &mut sw,
        t0,
        peer_addr(1),
        &udp(mac(1, 0), mac(0, 0), ip(1, 10), ip(0, 10), 8),
        &mut out,
    );
    assert_eq!(out.ports(), &[p[0]]);
    assert!(!sw.has_updates());
}
