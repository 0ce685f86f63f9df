#![no_main]
//! Fuzzes the handshake messages a node receives on its VXLAN port: `Handshaker::handle_message`
//! of a node that knows one peer and has an initiation of its own outstanding, with a
//! deterministic RNG.
//!
//! Input: a selector byte (low bits: which source address and when; the top bit: write a
//! correct mac1 for this node first, so that the Noise message behind it is fuzzed too), then
//! the message.
//!
//! Checked, beyond "no panic": anything not a well-formed message keyed to this node (mac1) is
//! refused without an answer or a session; no answer is ever longer than the message.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crypto::{Handshaker, StaticSecret};
use libfuzzer_sys::fuzz_target;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

struct Node {
    handshaker: Handshaker,
    public: crypto::PublicKey,
    rng: ChaCha20Rng,
    start: Instant,
}

fn node() -> Node {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let start = Instant::now();
    let unix = Duration::from_secs(1_800_000_000);
    let mine = StaticSecret::generate(&mut rng);
    let theirs = StaticSecret::generate(&mut rng);
    let public = mine.public_key();
    let mut handshaker = Handshaker::new(mine, start, unix).expect("handshaker");
    let peer = handshaker
        .add_peer(theirs.public_key(), None)
        .expect("peer");
    handshaker.connect(peer, start, &mut rng).expect("connect");
    while handshaker.poll_transmit().is_some() {}
    Node {
        handshaker,
        public,
        rng,
        start,
    }
}

thread_local! {
    static NODE: RefCell<Node> = RefCell::new(node());
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, message)) = input.split_first() else {
        return;
    };
    NODE.with_borrow_mut(|n| {
        let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, selector)), 4789);
        let now = n.start + Duration::from_millis(u64::from(selector & 0x7f));
        let mut message = message.to_vec();
        if selector & 0x80 != 0 {
            crypto::handshake::message::seal_mac1(&n.public, &mut message);
        }
        match n.handshaker.handle_message(now, from, &message, &mut n.rng) {
            Ok(outcome) => {
                if let Some(reply) = &outcome.reply {
                    assert!(
                        reply.len() <= message.len(),
                        "an answer larger than the message"
                    );
                }
            }
            Err(e) => assert!(e.is_peer_fault(), "a message blamed on the caller: {e}"),
        }
        n.handshaker.handle_timeout(now, &mut n.rng);
        while n.handshaker.poll_transmit().is_some() {}
        while n.handshaker.poll_event().is_some() {}
    });
});
