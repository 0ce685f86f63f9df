//! Completing checksums a sender left to an offload that never ran.
//!
//! A Linux sender with checksum offload writes only the pseudo-header sum into a TCP or UDP
//! checksum field and expects its NIC to finish the job. When the "NIC" is a veth or another
//! software device, the packet crosses the underlay that way, and the kernel's own VXLAN keeps
//! it marked as such end to end. A userspace switch receives plain bytes instead, so it finishes
//! the checksum itself before the frame reaches a container that would otherwise drop it. A
//! correct checksum is never touched.

const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Where an L4 checksum lives and what its pseudo-header adds.
struct L4 {
    start: usize,
    end: usize,
    field: usize,
    pseudo: u32,
    udp: bool,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn locate(frame: &[u8]) -> Option<L4> {
    let mut l3 = 14;
    let mut ethertype = be16(frame, 12)?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16)?;
        l3 = 18;
    }
    let (proto, start, end, pseudo_addrs) = match ethertype {
        ETHERTYPE_IPV4 => {
            let ihl = usize::from(frame.get(l3)? & 0x0f) * 4;
            let total = usize::from(be16(frame, l3 + 2)?);
            let fragment = be16(frame, l3 + 6)? & 0x3fff;
            if ihl < 20 || fragment != 0 || total < ihl {
                return None;
            }
            let addrs = frame.get(l3 + 12..l3 + 20)?;
            (*frame.get(l3 + 9)?, l3 + ihl, l3 + total, addrs)
        }
        ETHERTYPE_IPV6 => {
            let payload = usize::from(be16(frame, l3 + 4)?);
            let addrs = frame.get(l3 + 8..l3 + 40)?;
            (*frame.get(l3 + 6)?, l3 + 40, l3 + 40 + payload, addrs)
        }
        _ => return None,
    };
    if end > frame.len() {
        return None;
    }
    let (offset, udp) = match proto {
        PROTO_TCP => (16, false),
        PROTO_UDP => (6, true),
        _ => return None,
    };
    let len = end - start;
    if len < offset + 2 {
        return None;
    }
    let pseudo = sum(pseudo_addrs, u64::from(proto) + len as u64);
    Some(L4 {
        start,
        end,
        field: start + offset,
        pseudo: u32::from(fold(pseudo)),
        udp,
    })
}

/// Finishes the TCP or UDP checksum of `frame` if its field holds only the pseudo-header sum
/// and the packet does not already verify. Returns whether the frame was changed.
pub fn complete_partial_checksum(frame: &mut [u8]) -> bool {
    let Some(l4) = locate(frame) else {
        return false;
    };
    let Some(field) = be16(frame, l4.field) else {
        return false;
    };
    if u32::from(field) != l4.pseudo || (l4.udp && field == 0) {
        return false;
    }
    let segment = &frame[l4.start..l4.end];
    if fold(sum(segment, u64::from(l4.pseudo))) == 0xffff {
        return false;
    }
    // The field holds the pseudo-header sum already: summing the segment as it is gives the
    // full sum.
    let mut checksum = !fold(sum(segment, 0));
    if l4.udp && checksum == 0 {
        checksum = 0xffff;
    }
    frame[l4.field..l4.field + 2].copy_from_slice(&checksum.to_be_bytes());
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
    fn make_partial(frame: &mut [u8]) -> u16 {
        let l4 = locate(frame).unwrap();
        let full = be16(frame, l4.field).unwrap();
        frame[l4.field..l4.field + 2].copy_from_slice(&(l4.pseudo as u16).to_be_bytes());
        full
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
