//! Interoperability with the Linux kernel's own VXLAN: a host running a kernel `vxlan` device
//! and bridge (built with iproute2's netlink calls inside test namespaces) and a host running
//! `vswitchd` carry one L2 segment, in both directions, for ICMP and TCP.

use std::net::Ipv4Addr;

use vswitch_e2e::{fdb, kernel_pair, reaches, tcp_transfer};

#[test]
fn vswitchd_and_kernel_vxlan_interoperate_both_ways() {
    let (lab, a, b) = kernel_pair("kx", Ipv4Addr::new(10, 244, 200, 2));
    let ours = 0;
    let c = &lab.containers;
    assert!(reaches(&c[a].ns, c[b].ip), "vswitch -> kernel");
    assert!(reaches(&c[b].ns, c[a].ip), "kernel -> vswitch");
    tcp_transfer(&c[a].ns, &c[b].ns, c[b].ip, 8 << 20);
    tcp_transfer(&c[b].ns, &c[a].ns, c[a].ip, 8 << 20);
    // The kernel container's MAC was learned behind the kernel host.
    let kernel_mac = c[b].mac;
    let entry = fdb(&lab, ours)
        .into_iter()
        .find(|e| e.mac == kernel_mac)
        .expect("kernel container's MAC learned");
    assert!(entry.location.starts_with("peer h1"), "{}", entry.location);
}

/// A datagram to the kernel host's VXLAN port carrying a UDP frame for its container, with the
/// flags byte `flags`, sent from our host's underlay address.
fn send_to_kernel(lab: &vswitch_e2e::Lab, from: usize, to: Ipv4Addr, flags: u8, marker: &[u8]) {
    let c = &lab.containers;
    let (ours, theirs) = (
        &c[from],
        c.iter().find(|k| k.ip == to).expect("the kernel container"),
    );
    let mut frame = Vec::new();
    frame.extend_from_slice(&theirs.mac.0);
    frame.extend_from_slice(&ours.mac.0);
    frame.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + marker.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&ours.ip.octets());
    ip.extend_from_slice(&to.octets());
    let sum = vswitch::wire::checksum(&ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&40000u16.to_be_bytes());
    frame.extend_from_slice(&5999u16.to_be_bytes());
    frame.extend_from_slice(&((8 + marker.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(marker);
    let mut datagram = vswitch::tunnel::encap_header(vswitch::wire::Vni::DEFAULT).to_vec();
    datagram[0] = flags;
    datagram.extend_from_slice(&frame);
    let source = std::net::SocketAddr::new(lab.hosts[0].address.into(), 0);
    let target = std::net::SocketAddr::new(lab.hosts[1].address.into(), 4789);
    lab.hosts[0]
        .ns
        .run(|| std::net::UdpSocket::bind(source).and_then(|s| s.send_to(&datagram, target)))
        .expect("entering the namespace")
        .expect("sending");
}

#[test]
fn the_kernel_does_not_deliver_a_sealed_datagram() {
    let kernel_ip = Ipv4Addr::new(10, 244, 200, 5);
    let (lab, a, b) = kernel_pair("ks", kernel_ip);
    let c = &lab.containers;
    assert!(reaches(&c[a].ns, c[b].ip));
    let sink = c[b]
        .ns
        .run(|| std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5999)))
        .expect("entering the namespace")
        .expect("binding");
    sink.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    // With the S bit (a sealed datagram's flags), the kernel drops it...
    send_to_kernel(&lab, a, kernel_ip, vswitch::tunnel::SEALED_FLAGS, b"sealed");
    assert!(
        sink.recv(&mut buf).is_err(),
        "the kernel delivered a sealed datagram"
    );
    // ...where the same datagram with plain flags is delivered.
    send_to_kernel(&lab, a, kernel_ip, 0x08, b"plain");
    let n = sink.recv(&mut buf).expect("the plain datagram delivered");
    assert_eq!(&buf[..n], b"plain");
}
