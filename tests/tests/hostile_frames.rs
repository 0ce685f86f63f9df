//! A hostile container, end to end: inside its namespace a raw socket (`AF_PACKET` with
//! `PACKET_VNET_HDR`) writes frames with a virtio-net header of its own choosing onto its
//! interface, the way any process with `CAP_NET_RAW` can. A capture on the underlay then shows
//! what `vswitchd` let out: none of the hostile frames (checksum offsets aimed at addresses,
//! SYN on a TSO frame, `gso_size` 1, a GSO type that is not the frame's, `hdr_len` lies,
//! a forged source behind QinQ tags, Router and foreign Neighbor Advertisements), while honest
//! frames with partial checksums and TSO, written the same way, cross. A peer's decapsulated
//! frame larger than the MTU is dropped too.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use etherparse::PacketBuilder;
use vswitch::offload::VnetHdr;
use vswitch_e2e::{Capture, NetworkSpec, drops, reaches, vswitch_lab};

const HOSTILE: &[u8] = b"HOSTILE-FRAME-MARKER";
const HONEST_UDP: &[u8] = b"HONEST-UDP-MARKER";
const HONEST_TCP: &[u8] = b"HONEST-TCP-MARKER";

/// Copies of each frame sent.
const COPIES: usize = 60;

/// A frame as a packet socket with `PACKET_VNET_HDR` takes it: the 10-byte `virtio_net_hdr`,
/// then the Ethernet frame.
fn with_vnet(hdr: VnetHdr, frame: &[u8]) -> Vec<u8> {
    let mut out = hdr.emit()[..10].to_vec();
    out.extend_from_slice(frame);
    out
}

fn payload(marker: &[u8], len: usize) -> Vec<u8> {
    marker.iter().copied().cycle().take(len).collect()
}

fn csum(start: u16, offset: u16) -> VnetHdr {
    VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        csum_start: start,
        csum_offset: offset,
        ..VnetHdr::default()
    }
}

fn tso(gso_type: u8, gso_size: u16, csum_offset: u16) -> VnetHdr {
    VnetHdr {
        gso_type,
        gso_size,
        hdr_len: 54,
        ..csum(34, csum_offset)
    }
}

/// The frames a hostile container writes, and the honest ones beside them.
fn frames(
    a: (vswitch::wire::MacAddr, Ipv4Addr),
    b: (vswitch::wire::MacAddr, Ipv4Addr),
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let udp4 = |marker: &[u8], len: usize| {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(a.0.0, b.0.0)
            .ipv4(a.1.octets(), b.1.octets(), 64)
            .udp(40000, 9)
            .write(&mut out, &payload(marker, len))
            .expect("building UDP");
        out
    };
    let tcp4 = |marker: &[u8], flags: u8| {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(a.0.0, b.0.0)
            .ipv4(a.1.octets(), b.1.octets(), 64)
            .tcp(40000, 9, 1, 65535)
            .write(&mut out, &payload(marker, 5000))
            .expect("building TCP");
        out[14 + 20 + 13] = flags;
        out
    };
    let udp6 = {
        let mut out = Vec::new();
        let own = a.0.link_local();
        PacketBuilder::ethernet2(a.0.0, [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(
                own.octets(),
                [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                64,
            )
            .udp(40000, 9)
            .write(&mut out, &payload(HOSTILE, 100))
            .expect("building UDP6");
        out
    };
    let arp = {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(a.0.0, [0xff; 6])
            .arp(
                etherparse::ArpPacket::new(
                    etherparse::ArpHardwareId::ETHERNET,
                    etherparse::EtherType::IPV4,
                    etherparse::ArpOperation::REQUEST,
                    &a.0.0,
                    &a.1.octets(),
                    &[0; 6],
                    &Ipv4Addr::new(10, 244, 99, 99).octets(),
                )
                .expect("building ARP"),
            )
            .write(&mut out)
            .expect("building ARP");
        out.extend_from_slice(HOSTILE);
        out
    };
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    let mut hostile = vec![
        // The checksum written over the IPv4 source, the IPv6 source, the ARP sender address,
        // the source MAC.
        with_vnet(csum(26, 0), &udp4(HOSTILE, 200)),
        with_vnet(csum(14, 12), &udp4(HOSTILE, 200)),
        with_vnet(csum(22, 0), &udp6),
        with_vnet(csum(28, 0), &arp),
        with_vnet(csum(6, 0), &udp4(HOSTILE, 200)),
        // SYN and RST copied into every segment of a super-frame.
        with_vnet(tso(VnetHdr::GSO_TCPV4, 1000, 16), &tcp4(HOSTILE, SYN)),
        with_vnet(tso(VnetHdr::GSO_TCPV4, 1000, 16), &tcp4(HOSTILE, RST | ACK)),
        // One write, five thousand datagrams.
        with_vnet(tso(VnetHdr::GSO_TCPV4, 1, 16), &tcp4(HOSTILE, ACK)),
        // GSO types that are not the frame's.
        with_vnet(tso(VnetHdr::GSO_TCPV6, 1000, 16), &tcp4(HOSTILE, ACK)),
        with_vnet(tso(VnetHdr::GSO_TCPV4, 1000, 6), &udp4(HOSTILE, 5000)),
        // Segments of 54 + 1420 bytes, over the MTU, whatever hdr_len says.
        with_vnet(
            VnetHdr {
                hdr_len: 14,
                ..tso(VnetHdr::GSO_TCPV4, 1420, 16)
            },
            &tcp4(HOSTILE, ACK),
        ),
    ];
    // Without a vnet header: a forged source behind two VLAN tags, a Router Advertisement and
    // a Neighbor Advertisement for another container's address.
    let mut qinq = udp4(HOSTILE, 200);
    qinq[26..30].copy_from_slice(&b.1.octets());
    qinq.splice(12..12, [0x88, 0xa8, 0, 7, 0x81, 0x00, 0, 8]);
    let nd = |msg_type: u8, target: std::net::Ipv6Addr| {
        let mut icmp = vec![msg_type, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&target.octets());
        icmp.extend_from_slice(HOSTILE);
        let mut out = Vec::new();
        PacketBuilder::ethernet2(a.0.0, [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(
                a.0.link_local().octets(),
                [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                255,
            )
            .write(&mut out, etherparse::IpNumber::IPV6_ICMP, &icmp)
            .expect("building ICMPv6");
        out
    };
    let plain = VnetHdr::default();
    hostile.extend([
        with_vnet(plain, &qinq),
        with_vnet(plain, &nd(134, a.0.link_local())),
        with_vnet(plain, &nd(136, b.0.link_local())),
    ]);
    let honest = vec![
        with_vnet(csum(34, 6), &udp4(HONEST_UDP, 200)),
        with_vnet(tso(VnetHdr::GSO_TCPV4, 1000, 16), &tcp4(HONEST_TCP, ACK)),
    ];
    (hostile, honest)
}

/// Writes every frame in `path` (each a 4-byte big-endian length, then the frame with its
/// vnet header) `COPIES` times on eth0 through a packet socket with `PACKET_VNET_HDR`; prints
/// how many writes of each frame the kernel took.
const WRITER: &str = r#"
import socket, struct, sys
SOL_PACKET, PACKET_VNET_HDR = 263, 15
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
s.bind(("eth0", 0))
data = open(sys.argv[1], "rb").read()
frames, at = [], 0
while at < len(data):
    (n,) = struct.unpack(">I", data[at:at + 4])
    frames.append(data[at + 4:at + 4 + n])
    at += 4 + n
taken = [0] * len(frames)
for copy in range(int(sys.argv[2])):
    for i, frame in enumerate(frames):
        try:
            s.send(frame)
            taken[i] += 1
        except OSError:
            pass
print(" ".join(map(str, taken)))
"#;

fn write_frames(
    lab: &vswitch_e2e::Lab,
    container: usize,
    name: &str,
    frames: &[Vec<u8>],
) -> Vec<usize> {
    let path = lab.dir().join(name);
    let mut data = Vec::new();
    for frame in frames {
        data.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        data.extend_from_slice(frame);
    }
    std::fs::write(&path, data).expect("writing the frames");
    let out = lab.containers[container]
        .ns
        .command("python3")
        .args(["-c", WRITER])
        .arg(&path)
        .arg(COPIES.to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("running python3");
    assert!(out.status.success(), "the frame writer failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().expect("the writer prints counts"))
        .collect()
}

/// How many captured packets contain `marker`.
fn packets_with(pcap: &[u8], marker: &[u8]) -> usize {
    let mut at = 24;
    let mut n = 0;
    while let Some(record) = pcap.get(at..at + 16) {
        let caplen = u32::from_le_bytes([record[8], record[9], record[10], record[11]]) as usize;
        let Some(packet) = pcap.get(at + 16..at + 16 + caplen) else {
            break;
        };
        at += 16 + caplen;
        if packet.windows(marker.len()).any(|w| w == marker) {
            n += 1;
        }
    }
    n
}

#[test]
fn frames_with_hostile_vnet_headers_never_reach_the_underlay() {
    let mut lab = vswitch_lab("hv", 2, &[NetworkSpec::DEFAULT], "");
    let a = lab.add_container(0, "default", None).unwrap();
    let b = lab.add_container(1, "default", None).unwrap();
    let c = &lab.containers;
    assert!(reaches(&c[a].ns, c[b].ip));
    let (hostile, honest) = frames((c[a].mac, c[a].ip), (c[b].mac, c[b].ip));

    let capture = Capture::start(&lab.hosts[1].ns, &lab.dir().join("underlay.pcap"));
    let taken = write_frames(&lab, a, "hostile.bin", &hostile);
    let honest_taken = write_frames(&lab, a, "honest.bin", &honest);
    let pcap = capture.finish();

    // The kernel passes the checksum written over the IPv4 source, the IPv6 source and the ARP
    // sender, and the GSO attacks on TCP, on to the TAP (it refuses a checksum start inside the
    // link-layer header and GSO types that contradict the frame itself): the switch is what
    // stops them.
    let kernel_passes = [0, 2, 3, 5, 6, 7, 10, 11, 12, 13];
    for i in kernel_passes {
        assert_eq!(
            taken[i], COPIES,
            "hostile frame {i}; the kernel took {taken:?}"
        );
    }
    assert_eq!(honest_taken, vec![COPIES; 2]);
    let taken: usize = taken.iter().sum();
    assert_eq!(
        packets_with(&pcap, HOSTILE),
        0,
        "hostile frames on the underlay"
    );
    // Copies of one frame may leave together as one GSO train: look for each, not count them.
    assert!(packets_with(&pcap, HONEST_UDP) > 0, "honest UDP missing");
    assert!(packets_with(&pcap, HONEST_TCP) > 0, "honest TSO missing");
    let refused: u64 = [
        "bad_offload",
        "gso_too_small",
        "tso_flags",
        "over_mtu",
        "spoofed_source",
        "ra_guard",
    ]
    .iter()
    .map(|r| drops(&lab, 0, r))
    .sum();
    assert_eq!(refused, taken as u64, "every hostile frame counted once");
    for reason in ["tso_flags", "gso_too_small", "spoofed_source", "ra_guard"] {
        assert!(drops(&lab, 0, reason) > 0, "{reason}");
    }
}

#[test]
fn decapsulated_frames_over_the_mtu_are_dropped() {
    let mut lab = vswitch_lab("hj", 2, &[NetworkSpec::DEFAULT], "");
    let a = lab.add_container(0, "default", None).unwrap();
    let b = lab.add_container(1, "default", None).unwrap();
    let c = &lab.containers;
    assert!(reaches(&c[b].ns, c[a].ip));
    // From peer host 1's own address: a 9 KB frame for container a, as a VXLAN datagram.
    let mut inner = Vec::new();
    PacketBuilder::ethernet2(c[b].mac.0, c[a].mac.0)
        .ipv4(c[b].ip.octets(), c[a].ip.octets(), 64)
        .udp(40000, 9)
        .write(&mut inner, &payload(HOSTILE, 9000))
        .expect("building the jumbo frame");
    let mut datagram = vswitch::tunnel::encap_header(vswitch::wire::Vni::DEFAULT).to_vec();
    datagram.extend_from_slice(&inner);
    let before = drops(&lab, 0, "over_mtu");
    let to = std::net::SocketAddr::new(lab.hosts[0].address.into(), 4789);
    let from = std::net::SocketAddr::new(lab.hosts[1].address.into(), 0);
    let socket = lab.hosts[1]
        .ns
        .run(|| std::net::UdpSocket::bind(from))
        .expect("entering the namespace")
        .expect("binding");
    for _ in 0..10 {
        socket.send_to(&datagram, to).expect("sending");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(drops(&lab, 0, "over_mtu") - before, 10);
    assert!(reaches(&c[b].ns, c[a].ip), "normal traffic still flows");
}
