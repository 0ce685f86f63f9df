//! A multi-host simulator: several switches in a full mesh over a fake underlay, on a virtual
//! clock, and the tests that need more than one host.

use core::net::{Ipv4Addr, SocketAddr};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use etherparse::ArpOperation as EpArpOp;

use super::*;
use crate::fdb::FdbConfig;
use crate::tunnel::{decap, encap_header};

struct Host {
    addr: SocketAddr,
    sw: Switch,
    delivered: Vec<(PortId, Vec<u8>)>,
}

/// Several switches in a full mesh over a fake underlay, on a virtual clock.
struct Sim {
    base: Instant,
    now: Instant,
    hosts: Vec<Host>,
    out: Output,
    drops: Vec<(usize, DropReason)>,
}

impl Sim {
    /// `n` hosts, each with the given networks and every other host as a peer of all of them.
    fn new(n: u8, config: SwitchConfig, vnis: &[Vni]) -> Self {
        let mut hosts: Vec<Host> = (0..n)
            .map(|h| {
                let mut sw = Switch::new(config.clone());
                for &v in vnis {
                    sw.add_network(NetworkConfig {
                        gateway: Some(gateway(h)),
                        ..NetworkConfig::new(v)
                    })
                    .unwrap();
                }
                Host {
                    addr: peer_addr(h + 1),
                    sw,
                    delivered: Vec::new(),
                }
            })
            .collect();
        let addrs: Vec<SocketAddr> = hosts.iter().map(|h| h.addr).collect();
        for host in &mut hosts {
            for &addr in &addrs {
                if addr != host.addr {
                    host.sw.add_peer(addr, vnis);
                }
            }
        }
        let base = Instant::now();
        Sim {
            base,
            now: base,
            hosts,
            out: Output::new(),
            drops: Vec::new(),
        }
    }

    fn port(&mut self, host: usize, v: Vni, n: u8) -> PortId {
        self.hosts[host]
            .sw
            .add_port(port_cfg(v, mac(host as u8, n), &[ip(host as u8, 10 + n)]))
            .unwrap()
    }

    fn host_index(&self, addr: SocketAddr) -> Option<usize> {
        self.hosts.iter().position(|h| h.addr == addr)
    }

    /// Injects a frame on a port and delivers everything it causes, across hosts.
    fn send(&mut self, host: usize, port: PortId, frame: &[u8]) {
        let now = self.now;
        let h = &mut self.hosts[host];
        h.sw.handle_frame(now, port, frame, &mut self.out);
        if let Some(reason) = self.out.dropped() {
            self.drops.push((host, reason));
        }
        let fwd = self.out.frame(frame).to_vec();
        for &p in self.out.ports() {
            h.delivered.push((p, fwd.clone()));
        }
        if let Some((p, reply)) = self.out.reply() {
            h.delivered.push((p, reply.to_vec()));
        }
        let mut queue = VecDeque::new();
        let from = h.addr;
        for t in self.out.transmits() {
            let mut buf = Vec::new();
            self.out.encap_into(frame, &mut buf);
            queue.push_back((t.addr, buf));
        }
        for (to, dgram) in queue {
            self.receive(from, to, &dgram);
        }
    }

    /// Delivers one datagram to the host at `to`, as if from `from`.
    fn receive(&mut self, from: SocketAddr, to: SocketAddr, dgram: &[u8]) {
        let Some(dst) = self.host_index(to) else {
            return;
        };
        let now = self.now;
        let h = &mut self.hosts[dst];
        h.sw.handle_datagram(now, from, &mut dgram.to_vec(), &mut self.out);
        if let Some(reason) = self.out.dropped() {
            self.drops.push((dst, reason));
        }
        assert!(
            self.out.transmits().is_empty(),
            "split horizon: a datagram is never relayed to peers"
        );
        assert!(self.out.reply().is_none());
        let inner = self.out.frame(dgram).to_vec();
        for &p in self.out.ports() {
            h.delivered.push((p, inner.clone()));
        }
    }

    /// What each host's ports received since the last call.
    fn take(&mut self, host: usize) -> Vec<(PortId, Vec<u8>)> {
        std::mem::take(&mut self.hosts[host].delivered)
    }

    fn take_drops(&mut self) -> Vec<(usize, DropReason)> {
        std::mem::take(&mut self.drops)
    }

    /// Moves the clock forward, firing every timeout on the way, as a runtime would.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            let next = self
                .hosts
                .iter()
                .filter_map(|h| h.sw.poll_timeout())
                .filter(|&t| t <= end)
                .min();
            let Some(t) = next else { break };
            self.now = self.now.max(t);
            let now = self.now;
            for h in &mut self.hosts {
                if h.sw.poll_timeout().is_some_and(|due| due <= now) {
                    h.sw.handle_timeout(now);
                }
            }
        }
        self.now = end;
    }

    fn elapsed(&self) -> Duration {
        self.now - self.base
    }
}

fn ports_of(delivered: &[(PortId, Vec<u8>)]) -> Vec<PortId> {
    let mut v: Vec<PortId> = delivered.iter().map(|(p, _)| *p).collect();
    v.sort_unstable();
    v
}

#[test]
fn sim_learning_flooding_and_remote_unicast() {
    let mut sim = Sim::new(3, SwitchConfig::default(), &[Vni::DEFAULT]);
    let a = sim.port(0, Vni::DEFAULT, 0);
    let a2 = sim.port(0, Vni::DEFAULT, 1);
    let b = sim.port(1, Vni::DEFAULT, 0);
    let c = sim.port(2, Vni::DEFAULT, 0);

    // a broadcasts: a2 locally, b and c remotely (head-end replication, one copy per peer).
    let bcast = udp(
        mac(0, 0),
        MacAddr::BROADCAST,
        ip(0, 10),
        Ipv4Addr::BROADCAST,
        64,
    );
    sim.send(0, a, &bcast);
    assert_eq!(ports_of(&sim.take(0)), vec![a2]);
    assert_eq!(sim.take(1), vec![(b, bcast.clone())]);
    assert_eq!(sim.take(2), vec![(c, bcast.clone())]);
    assert_eq!(sim.hosts[0].sw.counters().peer_tx_datagrams, 2);

    // b and c learned a at host 0; b answers by unicast: only host 0 gets it.
    let flooded = sim.hosts[1].sw.counters().flooded;
    let reply = udp(mac(1, 0), mac(0, 0), ip(1, 10), ip(0, 10), 64);
    sim.send(1, b, &reply);
    assert_eq!(sim.take(0), vec![(a, reply.clone())]);
    assert!(sim.take(2).is_empty());
    assert_eq!(sim.hosts[1].sw.counters().peer_tx_datagrams, 1);
    assert_eq!(sim.hosts[1].sw.counters().flooded, flooded);

    // Host 0 learned b: unicast back goes to host 1 only, with the right header and hash.
    let again = udp(mac(0, 0), mac(1, 0), ip(0, 10), ip(1, 10), 64);
    let now = sim.now;
    sim.hosts[0].sw.handle_frame(now, a, &again, &mut sim.out);
    assert_eq!(sim.out.transmits().len(), 1);
    assert_eq!(sim.out.transmits()[0].addr, sim.hosts[1].addr);
    assert_eq!(sim.out.vxlan_header(), &encap_header(Vni::DEFAULT));
    assert_eq!(sim.out.flow_hash(), wire::flow_hash(&again));
    assert!((49152..=65535).contains(&sim.out.source_port()));
    let mut buf = Vec::new();
    sim.out.encap_into(&again, &mut buf);
    assert_eq!(decap(&buf).unwrap(), (Vni::DEFAULT, &again[..]));
    assert!(sim.take_drops().is_empty());
}

#[test]
fn sim_aging_at_300s_and_configurable() {
    for (config, aging) in [
        (SwitchConfig::default(), Duration::from_secs(300)),
        (
            SwitchConfig {
                fdb: FdbConfig {
                    aging: Duration::from_secs(20),
                    ..FdbConfig::default()
                },
                ..SwitchConfig::default()
            },
            Duration::from_secs(20),
        ),
    ] {
        let mut sim = Sim::new(2, config, &[Vni::DEFAULT]);
        let a = sim.port(0, Vni::DEFAULT, 0);
        let b = sim.port(1, Vni::DEFAULT, 0);
        sim.send(
            1,
            b,
            &udp(
                mac(1, 0),
                MacAddr::BROADCAST,
                ip(1, 10),
                Ipv4Addr::BROADCAST,
                1,
            ),
        );
        sim.take(0);
        let host0 = &sim.hosts[0].sw;
        assert_eq!(
            host0.fdb().lookup(Vni::DEFAULT, mac(1, 0)),
            Some(Location::Peer(PeerId(0)))
        );
        let ages: Vec<_> = host0
            .fdb_entries(sim.now)
            .filter(|e| !e.is_static)
            .collect();
        assert_eq!(ages.len(), 1, "{ages:?}");
        assert_eq!(ages[0].age, Some(Duration::ZERO));

        sim.advance(aging - Duration::from_secs(1));
        assert!(
            sim.hosts[0]
                .sw
                .fdb()
                .lookup(Vni::DEFAULT, mac(1, 0))
                .is_some()
        );
        sim.advance(Duration::from_secs(2));
        assert_eq!(sim.hosts[0].sw.fdb().lookup(Vni::DEFAULT, mac(1, 0)), None);
        assert!(sim.elapsed() >= aging);
        // Unknown again: a frame to b floods (and still arrives).
        let flooded = sim.hosts[0].sw.counters().flooded;
        sim.send(0, a, &udp(mac(0, 0), mac(1, 0), ip(0, 10), ip(1, 10), 1));
        assert_eq!(sim.hosts[0].sw.counters().flooded, flooded + 1);
        assert_eq!(ports_of(&sim.take(1)), vec![b]);
    }
}

#[test]
fn sim_moves_local_remote_and_between_peers() {
    let mut sim = Sim::new(3, SwitchConfig::default(), &[Vni::DEFAULT]);
    let a = sim.port(0, Vni::DEFAULT, 0);
    let open = |sim: &mut Sim, host: usize| {
        sim.hosts[host]
            .sw
            .add_port(PortConfig {
                port_security: false,
                ..port_cfg(Vni::DEFAULT, mac(host as u8, 100), &[])
            })
            .unwrap()
    };
    let o1 = open(&mut sim, 1);
    let o2 = open(&mut sim, 2);
    let o0 = open(&mut sim, 0);
    let vm = mac(7, 7);
    let from_vm = udp(vm, MacAddr::BROADCAST, ip(7, 7), Ipv4Addr::BROADCAST, 1);

    // The VM appears behind host 1, then migrates to host 2 (peer -> peer at host 0).
    sim.send(1, o1, &from_vm);
    assert_eq!(
        sim.hosts[0].sw.fdb().lookup(Vni::DEFAULT, vm),
        Some(Location::Peer(PeerId(0)))
    );
    sim.send(2, o2, &from_vm);
    assert_eq!(
        sim.hosts[0].sw.fdb().lookup(Vni::DEFAULT, vm),
        Some(Location::Peer(PeerId(1)))
    );
    assert_eq!(sim.hosts[0].sw.counters().fdb_moves, 1);
    // Then to host 0 itself (remote -> local).
    sim.send(0, o0, &from_vm);
    assert_eq!(
        sim.hosts[0].sw.fdb().lookup(Vni::DEFAULT, vm),
        Some(Location::Port(o0))
    );
    assert_eq!(sim.hosts[0].sw.counters().fdb_moves, 2);
    // And back to host 1 (local -> remote).
    sim.send(1, o1, &from_vm);
    assert_eq!(
        sim.hosts[0].sw.fdb().lookup(Vni::DEFAULT, vm),
        Some(Location::Peer(PeerId(0)))
    );
    assert_eq!(sim.hosts[0].sw.counters().fdb_moves, 3);
    for h in 0..3 {
        sim.take(h);
    }
    // Unicast from a now reaches host 1 only.
    sim.send(0, a, &udp(mac(0, 0), vm, ip(0, 10), ip(7, 7), 1));
    assert_eq!(ports_of(&sim.take(1)), vec![o1]);
    assert!(sim.take(2).is_empty());
}

#[test]
fn sim_static_entries_are_not_overwritten() {
    let mut sim = Sim::new(2, SwitchConfig::default(), &[Vni::DEFAULT]);
    let a = sim.port(0, Vni::DEFAULT, 0);
    let rogue = sim.hosts[1]
        .sw
        .add_port(PortConfig {
            port_security: false,
            ..port_cfg(Vni::DEFAULT, mac(1, 100), &[])
        })
        .unwrap();
    // Host 1 sends with host 0's port MAC as source.
    sim.send(
        1,
        rogue,
        &udp(
            mac(0, 0),
            MacAddr::BROADCAST,
            ip(0, 10),
            Ipv4Addr::BROADCAST,
            1,
        ),
    );
    assert_eq!(
        sim.hosts[0].sw.fdb().lookup(Vni::DEFAULT, mac(0, 0)),
        Some(Location::Port(a))
    );
    sim.advance(Duration::from_secs(1000));
    assert_eq!(
        sim.hosts[0].sw.fdb().lookup(Vni::DEFAULT, mac(0, 0)),
        Some(Location::Port(a))
    );
}

#[test]
fn sim_arp_suppression_with_snooped_remote_neighbours() {
    let mut sim = Sim::new(2, SwitchConfig::default(), &[Vni::DEFAULT]);
    let a = sim.port(0, Vni::DEFAULT, 0);
    let b = sim.port(1, Vni::DEFAULT, 0);
    // a asks for b: host 0 does not know b's IP yet, so the request floods to host 1.
    let who_has_b = arp_request(mac(0, 0), ip(0, 10), ip(1, 10));
    sim.send(0, a, &who_has_b);
    assert_eq!(sim.take(1), vec![(b, who_has_b.clone())]);
    // b replies; host 0 snoops the reply on the way in.
    let is_at = arp(
        mac(1, 0),
        mac(0, 0),
        EpArpOp::REPLY,
        (mac(1, 0), ip(1, 10)),
        (mac(0, 0), ip(0, 10)),
    );
    sim.send(1, b, &is_at);
    assert_eq!(sim.take(0), vec![(a, is_at)]);
    let snooped: Vec<_> = sim.hosts[0]
        .sw
        .neighbours(sim.now)
        .filter(|n| !n.is_static)
        .collect();
    assert_eq!(snooped.len(), 1, "{snooped:?}");
    assert_eq!((snooped[0].ip, snooped[0].mac), (ip(1, 10), mac(1, 0)));
    // The next request is answered by host 0 itself; nothing crosses the underlay.
    let before = sim.hosts[0].sw.counters().peer_tx_datagrams;
    sim.send(0, a, &who_has_b);
    let got = sim.take(0);
    assert_eq!(got.len(), 1);
    let a_reply = ArpPacket::new_checked(&got[0].1[14..]).unwrap();
    assert_eq!(
        (a_reply.sender_mac(), a_reply.sender_ip()),
        (mac(1, 0), ip(1, 10))
    );
    assert_eq!(sim.hosts[0].sw.counters().peer_tx_datagrams, before);
    assert!(sim.take(1).is_empty());
    // Learned neighbours age out like the FDB.
    sim.advance(Duration::from_secs(301));
    assert!(sim.hosts[0].sw.neighbours(sim.now).all(|n| n.is_static));
    assert_eq!(sim.hosts[0].sw.poll_timeout(), None);
}

#[test]
fn sim_gateway_ping_from_each_host() {
    let mut sim = Sim::new(2, SwitchConfig::default(), &[Vni::DEFAULT]);
    for h in 0..2 {
        let p = sim.port(h, Vni::DEFAULT, 0);
        let gw = gateway(h as u8);
        sim.send(
            h,
            p,
            &echo_request(mac(h as u8, 0), gw.mac, ip(h as u8, 10), gw.ip, 1),
        );
        let got = sim.take(h);
        assert_eq!(got.len(), 1);
        let e = EthernetFrame::new_checked(&got[0].1[..]).unwrap();
        let i = Ipv4Packet::new_checked(e.payload()).unwrap();
        assert_eq!(i.src_addr(), gw.ip);
        // Nothing went to the other host.
        assert!(sim.take(1 - h).is_empty());
    }
}

#[test]
fn sim_vni_isolation() {
    let (v1, v2) = (vni(100), vni(200));
    let mut sim = Sim::new(2, SwitchConfig::default(), &[v1, v2]);
    let a1 = sim.hosts[0]
        .sw
        .add_port(port_cfg(v1, mac(0, 1), &[ip(0, 10)]))
        .unwrap();
    let a2 = sim.hosts[0]
        .sw
        .add_port(port_cfg(v2, mac(0, 2), &[ip(0, 10)]))
        .unwrap();
    let b1 = sim.hosts[1]
        .sw
        .add_port(port_cfg(v1, mac(1, 1), &[ip(1, 10)]))
        .unwrap();
    let b2 = sim.hosts[1]
        .sw
        .add_port(port_cfg(v2, mac(1, 2), &[ip(1, 10)]))
        .unwrap();

    let bcast = udp(
        mac(0, 1),
        MacAddr::BROADCAST,
        ip(0, 10),
        Ipv4Addr::BROADCAST,
        1,
    );
    sim.send(0, a1, &bcast);
    assert!(sim.take(0).is_empty());
    assert_eq!(sim.take(1), vec![(b1, bcast)]);
    // The same IP on both VNIs: each network learns and answers its own.
    sim.send(0, a1, &arp_request(mac(0, 1), ip(0, 10), ip(0, 10)));
    sim.send(0, a2, &arp_request(mac(0, 2), ip(0, 10), ip(0, 10)));
    assert_eq!(ports_of(&sim.take(1)), vec![b1, b2]);
    for (port, own, expect) in [(b1, mac(1, 1), mac(0, 1)), (b2, mac(1, 2), mac(0, 2))] {
        sim.send(1, port, &arp_request(own, ip(1, 10), ip(0, 10)));
        let got = sim.take(1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, port);
        let r = ArpPacket::new_checked(&got[0].1[14..]).unwrap();
        assert_eq!(r.sender_mac(), expect);
    }
    assert!(sim.take(0).is_empty());
    // A frame on VNI 100 to a MAC that lives on VNI 200 is unknown there: flooded within 100.
    sim.send(1, b1, &udp(mac(1, 1), mac(0, 2), ip(1, 10), ip(0, 10), 1));
    assert_eq!(
        ports_of(&sim.take(0)),
        vec![a1],
        "nothing reaches a2 across VNIs"
    );
    // A datagram with VNI 200 carrying a VNI 100 MAC is delivered on 200 only.
    let d = datagram(v2, &udp(mac(1, 2), mac(0, 1), ip(1, 10), ip(0, 10), 1));
    let (from, to) = (sim.hosts[1].addr, sim.hosts[0].addr);
    sim.receive(from, to, &d);
    assert_eq!(ports_of(&sim.take(0)), vec![a2]);
}

#[test]
fn sim_peer_and_network_changes_at_run_time() {
    let mut sim = Sim::new(3, SwitchConfig::default(), &[Vni::DEFAULT]);
    let a = sim.port(0, Vni::DEFAULT, 0);
    let b = sim.port(1, Vni::DEFAULT, 0);
    let c = sim.port(2, Vni::DEFAULT, 0);
    sim.send(
        1,
        b,
        &udp(
            mac(1, 0),
            MacAddr::BROADCAST,
            ip(1, 10),
            Ipv4Addr::BROADCAST,
            1,
        ),
    );
    sim.send(
        2,
        c,
        &udp(
            mac(2, 0),
            MacAddr::BROADCAST,
            ip(2, 10),
            Ipv4Addr::BROADCAST,
            1,
        ),
    );
    for h in 0..3 {
        sim.take(h);
    }
    let addr2 = sim.hosts[2].addr;
    let peer2 = sim.hosts[0].sw.peer_id(addr2).unwrap();
    assert!(sim.hosts[0].sw.remove_peer(peer2));
    assert!(!sim.hosts[0].sw.remove_peer(peer2));
    // The removed peer's entries are gone; the others keep flowing.
    assert_eq!(sim.hosts[0].sw.fdb().lookup(Vni::DEFAULT, mac(2, 0)), None);
    assert!(
        sim.hosts[0]
            .sw
            .fdb()
            .lookup(Vni::DEFAULT, mac(1, 0))
            .is_some()
    );
    sim.send(0, a, &udp(mac(0, 0), mac(1, 0), ip(0, 10), ip(1, 10), 1));
    assert_eq!(ports_of(&sim.take(1)), vec![b]);
    // Floods skip it; its datagrams are refused.
    sim.send(
        0,
        a,
        &udp(
            mac(0, 0),
            MacAddr::BROADCAST,
            ip(0, 10),
            Ipv4Addr::BROADCAST,
            1,
        ),
    );
    assert_eq!(ports_of(&sim.take(1)), vec![b]);
    assert!(sim.take(2).is_empty());
    sim.send(2, c, &udp(mac(2, 0), mac(0, 0), ip(2, 10), ip(0, 10), 1));
    assert!(sim.take(0).is_empty());
    assert!(sim.take_drops().contains(&(0, DropReason::UnknownPeer)));
    // Re-adding it restores traffic.
    sim.hosts[0].sw.add_peer(addr2, &[Vni::DEFAULT]);
    sim.send(2, c, &udp(mac(2, 0), mac(0, 0), ip(2, 10), ip(0, 10), 1));
    assert_eq!(ports_of(&sim.take(0)), vec![a]);
    // add_peer is idempotent by address.
    let again = sim.hosts[0].sw.add_peer(addr2, &[Vni::DEFAULT]);
    assert_eq!(sim.hosts[0].sw.peers().count(), 2);
    assert_eq!(sim.hosts[0].sw.peer(again).unwrap().vnis, &[Vni::DEFAULT]);

    // A network added later picks up existing peer membership; removal takes its ports along.
    let v = vni(300);
    for h in 0..3 {
        let addrs: Vec<_> = sim.hosts.iter().map(|x| x.addr).collect();
        let sw = &mut sim.hosts[h].sw;
        sw.add_network(NetworkConfig::new(v)).unwrap();
        for (i, &addr) in addrs.iter().enumerate() {
            if i != h {
                sw.add_peer(addr, &[Vni::DEFAULT, v]);
            }
        }
    }
    let x = sim.hosts[0]
        .sw
        .add_port(port_cfg(v, mac(0, 30), &[ip(0, 30)]))
        .unwrap();
    let y = sim.hosts[1]
        .sw
        .add_port(port_cfg(v, mac(1, 30), &[]))
        .unwrap();
    sim.send(
        0,
        x,
        &udp(
            mac(0, 30),
            MacAddr::BROADCAST,
            ip(0, 30),
            Ipv4Addr::BROADCAST,
            1,
        ),
    );
    assert_eq!(ports_of(&sim.take(1)), vec![y]);
    let removed = sim.hosts[1].sw.remove_network(v);
    assert_eq!(removed, vec![y]);
    assert!(sim.hosts[1].sw.port(y).is_none());
    assert!(sim.hosts[1].sw.network(v).is_none());
    assert!(sim.hosts[1].sw.fdb_entries(sim.now).all(|e| e.vni != v));
    sim.send(
        0,
        x,
        &udp(
            mac(0, 30),
            MacAddr::BROADCAST,
            ip(0, 30),
            Ipv4Addr::BROADCAST,
            1,
        ),
    );
    assert!(sim.take(1).is_empty());
    assert!(sim.take_drops().contains(&(1, DropReason::UnknownVni)));
    // The default network is untouched.
    sim.send(0, a, &udp(mac(0, 0), mac(1, 0), ip(0, 10), ip(1, 10), 1));
    assert_eq!(ports_of(&sim.take(1)), vec![b]);
}
