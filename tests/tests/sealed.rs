//! Sealed networks end to end: two `vswitchd` hosts carry a sealed network beside a plain one.
//! Verified TCP crosses the sealed network; a capture on the underlay finds a marker payload in
//! clear on the plain network and never on the sealed one, from the first datagram after
//! attach; replayed, tampered and plain datagrams sent at the sealed network get nothing
//! through and show in the drop counters; a restarted daemon is talking again within seconds.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use vswitch::control::api::{Reply, Request};
use vswitch_e2e::{Capture, NetworkSpec, drops, reaches, tcp_transfer, vswitch_lab};

const SEALED: NetworkSpec<'static> = NetworkSpec {
    name: "sealed",
    vni: 43,
    subnet: Ipv4Addr::new(10, 245, 0, 0),
    sealed: true,
};

const MARKER: &[u8] = b"SEALED-NETWORK-MARKER-0123456789";
const PLAIN_MARKER: &[u8] = b"PLAIN-NETWORK-MARKER-0123456789.";

/// Sends `count` UDP datagrams carrying `marker` from `from` to `to`:9.
fn send_marker(from: &netns::NetNs, to: Ipv4Addr, marker: &[u8], count: usize) {
    let socket = from
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("entering the namespace")
        .expect("binding");
    for _ in 0..count {
        let _ = socket.send_to(marker, (to, 9));
    }
}

/// Captured packets containing `needle`.
fn count(pcap: &[u8], needle: &[u8]) -> usize {
    pcap.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Sealed datagrams `source` sent in a capture (UDP payloads starting with the sealed flags
/// byte).
fn sealed_datagrams(pcap: &[u8], source: Ipv4Addr) -> Vec<Vec<u8>> {
    let mut at = 24;
    let mut out = Vec::new();
    while let Some(record) = pcap.get(at..at + 16) {
        let caplen = u32::from_le_bytes([record[8], record[9], record[10], record[11]]) as usize;
        let Some(packet) = pcap.get(at + 16..at + 16 + caplen) else {
            break;
        };
        at += 16 + caplen;
        if packet.get(12..14) != Some(&[0x08, 0x00])
            || packet.get(23) != Some(&17)
            || packet.get(26..30) != Some(&source.octets())
        {
            continue;
        }
        let udp = 14 + usize::from(packet[14] & 0x0f) * 4;
        let len = packet
            .get(udp + 4..udp + 6)
            .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
        if let Some(payload) = packet.get(udp + 8..udp + len)
            && payload.first() == Some(&0x48)
        {
            out.push(payload.to_vec());
        }
    }
    out
}

#[test]
fn sealed_and_plain_side_by_side() {
    let mut lab = vswitch_lab("se", 2, &[NetworkSpec::DEFAULT, SEALED], "");
    let capture = Capture::start(&lab.hosts[1].ns, &lab.dir().join("underlay.pcap"));
    let a = lab.add_container(0, "sealed", None).unwrap();
    let b = lab.add_container(1, "sealed", None).unwrap();
    // From the first frames after attach: the session was made when the daemons started.
    send_marker(&lab.containers[a].ns, lab.containers[b].ip, MARKER, 20);
    let plain_a = lab.add_container(0, "default", None).unwrap();
    let plain_b = lab.add_container(1, "default", None).unwrap();
    let c = &lab.containers;
    assert!(reaches(&c[plain_a].ns, c[plain_b].ip));
    send_marker(&c[plain_a].ns, c[plain_b].ip, PLAIN_MARKER, 20);
    assert!(reaches(&c[a].ns, c[b].ip), "sealed network carries ICMP");
    tcp_transfer(&c[a].ns, &c[b].ns, c[b].ip, 4 << 20);
    tcp_transfer(&c[b].ns, &c[a].ns, c[a].ip, 4 << 20);
    send_marker(&c[a].ns, c[b].ip, MARKER, 20);
    assert!(reaches(&c[a].ns, c[b].ip));
    let pcap = capture.finish();
    let seen = count(&pcap, PLAIN_MARKER);
    assert!(
        seen >= 20,
        "the plain network shows its marker {seen} times"
    );
    assert_eq!(
        count(&pcap, MARKER),
        0,
        "the sealed network's marker in clear"
    );
    let sealed = sealed_datagrams(&pcap, lab.hosts[0].address);
    assert!(
        sealed.len() > 100,
        "sealed datagrams on the wire: {}",
        sealed.len()
    );

    // Replays of captured sealed datagrams, from the peer's address and many source ports (so
    // they reach every worker's socket); copies with a new counter (past the replay check)
    // and one flipped bit; and a plain datagram on the sealed VNI: nothing gets through, each
    // is counted.
    // A replay is refused as `replayed`, or as `no_session` when it was sealed under a session
    // since retired (the first handshakes of two daemons starting together make several), or
    // as `unauthentic` when the capture held it joined to others in one GSO packet.
    let refusals = |lab: &vswitch_e2e::Lab| {
        ["replayed", "no_session", "unauthentic"]
            .iter()
            .map(|r| drops(lab, 1, r))
            .sum::<u64>()
    };
    let before = (
        refusals(&lab),
        drops(&lab, 1, "unauthentic"),
        drops(&lab, 1, "unsealed"),
    );
    let to = SocketAddr::new(lab.hosts[1].address.into(), 4789);
    let replays = sealed.iter().take(40).count();
    for (i, d) in sealed.iter().take(40).enumerate() {
        let from = SocketAddr::new(lab.hosts[0].address.into(), 0);
        let socket = lab.hosts[0]
            .ns
            .run(|| UdpSocket::bind(from))
            .expect("entering the namespace")
            .expect("binding");
        // Twice: should the original have been lost on the way, the first copy is no replay.
        socket.send_to(d, to).expect("replaying");
        socket.send_to(d, to).expect("replaying");
        let mut bad = d.clone();
        bad[13] ^= 0x40;
        let at = 20 + (i * 7) % (bad.len() - 20);
        bad[at] ^= 0x01;
        socket.send_to(&bad, to).expect("sending a tampered copy");
    }
    let mut plain =
        vswitch::tunnel::encap_header(vswitch::wire::Vni::try_from(43).unwrap()).to_vec();
    plain.extend_from_slice(&[0xff; 6]);
    plain.extend_from_slice(&c[a].mac.0);
    plain.extend_from_slice(&[0x08, 0x06]);
    plain.extend_from_slice(&[0u8; 28]);
    lab.hosts[0]
        .ns
        .run(|| {
            UdpSocket::bind(SocketAddr::new(lab.hosts[0].address.into(), 0))
                .and_then(|s| s.send_to(&plain, to))
        })
        .expect("entering the namespace")
        .expect("sending a plain datagram");
    // Counters reach queries through the workers' snapshots: give them a moment.
    // At least every second copy of a replay and every forged copy.
    let want = 2 * replays as u64;
    let started = Instant::now();
    let counted = loop {
        let after = (
            refusals(&lab) - before.0,
            drops(&lab, 1, "unauthentic") - before.1,
            drops(&lab, 1, "unsealed") - before.2,
        );
        if (after.0 >= want && after.2 == 1) || started.elapsed() > Duration::from_secs(3) {
            break after;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        (want..=want + replays as u64).contains(&counted.0),
        "every replay and forged copy refused: {} of at least {want}",
        counted.0
    );
    assert!(counted.1 >= replays as u64, "every forged copy unauthentic");
    assert_eq!(counted.2, 1, "the plain datagram refused");
}
#[test]
fn a_restarted_daemon_talks_again_within_seconds() {
    let mut lab = vswitch_lab("sr", 2, &[SEALED], "");
    let a = lab.add_container(0, "sealed", None).unwrap();
    let b = lab.add_container(1, "sealed", None).unwrap();
    assert!(reaches(&lab.containers[a].ns, lab.containers[b].ip));
    match lab.call(0, &Request::Peers).expect("peers") {
        Reply::Peers(peers) => {
            let session = peers[0].session.clone().expect("a session");
            assert_eq!(session.state, "up");
            assert!(session.handshakes >= 1);
        }
        other => panic!("unexpected reply {other:?}"),
    }
    for host in [1, 0] {
        lab.stop_vswitchd(host, true).expect("killing vswitchd");
        lab.spawn_vswitchd(host).expect("restarting vswitchd");
        let started = Instant::now();
        let c = &lab.containers;
        while !reaches(&c[a].ns, c[b].ip) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no traffic 10 s after restarting host {host}"
            );
        }
        tcp_transfer(&c[a].ns, &c[b].ns, c[b].ip, 1 << 20);
    }
}
