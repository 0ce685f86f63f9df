//! Hostile input, one test per hole: a container that writes its own virtio-net header or
//! forges addresses, and a peer that floods tables or sends oversized frames. Each asserts that
//! the frame goes nowhere (or is forwarded without harm) and that the drop is counted.

use std::time::{Duration, Instant};

use super::*;
use crate::fdb::FdbConfig;
use crate::offload::{MIN_GSO_SIZE, VNET_HDR_LEN, VnetHdr};

const NEEDS_CSUM: u8 = VnetHdr::F_NEEDS_CSUM;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;

/// A TCP/IPv4 frame with `flags` and `payload` bytes.
fn tcp4(
    src: MacAddr,
    dst: MacAddr,
    sip: Ipv4Addr,
    dip: Ipv4Addr,
    flags: u8,
    payload: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(sip.octets(), dip.octets(), 64)
        .tcp(40000, 80, 1, 65535)
        .write(&mut out, &vec![0x5a; payload])
        .unwrap();
    out[14 + 20 + 13] = flags;
    out
}

/// What the TAP hands over: the header, then the frame.
fn read(hdr: VnetHdr, frame: &[u8]) -> Vec<u8> {
    let mut r = hdr.emit().to_vec();
    r.extend_from_slice(frame);
    r
}

fn csum(start: u16, offset: u16) -> VnetHdr {
    VnetHdr {
        flags: NEEDS_CSUM,
        csum_start: start,
        csum_offset: offset,
        ..VnetHdr::default()
    }
}

fn tso(gso_type: u8, gso_size: u16) -> VnetHdr {
    VnetHdr {
        gso_type,
        gso_size,
        hdr_len: 54,
        ..csum(34, 16)
    }
}

/// A switch with two ports (10.244.0.10 and .11, the first also fd00::10) and one peer.
fn lab() -> (Switch, PortId, PortId, Instant) {
    let mut sw = Switch::new(SwitchConfig::default());
    sw.add_network(NetworkConfig {
        gateway: Some(gateway(0)),
        ..NetworkConfig::new(Vni::DEFAULT)
    })
    .unwrap();
    let a = sw
        .add_port(PortConfig {
            ips: vec![IpAddr::V4(ip(0, 10)), "fd00::10".parse().unwrap()],
            ..port_cfg(Vni::DEFAULT, mac(0, 0), &[])
        })
        .unwrap();
    let b = sw
        .add_port(port_cfg(Vni::DEFAULT, mac(0, 1), &[ip(0, 11)]))
        .unwrap();
    sw.add_peer(peer_addr(2), &[Vni::DEFAULT]);
    (sw, a, b, Instant::now())
}

fn dropped(sw: &mut Switch, port: PortId, t: Instant, bytes: &[u8]) -> Option<DropReason> {
    let mut out = Output::new();
    sw.handle_tap_read(t, port, bytes, &mut out);
    if out.dropped().is_some() {
        assert!(
            out.ports().is_empty() && out.transmits().is_empty(),
            "a dropped frame goes nowhere"
        );
        // The one answer a drop may have: the "too big" error to the sender.
        assert!(out.reply().is_none() || out.dropped() == Some(DropReason::OverMtu));
    }
    out.dropped()
}

#[test]
fn checksum_offsets_aimed_at_addresses_are_refused() {
    let (mut sw, a, b, t) = lab();
    let to_peer = mac(2, 0);
    let udp4 = udp(mac(0, 0), to_peer, ip(0, 10), ip(2, 10), 100);
    let udp6 = ipv6_udp(
        mac(0, 0),
        to_peer,
        "fd00::10".parse().unwrap(),
        "fd00::99".parse().unwrap(),
    );
    let arp = arp_request(mac(0, 0), ip(0, 10), ip(0, 11));
    let cases: [(&str, &[u8], u16, u16); 7] = [
        ("IPv4 source", &udp4, 26, 0),
        ("IPv4 source, second half", &udp4, 28, 0),
        ("IPv4 source via offset", &udp4, 14, 12),
        ("IPv6 source", &udp6, 22, 0),
        ("IPv6 source via the UDP start", &udp6, 54, 0xffe0),
        ("ARP sender address", &arp, 28, 0),
        ("source MAC", &udp4, 6, 0),
    ];
    for (what, frame, start, offset) in cases {
        assert_eq!(
            dropped(&mut sw, a, t, &read(csum(start, offset), frame)),
            Some(DropReason::BadOffload),
            "{what}"
        );
    }
    assert_eq!(sw.counters().drops.get(DropReason::BadOffload), 7);
    // The honest header for the same frames passes, rebuilt.
    let mut out = Output::new();
    sw.handle_tap_read(t, a, &read(csum(34, 6), &udp4), &mut out);
    assert_eq!(out.dropped(), None);
    assert_eq!(out.offload().hdr, csum(34, 6));
    let _ = b;
}

#[test]
fn gso_types_must_match_the_protocol() {
    let (mut sw, a, b, t) = lab();
    let tcp = tcp4(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), ACK, 3000);
    let udp4 = udp(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), 3000);
    for (frame, gso_type) in [
        (&tcp, VnetHdr::GSO_TCPV6),
        (&tcp, VnetHdr::GSO_UDP_L4),
        (&tcp, VnetHdr::GSO_UDP),
        (&tcp, 0x7f),
        (&udp4, VnetHdr::GSO_TCPV4),
        (&udp4, VnetHdr::GSO_UDP),
        (&udp4, VnetHdr::GSO_UDP_L4 | VnetHdr::GSO_ECN),
    ] {
        let csum_offset = if frame == &udp4 { 6 } else { 16 };
        let hdr = VnetHdr {
            csum_offset,
            ..tso(gso_type, 1000)
        };
        assert_eq!(
            dropped(&mut sw, a, t, &read(hdr, frame)),
            Some(DropReason::BadOffload),
            "type {gso_type:#x}"
        );
    }
    let mut out = Output::new();
    sw.handle_tap_read(t, a, &read(tso(VnetHdr::GSO_TCPV4, 1000), &tcp), &mut out);
    assert_eq!(out.ports(), &[b]);
}

#[test]
fn hdr_len_lies_do_not_move_the_mtu_check() {
    let (mut sw, a, _, t) = lab();
    let tcp = tcp4(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), ACK, 20_000);
    // Real headers are 54 bytes: 54 + 1410 = 14 + 1450 fills the MTU; one more does not fit,
    // whatever hdr_len claims.
    for lie in [0, 14, 54, 40_000] {
        let fits = VnetHdr {
            hdr_len: lie,
            ..tso(VnetHdr::GSO_TCPV4, 1410)
        };
        assert_eq!(dropped(&mut sw, a, t, &read(fits, &tcp)), None, "{lie}");
        let over = VnetHdr {
            hdr_len: lie,
            ..tso(VnetHdr::GSO_TCPV4, 1411)
        };
        assert_eq!(
            dropped(&mut sw, a, t, &read(over, &tcp)),
            Some(DropReason::OverMtu),
            "{lie}"
        );
    }
}

#[test]
fn gso_size_zero_and_tiny_are_refused() {
    let (mut sw, a, _, t) = lab();
    let tcp = tcp4(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), ACK, 60_000);
    for size in [0, 1, 8, MIN_GSO_SIZE - 1] {
        assert_eq!(
            dropped(&mut sw, a, t, &read(tso(VnetHdr::GSO_TCPV4, size), &tcp)),
            Some(DropReason::GsoTooSmall),
            "{size}"
        );
    }
    assert_eq!(
        dropped(
            &mut sw,
            a,
            t,
            &read(tso(VnetHdr::GSO_TCPV4, MIN_GSO_SIZE), &tcp)
        ),
        None
    );
}

#[test]
fn syn_rst_and_urg_never_ride_a_super_frame() {
    let (mut sw, a, _, t) = lab();
    for flags in [SYN, SYN | ACK, RST, RST | ACK, URG | ACK] {
        let tcp = tcp4(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), flags, 5000);
        assert_eq!(
            dropped(&mut sw, a, t, &read(tso(VnetHdr::GSO_TCPV4, 1000), &tcp)),
            Some(DropReason::TsoFlags),
            "{flags:#x}"
        );
        // The same flags on an ordinary segment are ordinary.
        let small = tcp4(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), flags, 10);
        assert_eq!(dropped(&mut sw, a, t, &read(csum(34, 16), &small)), None);
    }
}

#[test]
fn tap_reads_of_zero_to_twelve_bytes_are_runts() {
    let (mut sw, a, _, t) = lab();
    let frame = udp(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), 10);
    let whole = read(VnetHdr::default(), &frame);
    for n in 0..VNET_HDR_LEN + 14 {
        assert_eq!(
            dropped(&mut sw, a, t, &whole[..n]),
            Some(DropReason::Runt),
            "{n} bytes"
        );
    }
    assert_eq!(
        sw.counters().drops.get(DropReason::Runt),
        (VNET_HDR_LEN + 14) as u64
    );
    assert_eq!(sw.port(a).unwrap().stats.drops, (VNET_HDR_LEN + 14) as u64);
}

/// `frame` with VLAN tags of `tpids` inserted after the MACs.
fn tagged(frame: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (i, tpid) in tpids.iter().enumerate() {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

#[test]
fn tags_do_not_hide_a_forged_source() {
    let (mut sw, a, _, t) = lab();
    let forged = udp(mac(0, 0), mac(0, 1), ip(0, 11), ip(0, 12), 10);
    let honest = udp(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 12), 10);
    let forged_arp = arp_request(mac(0, 0), ip(0, 11), ip(0, 12));
    for tpids in [&[0x8100][..], &[0x88a8, 0x8100], &[0x9100, 0x8100, 0x8100]] {
        let mut out = Output::new();
        sw.handle_frame(t, a, &tagged(&forged, tpids), &mut out);
        assert_eq!(out.dropped(), Some(DropReason::SpoofedSource), "{tpids:x?}");
        sw.handle_frame(t, a, &tagged(&forged_arp, tpids), &mut out);
        assert_eq!(out.dropped(), Some(DropReason::SpoofedSource), "{tpids:x?}");
        sw.handle_frame(t, a, &tagged(&honest, tpids), &mut out);
        assert_eq!(out.dropped(), None, "{tpids:x?}");
    }
    let mut out = Output::new();
    sw.handle_frame(t, a, &tagged(&honest, &[0x8100; 5]), &mut out);
    assert_eq!(out.dropped(), Some(DropReason::Malformed));
}

/// An ICMPv6 message of `msg_type` with `target` (NS, NA, redirect layout) from `src`, behind
/// the extension headers in `ext` (each a next-header, then 8 bytes).
fn icmpv6(src: Ipv6Addr, msg_type: u8, target: Ipv6Addr, hop_by_hop: bool) -> Vec<u8> {
    let mut icmp = vec![msg_type, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    let mut payload = Vec::new();
    let next = if hop_by_hop {
        payload.extend_from_slice(&[58, 0, 5, 2, 0, 0, 1, 0]);
        0
    } else {
        58
    };
    payload.extend_from_slice(&icmp);
    let mut frame = MacAddr::BROADCAST.0.to_vec();
    frame.extend_from_slice(&mac(0, 0).0);
    frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[next, 255]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
    frame.extend_from_slice(&payload);
    frame
}

#[test]
fn router_advertisements_redirects_and_foreign_neighbor_advertisements_are_refused() {
    let (mut sw, a, _, t) = lab();
    let own: Ipv6Addr = "fd00::10".parse().unwrap();
    let link_local = mac(0, 0).link_local();
    let victim: Ipv6Addr = "fd00::11".parse().unwrap();
    let mut check = |frame: Vec<u8>, want: Option<DropReason>, what: &str| {
        let mut out = Output::new();
        sw.handle_frame(t, a, &frame, &mut out);
        assert_eq!(out.dropped(), want, "{what}");
    };
    for hidden in [false, true] {
        check(
            icmpv6(link_local, 134, own, hidden),
            Some(DropReason::RaGuard),
            "RA",
        );
        check(
            icmpv6(link_local, 137, own, hidden),
            Some(DropReason::RaGuard),
            "redirect",
        );
        check(
            icmpv6(own, 136, victim, hidden),
            Some(DropReason::SpoofedSource),
            "NA for another's address",
        );
        check(
            icmpv6(own, 136, own, hidden),
            None,
            "NA for its own address",
        );
        check(
            icmpv6(link_local, 136, link_local, hidden),
            None,
            "NA for its link-local",
        );
        check(icmpv6(Ipv6Addr::UNSPECIFIED, 135, own, hidden), None, "DAD");
    }
    let other_link_local: Ipv6Addr = "fe80::1".parse().unwrap();
    check(
        icmpv6(other_link_local, 135, own, false),
        Some(DropReason::SpoofedSource),
        "another link-local source",
    );
    check(
        icmpv6(victim, 135, own, false),
        Some(DropReason::SpoofedSource),
        "another global source",
    );
}

#[test]
fn a_port_without_addresses_of_a_family_cannot_send_from_one() {
    let (mut sw, _, b, t) = lab();
    // Port b has no IPv6 address: only its link-local and :: are its own.
    let mut out = Output::new();
    let from_global = ipv6_udp(
        mac(0, 1),
        mac(0, 0),
        "fd00::11".parse().unwrap(),
        "fd00::10".parse().unwrap(),
    );
    sw.handle_frame(t, b, &from_global, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::SpoofedSource));
    let from_link_local = ipv6_udp(
        mac(0, 1),
        mac(0, 0),
        mac(0, 1).link_local(),
        "fe80::1".parse().unwrap(),
    );
    sw.handle_frame(t, b, &from_link_local, &mut out);
    assert_eq!(out.dropped(), None);
}

#[test]
fn other_ethertypes_only_when_allowed() {
    let mut frame = udp(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), 10);
    frame[12..14].copy_from_slice(&0x88cc_u16.to_be_bytes());
    let (mut sw, a, _, t) = lab();
    let mut out = Output::new();
    sw.handle_frame(t, a, &frame, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::Ethertype));
    let mut sw = Switch::new(SwitchConfig {
        allowed_ethertypes: vec![0x88cc],
        ..SwitchConfig::default()
    });
    sw.add_network(NetworkConfig::new(Vni::DEFAULT)).unwrap();
    let a = sw
        .add_port(port_cfg(Vni::DEFAULT, mac(0, 0), &[ip(0, 10)]))
        .unwrap();
    let b = sw
        .add_port(port_cfg(Vni::DEFAULT, mac(0, 1), &[ip(0, 11)]))
        .unwrap();
    sw.handle_frame(t, a, &frame, &mut out);
    assert_eq!(out.ports(), &[b]);
}

#[test]
fn decapsulated_frames_over_the_mtu_are_dropped() {
    let (mut sw, a, _, t) = lab();
    let mut out = Output::new();
    for (payload, want) in [
        (1450 - 28, None),
        (1450 - 27, Some(DropReason::OverMtu)),
        (9000, Some(DropReason::OverMtu)),
    ] {
        let inner = udp(mac(2, 0), mac(0, 0), ip(2, 10), ip(0, 10), payload);
        sw.handle_datagram(
            t,
            peer_addr(2),
            &mut datagram(Vni::DEFAULT, &inner),
            &mut out,
        );
        assert_eq!(out.dropped(), want, "{payload}");
    }
    let _ = a;
}

#[test]
fn a_flood_of_macs_from_one_peer_leaves_room_for_the_others() {
    let (mut sw, a, _, t) = lab();
    sw.add_peer(peer_addr(3), &[Vni::DEFAULT]);
    let mut out = Output::new();
    for n in 0..65_536u32 {
        let b = n.to_be_bytes();
        let src = MacAddr([0x02, 0xaa, b[0], b[1], b[2], b[3]]);
        let inner = udp(src, MacAddr::BROADCAST, ip(2, 10), ip(2, 255), 1);
        sw.handle_datagram(
            t,
            peer_addr(2),
            &mut datagram(Vni::DEFAULT, &inner),
            &mut out,
        );
    }
    let peer_a = sw.peer_id(peer_addr(2)).unwrap();
    assert_eq!(sw.fdb().peer_len(peer_a), FdbConfig::default().max_per_peer);
    // Peer B's new MAC is learned and its frame delivered.
    let from_b = udp(mac(3, 7), mac(0, 0), ip(3, 7), ip(0, 10), 1);
    sw.handle_datagram(
        t,
        peer_addr(3),
        &mut datagram(Vni::DEFAULT, &from_b),
        &mut out,
    );
    assert_eq!(out.ports(), &[a]);
    let peer_b = sw.peer_id(peer_addr(3)).unwrap();
    assert_eq!(
        sw.fdb().lookup(Vni::DEFAULT, mac(3, 7)),
        Some(Location::Peer(peer_b))
    );
    // Even with the whole table full, a frame from a new MAC is forwarded, just not learned.
    let mut tiny = Switch::new(SwitchConfig {
        fdb: FdbConfig {
            max_entries: 4,
            ..FdbConfig::default()
        },
        ..SwitchConfig::default()
    });
    tiny.add_network(NetworkConfig::new(Vni::DEFAULT)).unwrap();
    let port = tiny
        .add_port(port_cfg(Vni::DEFAULT, mac(0, 0), &[ip(0, 10)]))
        .unwrap();
    tiny.add_peer(peer_addr(2), &[Vni::DEFAULT]);
    tiny.add_peer(peer_addr(3), &[Vni::DEFAULT]);
    for n in 0..10 {
        let inner = udp(mac(2, n), MacAddr::BROADCAST, ip(2, 10), ip(2, 255), 1);
        tiny.handle_datagram(
            t,
            peer_addr(2),
            &mut datagram(Vni::DEFAULT, &inner),
            &mut out,
        );
    }
    tiny.handle_datagram(
        t,
        peer_addr(3),
        &mut datagram(Vni::DEFAULT, &from_b),
        &mut out,
    );
    assert_eq!(out.ports(), &[port]);
    assert_eq!(tiny.counters().fdb_full, 7);
    assert_eq!(tiny.counters().drops.total(), 0);
}

#[test]
fn floods_and_arp_requests_from_a_port_are_rate_limited() {
    let config = SwitchConfig {
        flood_rate: 100,
        flood_burst: 10,
        ..SwitchConfig::default()
    };
    let (mut sw, p) = one_switch(config, 2);
    sw.add_peer(peer_addr(2), &[Vni::DEFAULT]);
    let t = Instant::now();
    let mut out = Output::new();
    let broadcast = udp(mac(0, 0), MacAddr::BROADCAST, ip(0, 10), ip(0, 255), 1);
    let arp = arp_request(mac(0, 0), ip(0, 10), ip(0, 99));
    let unicast = udp(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), 1);
    let mut passed = 0;
    for i in 0..50 {
        let frame = if i % 2 == 0 { &broadcast } else { &arp };
        sw.handle_frame(t, p[0], frame, &mut out);
        passed += usize::from(out.dropped().is_none());
    }
    assert_eq!(passed, 10);
    assert_eq!(sw.counters().drops.get(DropReason::FloodLimited), 40);
    // Known unicast is not a flood; another port has its own bucket; time refills.
    sw.handle_frame(t, p[0], &unicast, &mut out);
    assert_eq!(out.ports(), &[p[1]]);
    let other = udp(mac(0, 1), MacAddr::BROADCAST, ip(0, 11), ip(0, 255), 1);
    sw.handle_frame(t, p[1], &other, &mut out);
    assert_eq!(out.dropped(), None);
    sw.handle_frame(t + Duration::from_millis(10), p[0], &broadcast, &mut out);
    assert_eq!(out.dropped(), None);
}

#[test]
fn a_flooded_super_frame_costs_its_segments() {
    let config = SwitchConfig {
        flood_rate: 1,
        flood_burst: 100,
        ..SwitchConfig::default()
    };
    let (mut sw, p) = one_switch(config, 2);
    let t = Instant::now();
    // 60 segments to an unknown MAC: a flood costing 60 of the 100 tokens.
    let tcp = tcp4(mac(0, 0), mac(9, 9), ip(0, 10), ip(0, 99), ACK, 60 * 1000);
    assert_eq!(
        dropped(&mut sw, p[0], t, &read(tso(VnetHdr::GSO_TCPV4, 1000), &tcp)),
        None
    );
    assert_eq!(
        dropped(&mut sw, p[0], t, &read(tso(VnetHdr::GSO_TCPV4, 1000), &tcp)),
        Some(DropReason::FloodLimited)
    );
    // Unicast to a known port is no flood.
    let known = tcp4(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), ACK, 60 * 1000);
    assert_eq!(
        dropped(
            &mut sw,
            p[0],
            t,
            &read(tso(VnetHdr::GSO_TCPV4, 1000), &known)
        ),
        None
    );
}

#[test]
fn floods_reach_a_bounded_number_of_dynamic_peers() {
    let config = SwitchConfig {
        accept_unknown_peers: true,
        flood_dynamic_peers: 3,
        ..SwitchConfig::default()
    };
    let (mut sw, p) = one_switch(config, 1);
    sw.add_peer(peer_addr(200), &[Vni::DEFAULT]);
    let t = Instant::now();
    let mut out = Output::new();
    for host in 1..=20 {
        let inner = udp(mac(host, 1), mac(0, 0), ip(host, 1), ip(0, 10), 1);
        sw.handle_datagram(
            t,
            peer_addr(host),
            &mut datagram(Vni::DEFAULT, &inner),
            &mut out,
        );
    }
    assert_eq!(sw.peers().filter(|p| p.dynamic).count(), 20);
    let broadcast = udp(mac(0, 0), MacAddr::BROADCAST, ip(0, 10), ip(0, 255), 1);
    sw.handle_frame(t, p[0], &broadcast, &mut out);
    // The configured peer and three dynamic ones.
    assert_eq!(out.transmits().len(), 4);
    assert!(out.transmits().iter().any(|tx| tx.addr == peer_addr(200)));
    // A dynamic peer that becomes configured gets every flood.
    sw.add_peer(peer_addr(17), &[Vni::DEFAULT]);
    sw.handle_frame(t, p[0], &broadcast, &mut out);
    assert_eq!(out.transmits().len(), 5);
    assert!(out.transmits().iter().any(|tx| tx.addr == peer_addr(17)));
}

/// One drop for each reason of the offload and port-security checks, from `port` of a switch
/// built by [`one_switch`]; returns the reasons in the order produced.
pub(super) fn offload_and_security_drops(
    sw: &mut Switch,
    port: PortId,
    t: Instant,
) -> Vec<DropReason> {
    let me = (mac(0, 0), ip(0, 10));
    let tcp = tcp4(me.0, mac(0, 1), me.1, ip(0, 11), ACK, 5000);
    let syn = tcp4(me.0, mac(0, 1), me.1, ip(0, 11), SYN, 5000);
    let mut lldp = udp(me.0, mac(0, 1), me.1, ip(0, 11), 10);
    lldp[12..14].copy_from_slice(&0x88cc_u16.to_be_bytes());
    let ra = icmpv6(me.0.link_local(), 134, Ipv6Addr::LOCALHOST, false);
    let mut seen = vec![
        dropped(sw, port, t, &read(csum(26, 0), &tcp)),
        dropped(sw, port, t, &read(tso(VnetHdr::GSO_TCPV4, 1), &tcp)),
        dropped(sw, port, t, &read(tso(VnetHdr::GSO_TCPV4, 1000), &syn)),
        dropped(sw, port, t, &read(VnetHdr::default(), &lldp)),
        dropped(sw, port, t, &read(VnetHdr::default(), &ra)),
    ];
    let broadcast = udp(me.0, MacAddr::BROADCAST, me.1, ip(0, 255), 1);
    let limited = (0..100_000)
        .map(|_| dropped(sw, port, t, &read(VnetHdr::default(), &broadcast)))
        .find(Option::is_some)
        .flatten();
    seen.push(limited);
    seen.into_iter().map(|r| r.unwrap()).collect()
}

#[test]
fn a_peers_tcp_super_frame_is_taken_to_be_segmented() {
    let (mut sw, a, _, t) = lab();
    let mut out = Output::new();
    // A Linux VXLAN peer over a veth hands over TSO frames unsegmented.
    let big = tcp4(mac(2, 0), mac(0, 0), ip(2, 10), ip(0, 10), ACK, 20_000);
    sw.handle_datagram(t, peer_addr(2), &mut datagram(Vni::DEFAULT, &big), &mut out);
    assert_eq!(out.ports(), &[a]);
    let offload = *out.offload();
    assert!(offload.is_gso());
    assert_eq!(offload.segment_len, 14 + 1450);
    // SYN or RST on one is refused like any over-MTU frame.
    let syn = tcp4(mac(2, 0), mac(0, 0), ip(2, 10), ip(0, 10), SYN, 20_000);
    sw.handle_datagram(t, peer_addr(2), &mut datagram(Vni::DEFAULT, &syn), &mut out);
    assert_eq!(out.dropped(), Some(DropReason::OverMtu));
}
