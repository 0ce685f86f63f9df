//! TCP in the userspace GRO: which segments may merge (ACK with at most PSH, same ACK number
//! and options, contiguous sequence numbers, PSH ending the run) and how a merged run is marked
//! for the kernel (`GSO_TCPV4`/`GSO_TCPV6`).

use super::super::VnetHdr;
use super::super::layout::{
    ACK, Ip, PSH, TCP_ACK, TCP_CSUM, TCP_FLAGS, TCP_MIN_LEN, TCP_OFF, TCP_SEQ, be32,
};
use super::{Flow, Key, L4, Seg, seed_checksum};

/// The headers of a TCP segment at `ip`.
pub(super) fn parse(port: u32, frame: &[u8], ip: Ip) -> Option<Seg> {
    let thl = usize::from(*frame.get(ip.l4 + TCP_OFF)? >> 4) * 4;
    let data = ip.l4 + thl;
    if thl < TCP_MIN_LEN || data > ip.end {
        return None;
    }
    Some(Seg {
        key: Key::of(port, frame, &ip)?,
        data,
        l4: L4::Tcp {
            seq: be32(frame, ip.l4 + TCP_SEQ)?,
            flags: *frame.get(ip.l4 + TCP_FLAGS)?,
        },
        ip,
    })
}

/// Whether the TCP header lets the segment merge: ACK set, nothing but ACK and PSH, no
/// reserved bits or the historic NS flag.
pub(super) fn mergeable(frame: &[u8], ip: &Ip, flags: u8) -> bool {
    if flags & !(ACK | PSH) != 0 || flags & ACK == 0 {
        return false;
    }
    frame
        .get(ip.l4 + TCP_OFF)
        .is_some_and(|off| off & 0x0f == 0)
}

/// Whether a segment with sequence number `seq` continues the flow: the next sequence number,
/// the same ACK number and the same options.
pub(super) fn continues(flow: &Flow, frame: &[u8], seq: u32) -> bool {
    let l4 = flow.ip.l4;
    seq == flow.next_seq
        && flow.same(frame, l4 + TCP_ACK..l4 + TCP_ACK + 4)
        && flow.same(frame, l4 + TCP_MIN_LEN..flow.data)
}

/// Records an appended segment of `payload` bytes carrying `flags`: PSH goes on the
/// super-frame.
pub(super) fn appended(flow: &mut Flow, payload: usize, flags: u8) {
    flow.next_seq = flow.next_seq.wrapping_add(payload as u32);
    if flags & PSH != 0 {
        if let Some(f) = flow.buf.get_mut(flow.ip.l4 + TCP_FLAGS) {
            *f |= PSH;
        }
    }
}

/// Whether a segment with `flags` ends its run (PSH: the sender wants it delivered now).
pub(super) fn ends_run(flags: u8) -> bool {
    flags & PSH != 0
}

/// Prepares the TCP header of a merged super-frame whose IP header is final, and returns its
/// GSO type.
pub(super) fn seal(buf: &mut [u8], ip: &Ip) -> u8 {
    seed_checksum(buf, ip, TCP_CSUM);
    if ip.v6 {
        VnetHdr::GSO_TCPV6
    } else {
        VnetHdr::GSO_TCPV4
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::Coalescer;
    use super::super::testing::{on, push_all, split_tcp as split, zero};
    use crate::offload::fixtures::{self, ACK, FIN, PSH, RST, SYN, Spec, URG, check, payload};
    use crate::offload::{Segments, VnetHdr, complete_checksum, segment};
    use proptest::prelude::*;

    fn round_trip(spec: Spec, len: usize, mss: u16, flags: u8) {
        let (hdr, frame, segs) = split(&spec, 77, flags, len, mss);
        let mut c = Coalescer::new();
        let out = push_all(&mut c, &on(3, &segs), true);
        assert_eq!(out.len(), 1, "{len} bytes at {mss}");
        let (port, h, f) = &out[0];
        assert_eq!(*port, 3);
        if segs.len() == 1 {
            assert_eq!(*h, zero());
            assert_eq!(f, &segs[0]);
        } else {
            assert_eq!(*h, hdr);
            assert_eq!(f, &frame);
        }
        assert_eq!(c.open_flows(), 0);
    }

    #[test]
    fn round_trip_v4_v6() {
        for v6 in [false, true] {
            for ts in [None, Some(99)] {
                let spec = Spec {
                    v6,
                    ts,
                    ..Spec::default()
                };
                round_trip(spec, 500, 1398, ACK | PSH);
                round_trip(spec, 16 * 1398, 1398, ACK | PSH);
                round_trip(spec, 16 * 1398, 1398, ACK);
                round_trip(spec, 15 * 1398 + 1, 1398, ACK);
                round_trip(spec, 64 * 1000, 1000, ACK | PSH);
                round_trip(spec, 64 * 999 - 5, 999, ACK);
            }
        }
        round_trip(
            Spec {
                vlan: true,
                ..Spec::default()
            },
            8000,
            1398,
            ACK,
        );
    }

    #[test]
    fn short_or_psh_segment_ends_the_run_at_once() {
        let spec = Spec::default();
        let (hdr, frame, segs) = split(&spec, 1, ACK, 3 * 1000 + 10, 1000);
        let mut c = Coalescer::new();
        let out = push_all(&mut c, &on(0, &segs), false);
        assert_eq!(out, vec![(0, hdr, frame)]);
        let (hdr, frame, segs) = split(&spec, 1, ACK | PSH, 3000, 1000);
        let out = push_all(&mut c, &on(0, &segs), false);
        assert_eq!(out, vec![(0, hdr, frame)]);
        assert_eq!(c.open_flows(), 0);
    }

    #[test]
    fn limit_of_65535_bytes() {
        let spec = Spec::default();
        let mss = 1448;
        let mut segs = Vec::new();
        for i in 0..50u32 {
            segs.push(fixtures::tcp(&spec, i * 1448, ACK, &payload(mss)));
        }
        let mut c = Coalescer::new();
        let out = push_all(&mut c, &on(0, &segs), true);
        assert_eq!(out.len(), 2);
        let per_frame = 66 - 14; // IPv4 + TCP with timestamps
        let first = (65535 - per_frame) / mss;
        assert_eq!(out[0].2.len(), 14 + per_frame + first * mss);
        assert_eq!(out[1].2.len(), 14 + per_frame + (50 - first) * mss);
        assert!(out[0].2.len() - 14 <= 65535);
        for (_, h, f) in &out {
            assert_eq!(h.gso_size, 1448);
            resegment_and_check(h, f);
        }
    }

    /// Segments an emitted frame again and checks each piece with etherparse.
    fn resegment_and_check(h: &VnetHdr, f: &[u8]) -> Vec<fixtures::Checked> {
        let mut out = Segments::new();
        segment(h, f, &mut out).unwrap();
        out.iter().map(check).collect()
    }

    #[test]
    fn out_of_order_and_gap() {
        let spec = Spec::default();
        let (_, _, segs) = split(&spec, 1, ACK, 6000, 1000);
        let order = [0, 1, 3, 4, 2, 5];
        let frames: Vec<_> = order.iter().map(|&i| (0, segs[i].clone())).collect();
        let out = push_all(&mut Coalescer::new(), &frames, true);
        let seqs: Vec<Vec<u32>> = out
            .iter()
            .map(|(_, h, f)| resegment_and_check(h, f).iter().map(|c| c.seq()).collect())
            .collect();
        assert_eq!(
            seqs,
            vec![vec![1, 1001], vec![3001, 4001], vec![2001], vec![5001]]
        );
        assert_eq!(out[2].1, zero());
        // A retransmission of a segment already merged.
        let frames = on(0, &[segs[0].clone(), segs[1].clone(), segs[1].clone()]);
        let out = push_all(&mut Coalescer::new(), &frames, true);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], (0, zero(), segs[1].clone()));
    }

    #[test]
    fn flows_and_ports_kept_apart() {
        let a = Spec::default();
        let b = Spec { sport: 40001, ..a };
        let (ha, fa, sa) = split(&a, 1, ACK, 4000, 1000);
        let (hb, fb, sb) = split(&b, 9, ACK, 4000, 1000);
        let mut frames = Vec::new();
        for i in 0..4 {
            frames.push((0, sa[i].clone()));
            frames.push((0, sb[i].clone()));
            frames.push((1, sa[i].clone()));
        }
        let mut out = push_all(&mut Coalescer::new(), &frames, true);
        out.sort_by_key(|(p, _, f)| (*p, f.clone()));
        let mut want = vec![(0, ha, fa.clone()), (0, hb, fb), (1, ha, fa)];
        want.sort_by_key(|(p, _, f)| (*p, f.clone()));
        assert_eq!(out, want);
    }

    #[test]
    fn flags_pass_through_in_order() {
        let spec = Spec::default();
        for flag in [SYN, FIN, RST, URG, fixtures::CWR, fixtures::ECE] {
            let (hdr, frame, segs) = split(&spec, 1, ACK, 2000, 1000);
            let odd = fixtures::tcp(&spec, 2001, ACK | flag, &payload(1000));
            let next = fixtures::tcp(&spec, 3001, ACK, &payload(1000));
            let frames = on(
                0,
                &[segs[0].clone(), segs[1].clone(), odd.clone(), next.clone()],
            );
            let out = push_all(&mut Coalescer::new(), &frames, true);
            assert_eq!(
                out,
                vec![(0, hdr, frame), (0, zero(), odd), (0, zero(), next)],
                "flag {flag:#x}"
            );
        }
        // Not even ACK: no merge.
        let bare = fixtures::tcp(&spec, 1, 0, &payload(100));
        let out = push_all(
            &mut Coalescer::new(),
            &on(0, &[bare.clone(), bare.clone()]),
            true,
        );
        assert_eq!(out, vec![(0, zero(), bare.clone()), (0, zero(), bare)]);
    }

    #[test]
    fn header_changes_end_the_run() {
        let spec = Spec::default();
        let base = fixtures::tcp(&spec, 1, ACK, &payload(1000));
        let changes = [
            Spec {
                ts: Some(1),
                ..spec
            },
            Spec { ts: None, ..spec },
            Spec { ack: 5, ..spec },
            Spec { ttl: 3, ..spec },
        ];
        for (i, s) in changes.iter().enumerate() {
            let other = fixtures::tcp(s, 1001, ACK, &payload(1000));
            let out = push_all(
                &mut Coalescer::new(),
                &on(0, &[base.clone(), other.clone()]),
                true,
            );
            assert_eq!(
                out,
                vec![(0, zero(), base.clone()), (0, zero(), other)],
                "case {i}"
            );
        }
        // The window may change within a run (the first segment's is kept, as Linux does).
        let other = fixtures::tcp(&Spec { window: 9, ..spec }, 1001, ACK, &payload(1000));
        let out = push_all(&mut Coalescer::new(), &on(0, &[base.clone(), other]), true);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.gso_type, VnetHdr::GSO_TCPV4);
        // A larger segment than the first starts a new run.
        let big = fixtures::tcp(&spec, 1001, ACK, &payload(1001));
        let out = push_all(
            &mut Coalescer::new(),
            &on(0, &[base.clone(), big.clone()]),
            true,
        );
        assert_eq!(out, vec![(0, zero(), base.clone()), (0, zero(), big)]);
        // DF differs; and IPv4 options are never merged.
        let mut nodf = fixtures::tcp(&spec, 1001, ACK, &payload(1000));
        nodf[20] &= !0x40;
        fixtures::set_ipv4_checksum(&mut nodf);
        let out = push_all(
            &mut Coalescer::new(),
            &on(0, &[base.clone(), nodf.clone()]),
            true,
        );
        assert_eq!(out, vec![(0, zero(), base.clone()), (0, zero(), nodf)]);
    }

    #[test]
    fn bad_checksum_never_merged() {
        let spec = Spec::default();
        let (hdr, frame, segs) = split(&spec, 1, ACK, 2000, 1000);
        let mut bad = fixtures::tcp(&spec, 2001, ACK, &payload(1000));
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let frames = on(0, &[segs[0].clone(), segs[1].clone(), bad.clone()]);
        let out = push_all(&mut Coalescer::new(), &frames, true);
        assert_eq!(out, vec![(0, hdr, frame), (0, zero(), bad.clone())]);
        // Nor started with.
        let next = fixtures::tcp(&spec, 3001, ACK, &payload(1000));
        let out = push_all(
            &mut Coalescer::new(),
            &on(0, &[bad.clone(), next.clone()]),
            true,
        );
        assert_eq!(out, vec![(0, zero(), bad), (0, zero(), next)]);
    }

    #[test]
    fn a_bad_ipv4_header_checksum_is_never_merged() {
        let spec = Spec::default();
        let (hdr, frame, segs) = split(&spec, 1, ACK, 2000, 1000);
        let mut bad = fixtures::tcp(&spec, 2001, ACK, &payload(1000));
        bad[24] ^= 0x01;
        let frames = on(0, &[segs[0].clone(), segs[1].clone(), bad.clone()]);
        let out = push_all(&mut Coalescer::new(), &frames, true);
        assert_eq!(out, vec![(0, hdr, frame), (0, zero(), bad)]);
    }

    #[test]
    fn partial_checksums_are_merged() {
        for v6 in [false, true] {
            let spec = Spec {
                v6,
                ..Spec::default()
            };
            let (hdr, frame, mut segs) = split(&spec, 1, ACK, 3000, 1000);
            for s in &mut segs {
                fixtures::make_partial(s, &spec, 6);
            }
            let out = push_all(&mut Coalescer::new(), &on(0, &segs), true);
            assert_eq!(out, vec![(0, hdr, frame)]);
            // Alone, it is marked so the kernel completes it.
            let out = push_all(&mut Coalescer::new(), &on(0, &segs[..1]), true);
            let l4 = fixtures::l4(&spec) as u16;
            let want = VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                csum_start: l4,
                csum_offset: 16,
                ..VnetHdr::default()
            };
            assert_eq!(out, vec![(0, want, segs[0].clone())]);
            let mut f = out[0].2.clone();
            complete_checksum(&out[0].1, &mut f).unwrap();
            check(&f);
        }
    }

    /// One flow of a random test: its spec and the segments of a super-frame.
    fn flow_frames(i: u16, v6: bool, len: usize, mss: u16) -> Vec<Vec<u8>> {
        let spec = Spec {
            v6,
            sport: 1000 + i,
            ..Spec::default()
        };
        split(&spec, u32::from(i) << 20, ACK, len, mss).2
    }

    proptest! {
        #[test]
        fn random_sizes_round_trip(v6 in any::<bool>(), ts in any::<bool>(),
                                   mss in 1u16..2000, len in 1usize..64_000,
                                   psh in any::<bool>()) {
            let spec = Spec { v6, ts: ts.then_some(5), ..Spec::default() };
            let hdrs = fixtures::l4(&spec) - 14 + fixtures::tcp_len(&spec);
            let len = len.min(65535 - hdrs);
            let mss = mss.max((len / crate::offload::MAX_SEGMENTS) as u16 + 1);
            round_trip(spec, len, mss, if psh { ACK | PSH } else { ACK });
        }

        #[test]
        fn interleaved_flows_keep_each_stream(
            picks in proptest::collection::vec((0usize..3, 0u32..2, any::<bool>()), 0..80),
            v6 in any::<bool>(), mss in 200u16..1500, flows in 1usize..4,
        ) {
            let segs: Vec<Vec<Vec<u8>>> =
                (0..3).map(|i| flow_frames(i as u16, v6, 20 * usize::from(mss), mss)).collect();
            let mut next = [[0usize; 2]; 3];
            let mut input = Vec::new();
            for (flow, port, skip) in picks {
                let n = &mut next[flow][port as usize];
                if skip { *n += 1; }
                if let Some(f) = segs[flow].get(*n) {
                    input.push((port, f.clone()));
                    *n += 1;
                }
            }
            let mut c = Coalescer::with_flows(flows);
            let out = push_all(&mut c, &input, true);
            // Per (port, flow), the segments come out in the order they went in.
            let key = |f: &[u8], port: u32| (port, f[fixtures::l4(&Spec { v6, ..Spec::default() })]
                , f[fixtures::l4(&Spec { v6, ..Spec::default() }) + 1]);
            for port in 0..2u32 {
                for flow in 0..3u16 {
                    let sport = (1000 + flow).to_be_bytes();
                    let want: Vec<Vec<u8>> = input
                        .iter()
                        .filter(|(p, f)| key(f, *p) == (port, sport[0], sport[1]))
                        .map(|(_, f)| check(f).payload)
                        .collect();
                    let mut got = Vec::new();
                    for (p, h, f) in &out {
                        if key(f, *p) != (port, sport[0], sport[1]) { continue; }
                        for c in resegment_and_check(h, f) {
                            got.push(c.payload);
                        }
                    }
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(c.open_flows(), 0);
        }
    }
}
