//! Completing checksums a sender left to an offload that never ran.
//!
//! A Linux sender with checksum offload writes only the pseudo-header sum into a TCP or UDP
//! checksum field and expects its NIC to finish the job. When the "NIC" is a veth or another
//! software device, the packet crosses the underlay that way, and the kernel's own VXLAN keeps
//! it marked as such end to end. A userspace switch receives plain bytes instead, so it finishes
//! the checksum itself before the frame reaches a container that would otherwise drop it. A
//! correct checksum is never touched.

use super::layout::{PROTO_TCP, PROTO_UDP, TCP_CSUM, UDP_CSUM, be16, parse_ip, pseudo, put16};
use crate::wire::{checksum, fold};

/// Finishes the TCP or UDP checksum of `frame` if its field holds only the pseudo-header sum
/// and the packet does not already verify. Returns whether the frame was changed.
pub fn complete_partial_checksum(frame: &mut [u8]) -> bool {
    let Ok(ip) = parse_ip(frame) else {
        return false;
    };
    let (offset, udp) = match ip.proto {
        PROTO_TCP if !ip.fragment => (TCP_CSUM, false),
        PROTO_UDP if !ip.fragment => (UDP_CSUM, true),
        _ => return false,
    };
    let field = ip.l4 + offset;
    if field + 2 > ip.end {
        return false;
    }
    let pseudo = pseudo(frame, &ip, ip.end - ip.l4);
    let Some(value) = be16(frame, field) else {
        return false;
    };
    if value != fold(pseudo) || (udp && value == 0) {
        return false;
    }
    let segment = &frame[ip.l4..ip.end];
    if checksum(segment, pseudo) == 0 {
        return false;
    }
    // The field holds the pseudo-header sum already: summing the segment as it is gives the
    // full sum.
    let mut sum = checksum(segment, 0);
    if udp && sum == 0 {
        sum = 0xffff;
    }
    put16(frame, field, sum);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
            .tcp(40000, 5201, 7, 65535);
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).unwrap();
        frame
    }

    fn udp6_frame(payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(5000, 6000);
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).unwrap();
        frame
    }

    /// What a Linux sender with checksum offload puts on the wire.
    fn make_partial(frame: &mut [u8]) {
        let ip = parse_ip(frame).unwrap();
        let field = ip.l4
            + if ip.proto == PROTO_TCP {
                TCP_CSUM
            } else {
                UDP_CSUM
            };
        let partial = fold(pseudo(frame, &ip, ip.end - ip.l4));
        put16(frame, field, partial);
    }

    #[test]
    fn partial_tcp_checksums_are_completed() {
        for len in [0usize, 1, 2, 3, 100, 1397] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut frame = tcp_frame(&payload);
            let good = frame.clone();
            make_partial(&mut frame);
            assert_ne!(frame, good);
            assert!(complete_partial_checksum(&mut frame), "len {len}");
            assert_eq!(frame, good, "len {len}");
        }
    }

    #[test]
    fn partial_udp_over_ipv6_is_completed() {
        let mut frame = udp6_frame(b"hello, overlay");
        let good = frame.clone();
        make_partial(&mut frame);
        assert!(complete_partial_checksum(&mut frame));
        assert_eq!(frame, good);
    }

    #[test]
    fn correct_or_other_frames_are_left_alone() {
        let mut frame = tcp_frame(b"data");
        let good = frame.clone();
        assert!(!complete_partial_checksum(&mut frame));
        assert_eq!(frame, good);
        // A corrupted (not partial) checksum is the receiver's to reject.
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let before = bad.clone();
        assert!(!complete_partial_checksum(&mut bad));
        assert_eq!(bad, before);
        // Truncated, runt and non-IP frames.
        for cut in 0..good.len() {
            let mut short = good[..cut].to_vec();
            complete_partial_checksum(&mut short);
        }
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(!complete_partial_checksum(&mut arp));
    }
}
