#![no_main]
//! Fuzzes what arrives on the VXLAN port, through the switch and what the I/O worker does with
//! it (`io/worker.rs`, `receive_datagrams`): a GRO receive cut into datagrams at its stride,
//! each decapsulated and switched, its inner checksum completed when partial, coalesced per
//! port, and everything held flushed at the end of the batch.
//!
//! Input: a selector byte, a 2-byte little-endian GRO stride (0: one datagram), then the
//! received bytes. Selector bits: 0, from an address that is no configured peer; 1, a switch
//! that accepts unknown peers; 2, a TAP kernel without USO (no UDP coalescing).
//!
//! Checked, beyond "no panic": a drop leaves no action but, for a frame over the MTU, an ICMP
//! "too big" error back to the sending peer (well formed, `check::assert_too_big`); nothing
//! from a peer goes to a peer (split horizon) or to a port as a reply; frames stay in the
//! datagram's VNI; the inner frame lies within the datagram, behind the VXLAN header; a SYN
//! whose MSS the switch clamps in place keeps its checksum and every other byte; a completed
//! partial checksum verifies; every frame the coalescer emits is well formed (see
//! `check::assert_coalesced`) and together they stand for exactly the frames pushed.

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use vswitch::offload::{Coalescer, complete_partial_checksum};
use vswitch::switch::{DropReason, Output, PortId};
use vswitch::tunnel;
use vswitch::wire::Vni;
use vswitch_fuzz::check;
use vswitch_fuzz::fixture::{self, Fixture};

thread_local! {
    static TEMPLATES: [Fixture; 2] = [Fixture::new(false), Fixture::new(true)];
    static BUFFERS: RefCell<(Output, Coalescer)> = RefCell::new((Output::new(), Coalescer::new()));
}

fuzz_target!(|input: &[u8]| {
    let Some((&[selector, s0, s1], received)) = input.split_first_chunk::<3>() else {
        return;
    };
    let from = if selector & 1 == 0 {
        fixture::PEER
    } else {
        fixture::STRANGER
    };
    let mut fx = TEMPLATES.with(|t| t[usize::from(selector >> 1 & 1)].clone());
    let stride = usize::from(u16::from_le_bytes([s0, s1]));
    let stride = if stride == 0 {
        received.len().max(1)
    } else {
        stride
    };
    let now = fx.now();
    let mut received = received.to_vec();
    BUFFERS.with_borrow_mut(|(out, coalescer)| {
        coalescer.set_udp(selector & 4 == 0);
        let mut pushed = 0usize;
        let mut emitted = 0usize;
        let mut ports_pushed: Vec<PortId> = Vec::new();
        let mut ports_emitted: Vec<PortId> = Vec::new();
        let mut emit = |port: u32, hdr: &_, frame: &[u8]| {
            ports_emitted.push(PortId::from_raw(port));
            emitted += check::assert_coalesced(hdr, frame);
        };
        for datagram in received.chunks_mut(stride) {
            let vni = datagram
                .get(4..7)
                .and_then(|b| Vni::try_from(u32::from_be_bytes([0, b[0], b[1], b[2]])).ok());
            let before = datagram.to_vec();
            fx.switch.handle_datagram(now, from, datagram, out);
            assert!(out.transmits().is_empty(), "a peer's frame sent to a peer");
            assert!(out.reply().is_none(), "a reply to a peer's frame");
            if out.dropped().is_some() {
                assert!(
                    out.ports().is_empty(),
                    "a dropped datagram still goes somewhere"
                );
                if let Some((transmit, reply)) = out.peer_reply() {
                    assert_eq!(out.dropped(), Some(DropReason::OverMtu), "a drop answered");
                    assert_eq!(transmit.addr.ip(), from.ip(), "error to another peer");
                    let inner = datagram
                        .get(out.frame_range())
                        .expect("the inner frame lies outside the datagram");
                    check::assert_too_big(reply, inner, fixture::GATEWAY_MAC, fixture::MTU);
                }
                continue;
            }
            assert!(
                out.peer_reply().is_none(),
                "a reply to a frame that was not dropped"
            );
            if out.ports().is_empty() {
                continue;
            }
            let range = out.frame_range();
            assert_eq!(range.start, tunnel::VXLAN_HEADER_LEN, "inner frame offset");
            if before[range.clone()] != datagram[range.clone()] {
                check::assert_clamped(
                    &before[range.clone()],
                    &datagram[range.clone()],
                    false,
                    true,
                );
            }
            let frame = datagram
                .get_mut(range)
                .expect("the inner frame lies outside the datagram");
            if complete_partial_checksum(frame) {
                check::assert_completed(frame);
            }
            for &port in out.ports() {
                let info = fx
                    .switch
                    .port(port)
                    .expect("a frame for a port that does not exist");
                assert_eq!(Some(info.config.vni), vni, "a frame left its VNI");
                ports_pushed.push(port);
                pushed += 1;
                coalescer.push(port.get(), frame, &mut emit);
            }
        }
        coalescer.flush(&mut emit);
        assert_eq!(emitted, pushed, "frames lost or duplicated by coalescing");
        for port in &ports_emitted {
            assert!(
                ports_pushed.contains(port),
                "emitted to a port nothing was pushed to"
            );
        }
    });
    fx.settle();
});
