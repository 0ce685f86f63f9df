//! A cheap hash of an Ethernet frame's flow, for the outer UDP source port of a tunnel.

use super::{EtherType, IpProtocol, read_u16, read_u32};

const SEED: u64 = 0x51_7cc1_b727_220a;
const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn mix(h: u64, word: u64) -> u64 {
    (h.rotate_left(5) ^ word).wrapping_mul(MUL)
}

#[inline]
fn finish(mut h: u64) -> u32 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h as u32
}

/// Hashes the flow of an Ethernet frame: MACs, EtherType (through one 802.1Q tag), IPv4 or IPv6
/// addresses, protocol, and TCP/UDP ports when present (not in non-first fragments).
///
/// Frames of one flow always hash alike, so their tunnel packets take one underlay path and stay
/// in order. Reads only what the frame holds: short or malformed input hashes what is there and
/// never panics.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let Some(macs) = frame.get(..12) else {
        return finish(mix(SEED, frame.len() as u64));
    };
    let mut h = SEED;
    h = mix(
        h,
        u64::from(read_u32(macs, 0)) << 16 | u64::from(read_u16(macs, 4)),
    );
    h = mix(
        h,
        u64::from(read_u32(macs, 6)) << 16 | u64::from(read_u16(macs, 10)),
    );
    let Some(mut ethertype) = frame.get(12..14).map(|b| read_u16(b, 0)) else {
        return finish(h);
    };
    let mut at = 14;
    if ethertype == EtherType::VLAN.0 {
        let Some(inner) = frame.get(16..18).map(|b| read_u16(b, 0)) else {
            return finish(mix(h, u64::from(ethertype)));
        };
        ethertype = inner;
        at = 18;
    }
    h = mix(h, u64::from(ethertype));
    let l3 = &frame[at..];
    let (protocol, l4) = match EtherType(ethertype) {
        EtherType::IPV4 => {
            let Some(header) = l3.get(..20) else {
                return finish(h);
            };
            h = mix(
                h,
                u64::from(read_u32(header, 12)) << 32 | u64::from(read_u32(header, 16)),
            );
            let protocol = header[9];
            let header_len = usize::from(header[0] & 0x0f) * 4;
            let fragment = read_u16(header, 6) & 0x1fff != 0;
            if fragment || header_len < 20 {
                return finish(mix(h, u64::from(protocol)));
            }
            (protocol, l3.get(header_len..))
        }
        EtherType::IPV6 => {
            let Some(header) = l3.get(..40) else {
                return finish(h);
            };
            for word in (8..40).step_by(8) {
                h = mix(
                    h,
                    u64::from(read_u32(header, word)) << 32 | u64::from(read_u32(header, word + 4)),
                );
            }
            (header[6], l3.get(40..))
        }
        _ => return finish(h),
    };
    h = mix(h, u64::from(protocol));
    if (protocol == IpProtocol::TCP.0 || protocol == IpProtocol::UDP.0)
        && let Some(ports) = l4.and_then(|l4| l4.get(..4))
    {
        h = mix(h, u64::from(read_u32(ports, 0)));
    }
    finish(h)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn udp(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(src_port, dst_port)
            .write(&mut out, b"payload")
            .unwrap();
        out
    }

    #[test]
    fn same_flow_same_hash() {
        assert_eq!(flow_hash(&udp(1000, 53)), flow_hash(&udp(1000, 53)));
        let mut other_payload = udp(1000, 53);
        let last = other_payload.len() - 1;
        other_payload[last] ^= 0xff;
        assert_eq!(flow_hash(&udp(1000, 53)), flow_hash(&other_payload));
    }

    #[test]
    fn ports_change_hash() {
        let a = flow_hash(&udp(1000, 53));
        let distinct: std::collections::HashSet<u32> =
            (1000..1100).map(|p| flow_hash(&udp(p, 53))).collect();
        assert!(distinct.len() > 95);
        assert!(distinct.contains(&a));
    }

    #[test]
    fn tcp_and_ipv6() {
        let mut v6 = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(40000, 80, 1, 1000)
            .write(&mut v6, b"x")
            .unwrap();
        let h1 = flow_hash(&v6);
        v6[14 + 40 + 1] ^= 1;
        assert_ne!(h1, flow_hash(&v6));
    }

    #[test]
    fn short_input_never_panics() {
        let frame = udp(1, 2);
        for len in 0..frame.len() {
            flow_hash(&frame[..len]);
        }
        let mut tagged = frame[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&frame[12..]);
        for len in 0..tagged.len() {
            flow_hash(&tagged[..len]);
        }
    }
}
