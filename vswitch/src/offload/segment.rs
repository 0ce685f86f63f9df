//! Segmentation of TSO/USO super-frames into wire-sized frames, and completion of partial
//! checksums, the way Linux's GSO (`net/ipv4/tcp_offload.c`, `udp_offload.c`) does it.

use std::ops::Range;

use super::checksum::checksum;
use super::layout::{
    CWR, FIN, Ip, PROTO_TCP, PROTO_UDP, PSH, TCP_CSUM, TCP_FLAGS, TCP_MIN_LEN, TCP_OFF, TCP_SEQ,
    UDP_CSUM, UDP_LEN, UDP_LEN_FIELD, be16, be32, parse_ip, pseudo, put16, put32,
};
use super::{OffloadError, VnetHdr};

/// The most segments one super-frame may turn into (Linux's smallest TCP MSS, 48, cuts a
/// 64 KB frame into fewer than 1400).
pub const MAX_SEGMENTS: usize = 2048;

/// Frames ready for the wire, back to back in one reusable buffer.
///
/// Its memory is kept across [`clear`](Segments::clear), so after the first few super-frames
/// segmenting allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    buf: Vec<u8>,
    ranges: Vec<Range<usize>>,
}

impl Segments {
    /// An empty set with room for one 64 KB super-frame's segments.
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(96 * 1024),
            ranges: Vec::with_capacity(64),
        }
    }

    /// Forgets every segment, keeping the memory.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ranges.clear();
    }

    /// How many frames are held.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether no frame is held.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The frames, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.ranges
            .iter()
            .map(|r| self.buf.get(r.clone()).unwrap_or(&[]))
    }

    /// Frame `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        self.buf.get(self.ranges.get(index)?.clone())
    }

    /// Bytes held in all frames together.
    pub fn total_len(&self) -> usize {
        self.buf.len()
    }

    /// All frames back to back, as one buffer (what a UDP GSO send of [`uniform_len`]-sized
    /// datagrams takes).
    ///
    /// [`uniform_len`]: Segments::uniform_len
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// When every segment but the last has the same length and the last is no longer (TCP
    /// segments of one super-frame): that length. `None` when empty.
    pub fn uniform_len(&self) -> Option<usize> {
        let (last, rest) = self.ranges.split_last()?;
        let first = rest.first().unwrap_or(last).len();
        (rest.iter().all(|r| r.len() == first) && last.len() <= first).then_some(first)
    }

    /// Appends `frame` as it is.
    pub fn push(&mut self, frame: &[u8]) {
        self.append(frame, &[]);
    }

    /// Appends `head` followed by `tail` as one frame and returns it for patching.
    fn append(&mut self, head: &[u8], tail: &[u8]) -> &mut [u8] {
        let start = self.buf.len();
        self.buf.extend_from_slice(head);
        self.buf.extend_from_slice(tail);
        self.ranges.push(start..self.buf.len());
        &mut self.buf[start..]
    }

    /// Drops frames appended after `mark` (a `(len, total_len)` taken earlier).
    fn truncate(&mut self, mark: (usize, usize)) {
        self.ranges.truncate(mark.0);
        self.buf.truncate(mark.1);
    }
}

/// Turns a frame read from a TAP with its vnet header into frames a peer can take.
///
/// A frame that is not GSO is appended as it is, with its checksum completed when
/// `F_NEEDS_CSUM` is set. A GSO frame is cut into segments:
///
/// - TCP (`GSO_TCPV4`, `GSO_TCPV6`, with or without `GSO_ECN`): payload cut at `gso_size`,
///   sequence number advanced, FIN and PSH only on the last segment, CWR only on the first.
/// - UDP (`GSO_UDP_L4`): each datagram a copy of the headers with its own length.
///
/// Each segment gets its IPv4 total length, an IPv4 identification incremented per segment
/// and a fresh header checksum (or its IPv6 payload length), and a transport checksum computed
/// in full. `hdr_len` and `csum_start` are not trusted: the headers are walked instead.
/// Frames with one 802.1Q tag are handled; IPv6 extension headers, IPv4 fragments and UFO
/// (`GSO_UDP`) are refused.
///
/// Appends to `out` (call [`Segments::clear`] yourself); on error `out` is left as it was.
pub fn segment(hdr: &VnetHdr, frame: &[u8], out: &mut Segments) -> Result<(), OffloadError> {
    let mark = (out.len(), out.total_len());
    if !hdr.is_gso() {
        let seg = out.append(frame, &[]);
        let done = complete_checksum(hdr, seg);
        if done.is_err() {
            out.truncate(mark);
        }
        return done;
    }
    let gso = usize::from(hdr.gso_size);
    if gso == 0 {
        return Err(OffloadError::BadHeader("gso_size"));
    }
    match hdr.gso_type & !VnetHdr::GSO_ECN {
        VnetHdr::GSO_TCPV4 => segment_tcp(frame, false, gso, out),
        VnetHdr::GSO_TCPV6 => segment_tcp(frame, true, gso, out),
        VnetHdr::GSO_UDP_L4 => segment_udp(frame, gso, out),
        other => Err(OffloadError::Unsupported(other)),
    }
}

/// Checks what the transport segmentation of both protocols needs from the IP layer.
fn transport(frame: &[u8], proto: u8) -> Result<Ip, OffloadError> {
    let ip = parse_ip(frame)?;
    if ip.fragment {
        return Err(OffloadError::UnsupportedFrame("IPv4 fragment"));
    }
    if ip.proto != proto {
        return Err(if ip.v6 && ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
            OffloadError::UnsupportedFrame("IPv6 extension headers")
        } else {
            OffloadError::BadHeader("transport protocol does not match the GSO type")
        });
    }
    Ok(ip)
}

/// Patches the IP header of segment `index` (lengths, identification, header checksum).
fn patch_ip(seg: &mut [u8], ip: &Ip, index: usize) {
    let ip_len = seg.len() - ip.l3;
    if ip.v6 {
        put16(seg, ip.l3 + 4, (ip_len - super::layout::IPV6_LEN) as u16);
    } else {
        put16(seg, ip.l3 + 2, ip_len as u16);
        let id = be16(seg, ip.l3 + 4).unwrap_or(0);
        put16(seg, ip.l3 + 4, id.wrapping_add(index as u16));
        put16(seg, ip.l3 + 10, 0);
        let sum = checksum(seg.get(ip.l3..ip.l4).unwrap_or(&[]), 0);
        put16(seg, ip.l3 + 10, sum);
    }
}

/// Stores the full transport checksum of a segment whose checksum field is at `field`.
fn patch_l4_checksum(seg: &mut [u8], ip: &Ip, field: usize, zero_as_ffff: bool) {
    put16(seg, ip.l4 + field, 0);
    let l4 = seg.get(ip.l4..).unwrap_or(&[]);
    let mut sum = checksum(l4, pseudo(seg, ip, l4.len()));
    if zero_as_ffff && sum == 0 {
        sum = 0xffff;
    }
    put16(seg, ip.l4 + field, sum);
}

fn count(payload: usize, gso: usize) -> Result<usize, OffloadError> {
    let n = payload.div_ceil(gso).max(1);
    if n > MAX_SEGMENTS {
        return Err(OffloadError::TooManySegments);
    }
    Ok(n)
}

fn segment_tcp(frame: &[u8], v6: bool, gso: usize, out: &mut Segments) -> Result<(), OffloadError> {
    let ip = transport(frame, PROTO_TCP)?;
    if ip.v6 != v6 {
        return Err(OffloadError::BadHeader(
            "GSO type does not match the IP version",
        ));
    }
    let off = *frame.get(ip.l4 + TCP_OFF).ok_or(OffloadError::Truncated)?;
    let thl = usize::from(off >> 4) * 4;
    if thl < TCP_MIN_LEN {
        return Err(OffloadError::BadHeader("TCP data offset"));
    }
    let hdrs = ip.l4 + thl;
    let headers = frame.get(..hdrs).ok_or(OffloadError::Truncated)?;
    let payload = frame.get(hdrs..ip.end).ok_or(OffloadError::Truncated)?;
    let n = count(payload.len(), gso)?;
    let seq = be32(frame, ip.l4 + TCP_SEQ).ok_or(OffloadError::Truncated)?;
    let flags = frame[ip.l4 + TCP_FLAGS];
    for i in 0..n {
        let start = i * gso;
        let chunk = payload
            .get(start..(start + gso).min(payload.len()))
            .unwrap_or(&[]);
        let seg = out.append(headers, chunk);
        patch_ip(seg, &ip, i);
        put32(seg, ip.l4 + TCP_SEQ, seq.wrapping_add(start as u32));
        let mut f = flags;
        if i + 1 != n {
            f &= !(FIN | PSH);
        }
        if i != 0 {
            f &= !CWR;
        }
        seg[ip.l4 + TCP_FLAGS] = f;
        patch_l4_checksum(seg, &ip, TCP_CSUM, false);
    }
    Ok(())
}

fn segment_udp(frame: &[u8], gso: usize, out: &mut Segments) -> Result<(), OffloadError> {
    let ip = transport(frame, PROTO_UDP)?;
    let hdrs = ip.l4 + UDP_LEN;
    if hdrs > ip.end {
        return Err(OffloadError::Truncated);
    }
    let headers = &frame[..hdrs];
    let payload = &frame[hdrs..ip.end];
    let n = count(payload.len(), gso)?;
    for i in 0..n {
        let start = i * gso;
        let chunk = payload
            .get(start..(start + gso).min(payload.len()))
            .unwrap_or(&[]);
        let seg = out.append(headers, chunk);
        patch_ip(seg, &ip, i);
        put16(seg, ip.l4 + UDP_LEN_FIELD, (UDP_LEN + chunk.len()) as u16);
        patch_l4_checksum(seg, &ip, UDP_CSUM, true);
    }
    Ok(())
}

/// Completes a `F_NEEDS_CSUM` frame in place: sums from `csum_start` to the end of the IP
/// packet (of the frame when it is not IP) over the pseudo-header sum the sender left in the
/// field, and stores the result at `csum_start + csum_offset` (0 is stored as `0xffff`, as
/// Linux does). Does nothing without `F_NEEDS_CSUM`.
pub fn complete_checksum(hdr: &VnetHdr, frame: &mut [u8]) -> Result<(), OffloadError> {
    if !hdr.needs_csum() {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > frame.len() {
        return Err(OffloadError::BadHeader("csum_start/csum_offset"));
    }
    let end = match parse_ip(frame) {
        Ok(ip) if field + 2 <= ip.end => ip.end,
        _ => frame.len(),
    };
    let mut sum = checksum(&frame[start..end], 0);
    if sum == 0 {
        sum = 0xffff;
    }
    put16(frame, field, sum);
    Ok(())
}
