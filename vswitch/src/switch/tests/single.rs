//! One switch driven directly: frames from ports, datagrams from peers, timers.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use etherparse::{ArpOperation as EpArpOp, PacketBuilder, SlicedPacket};

use super::*;
use crate::fdb::FdbConfig;

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
    // A port with no IPv6 address sends IPv6 only from its link-local address.
    check(
        &mut sw,
        p[0],
        ipv6_udp(mac(0, 0), mcast, other, "ff02::1".parse().unwrap()),
        Some(DropReason::SpoofedSource),
    );
    // Truncated IPv4 behind a valid Ethernet header is malformed.
    let mut short = udp(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), 1);
    short.truncate(14 + 10);
    check(&mut sw, p[0], short, Some(DropReason::Malformed));
    assert_eq!(sw.counters().drops.get(DropReason::SpoofedSource), 6);
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
        sw.handle_datagram(t0, peer_addr(2), &mut datagram(Vni::DEFAULT, &f), &mut out);
    }
    assert_eq!(sw.fdb().port_len(open), 100);
    assert_eq!(sw.fdb().learned_len(), 300);
    assert!(sw.fdb().len() <= 300 + 2);
    assert!(sw.neighbours(t0).filter(|n| !n.is_static).count() <= 300);
    // Sources that were not learned were forwarded all the same.
    assert_eq!(sw.counters().fdb_full, 10_000 - 300);
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

    sw.handle_datagram(t0, peer_addr(2), &mut good.to_vec(), &mut out);
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
    sw.handle_datagram(t0, peer_addr(2), &mut reserved.to_vec(), &mut out);
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
        sw.handle_datagram(t0, from, &mut d.to_vec(), &mut out);
        assert_eq!(out.dropped(), Some(reason), "{reason}");
        assert!(out.is_empty());
    }
    // A peer that is not a member of the VNI.
    sw.add_network(NetworkConfig::new(vni(7))).unwrap();
    sw.handle_datagram(t0, peer_addr(2), &mut datagram(vni(7), &f), &mut out);
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
    sw.handle_datagram(
        t0,
        peer_addr(3),
        &mut datagram(Vni::DEFAULT, &from3),
        &mut out,
    );
    assert_eq!(out.ports(), &[p[0]]);
    let to3 = udp(mac(2, 0), mac(3, 0), ip(2, 10), ip(3, 10), 1);
    sw.handle_datagram(
        t0,
        peer_addr(2),
        &mut datagram(Vni::DEFAULT, &to3),
        &mut out,
    );
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
        sw.handle_datagram(
            t0,
            peer_addr(h),
            &mut datagram(Vni::DEFAULT, &f(h)),
            &mut out,
        );
        assert_eq!(out.ports(), &[p[0]]);
    }
    assert_eq!(sw.peers().filter(|p| p.dynamic).count(), 2);
    // Bounded.
    sw.handle_datagram(
        t0,
        peer_addr(4),
        &mut datagram(Vni::DEFAULT, &f(4)),
        &mut out,
    );
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
    sw.handle_datagram(t0, peer_addr(2), &mut datagram(Vni::DEFAULT, &f), &mut out);
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
    // The port's share of the table is full: not learned, forwarded all the same.
    sw.handle_frame(
        t0,
        open,
        &udp(mac(5, 6), mac(0, 0), ip(0, 1), ip(0, 2), 1),
        &mut spare,
    );
    assert_eq!(spare.ports(), &[p[0]]);
    assert_eq!(sw.counters().fdb_full, 1);
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
    let no_gateway = Route {
        vni: vni(9),
        subnet: "10.99.0.0/16".parse().unwrap(),
    };
    sw.set_routes(Vni::DEFAULT, vec![no_gateway]).unwrap();
    let to_no_gateway = udp(mac(0, 0), GW_MAC, ip(0, 10), Ipv4Addr::new(10, 99, 0, 5), 1);
    frame(&mut sw, p[0], &to_no_gateway, &mut seen); // NoRoute
    let solo = sw
        .add_port(port_cfg(vni(9), mac(9, 9), &[ip(0, 1)]))
        .unwrap();
    frame(
        &mut sw,
        solo,
        &udp(mac(9, 9), MacAddr::BROADCAST, ip(0, 1), ip(0, 2), 1),
        &mut seen,
    ); // NoMembers
    let mut datagram_in = |sw: &mut Switch, from, bytes: &[u8], seen: &mut Vec<DropReason>| {
        sw.handle_datagram(t0, from, &mut bytes.to_vec(), &mut out);
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
        &mut datagram(Vni::DEFAULT, &learn3),
        &mut spare,
    );
    let to3 = udp(mac(2, 0), mac(3, 0), ip(2, 1), ip(3, 1), 1);
    datagram_in(
        &mut sw,
        peer_addr(2),
        &datagram(Vni::DEFAULT, &to3),
        &mut seen,
    ); // NotLocal
    let big = udp(mac(2, 0), mac(0, 0), ip(2, 1), ip(0, 10), 1500);
    datagram_in(
        &mut sw,
        peer_addr(2),
        &datagram(Vni::DEFAULT, &big),
        &mut seen,
    ); // OverMtu
    seen.extend(super::hostile::offload_and_security_drops(
        &mut sw, p[0], t0,
    ));
    let sealing = super::sealed::sealing_drops();
    assert_eq!(
        sealing,
        [
            DropReason::Unsealed,
            DropReason::NoSession,
            DropReason::Unauthentic,
            DropReason::Replayed
        ]
    ); // the rest
    let policy = super::policy::policy_drops();
    assert_eq!(policy, [DropReason::PolicyDenied, DropReason::RateLimited]);

    let mut expected: Vec<_> = DropReason::ALL
        .into_iter()
        .filter(|r| !sealing.contains(r) && !policy.contains(r))
        .collect();
    expected.push(DropReason::OverMtu);
    expected.sort_unstable();
    let mut got = seen.clone();
    got.sort_unstable();
    assert_eq!(got, expected);
    for reason in DropReason::ALL {
        let want = match reason {
            DropReason::OverMtu => 2,
            r if sealing.contains(&r) || policy.contains(&r) => 0,
            _ => 1,
        };
        assert_eq!(sw.counters().drops.get(reason), want, "{reason}");
    }
    assert_eq!(
        sw.counters().drops.total(),
        (DropReason::COUNT - sealing.len() - policy.len()) as u64 + 1
    );
}

#[test]
fn peers_are_recognised_by_address_whatever_their_source_port() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 1);
    let t0 = Instant::now();
    let mut out = Output::new();
    let configured = peer_addr(2);
    sw.add_peer(configured, &[Vni::DEFAULT]);
    // A VTEP sends from a port chosen by the inner flow's hash, not from 4789.
    let from = SocketAddr::new(configured.ip(), 51_234);
    let frame = udp(mac(2, 0), mac(0, 0), ip(2, 10), ip(0, 10), 1);
    sw.handle_datagram(t0, from, &mut datagram(Vni::DEFAULT, &frame), &mut out);
    assert_eq!(out.ports(), &[p[0]]);
    // Replies go to the peer's configured VXLAN port.
    let reply = udp(mac(0, 0), mac(2, 0), ip(0, 10), ip(2, 10), 1);
    sw.handle_frame(t0, p[0], &reply, &mut out);
    assert_eq!(out.transmits().len(), 1);
    assert_eq!(out.transmits()[0].addr, configured);
}

#[test]
fn dynamic_peers_are_answered_on_the_vxlan_port() {
    let config = SwitchConfig {
        accept_unknown_peers: true,
        vxlan_port: 8472,
        ..SwitchConfig::default()
    };
    let (mut sw, p) = one_switch(config, 1);
    let t0 = Instant::now();
    let mut out = Output::new();
    let from = SocketAddr::new(peer_addr(2).ip(), 40_000);
    let frame = udp(mac(2, 0), mac(0, 0), ip(2, 10), ip(0, 10), 1);
    sw.handle_datagram(t0, from, &mut datagram(Vni::DEFAULT, &frame), &mut out);
    assert_eq!(out.ports(), &[p[0]]);
    let reply = udp(mac(0, 0), mac(2, 0), ip(0, 10), ip(2, 10), 1);
    sw.handle_frame(t0, p[0], &reply, &mut out);
    assert_eq!(out.transmits()[0].addr, SocketAddr::new(from.ip(), 8472));
}

#[test]
fn super_frames_are_checked_against_the_mtu_by_segment() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    let t0 = Instant::now();
    let mut out = Output::new();
    let super_frame = udp(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), 20_000);
    sw.handle_frame(t0, p[0], &super_frame, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::OverMtu));
    let read = |gso_size: u16| {
        let hdr = crate::offload::VnetHdr {
            flags: crate::offload::VnetHdr::F_NEEDS_CSUM,
            gso_type: crate::offload::VnetHdr::GSO_UDP_L4,
            gso_size,
            csum_start: 34,
            csum_offset: 6,
            hdr_len: 0,
        };
        let mut read = hdr.emit().to_vec();
        read.extend_from_slice(&super_frame);
        read
    };
    // Each segment is 14 + 20 + 8 + gso_size bytes: 1422 fills the MTU, 1423 does not.
    sw.handle_tap_read(t0, p[0], &read(1450 - 28), &mut out);
    assert_eq!(out.ports(), &[p[1]]);
    assert_eq!(out.offload().segment_len, 14 + 1450);
    sw.handle_tap_read(t0, p[0], &read(1450 - 27), &mut out);
    assert_eq!(out.dropped(), Some(DropReason::OverMtu));
}
