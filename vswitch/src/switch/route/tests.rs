//! Routing and the host port, driven with frames: two networks on one switch, a peer carrying
//! the second.

#![allow(clippy::unwrap_used)]

use core::net::Ipv4Addr;
use std::time::Instant;

use etherparse::{ArpOperation as EpArpOp, SlicedPacket};

use super::*;
use crate::switch::tests::{arp, datagram, echo_request, mac, peer_addr, port_cfg, udp, vni as v};
use crate::switch::{NetworkConfig, PeerId, SwitchConfig};
use crate::wire::Ipv4Packet;

const GW_A: MacAddr = MacAddr([0x0a, 0x58, 10, 244, 1, 1]);
const GW_B: MacAddr = MacAddr([0x0a, 0x58, 10, 245, 1, 1]);

fn a_ip(host: u8, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, host, n)
}

fn b_ip(host: u8, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 245, host, n)
}

/// Network 1 (10.244.0.0/16, gateway 10.244.1.1) with port a1 = 10.244.1.2, network 2
/// (10.245.0.0/16, gateway 10.245.1.1) with port b1 = 10.245.1.2, a peer carrying both, and
/// a route from 1 to 2 only.
fn two_networks() -> (Switch, PortId, PortId, PeerId) {
    let mut sw = Switch::new(SwitchConfig::default());
    for (n, ip, mac) in [(1, a_ip(1, 1), GW_A), (2, b_ip(1, 1), GW_B)] {
        sw.add_network(NetworkConfig {
            gateway: Some(Gateway { ip, mac }),
            ..NetworkConfig::new(v(n))
        })
        .unwrap();
    }
    let a1 = sw
        .add_port(port_cfg(v(1), mac(1, 1), &[a_ip(1, 2)]))
        .unwrap();
    let b1 = sw
        .add_port(port_cfg(v(2), mac(1, 2), &[b_ip(1, 2)]))
        .unwrap();
    let peer = sw.add_peer(peer_addr(2), &[v(1), v(2)]);
    sw.set_routes(
        v(1),
        vec![Route {
            vni: v(2),
            subnet: "10.245.0.0/16".parse().unwrap(),
        }],
    )
    .unwrap();
    (sw, a1, b1, peer)
}

/// Runs a frame from `port` through the switch and the rewrite, as a worker does; returns the
/// frame to forward.
fn send(sw: &mut Switch, port: PortId, frame: &[u8], out: &mut Output) -> Vec<u8> {
    let mut buf = frame.to_vec();
    buf.resize(frame.len().max(64), 0);
    sw.handle_frame(Instant::now(), port, frame, out);
    out.rewrite(&mut buf);
    out.frame(&buf).to_vec()
}

fn ipv4(frame: &[u8]) -> Ipv4Packet<&[u8]> {
    Ipv4Packet::new_checked(&frame[ETHERNET_HEADER_LEN..]).unwrap()
}

#[test]
fn a_frame_to_a_connected_network_is_routed_with_new_macs_and_ttl() {
    let (mut sw, a1, b1, _) = two_networks();
    let mut out = Output::new();
    let f = udp(mac(1, 1), GW_A, a_ip(1, 2), b_ip(1, 2), 100);
    let routed = send(&mut sw, a1, &f, &mut out);
    assert_eq!(out.dropped(), None);
    assert_eq!(out.ports(), &[b1]);
    assert!(out.transmits().is_empty());
    let eth = EthernetFrame::new_checked(&routed[..]).unwrap();
    assert_eq!(eth.src_addr(), GW_B);
    assert_eq!(eth.dst_addr(), mac(1, 2));
    let ip = ipv4(&routed);
    assert_eq!(ip.ttl(), 63);
    assert!(ip.verify_checksum());
    // Everything past the IP header is untouched, and etherparse agrees it is well formed.
    assert_eq!(routed[34..], f[34..]);
    SlicedPacket::from_ethernet(&routed).unwrap();
    assert_eq!(sw.counters().routed, 1);
}

#[test]
fn unconnected_networks_stay_apart() {
    let (mut sw, _, b1, _) = two_networks();
    let mut out = Output::new();
    // No route from 2 to 1: without a host port, the gateway drops it.
    let f = udp(mac(1, 2), GW_B, b_ip(1, 2), a_ip(1, 2), 10);
    send(&mut sw, b1, &f, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::Gateway));
    assert!(out.is_empty());
    // A frame addressed straight to a MAC of the other network is not found in this one.
    let direct = udp(mac(1, 2), mac(1, 1), b_ip(1, 2), a_ip(1, 2), 10);
    sw.handle_frame(Instant::now(), b1, &direct, &mut out);
    assert!(!out.ports().contains(&PortId(0)));
    assert_eq!(sw.counters().routed, 0);
}

#[test]
fn ttl_one_is_answered_with_time_exceeded() {
    let (mut sw, a1, _, _) = two_networks();
    let mut out = Output::new();
    let mut f = udp(mac(1, 1), GW_A, a_ip(1, 2), b_ip(1, 2), 10);
    f[ETHERNET_HEADER_LEN + 8] = 1;
    let mut ip = Ipv4Packet::new_unchecked(&mut f[ETHERNET_HEADER_LEN..]);
    ip.fill_checksum();
    sw.handle_frame(Instant::now(), a1, &f, &mut out);
    assert!(out.ports().is_empty() && out.transmits().is_empty());
    let (port, reply) = out.reply().unwrap();
    assert_eq!(port, a1);
    let eth = EthernetFrame::new_checked(reply).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (GW_A, mac(1, 1)));
    let ip = ipv4(reply);
    assert!(ip.verify_checksum());
    assert_eq!((ip.src_addr(), ip.dst_addr()), (a_ip(1, 1), a_ip(1, 2)));
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert_eq!((icmp.msg_type(), icmp.code()), (ICMPV4_TIME_EXCEEDED, 0));
    assert!(icmp.verify_checksum());
    // It quotes the original IP header and the first 8 bytes after it.
    assert_eq!(
        &ip.payload()[8..],
        &f[ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + 28]
    );
    assert_eq!(sw.counters().ttl_exceeded, 1);
}

#[test]
fn an_unknown_target_is_resolved_by_arp_in_the_destination_network() {
    let (mut sw, a1, b1, peer) = two_networks();
    let mut out = Output::new();
    let now = Instant::now();
    let f = udp(mac(1, 1), GW_A, a_ip(1, 2), b_ip(2, 7), 100);
    let asked = send(&mut sw, a1, &f, &mut out);
    // The frame is replaced by an ARP request from network 2's gateway, flooded in network 2.
    assert_eq!(out.ports(), &[b1]);
    assert_eq!(out.transmits().len(), 1);
    assert_eq!(out.vni(), v(2));
    assert_eq!(out.vxlan_header(), &crate::tunnel::encap_header(v(2)));
    let eth = EthernetFrame::new_checked(&asked[..]).unwrap();
    assert_eq!(eth.dst_addr(), MacAddr::BROADCAST);
    let request = ArpPacket::new_checked(eth.payload()).unwrap();
    assert_eq!(request.operation(), ArpOperation::Request);
    assert_eq!(
        (
            request.sender_mac(),
            request.sender_ip(),
            request.target_ip()
        ),
        (GW_B, b_ip(1, 1), b_ip(2, 7))
    );
    assert_eq!(sw.counters().route_resolves, 1);

    // The answer from the peer teaches the neighbour; it is for this node's gateway MAC,
    // which without a host port has nowhere further to go.
    let target = mac(2, 7);
    let reply = arp(
        target,
        GW_B,
        EpArpOp::REPLY,
        (target, b_ip(2, 7)),
        (GW_B, b_ip(1, 1)),
    );
    let mut d = datagram(v(2), &reply);
    sw.handle_datagram(now, peer_addr(2), &mut d, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::Gateway));

    // The retransmission is routed to the peer, encapsulated with network 2's VNI.
    let routed = send(&mut sw, a1, &f, &mut out);
    assert_eq!(out.dropped(), None);
    assert_eq!(out.transmits().len(), 1);
    assert_eq!(out.transmits()[0].peer, peer);
    assert_eq!(out.vxlan_header(), &crate::tunnel::encap_header(v(2)));
    let eth = EthernetFrame::new_checked(&routed[..]).unwrap();
    assert_eq!((eth.src_addr(), eth.dst_addr()), (GW_B, target));
    assert_eq!(ipv4(&routed).ttl(), 63);
}

#[test]
fn the_other_networks_gateway_answers_pings() {
    let (mut sw, a1, _, _) = two_networks();
    let mut out = Output::new();
    let ping = echo_request(mac(1, 1), GW_A, a_ip(1, 2), b_ip(1, 1), 1);
    sw.handle_frame(Instant::now(), a1, &ping, &mut out);
    let (port, reply) = out.reply().unwrap();
    assert_eq!(port, a1);
    let eth = EthernetFrame::new_checked(reply).unwrap();
    assert_eq!(eth.src_addr(), GW_A);
    assert_eq!(ipv4(reply).src_addr(), b_ip(1, 1));
}

#[test]
fn the_host_port_gets_what_the_gateway_does_not_answer() {
    let (mut sw, a1, _, peer) = two_networks();
    let host = sw.add_host_port(v(1)).unwrap();
    assert_eq!(sw.add_host_port(v(1)).unwrap(), host, "idempotent");
    assert_eq!(sw.host_port(v(1)), Some(host));
    let mut out = Output::new();
    let now = Instant::now();

    // Traffic for outside the cluster goes to the host.
    let out_bound = udp(
        mac(1, 1),
        GW_A,
        a_ip(1, 2),
        Ipv4Addr::new(198, 51, 100, 7),
        10,
    );
    send(&mut sw, a1, &out_bound, &mut out);
    assert_eq!(out.ports(), &[host]);
    // The switch still answers pings and ARP for the gateway itself.
    let ping = echo_request(mac(1, 1), GW_A, a_ip(1, 2), a_ip(1, 1), 1);
    sw.handle_frame(now, a1, &ping, &mut out);
    assert_eq!(out.reply().map(|(p, _)| p), Some(a1));
    assert!(out.ports().is_empty());
    // Routing still wins over the host for connected networks.
    let routed = udp(mac(1, 1), GW_A, a_ip(1, 2), b_ip(1, 2), 10);
    send(&mut sw, a1, &routed, &mut out);
    assert_ne!(out.ports(), &[host]);
    // The host reaches containers, and containers on other nodes answer it through the peer.
    let from_host = udp(GW_A, mac(1, 1), a_ip(1, 1), a_ip(1, 2), 10);
    sw.handle_frame(now, host, &from_host, &mut out);
    assert_eq!(out.ports(), &[a1]);
    let answer = udp(mac(2, 9), GW_A, a_ip(2, 9), a_ip(1, 1), 10);
    let mut d = datagram(v(1), &answer);
    sw.handle_datagram(now, peer_addr(2), &mut d, &mut out);
    assert_eq!(out.ports(), &[host]);
    let _ = peer;

    // Removing the network removes its host port.
    sw.remove_network(v(1));
    assert_eq!(sw.host_port(v(1)), None);
    assert!(sw.routes(v(1)).is_empty());
}

#[test]
fn a_host_port_needs_a_gateway() {
    let mut sw = Switch::new(SwitchConfig::default());
    sw.add_network(NetworkConfig::new(v(3))).unwrap();
    assert_eq!(sw.add_host_port(v(3)), Err(SwitchError::NoGateway(v(3))));
    assert_eq!(sw.add_host_port(v(4)), Err(SwitchError::UnknownVni(v(4))));
}

#[test]
fn ttl_decrement_patches_the_checksum_for_every_header() {
    let mut frame = udp(mac(1, 1), GW_A, a_ip(1, 2), b_ip(1, 2), 10);
    for ttl in 2..=255u8 {
        for ident in [0u16, 0x00ff, 0xfeff, 0xffff, 0x1234] {
            let mut ip = Ipv4Packet::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..]);
            ip.set_ttl(ttl);
            ip.set_ident(ident);
            ip.fill_checksum();
            decrement_ttl(&mut frame, GW_B, mac(1, 2));
            let ip = ipv4(&frame);
            assert_eq!(ip.ttl(), ttl - 1);
            assert!(ip.verify_checksum(), "ttl {ttl} ident {ident:#x}");
        }
    }
}

#[test]
fn a_routed_syn_gets_new_macs_and_ttl_and_the_mss_both_networks_allow() {
    let (mut sw, a1, b1, _) = two_networks();
    sw.add_network(NetworkConfig {
        gateway: Some(Gateway {
            ip: b_ip(1, 1),
            mac: GW_B,
        }),
        mtu: 1400,
        ..NetworkConfig::new(v(2))
    })
    .unwrap();
    let mut syn = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(1, 1).0, GW_A.0)
        .ipv4(a_ip(1, 2).octets(), b_ip(1, 2).octets(), 64)
        .tcp(40000, 80, 1000, 64240)
        .syn()
        .options_raw(&[2, 4, 0x23, 0x00, 1, 1, 1, 1])
        .unwrap()
        .write(&mut syn, &[])
        .unwrap();
    let mut out = Output::new();
    let routed = send(&mut sw, a1, &syn, &mut out);
    assert_eq!(out.dropped(), None);
    assert_eq!(out.ports(), &[b1]);
    let eth = EthernetFrame::new_checked(&routed[..]).unwrap();
    assert_eq!(eth.src_addr(), GW_B);
    assert_eq!(eth.dst_addr(), mac(1, 2));
    let ip = ipv4(&routed);
    assert_eq!(ip.ttl(), 63);
    assert!(ip.verify_checksum());
    // The MSS fits the smaller MTU of the two (1400 - 40), with a valid TCP checksum.
    let parsed = SlicedPacket::from_ethernet(&routed).unwrap();
    let Some(etherparse::TransportSlice::Tcp(tcp)) = parsed.transport else {
        panic!("not TCP");
    };
    assert_eq!(&tcp.options()[..4], &[2, 4, 0x05, 0x50]);
    let Some(etherparse::NetSlice::Ipv4(v4)) = parsed.net else {
        panic!("not IPv4");
    };
    let expected = tcp
        .to_header()
        .calc_checksum_ipv4(&v4.header().to_header(), tcp.payload())
        .unwrap();
    assert_eq!(tcp.checksum(), expected);
    assert_eq!(sw.counters().routed, 1);
    assert_eq!(sw.counters().mss_clamped, 1);
}
