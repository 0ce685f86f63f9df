//! The flow a frame belongs to, as policy and connection tracking see it: addresses,
//! protocol, ports (or ICMP type and echo id), TCP flags, and for ICMP errors the flow they
//! quote.
//!
//! Read through the `wire` views after walking VLAN tags (802.1Q, 802.1ad, 0x9100, at most 4,
//! as port security does). The quoted packet inside an ICMP error is cut short by design
//! (header + 8 bytes), so the `wire` views, which check lengths, cannot read it: a small lenient
//! reader here takes what it needs.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::wire::{
    EtherType, ICMPV4_ECHO_REPLY, ICMPV4_ECHO_REQUEST, Icmpv4Packet, Icmpv6Packet, IpProtocol,
    Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket,
};

/// EtherTypes of VLAN tags walked through (as in port security).
const TAGS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const MAX_TAGS: usize = 4;

/// ICMPv6 echo request and reply.
pub(crate) const ICMPV6_ECHO_REQUEST: u8 = 128;
pub(crate) const ICMPV6_ECHO_REPLY: u8 = 129;

/// The 5-tuple of a packet, in the direction it travels.
///
/// For ICMP and ICMPv6, `src_port` is the echo identifier of an echo request or reply (0 for
/// other messages) and `dst_port` is `type << 8 | code`, so rules and caches see one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub proto: IpProtocol,
    /// Source port, or the ICMP echo identifier.
    pub src_port: u16,
    /// Destination port, or the ICMP `type << 8 | code`.
    pub dst_port: u16,
}

impl FlowKey {
    /// A TCP or UDP flow (or any protocol with ports).
    pub fn new(src: IpAddr, dst: IpAddr, proto: IpProtocol, src_port: u16, dst_port: u16) -> Self {
        FlowKey {
            src,
            dst,
            proto,
            src_port,
            dst_port,
        }
    }

    /// The same flow seen from the other end.
    pub fn reversed(&self) -> Self {
        FlowKey {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }

    /// True for ICMP over IPv4 and ICMPv6.
    pub fn is_icmp(&self) -> bool {
        self.proto == IpProtocol::ICMP || self.proto == IpProtocol::ICMPV6
    }

    /// For ICMP: the message type.
    pub fn icmp_type(&self) -> u8 {
        (self.dst_port >> 8) as u8
    }

    /// True for an ICMP or ICMPv6 echo request.
    pub fn is_echo_request(&self) -> bool {
        (self.proto == IpProtocol::ICMP && self.icmp_type() == ICMPV4_ECHO_REQUEST)
            || (self.proto == IpProtocol::ICMPV6 && self.icmp_type() == ICMPV6_ECHO_REQUEST)
    }

    /// True for an ICMP or ICMPv6 echo reply.
    pub fn is_echo_reply(&self) -> bool {
        (self.proto == IpProtocol::ICMP && self.icmp_type() == ICMPV4_ECHO_REPLY)
            || (self.proto == IpProtocol::ICMPV6 && self.icmp_type() == ICMPV6_ECHO_REPLY)
    }
}

/// What policy needs to know of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowInfo {
    /// The flow.
    pub key: FlowKey,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// The packet is a fragment other than the first: it carries no ports (they read 0).
    pub later_fragment: bool,
    /// For ICMP errors (unreachable, too big, time exceeded, parameter problem): the flow of
    /// the packet they quote, as that packet travelled.
    pub related: Option<FlowKey>,
}

/// A frame, as far as policy is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classified {
    /// An IPv4 or IPv6 packet subject to policy.
    Flow(FlowInfo),
    /// Not subject to policy: non-IP (ARP and the EtherTypes port security lets through) and
    /// the ICMPv6 messages IPv6 cannot work without (neighbour discovery, router solicitation
    /// and advertisement, multicast listener discovery). Port security judges those.
    Exempt,
    /// An IP packet whose headers do not parse: drop it.
    Malformed,
}

/// Classifies an Ethernet frame (a super-frame too: its first headers stand for every
/// segment). Never panics on any input.
pub fn classify(frame: &[u8]) -> Classified {
    let Some((ethertype, at)) = inner_ethertype(frame) else {
        return Classified::Malformed;
    };
    let Some(l3) = frame.get(at..) else {
        return Classified::Malformed;
    };
    match ethertype {
        EtherType::IPV4 => ipv4(l3),
        EtherType::IPV6 => ipv6(l3),
        _ => Classified::Exempt,
    }
}

fn inner_ethertype(frame: &[u8]) -> Option<(EtherType, usize)> {
    let mut at = 12;
    for _ in 0..=MAX_TAGS {
        let bytes = frame.get(at..at + 2)?;
        let ethertype = u16::from_be_bytes([bytes[0], bytes[1]]);
        if !TAGS.contains(&ethertype) {
            return Some((EtherType(ethertype), at + 2));
        }
        at += 4;
    }
    None
}

fn ipv4(l3: &[u8]) -> Classified {
    let Ok(ip) = Ipv4Packet::new_checked(l3) else {
        return Classified::Malformed;
    };
    let later_fragment = u16::from_be_bytes([l3[6], l3[7]]) & 0x1fff != 0;
    let (src, dst) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
    transport(src, dst, ip.protocol(), ip.payload(), later_fragment)
}

fn ipv6(l3: &[u8]) -> Classified {
    let Ok(ip) = Ipv6Packet::new_checked(l3) else {
        return Classified::Malformed;
    };
    let Ok(upper) = ip.upper_layer() else {
        return Classified::Malformed;
    };
    let (src, dst) = (IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()));
    if upper.protocol == IpProtocol::ICMPV6
        && !upper.later_fragment
        && let Some(&msg_type) = upper.payload.first()
        && matches!(msg_type, 130..=137 | 143)
    {
        return Classified::Exempt;
    }
    transport(
        src,
        dst,
        upper.protocol,
        upper.payload,
        upper.later_fragment,
    )
}

fn transport(
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    payload: &[u8],
    later_fragment: bool,
) -> Classified {
    let mut info = FlowInfo {
        key: FlowKey::new(src, dst, proto, 0, 0),
        tcp_flags: 0,
        later_fragment,
        related: None,
    };
    if later_fragment {
        return Classified::Flow(info);
    }
    match proto {
        IpProtocol::TCP => {
            let Ok(tcp) = TcpPacket::new_checked(payload) else {
                return Classified::Malformed;
            };
            info.key.src_port = tcp.src_port();
            info.key.dst_port = tcp.dst_port();
            info.tcp_flags = tcp.flags();
        }
        IpProtocol::UDP => {
            let Ok(udp) = UdpPacket::new_checked(payload) else {
                return Classified::Malformed;
            };
            info.key.src_port = udp.src_port();
            info.key.dst_port = udp.dst_port();
        }
        IpProtocol::ICMP => {
            let Ok(icmp) = Icmpv4Packet::new_checked(payload) else {
                return Classified::Malformed;
            };
            let (t, code) = (icmp.msg_type(), icmp.code());
            info.key.dst_port = u16::from(t) << 8 | u16::from(code);
            if t == ICMPV4_ECHO_REQUEST || t == ICMPV4_ECHO_REPLY {
                info.key.src_port = icmp.echo_ident();
            } else if matches!(t, 3 | 11 | 12) {
                info.related = payload.get(8..).and_then(quoted_v4);
            }
        }
        IpProtocol::ICMPV6 => {
            let Ok(icmp) = Icmpv6Packet::new_checked(payload) else {
                return Classified::Malformed;
            };
            let (t, code) = (icmp.msg_type(), icmp.code());
            info.key.dst_port = u16::from(t) << 8 | u16::from(code);
            if t == ICMPV6_ECHO_REQUEST || t == ICMPV6_ECHO_REPLY {
                let Some(id) = payload.get(4..6) else {
                    return Classified::Malformed;
                };
                info.key.src_port = u16::from_be_bytes([id[0], id[1]]);
            } else if matches!(t, 1..=4) {
                info.related = payload.get(8..).and_then(quoted_v6);
            }
        }
        _ => {}
    }
    Classified::Flow(info)
}

/// The flow of an IPv4 packet quoted in an ICMP error (header + at least 8 bytes).
fn quoted_v4(q: &[u8]) -> Option<FlowKey> {
    let header = q.get(..20)?;
    if header[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    let key = FlowKey::new(src.into(), dst.into(), IpProtocol(header[9]), 0, 0);
    quoted_ports(key, q.get(header_len..)?)
}

/// The flow of an IPv6 packet quoted in an ICMPv6 error (no extension headers walked).
fn quoted_v6(q: &[u8]) -> Option<FlowKey> {
    let header = q.get(..40)?;
    if header[0] >> 4 != 6 {
        return None;
    }
    let addr = |at: usize| {
        let mut o = [0u8; 16];
        o.copy_from_slice(&header[at..at + 16]);
        Ipv6Addr::from(o)
    };
    let key = FlowKey::new(addr(8).into(), addr(24).into(), IpProtocol(header[6]), 0, 0);
    quoted_ports(key, q.get(40..)?)
}

fn quoted_ports(mut key: FlowKey, l4: &[u8]) -> Option<FlowKey> {
    let word = |at: usize| l4.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match key.proto {
        IpProtocol::TCP | IpProtocol::UDP => {
            key.src_port = word(0)?;
            key.dst_port = word(2)?;
        }
        IpProtocol::ICMP | IpProtocol::ICMPV6 => {
            key.dst_port = word(0)?;
            key.src_port = if key.is_echo_request() || key.is_echo_reply() {
                word(4)?
            } else {
                0
            };
        }
        _ => {}
    }
    Some(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    pub(crate) fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let b = PacketBuilder::ethernet2(A, B)
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 1, 1000);
        let b = if syn { b.syn() } else { b.ack(1) };
        b.write(&mut out, b"x").unwrap();
        out
    }

    fn key(info: Classified) -> FlowInfo {
        match info {
            Classified::Flow(i) => i,
            other => panic!("not a flow: {other:?}"),
        }
    }

    #[test]
    fn tcp_udp_ports_and_flags() {
        let i = key(classify(&tcp4(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            40000,
            80,
            true,
        )));
        assert_eq!(
            i.key,
            FlowKey::new(
                "10.0.0.1".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
                IpProtocol::TCP,
                40000,
                80
            )
        );
        assert_eq!(i.tcp_flags, TcpPacket::<&[u8]>::SYN);
        let mut v6 = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(5000, 53)
            .write(&mut v6, b"q")
            .unwrap();
        let i = key(classify(&v6));
        assert_eq!(
            (i.key.proto, i.key.src_port, i.key.dst_port),
            (IpProtocol::UDP, 5000, 53)
        );
        assert!(i.key.src.is_ipv6());
    }

    #[test]
    fn vlan_tags_are_walked() {
        let plain = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, false);
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x88, 0xa8, 0, 1, 0x81, 0x00, 0, 2]);
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(classify(&tagged), classify(&plain));
    }

    #[test]
    fn icmp_echo_and_errors() {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(0x1234, 1)
            .write(&mut out, b"ping")
            .unwrap();
        let i = key(classify(&out));
        assert!(i.key.is_echo_request());
        assert_eq!(i.key.src_port, 0x1234);
        // Port unreachable quoting a UDP packet 10.0.0.1:5000 -> 10.0.0.2:53.
        let mut quoted = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5000, 53)
            .write(&mut quoted, b"query")
            .unwrap();
        let mut err = Vec::new();
        PacketBuilder::ethernet2(B, A)
            .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut err, &quoted[..28])
            .unwrap();
        let i = key(classify(&err));
        assert_eq!(i.key.icmp_type(), 3);
        let related = i.related.unwrap();
        assert_eq!(
            (related.src_port, related.dst_port, related.proto),
            (5000, 53, IpProtocol::UDP)
        );
        assert_eq!(related.src, IpAddr::from([10, 0, 0, 1]));
    }

    #[test]
    fn neighbour_discovery_and_arp_are_exempt() {
        let mut ns = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv6([0xfe; 16], [0xff; 16], 255)
            .icmpv6(etherparse::Icmpv6Type::Unknown {
                type_u8: 135,
                code_u8: 0,
                bytes5to8: [0; 4],
            })
            .write(&mut ns, &[0u8; 16])
            .unwrap();
        assert_eq!(classify(&ns), Classified::Exempt);
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(classify(&arp), Classified::Exempt);
    }

    #[test]
    fn later_fragments_have_no_ports() {
        let mut f = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, false);
        f[14 + 6] = 0x00;
        f[14 + 7] = 0x10; // offset 16 * 8 bytes
        let i = key(classify(&f));
        assert!(i.later_fragment);
        assert_eq!((i.key.src_port, i.key.dst_port), (0, 0));
    }

    #[test]
    fn short_input_never_panics() {
        let f = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, true);
        for len in 0..f.len() {
            let _ = classify(&f[..len]);
        }
        assert_eq!(classify(&f[..20]), Classified::Malformed);
    }
}
