#![no_main]
//! Fuzzes what a sealed network does with a datagram from the wire: a switch with a sealed
//! network and a session with its peer (keys from a real handshake) opens, checks the replay
//! window and switches whatever arrives, sealed or not.
//!
//! Input: a mode byte, then the datagram. Mode bit 0: the datagram is first sealed honestly
//! under the session (so its inner frame is fuzzed past authentication); otherwise it is taken
//! as it came. Bit 1: replay it once more.
//!
//! Checked, beyond "no panic": a datagram that was not sealed under the session never
//! delivers a frame; a replay never delivers twice; anything delivered lies inside the
//! datagram and came from the session's peer.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto::{Handshaker, Role, StaticSecret};
use libfuzzer_sys::fuzz_target;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use vswitch::switch::{
    NetworkConfig, Output, PeerId, PortConfig, SessionInstall, Switch, SwitchConfig,
};
use vswitch::tunnel::{SEALED_HEADER_LEN, SEALED_TAG_LEN};
use vswitch::wire::{MacAddr, Vni};

const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 4789);
const ME: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 4789);

/// A sealed switch (receiving) and the peer's switch (sealing), with one session between them.
struct Pair {
    receiver: Switch,
    sender: Switch,
    peer_at_sender: PeerId,
}

fn pair() -> Pair {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let now = Instant::now();
    let unix = Duration::from_secs(1_800_000_000);
    let (a_secret, b_secret) = (
        StaticSecret::generate(&mut rng),
        StaticSecret::generate(&mut rng),
    );
    let (a_pub, b_pub) = (a_secret.public_key(), b_secret.public_key());
    let mut a = Handshaker::new(a_secret, now, unix).expect("handshaker");
    let mut b = Handshaker::new(b_secret, now, unix).expect("handshaker");
    let b_at_a = a.add_peer(b_pub, None).expect("peer");
    b.add_peer(a_pub, None).expect("peer");
    a.connect(b_at_a, now, &mut rng).expect("connect");
    let init = a.poll_transmit().expect("initiation");
    let at_b = b
        .handle_message(now, PEER, &init.bytes, &mut rng)
        .expect("initiation");
    let reply = at_b.reply.expect("response");
    let b_keys = at_b.established.expect("responder keys");
    let a_keys = a
        .handle_message(now, ME, &reply, &mut rng)
        .expect("response")
        .established
        .expect("initiator keys");
    let switch = |mac: u8, other: SocketAddr| {
        let mut sw = Switch::new(SwitchConfig::default());
        sw.add_network(NetworkConfig {
            sealed: true,
            ..NetworkConfig::new(Vni::DEFAULT)
        })
        .expect("network");
        sw.add_port(PortConfig::new(Vni::DEFAULT, MacAddr([2, 0, 0, 0, 0, mac])))
            .expect("port");
        let peer = sw.add_peer(other, &[Vni::DEFAULT]);
        (sw, peer)
    };
    let (mut receiver, _) = switch(1, PEER);
    let (mut sender, peer_at_sender) = switch(2, ME);
    for (sw, keys, to) in [(&mut sender, &a_keys, ME), (&mut receiver, &b_keys, PEER)] {
        sw.install_session(SessionInstall {
            peer: to,
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            sealer: keys.sealer(0).expect("sealer"),
            send_now: keys.role == Role::Initiator,
            opener: keys.opener().expect("opener"),
            replay: Arc::new(keys.replay()),
        });
    }
    Pair {
        receiver,
        sender,
        peer_at_sender,
    }
}

thread_local! {
    static PAIR: RefCell<Pair> = RefCell::new(pair());
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, bytes)) = input.split_first() else {
        return;
    };
    PAIR.with_borrow_mut(|p| {
        let mut out = Output::new();
        let now = Instant::now();
        let honest = mode & 1 != 0;
        let mut datagram = if honest {
            let mut d = vec![0u8; SEALED_HEADER_LEN];
            d.extend_from_slice(bytes);
            d.resize(d.len() + SEALED_TAG_LEN, 0);
            if p.sender
                .seal(p.peer_at_sender, Vni::DEFAULT, &mut d)
                .is_err()
            {
                return;
            }
            d
        } else {
            bytes.to_vec()
        };
        let copy = datagram.clone();
        p.receiver
            .handle_datagram(now, PEER, &mut datagram, &mut out);
        if !honest {
            assert!(
                out.ports().is_empty(),
                "a datagram not sealed under the session delivered"
            );
        }
        if !out.ports().is_empty() {
            assert!(
                out.frame_range().end <= datagram.len(),
                "frame outside the datagram"
            );
        }
        if mode & 2 != 0 {
            let mut again = copy;
            p.receiver.handle_datagram(now, PEER, &mut again, &mut out);
            assert!(out.ports().is_empty(), "a replay delivered");
        }
        assert!(
            out.transmits().is_empty(),
            "a peer's datagram sent on to a peer"
        );
    });
});
