//! UDP in the userspace GRO: which datagrams may merge (a UDP length that matches the IP
//! length, a checksum present, at most [`MAX_DATAGRAMS`] per run) and how a merged run is
//! marked for the kernel (`GSO_UDP_L4`, USO).
//!
//! What the kernel wants in a USO super-frame was checked against Linux 6.18 writing to a TAP:
//! the UDP length and the pseudo-header sum in the checksum field both cover the whole merged
//! payload, as a sending socket with `UDP_SEGMENT` leaves them. The receive path trims the
//! packet to the UDP length before segmenting it (`udp_rcv_segment`), so a super-frame whose
//! UDP header describes one datagram is dropped without a counter.

use super::super::VnetHdr;
use super::super::layout::{Ip, UDP_CSUM, UDP_LEN, UDP_LEN_FIELD, be16, put16};
use super::{Flow, Key, L4, Seg, seed_checksum};

/// The most datagrams one super-frame carries.
pub const MAX_DATAGRAMS: usize = 64;

/// The headers of a UDP datagram at `ip`.
pub(super) fn parse(port: u32, frame: &[u8], ip: Ip) -> Option<Seg> {
    let data = ip.l4 + UDP_LEN;
    if data > ip.end {
        return None;
    }
    Some(Seg {
        key: Key::of(port, frame, &ip)?,
        data,
        l4: L4::Udp,
        ip,
    })
}

/// Whether the UDP header lets the datagram merge: its length is the IP payload's, and its
/// checksum field is not zero (IPv4's "no checksum", never valid over IPv6).
pub(super) fn mergeable(frame: &[u8], ip: &Ip) -> bool {
    be16(frame, ip.l4 + UDP_LEN_FIELD).is_some_and(|len| usize::from(len) == ip.end - ip.l4)
        && be16(frame, ip.l4 + UDP_CSUM).is_some_and(|sum| sum != 0)
}

/// Whether the flow has room for one more datagram.
pub(super) fn continues(flow: &Flow) -> bool {
    !full(flow)
}

/// Whether the flow holds as many datagrams as a super-frame may carry.
pub(super) fn full(flow: &Flow) -> bool {
    flow.segs >= MAX_DATAGRAMS
}

/// Prepares the UDP header of a merged super-frame whose IP header is final, and returns its
/// GSO type: the length of the whole merged datagram and the pseudo-header sum of it.
pub(super) fn seal(buf: &mut [u8], ip: &Ip) -> u8 {
    put16(buf, ip.l4 + UDP_LEN_FIELD, (buf.len() - ip.l4) as u16);
    seed_checksum(buf, ip, UDP_CSUM);
    VnetHdr::GSO_UDP_L4
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::Coalescer;
    use super::super::testing::{Out, on, push_all, resegment, split_udp as split, zero};
    use super::*;
    use crate::offload::complete_checksum;
    use crate::offload::fixtures::{self, Spec, check, payload};
    use proptest::prelude::*;

    fn v4() -> Spec {
        Spec::default()
    }

    fn v6() -> Spec {
        Spec {
            v6: true,
            ..Spec::default()
        }
    }

    /// `n` datagrams of `size` bytes then one of `last` bytes (none when 0), IPv4
    /// identifications counting up, as a sender of one flow writes them.
    fn run(spec: &Spec, n: usize, size: usize, last: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for i in 0..n + usize::from(last > 0) {
            let len = if i < n { size } else { last };
            let s = Spec {
                ip_id: spec.ip_id.wrapping_add(i as u16),
                ..*spec
            };
            let p: Vec<u8> = payload(len + i).split_off(i);
            out.push(fixtures::udp(&s, &p));
        }
        out
    }

    /// Checks that `out` is one frame per expected run: a super-frame that segments back into
    /// exactly the datagrams of the run, or the datagram itself with a zero header.
    fn assert_runs(out: &Out, runs: &[&[Vec<u8>]]) {
        assert_eq!(out.len(), runs.len(), "number of frames emitted");
        for ((_, h, f), run) in out.iter().zip(runs) {
            if run.len() == 1 {
                assert_eq!(*h, zero());
                assert_eq!(f, &run[0]);
                continue;
            }
            assert_eq!(h.gso_type, VnetHdr::GSO_UDP_L4);
            assert_eq!(resegment(h, f), run.to_vec());
        }
    }

    /// The super-frame built from the datagrams `segment` cut from a USO frame is that frame,
    /// and segmenting it again gives the same datagrams.
    fn round_trip(spec: Spec, len: usize, size: u16) {
        let (hdr, frame, dgrams) = split(&spec, len, size);
        let mut c = Coalescer::new();
        let out = push_all(&mut c, &on(3, &dgrams), true);
        assert_eq!(out.len(), 1, "{len} bytes in datagrams of {size}");
        let (port, h, f) = &out[0];
        assert_eq!(*port, 3);
        if dgrams.len() == 1 {
            assert_eq!(*h, zero());
            assert_eq!(f, &dgrams[0]);
        } else {
            assert_eq!(*h, hdr);
            assert_eq!(f, &frame);
            assert_eq!(resegment(h, f), dgrams);
        }
        for d in &dgrams {
            check(d);
        }
        assert_eq!(c.open_flows(), 0);
    }

    #[test]
    fn one_sixteen_sixtyfour_v4_v6() {
        for spec in [v4(), v6()] {
            round_trip(spec, 64, 64);
            round_trip(spec, 16 * 64, 64);
            round_trip(spec, 64 * 64, 64);
            round_trip(spec, 16 * 1400, 1400);
            round_trip(spec, 64 * 1000, 1000);
        }
        round_trip(Spec { vlan: true, ..v4() }, 16 * 1200, 1200);
        round_trip(Spec { vlan: true, ..v6() }, 16 * 1200, 1200);
    }

    #[test]
    fn odd_sizes_and_a_shorter_last() {
        for spec in [v4(), v6()] {
            round_trip(spec, 17 * 33, 33);
            round_trip(spec, 17, 1);
            round_trip(spec, 9 * 999 + 1, 999);
            round_trip(spec, 63 * 65 + 7, 65);
            round_trip(spec, 2 * 18 - 1, 18);
        }
    }

    #[test]
    fn shorter_datagram_ends_the_run_at_once() {
        for spec in [v4(), v6()] {
            let dgrams = run(&spec, 5, 100, 41);
            let mut c = Coalescer::new();
            let out = push_all(&mut c, &on(0, &dgrams), false);
            assert_eq!(c.open_flows(), 0);
            assert_runs(&out, &[&dgrams]);
            assert_eq!(out[0].1.gso_size, 100);
        }
    }

    #[test]
    fn more_than_64_datagrams_make_several_super_frames() {
        for spec in [v4(), v6()] {
            let dgrams = run(&spec, 150, 64, 0);
            let mut c = Coalescer::new();
            let out = push_all(&mut c, &on(0, &dgrams), false);
            // Full runs leave at once; the rest waits for the end of the batch.
            assert_runs(&out, &[&dgrams[..64], &dgrams[64..128]]);
            assert_eq!(c.open_flows(), 1);
            let rest = push_all(&mut c, &[], true);
            assert_runs(&rest, &[&dgrams[128..]]);
        }
    }

    #[test]
    fn limit_of_65535_bytes() {
        for spec in [v4(), v6()] {
            let size = 1472;
            let dgrams = run(&spec, 50, size, 0);
            let out = push_all(&mut Coalescer::new(), &on(0, &dgrams), true);
            let hdrs = fixtures::l4(&spec) - 14 + 8;
            let first = (65535 - hdrs) / size;
            assert_runs(&out, &[&dgrams[..first], &dgrams[first..]]);
            assert!(out[0].2.len() - 14 <= 65535);
            assert!(out[0].2.len() - 14 + size > 65535);
        }
    }

    #[test]
    fn another_flow_breaks_nothing_but_a_port_or_tuple_change_starts_anew() {
        let a = v4();
        let b = Spec { dport: 53, ..a };
        let da = run(&a, 4, 64, 0);
        let db = run(&b, 4, 64, 0);
        let mut frames = Vec::new();
        for i in 0..4 {
            frames.push((0, da[i].clone()));
            frames.push((0, db[i].clone()));
            frames.push((1, da[i].clone()));
        }
        let out = push_all(&mut Coalescer::new(), &frames, true);
        assert_eq!(out.len(), 3);
        let ports: Vec<u32> = out.iter().map(|o| o.0).collect();
        assert_eq!(ports, [0, 0, 1]);
        assert_runs(&out, &[&da, &db, &da]);
        // With one slot, another flow in between ends each run.
        let out = push_all(&mut Coalescer::with_flows(1), &frames[..6], true);
        let singles: Vec<&[Vec<u8>]> = frames[..6]
            .iter()
            .map(|(_, f)| std::slice::from_ref(f))
            .collect();
        assert_runs(&out, &singles);
    }

    #[test]
    fn a_different_size_ends_the_run() {
        let spec = v4();
        let mut dgrams = run(&spec, 3, 100, 0);
        let big = run(&Spec { ip_id: 9, ..spec }, 3, 101, 0);
        dgrams.extend(big.iter().cloned());
        let out = push_all(&mut Coalescer::new(), &on(0, &dgrams), true);
        assert_runs(&out, &[&dgrams[..3], &dgrams[3..]]);
        assert_eq!(out[1].1.gso_size, 101);
    }

    #[test]
    fn header_changes_end_the_run() {
        // (IPv6, byte, bits flipped): TOS, TTL, DF, destination MAC, destination address;
        // traffic class, flow label, hop limit.
        let changes = [
            (false, 15, 0x10),
            (false, 22, 0x01),
            (false, 20, 0x40),
            (false, 0, 0x04),
            (false, 30, 0x01),
            (true, 14, 0x01),
            (true, 17, 0x01),
            (true, 21, 0x01),
        ];
        for (v6, at, bits) in changes {
            let spec = Spec {
                v6,
                ..Spec::default()
            };
            let base = run(&spec, 2, 64, 0);
            let mut other = fixtures::udp(&Spec { ip_id: 7, ..spec }, &payload(64));
            other[at] ^= bits;
            if !v6 {
                fixtures::set_ipv4_checksum(&mut other);
            }
            fixtures::set_udp_checksum(&mut other, &spec, 0);
            let sum = checksum_of(&other, &spec);
            fixtures::set_udp_checksum(&mut other, &spec, sum);
            check(&other);
            let mut frames = base.clone();
            frames.push(other.clone());
            let out = push_all(&mut Coalescer::new(), &on(0, &frames), true);
            assert_eq!(out.len(), 2, "byte {at}");
            assert_runs(&out, &[&base, &[other]]);
        }
    }

    /// The UDP checksum `frame` should carry.
    fn checksum_of(frame: &[u8], spec: &Spec) -> u16 {
        let l4 = fixtures::l4(spec);
        let p = u32::from(fixtures::pseudo_folded(frame, spec, 17));
        crate::wire::checksum(&frame[l4..], p)
    }

    #[test]
    fn bad_zero_or_absent_checksums_are_never_merged() {
        for spec in [v4(), v6()] {
            let dgrams = run(&spec, 4, 64, 0);
            let mut bad = dgrams[2].clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            let frames = on(
                0,
                &[
                    dgrams[0].clone(),
                    dgrams[1].clone(),
                    bad.clone(),
                    dgrams[3].clone(),
                ],
            );
            let out = push_all(&mut Coalescer::new(), &frames, true);
            assert_runs(&out, &[&dgrams[..2], &[bad.clone()], &dgrams[3..]]);
            // Nor started with.
            let frames = on(0, &[bad.clone(), dgrams[3].clone()]);
            let out = push_all(&mut Coalescer::new(), &frames, true);
            assert_eq!(out, vec![(0, zero(), bad), (0, zero(), dgrams[3].clone())]);
            // A zero checksum: "none" over IPv4, invalid over IPv6.
            let mut none: Vec<Vec<u8>> = dgrams.clone();
            for d in &mut none {
                fixtures::set_udp_checksum(d, &spec, 0);
            }
            let out = push_all(&mut Coalescer::new(), &on(0, &none), true);
            let singles: Vec<&[Vec<u8>]> = none.iter().map(std::slice::from_ref).collect();
            assert_runs(&out, &singles);
        }
    }

    #[test]
    fn fragments_are_never_merged() {
        let spec = v4();
        let dgrams = run(&spec, 4, 64, 0);
        // A first fragment (MF set) of the flow ends the run.
        let mut first = dgrams[2].clone();
        first[20] |= 0x20;
        fixtures::set_ipv4_checksum(&mut first);
        let frames = on(
            0,
            &[
                dgrams[0].clone(),
                dgrams[1].clone(),
                first.clone(),
                dgrams[3].clone(),
            ],
        );
        let out = push_all(&mut Coalescer::new(), &frames, true);
        assert_runs(&out, &[&dgrams[..2], &[first], &dgrams[3..]]);
        // A later fragment carries no ports: it belongs to no flow and passes at once.
        let mut later = dgrams[2].clone();
        later[21] = 8;
        fixtures::set_ipv4_checksum(&mut later);
        let frames = on(0, &[dgrams[0].clone(), later.clone(), dgrams[1].clone()]);
        let out = push_all(&mut Coalescer::new(), &frames, true);
        assert_runs(&out, &[&[later], &dgrams[..2]]);
    }

    #[test]
    fn lengths_must_agree_and_options_or_extension_headers_pass_through() {
        let spec = v4();
        let dgrams = run(&spec, 3, 64, 0);
        // A UDP length shorter than the IP payload (trailing bytes inside the IP packet).
        let mut odd = dgrams[1].clone();
        let l4 = fixtures::l4(&spec);
        odd[l4 + 4..l4 + 6].copy_from_slice(&(8u16 + 60).to_be_bytes());
        let out = push_all(
            &mut Coalescer::new(),
            &on(0, &[dgrams[0].clone(), odd.clone()]),
            true,
        );
        assert_eq!(out, vec![(0, zero(), dgrams[0].clone()), (0, zero(), odd)]);
        // IPv6 with a hop-by-hop header is not UDP to the coalescer.
        let mut ext = fixtures::udp(&v6(), &payload(64));
        ext[14 + 6] = 0;
        let out = push_all(
            &mut Coalescer::new(),
            &on(0, &[ext.clone(), ext.clone()]),
            true,
        );
        assert_eq!(out, vec![(0, zero(), ext.clone()), (0, zero(), ext)]);
        // An empty datagram is passed through.
        let empty = fixtures::udp(&spec, &[]);
        let out = push_all(
            &mut Coalescer::new(),
            &on(0, &[empty.clone(), empty.clone()]),
            true,
        );
        assert_eq!(out, vec![(0, zero(), empty.clone()), (0, zero(), empty)]);
    }

    #[test]
    fn padding_after_the_ip_packet_is_dropped() {
        let spec = v4();
        let dgrams = run(&spec, 3, 4, 0);
        let padded: Vec<Vec<u8>> = dgrams
            .iter()
            .map(|d| {
                let mut d = d.clone();
                d.resize(60, 0xee);
                d
            })
            .collect();
        let out = push_all(&mut Coalescer::new(), &on(0, &padded), true);
        assert_runs(&out, &[&dgrams]);
    }

    #[test]
    fn partial_checksums_are_merged() {
        for spec in [v4(), v6()] {
            let (hdr, frame, mut dgrams) = split(&spec, 3 * 100, 100);
            for d in &mut dgrams {
                fixtures::make_partial(d, &spec, 17);
            }
            let out = push_all(&mut Coalescer::new(), &on(0, &dgrams), true);
            assert_eq!(out, vec![(0, hdr, frame)]);
            // Alone, it is marked so the kernel completes it.
            let out = push_all(&mut Coalescer::new(), &on(0, &dgrams[..1]), true);
            let want = VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                csum_start: fixtures::l4(&spec) as u16,
                csum_offset: 6,
                ..VnetHdr::default()
            };
            assert_eq!(out, vec![(0, want, dgrams[0].clone())]);
            let mut f = out[0].2.clone();
            complete_checksum(&out[0].1, &mut f).unwrap();
            check(&f);
        }
    }

    #[test]
    fn the_super_frame_is_what_the_kernel_takes() {
        let spec = v4();
        let dgrams = run(&spec, 20, 18, 0);
        let out = push_all(&mut Coalescer::new(), &on(0, &dgrams), true);
        let (_, h, f) = &out[0];
        let l4 = fixtures::l4(&spec);
        assert_eq!(
            *h,
            VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                gso_type: VnetHdr::GSO_UDP_L4,
                hdr_len: (l4 + 8) as u16,
                gso_size: 18,
                csum_start: l4 as u16,
                csum_offset: 6,
            }
        );
        let total = 8 + 20 * 18;
        assert_eq!(be16(f, 16), Some((20 + total) as u16));
        assert_eq!(be16(f, l4 + 4), Some(total as u16));
        assert_eq!(be16(f, l4 + 6), Some(fixtures::pseudo_folded(f, &spec, 17)));
        assert_eq!(crate::wire::checksum(&f[14..34], 0), 0);
    }

    proptest! {
        #[test]
        fn random_runs_round_trip(v6 in any::<bool>(), vlan in any::<bool>(), n in 1usize..80,
                                  size in 1usize..1500, last in 0usize..1500) {
            let spec = Spec { v6, vlan, ..Spec::default() };
            let last = if last < size { last } else { 0 };
            let dgrams = run(&spec, n, size, last);
            let out = push_all(&mut Coalescer::new(), &on(0, &dgrams), true);
            let l3 = if vlan { 18 } else { 14 };
            let mut got = Vec::new();
            for (_, h, f) in &out {
                prop_assert!(f.len() - l3 <= 65535);
                got.extend(resegment(h, f));
            }
            prop_assert_eq!(got, dgrams);
        }
    }
}
