//! Links, addresses and routes over netlink inside test namespaces (needs root).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::Duration;

use common::{TestNs, unique};
use ipnet::IpNet;

#[test]
fn veth_across_namespaces_carries_udp() {
    let a = TestNs::new("va");
    let b = TestNs::new("vb");
    let u = unique();
    let (va, vb) = (format!("va{u}"), format!("vb{u}"));
    let nla = a.netlink();
    nla.create_veth(&va, &vb).unwrap();
    let err = nla.create_veth(&va, &vb).unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("creating veth {va}/{vb}: ")),
        "{err}"
    );

    nla.move_to_namespace(&vb, &b.ns).unwrap();
    assert_eq!(nla.link_index(&vb).unwrap(), None);
    let nlb = b.netlink();
    assert!(nlb.link_index(&vb).unwrap().is_some());

    let ip_a = Ipv4Addr::new(10, 231, 0, 1);
    let ip_b = Ipv4Addr::new(10, 231, 0, 2);
    nla.add_address(&va, ip_a.into(), 24).unwrap();
    nlb.add_address(&vb, ip_b.into(), 24).unwrap();
    nla.set_up(&va).unwrap();
    nlb.set_up(&vb).unwrap();
    let v4: Vec<IpNet> = nla
        .addresses(&va)
        .unwrap()
        .into_iter()
        .filter(|a| a.addr().is_ipv4())
        .collect();
    assert_eq!(v4, vec!["10.231.0.1/24".parse::<IpNet>().unwrap()]);
    assert!(nla.link_info(&va).unwrap().unwrap().up);

    let rx = b.ns.run(|| UdpSocket::bind((ip_b, 0))).unwrap().unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let to = rx.local_addr().unwrap();
    let tx = a.ns.run(|| UdpSocket::bind((ip_a, 0))).unwrap().unwrap();
    tx.send_to(b"across", to).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = rx.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"across");
    assert_eq!(from.ip(), IpAddr::V4(ip_a));
}

#[test]
fn link_properties_and_idempotent_delete() {
    let t = TestNs::new("lp");
    let nl = t.netlink();
    let u = unique();
    let (x, y, z) = (format!("lx{u}"), format!("ly{u}"), format!("lz{u}"));
    nl.create_veth(&x, &y).unwrap();
    nl.set_mtu(&x, 1400).unwrap();
    let mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0x07];
    nl.set_mac(&x, mac).unwrap();
    nl.rename(&x, &z).unwrap();
    assert_eq!(nl.link_info(&x).unwrap(), None);
    let info = nl.link_info(&z).unwrap().unwrap();
    assert_eq!(info.name, z);
    assert_eq!(info.mtu, Some(1400));
    assert_eq!(info.mac, Some(mac));
    assert_eq!(info.kind.as_deref(), Some("veth"));
    assert!(!info.up);
    nl.set_up(&z).unwrap();
    nl.set_down(&z).unwrap();
    assert!(!nl.link_info(&z).unwrap().unwrap().up);

    let err = nl.set_mtu("nosuchlink0", 1400).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(nl.rename(&z, "this-name-is-too-long").is_err());

    assert!(nl.delete_link(&z).unwrap());
    assert_eq!(nl.link_index(&y).unwrap(), None, "peer goes with it");
    assert!(!nl.delete_link(&z).unwrap());
    assert!(!nl.delete_link(&y).unwrap());
}

#[test]
fn addresses_and_routes() {
    let t = TestNs::new("rt");
    let nl = t.netlink();
    let u = unique();
    let (x, y) = (format!("rx{u}"), format!("ry{u}"));
    nl.create_veth(&x, &y).unwrap();
    nl.set_up(&x).unwrap();
    nl.set_up(&y).unwrap();
    nl.add_address(&x, "10.232.1.5".parse().unwrap(), 24)
        .unwrap();
    nl.add_address(&x, "fd00:232::5".parse().unwrap(), 64)
        .unwrap();
    let err = nl
        .add_address(&x, "10.232.1.5".parse().unwrap(), 24)
        .unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    assert!(
        nl.add_address(&x, "10.232.1.6".parse().unwrap(), 33)
            .is_err()
    );
    nl.add_address(&x, "10.232.1.9".parse().unwrap(), 24)
        .unwrap();
    let nine: IpNet = "10.232.1.9/24".parse().unwrap();
    assert!(nl.delete_address(&x, nine).unwrap());
    assert!(!nl.delete_address(&x, nine).unwrap(), "already gone");
    let left = nl.addresses(&x).unwrap();
    assert!(!left.contains(&nine), "{left:?}");
    assert!(
        left.contains(&"10.232.1.5/24".parse().unwrap()),
        "only that one went: {left:?}"
    );

    let gw: IpAddr = "10.232.1.1".parse().unwrap();
    nl.add_route("0.0.0.0/0".parse().unwrap(), Some(gw), None)
        .unwrap();
    nl.add_route("10.99.0.7/16".parse().unwrap(), None, Some(&y))
        .unwrap();
    let err = nl
        .add_route("0.0.0.0/0".parse().unwrap(), Some(gw), None)
        .unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    let v6gw: IpAddr = "fd00:232::1".parse().unwrap();
    assert!(
        nl.add_route("0.0.0.0/0".parse().unwrap(), Some(v6gw), Some(&y))
            .is_err(),
        "an IPv4 route via an IPv6 gateway needs RTA_VIA support the kernel refuses here"
    );

    let idx_x = nl.link_index(&x).unwrap().unwrap();
    let idx_y = nl.link_index(&y).unwrap().unwrap();
    let routes = nl.routes().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r.dst == "0.0.0.0/0".parse::<IpNet>().unwrap()
                && r.gateway == Some(gw)
                && r.oif == Some(idx_x)),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r.dst == "10.99.0.0/16".parse::<IpNet>().unwrap()
                && r.gateway.is_none()
                && r.oif == Some(idx_y)),
        "{routes:?}"
    );
    let mut addrs = nl.addresses(&x).unwrap();
    addrs.sort();
    assert!(
        addrs.contains(&"10.232.1.5/24".parse().unwrap()),
        "{addrs:?}"
    );
    assert!(
        addrs.contains(&"fd00:232::5/64".parse().unwrap()),
        "{addrs:?}"
    );
}
