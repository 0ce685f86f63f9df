#![no_main]
//! Fuzzes VXLAN decapsulation (`tunnel::decap`, `tunnel::decap_range`) of arbitrary datagrams,
//! and the `wire` views every later step reads the inner frame through: Ethernet, ARP, IPv4,
//! IPv6, ICMP, TCP, UDP, each built with `new_checked` and then asked every getter (the views
//! promise that no getter panics once `new_checked` succeeded), and the flow hash.
//!
//! Input: the UDP payload of a datagram received on the VXLAN port.
//!
//! Checked, beyond "no panic": the two decapsulations agree; an accepted datagram has the I
//! flag, a VNI of 24 bits and an inner frame of at least an Ethernet header right behind the
//! 8-byte header; a refused one is too short or lacks the I flag; re-encapsulating the inner
//! frame with its VNI gives the datagram back up to the reserved bits.

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use vswitch::switch::DropReason;
use vswitch::tunnel::{self, VXLAN_HEADER_LEN};
use vswitch::wire::{
    ArpPacket, EtherType, EthernetFrame, Icmpv4Packet, IpProtocol, Ipv4Packet, Ipv6Packet,
    TcpPacket, UdpPacket, VxlanHeader, flow_hash,
};

/// Reads every field of the inner frame through the `wire` views.
fn read_inner(frame: &[u8]) {
    black_box(flow_hash(frame));
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return;
    };
    black_box((eth.dst_addr(), eth.src_addr(), eth.outer_ethertype()));
    black_box((eth.is_tagged(), eth.vlan_id(), eth.header_len()));
    let payload = eth.payload();
    match eth.ethertype() {
        EtherType::ARP => {
            if let Ok(arp) = ArpPacket::new_checked(payload) {
                black_box((arp.operation(), arp.sender_mac(), arp.sender_ip()));
                black_box((arp.target_mac(), arp.target_ip()));
            }
        }
        EtherType::IPV4 => {
            let Ok(ip) = Ipv4Packet::new_checked(payload) else {
                return;
            };
            black_box((ip.version(), ip.header_len(), ip.total_len(), ip.ident()));
            black_box((ip.is_fragment(), ip.ttl(), ip.protocol(), ip.checksum()));
            black_box((ip.src_addr(), ip.dst_addr(), ip.verify_checksum()));
            read_transport(ip.protocol(), ip.payload());
        }
        EtherType::IPV6 => {
            let Ok(ip) = Ipv6Packet::new_checked(payload) else {
                return;
            };
            black_box((ip.payload_len(), ip.next_header(), ip.hop_limit()));
            black_box((ip.src_addr(), ip.dst_addr()));
            read_transport(ip.next_header(), ip.payload());
        }
        _ => {}
    }
}

fn read_transport(proto: IpProtocol, payload: &[u8]) {
    match proto {
        IpProtocol::TCP => {
            if let Ok(tcp) = TcpPacket::new_checked(payload) {
                black_box((tcp.src_port(), tcp.dst_port(), tcp.seq_number()));
                black_box((tcp.ack_number(), tcp.header_len(), tcp.flags()));
                black_box(tcp.payload());
            }
        }
        IpProtocol::UDP => {
            if let Ok(udp) = UdpPacket::new_checked(payload) {
                black_box((udp.src_port(), udp.dst_port(), udp.len(), udp.checksum()));
                black_box(udp.is_empty());
            }
        }
        IpProtocol::ICMP => {
            if let Ok(icmp) = Icmpv4Packet::new_checked(payload) {
                black_box((icmp.msg_type(), icmp.code(), icmp.checksum()));
                black_box((icmp.echo_ident(), icmp.echo_seq(), icmp.verify_checksum()));
            }
        }
        _ => {}
    }
}

fuzz_target!(|datagram: &[u8]| {
    let whole = tunnel::decap(datagram);
    let ranged = tunnel::decap_range(datagram);
    match (whole, ranged) {
        (Ok((vni, inner)), Ok((vni2, range))) => {
            assert_eq!(vni, vni2, "decap and decap_range disagree on the VNI");
            assert_eq!(range, VXLAN_HEADER_LEN..datagram.len(), "inner frame range");
            assert_eq!(inner, &datagram[range], "decap and decap_range disagree");
            assert!(inner.len() >= 14, "inner frame shorter than Ethernet");
            assert!(vni.get() < 1 << 24, "VNI wider than 24 bits");
            assert_ne!(datagram[0] & 0x08, 0, "accepted without the I flag");
            let header =
                VxlanHeader::new_checked(datagram).expect("header of an accepted datagram");
            assert_eq!(header.vni(), vni, "header view and decap disagree");
            let mut again = Vec::new();
            tunnel::encap_into(&tunnel::encap_header(vni), inner, &mut again);
            assert_eq!(
                again[4..7],
                datagram[4..7],
                "VNI bytes after re-encapsulation"
            );
            assert_eq!(
                again[8..],
                datagram[8..],
                "inner frame after re-encapsulation"
            );
            read_inner(inner);
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "decap and decap_range refuse for different reasons");
            match a {
                DropReason::Runt => assert!(datagram.len() < VXLAN_HEADER_LEN + 14, "runt"),
                DropReason::BadFlags => assert_eq!(datagram[0] & 0x08, 0, "bad flags"),
                other => panic!("decap refused with {other:?}"),
            }
            read_inner(datagram);
        }
        _ => panic!("decap and decap_range disagree on acceptance"),
    }
});
