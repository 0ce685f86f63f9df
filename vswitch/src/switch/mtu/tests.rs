//! "Too big" errors and MSS clamping, driven through the switch with frames built and checked by
//! etherparse (an independent parser and checksum).

#![allow(clippy::unwrap_used)]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use etherparse::{
    Icmpv4Type, Icmpv6Type, Ipv4HeaderSlice, NetSlice, PacketBuilder, SlicedPacket,
    TcpOptionElement, TransportSlice, icmpv4::DestUnreachableHeader,
};
use proptest::prelude::*;

use super::super::tests::{GW_MAC, datagram, gateway, ip, mac, one_switch, peer_addr};
use super::*;
use crate::offload::{VNET_HDR_LEN, VnetHdr, complete_checksum};
use crate::switch::{DropReason, NetworkConfig, Output, PortConfig, SwitchConfig};
use crate::wire::{MacAddr, Vni};

const MTU: usize = 1450;
const DF: u16 = 0x4000;
const MF: u16 = 0x2000;

fn v6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, n)
}

/// Sets an IPv4 frame's flags and fragment offset field, and its header checksum (etherparse's).
fn set_frag_field(frame: &mut [u8], value: u16) {
    frame[14 + 6..14 + 8].copy_from_slice(&value.to_be_bytes());
    frame[14 + 10..14 + 12].fill(0);
    let h = Ipv4HeaderSlice::from_slice(&frame[14..])
        .unwrap()
        .to_header();
    frame[14 + 10..14 + 12].copy_from_slice(&h.calc_header_checksum().to_be_bytes());
}

/// A TCP/IPv4 frame from 10.244.0.10 (port 0) to 10.244.0.11, DF set.
fn tcp4(payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(mac(0, 0).0, mac(0, 1).0)
        .ipv4(ip(0, 10).octets(), ip(0, 11).octets(), 64)
        .tcp(40000, 5201, 7, 65535)
        .ack(1)
        .write(&mut f, &vec![0x5a; payload])
        .unwrap();
    set_frag_field(&mut f, DF);
    f
}

fn udp4(src: Ipv4Addr, dst: Ipv4Addr, dst_mac: MacAddr, payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(mac(0, 0).0, dst_mac.0)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(40000, 5001)
        .write(&mut f, &vec![0xab; payload])
        .unwrap();
    f
}

/// A UDP/IPv6 frame from port 0's link-local address to `dst`.
fn udp6(dst: Ipv6Addr, dst_mac: MacAddr, payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(mac(0, 0).0, dst_mac.0)
        .ipv6(mac(0, 0).link_local().octets(), dst.octets(), 64)
        .udp(40000, 5001)
        .write(&mut f, &vec![0xab; payload])
        .unwrap();
    f
}

/// Checks a frag-needed answering `offending` with etherparse: addressing, both checksums,
/// the MTU and the quoted bytes. Returns the quoted bytes' length.
fn assert_frag_needed(reply: &[u8], offending: &[u8], to: (MacAddr, Ipv4Addr), mtu: u16) -> usize {
    assert_eq!(&reply[..6], &to.0.0, "to the sender's MAC");
    assert_eq!(&reply[6..12], &GW_MAC.0, "from the gateway's MAC");
    let p = SlicedPacket::from_ethernet(reply).unwrap();
    let Some(NetSlice::Ipv4(ipv4)) = p.net else {
        panic!("not IPv4");
    };
    let h = ipv4.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IP checksum");
    assert_eq!(h.source, gateway(0).ip.octets(), "from the gateway");
    assert_eq!(h.destination, to.1.octets());
    assert!(usize::from(h.total_len) <= 576);
    assert_eq!(usize::from(h.total_len), reply.len() - 14);
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMPv4");
    };
    assert_eq!(
        icmp.icmp_type(),
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: mtu
        })
    );
    let header = icmp.header();
    assert_eq!(
        header.checksum,
        header.icmp_type.calc_checksum(icmp.payload()),
        "ICMP checksum"
    );
    let quoted = icmp.payload();
    let ip_len = usize::from(u16::from_be_bytes([offending[16], offending[17]]));
    assert_eq!(quoted.len(), ip_len.min(576 - 28));
    assert!(quoted.len() >= 20 + 8);
    assert_eq!(quoted, &offending[14..14 + quoted.len()], "quoted bytes");
    quoted.len()
}

fn tcp_checksum_ok(frame: &[u8]) -> bool {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(TransportSlice::Tcp(tcp)) = p.transport else {
        panic!("not TCP");
    };
    let want = match p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            tcp.calc_checksum_ipv4(h.source(), h.destination()).unwrap()
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            tcp.calc_checksum_ipv6(h.source(), h.destination()).unwrap()
        }
        _ => panic!("not IP"),
    };
    tcp.checksum() == want
}

/// The MSS option etherparse reads in a TCP frame.
fn mss_of(frame: &[u8]) -> Option<u16> {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(TransportSlice::Tcp(tcp)) = p.transport else {
        panic!("not TCP");
    };
    tcp.options_iterator().find_map(|o| match o {
        Ok(TcpOptionElement::MaximumSegmentSize(mss)) => Some(mss),
        _ => None,
    })
}

#[test]
fn oversized_ipv4_df_tcp_gets_frag_needed_from_the_gateway() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    let mut out = Output::new();
    let t0 = Instant::now();
    let fits = tcp4(MTU - 40);
    sw.handle_frame(t0, p[0], &fits, &mut out);
    assert_eq!(out.ports(), &[p[1]]);
    assert!(out.reply().is_none());

    let over = tcp4(MTU - 40 + 1);
    sw.handle_frame(t0, p[0], &over, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::OverMtu));
    assert!(out.ports().is_empty() && out.transmits().is_empty());
    let (to, reply) = out.reply().unwrap();
    assert_eq!(to, p[0]);
    let quoted = assert_frag_needed(reply, &over, (mac(0, 0), ip(0, 10)), 1450);
    assert_eq!(quoted, 548, "as much as fits in 576 bytes");
    let c = sw.counters();
    assert_eq!((c.too_big_sent, c.drops.get(DropReason::OverMtu)), (1, 1));
    assert_eq!(sw.port_stats(p[0]).unwrap().tx_frames, 1);

    // Without DF: still dropped (the switch does not fragment), and answered.
    let mut no_df = over.clone();
    set_frag_field(&mut no_df, 0);
    sw.handle_frame(t0, p[0], &no_df, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::OverMtu));
    assert_frag_needed(out.reply().unwrap().1, &no_df, (mac(0, 0), ip(0, 10)), 1450);

    // A first fragment (MF, offset 0) is answered; the ones after it are not.
    let mut first = over.clone();
    set_frag_field(&mut first, MF);
    sw.handle_frame(t0, p[0], &first, &mut out);
    assert!(out.reply().is_some());
    let mut later = over;
    set_frag_field(&mut later, MF | 185);
    sw.handle_frame(t0, p[0], &later, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::OverMtu));
    assert!(out.is_empty());
    assert_eq!(sw.counters().too_big_sent, 3);
}

#[test]
fn tso_super_frame_with_oversized_segments_is_answered() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    let mut out = Output::new();
    let frame = tcp4(8000);
    let hdr = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: VnetHdr::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1460,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut read = hdr.emit().to_vec();
    read.extend_from_slice(&frame);
    sw.handle_tap_read(Instant::now(), p[0], &read, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::OverMtu));
    let reply = out.reply().unwrap().1;
    assert_frag_needed(reply, &frame, (mac(0, 0), ip(0, 10)), 1450);

    // Segments that fit pass.
    let fits = VnetHdr {
        gso_size: 1410,
        ..hdr
    };
    let mut read = fits.emit().to_vec();
    read.extend_from_slice(&frame);
    sw.handle_tap_read(Instant::now(), p[0], &read, &mut out);
    assert_eq!(out.ports(), &[p[1]]);
    assert_eq!(out.frame_range(), VNET_HDR_LEN..read.len());
}

#[test]
fn oversized_ipv6_gets_packet_too_big_from_the_gateway_link_local() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    let mut out = Output::new();
    let over = udp6(v6(11), mac(0, 1), MTU - 48 + 1);
    sw.handle_frame(Instant::now(), p[0], &over, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::OverMtu));
    let (to, reply) = out.reply().unwrap();
    assert_eq!(to, p[0]);
    assert_eq!(&reply[..6], &mac(0, 0).0);
    assert_eq!(&reply[6..12], &GW_MAC.0);
    let parsed = SlicedPacket::from_ethernet(reply).unwrap();
    let Some(NetSlice::Ipv6(ipv6)) = parsed.net else {
        panic!("not IPv6");
    };
    let h = ipv6.header().to_header();
    let from = GW_MAC.link_local();
    assert_eq!(h.source, from.octets());
    assert_eq!(h.destination, mac(0, 0).link_local().octets());
    assert_eq!(reply.len() - 14, 1280, "as much as fits in 1280 bytes");
    let Some(TransportSlice::Icmpv6(icmp)) = parsed.transport else {
        panic!("not ICMPv6");
    };
    assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1450 });
    assert!(
        icmp.is_checksum_valid(h.source, h.destination),
        "ICMPv6 checksum"
    );
    assert_eq!(icmp.payload(), &over[14..14 + 1232], "quoted bytes");
    assert_eq!(sw.counters().too_big_sent, 1);
}

#[test]
fn no_error_for_errors_multicast_fragments_strangers_or_without_gateway() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    let mut out = Output::new();
    let t0 = Instant::now();
    let port = p[0];
    let silent = |sw: &mut Switch, out: &mut Output, frame: &[u8], what: &str| {
        sw.handle_frame(t0, port, frame, out);
        assert_eq!(out.dropped(), Some(DropReason::OverMtu), "{what}");
        assert!(out.is_empty(), "{what} was answered");
    };
    // An ICMP error (a destination unreachable quoting something) too large to pass.
    let mut icmp_error = Vec::new();
    PacketBuilder::ethernet2(mac(0, 0).0, mac(0, 1).0)
        .ipv4(ip(0, 10).octets(), ip(0, 11).octets(), 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ))
        .write(&mut icmp_error, &[0u8; 1500])
        .unwrap();
    silent(&mut sw, &mut out, &icmp_error, "an ICMP error");
    // An echo request of the same size is a query, and is answered.
    let mut echo = Vec::new();
    PacketBuilder::ethernet2(mac(0, 0).0, mac(0, 1).0)
        .ipv4(ip(0, 10).octets(), ip(0, 11).octets(), 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut echo, &[0u8; 1500])
        .unwrap();
    sw.handle_frame(t0, p[0], &echo, &mut out);
    assert!(out.reply().is_some(), "an echo request");
    // ICMPv6 errors (packet too big itself) are not answered either.
    let mut icmp6_error = Vec::new();
    PacketBuilder::ethernet2(mac(0, 0).0, mac(0, 1).0)
        .ipv6(mac(0, 0).link_local().octets(), v6(11).octets(), 64)
        .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut icmp6_error, &[0u8; 1500])
        .unwrap();
    silent(&mut sw, &mut out, &icmp6_error, "an ICMPv6 error");
    // Multicast and broadcast, by MAC and by IP.
    let group = Ipv4Addr::new(239, 1, 1, 1);
    silent(
        &mut sw,
        &mut out,
        &udp4(ip(0, 10), group, MacAddr([1, 0, 0x5e, 1, 1, 1]), 1500),
        "multicast MAC",
    );
    silent(
        &mut sw,
        &mut out,
        &udp4(ip(0, 10), group, mac(0, 1), 1500),
        "multicast IP",
    );
    silent(
        &mut sw,
        &mut out,
        &udp4(ip(0, 10), Ipv4Addr::BROADCAST, MacAddr::BROADCAST, 1500),
        "broadcast",
    );
    silent(
        &mut sw,
        &mut out,
        &udp6(
            "ff02::1".parse().unwrap(),
            MacAddr([0x33, 0x33, 0, 0, 0, 1]),
            1500,
        ),
        "IPv6 multicast",
    );
    // A later IPv6 fragment (fragment header with a non-zero offset).
    let mut frag6 = udp6(v6(11), mac(0, 1), 1500);
    let ip6 = 14;
    frag6[ip6 + 6] = 44;
    let payload_len = u16::from_be_bytes([frag6[ip6 + 4], frag6[ip6 + 5]]);
    frag6[ip6 + 4..ip6 + 6].copy_from_slice(&(payload_len + 8).to_be_bytes());
    frag6.splice(54..54, [17, 0, 0x05, 0xa8, 0, 0, 0, 1]);
    silent(&mut sw, &mut out, &frag6, "a later IPv6 fragment");
    // An IP packet that fits, in a frame made too long by padding.
    let mut padded = udp4(ip(0, 10), ip(0, 11), mac(0, 1), 20);
    padded.resize(14 + MTU + 1, 0);
    silent(
        &mut sw,
        &mut out,
        &padded,
        "a frame over the MTU by its padding",
    );
    // A spoofed source: dropped as over the MTU, never answered to someone else.
    silent(
        &mut sw,
        &mut out,
        &udp4(Ipv4Addr::new(10, 244, 0, 99), ip(0, 11), mac(0, 1), 1500),
        "a spoofed source",
    );
    assert_eq!(sw.counters().too_big_sent, 1);

    // A network without a gateway sends nothing.
    let mut bare = Switch::new(SwitchConfig::default());
    bare.add_network(NetworkConfig::new(Vni::DEFAULT)).unwrap();
    let port = bare
        .add_port(PortConfig {
            ips: vec![IpAddr::V4(ip(0, 10))],
            ..PortConfig::new(Vni::DEFAULT, mac(0, 0))
        })
        .unwrap();
    bare.handle_frame(t0, port, &tcp4(1500), &mut out);
    assert_eq!(out.dropped(), Some(DropReason::OverMtu));
    assert!(out.is_empty());
}

#[test]
fn errors_are_rate_limited_per_port() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 3);
    let mut out = Output::new();
    let t0 = Instant::now();
    let over = tcp4(1500);
    let mut answered = 0;
    for _ in 0..TOO_BIG_BURST + 30 {
        sw.handle_frame(t0, p[0], &over, &mut out);
        answered += usize::from(out.reply().is_some());
    }
    assert_eq!(answered as u64, TOO_BIG_BURST);
    assert_eq!(sw.counters().too_big_limited, 30);
    // Another port has its own bucket.
    let mut other = over.clone();
    other[6..12].copy_from_slice(&mac(0, 2).0);
    other[14 + 12..14 + 16].copy_from_slice(&ip(0, 12).octets());
    set_frag_field(&mut other, DF);
    sw.handle_frame(t0, p[2], &other, &mut out);
    assert!(out.reply().is_some());
    // The bucket refills at its rate: one more per 1/rate seconds.
    let step = Duration::from_nanos(1_000_000_000 / TOO_BIG_RATE);
    sw.handle_frame(t0 + step, p[0], &over, &mut out);
    assert!(out.reply().is_some());
    sw.handle_frame(t0 + step, p[0], &over, &mut out);
    assert!(out.reply().is_none());
    // Over any stretch, no more than rate x time + burst.
    let mut sent = 0u64;
    let start = t0 + Duration::from_secs(10);
    for ms in 0..2000u64 {
        for _ in 0..5 {
            sw.handle_frame(start + Duration::from_millis(ms), p[0], &over, &mut out);
            sent += u64::from(out.reply().is_some());
        }
    }
    assert!(sent <= TOO_BIG_RATE * 2 + TOO_BIG_BURST, "{sent}");
    assert!(sent >= TOO_BIG_RATE * 2, "{sent}");
}

/// A switch on host 0 with a peer (host 1) on network 42.
fn switch_with_peer() -> (Switch, Vec<PortId>, PeerId) {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 1);
    let peer = sw.add_peer(peer_addr(1), &[Vni::DEFAULT]);
    (sw, p, peer)
}

#[test]
fn oversized_frame_from_a_peer_is_answered_through_the_tunnel() {
    let (mut sw, p, peer) = switch_with_peer();
    let mut out = Output::new();
    let t0 = Instant::now();
    // 10.244.1.10 behind the peer sends 1500 bytes of UDP to port 0: over our MTU of 1450.
    let mut inner = Vec::new();
    PacketBuilder::ethernet2(mac(1, 0).0, mac(0, 0).0)
        .ipv4(ip(1, 10).octets(), ip(0, 10).octets(), 64)
        .udp(1, 2)
        .write(&mut inner, &[7u8; 1472])
        .unwrap();
    let mut d = datagram(Vni::DEFAULT, &inner);
    sw.handle_datagram(t0, peer_addr(1), &mut d, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::OverMtu));
    assert!(out.ports().is_empty() && out.transmits().is_empty() && out.reply().is_none());
    let (transmit, reply) = out.peer_reply().unwrap();
    assert_eq!((transmit.peer, transmit.addr), (peer, peer_addr(1)));
    assert_eq!(
        out.vxlan_header(),
        &crate::tunnel::encap_header(Vni::DEFAULT)
    );
    assert!(!out.sealed());
    assert_frag_needed(reply, &inner, (mac(1, 0), ip(1, 10)), 1450);
    assert_eq!(sw.peer_stats(peer).unwrap().tx_datagrams, 1);
    assert_eq!(sw.counters().too_big_sent, 1);
    // A frame that fits goes to the port, with no reply.
    let mut fits = datagram(Vni::DEFAULT, &inner[..14 + 1450]);
    fits[8 + 14 + 2..8 + 14 + 4].copy_from_slice(&1450u16.to_be_bytes());
    sw.handle_datagram(t0, peer_addr(1), &mut fits, &mut out);
    assert!(out.peer_reply().is_none());
    // An unknown sender gets nothing.
    let mut d = datagram(Vni::DEFAULT, &inner);
    let stranger = "192.0.2.77:4789".parse().unwrap();
    sw.handle_datagram(t0, stranger, &mut d, &mut out);
    assert!(out.is_empty() && out.peer_reply().is_none());
    assert_eq!(p.len(), 1);
}

/// A TCP SYN (or SYN-ACK) from port 0 to port 1 with `options`, over IPv4 or IPv6.
fn syn(v6_: bool, options: &[u8], ack: bool) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(mac(0, 0).0, mac(0, 1).0);
    let builder = if v6_ {
        builder.ipv6(mac(0, 0).link_local().octets(), v6(11).octets(), 64)
    } else {
        builder.ipv4(ip(0, 10).octets(), ip(0, 11).octets(), 64)
    };
    let mut builder = builder.tcp(40000, 80, 1000, 64240).syn();
    if ack {
        builder = builder.ack(1);
    }
    let mut f = Vec::new();
    builder
        .options_raw(options)
        .unwrap()
        .write(&mut f, &[])
        .unwrap();
    f
}

/// Linux's SYN options: MSS, SACK permitted, timestamps, NOP, window scale.
fn linux_options(mss: u16) -> Vec<u8> {
    let [hi, lo] = mss.to_be_bytes();
    vec![
        2, 4, hi, lo, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
    ]
}

/// Handles `frame` from port 0 and returns it as it leaves, rewritten.
fn through(sw: &mut Switch, port: PortId, frame: &[u8]) -> (Vec<u8>, Output) {
    let mut out = Output::new();
    sw.handle_frame(Instant::now(), port, frame, &mut out);
    assert!(out.dropped().is_none());
    let mut sent = frame.to_vec();
    out.rewrite(&mut sent);
    (sent, out)
}

/// The bytes that differ between two frames of one length.
fn changed(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len());
    (0..a.len()).filter(|&i| a[i] != b[i]).collect()
}

#[test]
fn syn_mss_is_clamped_ipv4_and_ipv6() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    for (v6_, limit, tcp_at) in [(false, 1410, 34), (true, 1390, 54)] {
        for ack in [false, true] {
            let original = syn(v6_, &linux_options(8960), ack);
            assert!(tcp_checksum_ok(&original));
            let (sent, out) = through(&mut sw, p[0], &original);
            assert_eq!(out.ports(), &[p[1]]);
            assert_eq!(mss_of(&sent), Some(limit), "v6 {v6_} ack {ack}");
            assert!(tcp_checksum_ok(&sent), "checksum after the clamp");
            // Only the MSS value and the checksum changed.
            let allowed = [tcp_at + 16, tcp_at + 17, tcp_at + 22, tcp_at + 23];
            assert!(
                changed(&original, &sent)
                    .iter()
                    .all(|i| allowed.contains(i))
            );
        }
    }
    assert_eq!(sw.counters().mss_clamped, 4);
}

#[test]
fn syn_without_option_or_with_a_smaller_mss_is_untouched() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    for v6_ in [false, true] {
        for options in [vec![], linux_options(1000), linux_options(1390)] {
            let original = syn(v6_, &options, false);
            let (sent, out) = through(&mut sw, p[0], &original);
            assert_eq!(out.ports(), &[p[1]]);
            assert_eq!(sent, original);
        }
    }
    // Segments without SYN are never touched, whatever their options.
    let mut ack = syn(false, &linux_options(8960), true);
    ack[14 + 20 + 13] = 0x10;
    ack[14 + 20 + 16..14 + 20 + 18].fill(0);
    let (sent, _) = through(&mut sw, p[0], &ack);
    assert_eq!(sent, ack);
    assert_eq!(sw.counters().mss_clamped, 0);
}

#[test]
fn clamp_can_be_turned_off_per_network() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    sw.add_network(NetworkConfig {
        gateway: Some(gateway(0)),
        clamp_mss: false,
        ..NetworkConfig::new(Vni::DEFAULT)
    })
    .unwrap();
    let original = syn(false, &linux_options(8960), false);
    let (sent, _) = through(&mut sw, p[0], &original);
    assert_eq!(sent, original);
}

#[test]
fn partial_checksum_is_left_for_the_offload_to_complete() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    let mut frame = syn(false, &linux_options(8960), false);
    // What a container with checksum offload writes: the pseudo-header sum only.
    let pseudo = crate::wire::pseudo_header_v4(
        ip(0, 10).octets(),
        ip(0, 11).octets(),
        6,
        (frame.len() - 34) as u16,
    );
    let partial = crate::wire::fold(pseudo);
    frame[34 + 16..34 + 18].copy_from_slice(&partial.to_be_bytes());
    let hdr = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    let mut read = hdr.emit().to_vec();
    read.extend_from_slice(&frame);
    let mut out = Output::new();
    sw.handle_tap_read(Instant::now(), p[0], &read, &mut out);
    assert_eq!(out.ports(), &[p[1]]);
    out.rewrite(&mut read);
    let sent = &mut read[out.frame_range()];
    assert_eq!(mss_of(sent), Some(1410));
    assert_eq!(
        &sent[34 + 16..34 + 18],
        &partial.to_be_bytes(),
        "still partial"
    );
    complete_checksum(&out.offload().hdr, sent).unwrap();
    assert!(tcp_checksum_ok(sent));
}

#[test]
fn syn_from_a_peer_is_clamped_in_place() {
    let (mut sw, p, _) = switch_with_peer();
    let mut out = Output::new();
    let mut inner = Vec::new();
    PacketBuilder::ethernet2(mac(1, 0).0, mac(0, 0).0)
        .ipv4(ip(1, 10).octets(), ip(0, 10).octets(), 64)
        .tcp(40000, 80, 1, 64240)
        .syn()
        .options_raw(&linux_options(8960))
        .unwrap()
        .write(&mut inner, &[])
        .unwrap();
    for partial in [false, true] {
        let mut frame = inner.clone();
        if partial {
            // A Linux peer behind a veth leaves the pseudo-header sum for an offload.
            let pseudo = crate::wire::pseudo_header_v4(
                ip(1, 10).octets(),
                ip(0, 10).octets(),
                6,
                (frame.len() - 34) as u16,
            );
            frame[34 + 16..34 + 18].copy_from_slice(&crate::wire::fold(pseudo).to_be_bytes());
        }
        let mut d = datagram(Vni::DEFAULT, &frame);
        sw.handle_datagram(Instant::now(), peer_addr(1), &mut d, &mut out);
        assert_eq!(out.ports(), &[p[0]]);
        let sent = &d[out.frame_range()];
        assert_eq!(mss_of(sent), Some(1410));
        assert!(tcp_checksum_ok(sent), "partial {partial}");
    }
    assert_eq!(sw.counters().mss_clamped, 2);
}

/// One TCP option: a NOP, window scale, SACK permitted, a timestamp or an MSS.
fn option() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![1u8]),
        any::<u8>().prop_map(|s| vec![3, 3, s]),
        Just(vec![4, 2]),
        any::<[u8; 8]>().prop_map(|t| {
            let mut o = vec![8, 10];
            o.extend_from_slice(&t);
            o
        }),
    ]
}

proptest! {
    /// Any SYN the clamp touches keeps a valid checksum and every other byte.
    #[test]
    fn clamped_syns_keep_their_checksum_and_other_options(
        v6_ in any::<bool>(),
        ack in any::<bool>(),
        before in proptest::collection::vec(option(), 0..4),
        after in proptest::collection::vec(option(), 0..4),
        mss in any::<u16>(),
        with_mss in any::<bool>(),
        mtu in 1280u16..9000,
    ) {
        let mut options: Vec<u8> = before.concat();
        let mss_at = options.len();
        if with_mss {
            options.extend_from_slice(&[2, 4]);
            options.extend_from_slice(&mss.to_be_bytes());
        }
        options.extend(after.concat());
        options.truncate(40);
        let with_mss = with_mss && mss_at + 4 <= options.len();
        while options.len() % 4 != 0 {
            options.push(0);
        }
        let original = syn(v6_, &options, ack);
        let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
        sw.add_network(NetworkConfig {
            mtu,
            gateway: Some(gateway(0)),
            ..NetworkConfig::new(Vni::DEFAULT)
        })
        .unwrap();
        let (sent, _) = through(&mut sw, p[0], &original);
        prop_assert!(tcp_checksum_ok(&sent));
        let limit = mtu - if v6_ { 60 } else { 40 };
        let tcp_at = if v6_ { 54 } else { 34 };
        if with_mss && mss > limit {
            prop_assert_eq!(mss_of(&sent), Some(limit));
            let value_at = tcp_at + 20 + mss_at + 2;
            let allowed = [tcp_at + 16, tcp_at + 17, value_at, value_at + 1];
            prop_assert!(changed(&original, &sent).iter().all(|i| allowed.contains(i)));
        } else {
            prop_assert_eq!(&sent, &original);
        }
    }
}
