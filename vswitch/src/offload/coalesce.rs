//! Userspace GRO: consecutive TCP segments or UDP datagrams of a flow, bound for one TAP port,
//! merged into one super-frame the container's kernel takes with a single vnet header, as
//! Linux's `tcp_gro_receive` and `udp_gro_receive` and wireguard-go's `tun/offload_linux.go`
//! do.
//!
//! This module owns what both protocols share: the bounded pool of flow buffers, least recently
//! used eviction, the rules that keep a flow in order, the IP header checks and fix-ups. [`tcp`]
//! and [`udp`] say which packets of their protocol may merge and how a merged run is marked for
//! the kernel.

mod tcp;
mod udp;

use super::VnetHdr;
use super::layout::{
    ETH_LEN, IPV4_MIN_LEN, IPV6_LEN, Ip, MAX_IP_LEN, PROTO_TCP, PROTO_UDP, TCP_CSUM, UDP_CSUM,
    be16, parse_ip, pseudo, put16,
};
use crate::wire::{MAX_VLAN_TAGS, checksum, fold};

/// How many flows may be open at once by default.
const DEFAULT_FLOWS: usize = 16;

/// Room for the largest frame a flow can hold: Ethernet with every tag plus a 64 KB IP packet.
const FLOW_CAPACITY: usize = ETH_LEN + 4 * MAX_VLAN_TAGS + MAX_IP_LEN;

/// What makes packets one flow: the output port, the transport protocol and the 4-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    port: u32,
    proto: u8,
    v6: bool,
    addrs: [u8; 32],
    ports: [u8; 4],
}

impl Key {
    /// The key of the packet at `ip`, whose transport header starts with the two ports.
    fn of(port: u32, frame: &[u8], ip: &Ip) -> Option<Key> {
        let mut addrs = [0u8; 32];
        if ip.v6 {
            addrs.copy_from_slice(frame.get(ip.l3 + 8..ip.l3 + 40)?);
        } else {
            addrs[..8].copy_from_slice(frame.get(ip.l3 + 12..ip.l3 + 20)?);
        }
        let mut ports = [0u8; 4];
        ports.copy_from_slice(frame.get(ip.l4..ip.l4 + 4)?);
        Some(Key {
            port,
            proto: ip.proto,
            v6: ip.v6,
            addrs,
            ports,
        })
    }
}

/// What a segment carries beyond its IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4 {
    /// A TCP segment: its sequence number and flags.
    Tcp { seq: u32, flags: u8 },
    /// A UDP datagram.
    Udp,
}

/// The parsed headers of a TCP segment or UDP datagram.
struct Seg {
    ip: Ip,
    key: Key,
    /// Offset of the payload.
    data: usize,
    l4: L4,
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
    /// TCP only: the sequence number the next segment must carry.
    next_seq: u32,
    /// The only segment held carries a partial checksum (the pseudo-header sum).
    partial: bool,
    used: u64,
}

/// Userspace GRO for frames about to be written to TAP ports.
///
/// Holds a bounded set of open flows (16 by default), TCP and UDP alike, each in a 64 KB buffer
/// allocated once in [`new`](Coalescer::new) and reused, so coalescing allocates nothing per
/// frame. When every slot is taken, the least recently used flow is emitted to make room.
pub struct Coalescer {
    flows: Vec<Flow>,
    tick: u64,
    udp: bool,
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
        Self {
            flows,
            tick: 0,
            udp: true,
        }
    }

    /// Whether UDP datagrams are merged; on by default. USO super-frames need a kernel that
    /// takes them on a TAP write (Linux 6.2, the release that also offers `TUN_F_USO4`).
    pub fn set_udp(&mut self, on: bool) {
        self.udp = on;
    }

    /// How many flows hold data now.
    pub fn open_flows(&self) -> usize {
        self.flows.iter().filter(|f| f.key.is_some()).count()
    }

    /// Offers `frame` (a full Ethernet frame, no vnet header) for port `port`.
    ///
    /// Consecutive packets of one flow to one port are merged when they share the Ethernet
    /// header, addresses and ports, IPv4 without options or fragmentation and with the same
    /// TOS, TTL and DF, or IPv6 without extension headers and with the same traffic class, flow
    /// label and hop limit; with equal payload sizes except that a shorter one ends the run, and
    /// at most 65535 bytes of IP. On top of that:
    ///
    /// - TCP segments: contiguous sequence numbers, same ACK number, TCP header length and
    ///   options, only ACK and PSH set with PSH ending the run;
    /// - UDP datagrams: a UDP length that matches the IP length, a non-zero checksum, at most
    ///   64 datagrams per run.
    ///
    /// Anything else is passed through. Emits, in order, through `emit(port, vnet_hdr, frame)`:
    ///
    /// - a merged TCP super-frame: `GSO_TCPV4`/`GSO_TCPV6`, `F_NEEDS_CSUM`, `csum_start` and
    ///   `csum_offset` at the TCP checksum, `gso_size` the payload size of a segment, `hdr_len`
    ///   the length of the headers, IPv4 total length and header checksum (or IPv6 payload
    ///   length) fixed, and the TCP checksum field holding the pseudo-header sum of the merged
    ///   length, as Linux expects for `CHECKSUM_PARTIAL`;
    /// - a merged UDP super-frame (USO, which Linux takes on a TAP since 6.2): `GSO_UDP_L4`,
    ///   `F_NEEDS_CSUM`, `csum_start` and `csum_offset` at the UDP checksum, `gso_size` the
    ///   payload size of a datagram, `hdr_len` the length of the headers, IP lengths fixed as
    ///   for TCP, the UDP length set to the merged length and the UDP checksum field holding the
    ///   pseudo-header sum of that length: the kernel's segmentation (`__udp_gso_segment`)
    ///   adjusts both per datagram, and its receive path trims the packet to the UDP length;
    /// - any other frame, and a run of one, as it is, with a zero header; except that a TCP
    ///   segment or UDP datagram whose checksum field holds the pseudo-header sum (a Linux
    ///   sender behind a device whose checksum offload never ran) gets `F_NEEDS_CSUM` and
    ///   `GSO_NONE`, so the kernel completes it.
    ///
    /// A flow's held data is always emitted before a later frame of the same flow and port, so
    /// nothing within a flow is reordered. Packets whose transport checksum does not verify
    /// (and is not a pseudo-header sum) are never merged. The IPv4 identification of a merged
    /// run is the first packet's; segmenting the super-frame gives each packet the next number.
    pub fn push(&mut self, port: u32, frame: &[u8], emit: &mut dyn FnMut(u32, &VnetHdr, &[u8])) {
        self.tick += 1;
        let parsed = parse(port, frame).filter(|s| self.udp || !matches!(s.l4, L4::Udp));
        let Some(seg) = parsed else {
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
                if flow.run_ends(&seg) {
                    flow.emit(emit);
                }
                return;
            }
            flow.emit(emit);
        }
        if let L4::Tcp { flags, .. } = seg.l4 {
            if tcp::ends_run(flags) {
                emit(port, &single_hdr(&seg.ip, partial), frame);
                return;
            }
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

/// Offset of the transport checksum field of `proto`.
fn csum_field(proto: u8) -> usize {
    if proto == PROTO_TCP {
        TCP_CSUM
    } else {
        UDP_CSUM
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
        csum_offset: csum_field(ip.proto) as u16,
    }
}

/// The headers of a TCP segment or UDP datagram, or `None` when the frame is neither
/// (non-first IPv4 fragments included: they carry no transport header).
fn parse(port: u32, frame: &[u8]) -> Option<Seg> {
    let ip = parse_ip(frame).ok()?;
    if !ip.v6 && be16(frame, ip.l3 + 6)? & 0x1fff != 0 {
        return None;
    }
    match ip.proto {
        PROTO_TCP => tcp::parse(port, frame, ip),
        PROTO_UDP => udp::parse(port, frame, ip),
        _ => None,
    }
}

/// Whether a segment may take part in a merge: `Some(partial)` with `partial` telling whether
/// its checksum field holds only the pseudo-header sum, `None` when it must pass through.
fn mergeable(frame: &[u8], seg: &Seg) -> Option<bool> {
    let ip = &seg.ip;
    if ip.fragment || (!ip.v6 && ip.l4 - ip.l3 != IPV4_MIN_LEN) {
        return None;
    }
    if seg.payload() == 0 {
        return None;
    }
    // The merged header's checksum is computed afresh, so a packet whose IPv4 header does not
    // verify is passed on as it is, for the receiver to drop, never merged (as Linux's GRO).
    if !ip.v6 && checksum(frame.get(ip.l3..ip.l4)?, 0) != 0 {
        return None;
    }
    let fits = match seg.l4 {
        L4::Tcp { flags, .. } => tcp::mergeable(frame, ip, flags),
        L4::Udp => udp::mergeable(frame, ip),
    };
    if !fits {
        return None;
    }
    let l4 = frame.get(ip.l4..ip.end)?;
    let pseudo = pseudo(frame, ip, l4.len());
    if checksum(l4, pseudo) == 0 {
        return Some(false);
    }
    if be16(frame, ip.l4 + csum_field(ip.proto))? == fold(pseudo) {
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
        if let L4::Tcp { seq, .. } = seg.l4 {
            self.next_seq = seq.wrapping_add(seg.payload() as u32);
        }
        self.partial = partial;
        self.used = tick;
    }

    /// Whether `seg` continues this flow's run.
    fn can_append(&self, frame: &[u8], seg: &Seg) -> bool {
        let (a, b) = (&self.ip, &seg.ip);
        if a.l3 != b.l3 || a.l4 != b.l4 || self.data != seg.data || a.v6 != b.v6 {
            return false;
        }
        if seg.payload() > self.gso_size {
            return false;
        }
        if self.buf.len() - a.l3 + seg.payload() > MAX_IP_LEN {
            return false;
        }
        let continues = match seg.l4 {
            L4::Tcp { seq, .. } => tcp::continues(self, frame, seq),
            L4::Udp => udp::continues(self),
        };
        continues && self.same(frame, 0..a.l3) && self.same_ip(frame)
    }

    /// Whether `frame` holds the same bytes as the held super-frame at `range`.
    fn same(&self, frame: &[u8], range: std::ops::Range<usize>) -> bool {
        self.buf.get(range.clone()) == frame.get(range)
    }

    /// Whether the IP header fields that must not change within a run are equal: TOS, TTL and
    /// DF for IPv4; version, traffic class, flow label and hop limit for IPv6.
    fn same_ip(&self, frame: &[u8]) -> bool {
        let l3 = self.ip.l3;
        if self.ip.v6 {
            self.same(frame, l3..l3 + 4) && self.same(frame, l3 + 7..l3 + 8)
        } else {
            let df = |b: &[u8]| b.get(l3 + 6).map(|f| f & 0x40);
            self.same(frame, l3 + 1..l3 + 2)
                && self.same(frame, l3 + 8..l3 + 9)
                && df(&self.buf) == df(frame)
        }
    }

    fn append(&mut self, frame: &[u8], seg: &Seg, tick: u64) {
        self.buf
            .extend_from_slice(frame.get(seg.data..seg.ip.end).unwrap_or(&[]));
        self.segs += 1;
        if let L4::Tcp { flags, .. } = seg.l4 {
            tcp::appended(self, seg.payload(), flags);
        }
        self.used = tick;
    }

    /// Whether the run is complete once `seg` has been appended.
    fn run_ends(&self, seg: &Seg) -> bool {
        seg.payload() < self.gso_size
            || match seg.l4 {
                L4::Tcp { flags, .. } => tcp::ends_run(flags),
                L4::Udp => udp::full(self),
            }
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
        let gso_type = if ip.proto == PROTO_TCP {
            tcp::seal(buf, &ip)
        } else {
            udp::seal(buf, &ip)
        };
        let hdr = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type,
            hdr_len: self.data as u16,
            gso_size: self.gso_size as u16,
            csum_start: ip.l4 as u16,
            csum_offset: csum_field(ip.proto) as u16,
        };
        emit(key.port, &hdr, buf);
    }
}

/// Stores the pseudo-header sum of the merged transport length in the checksum field at
/// `field`, which is what `CHECKSUM_PARTIAL` wants there.
fn seed_checksum(buf: &mut [u8], ip: &Ip, field: usize) {
    let seed = fold(pseudo(buf, ip, buf.len() - ip.l4));
    put16(buf, ip.l4 + field, seed);
}

/// What the tests of both protocols share.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod testing {
    use super::Coalescer;
    use crate::offload::fixtures::{self, Spec, payload};
    use crate::offload::{Segments, VnetHdr, segment};

    /// What a coalescer emitted: port, vnet header, frame.
    pub type Out = Vec<(u32, VnetHdr, Vec<u8>)>;

    pub fn push_all(c: &mut Coalescer, frames: &[(u32, Vec<u8>)], flush: bool) -> Out {
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

    pub fn on(port: u32, frames: &[Vec<u8>]) -> Vec<(u32, Vec<u8>)> {
        frames.iter().map(|f| (port, f.clone())).collect()
    }

    pub fn zero() -> VnetHdr {
        VnetHdr::default()
    }

    /// Segments a super-frame (or passes a plain frame through) the way a kernel would.
    pub fn resegment(h: &VnetHdr, f: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Segments::new();
        segment(h, f, &mut out).unwrap();
        out.iter().map(<[u8]>::to_vec).collect()
    }

    /// A TSO super-frame as a TAP would take it, and the segments `segment` cuts it into.
    pub fn split_tcp(
        spec: &Spec,
        seq: u32,
        flags: u8,
        len: usize,
        mss: u16,
    ) -> (VnetHdr, Vec<u8>, Vec<Vec<u8>>) {
        let (hdr, frame) = fixtures::tso(spec, seq, flags, &payload(len), mss);
        let segs = resegment(&hdr, &frame);
        (hdr, frame, segs)
    }

    /// A USO super-frame of `len` payload bytes in datagrams of `size`, and the datagrams
    /// `segment` cuts it into (IPv4 identifications counting up from the first).
    pub fn split_udp(spec: &Spec, len: usize, size: u16) -> (VnetHdr, Vec<u8>, Vec<Vec<u8>>) {
        let (hdr, frame) = fixtures::uso(spec, &payload(len), size);
        let dgrams = resegment(&hdr, &frame);
        (hdr, frame, dgrams)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testing::{on, push_all, split_tcp, split_udp, zero};
    use super::*;
    use crate::offload::fixtures::{self, ACK, Spec, payload};
    use crate::offload::{Segments, segment};
    use proptest::prelude::*;

    #[test]
    fn pass_through_keeps_flow_order() {
        let spec = Spec::default();
        let (hdr, frame, segs) = split_tcp(&spec, 1, ACK, 2000, 1000);
        let mut no_csum = fixtures::udp(&spec, &payload(50));
        fixtures::set_udp_checksum(&mut no_csum, &spec, 0);
        let arp = vec![0xffu8; 42];
        let pure_ack = fixtures::tcp(&spec, 2001, ACK, &[]);
        let frames = vec![
            (0, segs[0].clone()),
            (0, no_csum.clone()),
            (0, segs[1].clone()),
            (1, arp.clone()),
            (0, pure_ack.clone()),
        ];
        let out = push_all(&mut Coalescer::new(), &frames, true);
        assert_eq!(
            out,
            vec![
                (0, zero(), no_csum),
                (1, zero(), arp),
                (0, hdr, frame),
                (0, zero(), pure_ack),
            ]
        );
    }

    #[test]
    fn udp_passes_through_when_merging_it_is_off() {
        let spec = Spec::default();
        let (_, _, dgrams) = split_udp(&spec, 4 * 100, 100);
        let mut c = Coalescer::new();
        c.set_udp(false);
        let out = push_all(&mut c, &on(0, &dgrams), true);
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|(_, h, _)| *h == zero()));
    }

    #[test]
    fn tcp_and_udp_of_one_address_pair_are_separate_flows() {
        let spec = Spec::default();
        let (th, tf, segs) = split_tcp(&spec, 1, ACK, 3000, 1000);
        let (uh, uf, dgrams) = split_udp(&spec, 3 * 100, 100);
        let mut frames = Vec::new();
        for i in 0..3 {
            frames.push((0, segs[i].clone()));
            frames.push((0, dgrams[i].clone()));
        }
        let out = push_all(&mut Coalescer::new(), &frames, true);
        assert_eq!(out, vec![(0, th, tf), (0, uh, uf)]);
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
            .enumerate()
            .map(|(i, s)| {
                if i == 1 {
                    fixtures::udp(s, &payload(64))
                } else {
                    fixtures::tcp(s, 1, ACK, &payload(500))
                }
            })
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
        let (_, _, segs) = split_tcp(&spec, 1, ACK, 60_000, 1448);
        let (_, _, dgrams) = split_udp(&spec, 64 * 64, 64);
        let mut c = Coalescer::new();
        let ptrs: Vec<*const u8> = c.flows.iter().map(|f| f.buf.as_ptr()).collect();
        for _ in 0..5 {
            let out = push_all(&mut c, &on(0, &segs), true);
            assert_eq!(out.len(), 1);
            let out = push_all(&mut c, &on(0, &dgrams), true);
            assert_eq!(out.len(), 1);
        }
        let after: Vec<*const u8> = c.flows.iter().map(|f| f.buf.as_ptr()).collect();
        assert_eq!(ptrs, after);
    }

    /// Valid segments and datagrams of two flows with some bytes overwritten.
    fn mangled_frames(v6: bool) -> Vec<(u32, Vec<u8>)> {
        let spec = Spec {
            v6,
            ..Spec::default()
        };
        let mut frames = on(0, &split_tcp(&spec, 1, ACK, 8 * 700, 700).2);
        frames.extend(on(0, &split_udp(&spec, 8 * 70, 70).2));
        frames
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(frames in proptest::collection::vec(
            (0u32..3, proptest::collection::vec(any::<u8>(), 0..120)), 0..20)) {
            let mut c = Coalescer::with_flows(2);
            let out = push_all(&mut c, &frames, true);
            prop_assert_eq!(out.len(), frames.len());
        }

        #[test]
        fn mangled_segments_never_panic(
            edits in proptest::collection::vec((0usize..16, 0usize..80, any::<u8>()), 0..10),
            v6 in any::<bool>(),
        ) {
            let mut frames = mangled_frames(v6);
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
