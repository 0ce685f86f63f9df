//! Userspace GRO: consecutive TCP segments of a flow, bound for one TAP port, merged into one
//! super-frame the container's kernel takes with a single vnet header, as Linux's
//! `tcp_gro_receive` and wireguard-go's `tun/offload_linux.go` do.

use super::VnetHdr;
use super::checksum::{checksum, fold};
use super::layout::{
    ACK, IPV4_MIN_LEN, IPV6_LEN, Ip, MAX_IP_LEN, PROTO_TCP, PSH, TCP_ACK, TCP_CSUM, TCP_FLAGS,
    TCP_MIN_LEN, TCP_OFF, TCP_SEQ, VLAN_ETH_LEN, be16, be32, parse_ip, pseudo, put16,
};

/// How many flows may be open at once by default.
const DEFAULT_FLOWS: usize = 16;

/// Room for the largest frame a flow can hold: Ethernet with a tag plus a 64 KB IP packet.
const FLOW_CAPACITY: usize = VLAN_ETH_LEN + MAX_IP_LEN;

/// What makes segments one flow: the output port and the TCP/IP 4-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    port: u32,
    v6: bool,
    addrs: [u8; 32],
    ports: [u8; 4],
}

/// The parsed headers of a TCP segment.
struct Seg {
    ip: Ip,
    key: Key,
    /// Offset of the payload.
    data: usize,
    seq: u32,
    flags: u8,
}

impl Seg {
    fn payload(&self) -> usize {
        self.ip.end - self.data
    }
}

/// One open flow: the super-frame built so far.
struct Flow {
    /// `None` when the slot is free.
    key: Option<Key>,
    buf: Vec<u8>,
    ip: Ip,
    data: usize,
    gso_size: usize,
    segs: usize,
    next_seq: u32,
    /// The only segment held carries a partial checksum (the pseudo-header sum).
    partial: bool,
    used: u64,
}

/// Userspace GRO for frames about to be written to TAP ports.
///
/// Holds a bounded set of open flows (16 by default), each in a 64 KB buffer allocated once in
/// [`new`](Coalescer::new) and reused, so coalescing allocates nothing per frame. When every
/// slot is taken, the least recently used flow is emitted to make room.
pub struct Coalescer {
    flows: Vec<Flow>,
    tick: u64,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    /// A coalescer with room for 16 open flows.
    pub fn new() -> Self {
        Self::with_flows(DEFAULT_FLOWS)
    }

    /// A coalescer with room for `flows` open flows (at least one), 64 KB each.
    pub fn with_flows(flows: usize) -> Self {
        let flows = (0..flows.max(1))
            .map(|_| Flow {
                key: None,
                buf: Vec::with_capacity(FLOW_CAPACITY),
                ip: Ip {
                    l3: 0,
                    l4: 0,
                    end: 0,
                    v6: false,
                    proto: 0,
                    fragment: false,
                },
                data: 0,
                gso_size: 0,
                segs: 0,
                next_seq: 0,
                partial: false,
                used: 0,
            })
            .collect();
        Self { flows, tick: 0 }
    }

    /// How many flows hold data now.
    pub fn open_flows(&self) -> usize {
        self.flows.iter().filter(|f| f.key.is_some()).count()
    }

    /// Offers `frame` (a full Ethernet frame, no vnet header) for port `port`.
    ///
    /// Consecutive TCP segments of one flow to one port (same Ethernet header, addresses and
    /// ports, contiguous sequence numbers, same ACK number, TCP header length and options, only
    /// ACK and PSH set with PSH ending the run, IPv4 without options or fragmentation and with
    /// the same TOS, TTL and DF, IPv6 with the same traffic class, flow label and hop limit,
    /// equal-sized segments except that a shorter one ends the run, at most 65535 bytes of IP)
    /// are merged; anything else is passed through. Emits, in order, through
    /// `emit(port, vnet_hdr, frame)`:
    ///
    /// - a merged super-frame: `GSO_TCPV4`/`GSO_TCPV6`, `F_NEEDS_CSUM`, `csum_start` and
    ///   `csum_offset` at the TCP checksum, `gso_size` the payload size of a segment, `hdr_len`
    ///   the length of the headers, IPv4 total length and header checksum (or IPv6 payload
    ///   length) fixed, and the TCP checksum field holding the pseudo-header sum of the merged
    ///   length, as Linux expects for `CHECKSUM_PARTIAL`;
    /// - any other frame as it is, with a zero header; except that a TCP segment whose checksum
    ///   field holds the pseudo-header sum (a Linux sender behind a device whose checksum
    ///   offload never ran) gets `F_NEEDS_CSUM` and `GSO_NONE`, so the kernel completes it.
    ///
    /// A flow's held data is always emitted before a later frame of the same flow and port, so
    /// nothing within a flow is reordered. Segments whose TCP checksum does not verify (and is
    /// not a pseudo-header sum) are never merged.
    pub fn push(&mut self, port: u32, frame: &[u8], emit: &mut dyn FnMut(u32, &VnetHdr, &[u8])) {
        self.tick += 1;
        let Some(seg) = parse_tcp(port, frame) else {
            emit(port, &VnetHdr::default(), frame);
            return;
        };
        let slot = self.flows.iter().position(|f| f.key == Some(seg.key));
        let Some(partial) = mergeable(frame, &seg) else {
            if let Some(i) = slot {
                self.flows[i].emit(emit);
            }
            emit(port, &VnetHdr::default(), frame);
            return;
        };
        if let Some(i) = slot {
            let flow = &mut self.flows[i];
            if flow.can_append(frame, &seg) {
                flow.append(frame, &seg, self.tick);
                if seg.flags & PSH != 0 || seg.payload() < flow.gso_size {
                    flow.emit(emit);
                }
                return;
            }
            flow.emit(emit);
        }
        if seg.flags & PSH != 0 {
            emit(port, &single_hdr(&seg.ip, partial), frame);
            return;
        }
        let i = match slot {
            Some(i) => i,
            None => self.free_slot(emit),
        };
        self.flows[i].start(frame, &seg, partial, self.tick);
    }

    /// Emits everything held (end of a receive batch).
    pub fn flush(&mut self, emit: &mut dyn FnMut(u32, &VnetHdr, &[u8])) {
        let mut open: usize = self.flows.iter().filter(|f| f.key.is_some()).count();
        // Oldest first, so flows leave in the order they were last fed.
        while open > 0 {
            let oldest = self
                .flows
                .iter_mut()
                .filter(|f| f.key.is_some())
                .min_by_key(|f| f.used);
            match oldest {
                Some(f) => f.emit(emit),
                None => break,
            }
            open -= 1;
        }
    }

    /// A free slot, emitting the least recently used flow when there is none.
    fn free_slot(&mut self, emit: &mut dyn FnMut(u32, &VnetHdr, &[u8])) -> usize {
        if let Some(i) = self.flows.iter().position(|f| f.key.is_none()) {
            return i;
        }
        let mut lru = 0;
        for (i, f) in self.flows.iter().enumerate() {
            if f.used < self.flows[lru].used {
                lru = i;
            }
        }
        self.flows[lru].emit(emit);
        lru
    }
}

/// The header of a segment emitted alone: zero, or `F_NEEDS_CSUM` when its checksum is partial.
fn single_hdr(ip: &Ip, partial: bool) -> VnetHdr {
    if !partial {
        return VnetHdr::default();
    }
    VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: VnetHdr::GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: ip.l4 as u16,
        csum_offset: TCP_CSUM as u16,
    }
}

/// The headers of a TCP segment, or `None` when the frame is not one (non-first IPv4
/// fragments included: they carry no TCP header).
fn parse_tcp(port: u32, frame: &[u8]) -> Option<Seg> {
    let ip = parse_ip(frame).ok()?;
    if ip.proto != PROTO_TCP {
        return None;
    }
    if !ip.v6 && be16(frame, ip.l3 + 6)? & 0x1fff != 0 {
        return None;
    }
    let thl = usize::from(*frame.get(ip.l4 + TCP_OFF)? >> 4) * 4;
    let data = ip.l4 + thl;
    if thl < TCP_MIN_LEN || data > ip.end {
        return None;
    }
    let mut addrs = [0u8; 32];
    if ip.v6 {
        addrs.copy_from_slice(frame.get(ip.l3 + 8..ip.l3 + 40)?);
    } else {
        addrs[..8].copy_from_slice(frame.get(ip.l3 + 12..ip.l3 + 20)?);
    }
    let mut ports = [0u8; 4];
    ports.copy_from_slice(frame.get(ip.l4..ip.l4 + 4)?);
    Some(Seg {
        key: Key {
            port,
            v6: ip.v6,
            addrs,
            ports,
        },
        data,
        seq: be32(frame, ip.l4 + TCP_SEQ)?,
        flags: *frame.get(ip.l4 + TCP_FLAGS)?,
        ip,
    })
}

/// Whether a segment may take part in a merge: `Some(partial)` with `partial` telling whether
/// its checksum field holds only the pseudo-header sum, `None` when it must pass through.
fn mergeable(frame: &[u8], seg: &Seg) -> Option<bool> {
    let ip = &seg.ip;
    if ip.fragment || (!ip.v6 && ip.l4 - ip.l3 != IPV4_MIN_LEN) {
        return None;
    }
    if seg.flags & !(ACK | PSH) != 0 || seg.flags & ACK == 0 {
        return None;
    }
    // Reserved bits and the historic NS flag.
    if frame.get(ip.l4 + TCP_OFF)? & 0x0f != 0 {
        return None;
    }
    if seg.payload() == 0 {
        return None;
    }
    let l4 = frame.get(ip.l4..ip.end)?;
    let pseudo = pseudo(frame, ip, l4.len());
    if checksum(l4, pseudo) == 0 {
        return Some(false);
    }
    if be16(frame, ip.l4 + TCP_CSUM)? == fold(pseudo) {
        return Some(true);
    }
    None
}

impl Flow {
    fn start(&mut self, frame: &[u8], seg: &Seg, partial: bool, tick: u64) {
        self.buf.clear();
        self.buf
            .extend_from_slice(frame.get(..seg.ip.end).unwrap_or(&[]));
        self.key = Some(seg.key);
        self.ip = seg.ip;
        self.data = seg.data;
        self.gso_size = seg.payload();
        self.segs = 1;
        self.next_seq = seg.seq.wrapping_add(seg.payload() as u32);
        self.partial = partial;
        self.used = tick;
    }

    /// Whether `seg` continues this flow's run.
    fn can_append(&self, frame: &[u8], seg: &Seg) -> bool {
        let (a, b) = (&self.ip, &seg.ip);
        if a.l3 != b.l3 || a.l4 != b.l4 || self.data != seg.data || a.v6 != b.v6 {
            return false;
        }
        if seg.seq != self.next_seq || seg.payload() > self.gso_size {
            return false;
        }
        if self.buf.len() - a.l3 + seg.payload() > MAX_IP_LEN {
            return false;
        }
        let held = &self.buf;
        let same = |r: std::ops::Range<usize>| held.get(r.clone()) == frame.get(r);
        let l3 = a.l3;
        let ip_same = if a.v6 {
            same(l3..l3 + 4) && same(l3 + 7..l3 + 8)
        } else {
            same(l3 + 1..l3 + 2)
                && same(l3 + 8..l3 + 9)
                && held.get(l3 + 6).map(|f| f & 0x40) == frame.get(l3 + 6).map(|f| f & 0x40)
        };
        ip_same
            && same(0..l3)
            && same(a.l4 + TCP_ACK..a.l4 + TCP_ACK + 4)
            && same(a.l4 + TCP_MIN_LEN..self.data)
    }

    fn append(&mut self, frame: &[u8], seg: &Seg, tick: u64) {
        self.buf
            .extend_from_slice(frame.get(seg.data..seg.ip.end).unwrap_or(&[]));
        self.segs += 1;
        self.next_seq = self.next_seq.wrapping_add(seg.payload() as u32);
        if seg.flags & PSH != 0 {
            if let Some(f) = self.buf.get_mut(self.ip.l4 + TCP_FLAGS) {
                *f |= PSH;
            }
        }
        self.used = tick;
    }

    /// Emits what the flow holds and frees the slot.
    fn emit(&mut self, emit: &mut dyn FnMut(u32, &VnetHdr, &[u8])) {
        let Some(key) = self.key.take() else {
            return;
        };
        let ip = self.ip;
        if self.segs <= 1 {
            emit(key.port, &single_hdr(&ip, self.partial), &self.buf);
            return;
        }
        let buf = &mut self.buf;
        let ip_len = buf.len() - ip.l3;
        if ip.v6 {
            put16(buf, ip.l3 + 4, (ip_len - IPV6_LEN) as u16);
        } else {
            put16(buf, ip.l3 + 2, ip_len as u16);
            put16(buf, ip.l3 + 10, 0);
            let sum = checksum(buf.get(ip.l3..ip.l4).unwrap_or(&[]), 0);
            put16(buf, ip.l3 + 10, sum);
        }
        let seed = fold(pseudo(buf, &ip, buf.len() - ip.l4));
        put16(buf, ip.l4 + TCP_CSUM, seed);
        let hdr = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: if ip.v6 {
                VnetHdr::GSO_TCPV6
            } else {
                VnetHdr::GSO_TCPV4
            },
            hdr_len: self.data as u16,
            gso_size: self.gso_size as u16,
            csum_start: ip.l4 as u16,
            csum_offset: TCP_CSUM as u16,
        };
        emit(key.port, &hdr, buf);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::offload::fixtures::{self, ACK, FIN, PSH, RST, SYN, Spec, URG, check, payload};
    use crate::offload::{Segments, complete_checksum, segment};
    use proptest::prelude::*;

    type Out = Vec<(u32, VnetHdr, Vec<u8>)>;

    fn push_all(c: &mut Coalescer, frames: &[(u32, Vec<u8>)], flush: bool) -> Out {
        let mut out = Out::new();
        let mut emit = |p: u32, h: &VnetHdr, f: &[u8]| out.push((p, *h, f.to_vec()));
        for (port, f) in frames {
            c.push(*port, f, &mut emit);
        }
        if flush {
            c.flush(&mut emit);
        }
        out
    }

    /// A super-frame as a TAP would take it, and the segments `segment` cuts it into.
    fn split(
        spec: &Spec,
        seq: u32,
        flags: u8,
        len: usize,
        mss: u16,
    ) -> (VnetHdr, Vec<u8>, Vec<Vec<u8>>) {
        let (hdr, frame) = fixtures::tso(spec, seq, flags, &payload(len), mss);
        let mut out = Segments::new();
        segment(&hdr, &frame, &mut out).unwrap();
        let segs = out.iter().map(<[u8]>::to_vec).collect();
        (hdr, frame, segs)
    }

    fn on(port: u32, frames: &[Vec<u8>]) -> Vec<(u32, Vec<u8>)> {
        frames.iter().map(|f| (port, f.clone())).collect()
    }

    fn zero() -> VnetHdr {
        VnetHdr::default()
    }

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
        fix_ipv4_checksum(&mut nodf);
        let out = push_all(
            &mut Coalescer::new(),
            &on(0, &[base.clone(), nodf.clone()]),
            true,
        );
        assert_eq!(out, vec![(0, zero(), base.clone()), (0, zero(), nodf)]);
    }

    fn fix_ipv4_checksum(f: &mut [u8]) {
        f[24..26].copy_from_slice(&[0, 0]);
        let c = crate::offload::checksum(&f[14..34], 0);
        f[24..26].copy_from_slice(&c.to_be_bytes());
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

    #[test]
    fn pass_through_keeps_flow_order() {
        let spec = Spec::default();
        let (hdr, frame, segs) = split(&spec, 1, ACK, 2000, 1000);
        let udp = fixtures::udp(&spec, &payload(50));
        let arp = vec![0xffu8; 42];
        let pure_ack = fixtures::tcp(&spec, 2001, ACK, &[]);
        let frames = vec![
            (0, segs[0].clone()),
            (0, udp.clone()),
            (0, segs[1].clone()),
            (1, arp.clone()),
            (0, pure_ack.clone()),
        ];
        let out = push_all(&mut Coalescer::new(), &frames, true);
        assert_eq!(
            out,
            vec![
                (0, zero(), udp),
                (1, zero(), arp),
                (0, hdr, frame),
                (0, zero(), pure_ack),
            ]
        );
    }

    #[test]
    fn least_recently_used_flow_makes_room() {
        let mut c = Coalescer::with_flows(2);
        let specs: Vec<Spec> = (0..3)
            .map(|i| Spec {
                sport: 100 + i,
                ..Spec::default()
            })
            .collect();
        let f: Vec<Vec<u8>> = specs
            .iter()
            .map(|s| fixtures::tcp(s, 1, ACK, &payload(500)))
            .collect();
        let out = push_all(&mut c, &on(0, &f[..2]), false);
        assert!(out.is_empty());
        assert_eq!(c.open_flows(), 2);
        let out = push_all(&mut c, &on(0, &f[2..]), false);
        assert_eq!(out, vec![(0, zero(), f[0].clone())]);
        let out = push_all(&mut c, &[], true);
        assert_eq!(
            out,
            vec![(0, zero(), f[1].clone()), (0, zero(), f[2].clone())]
        );
    }

    #[test]
    fn reuses_memory() {
        let spec = Spec::default();
        let (_, _, segs) = split(&spec, 1, ACK, 60_000, 1448);
        let mut c = Coalescer::new();
        let ptrs: Vec<*const u8> = c.flows.iter().map(|f| f.buf.as_ptr()).collect();
        for _ in 0..5 {
            let out = push_all(&mut c, &on(0, &segs), true);
            assert_eq!(out.len(), 1);
        }
        let after: Vec<*const u8> = c.flows.iter().map(|f| f.buf.as_ptr()).collect();
        assert_eq!(ptrs, after);
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
            let mss = mss.max((len / 2048) as u16 + 1);
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

        #[test]
        fn random_bytes_never_panic(frames in proptest::collection::vec(
            (0u32..3, proptest::collection::vec(any::<u8>(), 0..120)), 0..20)) {
            let mut c = Coalescer::with_flows(2);
            let out = push_all(&mut c, &frames, true);
            prop_assert_eq!(out.len(), frames.len());
        }

        #[test]
        fn mangled_segments_never_panic(
            edits in proptest::collection::vec((0usize..8, 0usize..80, any::<u8>()), 0..10),
            v6 in any::<bool>(),
        ) {
            let mut frames: Vec<(u32, Vec<u8>)> =
                on(0, &flow_frames(1, v6, 8 * 700, 700));
            for (i, at, b) in edits {
                if let Some(x) = frames[i].1.get_mut(at) { *x = b; }
            }
            let mut c = Coalescer::with_flows(2);
            let out = push_all(&mut c, &frames, true);
            prop_assert!(!out.is_empty());
            for (_, h, f) in &out {
                let mut s = Segments::new();
                if h.is_gso() {
                    prop_assert!(segment(h, f, &mut s).is_ok());
                }
            }
        }
    }
}
