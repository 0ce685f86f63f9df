//! Random and mutated input never panics.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::tunnel::encap_header;

fn fuzz_switch() -> (Switch, Vec<PortId>) {
    let (mut sw, mut p) = one_switch(
        SwitchConfig {
            accept_unknown_peers: true,
            ..SwitchConfig::default()
        },
        2,
    );
    p.push(
        sw.add_port(PortConfig {
            port_security: false,
            ..port_cfg(Vni::DEFAULT, mac(0, 50), &[])
        })
        .unwrap(),
    );
    sw.add_peer(peer_addr(2), &[Vni::DEFAULT]);
    (sw, p)
}

fn seeds() -> Vec<Vec<u8>> {
    vec![
        udp(mac(0, 0), mac(0, 1), ip(0, 10), ip(0, 11), 20),
        arp_request(mac(0, 0), ip(0, 10), ip(0, 1)),
        arp_request(mac(0, 0), ip(0, 10), ip(0, 11)),
        echo_request(mac(0, 0), GW_MAC, ip(0, 10), gateway(0).ip, 3),
        ipv6_udp(
            mac(0, 0),
            MacAddr::BROADCAST,
            "fe80::1".parse().unwrap(),
            "ff02::1".parse().unwrap(),
        ),
    ]
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), port in 0u32..4) {
        let (mut sw, _) = fuzz_switch();
        let t0 = Instant::now();
        let mut out = Output::new();
        sw.handle_frame(t0, PortId::from_raw(port), &bytes, &mut out);
        sw.handle_datagram(t0, peer_addr(2), &mut bytes.to_vec(), &mut out);
        sw.handle_datagram(t0, peer_addr(9), &mut bytes.to_vec(), &mut out);
        let mut with_header = encap_header(Vni::DEFAULT).to_vec();
        with_header.extend_from_slice(&bytes);
        sw.handle_datagram(t0, peer_addr(2), &mut with_header.to_vec(), &mut out);
        sw.handle_timeout(t0 + Duration::from_secs(400));
        let c = sw.counters();
        prop_assert_eq!(
            c.port_rx_frames + c.drops.get(DropReason::UnknownPort) + c.peer_rx_datagrams,
            4
        );
    }

    #[test]
    fn mutated_frames_never_panic(
        seed in 0usize..5,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
        port in 0u32..3,
    ) {
        let (mut sw, _) = fuzz_switch();
        let t0 = Instant::now();
        let mut out = Output::new();
        let mut frame = seeds()[seed].clone();
        for (at, value) in flips {
            let len = frame.len();
            frame[at % len] = value;
        }
        frame.truncate(cut % (frame.len() + 1));
        sw.handle_frame(t0, PortId::from_raw(port), &frame, &mut out);
        if let Some((_, reply)) = out.reply() {
            prop_assert!(reply.len() >= 14);
        }
        let d = datagram(Vni::DEFAULT, &frame);
        sw.handle_datagram(t0, peer_addr(2), &mut d.to_vec(), &mut out);
        prop_assert!(out.frame_range().end <= d.len());
        prop_assert!(out.transmits().is_empty());
    }
}
