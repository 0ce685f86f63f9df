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
