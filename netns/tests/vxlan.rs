//! Kernel VXLAN devices and bridges: the baseline peer the switch must
//! interoperate with (needs root).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use common::{TestNs, unique};
use netns::{Netlink, VxlanSpec};

/// One host: underlay veth end `under` with `underlay_ip`, a bridge carrying
/// `overlay_ip`, and a VXLAN device enslaved to it.
fn host(
    nl: &Netlink,
    u: &str,
    side: char,
    under: &str,
    underlay_ip: Ipv4Addr,
    overlay_ip: Ipv4Addr,
    remote: Option<Ipv4Addr>,
) {
    let (vx, br) = (format!("x{side}{u}"), format!("b{side}{u}"));
    nl.add_address(under, underlay_ip.into(), 24).unwrap();
    nl.set_up(under).unwrap();
    let mut spec = VxlanSpec::new(&vx, 42);
    spec.local = Some(underlay_ip.into());
    spec.remote = remote.map(Into::into);
    spec.underlay = Some(under.to_owned());
    nl.create_vxlan(&spec).unwrap();
    nl.create_bridge(&br).unwrap();
    nl.set_master(&vx, &br).unwrap();
    nl.add_address(&br, overlay_ip.into(), 24).unwrap();
    nl.set_up(&vx).unwrap();
    nl.set_up(&br).unwrap();

    let vxi = nl.link_info(&vx).unwrap().unwrap();
    let bri = nl.link_info(&br).unwrap().unwrap();
    assert_eq!(vxi.kind.as_deref(), Some("vxlan"));
    assert_eq!(bri.kind.as_deref(), Some("bridge"));
    assert_eq!(vxi.master, Some(bri.index));
    assert_eq!(vxi.mtu, Some(1450), "1500 underlay minus 50 bytes of VXLAN");
}

fn udp_between(from: &TestNs, from_ip: Ipv4Addr, to: &TestNs, to_ip: Ipv4Addr) {
    let rx = to.ns.run(|| UdpSocket::bind((to_ip, 0))).unwrap().unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tx = from
        .ns
        .run(|| UdpSocket::bind((from_ip, 0)))
        .unwrap()
        .unwrap();
    tx.send_to(b"over vxlan", rx.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 64];
    let (n, peer) = rx.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"over vxlan");
    assert_eq!(peer.ip(), from_ip);
}

#[test]
fn kernel_vxlan_over_bridge_carries_udp() {
    let a = TestNs::new("xa");
    let b = TestNs::new("xb");
    let u = unique();
    let (ua, ub) = (format!("ua{u}"), format!("ub{u}"));
    let (nla, nlb) = (a.netlink(), b.netlink());
    nla.create_veth(&ua, &ub).unwrap();
    nla.move_to_namespace(&ub, &b.ns).unwrap();

    let (under_a, under_b) = (Ipv4Addr::new(10, 241, 0, 1), Ipv4Addr::new(10, 241, 0, 2));
    let (over_a, over_b) = (Ipv4Addr::new(10, 244, 42, 1), Ipv4Addr::new(10, 244, 42, 2));
    host(&nla, &u, 'a', &ua, under_a, over_a, Some(under_b));
    host(&nlb, &u, 'b', &ub, under_b, over_b, None);
    nlb.append_vxlan_fdb(&format!("xb{u}"), [0; 6], under_a.into())
        .unwrap();
    nlb.append_vxlan_fdb(
        &format!("xb{u}"),
        [0; 6],
        Ipv4Addr::new(10, 241, 0, 9).into(),
    )
    .unwrap();
    let err = nlb
        .append_vxlan_fdb("nosuchvx0", [0; 6], under_a.into())
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // B first: its ARP request only reaches A through the flood list.
    udp_between(&b, over_b, &a, over_a);
    udp_between(&a, over_a, &b, over_b);
}

#[test]
fn vxlan_spec_is_checked() {
    let t = TestNs::new("xs");
    let nl = t.netlink();
    let u = unique();
    let err = nl
        .create_vxlan(&VxlanSpec::new(format!("xv{u}"), 1 << 24))
        .unwrap_err();
    assert!(err.to_string().contains("24 bits"), "{err}");
    let mut spec = VxlanSpec::new(format!("xv{u}"), 7);
    spec.local = Some("10.0.0.1".parse().unwrap());
    spec.remote = Some("fd00::1".parse().unwrap());
    assert!(nl.create_vxlan(&spec).is_err());
    spec.remote = None;
    spec.underlay = Some("nosuchdev0".into());
    assert!(nl.create_vxlan(&spec).unwrap_err().is_not_found());
    spec.underlay = None;
    nl.create_vxlan(&spec).unwrap();
    assert!(nl.create_vxlan(&spec).unwrap_err().is_already_exists());
    assert!(nl.delete_link(&spec.name).unwrap());
    assert!(!nl.delete_link(&spec.name).unwrap());
}
