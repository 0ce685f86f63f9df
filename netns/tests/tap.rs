//! TAP devices: creation options, offload probing, moving into a container
//! namespace (needs root and /dev/net/tun).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use common::{TestNs, unique};
use ipnet::IpNet;
use netns::{Netlink, Offloads, Tap, TapOptions};

#[test]
fn plain_tap() {
    let t = TestNs::new("tp");
    let name = format!("tp{}", unique());
    let tap =
        t.ns.run(|| Tap::create(&TapOptions::new(&name)))
            .unwrap()
            .unwrap();
    assert_eq!(tap.name(), name);
    assert_eq!(tap.queues().len(), 1);
    assert_eq!(tap.vnet_hdr_len(), 0);
    assert_eq!(tap.offloads(), Offloads::NONE);
    let info = t.netlink().link_info(&name).unwrap().unwrap();
    assert_eq!(info.kind.as_deref(), Some("tun"));

    let again = t.ns.run(|| Tap::create(&TapOptions::new(&name))).unwrap();
    let err = again.unwrap_err();
    assert!(err.is_already_exists(), "{err}");

    drop(tap);
    assert_eq!(
        t.netlink().link_info(&name).unwrap(),
        None,
        "not persistent"
    );
}

#[test]
fn offloads_need_vnet_header() {
    let mut o = TapOptions::new(format!("to{}", unique()));
    o.offloads = Offloads::CSUM;
    let err = Tap::create(&o).unwrap_err();
    assert!(err.to_string().contains("vnet header"), "{err}");
}

#[test]
fn vnet_header_offloads_multi_queue() {
    let t = TestNs::new("tv");
    let features = Tap::features().unwrap();
    assert!(features.vnet_hdr && features.multi_queue, "{features:?}");
    let name = format!("tv{}", unique());
    let mut o = TapOptions::new(&name);
    o.vnet_hdr = true;
    o.queues = 4;
    o.offloads = Offloads::CSUM | Offloads::TSO4 | Offloads::TSO6 | Offloads::USO4 | Offloads::USO6;
    let tap = t.ns.run(|| Tap::create(&o)).unwrap().unwrap();
    assert_eq!(tap.queues().len(), 4);
    assert_eq!(tap.vnet_hdr_len(), 12);
    assert_eq!(
        tap.offloads(),
        o.offloads,
        "this kernel accepts TSO and USO"
    );

    let mut csum = TapOptions::new(format!("tc{}", unique()));
    csum.vnet_hdr = true;
    csum.offloads = Offloads::CSUM;
    let tap2 = t.ns.run(|| Tap::create(&csum)).unwrap().unwrap();
    assert_eq!(tap2.vnet_hdr_len(), 12);
    assert_eq!(tap2.offloads(), Offloads::CSUM);
}

#[test]
fn move_rename_configure_in_container() {
    let host = TestNs::new("th");
    let ctr = TestNs::new("tc");
    let name = format!("tm{}", unique());
    let mut o = TapOptions::new(&name);
    o.vnet_hdr = true;
    o.offloads = Offloads::CSUM | Offloads::TSO4 | Offloads::TSO6;
    let tap = host.ns.run(|| Tap::create(&o)).unwrap().unwrap();

    let nlh = host.netlink();
    nlh.move_to_namespace_as(&name, &ctr.ns, "eth0").unwrap();
    assert_eq!(nlh.link_index(&name).unwrap(), None);
    assert_eq!(tap.current_name().unwrap(), "eth0");

    let nlc = ctr.netlink();
    let mac = [0x02, 0x00, 0x0a, 0xf4, 0x01, 0x05];
    nlc.set_mac("eth0", mac).unwrap();
    nlc.set_mtu("eth0", 1450).unwrap();
    nlc.add_address("eth0", "10.244.1.5".parse().unwrap(), 24)
        .unwrap();
    nlc.set_up("eth0").unwrap();
    let gw: IpAddr = "10.244.1.1".parse().unwrap();
    nlc.add_route("0.0.0.0/0".parse().unwrap(), Some(gw), Some("eth0"))
        .unwrap();

    let info = nlc.link_info("eth0").unwrap().unwrap();
    assert_eq!(info.mac, Some(mac));
    assert_eq!(info.mtu, Some(1450));
    assert!(info.up);
    let addrs = nlc.addresses("eth0").unwrap();
    assert!(
        addrs.contains(&"10.244.1.5/24".parse::<IpNet>().unwrap()),
        "{addrs:?}"
    );
    let routes = nlc.routes().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(gw) && r.oif == Some(info.index)),
        "{routes:?}"
    );

    assert!(nlc.delete_link("eth0").unwrap());
    assert!(!nlc.delete_link("eth0").unwrap());
    drop(tap);
}

#[test]
fn persistent_tap_attach() {
    let t = TestNs::new("ta");
    let name = format!("ta{}", unique());
    let mut o = TapOptions::new(&name);
    o.persist = true;
    o.vnet_hdr = true;
    let tap = t.ns.run(|| Tap::create(&o)).unwrap().unwrap();
    drop(tap);
    let nl: Netlink = t.netlink();
    assert!(nl.link_index(&name).unwrap().is_some(), "persistent");

    let tap = t.ns.run(|| Tap::attach(&o)).unwrap().unwrap();
    assert_eq!(tap.name(), name);
    assert_eq!(tap.vnet_hdr_len(), 12);
    tap.set_persist(false).unwrap();
    drop(tap);
    assert!(nl.link_index(&name).unwrap().is_none());

    let err = t.ns.run(|| Tap::attach(&o)).unwrap().unwrap_err();
    assert!(err.is_not_found(), "{err}");
}
