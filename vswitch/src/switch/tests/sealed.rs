//! Sealed networks in the core: two switches with keys from a real Noise handshake exchange
//! frames only sealed; plain, tampered, truncated, replayed and unknown-session datagrams are
//! dropped and counted; frames wait for the session instead of leaving in clear.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto::{Handshaker, Role, SessionKeys, StaticSecret};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::tunnel::{Kind, SEALED_HEADER_LEN, SEALED_TAG_LEN, classify};

/// Two handshakers that completed a handshake: (A's keys, B's keys).
pub(super) fn session_pair(seed: u64) -> (SessionKeys, SessionKeys) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let now = Instant::now();
    let unix = Duration::from_secs(1_800_000_000);
    let a_secret = StaticSecret::generate(&mut rng);
    let b_secret = StaticSecret::generate(&mut rng);
    let (a_pub, b_pub) = (a_secret.public_key(), b_secret.public_key());
    let mut a = Handshaker::new(a_secret, now, unix).unwrap();
    let mut b = Handshaker::new(b_secret, now, unix).unwrap();
    let b_at_a = a.add_peer(b_pub, None).unwrap();
    b.add_peer(a_pub, None).unwrap();
    a.connect(b_at_a, now, &mut rng).unwrap();
    let init = a.poll_transmit().unwrap();
    let from_a = peer_addr(1);
    let at_b = b
        .handle_message(now, from_a, &init.bytes, &mut rng)
        .unwrap();
    let response = at_b.reply.unwrap();
    let b_keys = at_b.established.unwrap();
    let at_a = a
        .handle_message(now, peer_addr(2), &response, &mut rng)
        .unwrap();
    (at_a.established.unwrap(), b_keys)
}

fn install(sw: &mut Switch, peer: SocketAddr, keys: &SessionKeys, lane: usize) {
    let installed = sw.install_session(SessionInstall {
        peer,
        local_index: keys.local_index,
        remote_index: keys.remote_index,
        sealer: keys.sealer(lane).unwrap(),
        send_now: keys.role == Role::Initiator,
        opener: keys.opener().unwrap(),
        replay: Arc::new(keys.replay()),
    });
    assert!(installed);
}

/// A sealed network on VNI 42 with one port (host `host`), and the other host as a peer.
fn sealed_switch(host: u8, other: u8) -> (Switch, PortId, PeerId) {
    let mut sw = Switch::new(SwitchConfig::default());
    sw.add_network(NetworkConfig {
        sealed: true,
        ..NetworkConfig::new(Vni::DEFAULT)
    })
    .unwrap();
    let port = sw
        .add_port(port_cfg(Vni::DEFAULT, mac(host, 1), &[ip(host, 10)]))
        .unwrap();
    let peer = sw.add_peer(peer_addr(other), &[Vni::DEFAULT]);
    (sw, port, peer)
}

/// Two sealed switches, A (host 1, the initiator) and B (host 2), with a session between them;
/// B seals on counter lane `b_lane`.
struct Pair {
    a: Switch,
    a_port: PortId,
    b_at_a: PeerId,
    b: Switch,
    b_port: PortId,
    a_at_b: PeerId,
    a_keys: SessionKeys,
    b_keys: SessionKeys,
}

fn sealed_pair(seed: u64, b_lane: usize) -> Pair {
    let (a_keys, b_keys) = session_pair(seed);
    let (mut a, a_port, b_at_a) = sealed_switch(1, 2);
    let (mut b, b_port, a_at_b) = sealed_switch(2, 1);
    install(&mut a, peer_addr(2), &a_keys, 0);
    install(&mut b, peer_addr(1), &b_keys, b_lane);
    Pair {
        a,
        a_port,
        b_at_a,
        b,
        b_port,
        a_at_b,
        a_keys,
        b_keys,
    }
}

/// Seals `frame` as the worker does: header room, frame, tag room.
fn sealed_datagram(sw: &mut Switch, peer: PeerId, frame: &[u8]) -> Result<Vec<u8>, DropReason> {
    let mut d = vec![0u8; SEALED_HEADER_LEN];
    d.extend_from_slice(frame);
    d.resize(d.len() + SEALED_TAG_LEN, 0);
    sw.seal(peer, Vni::DEFAULT, &mut d)?;
    Ok(d)
}

#[test]
fn frames_cross_only_sealed_and_open_on_the_other_side() {
    let Pair {
        mut a,
        a_port,
        b_at_a,
        mut b,
        b_port,
        a_at_b,
        ..
    } = sealed_pair(1, 3);
    let t = Instant::now();
    let mut out = Output::new();
    let frame = udp(mac(1, 1), mac(2, 1), ip(1, 10), ip(2, 10), 300);
    a.handle_frame(t, a_port, &frame, &mut out);
    assert!(out.sealed());
    assert_eq!(out.transmits().len(), 1);
    let mut d = sealed_datagram(&mut a, b_at_a, &frame).unwrap();
    assert_eq!(classify(&d), Kind::Sealed);
    assert!(
        !d.windows(16).any(|w| frame.windows(16).any(|f| f == w)),
        "no run of the frame is in clear"
    );
    b.handle_datagram(t, peer_addr(1), &mut d, &mut out);
    assert_eq!(out.dropped(), None);
    assert_eq!(out.ports(), &[b_port]);
    assert_eq!(&d[out.frame_range()], &frame[..]);
    // B (the responder) seals back once A's first datagram opened under the session.
    let reply = udp(mac(2, 1), mac(1, 1), ip(2, 10), ip(1, 10), 30);
    let mut back = sealed_datagram(&mut b, a_at_b, &reply).unwrap();
    a.handle_datagram(t, peer_addr(2), &mut back, &mut out);
    assert_eq!(out.ports(), &[a_port]);
    assert_eq!(&back[out.frame_range()], &reply[..]);
}

#[test]
fn hostile_datagrams_are_dropped_by_reason() {
    let Pair {
        mut a,
        b_at_a,
        mut b,
        a_at_b,
        b_keys,
        ..
    } = sealed_pair(2, 0);
    let t = Instant::now();
    let mut out = Output::new();
    let frame = udp(mac(1, 1), mac(2, 1), ip(1, 10), ip(2, 10), 100);
    let good = sealed_datagram(&mut a, b_at_a, &frame).unwrap();
    let mut expect = |bytes: &mut Vec<u8>, reason: Option<DropReason>, what: &str| {
        b.handle_datagram(t, peer_addr(1), bytes, &mut out);
        assert_eq!(out.dropped(), reason, "{what}");
    };
    // Every flipped bit, in the header, the ciphertext or the tag, fails to authenticate.
    for at in [0, 6, 11, 19, 20, 40, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        let want = match at {
            0 => Some(DropReason::Unsealed),
            8..=11 => Some(DropReason::NoSession),
            _ => Some(DropReason::Unauthentic),
        };
        expect(&mut bad, want, &format!("bit flipped at {at}"));
    }
    expect(
        &mut good[..good.len() - 1].to_vec(),
        Some(DropReason::Unauthentic),
        "truncated",
    );
    expect(
        &mut good[..30].to_vec(),
        Some(DropReason::Runt),
        "cut short",
    );
    expect(&mut good.clone(), None, "the real one");
    expect(&mut good.clone(), Some(DropReason::Replayed), "replayed");
    expect(
        &mut datagram(Vni::DEFAULT, &frame),
        Some(DropReason::Unsealed),
        "plain",
    );
    // Keys of another session (a node with the wrong key) open nothing.
    let (other, _) = session_pair(3);
    let (mut c, _, b_at_c) = sealed_switch(1, 2);
    install(&mut c, peer_addr(2), &other, 0);
    // (Its first counter, 0, was accepted from A already: take the next.)
    let _ = sealed_datagram(&mut c, b_at_c, &frame).unwrap();
    let mut forged = sealed_datagram(&mut c, b_at_c, &frame).unwrap();
    forged[8..12].copy_from_slice(&b_keys.local_index.to_be_bytes());
    expect(
        &mut forged,
        Some(DropReason::Unauthentic),
        "another session's key",
    );
    // The peer they came from counts them by reason too (`vswitch peers`).
    let reasons = b.peer_stats(a_at_b).unwrap().drop_reasons;
    assert_eq!(reasons.get(DropReason::Replayed), 1);
    assert_eq!(reasons.get(DropReason::Unauthentic), 7);
    assert_eq!(reasons.get(DropReason::Runt), 1);
    assert_eq!(reasons.total(), b.peer_stats(a_at_b).unwrap().drops);
}

#[test]
fn frames_wait_for_the_session_instead_of_leaving_in_clear() {
    let (a_keys, _) = session_pair(4);
    let (mut a, a_port, b_at_a) = sealed_switch(1, 2);
    let t = Instant::now();
    let mut out = Output::new();
    let frame = udp(mac(1, 1), MacAddr::BROADCAST, ip(1, 10), ip(1, 255), 10);
    a.handle_frame(t, a_port, &frame, &mut out);
    let mut d = vec![0u8; SEALED_HEADER_LEN + frame.len() + SEALED_TAG_LEN];
    d[SEALED_HEADER_LEN..SEALED_HEADER_LEN + frame.len()].copy_from_slice(&frame);
    assert_eq!(
        a.seal(b_at_a, Vni::DEFAULT, &mut d),
        Err(DropReason::NoSession)
    );
    for _ in 0..HELD_FRAMES + 5 {
        a.hold(b_at_a, Vni::DEFAULT, &frame);
    }
    let mut wanted = Vec::new();
    a.take_handshakes_wanted(&mut wanted);
    assert_eq!(wanted, vec![peer_addr(2)], "one handshake asked for");
    assert_eq!(a.counters().drops.get(DropReason::NoSession), 5);
    install(&mut a, peer_addr(2), &a_keys, 0);
    let held = a.take_held(b_at_a);
    assert_eq!(held.len(), HELD_FRAMES);
    assert!(
        held.iter()
            .all(|(vni, f)| *vni == Vni::DEFAULT && f == &frame)
    );
    assert!(sealed_datagram(&mut a, b_at_a, &frame).is_ok());
}

#[test]
fn a_retired_session_opens_nothing() {
    let Pair {
        mut a,
        b_at_a,
        mut b,
        a_keys,
        b_keys,
        ..
    } = sealed_pair(5, 0);
    let frame = udp(mac(1, 1), mac(2, 1), ip(1, 10), ip(2, 10), 10);
    let mut d = sealed_datagram(&mut a, b_at_a, &frame).unwrap();
    b.retire_session(b_keys.local_index);
    let mut out = Output::new();
    b.handle_datagram(Instant::now(), peer_addr(1), &mut d, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::NoSession));
    a.retire_session(a_keys.local_index);
    assert!(!a.has_session(b_at_a));
}

/// One drop for each sealing reason, on a fresh pair of sealed switches.
pub(super) fn sealing_drops() -> Vec<DropReason> {
    let Pair {
        mut a,
        b_at_a,
        mut b,
        ..
    } = sealed_pair(6, 0);
    let t = Instant::now();
    let mut out = Output::new();
    let frame = udp(mac(1, 1), mac(2, 1), ip(1, 10), ip(2, 10), 10);
    let good = sealed_datagram(&mut a, b_at_a, &frame).unwrap();
    let mut tampered = good.clone();
    tampered[30] ^= 1;
    let mut unknown = good.clone();
    unknown[8] ^= 1;
    let cases = [
        datagram(Vni::DEFAULT, &frame),
        unknown,
        tampered,
        good.clone(),
        good,
    ];
    cases
        .into_iter()
        .filter_map(|mut d| {
            b.handle_datagram(t, peer_addr(1), &mut d, &mut out);
            out.dropped()
        })
        .collect()
}

#[test]
fn too_big_errors_go_back_sealed() {
    let Pair {
        mut a,
        a_port,
        b_at_a,
        mut b,
        a_at_b,
        ..
    } = sealed_pair(5, 1);
    // B's network is smaller than A's and has a gateway to answer from.
    b.add_network(NetworkConfig {
        sealed: true,
        mtu: 1400,
        gateway: Some(gateway(2)),
        ..NetworkConfig::new(Vni::DEFAULT)
    })
    .unwrap();
    let t = Instant::now();
    let mut out = Output::new();
    let frame = udp(mac(1, 1), mac(2, 1), ip(1, 10), ip(2, 10), 1422);
    a.handle_frame(t, a_port, &frame, &mut out);
    assert_eq!(out.transmits().len(), 1, "fits A's MTU");
    let mut d = sealed_datagram(&mut a, b_at_a, &frame).unwrap();
    b.handle_datagram(t, peer_addr(1), &mut d, &mut out);
    assert_eq!(out.dropped(), Some(DropReason::OverMtu));
    let (transmit, error) = out.peer_reply().unwrap();
    assert_eq!(transmit.peer, a_at_b);
    assert!(out.sealed(), "the error leaves sealed");
    assert_eq!(out.vni(), Vni::DEFAULT);
    // Sealed as the worker does, it opens at A and reaches the sender's port.
    let error = error.to_vec();
    let mut back = sealed_datagram(&mut b, a_at_b, &error).unwrap();
    a.handle_datagram(t, peer_addr(2), &mut back, &mut out);
    assert_eq!(out.ports(), &[a_port]);
    let delivered = &back[out.frame_range()];
    assert_eq!(delivered, &error[..]);
    let ip4 = Ipv4Packet::new_checked(&delivered[14..]).unwrap();
    assert_eq!(ip4.src_addr(), gateway(2).ip);
    let icmp = Icmpv4Packet::new_checked(ip4.payload()).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!(
        (icmp.msg_type(), icmp.code(), icmp.next_hop_mtu()),
        (3, 4, 1400)
    );
}

#[test]
fn a_replica_counts_what_it_sealed_per_session() {
    let Pair {
        mut a,
        b_at_a,
        a_keys,
        b_keys,
        ..
    } = sealed_pair(4, 3);
    let frame = udp(mac(1, 1), mac(2, 1), ip(1, 10), ip(2, 10), 100);
    for _ in 0..5 {
        sealed_datagram(&mut a, b_at_a, &frame).unwrap();
    }
    assert_eq!(a.sealed_on(a_keys.local_index), 5);
    assert_eq!(
        a.sealed_on(b_keys.local_index),
        0,
        "not a session A sends on"
    );
    a.retire_session(a_keys.local_index);
    assert_eq!(a.sealed_on(a_keys.local_index), 0);
}
