//! Test frames built, and checked, with etherparse: an implementation independent of ours.

#![allow(clippy::unwrap_used)]

use etherparse::{
    IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, NetSlice, PacketBuilder, SlicedPacket,
    TcpHeader, TcpOptionElement, TransportSlice, VlanId,
};

use super::VnetHdr;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

/// The headers of a test flow.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub v6: bool,
    pub vlan: bool,
    pub sport: u16,
    pub dport: u16,
    pub ack: u32,
    pub window: u16,
    /// TCP timestamps option (12 bytes with its two NOPs) carrying this value.
    pub ts: Option<u32>,
    pub ip_id: u16,
    pub ttl: u8,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            v6: false,
            vlan: false,
            sport: 40000,
            dport: 5201,
            ack: 0x1234_5678,
            window: 502,
            ts: Some(0xdead_beef),
            ip_id: 0xfff0,
            ttl: 64,
        }
    }
}

const SRC4: [u8; 4] = [10, 244, 1, 2];
const DST4: [u8; 4] = [10, 244, 2, 3];
const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2];
const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3];

fn builder(
    spec: &Spec,
    proto: IpNumber,
    payload_len: usize,
) -> etherparse::PacketBuilderStep<IpHeaders> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let ip = if spec.v6 {
        IpHeaders::Ipv6(
            etherparse::Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: 0,
                next_header: proto,
                hop_limit: spec.ttl,
                source: SRC6,
                destination: DST6,
            },
            Default::default(),
        )
    } else {
        let mut h = Ipv4Header::new(payload_len as u16, spec.ttl, proto, SRC4, DST4).unwrap();
        h.identification = spec.ip_id;
        h.dont_fragment = true;
        IpHeaders::Ipv4(h, Ipv4Extensions::default())
    };
    if spec.vlan {
        eth.single_vlan(VlanId::try_new(42).unwrap()).ip(ip)
    } else {
        eth.ip(ip)
    }
}

/// An Ethernet TCP frame with correct checksums.
pub fn tcp(spec: &Spec, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut th = TcpHeader::new(spec.sport, spec.dport, seq, spec.window);
    th.acknowledgment_number = spec.ack;
    th.fin = flags & FIN != 0;
    th.syn = flags & SYN != 0;
    th.rst = flags & RST != 0;
    th.psh = flags & PSH != 0;
    th.ack = flags & ACK != 0;
    th.urg = flags & URG != 0;
    th.ece = flags & ECE != 0;
    th.cwr = flags & CWR != 0;
    if flags & URG != 0 {
        th.urgent_pointer = 1;
    }
    if let Some(ts) = spec.ts {
        th.set_options(&[
            TcpOptionElement::Noop,
            TcpOptionElement::Noop,
            TcpOptionElement::Timestamp(ts, 7),
        ])
        .unwrap();
    }
    let tcp_len = th.header_len() + payload.len();
    let mut out = Vec::new();
    builder(spec, IpNumber::TCP, tcp_len)
        .tcp_header(th)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// An Ethernet UDP frame with correct checksums.
pub fn udp(spec: &Spec, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    builder(spec, IpNumber::UDP, 8 + payload.len())
        .udp(spec.sport, spec.dport)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// Where the transport header starts.
pub fn l4(spec: &Spec) -> usize {
    let l3 = if spec.vlan { 18 } else { 14 };
    l3 + if spec.v6 { 40 } else { 20 }
}

/// The TCP header length.
pub fn tcp_len(spec: &Spec) -> usize {
    if spec.ts.is_some() { 32 } else { 20 }
}

/// The pseudo-header sum of a frame, folded, computed the plain way.
pub fn pseudo_folded(frame: &[u8], spec: &Spec, proto: u8) -> u16 {
    let l3 = if spec.vlan { 18 } else { 14 };
    let l4 = l4(spec);
    let len = frame.len() - l4;
    let addrs = if spec.v6 {
        &frame[l3 + 8..l3 + 40]
    } else {
        &frame[l3 + 12..l3 + 20]
    };
    let mut acc: u64 = u64::from(proto) + (len as u64 & 0xffff) + (len as u64 >> 16);
    for p in addrs.chunks(2) {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Replaces the transport checksum with the pseudo-header sum, as a sender with checksum
/// offload leaves it.
pub fn make_partial(frame: &mut [u8], spec: &Spec, proto: u8) {
    let at = l4(spec) + if proto == 6 { 16 } else { 6 };
    let p = pseudo_folded(frame, spec, proto);
    frame[at..at + 2].copy_from_slice(&p.to_be_bytes());
}

/// Recomputes the IPv4 header checksum of `frame` after a test changed the header.
pub fn set_ipv4_checksum(frame: &mut [u8]) {
    let l3 = if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    };
    let ihl = usize::from(frame[l3] & 0x0f) * 4;
    frame[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let c = crate::wire::checksum(&frame[l3..l3 + ihl], 0);
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// Stores `value` in the UDP checksum field (0: "no checksum" over IPv4).
pub fn set_udp_checksum(frame: &mut [u8], spec: &Spec, value: u16) {
    let at = l4(spec) + 6;
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// A TSO super-frame as a TAP hands it over: partial checksum and its vnet header.
pub fn tso(spec: &Spec, seq: u32, flags: u8, payload: &[u8], mss: u16) -> (VnetHdr, Vec<u8>) {
    let mut f = tcp(spec, seq, flags, payload);
    make_partial(&mut f, spec, 6);
    let l4 = l4(spec);
    let hdr = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: if spec.v6 {
            VnetHdr::GSO_TCPV6
        } else {
            VnetHdr::GSO_TCPV4
        },
        hdr_len: (l4 + tcp_len(spec)) as u16,
        gso_size: mss,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    (hdr, f)
}

/// A USO super-frame as a TAP hands it over.
pub fn uso(spec: &Spec, payload: &[u8], size: u16) -> (VnetHdr, Vec<u8>) {
    let mut f = udp(spec, payload);
    make_partial(&mut f, spec, 17);
    let l4 = l4(spec);
    let hdr = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: VnetHdr::GSO_UDP_L4,
        hdr_len: (l4 + 8) as u16,
        gso_size: size,
        csum_start: l4 as u16,
        csum_offset: 6,
    };
    (hdr, f)
}

/// A test payload: a counter, so misplaced bytes show.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// What a frame carries, after its checksums were verified by etherparse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub ip_id: Option<u16>,
    pub tcp: Option<(u32, u32, u8, Vec<u8>)>,
    pub udp: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl Checked {
    pub fn seq(&self) -> u32 {
        self.tcp.as_ref().unwrap().0
    }
    pub fn flags(&self) -> u8 {
        self.tcp.as_ref().unwrap().2
    }
}

/// Parses `frame` with etherparse, checks that every IP length matches the frame and that the
/// IPv4 header checksum and the TCP/UDP checksum are correct, and returns what it carries.
pub fn check(frame: &[u8]) -> Checked {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let l3_start;
    let (ip_id, src, dst) = match p.net.as_ref().unwrap() {
        NetSlice::Ipv4(ip) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "IPv4 header checksum"
            );
            l3_start = frame.len() - usize::from(h.total_len);
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s[..4].copy_from_slice(&h.source);
            d[..4].copy_from_slice(&h.destination);
            (Some(h.identification), s, d)
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header().to_header();
            l3_start = frame.len() - 40 - usize::from(h.payload_length);
            (None, h.source, h.destination)
        }
        NetSlice::Arp(_) => panic!("not IP"),
    };
    assert!(
        l3_start == 14 || l3_start == 18,
        "IP length does not match the frame"
    );
    let v6 = ip_id.is_none();
    let mut s4 = [0u8; 4];
    let mut d4 = [0u8; 4];
    s4.copy_from_slice(&src[..4]);
    d4.copy_from_slice(&dst[..4]);
    match p.transport.unwrap() {
        TransportSlice::Tcp(t) => {
            let want = if v6 {
                t.calc_checksum_ipv6(src, dst).unwrap()
            } else {
                t.calc_checksum_ipv4(s4, d4).unwrap()
            };
            assert_eq!(t.checksum(), want, "TCP checksum");
            let flags = t.header_slice()[13];
            Checked {
                ip_id,
                tcp: Some((
                    t.sequence_number(),
                    t.acknowledgment_number(),
                    flags,
                    t.options().to_vec(),
                )),
                udp: None,
                payload: t.payload().to_vec(),
            }
        }
        TransportSlice::Udp(u) => {
            let h = u.to_header();
            let want = if v6 {
                h.calc_checksum_ipv6_raw(src, dst, u.payload()).unwrap()
            } else {
                h.calc_checksum_ipv4_raw(s4, d4, u.payload()).unwrap()
            };
            assert_eq!(h.checksum, want, "UDP checksum");
            assert_eq!(usize::from(h.length), 8 + u.payload().len());
            Checked {
                ip_id,
                tcp: None,
                udp: Some(u.payload().to_vec()),
                payload: u.payload().to_vec(),
            }
        }
        _ => panic!("not TCP or UDP"),
    }
}
