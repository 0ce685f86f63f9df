//! Two or more handshakers on a virtual clock: deliver, step, jump to the next timeout.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::*;
use crate::{Opener, Sealer, TAG_LEN};

const UNIX_START: Duration = Duration::from_secs(1_750_000_000);

struct Node {
    hs: Handshaker,
    addr: SocketAddr,
    rng: ChaCha20Rng,
}

impl Node {
    fn new(secret: [u8; 32], octet: u8, seed: u64, now: Instant, unix: Duration) -> Self {
        Self {
            hs: Handshaker::new(StaticSecret::from_bytes(secret), now, unix).unwrap(),
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, octet)), 4789),
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    fn add(&mut self, other: &Node, psk: Option<&PresharedKey>) -> PeerId {
        self.hs.add_peer(other.hs.public_key(), psk).unwrap()
    }

    fn connect(&mut self, peer: PeerId, now: Instant) {
        self.hs.connect(peer, now, &mut self.rng).unwrap();
    }

    fn transmit(&mut self) -> Vec<u8> {
        self.hs.poll_transmit().unwrap().bytes
    }

    fn handle(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Result<Outcome, Error> {
        self.hs.handle_message(now, from, bytes, &mut self.rng)
    }

    fn timeout(&mut self, now: Instant) {
        self.hs.handle_timeout(now, &mut self.rng);
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.hs.poll_event()).collect()
    }
}

struct Pair {
    a: Node,
    b: Node,
    /// b as a peer of a.
    ab: PeerId,
    /// a as a peer of b.
    ba: PeerId,
    t0: Instant,
}

fn pair(seed: u64, psk: Option<&PresharedKey>) -> Pair {
    let t0 = Instant::now();
    let mut a = Node::new([1; 32], 1, seed, t0, UNIX_START);
    let mut b = Node::new(
        [2; 32],
        2,
        seed + 1000,
        t0,
        UNIX_START + Duration::from_secs(7),
    );
    let ab = a.add(&b, psk);
    let ba = b.add(&a, psk);
    Pair { a, b, ab, ba, t0 }
}

/// `init` initiates to `resp` at `now`; returns (initiator's keys, responder's keys).
fn handshake(
    init: &mut Node,
    resp: &mut Node,
    peer: PeerId,
    now: Instant,
) -> (SessionKeys, SessionKeys) {
    init.connect(peer, now);
    let initiation = init.transmit();
    let out = resp.handle(now, init.addr, &initiation).unwrap();
    let resp_keys = out.established.unwrap();
    let reply = out.reply.unwrap();
    let out = init.handle(now, resp.addr, &reply).unwrap();
    assert!(out.reply.is_none());
    (out.established.unwrap(), resp_keys)
}

fn seal(sealer: &mut Sealer, frame: &[u8]) -> (u64, Vec<u8>) {
    let mut buf = frame.to_vec();
    buf.extend_from_slice(&[0; TAG_LEN]);
    let counter = sealer.seal_in_place(b"hdr", &mut buf).unwrap();
    (counter, buf)
}

fn opens(opener: &Opener, counter: u64, mut packet: Vec<u8>) -> Result<Vec<u8>, Error> {
    opener
        .open_in_place(counter, b"hdr", &mut packet)
        .map(|p| p.to_vec())
}

fn assert_talk(from: &SessionKeys, to: &SessionKeys, lane: usize) {
    let mut sealer = from.sealer(lane).unwrap();
    let (counter, packet) = seal(&mut sealer, b"frame");
    assert_eq!(lane_of_counter(counter), lane);
    assert_eq!(
        opens(&to.opener().unwrap(), counter, packet).unwrap(),
        b"frame"
    );
}

fn lane_of_counter(counter: u64) -> usize {
    usize::from(crate::lane_of(counter))
}

#[test]
fn full_handshake_gives_matching_keys_both_ways() {
    let mut p = pair(1, None);
    let (ka, kb) = handshake(&mut p.a, &mut p.b, p.ab, p.t0);
    assert_eq!(ka.role, Role::Initiator);
    assert_eq!(kb.role, Role::Responder);
    assert_eq!((ka.peer, kb.peer), (p.ab, p.ba));
    assert_eq!(ka.local_index, kb.remote_index);
    assert_eq!(ka.remote_index, kb.local_index);
    assert_ne!(ka.send[..], ka.recv[..]);
    for lane in [0, 1, 7, 255] {
        assert_talk(&ka, &kb, lane);
        assert_talk(&kb, &ka, lane);
    }
    assert_eq!(p.a.hs.current_session(p.ab), Some(ka.local_index));
    assert_eq!(p.b.hs.current_session(p.ba), Some(kb.local_index));
    assert!(!p.a.hs.is_handshaking(p.ab));
    let stats = p.b.hs.stats();
    assert_eq!((stats.initiations_accepted, stats.rejected), (1, 0));
    assert_eq!(p.a.hs.stats().responses_accepted, 1);
    // A fresh session is not replaced by another connect.
    p.a.connect(p.ab, p.t0 + Duration::from_secs(1));
    assert!(p.a.hs.poll_transmit().is_none());
}

#[test]
fn psk_is_mixed_in_and_must_match() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let psk = PresharedKey::generate(&mut rng);
    let mut p = pair(2, Some(&psk));
    let (ka, kb) = handshake(&mut p.a, &mut p.b, p.ab, p.t0);
    assert_talk(&ka, &kb, 0);
    let no_psk_keys = {
        let mut q = pair(2, None);
        handshake(&mut q.a, &mut q.b, q.ab, q.t0).0
    };
    assert_ne!(no_psk_keys.send[..], ka.send[..]);

    // b has another psk for a: a's handshake fails when reading the response.
    let t0 = Instant::now();
    let mut a = Node::new([1; 32], 1, 3, t0, UNIX_START);
    let mut b = Node::new([2; 32], 2, 4, t0, UNIX_START);
    let ab = a.add(&b, Some(&psk));
    b.add(&a, Some(&PresharedKey::generate(&mut rng)));
    a.connect(ab, t0);
    let init = a.transmit();
    let reply = b.handle(t0, a.addr, &init).unwrap().reply.unwrap();
    assert_eq!(a.handle(t0, b.addr, &reply).unwrap_err(), Error::Handshake);
    assert!(
        a.hs.is_handshaking(ab),
        "still waiting for a genuine response"
    );
    assert_eq!(a.hs.current_session(ab), None);
}

#[test]
fn transcript_is_fixed() {
    // Fixed keys, seeds and clocks: the wire bytes and the keys they give must not change
    // unless the format is changed on purpose.
    let mut p = pair(42, None);
    p.a.connect(p.ab, p.t0);
    let init = p.a.transmit();
    let out = p.b.handle(p.t0, p.a.addr, &init).unwrap();
    let reply = out.reply.unwrap();
    let kb = out.established.unwrap();
    let ka =
        p.a.handle(p.t0, p.b.addr, &reply)
            .unwrap()
            .established
            .unwrap();
    let (counter, packet) = seal(&mut ka.sealer(0).unwrap(), b"frame");
    assert_eq!(counter, 0);
    assert_eq!(hex(&init), INITIATION_HEX);
    assert_eq!(hex(&reply), RESPONSE_HEX);
    assert_eq!(hex(&packet), SEALED_HEX);
    assert_eq!(opens(&kb.opener().unwrap(), 0, packet).unwrap(), b"frame");
}

const INITIATION_HEX: &str = concat!(
    "c100000055f292a99c43b6c388472660848f8edd6685648dec6f411c87513969",
    "f93cf6961a1bf0330d4cdd368bef11aa7b04173195d9123412bb58b342ed4e1c",
    "9be5d0c92b088ec8bfa60647e2dd6eba157f92b7e85956e80a376a1aa8a52b9b",
    "db2d99ddd5968dc27e0bc08e02833e81add559b556e290ebdcd8c1959fb39c1d",
    "5566184100000000000000000000000000000000",
);
const RESPONSE_HEX: &str = concat!(
    "c20000005569178955f292a9ef4928e142e80157967f779e35bb82f28572fe1d",
    "b748d556e6a608cc71092c03240a5bf9b2aeae0384c20413d575eb5aec37892c",
    "cc2683a7805ee10f5793440600000000000000000000000000000000",
);
/// `frame` sealed by the initiator on lane 0, counter 0, with `hdr` as associated data.
const SEALED_HEX: &str = "a1331b6df707b6bab1e6c6da45c0492f74228e974e";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn retransmissions_back_off_with_jitter_then_give_up() {
    let mut p = pair(3, None);
    p.a.connect(p.ab, p.t0);
    let mut indices = HashSet::new();
    let first = p.a.transmit();
    indices.insert(message::read_u32(&first, field::SENDER));
    let mut now = p.t0;
    let mut nominal = RETRANSMIT_INITIAL;
    let mut sent = 1;
    loop {
        let next = p.a.hs.poll_timeout().unwrap();
        let delay = next - now;
        assert!(
            delay >= nominal * 80 / 100,
            "{delay:?} < 80% of {nominal:?}"
        );
        assert!(
            delay <= nominal * 120 / 100,
            "{delay:?} > 120% of {nominal:?}"
        );
        now = next;
        p.a.timeout(now);
        let events = p.a.events();
        if let Some(Event::GaveUp { peer }) = events.first() {
            assert_eq!(*peer, p.ab);
            assert!(now - p.t0 >= REKEY_ATTEMPT_TIME);
            assert!(p.a.hs.poll_transmit().is_none());
            break;
        }
        let again = p.a.transmit();
        sent += 1;
        assert!(
            indices.insert(message::read_u32(&again, field::SENDER)),
            "new index each time"
        );
        assert_ne!(again, first);
        nominal = (nominal * 2).min(RETRANSMIT_MAX);
    }
    assert!((8..=12).contains(&sent), "{sent} initiations in 90 s");
    assert!(!p.a.hs.is_handshaking(p.ab));
    assert_eq!(p.a.hs.poll_timeout(), None);
    // A later connect starts afresh.
    p.a.connect(p.ab, now);
    assert!(p.a.hs.poll_transmit().is_some());
}

#[test]
fn late_response_to_a_retransmitted_initiation_is_unknown() {
    let mut p = pair(4, None);
    p.a.connect(p.ab, p.t0);
    let first = p.a.transmit();
    let now = p.a.hs.poll_timeout().unwrap();
    p.a.timeout(now);
    let second = p.a.transmit();
    let reply1 = p.b.handle(now, p.a.addr, &first).unwrap().reply.unwrap();
    let index = message::read_u32(&first, field::SENDER);
    assert_eq!(
        p.a.handle(now, p.b.addr, &reply1).unwrap_err(),
        Error::UnknownIndex { index }
    );
    let reply2 = p.b.handle(now, p.a.addr, &second).unwrap().reply.unwrap();
    let ka =
        p.a.handle(now, p.b.addr, &reply2)
            .unwrap()
            .established
            .unwrap();
    assert_eq!(p.b.hs.current_session(p.ba), Some(ka.remote_index));
}

#[test]
fn rekey_by_time_keeps_previous_keys_until_rejected() {
    let mut p = pair(5, None);
    let (ka, kb) = handshake(&mut p.a, &mut p.b, p.ab, p.t0);
    assert_eq!(p.a.hs.poll_timeout(), Some(p.t0 + REKEY_AFTER_TIME));
    assert_eq!(
        p.b.hs.poll_timeout(),
        Some(p.t0 + REKEY_AFTER_TIME + RESPONDER_REKEY_SLACK)
    );
    let t1 = p.t0 + REKEY_AFTER_TIME;
    p.b.timeout(t1);
    assert!(
        p.b.hs.poll_transmit().is_none(),
        "responder waits for the initiator"
    );
    p.a.timeout(t1);
    let init = p.a.transmit();
    let out = p.b.handle(t1, p.a.addr, &init).unwrap();
    let kb2 = out.established.unwrap();
    let ka2 =
        p.a.handle(t1, p.b.addr, &out.reply.unwrap())
            .unwrap()
            .established
            .unwrap();
    assert_talk(&ka2, &kb2, 0);
    assert_talk(&kb2, &ka2, 3);
    // The previous keys still work until they are retired.
    assert_talk(&ka, &kb, 0);
    assert!(p.a.events().is_empty() && p.b.events().is_empty());

    let t2 = p.t0 + REJECT_AFTER_TIME;
    for (node, peer, old) in [(&mut p.a, p.ab, &ka), (&mut p.b, p.ba, &kb)] {
        assert_eq!(node.hs.poll_timeout(), Some(t2));
        node.timeout(t2);
        match node.events().as_slice() {
            [
                Event::Retire {
                    peer: q,
                    local_index,
                },
            ] => {
                assert_eq!((*q, *local_index), (peer, old.local_index));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(p.a.hs.current_session(p.ab), Some(ka2.local_index));
    assert_eq!(p.a.hs.poll_timeout(), Some(t1 + REKEY_AFTER_TIME));
}

#[test]
fn a_shorter_rekey_time_rekeys_again_and_again() {
    let mut p = pair(15, None);
    for hs in [&mut p.a.hs, &mut p.b.hs] {
        assert_eq!(hs.set_rekey_after(Duration::ZERO), Err(Error::RekeyTime));
        assert_eq!(
            hs.set_rekey_after(REKEY_AFTER_TIME + Duration::from_secs(1)),
            Err(Error::RekeyTime)
        );
        hs.set_rekey_after(Duration::from_secs(2)).unwrap();
    }
    let (first, _) = handshake(&mut p.a, &mut p.b, p.ab, p.t0);
    let mut now = p.t0;
    let mut sessions = HashSet::from([first.local_index]);
    for round in 1..=5u32 {
        assert_eq!(p.a.hs.poll_timeout(), Some(now + Duration::from_secs(2)));
        // The responder's slack is half the shortened time, not 10 s.
        assert_eq!(p.b.hs.poll_timeout(), Some(now + Duration::from_secs(3)));
        now += Duration::from_secs(2);
        p.b.timeout(now);
        assert!(p.b.hs.poll_transmit().is_none(), "the responder waits");
        p.a.timeout(now);
        let init = p.a.transmit();
        let out = p.b.handle(now, p.a.addr, &init).unwrap();
        let kb = out.established.unwrap();
        let ka =
            p.a.handle(now, p.b.addr, &out.reply.unwrap())
                .unwrap()
                .established
                .unwrap();
        assert_talk(&ka, &kb, 1);
        assert!(
            sessions.insert(ka.local_index),
            "round {round}: a new session"
        );
        // Two live sessions at most: each new one retires the one before the previous.
        let retired = p.a.events().len();
        assert_eq!(retired, usize::from(round >= 2), "round {round}");
    }
}

#[test]
fn responder_rekeys_when_the_initiator_is_silent_and_keys_expire() {
    let mut p = pair(6, None);
    let (_, kb) = handshake(&mut p.a, &mut p.b, p.ab, p.t0);
    let t1 = p.t0 + REKEY_AFTER_TIME + RESPONDER_REKEY_SLACK;
    p.b.timeout(t1);
    let init = p.b.transmit();
    assert_eq!(init[0], TYPE_INITIATION);
    // Nobody answers: the session is retired at REJECT_AFTER_TIME.
    let mut now = t1;
    while now < p.t0 + REJECT_AFTER_TIME {
        now = p.b.hs.poll_timeout().unwrap();
        p.b.timeout(now);
    }
    assert!(p.b.events().iter().any(|e| matches!(
        e,
        Event::Retire { local_index, .. } if *local_index == kb.local_index
    )));
    assert_eq!(p.b.hs.current_session(p.ba), None);
}

#[test]
fn rekey_by_count() {
    let mut p = pair(7, None);
    let (ka, _) = handshake(&mut p.a, &mut p.b, p.ab, p.t0);
    let now = p.t0 + Duration::from_secs(3);
    let a = &mut p.a;
    a.hs.note_sent(
        p.ab,
        ka.local_index,
        REKEY_AFTER_MESSAGES - 1,
        now,
        &mut a.rng,
    )
    .unwrap();
    assert!(a.hs.poll_transmit().is_none());
    // Counts for another session do not count.
    a.hs.note_sent(p.ab, ka.local_index ^ 1, 5, now, &mut a.rng)
        .unwrap();
    assert!(a.hs.poll_transmit().is_none());
    a.hs.note_sent(p.ab, ka.local_index, 1, now, &mut a.rng)
        .unwrap();
    assert_eq!(a.transmit()[0], TYPE_INITIATION);
    assert_eq!(
        a.hs.note_sent(PeerId(9), 0, 1, now, &mut a.rng),
        Err(Error::NoSuchPeer)
    );
}

#[test]
fn a_lower_rekey_count_rekeys_sooner() {
    let mut p = pair(16, None);
    let a = &mut p.a.hs;
    assert_eq!(a.set_rekey_after_messages(0), Err(Error::RekeyCount));
    assert_eq!(
        a.set_rekey_after_messages(REKEY_AFTER_MESSAGES + 1),
        Err(Error::RekeyCount)
    );
    a.set_rekey_after_messages(1000).unwrap();
    let (ka, _) = handshake(&mut p.a, &mut p.b, p.ab, p.t0);
    let now = p.t0 + Duration::from_secs(1);
    let a = &mut p.a;
    a.hs.note_sent(p.ab, ka.local_index, 999, now, &mut a.rng)
        .unwrap();
    assert!(a.hs.poll_transmit().is_none());
    a.hs.note_sent(p.ab, ka.local_index, 1, now, &mut a.rng)
        .unwrap();
    assert_eq!(a.transmit()[0], TYPE_INITIATION);
}

#[test]
fn responder_restart_makes_a_new_session_and_old_keys_die() {
    let mut p = pair(8, None);
    // b initiates first, so a holds b's last timestamp.
    let (kb, ka) = handshake(&mut p.b, &mut p.a, p.ba, p.t0);
    let t1 = p.t0 + Duration::from_secs(30);
    // b restarts: same static key, no state, its wall clock 30 s later.
    let mut b2 = Node::new([2; 32], 2, 77, t1, UNIX_START + Duration::from_secs(37));
    let b2a = b2.add(&p.a, None);
    let (kb2, ka2) = handshake(&mut b2, &mut p.a, b2a, t1);
    assert_talk(&ka2, &kb2, 0);
    assert_talk(&kb2, &ka2, 1);
    // The old session's packets do not open under the new keys.
    let (counter, packet) = seal(&mut ka.sealer(0).unwrap(), b"old");
    assert_eq!(
        opens(&kb2.opener().unwrap(), counter, packet),
        Err(Error::Authentication)
    );
    assert_ne!(kb.send[..], kb2.send[..]);
    // a retires the old session at its rejection time.
    let t2 = p.t0 + REJECT_AFTER_TIME;
    p.a.timeout(t2);
    assert!(p.a.events().iter().any(|e| matches!(
        e,
        Event::Retire { local_index, .. } if *local_index == ka.local_index
    )));
    assert_eq!(p.a.hs.current_session(p.ab), Some(ka2.local_index));
}

#[test]
fn restarted_initiator_is_accepted_and_a_restarted_responder_answers() {
    let mut p = pair(10, None);
    let _ = handshake(&mut p.a, &mut p.b, p.ab, p.t0);
    let t1 = p.t0 + Duration::from_secs(5);
    let mut a2 = Node::new([1; 32], 1, 11, t1, UNIX_START + Duration::from_secs(5));
    let a2b = a2.add(&p.b, None);
    let (ka2, kb2) = handshake(&mut a2, &mut p.b, a2b, t1);
    assert_talk(&ka2, &kb2, 0);
    let mut b2 = Node::new([2; 32], 2, 12, t1, UNIX_START + Duration::from_secs(12));
    let b2a = b2.add(&a2, None);
    let (ka3, kb3) = handshake(&mut a2, &mut b2, a2b, t1 + REKEY_AFTER_TIME);
    assert_eq!(kb3.peer, b2a);
    assert_talk(&kb3, &ka3, 2);
}

/// b's observable state, to show a rejected message changed nothing.
fn snapshot(n: &mut Node, peer: PeerId) -> (Option<u32>, bool, Option<Instant>, usize) {
    let transmits = std::iter::from_fn(|| n.hs.poll_transmit()).count();
    (
        n.hs.current_session(peer),
        n.hs.is_handshaking(peer),
        n.hs.poll_timeout(),
        transmits + n.events().len(),
    )
}

#[test]
fn bad_messages_fail_by_kind_and_change_nothing() {
    let mut p = pair(13, None);
    let (_, kb) = handshake(&mut p.a, &mut p.b, p.ab, p.t0);
    let now = p.t0 + Duration::from_secs(1);
    let before = snapshot(&mut p.b, p.ba);
    let expect = |p: &mut Pair, bytes: &[u8], want: Error| {
        assert_eq!(p.b.handle(now, p.a.addr, bytes).unwrap_err(), want);
        assert_eq!(snapshot(&mut p.b, p.ba), before);
    };

    // Replayed initiation: a's first initiation again.
    let mut a_again = Node::new([1; 32], 1, 13, p.t0, UNIX_START);
    a_again.add(&p.b, None);
    a_again.connect(PeerId(0), p.t0);
    let replay = a_again.transmit();
    expect(&mut p, &replay, Error::StaleInitiation);

    // A fresh initiation from a to tamper with.
    p.a.hs.peers[p.ab.index()].current = None;
    p.a.connect(p.ab, now);
    let good = p.a.transmit();
    let mac1_key = message::mac1_key(&p.b.hs.public_key());

    let mut bad = good.clone();
    bad[field::INIT_NOISE.start + 40] ^= 1;
    expect(&mut p, &bad, Error::Mac1);
    message::seal_macs(&mac1_key, &mut bad);
    expect(&mut p, &bad, Error::Handshake);
    let mut bad = good.clone();
    bad[field::RESERVED.start] = 1;
    expect(
        &mut p,
        &bad,
        Error::Malformed {
            len: INITIATION_LEN,
        },
    );
    expect(&mut p, &good[..100], Error::Malformed { len: 100 });
    expect(&mut p, &[], Error::Malformed { len: 0 });
    let mut bad = good.clone();
    bad[0] = 0x08;
    expect(
        &mut p,
        &bad,
        Error::Malformed {
            len: INITIATION_LEN,
        },
    );

    // A stranger that knows b's public key but is not b's peer.
    let mut c = Node::new([3; 32], 3, 14, p.t0, UNIX_START);
    let cb = c.add(&p.b, None);
    c.connect(cb, now);
    let stranger = c.transmit();
    expect(&mut p, &stranger, Error::UnknownStaticKey);

    // a configured with a wrong public key for b: mac1 is keyed for someone else.
    let mut d = Node::new([1; 32], 1, 15, p.t0, UNIX_START + Duration::from_secs(60));
    let wrong = d.hs.add_peer(PublicKey::from_bytes([7; 32]), None).unwrap();
    d.connect(wrong, now);
    let misdirected = d.transmit();
    expect(&mut p, &misdirected, Error::Mac1);

    // A response nobody asked for.
    let mut resp = vec![0u8; RESPONSE_LEN];
    resp[0] = TYPE_RESPONSE;
    resp[field::RECEIVER].copy_from_slice(&kb.local_index.to_le_bytes());
    message::seal_macs(&mac1_key, &mut resp);
    expect(
        &mut p,
        &resp,
        Error::UnknownIndex {
            index: kb.local_index,
        },
    );

    // The untampered one still works afterwards.
    let out = p.b.handle(now, p.a.addr, &good).unwrap();
    assert!(out.established.is_some());
    let stats = p.b.hs.stats();
    assert_eq!(stats.junk, 6);
    assert_eq!(stats.rejected, 4);
    assert_eq!(stats.initiations_accepted, 2);
}

#[test]
fn tampered_response_fails_and_the_genuine_one_still_completes() {
    let mut p = pair(16, None);
    p.a.connect(p.ab, p.t0);
    let init = p.a.transmit();
    let reply = p.b.handle(p.t0, p.a.addr, &init).unwrap().reply.unwrap();
    let mac1_key = message::mac1_key(&p.a.hs.public_key());
    let mut bad = reply.clone();
    bad[field::RESP_NOISE.start + 35] ^= 0x80;
    assert_eq!(p.a.handle(p.t0, p.b.addr, &bad).unwrap_err(), Error::Mac1);
    message::seal_macs(&mac1_key, &mut bad);
    assert_eq!(
        p.a.handle(p.t0, p.b.addr, &bad).unwrap_err(),
        Error::Handshake
    );
    assert!(p.a.hs.is_handshaking(p.ab));
    let ka = p.a.handle(p.t0, p.b.addr, &reply).unwrap().established;
    assert!(ka.is_some());
    // And a replayed response finds no handshake.
    let index = message::read_u32(&reply, field::RECEIVER);
    assert_eq!(
        p.a.handle(p.t0, p.b.addr, &reply).unwrap_err(),
        Error::UnknownIndex { index }
    );
}

/// Initiations with a right mac1 but junk inside: each one that passes the limiter costs a
/// Diffie-Hellman and is then rejected, so `rejected` counts what reached DH.
fn junk_initiation(mac1_key: &[u8; 32], rng: &mut ChaCha20Rng) -> Vec<u8> {
    let mut bytes = vec![0u8; INITIATION_LEN];
    rng.fill_bytes(&mut bytes[field::SENDER.start..]);
    bytes[0] = TYPE_INITIATION;
    bytes[field::RESERVED].fill(0);
    message::seal_macs(mac1_key, &mut bytes);
    bytes
}

#[test]
fn rate_limit_bounds_work_before_diffie_hellman() {
    let mut p = pair(17, None);
    let key = message::mac1_key(&p.b.hs.public_key());
    let mut rng = ChaCha20Rng::seed_from_u64(18);
    // One source, 2,000 messages per second for 2 s.
    for i in 0..4000u64 {
        let now = p.t0 + Duration::from_micros(i * 500);
        let msg = junk_initiation(&key, &mut rng);
        let _ = p.b.handle(now, p.a.addr, &msg);
    }
    let stats = p.b.hs.stats();
    let most = u64::from(PER_SOURCE_BURST + PER_SOURCE_RATE * 2);
    assert!(stats.rejected <= most, "{} reached DH", stats.rejected);
    assert!(stats.rejected >= most - 2, "{} reached DH", stats.rejected);
    assert_eq!(stats.rate_limited + stats.rejected, 4000);
    assert!(p.b.hs.poll_transmit().is_none(), "nothing is ever answered");

    // Many sources (spoofed), 1,000 messages per second for 1 s after the first burst.
    let start = p.t0 + Duration::from_secs(10);
    let before = p.b.hs.stats().rejected;
    for i in 0..1000u32 {
        let now = start + Duration::from_millis(u64::from(i));
        let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 4789);
        let msg = junk_initiation(&key, &mut rng);
        let _ = p.b.hs.handle_message(now, from, &msg, &mut rng);
    }
    let reached = p.b.hs.stats().rejected - before;
    let most = u64::from(GLOBAL_BURST + GLOBAL_RATE);
    assert!(reached <= most, "{reached} reached DH");
}

#[test]
fn debug_shows_no_key_material() {
    let mut p = pair(19, None);
    let (ka, _) = handshake(&mut p.a, &mut p.b, p.ab, p.t0);
    let shown = format!("{ka:?} {ka:#?} {:?}", p.a.hs);
    for key in [&ka.send[..], &ka.recv[..]] {
        assert!(!shown.contains(&hex(key)));
        assert!(!shown.contains(&format!("{:?}", &key[..4]).trim_end_matches(']').to_string()));
    }
    assert!(shown.contains("local_index"));
}

#[test]
fn lanes_are_disjoint_and_bounded() {
    let mut p = pair(20, None);
    let (ka, kb) = handshake(&mut p.a, &mut p.b, p.ab, p.t0);
    assert_eq!(
        ka.sealer(crate::MAX_LANES).unwrap_err(),
        Error::Lane { lane: 256 }
    );
    let last = ka.sealer(255).unwrap();
    assert_eq!(last.next_counter(), 255 << crate::LANE_BITS);
    assert_eq!(last.limit(), u64::MAX);
    let first = ka.sealer(0).unwrap();
    assert_eq!(first.limit(), 1 << crate::LANE_BITS);
    // The end of a lane is refused, not wrapped into the next lane.
    let mut s = Sealer::resume(
        crate::SessionKey::new(ka.remote_index, &ka.send[..]).unwrap(),
        (1 << crate::LANE_BITS) - 1,
    );
    s.set_limit(1 << crate::LANE_BITS);
    let (c, packet) = seal(&mut s, b"x");
    assert_eq!(opens(&kb.opener().unwrap(), c, packet).unwrap(), b"x");
    let mut buf = vec![0u8; TAG_LEN];
    assert_eq!(
        s.seal_in_place(b"", &mut buf),
        Err(Error::CounterLimit {
            limit: 1 << crate::LANE_BITS
        })
    );
}

#[derive(Debug, Clone)]
enum Op {
    /// Seal `n` packets on lane `lane` of a's and of b's current session.
    Seal { lane: u8, n: u8 },
    /// A rekey handshake, by whichever side.
    Rekey { by_b: bool },
    /// One side restarts (same static key, new state, later clock) and initiates.
    Restart { b: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), 1..20u8).prop_map(|(lane, n)| Op::Seal { lane, n }),
        1 => any::<bool>().prop_map(|by_b| Op::Rekey { by_b }),
        1 => any::<bool>().prop_map(|b| Op::Restart { b }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Over lanes, rekeys and restarts, no (key, nonce) pair is ever sealed twice.
    #[test]
    fn no_nonce_is_used_twice_under_one_key(ops in proptest::collection::vec(op(), 1..12)) {
        let mut p = pair(21, None);
        let mut now = p.t0;
        let mut unix = UNIX_START;
        let (mut ka, mut kb) = handshake(&mut p.a, &mut p.b, p.ab, now);
        // One sealer per (side, lane), rebuilt per session, as workers would.
        let mut sealers: HashMap<(bool, u8), Sealer> = HashMap::new();
        let mut used = HashSet::new();
        let mut seed = 100;
        for op in ops {
            now += Duration::from_secs(1);
            unix += Duration::from_secs(1);
            match op {
                Op::Seal { lane, n } => {
                    for (side, keys) in [(false, &ka), (true, &kb)] {
                        let sealer = sealers
                            .entry((side, lane))
                            .or_insert_with(|| keys.sealer(usize::from(lane)).unwrap());
                        for _ in 0..n {
                            let (counter, _) = seal(sealer, b"p");
                            let nonce = crate::nonce(sealer.key_id(), counter);
                            prop_assert!(used.insert((keys.send.to_vec(), nonce)));
                        }
                    }
                }
                Op::Rekey { by_b } => {
                    now += REKEY_AFTER_TIME + RESPONDER_REKEY_SLACK;
                    unix += REKEY_AFTER_TIME + RESPONDER_REKEY_SLACK;
                    let (x, y) = if by_b {
                        let (kb2, ka2) = handshake(&mut p.b, &mut p.a, p.ba, now);
                        (ka2, kb2)
                    } else {
                        handshake(&mut p.a, &mut p.b, p.ab, now)
                    };
                    (ka, kb) = (x, y);
                    sealers.clear();
                }
                Op::Restart { b } => {
                    seed += 1;
                    if b {
                        p.b = Node::new([2; 32], 2, seed, now, unix + Duration::from_secs(7));
                        p.ba = p.b.add(&p.a, None);
                        let (kb2, ka2) = handshake(&mut p.b, &mut p.a, p.ba, now);
                        (ka, kb) = (ka2, kb2);
                    } else {
                        p.a = Node::new([1; 32], 1, seed, now, unix);
                        p.ab = p.a.add(&p.b, None);
                        (ka, kb) = handshake(&mut p.a, &mut p.b, p.ab, now);
                    }
                    sealers.clear();
                }
            }
        }
    }
}
