//! Segmentation of TSO/USO super-frames into wire-sized frames, and completion of partial
//! checksums, the way Linux's GSO (`net/ipv4/tcp_offload.c`, `udp_offload.c`) does it.

use std::ops::Range;

use super::layout::{
    CWR, FIN, Ip, PROTO_TCP, PROTO_UDP, PSH, TCP_CSUM, TCP_FLAGS, TCP_MIN_LEN, TCP_OFF, TCP_SEQ,
    UDP_CSUM, UDP_LEN, UDP_LEN_FIELD, be16, be32, parse_ip, pseudo, put16, put32,
};
use super::{OffloadError, VnetHdr};
use crate::wire::checksum;

/// The most segments one super-frame may turn into: a 64 KB frame cut at the smallest
/// accepted `gso_size` ([`MIN_GSO_SIZE`](super::MIN_GSO_SIZE), 88) makes 745.
pub const MAX_SEGMENTS: usize = 768;

/// Frames ready for the wire, back to back in one reusable buffer.
///
/// Its memory is kept across [`clear`](Segments::clear), so after the first few super-frames
/// segmenting allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    buf: Vec<u8>,
    ranges: Vec<Range<usize>>,
    headroom: usize,
}

impl Segments {
    /// An empty set with room for one 64 KB super-frame's segments.
    pub fn new() -> Self {
        Self::with_headroom(0)
    }

    /// An empty set that keeps `headroom` bytes in front of every frame, for an encapsulation
    /// header: [`fill_headroom`](Segments::fill_headroom) writes it, and
    /// [`as_bytes`](Segments::as_bytes) then holds ready datagrams back to back.
    pub fn with_headroom(headroom: usize) -> Self {
        Self {
            buf: Vec::with_capacity(96 * 1024),
            ranges: Vec::with_capacity(64),
            headroom,
        }
    }

    /// The bytes kept in front of every frame.
    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Writes `header` (exactly [`headroom`](Segments::headroom) bytes; anything else is
    /// ignored) in front of every frame.
    pub fn fill_headroom(&mut self, header: &[u8]) {
        if header.len() != self.headroom {
            return;
        }
        for range in &self.ranges {
            if let Some(room) = self.buf.get_mut(range.start - header.len()..range.start) {
                room.copy_from_slice(header);
            }
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

    /// Bytes held in all frames together, headroom included.
    pub fn total_len(&self) -> usize {
        self.buf.len()
    }

    /// All frames back to back, each behind its headroom, as one buffer (what a UDP GSO send
    /// of datagrams of headroom + [`uniform_len`] bytes takes).
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
        self.buf.resize(self.buf.len() + self.headroom, 0);
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::offload::fixtures::{self, ACK, CWR, ECE, FIN, PSH, Spec, check, payload};
    use proptest::prelude::*;

    /// Segments a TSO super-frame and checks every segment independently.
    fn tso_case(spec: Spec, total: usize, mss: u16, flags: u8) -> Segments {
        let data = payload(total);
        let seq0 = 0xffff_f000u32;
        let (hdr, frame) = fixtures::tso(&spec, seq0, flags, &data, mss);
        let mut out = Segments::new();
        segment(&hdr, &frame, &mut out).unwrap();
        let n = total.div_ceil(usize::from(mss)).max(1);
        assert_eq!(out.len(), n);
        let mut joined = Vec::new();
        for (i, seg) in out.iter().enumerate() {
            let c = check(seg);
            let (seq, ack, f, opts) = c.tcp.clone().unwrap();
            assert_eq!(seq, seq0.wrapping_add((i * usize::from(mss)) as u32));
            assert_eq!(ack, spec.ack);
            assert_eq!(opts.len(), fixtures::tcp_len(&spec) - 20);
            let last = i + 1 == n;
            let mut want = flags;
            if !last {
                want &= !(FIN | PSH);
            }
            if i != 0 {
                want &= !CWR;
            }
            assert_eq!(f, want, "flags of segment {i}");
            if !spec.v6 {
                assert_eq!(c.ip_id, Some(spec.ip_id.wrapping_add(i as u16)));
            }
            if !last {
                assert_eq!(c.payload.len(), usize::from(mss));
            }
            joined.extend_from_slice(&c.payload);
        }
        assert_eq!(joined, data);
        assert_eq!(
            out.uniform_len(),
            Some(fixtures::l4(&spec) + fixtures::tcp_len(&spec) + total.min(usize::from(mss)))
        );
        out
    }

    #[test]
    fn headroom_holds_a_header_in_front_of_every_segment() {
        let spec = Spec::default();
        let data = payload(3 * 1000 + 10);
        let (hdr, frame) = fixtures::tso(&spec, 1, ACK, &data, 1000);
        let mut plain = Segments::new();
        segment(&hdr, &frame, &mut plain).unwrap();
        let mut roomy = Segments::with_headroom(8);
        segment(&hdr, &frame, &mut roomy).unwrap();
        roomy.fill_headroom(&[8, 0, 0, 0, 0, 0, 42, 0]);
        assert_eq!(roomy.len(), 4);
        assert!(plain.iter().eq(roomy.iter()));
        let stride = 8 + roomy.uniform_len().unwrap();
        for (datagram, seg) in roomy.as_bytes().chunks(stride).zip(plain.iter()) {
            assert_eq!(&datagram[..8], &[8, 0, 0, 0, 0, 0, 42, 0]);
            assert_eq!(&datagram[8..], seg);
        }
        // A header of the wrong size changes nothing.
        roomy.fill_headroom(&[1, 2, 3]);
        assert_eq!(&roomy.as_bytes()[..8], &[8, 0, 0, 0, 0, 0, 42, 0]);
    }

    #[test]
    fn tcpv4_one_sixteen_sixtyfour() {
        let spec = Spec::default();
        tso_case(spec, 100, 1448, ACK | PSH);
        tso_case(spec, 16 * 1448, 1448, ACK | PSH);
        tso_case(spec, 64 * 1000, 1000, ACK);
    }

    #[test]
    fn tcpv4_odd_lengths_and_short_last() {
        let spec = Spec::default();
        tso_case(spec, 16 * 1447 - 3, 1447, ACK | PSH);
        tso_case(spec, 1001, 1000, ACK);
        tso_case(spec, 64 * 999 + 1, 1001, ACK | PSH | FIN);
    }

    #[test]
    fn tcpv6_one_sixteen_sixtyfour() {
        let spec = Spec {
            v6: true,
            ..Spec::default()
        };
        tso_case(spec, 777, 1428, ACK | PSH);
        tso_case(spec, 16 * 1428 - 1, 1428, ACK | PSH);
        tso_case(spec, 64 * 1000, 1000, ACK | FIN);
    }

    #[test]
    fn without_options_and_with_vlan() {
        let spec = Spec {
            ts: None,
            vlan: true,
            ..Spec::default()
        };
        tso_case(spec, 10_000, 1460, ACK | PSH);
        tso_case(Spec { v6: true, ..spec }, 10_000, 1440, ACK);
    }

    #[test]
    fn cwr_only_on_first_and_ecn_type() {
        let spec = Spec::default();
        let data = payload(5000);
        let (mut hdr, frame) = fixtures::tso(&spec, 1, ACK | CWR | ECE | PSH, &data, 1448);
        hdr.gso_type |= VnetHdr::GSO_ECN;
        let mut out = Segments::new();
        segment(&hdr, &frame, &mut out).unwrap();
        let flags: Vec<u8> = out.iter().map(|s| check(s).flags()).collect();
        assert_eq!(
            flags,
            [ACK | CWR | ECE, ACK | ECE, ACK | ECE, ACK | ECE | PSH]
        );
    }

    #[test]
    fn ignores_frame_padding() {
        let spec = Spec::default();
        let (hdr, mut frame) = fixtures::tso(&spec, 1, ACK, &payload(3000), 1448);
        frame.extend_from_slice(&[0xee; 7]);
        let mut out = Segments::new();
        segment(&hdr, &frame, &mut out).unwrap();
        let joined: Vec<u8> = out.iter().flat_map(|s| check(s).payload).collect();
        assert_eq!(joined, payload(3000));
    }

    fn uso_case(spec: Spec, total: usize, size: u16) {
        let data = payload(total);
        let (hdr, frame) = fixtures::uso(&spec, &data, size);
        let mut out = Segments::new();
        segment(&hdr, &frame, &mut out).unwrap();
        assert_eq!(out.len(), total.div_ceil(usize::from(size)).max(1));
        let mut joined = Vec::new();
        for (i, seg) in out.iter().enumerate() {
            let c = check(seg);
            if !spec.v6 {
                assert_eq!(c.ip_id, Some(spec.ip_id.wrapping_add(i as u16)));
            }
            joined.extend_from_slice(&c.udp.unwrap());
        }
        assert_eq!(joined, data);
        assert_eq!(
            out.uniform_len(),
            Some(fixtures::l4(&spec) + 8 + total.min(usize::from(size)))
        );
        assert_eq!(out.as_bytes().len(), out.total_len());
    }

    #[test]
    fn uso_v4_v6() {
        let v4 = Spec::default();
        let v6 = Spec {
            v6: true,
            ..Spec::default()
        };
        for spec in [v4, v6] {
            uso_case(spec, 1, 1400);
            uso_case(spec, 16 * 1400, 1400);
            uso_case(spec, 64 * 1000 - 17, 1000);
            uso_case(spec, 0, 1000);
        }
    }

    #[test]
    fn not_gso_completes_checksum() {
        for v6 in [false, true] {
            let spec = Spec {
                v6,
                ..Spec::default()
            };
            let good = fixtures::tcp(&spec, 9, ACK | PSH, &payload(333));
            let (mut hdr, partial) = fixtures::tso(&spec, 9, ACK | PSH, &payload(333), 1448);
            hdr.gso_type = VnetHdr::GSO_NONE;
            hdr.gso_size = 0;
            let mut out = Segments::new();
            segment(&hdr, &partial, &mut out).unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out.get(0).unwrap(), &good[..]);
            // Without NEEDS_CSUM the frame goes as it is.
            out.clear();
            segment(&VnetHdr::default(), &partial, &mut out).unwrap();
            assert_eq!(out.get(0).unwrap(), &partial[..]);
        }
    }

    #[test]
    fn complete_checksum_tcp_udp_v4_v6() {
        for v6 in [false, true] {
            let spec = Spec {
                v6,
                ..Spec::default()
            };
            let good = fixtures::tcp(&spec, 1, ACK, &payload(1001));
            let (mut hdr, mut f) = fixtures::tso(&spec, 1, ACK, &payload(1001), 1448);
            hdr.gso_type = 0;
            assert_ne!(f, good);
            complete_checksum(&hdr, &mut f).unwrap();
            assert_eq!(f, good);

            let good = fixtures::udp(&spec, &payload(999));
            let (mut hdr, mut f) = fixtures::uso(&spec, &payload(999), 1400);
            hdr.gso_type = 0;
            complete_checksum(&hdr, &mut f).unwrap();
            assert_eq!(f, good);
            check(&f);
        }
    }

    #[test]
    fn complete_checksum_zero_becomes_ffff() {
        let spec = Spec::default();
        let mut f = fixtures::udp(&spec, &payload(100));
        let at = fixtures::l4(&spec) + 6;
        let c = u16::from_be_bytes([f[at], f[at + 1]]);
        // Adding the checksum to a payload word makes the data sum to all ones.
        let w = fixtures::l4(&spec) + 8;
        let old = u32::from(u16::from_be_bytes([f[w], f[w + 1]]));
        let mut new = old + u32::from(c);
        new = (new & 0xffff) + (new >> 16);
        f[w..w + 2].copy_from_slice(&(new as u16).to_be_bytes());
        fixtures::make_partial(&mut f, &spec, 17);
        let hdr = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            csum_start: fixtures::l4(&spec) as u16,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        complete_checksum(&hdr, &mut f).unwrap();
        assert_eq!(&f[at..at + 2], &[0xff, 0xff]);
        check(&f);
    }

    #[test]
    fn complete_checksum_bounds() {
        let mut f = vec![0u8; 60];
        let hdr = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            csum_start: 50,
            csum_offset: 9,
            ..VnetHdr::default()
        };
        assert_eq!(
            complete_checksum(&hdr, &mut f),
            Err(OffloadError::BadHeader("csum_start/csum_offset"))
        );
        let hdr = VnetHdr {
            csum_offset: 8,
            ..hdr
        };
        complete_checksum(&hdr, &mut f).unwrap();
        assert_eq!(&f[58..], &[0xff, 0xff]);
        let mut empty = [];
        assert!(complete_checksum(&VnetHdr::default(), &mut empty).is_ok());
    }

    #[test]
    fn errors_leave_out_unchanged() {
        let spec = Spec::default();
        let (hdr, frame) = fixtures::tso(&spec, 1, ACK, &payload(5000), 1448);
        let mut out = Segments::new();
        out.push(b"kept");
        let bad = |h: VnetHdr, f: &[u8], out: &mut Segments| {
            let e = segment(&h, f, out);
            assert!(e.is_err());
            assert_eq!(out.len(), 1);
            assert_eq!(out.get(0).unwrap(), b"kept");
            e.unwrap_err()
        };
        let zero = VnetHdr { gso_size: 0, ..hdr };
        assert_eq!(
            bad(zero, &frame, &mut out),
            OffloadError::BadHeader("gso_size")
        );
        let ufo = VnetHdr {
            gso_type: VnetHdr::GSO_UDP,
            ..hdr
        };
        assert_eq!(bad(ufo, &frame, &mut out), OffloadError::Unsupported(3));
        let v6 = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV6,
            ..hdr
        };
        assert!(matches!(
            bad(v6, &frame, &mut out),
            OffloadError::BadHeader(_)
        ));
        let uso = VnetHdr {
            gso_type: VnetHdr::GSO_UDP_L4,
            ..hdr
        };
        assert!(matches!(
            bad(uso, &frame, &mut out),
            OffloadError::BadHeader(_)
        ));
        assert_eq!(
            bad(hdr, &frame[..frame.len() - 1], &mut out),
            OffloadError::Truncated
        );
        let tiny = VnetHdr { gso_size: 1, ..hdr };
        assert_eq!(bad(tiny, &frame, &mut out), OffloadError::TooManySegments);
        let csum = VnetHdr {
            gso_type: 0,
            csum_start: 9999,
            ..hdr
        };
        assert!(matches!(
            bad(csum, &frame, &mut out),
            OffloadError::BadHeader(_)
        ));
        let mut ext = frame.clone();
        let v6spec = Spec { v6: true, ..spec };
        let (h6, mut f6) = fixtures::tso(&v6spec, 1, ACK, &payload(3000), 1400);
        f6[14 + 6] = 0; // hop-by-hop options
        assert_eq!(
            bad(h6, &f6, &mut out),
            OffloadError::UnsupportedFrame("IPv6 extension headers")
        );
        ext[14 + 6] |= 0x20; // more fragments
        assert_eq!(
            bad(hdr, &ext, &mut out),
            OffloadError::UnsupportedFrame("IPv4 fragment")
        );
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            bad(hdr, &arp, &mut out),
            OffloadError::UnsupportedFrame("not IP, or an IPv6 jumbogram")
        );
    }

    #[test]
    fn uniform_len_cases() {
        let mut s = Segments::new();
        assert_eq!(s.uniform_len(), None);
        assert!(s.is_empty());
        s.push(&[0; 10]);
        assert_eq!(s.uniform_len(), Some(10));
        s.push(&[0; 10]);
        s.push(&[0; 4]);
        assert_eq!(s.uniform_len(), Some(10));
        s.push(&[0; 10]);
        assert_eq!(s.uniform_len(), None);
        s.clear();
        s.push(&[0; 4]);
        s.push(&[0; 10]);
        assert_eq!(s.uniform_len(), None);
        assert_eq!(s.get(2), None);
    }

    #[test]
    fn reuses_memory() {
        let spec = Spec::default();
        let (hdr, frame) = fixtures::tso(&spec, 1, ACK, &payload(60_000), 1448);
        let mut out = Segments::new();
        segment(&hdr, &frame, &mut out).unwrap();
        let ptr = out.as_bytes().as_ptr();
        for _ in 0..10 {
            out.clear();
            segment(&hdr, &frame, &mut out).unwrap();
        }
        assert_eq!(out.as_bytes().as_ptr(), ptr);
    }

    fn any_hdr() -> impl Strategy<Value = VnetHdr> {
        (
            any::<u8>(),
            prop_oneof![
                Just(0u8),
                Just(1),
                Just(3),
                Just(4),
                Just(5),
                Just(0x81),
                any::<u8>()
            ],
            any::<u16>(),
            prop_oneof![Just(0u16), 1u16..64, 500u16..2000, any::<u16>()],
            prop_oneof![0u16..80, any::<u16>()],
            prop_oneof![Just(6u16), Just(16), any::<u16>()],
        )
            .prop_map(
                |(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)| VnetHdr {
                    flags,
                    gso_type,
                    hdr_len,
                    gso_size,
                    csum_start,
                    csum_offset,
                },
            )
    }

    /// A valid super-frame with some bytes overwritten.
    fn mangled() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<bool>(),
            any::<bool>(),
            0usize..5000,
            proptest::collection::vec((0usize..120, any::<u8>()), 0..6),
            0usize..64,
        )
            .prop_map(|(v6, udp, len, edits, cut)| {
                let spec = Spec {
                    v6,
                    ..Spec::default()
                };
                let mut f = if udp {
                    fixtures::udp(&spec, &payload(len))
                } else {
                    fixtures::tcp(&spec, 1, ACK, &payload(len))
                };
                for (at, b) in edits {
                    if let Some(x) = f.get_mut(at) {
                        *x = b;
                    }
                }
                f.truncate(f.len().saturating_sub(cut));
                f
            })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(hdr in any_hdr(),
                                    frame in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = Segments::new();
            let _ = segment(&hdr, &frame, &mut out);
            let mut f = frame.clone();
            let _ = complete_checksum(&hdr, &mut f);
        }

        #[test]
        fn mangled_frames_never_panic(hdr in any_hdr(), frame in mangled()) {
            let mut out = Segments::new();
            let before = (out.len(), out.total_len());
            if segment(&hdr, &frame, &mut out).is_err() {
                prop_assert_eq!((out.len(), out.total_len()), before);
            }
            prop_assert!(out.len() <= MAX_SEGMENTS);
            let mut f = frame.clone();
            let _ = complete_checksum(&hdr, &mut f);
        }

        #[test]
        fn random_sizes_segment_correctly(v6 in any::<bool>(), ts in any::<bool>(),
                                          len in 0usize..20_000, mss in 1u16..3000,
                                          psh in any::<bool>()) {
            let spec = Spec { v6, ts: ts.then_some(3), ..Spec::default() };
            let mss = mss.max((len / MAX_SEGMENTS) as u16 + 1);
            tso_case(spec, len, mss, if psh { ACK | PSH } else { ACK });
        }
    }
}
