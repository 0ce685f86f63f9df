//! Independent checks of frames the datapath emits.
//!
//! Headers are read with etherparse and checksums summed by a plain RFC 1071 loop, never with
//! vswitch's own `wire`/`offload` code. Every `assert_*` function panics (a fuzz crash) with a
//! message saying what is wrong.

use etherparse::{
    EtherType, Ethernet2HeaderSlice, Ipv4HeaderSlice, Ipv6HeaderSlice, SingleVlanHeaderSlice,
    TcpHeaderSlice,
};
use vswitch::offload::{self, Segments, VnetHdr};

/// IP protocol numbers.
pub const TCP: u8 = 6;
/// IP protocol numbers.
pub const UDP: u8 = 17;

/// Where the headers of an Ethernet + IP + TCP/UDP frame sit, as etherparse reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Offset of the IP header (14, or 18 behind one 802.1Q tag).
    pub l3: usize,
    /// Offset of the transport header.
    pub l4: usize,
    /// Offset of the transport payload.
    pub data: usize,
    /// End of the IP packet as its header declares it.
    pub end: usize,
    /// IPv6 rather than IPv4.
    pub v6: bool,
    /// TCP or UDP.
    pub proto: u8,
    /// IPv4 carries MF or a fragment offset.
    pub fragment: bool,
    /// TCP sequence number (0 for UDP).
    pub seq: u32,
    /// TCP flags byte (0 for UDP).
    pub flags: u8,
    /// IPv4 identification (0 for IPv6).
    pub ip_id: u16,
}

/// Reads Ethernet (at most one 802.1Q tag) and IPv4 or IPv6 (no extension headers) up to the
/// transport header, without reading it: `data` is `l4`, `seq` and `flags` are 0. `None` when
/// the frame is anything else or the IP length runs past its end.
pub fn parse_ip(frame: &[u8]) -> Option<Packet> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).ok()?;
    let (mut ethertype, mut l3) = (eth.ether_type(), 14);
    // Up to four tags of any of the VLAN TPIDs (802.1Q, 802.1ad, 0x9100), as the switch takes.
    for _ in 0..4 {
        if ![0x8100, 0x88a8, 0x9100].contains(&ethertype.0) {
            break;
        }
        let tag = SingleVlanHeaderSlice::from_slice(frame.get(l3..)?).ok()?;
        ethertype = tag.ether_type();
        l3 += 4;
    }
    let rest = frame.get(l3..)?;
    let (l4, end, v6, proto, fragment, ip_id) = if ethertype == EtherType::IPV4 {
        let ip = Ipv4HeaderSlice::from_slice(rest).ok()?;
        let ihl = usize::from(ip.ihl()) * 4;
        let total = usize::from(ip.total_len());
        if total < ihl {
            return None;
        }
        let fragment = ip.more_fragments() || ip.fragments_offset().value() != 0;
        (
            l3 + ihl,
            l3 + total,
            false,
            ip.protocol().0,
            fragment,
            ip.identification(),
        )
    } else if ethertype == EtherType::IPV6 {
        let ip = Ipv6HeaderSlice::from_slice(rest).ok()?;
        let end = l3 + 40 + usize::from(ip.payload_length());
        (l3 + 40, end, true, ip.next_header().0, false, 0)
    } else {
        return None;
    };
    if end > frame.len() {
        return None;
    }
    Some(Packet {
        l3,
        l4,
        data: l4,
        end,
        v6,
        proto,
        fragment,
        seq: 0,
        flags: 0,
        ip_id,
    })
}

/// Reads what [`parse_ip`] reads and a valid TCP or UDP header behind it; `None` when the frame
/// is anything else.
pub fn parse(frame: &[u8]) -> Option<Packet> {
    let p = parse_ip(frame)?;
    let l4_bytes = &frame[p.l4..p.end];
    match p.proto {
        TCP => {
            let tcp = TcpHeaderSlice::from_slice(l4_bytes).ok()?;
            Some(Packet {
                data: p.l4 + usize::from(tcp.data_offset()) * 4,
                seq: tcp.sequence_number(),
                flags: l4_bytes[13],
                ..p
            })
        }
        UDP if l4_bytes.len() >= 8 => Some(Packet {
            data: p.l4 + 8,
            ..p
        }),
        _ => None,
    }
}

/// After `complete_partial_checksum` changed `frame`: the TCP or UDP checksum verifies. Only
/// the IP layer is read, since the completion (like a NIC's) does not look into the
/// transport header beyond its checksum field.
pub fn assert_completed(frame: &[u8]) {
    let p = parse_ip(frame).expect("completed a frame that does not parse as IP");
    assert!(
        p.proto == TCP || p.proto == UDP,
        "completed a frame that is neither TCP nor UDP"
    );
    let field = p.l4 + if p.proto == TCP { 16 } else { 6 };
    assert!(field + 2 <= p.end, "completed past the IP packet");
    assert!(
        transport_ok(frame, &p),
        "completed checksum does not verify"
    );
}

/// RFC 1071 sum of `data` added to `acc`, unfolded.
fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut pairs = data.chunks_exact(2);
    for pair in &mut pairs {
        acc += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits with end-around carry.
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header sum of the packet for a transport length of `len`.
fn pseudo(frame: &[u8], p: &Packet, len: usize) -> u64 {
    let addrs = if p.v6 {
        &frame[p.l3 + 8..p.l3 + 40]
    } else {
        &frame[p.l3 + 12..p.l3 + 20]
    };
    sum(addrs, 0) + u64::from(p.proto) + (len as u64 & 0xffff) + (len as u64 >> 16)
}

/// Whether the transport checksum of the packet verifies (a zero UDP checksum over IPv4 means
/// "none" and passes).
pub fn transport_ok(frame: &[u8], p: &Packet) -> bool {
    let l4 = &frame[p.l4..p.end];
    if p.proto == UDP && !p.v6 && l4[6..8] == [0, 0] {
        return true;
    }
    fold(sum(l4, pseudo(frame, p, l4.len()))) == 0xffff
}

/// Whether the IPv4 header checksum verifies (always true for IPv6).
pub fn ipv4_header_ok(frame: &[u8], p: &Packet) -> bool {
    p.v6 || fold(sum(&frame[p.l3..p.l4], 0)) == 0xffff
}

/// Whether the transport checksum field holds the pseudo-header sum of the packet's transport
/// length: what a sender leaves for checksum offload (`CHECKSUM_PARTIAL`).
pub fn holds_pseudo_sum(frame: &[u8], p: &Packet) -> bool {
    let at = p.l4 + if p.proto == TCP { 16 } else { 6 };
    let field = u16::from_be_bytes([frame[at], frame[at + 1]]);
    field == fold(pseudo(frame, p, p.end - p.l4))
}

/// Checks one frame ready for a wire: it parses as `proto`, no fragment, the IP length covers
/// exactly the frame, the IPv4 header and the transport checksums verify, and a UDP length
/// covers exactly the datagram. Returns the parsed headers.
pub fn assert_wire_frame(frame: &[u8], proto: u8) -> Packet {
    let p = parse(frame).unwrap_or_else(|| panic!("segment does not parse: {frame:02x?}"));
    assert_eq!(p.proto, proto, "segment of the wrong protocol");
    assert!(!p.fragment, "segment is an IPv4 fragment");
    assert_eq!(
        p.end,
        frame.len(),
        "IP length does not cover the segment exactly"
    );
    assert!(p.data <= p.end, "transport header runs past the IP packet");
    assert!(ipv4_header_ok(frame, &p), "IPv4 header checksum is wrong");
    assert!(transport_ok(frame, &p), "transport checksum is wrong");
    if proto == UDP {
        let len = u16::from_be_bytes([frame[p.l4 + 4], frame[p.l4 + 5]]);
        assert_eq!(
            usize::from(len),
            p.end - p.l4,
            "UDP length does not cover the datagram"
        );
    }
    p
}

/// The transport protocol a GSO type cuts, and whether it is IPv6-only (TSO6), IPv4-only (TSO4)
/// or either (USO).
pub fn gso_proto(hdr: &VnetHdr) -> Option<(u8, Option<bool>)> {
    match hdr.gso_type & !VnetHdr::GSO_ECN {
        VnetHdr::GSO_TCPV4 => Some((TCP, Some(false))),
        VnetHdr::GSO_TCPV6 => Some((TCP, Some(true))),
        VnetHdr::GSO_UDP_L4 => Some((UDP, None)),
        _ => None,
    }
}

/// Checks what [`offload::segment`] made of a GSO super-frame `frame` with header `hdr`: every
/// segment is a well-formed wire frame of the GSO type's protocol and IP version, carries at
/// most `gso_size` bytes of payload behind a copy of the super-frame's headers, the payloads
/// put back together are the super-frame's, TCP sequence numbers advance with them, FIN and PSH
/// sit only on the last segment and CWR only on the first, and IPv4 identifications count up.
pub fn assert_segments(hdr: &VnetHdr, frame: &[u8], segments: &Segments) {
    let Some((proto, v6)) = gso_proto(hdr) else {
        panic!("segment() accepted GSO type {:#04x}", hdr.gso_type);
    };
    let original = parse(frame).expect("segment() accepted a super-frame that does not parse");
    assert_eq!(original.proto, proto, "segment() cut the wrong protocol");
    if let Some(v6) = v6 {
        assert_eq!(
            original.v6, v6,
            "segment() cut a TSO frame of the wrong IP version"
        );
    }
    let gso = usize::from(hdr.gso_size);
    let payload = &frame[original.data..original.end];
    let n = payload.len().div_ceil(gso).max(1);
    assert_eq!(segments.len(), n, "number of segments");
    assert!(
        n <= offload::MAX_SEGMENTS,
        "more than MAX_SEGMENTS segments"
    );
    assert!(segments.uniform_len().is_some(), "segments are not uniform");
    let mut offset = 0;
    for (i, seg) in segments.iter().enumerate() {
        let p = assert_wire_frame(seg, proto);
        assert_eq!(
            (p.l3, p.l4, p.data, p.v6),
            (original.l3, original.l4, original.data, original.v6),
            "segment {i} has other headers than the super-frame"
        );
        let chunk = &seg[p.data..];
        assert!(chunk.len() <= gso, "segment {i} carries more than gso_size");
        assert_eq!(
            chunk,
            &payload[offset..offset + chunk.len()],
            "segment {i} payload"
        );
        if !p.v6 {
            assert_eq!(
                p.ip_id,
                original.ip_id.wrapping_add(i as u16),
                "segment {i} IPv4 identification"
            );
        }
        if proto == TCP {
            assert_eq!(
                p.seq,
                original.seq.wrapping_add(offset as u32),
                "segment {i} sequence number"
            );
            let (fin_psh, cwr) = (0x09, 0x80);
            if i + 1 != n {
                assert_eq!(p.flags & fin_psh, 0, "FIN/PSH on segment {i} of {n}");
            } else {
                assert_eq!(
                    p.flags & fin_psh,
                    original.flags & fin_psh,
                    "last segment flags"
                );
            }
            if i != 0 {
                assert_eq!(p.flags & cwr, 0, "CWR on segment {i}");
            }
            assert_eq!(
                p.flags & !(fin_psh | cwr),
                original.flags & !(fin_psh | cwr),
                "segment {i} other flags"
            );
        }
        offset += chunk.len();
    }
    assert_eq!(offset, payload.len(), "segments lose payload");
}

/// Checks a frame the coalescer emitted with `hdr`, and returns how many of the pushed
/// segments it stands for:
///
/// - a zero header: a frame passed on as it came (one segment);
/// - `F_NEEDS_CSUM` without GSO: one TCP/UDP segment whose checksum field holds the
///   pseudo-header sum, with `csum_start`/`csum_offset` at that field;
/// - a GSO header: a super-frame whose headers agree with the vnet header (type, `hdr_len`,
///   `csum_start`, `csum_offset`), no padding, a correct IPv4 header checksum, the pseudo-header
///   sum in the checksum field, a UDP length covering the whole merged datagram; the checksum
///   a kernel completes from `csum_start` verifies, and segmenting it again gives well-formed
///   segments.
pub fn assert_coalesced(hdr: &VnetHdr, frame: &[u8]) -> usize {
    if *hdr == VnetHdr::default() {
        return 1;
    }
    let p = parse(frame).unwrap_or_else(|| panic!("coalescer marked a non-TCP/UDP frame {hdr:?}"));
    let field = if p.proto == TCP { 16 } else { 6 };
    assert_eq!(hdr.flags, VnetHdr::F_NEEDS_CSUM, "vnet flags");
    assert_eq!(usize::from(hdr.csum_start), p.l4, "csum_start");
    assert_eq!(usize::from(hdr.csum_offset), field, "csum_offset");
    assert!(!p.fragment, "coalescer marked a fragment");
    assert!(
        holds_pseudo_sum(frame, &p),
        "checksum field does not hold the pseudo-header sum"
    );
    // What the kernel does with CHECKSUM_PARTIAL: sum from csum_start, store the complement.
    let mut done = frame[..p.end].to_vec();
    let at = p.l4 + field;
    let total = !fold(sum(&done[p.l4..], 0));
    let total = if p.proto == UDP && total == 0 {
        0xffff
    } else {
        total
    };
    done[at..at + 2].copy_from_slice(&total.to_be_bytes());
    assert!(
        transport_ok(&done, &p),
        "completed checksum does not verify"
    );
    if !hdr.is_gso() {
        assert_eq!(hdr.gso_size, 0, "gso_size without GSO");
        return 1;
    }
    let Some((proto, v6)) = gso_proto(hdr) else {
        panic!("coalescer emitted GSO type {:#04x}", hdr.gso_type);
    };
    assert_eq!(p.proto, proto, "GSO type against the transport protocol");
    if let Some(v6) = v6 {
        assert_eq!(p.v6, v6, "TSO type against the IP version");
    }
    assert!(
        ipv4_header_ok(frame, &p),
        "super-frame IPv4 header checksum"
    );
    assert_eq!(frame.len(), p.end, "super-frame carries padding");
    assert_eq!(usize::from(hdr.hdr_len), p.data, "hdr_len");
    assert!(hdr.gso_size > 0, "gso_size 0");
    if proto == UDP {
        let len = u16::from_be_bytes([frame[p.l4 + 4], frame[p.l4 + 5]]);
        assert_eq!(usize::from(len), p.end - p.l4, "USO UDP length");
    }
    let payload = p.end - p.data;
    let n = payload.div_ceil(usize::from(hdr.gso_size));
    assert!(n >= 2, "a super-frame of fewer than two segments");
    let mut segments = Segments::new();
    offload::segment(hdr, frame, &mut segments)
        .unwrap_or_else(|e| panic!("a coalesced super-frame does not segment: {e}"));
    assert_segments(hdr, frame, &segments);
    n
}

/// Whether `frame` is a TCP or UDP packet over IPv4 whose header checksum does not verify.
pub fn bad_ipv4_header(frame: &[u8]) -> bool {
    parse(frame).is_some_and(|p| !ipv4_header_ok(frame, &p))
}

/// IP protocol numbers.
pub const ICMP: u8 = 1;
/// IP protocol numbers.
pub const ICMPV6: u8 = 58;

/// Checks a "too big" error the switch sent in answer to `offending` on a network of MTU
/// `mtu`, from the gateway MAC `gateway`: addressed back to the sender (MACs and IP), ICMP
/// "fragmentation needed" or ICMPv6 "packet too big" with the MTU, every checksum right, at
/// most 576 (IPv4) or 1280 (IPv6) bytes of IP, quoting the start of the offending packet.
pub fn assert_too_big(reply: &[u8], offending: &[u8], gateway: [u8; 6], mtu: u16) {
    assert_eq!(
        &reply[..6],
        &offending[6..12],
        "error not sent to the sender's MAC"
    );
    assert_eq!(&reply[6..12], &gateway, "error not from the gateway MAC");
    let p = parse_ip(reply).expect("the error does not parse as IP");
    let q = parse_ip(offending).expect("answered a frame that is not IP");
    assert_eq!(
        p.l3, q.l3,
        "the error's Ethernet header differs from the frame's"
    );
    assert_eq!(p.end, reply.len(), "the error's IP length");
    assert!(!p.fragment, "the error is a fragment");
    let (src_at, dst_at, len) = if p.v6 { (8, 24, 16) } else { (12, 16, 4) };
    assert_eq!(
        &reply[p.l3 + dst_at..p.l3 + dst_at + len],
        &offending[q.l3 + src_at..q.l3 + src_at + len],
        "the error is not addressed to the offending packet's source"
    );
    let icmp = &reply[p.l4..p.end];
    assert!(icmp.len() >= 8, "ICMP header truncated");
    let quoted = &icmp[8..];
    if p.v6 {
        assert_eq!(p.proto, ICMPV6, "IPv6 error is not ICMPv6");
        assert!(p.end - p.l3 <= 1280, "ICMPv6 error over 1280 bytes");
        assert_eq!((icmp[0], icmp[1]), (2, 0), "not a packet too big");
        assert_eq!(
            u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
            u32::from(mtu),
            "packet too big MTU"
        );
        assert!(transport_ok(reply, &p), "ICMPv6 checksum");
    } else {
        assert_eq!(p.proto, ICMP, "IPv4 error is not ICMP");
        assert!(p.end - p.l3 <= 576, "ICMP error over 576 bytes");
        assert!(ipv4_header_ok(reply, &p), "error's IPv4 header checksum");
        assert_eq!((icmp[0], icmp[1]), (3, 4), "not a fragmentation needed");
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), mtu, "next-hop MTU");
        assert_eq!(fold(sum(icmp, 0)), 0xffff, "ICMP checksum");
        assert!(
            quoted.len() >= q.l4 - q.l3 + 8,
            "quotes less than the IP header + 8"
        );
    }
    assert!(
        offending[q.l3..q.end].starts_with(quoted),
        "the quoted bytes are not the offending packet's"
    );
}

/// Checks a frame whose TCP MSS option the switch lowered: `after` differs from `before` only
/// in the checksum field and two other bytes of the TCP options, it is a SYN, and its checksum
/// verifies when `before`'s did (or held a partial sum and `completed` says the switch was to
/// complete it). `partial`: the checksum was left to an offload, so it must be untouched.
pub fn assert_clamped(before: &[u8], after: &[u8], partial: bool, completed: bool) {
    assert_eq!(before.len(), after.len(), "the clamp changed the length");
    let p = parse(before).expect("clamped a frame that is not TCP/UDP");
    assert_eq!(p.proto, TCP, "clamped a frame that is not TCP");
    assert!(p.flags & 0x02 != 0, "clamped a segment without SYN");
    let field = p.l4 + 16..p.l4 + 18;
    let options = p.l4 + 20..p.data;
    let changed: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    for &i in &changed {
        assert!(
            field.contains(&i) || options.contains(&i),
            "the clamp changed byte {i} outside the TCP checksum and options"
        );
    }
    if partial {
        assert_eq!(
            before[field.clone()],
            after[field],
            "a partial checksum was changed"
        );
    } else if transport_ok(before, &p) || (completed && holds_pseudo_sum(before, &p)) {
        assert!(transport_ok(after, &p), "the clamp broke the TCP checksum");
    }
}
