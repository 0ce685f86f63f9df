//! Tests of the switch: one switch driven directly, and a multi-host simulator (several switches,
//! a fake underlay delivering their transmits) on a virtual clock.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use etherparse::{
    ArpHardwareId, ArpOperation as EpArpOp, ArpPacket as EpArp, EtherType as EpEtherType,
    PacketBuilder, SlicedPacket,
};
use proptest::prelude::*;

use super::*;
use crate::fdb::FdbConfig;
use crate::tunnel::{decap, encap_header};

// ---- fixtures ----

fn vni(n: u32) -> Vni {
    Vni::try_from(n).unwrap()
}

/// A locally administered unicast MAC ending in `host`, `n`.
fn mac(host: u8, n: u8) -> MacAddr {
    MacAddr([0x02, 0x42, 0, 0, host, n])
}

fn ip(host: u8, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, host, n)
}

const GW_MAC: MacAddr = MacAddr([0x02, 0xee, 0, 0, 0, 1]);

fn gateway(host: u8) -> Gateway {
    Gateway {
        ip: Ipv4Addr::new(10, 244, host, 1),
        mac: GW_MAC,
    }
}

fn udp(src: MacAddr, dst: MacAddr, sip: Ipv4Addr, dip: Ipv4Addr, payload: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(sip.octets(), dip.octets(), 64)
        .udp(40000, 5001)
        .write(&mut out, &vec![0xab; payload])
        .unwrap();
    out
}

fn arp(
    src: MacAddr,
    dst: MacAddr,
    op: EpArpOp,
    sender: (MacAddr, Ipv4Addr),
    target: (MacAddr, Ipv4Addr),
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .arp(
            EpArp::new(
                ArpHardwareId::ETHERNET,
                EpEtherType::IPV4,
                op,
                &sender.0.0,
                &sender.1.octets(),
                &target.0.0,
                &target.1.octets(),
            )
            .unwrap(),
        )
        .write(&mut out)
        .unwrap();
    out
}

fn arp_request(src: MacAddr, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    arp(
        src,
        MacAddr::BROADCAST,
        EpArpOp::REQUEST,
        (src, sender_ip),
        (MacAddr::ZERO, target_ip),
    )
}

fn echo_request(src: MacAddr, dst: MacAddr, sip: Ipv4Addr, dip: Ipv4Addr, seq: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(sip.octets(), dip.octets(), 64)
        .icmpv4_echo_request(0x4242, seq)
        .write(&mut out, b"0123456789abcdef0123456789abcdef")
        .unwrap();
    out
}

fn ipv6_udp(src: MacAddr, dst: MacAddr, sip: Ipv6Addr, dip: Ipv6Addr) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv6(sip.octets(), dip.octets(), 64)
        .udp(1, 2)
        .write(&mut out, b"v6")
        .unwrap();
    out
}

fn datagram(vni: Vni, frame: &[u8]) -> Vec<u8> {
    let mut d = encap_header(vni).to_vec();
    d.extend_from_slice(frame);
    d
}

fn peer_addr(host: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, host)), 4789)
}

fn port_cfg(v: Vni, mac: MacAddr, ips: &[Ipv4Addr]) -> PortConfig {
    PortConfig {
        vni: v,
        mac,
        ips: ips.iter().map(|&i| IpAddr::V4(i)).collect(),
        port_security: true,
    }
}

/// A switch with network 42 (gateway 10.244.0.1) and `n` ports with MACs mac(0, i) and IPs
/// 10.244.0.(10 + i).
fn one_switch(config: SwitchConfig, n: u8) -> (Switch, Vec<PortId>) {
    let mut sw = Switch::new(config);
    sw.add_network(NetworkConfig {
        gateway: Some(gateway(0)),
        ..NetworkConfig::new(Vni::DEFAULT)
    })
    .unwrap();
    let ports = (0..n)
        .map(|i| {
            sw.add_port(port_cfg(Vni::DEFAULT, mac(0, i), &[ip(0, 10 + i)]))
                .unwrap()
        })
        .collect();
    (sw, ports)
}

// ---- the simulator ----

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
        h.sw.handle_datagram(now, from, dgram, &mut self.out);
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

// ---- single switch ----

#[test]
fn local_switching_learns_and_floods() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 3);
    let t0 = Instant::now();
    let mut out = Output::new();

    // Port MACs are static entries: unicast between ports is known from the start.
    let f = udp(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), 100);
    sw.handle_frame(t0, p[0], &f, &mut out);
    assert_eq!(out.ports(), &[p[1]]);
    assert!(out.transmits().is_empty());
    assert_eq!(out.frame(&f), &f[..]);
    assert_eq!(out.dropped(), None);

    // Broadcast: every other local port.
    let b = udp(
        mac(0, 0),
        MacAddr::BROADCAST,
        ip(0, 10),
        Ipv4Addr::BROADCAST,
        10,
    );
    sw.handle_frame(t0, p[0], &b, &mut out);
    assert_eq!(out.ports(), &[p[1], p[2]]);

    // Unknown unicast floods too.
    let u = udp(mac(0, 0), mac(9, 9), ip(0, 10), ip(0, 99), 10);
    sw.handle_frame(t0, p[0], &u, &mut out);
    assert_eq!(out.ports(), &[p[1], p[2]]);
    assert_eq!(sw.counters().flooded, 2);

    // A frame to the sender's own MAC is a hairpin.
    let h = udp(mac(0, 0), mac(0, 0), ip(0, 10), ip(0, 10), 10);
    sw.handle_frame(t0, p[0], &h, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::Hairpin));
    assert!(out.is_empty());

    let c = sw.counters();
    assert_eq!(c.port_rx_frames, 4);
    assert_eq!(c.port_tx_frames, 5);
    assert_eq!(sw.port_stats(p[1]).unwrap().tx_frames, 3);
    assert_eq!(sw.port_stats(p[0]).unwrap().drops, 1);
}

#[test]
fn learning_on_a_port_without_security() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    let open = sw
        .add_port(PortConfig {
            port_security: false,
            ..port_cfg(Vni::DEFAULT, mac(0, 50), &[])
        })
        .unwrap();
    let t0 = Instant::now();
    let mut out = Output::new();
    // A VM behind the port with its own MAC.
    let f = udp(mac(7, 7), MacAddr::BROADCAST, ip(0, 77), ip(0, 255), 10);
    sw.handle_frame(t0, open, &f, &mut out);
    assert_eq!(out.ports(), &[p[0], p[1]]);
    assert_eq!(
        sw.fdb().lookup(Vni::DEFAULT, mac(7, 7)),
        Some(Location::Port(open))
    );
    let back = udp(mac(0, 0), mac(7, 7), ip(0, 10), ip(0, 77), 10);
    sw.handle_frame(t0, p[0], &back, &mut out);
    assert_eq!(out.ports(), &[open]);
    assert_eq!(sw.counters().fdb_learned, 1);
    assert!(sw.poll_timeout().is_some());
}

#[test]
fn port_security() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    let v6 = sw
        .add_port(PortConfig {
            ips: vec![IpAddr::V4(ip(0, 20)), "fd00::20".parse().unwrap()],
            ..port_cfg(Vni::DEFAULT, mac(0, 20), &[])
        })
        .unwrap();
    let t0 = Instant::now();
    let mut out = Output::new();
    let mut check = |sw: &mut Switch, port, frame: Vec<u8>, expect: Option<DropReason>| {
        sw.handle_frame(t0, port, &frame, &mut out);
        assert_eq!(out.dropped(), expect);
    };
    // Wrong source MAC.
    check(
        &mut sw,
        p[0],
        udp(mac(0, 1), mac(0, 1), ip(0, 10), ip(0, 11), 1),
        Some(DropReason::SpoofedSource),
    );
    // Right MAC, wrong IPv4 source.
    check(
        &mut sw,
        p[0],
        udp(mac(0, 0), mac(0, 1), ip(0, 11), ip(0, 11), 1),
        Some(DropReason::SpoofedSource),
    );
    // Unspecified IPv4 source (DHCP-style) is allowed.
    check(
        &mut sw,
        p[0],
        udp(mac(0, 0), mac(0, 1), Ipv4Addr::UNSPECIFIED, ip(0, 11), 1),
        None,
    );
    // ARP with a foreign sender IP or sender MAC.
    check(
        &mut sw,
        p[0],
        arp_request(mac(0, 0), ip(0, 11), ip(0, 99)),
        Some(DropReason::SpoofedSource),
    );
    check(
        &mut sw,
        p[0],
        arp(
            mac(0, 0),
            MacAddr::BROADCAST,
            EpArpOp::REQUEST,
            (mac(0, 1), ip(0, 10)),
            (MacAddr::ZERO, ip(0, 99)),
        ),
        Some(DropReason::SpoofedSource),
    );
    // ARP probe from 0.0.0.0 is allowed (and flooded: 0.0.0.0 is never a neighbour).
    check(
        &mut sw,
        p[0],
        arp_request(mac(0, 0), Ipv4Addr::UNSPECIFIED, ip(0, 99)),
        None,
    );
    // IPv6: own, link-local and unspecified sources pass; others do not.
    let own: Ipv6Addr = "fd00::20".parse().unwrap();
    let other: Ipv6Addr = "fd00::21".parse().unwrap();
    let ll: Ipv6Addr = "fe80::42:ff:fe00:14".parse().unwrap();
    let mcast = MacAddr([0x33, 0x33, 0, 0, 0, 1]);
    check(
        &mut sw,
        v6,
        ipv6_udp(mac(0, 20), mcast, own, "ff02::1".parse().unwrap()),
        None,
    );
    check(
        &mut sw,
        v6,
        ipv6_udp(mac(0, 20), mcast, ll, "ff02::1".parse().unwrap()),
        None,
    );
    check(
        &mut sw,
        v6,
        ipv6_udp(
            mac(0, 20),
            mcast,
            Ipv6Addr::UNSPECIFIED,
            "ff02::1".parse().unwrap(),
        ),
        None,
    );
    check(
        &mut sw,
        v6,
        ipv6_udp(mac(0, 20), mcast, other, "ff02::1".parse().unwrap()),
        Some(DropReason::SpoofedSource),
    );
    // A port with no IPv6 address is not restricted on IPv6 sources.
    check(
        &mut sw,
        p[0],
        ipv6_udp(mac(0, 0), mcast, other, "ff02::1".parse().unwrap()),
        None,
    );
    // Truncated IPv4 behind a valid Ethernet header is malformed.
    let mut short = udp(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), 1);
    short.truncate(14 + 10);
    check(&mut sw, p[0], short, Some(DropReason::Malformed));
    assert_eq!(sw.counters().drops.get(DropReason::SpoofedSource), 5);
}

#[test]
fn mtu_is_enforced_on_ports() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    let t0 = Instant::now();
    let mut out = Output::new();
    // 1450-byte IP packet: 20 IP + 8 UDP + 1422 payload.
    let fits = udp(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), 1422);
    assert_eq!(fits.len(), 14 + 1450);
    sw.handle_frame(t0, p[0], &fits, &mut out);
    assert_eq!(out.ports(), &[p[1]]);
    let over = udp(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), 1423);
    sw.handle_frame(t0, p[0], &over, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::OverMtu));
    // A smaller MTU applies once updated in place.
    sw.add_network(NetworkConfig {
        mtu: 1400,
        gateway: Some(gateway(0)),
        ..NetworkConfig::new(Vni::DEFAULT)
    })
    .unwrap();
    sw.handle_frame(t0, p[0], &fits, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::OverMtu));
    assert_eq!(sw.network(Vni::DEFAULT).unwrap().mtu, 1400);
    assert_eq!(sw.network_ports(Vni::DEFAULT), &p[..]);
}

#[test]
fn tagged_frames_get_four_more_bytes() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    let t0 = Instant::now();
    let mut out = Output::new();
    let mut f = Vec::new();
    PacketBuilder::ethernet2(mac(0, 0).0, mac(0, 1).0)
        .single_vlan(etherparse::VlanId::try_new(100).unwrap())
        .ipv4(ip(0, 10).octets(), ip(0, 11).octets(), 64)
        .udp(1, 2)
        .write(&mut f, &[0u8; 1422])
        .unwrap();
    assert_eq!(f.len(), 18 + 1450);
    sw.handle_frame(t0, p[0], &f, &mut out);
    assert_eq!(out.ports(), &[p[1]]);
    // Port security looks through the tag.
    let mut spoof = f.clone();
    spoof[18 + 12..18 + 16].copy_from_slice(&ip(0, 11).octets());
    sw.handle_frame(t0, p[0], &spoof, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::SpoofedSource));
}

#[test]
fn gateway_answers_arp_and_ping() {
    let (mut sw, p) = one_switch(
        SwitchConfig {
            arp_suppression: false,
            ..SwitchConfig::default()
        },
        2,
    );
    let gw = gateway(0);
    let t0 = Instant::now();
    let mut out = Output::new();

    let req = arp_request(mac(0, 0), ip(0, 10), gw.ip);
    sw.handle_frame(t0, p[0], &req, &mut out);
    assert!(out.ports().is_empty() && out.transmits().is_empty());
    let (to, reply) = out.reply().unwrap();
    let reply = reply.to_vec();
    assert_eq!(to, p[0]);
    let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
    assert_eq!(eth.dst_addr(), mac(0, 0));
    assert_eq!(eth.src_addr(), gw.mac);
    let a = ArpPacket::new_checked(eth.payload()).unwrap();
    assert_eq!(a.operation(), ArpOperation::Reply);
    assert_eq!((a.sender_mac(), a.sender_ip()), (gw.mac, gw.ip));
    assert_eq!((a.target_mac(), a.target_ip()), (mac(0, 0), ip(0, 10)));
    // etherparse agrees it is a well-formed ARP reply.
    let parsed = SlicedPacket::from_ethernet(&reply).unwrap();
    assert!(matches!(parsed.net, Some(etherparse::NetSlice::Arp(_))));

    let ping = echo_request(mac(0, 0), gw.mac, ip(0, 10), gw.ip, 7);
    sw.handle_frame(t0, p[0], &ping, &mut out);
    let (to, reply) = out.reply().unwrap();
    let reply = reply.to_vec();
    assert_eq!(to, p[0]);
    assert_eq!(reply.len(), ping.len());
    let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
    assert_eq!((eth.dst_addr(), eth.src_addr()), (mac(0, 0), gw.mac));
    let ipv4 = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ipv4.verify_checksum());
    assert_eq!((ipv4.src_addr(), ipv4.dst_addr()), (gw.ip, ip(0, 10)));
    let icmp = Icmpv4Packet::new_checked(ipv4.payload()).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!(icmp.msg_type(), ICMPV4_ECHO_REPLY);
    assert_eq!((icmp.echo_ident(), icmp.echo_seq()), (0x4242, 7));
    assert_eq!(
        &reply[reply.len() - 32..],
        b"0123456789abcdef0123456789abcdef"
    );
    // etherparse parses the reply and checks the ICMP checksum against the payload.
    let parsed = SlicedPacket::from_ethernet(&reply).unwrap();
    match parsed.transport {
        Some(etherparse::TransportSlice::Icmpv4(icmp)) => {
            assert_eq!(
                icmp.icmp_type(),
                etherparse::Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader {
                    id: 0x4242,
                    seq: 7
                })
            );
            let header = icmp.header();
            assert_eq!(
                header.checksum,
                header.icmp_type.calc_checksum(icmp.payload())
            );
        }
        other => panic!("not ICMPv4: {other:?}"),
    }

    // Anything else to the gateway MAC is dropped.
    let other = udp(mac(0, 0), gw.mac, ip(0, 10), Ipv4Addr::new(8, 8, 8, 8), 10);
    sw.handle_frame(t0, p[0], &other, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::Gateway));
    // A ping with a broken checksum is malformed.
    let mut bad = ping.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    sw.handle_frame(t0, p[0], &bad, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::Malformed));
    let c = sw.counters();
    assert_eq!((c.gateway_arp_replies, c.gateway_echo_replies), (1, 1));
}

#[test]
fn arp_suppression_answers_known_addresses() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    let t0 = Instant::now();
    let mut out = Output::new();
    // Port 1's address is a static neighbour.
    let req = arp_request(mac(0, 0), ip(0, 10), ip(0, 11));
    sw.handle_frame(t0, p[0], &req, &mut out);
    let (to, reply) = out.reply().unwrap();
    let reply = reply.to_vec();
    assert_eq!(to, p[0]);
    assert!(out.ports().is_empty());
    let a = ArpPacket::new_checked(&reply[14..]).unwrap();
    assert_eq!((a.sender_mac(), a.sender_ip()), (mac(0, 1), ip(0, 11)));
    assert_eq!(sw.counters().arp_suppressed, 1);
    // Unknown target: flooded.
    let req = arp_request(mac(0, 0), ip(0, 10), ip(0, 99));
    sw.handle_frame(t0, p[0], &req, &mut out);
    assert!(out.reply().is_none());
    assert_eq!(out.ports(), &[p[1]]);
    // Gratuitous ARP (target = sender) is never answered: it is flooded.
    let garp = arp_request(mac(0, 0), ip(0, 10), ip(0, 10));
    sw.handle_frame(t0, p[0], &garp, &mut out);
    assert!(out.reply().is_none());
    assert_eq!(out.ports(), &[p[1]]);

    // Without suppression the request is flooded.
    let (mut sw, p) = one_switch(
        SwitchConfig {
            arp_suppression: false,
            ..SwitchConfig::default()
        },
        2,
    );
    let req = arp_request(mac(0, 0), ip(0, 10), ip(0, 11));
    sw.handle_frame(t0, p[0], &req, &mut out);
    assert!(out.reply().is_none());
    assert_eq!(out.ports(), &[p[1]]);
}

#[test]
fn configuration_errors() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 1);
    assert_eq!(
        sw.add_port(port_cfg(vni(7), mac(0, 9), &[])),
        Err(SwitchError::UnknownVni(vni(7)))
    );
    assert_eq!(
        sw.add_port(port_cfg(Vni::DEFAULT, mac(0, 0), &[])),
        Err(SwitchError::MacInUse {
            vni: Vni::DEFAULT,
            mac: mac(0, 0),
            port: p[0]
        })
    );
    assert_eq!(
        sw.add_port(port_cfg(Vni::DEFAULT, MacAddr::BROADCAST, &[])),
        Err(SwitchError::InvalidMac(MacAddr::BROADCAST))
    );
    assert_eq!(
        sw.add_port(port_cfg(Vni::DEFAULT, GW_MAC, &[])),
        Err(SwitchError::GatewayMac {
            vni: Vni::DEFAULT,
            mac: GW_MAC
        })
    );
    assert_eq!(
        sw.add_network(NetworkConfig {
            mtu: 10,
            ..NetworkConfig::new(vni(5))
        }),
        Err(SwitchError::InvalidMtu { mtu: 10 })
    );
    assert!(sw.remove_port(p[0]));
    assert!(!sw.remove_port(p[0]));
    assert!(sw.port(p[0]).is_none());
    // Ids are reused; the same MAC may come back.
    let again = sw.add_port(port_cfg(Vni::DEFAULT, mac(0, 0), &[])).unwrap();
    assert_eq!(again, p[0]);
    assert_eq!(sw.ports().count(), 1);
    assert_eq!(sw.port(again).unwrap().config.mac, mac(0, 0));
}

#[test]
fn removing_a_port_cleans_up() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    let t0 = Instant::now();
    let mut out = Output::new();
    assert!(sw.remove_port(p[1]));
    assert_eq!(sw.fdb().lookup(Vni::DEFAULT, mac(0, 1)), None);
    assert!(sw.neighbours(t0).all(|n| n.ip != ip(0, 11)));
    // Frames to it now flood; from it, they are unknown-port drops.
    let f = udp(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), 10);
    sw.handle_frame(t0, p[0], &f, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::NoMembers));
    sw.handle_frame(t0, p[1], &f, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::UnknownPort));
    sw.handle_frame(t0, PortId::from_raw(999), &f, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::UnknownPort));
}

#[test]
fn fdb_and_neighbour_limits_hold_under_a_mac_flood() {
    let config = SwitchConfig {
        fdb: FdbConfig {
            max_entries: 300,
            max_per_port: 100,
            ..FdbConfig::default()
        },
        ..SwitchConfig::default()
    };
    let (mut sw, _) = one_switch(config, 1);
    let open = sw
        .add_port(PortConfig {
            port_security: false,
            ..port_cfg(Vni::DEFAULT, mac(0, 50), &[])
        })
        .unwrap();
    sw.add_peer(peer_addr(2), &[Vni::DEFAULT]);
    let t0 = Instant::now();
    let mut out = Output::new();
    let mut rng = 0x1234_5678_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..5000 {
        let b = next().to_be_bytes();
        let src = MacAddr([b[0] & 0xfe, b[1], b[2], b[3], b[4], b[5]]);
        let sip = Ipv4Addr::new(10, 244, b[6], b[7]);
        let f = arp_request(src, sip, ip(0, 10));
        sw.handle_frame(t0, open, &f, &mut out);
        let b = next().to_be_bytes();
        let remote = MacAddr([b[0] & 0xfe, b[1], b[2], b[3], b[4], b[5]]);
        let sip = Ipv4Addr::new(10, 245, b[6], b[7]);
        let f = arp_request(remote, sip, ip(0, 99));
        sw.handle_datagram(t0, peer_addr(2), &datagram(Vni::DEFAULT, &f), &mut out);
    }
    assert_eq!(sw.fdb().port_len(open), 100);
    assert_eq!(sw.fdb().learned_len(), 300);
    assert!(sw.fdb().len() <= 300 + 2);
    assert!(sw.neighbours(t0).filter(|n| !n.is_static).count() <= 300);
    let fulls = sw.counters().drops.get(DropReason::FdbFull);
    assert_eq!(fulls, 10_000 - 300);
    // Known sources still pass.
    let f = udp(
        mac(0, 0),
        MacAddr::BROADCAST,
        ip(0, 10),
        Ipv4Addr::BROADCAST,
        1,
    );
    sw.handle_frame(t0, PortId::from_raw(0), &f, &mut out);
    assert_eq!(out.dropped(), None);
}

#[test]
fn output_reuse_does_not_grow() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 4);
    for h in 2..10 {
        sw.add_peer(peer_addr(h), &[Vni::DEFAULT]);
    }
    let t0 = Instant::now();
    let mut out = Output::new();
    let b = udp(
        mac(0, 0),
        MacAddr::BROADCAST,
        ip(0, 10),
        Ipv4Addr::BROADCAST,
        10,
    );
    let ping = echo_request(mac(0, 0), GW_MAC, ip(0, 10), gateway(0).ip, 1);
    sw.handle_frame(t0, p[0], &b, &mut out);
    sw.handle_frame(t0, p[0], &ping, &mut out);
    let caps = (
        out.ports.capacity(),
        out.transmits.capacity(),
        out.reply.capacity(),
    );
    for i in 0..100 {
        sw.handle_frame(t0, p[i % 4], &b, &mut out);
        sw.handle_frame(t0, p[0], &ping, &mut out);
    }
    assert_eq!(
        caps,
        (
            out.ports.capacity(),
            out.transmits.capacity(),
            out.reply.capacity()
        )
    );
}

// ---- datagrams into one switch ----

#[test]
fn datagram_checks() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 1);
    let peer = sw.add_peer(peer_addr(2), &[Vni::DEFAULT]);
    let t0 = Instant::now();
    let mut out = Output::new();
    let f = udp(mac(1, 0), mac(0, 0), ip(1, 10), ip(0, 10), 10);
    let good = datagram(Vni::DEFAULT, &f);

    sw.handle_datagram(t0, peer_addr(2), &good, &mut out);
    assert_eq!(out.ports(), &[p[0]]);
    assert_eq!(out.frame_range(), 8..good.len());
    assert_eq!(out.frame(&good), &f[..]);
    assert_eq!(
        sw.fdb().lookup(Vni::DEFAULT, mac(1, 0)),
        Some(Location::Peer(peer))
    );

    // A Linux vxlan device may set reserved bits we must ignore.
    let mut reserved = good.clone();
    reserved[0] = 0xff;
    reserved[1] = 0xff;
    reserved[7] = 0xff;
    sw.handle_datagram(t0, peer_addr(2), &reserved, &mut out);
    assert_eq!(out.ports(), &[p[0]]);

    let cases: Vec<(SocketAddr, Vec<u8>, DropReason)> = vec![
        (peer_addr(3), good.clone(), DropReason::UnknownPeer),
        (peer_addr(2), good[..21].to_vec(), DropReason::Runt),
        (
            peer_addr(2),
            {
                let mut d = good.clone();
                d[0] = 0;
                d
            },
            DropReason::BadFlags,
        ),
        (peer_addr(2), datagram(vni(7), &f), DropReason::UnknownVni),
        (
            peer_addr(2),
            datagram(
                Vni::DEFAULT,
                &udp(
                    MacAddr([1, 0, 0x5e, 0, 0, 1]),
                    mac(0, 0),
                    ip(1, 1),
                    ip(0, 10),
                    1,
                ),
            ),
            DropReason::Malformed,
        ),
    ];
    for (from, d, reason) in cases {
        sw.handle_datagram(t0, from, &d, &mut out);
        assert_eq!(out.dropped(), Some(reason), "{reason}");
        assert!(out.is_empty());
    }
    // A peer that is not a member of the VNI.
    sw.add_network(NetworkConfig::new(vni(7))).unwrap();
    sw.handle_datagram(t0, peer_addr(2), &datagram(vni(7), &f), &mut out);
    assert_eq!(out.dropped(), Some(DropReason::NotMember));
    let stats = sw.peer_stats(peer).unwrap();
    assert_eq!(stats.rx_datagrams, 7);
    assert_eq!(stats.drops, 5);
}

#[test]
fn unicast_to_a_remote_mac_from_a_peer_is_not_local() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 1);
    sw.add_peer(peer_addr(2), &[Vni::DEFAULT]);
    sw.add_peer(peer_addr(3), &[Vni::DEFAULT]);
    let t0 = Instant::now();
    let mut out = Output::new();
    let from3 = udp(
        mac(3, 0),
        MacAddr::BROADCAST,
        ip(3, 10),
        Ipv4Addr::BROADCAST,
        1,
    );
    sw.handle_datagram(t0, peer_addr(3), &datagram(Vni::DEFAULT, &from3), &mut out);
    assert_eq!(out.ports(), &[p[0]]);
    let to3 = udp(mac(2, 0), mac(3, 0), ip(2, 10), ip(3, 10), 1);
    sw.handle_datagram(t0, peer_addr(2), &datagram(Vni::DEFAULT, &to3), &mut out);
    assert_eq!(out.dropped(), Some(DropReason::NotLocal));
    assert!(out.transmits().is_empty());
}

#[test]
fn unknown_peers_accepted_when_configured() {
    let config = SwitchConfig {
        accept_unknown_peers: true,
        max_dynamic_peers: 2,
        fdb: FdbConfig {
            aging: Duration::from_secs(30),
            ..FdbConfig::default()
        },
        ..SwitchConfig::default()
    };
    let (mut sw, p) = one_switch(config, 1);
    let t0 = Instant::now();
    let mut out = Output::new();
    let f = |h: u8| {
        udp(
            mac(h, 0),
            MacAddr::BROADCAST,
            ip(h, 10),
            Ipv4Addr::BROADCAST,
            1,
        )
    };
    for h in 2..=3 {
        sw.handle_datagram(t0, peer_addr(h), &datagram(Vni::DEFAULT, &f(h)), &mut out);
        assert_eq!(out.ports(), &[p[0]]);
    }
    assert_eq!(sw.peers().filter(|p| p.dynamic).count(), 2);
    // Bounded.
    sw.handle_datagram(t0, peer_addr(4), &datagram(Vni::DEFAULT, &f(4)), &mut out);
    assert_eq!(out.dropped(), Some(DropReason::UnknownPeer));
    // Dynamic peers are flooded to like configured ones.
    sw.handle_frame(
        t0,
        p[0],
        &udp(
            mac(0, 0),
            MacAddr::BROADCAST,
            ip(0, 10),
            Ipv4Addr::BROADCAST,
            1,
        ),
        &mut out,
    );
    assert_eq!(out.transmits().len(), 2);
    // Configuring one makes it permanent; the other ages out with its entries.
    let kept = sw.add_peer(peer_addr(2), &[Vni::DEFAULT]);
    assert!(!sw.peer(kept).unwrap().dynamic);
    let mut now = t0;
    while let Some(t) = sw.poll_timeout() {
        if t > t0 + Duration::from_secs(120) {
            break;
        }
        now = t;
        sw.handle_timeout(now);
    }
    assert!(now >= t0 + Duration::from_secs(30));
    assert_eq!(sw.peers().count(), 1);
    assert!(sw.peer_id(peer_addr(3)).is_none());
    assert_eq!(sw.counters().dynamic_peers_created, 2);
}

#[test]
fn timers() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 1);
    let t0 = Instant::now();
    assert_eq!(sw.poll_timeout(), None);
    sw.add_peer(peer_addr(2), &[Vni::DEFAULT]);
    let mut out = Output::new();
    let f = udp(mac(1, 0), mac(0, 0), ip(1, 10), ip(0, 10), 1);
    sw.handle_datagram(t0, peer_addr(2), &datagram(Vni::DEFAULT, &f), &mut out);
    assert_eq!(sw.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    // Early calls do nothing.
    sw.handle_timeout(t0);
    assert_eq!(sw.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    sw.handle_timeout(t0 + Duration::from_secs(1));
    assert_eq!(sw.poll_timeout(), Some(t0 + Duration::from_secs(2)));
    sw.handle_timeout(t0 + Duration::from_secs(300));
    assert_eq!(sw.fdb().lookup(Vni::DEFAULT, mac(1, 0)), None);
    assert_eq!(sw.counters().fdb_aged, 1);
    // Only static entries left: nothing to age.
    assert_eq!(sw.poll_timeout(), None);
    assert_eq!(
        sw.fdb().lookup(Vni::DEFAULT, mac(0, 0)),
        Some(Location::Port(p[0]))
    );
}

#[test]
fn every_drop_reason_is_counted() {
    let (mut sw, p) = one_switch(
        SwitchConfig {
            fdb: FdbConfig {
                max_per_port: 1,
                ..FdbConfig::default()
            },
            ..SwitchConfig::default()
        },
        1,
    );
    let open = sw
        .add_port(PortConfig {
            port_security: false,
            ..port_cfg(Vni::DEFAULT, mac(0, 50), &[])
        })
        .unwrap();
    sw.add_network(NetworkConfig::new(vni(9))).unwrap();
    sw.add_peer(peer_addr(2), &[Vni::DEFAULT]);
    sw.add_peer(peer_addr(3), &[Vni::DEFAULT]);
    let t0 = Instant::now();
    let mut out = Output::new();
    let f = udp(mac(0, 0), mac(0, 50), ip(0, 10), ip(0, 99), 1);
    let mut seen = Vec::new();
    let mut frame = |sw: &mut Switch, port, bytes: &[u8], seen: &mut Vec<DropReason>| {
        sw.handle_frame(t0, port, bytes, &mut out);
        seen.push(out.dropped().unwrap());
    };
    frame(&mut sw, p[0], &f[..13], &mut seen); // Runt
    frame(
        &mut sw,
        open,
        &udp(
            MacAddr([1, 0, 0, 0, 0, 1]),
            mac(0, 0),
            ip(0, 1),
            ip(0, 2),
            1,
        ),
        &mut seen,
    ); // Malformed
    frame(
        &mut sw,
        p[0],
        &udp(mac(0, 0), mac(0, 50), ip(0, 10), ip(0, 99), 1500),
        &mut seen,
    ); // OverMtu
    let mut spare = Output::new();
    sw.handle_frame(
        t0,
        open,
        &udp(mac(5, 5), mac(0, 0), ip(0, 1), ip(0, 2), 1),
        &mut spare,
    );
    assert_eq!(spare.dropped(), None);
    frame(
        &mut sw,
        open,
        &udp(mac(5, 6), mac(0, 0), ip(0, 1), ip(0, 2), 1),
        &mut seen,
    ); // FdbFull
    frame(&mut sw, PortId::from_raw(77), &f, &mut seen); // UnknownPort
    frame(
        &mut sw,
        p[0],
        &udp(mac(0, 1), mac(0, 50), ip(0, 10), ip(0, 99), 1),
        &mut seen,
    ); // SpoofedSource
    frame(
        &mut sw,
        p[0],
        &udp(mac(0, 0), mac(0, 0), ip(0, 10), ip(0, 10), 1),
        &mut seen,
    ); // Hairpin
    frame(
        &mut sw,
        p[0],
        &udp(mac(0, 0), GW_MAC, ip(0, 10), ip(1, 1), 1),
        &mut seen,
    ); // Gateway
    let solo = sw.add_port(port_cfg(vni(9), mac(9, 9), &[])).unwrap();
    frame(
        &mut sw,
        solo,
        &udp(mac(9, 9), MacAddr::BROADCAST, ip(0, 1), ip(0, 2), 1),
        &mut seen,
    ); // NoMembers
    let mut datagram_in = |sw: &mut Switch, from, bytes: &[u8], seen: &mut Vec<DropReason>| {
        sw.handle_datagram(t0, from, bytes, &mut out);
        seen.push(out.dropped().unwrap());
    };
    let inner = udp(mac(2, 0), mac(0, 0), ip(2, 1), ip(0, 10), 1);
    datagram_in(
        &mut sw,
        peer_addr(9),
        &datagram(Vni::DEFAULT, &inner),
        &mut seen,
    ); // UnknownPeer
    datagram_in(&mut sw, peer_addr(2), &datagram(vni(8), &inner), &mut seen); // UnknownVni
    datagram_in(&mut sw, peer_addr(2), &[0u8; 30], &mut seen); // BadFlags
    datagram_in(&mut sw, peer_addr(2), &datagram(vni(9), &inner), &mut seen); // NotMember
    let learn3 = udp(mac(3, 0), MacAddr::BROADCAST, ip(3, 1), ip(3, 255), 1);
    sw.handle_datagram(
        t0,
        peer_addr(3),
        &datagram(Vni::DEFAULT, &learn3),
        &mut spare,
    );
    let to3 = udp(mac(2, 0), mac(3, 0), ip(2, 1), ip(3, 1), 1);
    datagram_in(
        &mut sw,
        peer_addr(2),
        &datagram(Vni::DEFAULT, &to3),
        &mut seen,
    ); // NotLocal

    let mut expected = DropReason::ALL.to_vec();
    expected.sort_unstable();
    let mut got = seen.clone();
    got.sort_unstable();
    assert_eq!(got, expected);
    for reason in DropReason::ALL {
        assert_eq!(sw.counters().drops.get(reason), 1, "{reason}");
    }
    assert_eq!(sw.counters().drops.total(), DropReason::COUNT as u64);
}

// ---- the simulator ----

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
        .add_port(port_cfg(v, mac(0, 30), &[]))
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

// ---- never panics ----

fn fuzz_switch() -> (Switch, Vec<PortId>) {
    let (mut sw, mut p) = one_switch(
        SwitchConfig {
            accept_unknown_peers: true,
            ..SwitchConfig::default()
        },
        2,
    );
    p.push(
        sw.add_port(PortConfig {
            port_security: false,
            ..port_cfg(Vni::DEFAULT, mac(0, 50), &[])
        })
        .unwrap(),
    );
    sw.add_peer(peer_addr(2), &[Vni::DEFAULT]);
    (sw, p)
}

fn seeds() -> Vec<Vec<u8>> {
    vec![
        udp(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), 20),
        arp_request(mac(0, 0), ip(0, 10), ip(0, 1)),
        arp_request(mac(0, 0), ip(0, 10), ip(0, 11)),
        echo_request(mac(0, 0), GW_MAC, ip(0, 10), gateway(0).ip, 3),
        ipv6_udp(
            mac(0, 0),
            MacAddr::BROADCAST,
            "fe80::1".parse().unwrap(),
            "ff02::1".parse().unwrap(),
        ),
    ]
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), port in 0u32..4) {
        let (mut sw, _) = fuzz_switch();
        let t0 = Instant::now();
        let mut out = Output::new();
        sw.handle_frame(t0, PortId::from_raw(port), &bytes, &mut out);
        sw.handle_datagram(t0, peer_addr(2), &bytes, &mut out);
        sw.handle_datagram(t0, peer_addr(9), &bytes, &mut out);
        let mut with_header = encap_header(Vni::DEFAULT).to_vec();
        with_header.extend_from_slice(&bytes);
        sw.handle_datagram(t0, peer_addr(2), &with_header, &mut out);
        sw.handle_timeout(t0 + Duration::from_secs(400));
        let c = sw.counters();
        prop_assert_eq!(
            c.port_rx_frames + c.drops.get(DropReason::UnknownPort) + c.peer_rx_datagrams,
            4
        );
    }

    #[test]
    fn mutated_frames_never_panic(
        seed in 0usize..5,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
        port in 0u32..3,
    ) {
        let (mut sw, _) = fuzz_switch();
        let t0 = Instant::now();
        let mut out = Output::new();
        let mut frame = seeds()[seed].clone();
        for (at, value) in flips {
            let len = frame.len();
            frame[at % len] = value;
        }
        frame.truncate(cut % (frame.len() + 1));
        sw.handle_frame(t0, PortId::from_raw(port), &frame, &mut out);
        if let Some((_, reply)) = out.reply() {
            prop_assert!(reply.len() >= 14);
        }
        let d = datagram(Vni::DEFAULT, &frame);
        sw.handle_datagram(t0, peer_addr(2), &d, &mut out);
        prop_assert!(out.frame_range().end <= d.len());
        prop_assert!(out.transmits().is_empty());
    }
}
