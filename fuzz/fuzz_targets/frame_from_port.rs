#![no_main]
//! Fuzzes a frame read from a container's TAP, through the switch and what the I/O worker does
//! with the result (`io/worker.rs`, `read_port`): vnet header, switching with the segment
//! length, segmentation of super-frames bound for peers, checksum completion.
//!
//! Input: the 12-byte virtio-net header a TAP read starts with, then the frame. The header's
//! `num_buffers` field (bytes 10-11), which the datapath ignores on read, picks the source port
//! (byte 10 mod 3: A with port security, B without, C on the other VNI); see `fixture`.
//!
//! Checked, beyond "no panic": a drop leaves no action but, for a frame over the MTU, an ICMP
//! "too big" error to the sender (well formed, checked by `check::assert_too_big`); frames stay
//! in their VNI (but frames to the gateway routed from VNI 42 to VNI 44, which come out with VNI
//! 44's gateway MAC as source and their TTL decremented with a valid header checksum, or as an
//! ARP request from that gateway) and never go back to their port; only VNI 42 reaches the peer;
//! a reply goes to the sender and is a well-formed ARP reply, ICMP echo reply or time exceeded;
//! frames sent to peers whole fit the network's MTU; the segments of a super-frame sent to peers
//! are well-formed wire frames; a SYN whose MSS the switch clamps keeps its checksum and every
//! other byte.

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use vswitch::offload::{self, Segments, VNET_HDR_LEN, VnetHdr};
use vswitch::switch::{DropReason, Output, PortId};
use vswitch::tunnel;
use vswitch::wire::Vni;
use vswitch_fuzz::check;
use vswitch_fuzz::fixture::{self, Fixture};

thread_local! {
    static TEMPLATE: Fixture = Fixture::new(false);
    static BUFFERS: RefCell<(Output, Segments, Vec<u8>)> = RefCell::new((
        Output::new(),
        Segments::with_headroom(tunnel::VXLAN_HEADER_LEN),
        Vec::new(),
    ));
}

/// One TAP read handed to the switch, as the worker does it: the switch validates the vnet
/// header against the frame and returns the header it rebuilt, the only one acted on; a routed
/// frame is then rewritten in the read buffer (which has room past the read).
fn tap_read<'a>(
    fx: &mut Fixture,
    port: PortId,
    input: &[u8],
    buf: &'a mut Vec<u8>,
    out: &mut Output,
) -> Option<(VnetHdr, &'a [u8])> {
    let now = fx.now();
    buf.clear();
    buf.extend_from_slice(input);
    buf.resize(input.len() + 64, 0);
    fx.switch.handle_tap_read(now, port, input, out);
    out.rewrite(buf);
    let frame = buf.get(out.frame_range())?;
    Some((out.offload().hdr, frame))
}

/// A frame routed from VNI 42 into VNI 44: the original was for the gateway; what goes out is
/// an ARP request from VNI 44's gateway, or the frame from that gateway to port D with its TTL
/// one less and a valid IPv4 header checksum, and otherwise unchanged but for an MSS clamp.
fn check_routed(routed: &[u8], original: &[u8], partial: bool) {
    assert_eq!(
        &original[..6],
        &fixture::GATEWAY_MAC,
        "routed a frame not for the gateway"
    );
    assert_eq!(
        &routed[6..12],
        &fixture::GATEWAY44_MAC,
        "routed frame's source MAC"
    );
    match routed.get(12..14) {
        Some([0x08, 0x06]) => {
            assert_eq!(routed.len(), 42, "ARP request length");
            assert_eq!(&routed[..6], &[0xff; 6], "ARP request not broadcast");
            assert_eq!(
                &routed[14..22],
                &[0, 1, 8, 0, 6, 4, 0, 1],
                "ARP request header"
            );
        }
        Some([0x08, 0x00]) => {
            assert_eq!(
                &routed[..6],
                &fixture::PORT_D_MAC,
                "routed frame's destination"
            );
            assert_eq!(routed.len(), original.len(), "routed frame's length");
            let ihl = usize::from(routed[14] & 0x0f) * 4;
            assert_eq!(routed[22], original[22] - 1, "TTL not decremented");
            assert_eq!(
                internet_sum(&routed[14..14 + ihl]),
                0xffff,
                "IP header checksum"
            );
            if routed[14 + ihl..] != original[14 + ihl..] {
                let mut unrouted = routed.to_vec();
                unrouted[..14 + ihl].copy_from_slice(&original[..14 + ihl]);
                check::assert_clamped(original, &unrouted, partial, false);
            }
        }
        other => panic!("routed frame of EtherType {other:02x?}"),
    }
}

/// Length of the Ethernet header (with every VLAN tag) of a frame the switch accepted.
fn eth_header_len(frame: &[u8]) -> usize {
    vswitch::wire::ethertype_past_tags(frame).map_or(14, |(_, at)| at)
}

/// A reply the switch generated: an ARP reply from the gateway or a known neighbour to the
/// requester, or an ICMP echo reply from the gateway whose checksums verify.
fn check_reply(reply: &[u8], requester: &[u8]) {
    assert_eq!(
        &reply[..6],
        &requester[6..12],
        "reply not addressed to the sender"
    );
    match reply.get(12..14) {
        Some([0x08, 0x06]) => {
            assert_eq!(reply.len(), 42, "ARP reply length");
            assert_eq!(
                &reply[14..22],
                &[0, 1, 8, 0, 6, 4, 0, 2],
                "ARP reply header"
            );
        }
        Some([0x08, 0x00]) => {
            assert_eq!(&reply[6..12], &fixture::GATEWAY_MAC, "echo reply source");
            let ihl = usize::from(reply[14] & 0x0f) * 4;
            let ip = &reply[14..];
            assert_eq!(
                usize::from(u16::from_be_bytes([ip[2], ip[3]])),
                ip.len(),
                "echo reply IP length"
            );
            assert_eq!(ip[9], 1, "echo reply protocol");
            assert_eq!(internet_sum(&ip[..ihl]), 0xffff, "echo reply IP checksum");
            assert!(matches!(ip[ihl], 0 | 11), "reply ICMP type {}", ip[ihl]);
            assert_eq!(internet_sum(&ip[ihl..]), 0xffff, "echo reply ICMP checksum");
        }
        other => panic!("reply of EtherType {other:02x?}"),
    }
}

/// RFC 1071 sum, folded, not complemented.
fn internet_sum(data: &[u8]) -> u16 {
    let mut acc: u64 = data
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fuzz_target!(|input: &[u8]| {
    let Some(&selector) = input.get(10) else {
        return;
    };
    let mut fx = TEMPLATE.with(Fixture::clone);
    let port = [fx.port_a, fx.port_b, fx.port_c][usize::from(selector % 3)];
    BUFFERS.with_borrow_mut(|(out, segments, buf)| {
        let Some((hdr, frame)) = tap_read(&mut fx, port, input, buf, out) else {
            return;
        };
        let original = input.get(VNET_HDR_LEN..).unwrap_or_default();
        if out.dropped().is_some() {
            assert!(
                out.ports().is_empty() && out.transmits().is_empty(),
                "a dropped frame still goes somewhere"
            );
            if let Some((reply_port, reply)) = out.reply() {
                assert_eq!(out.dropped(), Some(DropReason::OverMtu), "a drop answered");
                assert_eq!(reply_port, port, "error to another port");
                check::assert_too_big(reply, frame, fixture::GATEWAY_MAC, fixture::MTU);
            }
            return;
        }
        // A frame routed to an address not resolved yet is replaced by the ARP request.
        let replaced =
            frame.get(6..14) == Some(&[&fixture::GATEWAY44_MAC[..], &[0x08, 0x06]].concat()[..]);
        if replaced {
            assert_eq!(
                out.frame_range(),
                VNET_HDR_LEN..VNET_HDR_LEN + 42,
                "ARP request range"
            );
        } else {
            assert_eq!(out.frame_range(), VNET_HDR_LEN..input.len(), "frame range");
        }
        let partial = hdr.flags & VnetHdr::F_NEEDS_CSUM != 0;
        // Routed frames leave with another source MAC: they are checked below.
        let routed = frame.get(6..12) != original.get(6..12);
        if !routed && frame != original {
            check::assert_clamped(original, frame, partial, false);
        }
        let vni = fx.switch.port(port).expect("fixture port").config.vni;
        for &dest in out.ports() {
            assert_ne!(dest, port, "a frame went back to its own port");
            let dest_vni = fx.switch.port(dest).expect("destination port").config.vni;
            if dest_vni == vni {
                continue;
            }
            assert_eq!(
                (vni, dest),
                (Vni::DEFAULT, fx.port_d),
                "a frame crossed from one VNI to another"
            );
            check_routed(frame, original, partial);
        }
        if let Some((reply_port, reply)) = out.reply() {
            assert_eq!(reply_port, port, "reply to another port");
            check_reply(reply, original);
        }
        if !out.transmits().is_empty() {
            assert_eq!(vni, Vni::DEFAULT, "a peer got a VNI it does not carry");
            assert_eq!(
                out.vxlan_header(),
                &tunnel::encap_header(vni),
                "VXLAN header"
            );
            let limit = eth_header_len(frame) + usize::from(fixture::MTU);
            if hdr.is_gso() {
                // The worker cuts the super-frame into segments once for every peer.
                segments.clear();
                if offload::segment(&hdr, frame, segments).is_ok() {
                    check::assert_segments(&hdr, frame, segments);
                    for seg in segments.iter() {
                        assert!(seg.len() <= limit, "segment of {} bytes", seg.len());
                    }
                }
            } else {
                assert!(frame.len() <= limit, "frame over the MTU sent to a peer");
                let mut copy = frame.to_vec();
                let _ = offload::complete_checksum(&hdr, &mut copy);
            }
        }
    });
    fx.settle();
});
