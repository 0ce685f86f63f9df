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
fn a_multi_queue_device_takes_any_number_of_queues_later() {
    let t = TestNs::new("tq");
    let name = format!("tq{}", unique());
    let mut o = TapOptions::new(&name);
    o.multi_queue = true;
    o.persist = true;
    let tap = t.ns.run(|| Tap::create(&o)).unwrap().unwrap();
    assert_eq!(tap.queues().len(), 1);
    drop(tap);
    o.queues = 3;
    let tap = t.ns.run(|| Tap::attach(&o)).unwrap().unwrap();
    assert_eq!(tap.queues().len(), 3);
    drop(tap);

    // A single-queue device refuses a multi-queue attach, and takes a plain one.
    let single = format!("ts{}", unique());
    let mut o = TapOptions::new(&single);
    o.persist = true;
    drop(t.ns.run(|| Tap::create(&o)).unwrap().unwrap());
    o.multi_queue = true;
    assert!(t.ns.run(|| Tap::attach(&o)).unwrap().is_err());
    o.multi_queue = false;
    assert_eq!(
        t.ns.run(|| Tap::attach(&o))
            .unwrap()
            .unwrap()
            .queues()
            .len(),
        1
    );
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

/// Reads frames from any queue until `want` matches one, bounded in count and time.
fn read_frame(tap: &Tap, hdr: usize, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    use nix::poll::{PollFd, PollFlags, poll};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    for _ in 0..200 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no matching frame within 5 s");
        let mut fds: Vec<PollFd> = tap
            .queues()
            .iter()
            .map(|q| PollFd::new(q.as_fd(), PollFlags::POLLIN))
            .collect();
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        poll(&mut fds, ms).unwrap();
        for q in tap.queues() {
            match nix::unistd::read(q, &mut buf) {
                Ok(n) if n >= hdr + 14 && want(&buf[..n]) => return buf[..n].to_vec(),
                Ok(_) | Err(nix::Error::EAGAIN) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }
    panic!("no matching frame in 200 reads");
}

#[test]
fn frames_flow_through_vnet_header_queues() {
    use std::net::{Ipv4Addr, UdpSocket};

    let t = TestNs::new("tf");
    let name = format!("tf{}", unique());
    let mut o = TapOptions::new(&name);
    o.vnet_hdr = true;
    o.queues = 2;
    o.offloads = Offloads::CSUM | Offloads::TSO4 | Offloads::TSO6;
    let tap = t.ns.run(|| Tap::create(&o)).unwrap().unwrap();
    let hdr = tap.vnet_hdr_len();
    assert_eq!(hdr, 12);
    let nl = t.netlink();
    nl.add_address(&name, "10.245.0.1".parse().unwrap(), 24)
        .unwrap();
    nl.set_up(&name).unwrap();
    let tap_mac = nl.link_info(&name).unwrap().unwrap().mac.unwrap();

    let sock =
        t.ns.run(|| UdpSocket::bind((Ipv4Addr::new(10, 245, 0, 1), 0)))
            .unwrap()
            .unwrap();
    sock.send_to(b"to the tap", (Ipv4Addr::new(10, 245, 0, 2), 9))
        .unwrap();

    let arp = read_frame(&tap, hdr, |f| f[hdr + 12..hdr + 14] == [0x08, 0x06]);
    assert_eq!(&arp[..2], &[0, 0], "no vnet flags or GSO on ARP");
    assert_eq!(&arp[hdr + 6..hdr + 12], &tap_mac);

    let peer = [0x02, 0, 0, 0, 0, 0x02];
    let mut reply = vec![0u8; hdr];
    reply.extend_from_slice(&tap_mac);
    reply.extend_from_slice(&peer);
    reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&peer);
    reply.extend_from_slice(&[10, 245, 0, 2]);
    reply.extend_from_slice(&tap_mac);
    reply.extend_from_slice(&[10, 245, 0, 1]);
    let n = nix::unistd::write(&tap.queues()[0], &reply).unwrap();
    assert_eq!(n, reply.len());

    let udp = read_frame(&tap, hdr, |f| {
        f[hdr + 12..hdr + 14] == [0x08, 0x00] && f[hdr + 14 + 9] == 17
    });
    assert_eq!(&udp[hdr..hdr + 6], &peer);
    assert_eq!(
        udp[0] & 1,
        1,
        "checksum left to the reader (VIRTIO_NET_HDR_F_NEEDS_CSUM)"
    );
    assert!(udp.ends_with(b"to the tap"));
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<netns::NetNs>();
    check::<netns::Netlink>();
    check::<Tap>();
    check::<netns::Error>();
}

#[test]
fn netlink_refuses_to_block_inside_async_task() {
    let nl = Netlink::current().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = rt.block_on(async { nl.link_index("lo") }).unwrap_err();
    assert!(err.to_string().contains("spawn_blocking"), "{err}");
    rt.block_on(async move { drop(nl) });
    assert_eq!(
        Netlink::current().unwrap().link_index("lo").unwrap(),
        Some(1)
    );
}
