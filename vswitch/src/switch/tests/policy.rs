//! Policy and QoS on the frame path: which ports a frame crosses decides which rules apply,
//! replies pass on any replica, super-frames are charged once at their size on the wire.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::offload::VnetHdr;
use crate::policy::{
    BitRate, Compiled, Conntrack, Direction, Endpoint, LimitSpec, LogLimiter, PortQos, PortQosSpec,
    parse_toml,
};

/// web at port 0, db at port 1, other at port 2; db takes TCP 5432 from web only and sends
/// nothing of its own accord.
const POLICIES: &str = r#"
[[policy]]
name = "db"
selector = { app = "db" }
[[policy.ingress]]
peers = [{ selector = { app = "web" } }, { cidr = "10.244.2.0/24" }]
protocol = "tcp"
ports = [5432]
[[policy.egress]]
protocol = "tcp"
action = "deny"
"#;

fn endpoints(ports: &[PortId]) -> Vec<Endpoint> {
    ["web", "db", "other"]
        .iter()
        .enumerate()
        .map(|(i, app)| Endpoint {
            id: (*app).into(),
            labels: [("app".to_owned(), (*app).to_owned())].into(),
            ips: vec![IpAddr::V4(ip(0, 10 + i as u8))],
            local: Some(ports[i]),
        })
        .collect()
}

fn install(sw: &mut Switch, compiled: &Arc<Compiled>, ct: &Arc<Conntrack>, t: Instant) {
    sw.set_policy(Some(PolicyInstall {
        compiled: Arc::clone(compiled),
        conntrack: Arc::clone(ct),
        log: Arc::new(LogLimiter::new(10, 10, t)),
    }));
}

fn policed(n: usize) -> (Vec<Switch>, Vec<PortId>, Instant) {
    let t = Instant::now();
    let mut switches = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..n {
        let (mut sw, p) = one_switch(SwitchConfig::default(), 3);
        sw.add_peer(peer_addr(2), &[Vni::DEFAULT]);
        switches.push(sw);
        ports = p;
    }
    let compiled = Arc::new(Compiled::new(
        &parse_toml(POLICIES).unwrap(),
        &endpoints(&ports),
        t,
    ));
    let ct = Arc::new(Conntrack::default());
    for sw in &mut switches {
        install(sw, &compiled, &ct, t);
    }
    (switches, ports, t)
}

fn tcp(from: u8, to: u8, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(mac(0, from).0, mac(0, to).0)
        .ipv4(ip(0, 10 + from).octets(), ip(0, 10 + to).octets(), 64)
        .tcp(sport, dport, 1, 65535)
        .write(&mut out, b"payload")
        .unwrap();
    out[14 + 20 + 13] = flags;
    out
}

fn send(sw: &mut Switch, t: Instant, port: PortId, frame: &[u8]) -> Option<DropReason> {
    let mut out = Output::new();
    sw.handle_frame(t, port, frame, &mut out);
    out.dropped()
}

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;

#[test]
fn allowed_pairs_pass_others_are_denied_and_counted() {
    let (mut sws, p, t) = policed(1);
    let sw = &mut sws[0];
    assert_eq!(send(sw, t, p[0], &tcp(0, 1, 40000, 5432, SYN)), None);
    assert_eq!(
        send(sw, t, p[2], &tcp(2, 1, 40000, 5432, SYN)),
        Some(DropReason::PolicyDenied)
    );
    assert_eq!(
        send(sw, t, p[0], &tcp(0, 1, 40001, 22, SYN)),
        Some(DropReason::PolicyDenied)
    );
    // db opens nothing itself (its egress denies TCP)...
    assert_eq!(
        send(sw, t, p[1], &tcp(1, 0, 5432, 40005, SYN)),
        Some(DropReason::PolicyDenied)
    );
    // ...but answers the connection web opened.
    assert_eq!(send(sw, t, p[1], &tcp(1, 0, 5432, 40000, SYN_ACK)), None);
    // Unselected ports talk freely.
    assert_eq!(send(sw, t, p[2], &tcp(2, 0, 40000, 80, SYN)), None);
    assert_eq!(sw.counters().drops.get(DropReason::PolicyDenied), 3);
    assert_eq!(sw.port_stats(p[2]).unwrap().denied, 1);
    let denied: Vec<DeniedFlow> = sw.take_denied().collect();
    assert_eq!(denied.len(), 3);
    let seen: Vec<_> = denied
        .iter()
        .map(|d| (d.direction, d.rule.is_some()))
        .collect();
    assert_eq!(
        seen,
        [
            (Direction::Ingress, false),
            (Direction::Ingress, false),
            (Direction::Egress, true)
        ]
    );
    assert_eq!(sw.take_denied().count(), 0);
    // Without a policy, nothing is checked.
    sw.set_policy(None);
    assert!(!sw.enforcement.is_active());
    assert_eq!(send(sw, t, p[2], &tcp(2, 1, 40000, 5432, SYN)), None);
}

#[test]
fn replies_pass_on_another_replica() {
    let (mut sws, p, t) = policed(2);
    for n in 0..50u16 {
        let (a, b) = (usize::from(n % 2), usize::from(1 - n % 2));
        assert_eq!(
            send(&mut sws[a], t, p[0], &tcp(0, 1, 40000 + n, 5432, SYN)),
            None
        );
        assert_eq!(
            send(&mut sws[b], t, p[1], &tcp(1, 0, 5432, 40000 + n, SYN_ACK)),
            None,
            "reply of flow {n} on the other replica"
        );
    }
}

#[test]
fn frames_from_peers_meet_the_ingress_rules_of_their_port() {
    let (mut sws, p, t) = policed(1);
    let sw = &mut sws[0];
    let frame = |sip: Ipv4Addr, dport: u16| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(mac(2, 0).0, mac(0, 1).0)
            .ipv4(sip.octets(), ip(0, 11).octets(), 64)
            .tcp(40000, dport, 1, 65535)
            .write(&mut f, b"x")
            .unwrap();
        datagram(Vni::DEFAULT, &f)
    };
    let mut out = Output::new();
    sw.handle_datagram(t, peer_addr(2), &mut frame(ip(2, 10), 5432), &mut out);
    assert_eq!(out.dropped(), None);
    assert_eq!(out.ports(), &[p[1]]);
    sw.handle_datagram(t, peer_addr(2), &mut frame(ip(3, 10), 5432), &mut out);
    assert_eq!(out.dropped(), Some(DropReason::PolicyDenied));
    sw.handle_datagram(t, peer_addr(2), &mut frame(ip(2, 10), 80), &mut out);
    assert_eq!(out.dropped(), Some(DropReason::PolicyDenied));
    assert_eq!(sw.port_stats(p[1]).unwrap().denied, 2);
}

#[test]
fn a_super_frame_is_charged_once_at_its_size_on_the_wire() {
    let (mut sw, p) = one_switch(SwitchConfig::default(), 2);
    let t = Instant::now();
    let spec = PortQosSpec {
        egress: Some(LimitSpec {
            rate: BitRate::new(8_000_000).unwrap(),
            burst: 100_000,
            packets: None,
        }),
        ingress: None,
    };
    let qos = Arc::new(PortQos::from_spec(&spec, 1500, t).unwrap());
    sw.set_port_qos(p[0], Some(Arc::clone(&qos)));
    // 60 segments of 1000 bytes: 60 * 1054 = 63,240 bytes on the wire, within the burst once.
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(mac(0, 0).0, mac(0, 1).0)
        .ipv4(ip(0, 10).octets(), ip(0, 11).octets(), 64)
        .tcp(40000, 80, 1, 65535)
        .write(&mut frame, &vec![0x5a; 60_000])
        .unwrap();
    frame[14 + 20 + 13] = 0x10;
    let hdr = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: VnetHdr::GSO_TCPV4,
        gso_size: 1000,
        hdr_len: 54,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut read = hdr.emit().to_vec();
    read.extend_from_slice(&frame);
    let mut out = Output::new();
    sw.handle_tap_read(t, p[0], &read, &mut out);
    assert_eq!(out.dropped(), None);
    sw.handle_tap_read(t, p[0], &read, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::RateLimited));
    assert_eq!(qos.egress.as_ref().unwrap().dropped(), (1, 63_240));
    // 8 Mbit/s refills 63,240 bytes in about 63 ms.
    sw.handle_tap_read(t + Duration::from_millis(70), p[0], &read, &mut out);
    assert_eq!(out.dropped(), None);
    assert_eq!(sw.port_stats(p[0]).unwrap().limited, 1);
    // Frames into the port are not limited: only egress was set.
    assert_eq!(send(&mut sw, t, p[1], &tcp(1, 0, 80, 40000, 0x10)), None);
    // A removed port's buckets go with it.
    sw.remove_port(p[0]);
    assert!(!sw.enforcement.is_active());
}

#[test]
fn a_port_plugged_after_the_compilation_is_closed_until_the_next() {
    let (mut sws, p, t) = policed(1);
    let sw = &mut sws[0];
    let late = sw
        .add_port(port_cfg(Vni::DEFAULT, mac(0, 3), &[ip(0, 13)]))
        .unwrap();
    assert_eq!(
        send(sw, t, late, &tcp(3, 2, 40000, 80, SYN)),
        Some(DropReason::PolicyDenied)
    );
    assert_eq!(
        send(sw, t, p[2], &tcp(2, 3, 40000, 80, SYN)),
        Some(DropReason::PolicyDenied)
    );
    // ARP is port security's to judge, policy or not.
    let who_has = arp_request(mac(0, 3), ip(0, 13), ip(0, 12));
    assert_eq!(send(sw, t, late, &who_has), None);
    // Compiled with the new port (unselected), it is open.
    let mut eps = endpoints(&p);
    eps.push(Endpoint {
        id: "late".into(),
        labels: Default::default(),
        ips: vec![IpAddr::V4(ip(0, 13))],
        local: Some(late),
    });
    let compiled = Arc::new(Compiled::new(&parse_toml(POLICIES).unwrap(), &eps, t));
    install(sw, &compiled, &Arc::new(Conntrack::default()), t);
    assert_eq!(send(sw, t, late, &tcp(3, 2, 40000, 80, SYN)), None);
    assert_eq!(send(sw, t, p[2], &tcp(2, 3, 40001, 80, SYN)), None);
}

#[test]
fn floods_reach_only_the_ports_whose_ingress_allows_them() {
    let (mut sws, p, t) = policed(1);
    let sw = &mut sws[0];
    // To an unknown MAC: flooded to db and other; db's ingress takes only TCP 5432 from web.
    let mut f = Vec::new();
    PacketBuilder::ethernet2(mac(0, 0).0, mac(9, 9).0)
        .ipv4(ip(0, 10).octets(), ip(0, 99).octets(), 64)
        .tcp(40000, 80, 1, 65535)
        .write(&mut f, b"x")
        .unwrap();
    let mut out = Output::new();
    sw.handle_frame(t, p[0], &f, &mut out);
    assert_eq!(out.dropped(), None);
    assert_eq!(out.ports(), &[p[2]]);
    assert_eq!(out.transmits().len(), 1);
}

/// The drops policy and QoS cause, each counted once, from a switch of their own.
pub(super) fn policy_drops() -> Vec<DropReason> {
    let (mut sws, p, t) = policed(1);
    let sw = &mut sws[0];
    let spec = PortQosSpec {
        ingress: None,
        egress: Some(LimitSpec {
            rate: BitRate::new(1000).unwrap(),
            burst: 1500,
            packets: None,
        }),
    };
    sw.set_port_qos(
        p[2],
        Some(Arc::new(PortQos::from_spec(&spec, 1500, t).unwrap())),
    );
    let seen: Vec<DropReason> = [
        send(sw, t, p[0], &tcp(0, 1, 40000, 22, SYN)),
        send(
            sw,
            t,
            p[2],
            &udp(mac(0, 2), mac(0, 0), ip(0, 12), ip(0, 10), 1400),
        ),
        send(
            sw,
            t,
            p[2],
            &udp(mac(0, 2), mac(0, 0), ip(0, 12), ip(0, 10), 1400),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    for reason in DropReason::ALL {
        let want = u64::from(seen.contains(&reason));
        assert_eq!(sw.counters().drops.get(reason), want, "{reason}");
    }
    seen
}
