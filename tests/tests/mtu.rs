//! Containers whose interface MTU (9000) is larger than the network's: a ping too large for the
//! path, with "don't fragment", is answered with ICMP "fragmentation needed" carrying the MTU
//! (from the local switch, or from the far one through the tunnel when its MTU is smaller), the
//! container's kernel learns that path MTU, and TCP transfers across hosts complete, with MSS
//! clamping and, with it turned off, by path MTU discovery alone.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use etherparse::{Icmpv4Type, Icmpv6Type, Ipv4HeaderSlice, icmpv4::DestUnreachableHeader};
use netns::{NetNs, Netlink};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockProtocol, SockType, sockopt};
use vswitch::control::api::{MtuView, Reply, Request};
use vswitch::control::attach::mac_for;
use vswitch::lab::{HostKind, Lab};
use vswitch_e2e::{NetworkSpec, tcp_transfer};

const CONTAINER_MTU: u32 = 9000;

/// Two `vswitchd` hosts, host `i` started with `network_extra[i]` in its network's table, and
/// one container on each whose interface MTU is raised to [`CONTAINER_MTU`].
fn lab(tag: &str, network_extra: [&str; 2]) -> Lab {
    let mut lab = Lab::new(tag).expect("creating the lab");
    for _ in network_extra {
        lab.add_host(HostKind::Vswitch).expect("adding a host");
    }
    for (host, extra) in network_extra.into_iter().enumerate() {
        lab.network_extra = extra.to_owned();
        lab.start_vswitchd(host, &[NetworkSpec::DEFAULT], "")
            .expect("starting vswitchd");
    }
    for host in 0..2 {
        let c = lab
            .add_container(host, "default", None)
            .expect("attaching a container");
        Netlink::in_namespace(&lab.containers[c].ns)
            .and_then(|nl| nl.set_mtu("eth0", CONTAINER_MTU))
            .expect("raising the container's MTU");
    }
    let c = &lab.containers;
    assert!(vswitch_e2e::reaches(&c[0].ns, c[1].ip), "c0 -> c1");
    assert!(vswitch_e2e::reaches(&c[1].ns, c[0].ip), "c1 -> c0");
    lab
}

/// What came back for an echo request sent with "don't fragment".
#[derive(Debug, PartialEq, Eq)]
struct FragNeeded {
    from: Ipv4Addr,
    mtu: u16,
    /// The quoted request had DF set.
    df: bool,
}

/// Sends one ICMP echo request carrying `size` bytes of data from `from` to `to` (on a raw
/// socket: the kernel sets DF, the route's MTU being larger), as `ping -M do -s SIZE` does, and
/// returns the "fragmentation needed" that answers it within two seconds, read with etherparse.
fn df_ping(from: &NetNs, to: Ipv4Addr, size: usize) -> Option<FragNeeded> {
    from.run(|| {
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Icmp,
        )
        .expect("opening a raw ICMP socket");
        let socket = UdpSocket::from(fd);
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let ident = 0x4d54u16;
        let mut request = vec![8u8, 0, 0, 0];
        request.extend_from_slice(&ident.to_be_bytes());
        request.extend_from_slice(&1u16.to_be_bytes());
        request.extend((0..size).map(|i| i as u8));
        let sum =
            etherparse::Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: ident, seq: 1 })
                .calc_checksum(&request[8..]);
        request[2..4].copy_from_slice(&sum.to_be_bytes());
        socket
            .send_to(&request, (to, 0))
            .expect("sending the echo request");
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            let Ok((n, _)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let Ok(ip) = Ipv4HeaderSlice::from_slice(&buf[..n]) else {
                continue;
            };
            let Ok(icmp) = etherparse::Icmpv4Slice::from_slice(&buf[ip.slice().len()..n]) else {
                continue;
            };
            let Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu,
            }) = icmp.icmp_type()
            else {
                continue;
            };
            let header = icmp.header();
            assert_eq!(
                header.checksum,
                header.icmp_type.calc_checksum(icmp.payload()),
                "ICMP checksum"
            );
            let quoted = Ipv4HeaderSlice::from_slice(icmp.payload()).expect("the quoted header");
            let echo = &icmp.payload()[quoted.slice().len()..];
            if quoted.destination_addr() != to || echo.get(4..6) != Some(&ident.to_be_bytes()[..]) {
                continue;
            }
            return Some(FragNeeded {
                from: ip.source_addr(),
                mtu: next_hop_mtu,
                df: quoted.dont_fragment(),
            });
        }
        None
    })
    .expect("entering the namespace")
}

/// What a 2000-byte ICMPv6 echo request from `from` to the link-local address `to` met: the
/// "packet too big" errors that came back (source and MTU), and whether an echo reply came
/// back. Up to five requests, one a second, until a reply comes: the first is too big for the
/// path; once both kernels have taken their errors, requests and replies cross in fragments.
fn big_ping6(from: &NetNs, to: Ipv6Addr) -> (Vec<(Ipv6Addr, u32)>, bool) {
    from.run(|| {
        let scope = nix::net::if_::if_nametoindex("eth0").expect("eth0's index");
        let fd = socket::socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::IcmpV6,
        )
        .expect("opening a raw ICMPv6 socket");
        let socket = UdpSocket::from(fd);
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut errors = Vec::new();
        let mut buf = vec![0u8; 65536];
        for seq in 1..=5u16 {
            // The kernel fills in the checksum of a raw ICMPv6 socket's messages.
            let mut request = vec![128u8, 0, 0, 0, 0x4d, 0x54];
            request.extend_from_slice(&seq.to_be_bytes());
            request.extend((0..2000).map(|i| i as u8));
            // The link-local address is tentative until duplicate address detection is done.
            let settled = Instant::now() + Duration::from_secs(5);
            while let Err(e) = socket.send_to(&request, SocketAddrV6::new(to, 0, 0, scope)) {
                assert!(
                    e.raw_os_error() == Some(nix::libc::EADDRNOTAVAIL) && Instant::now() < settled,
                    "sending the echo request: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                let Ok((n, source)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let std::net::IpAddr::V6(source) = source.ip() else {
                    continue;
                };
                let Ok(icmp) = etherparse::Icmpv6Slice::from_slice(&buf[..n]) else {
                    continue;
                };
                match icmp.icmp_type() {
                    Icmpv6Type::PacketTooBig { mtu } => errors.push((source, mtu)),
                    Icmpv6Type::EchoReply(echo) if echo.seq == seq && source == to => {
                        return (errors, true);
                    }
                    _ => {}
                }
            }
        }
        (errors, false)
    })
    .expect("entering the namespace")
}

/// The path MTU the kernel of `from` holds for `to` (`IP_MTU` of a connected UDP socket).
fn path_mtu(from: &NetNs, to: Ipv4Addr) -> i32 {
    from.run(|| {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("binding");
        socket.connect((to, 9)).expect("connecting");
        socket::getsockopt(&socket.as_fd(), sockopt::IpMtu).expect("IP_MTU")
    })
    .expect("entering the namespace")
}

/// The MTU counters of host `host`, once the workers' snapshots (published at most every
/// 200 ms) have caught up.
fn mtu_counters(lab: &Lab, host: usize) -> MtuView {
    std::thread::sleep(Duration::from_millis(300));
    match lab.call(host, &Request::Status).expect("status") {
        Reply::Status(s) => s.mtu,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn too_big_pings_are_answered_and_tcp_crosses_a_smaller_mtu() {
    let lab = lab("mtu", ["", ""]);
    let c = &lab.containers;
    // Both ends announce an MSS of 8960; the switches lower it to 1410 in every SYN and
    // SYN-ACK, so no segment is ever too big.
    tcp_transfer(&c[0].ns, &c[1].ns, c[1].ip, 4 << 20);
    tcp_transfer(&c[1].ns, &c[0].ns, c[0].ip, 4 << 20);
    for host in 0..2 {
        let counters = mtu_counters(&lab, host);
        assert!(counters.mss_clamped >= 2, "host {host}: {counters:?}");
        assert_eq!(counters.too_big_sent, 0, "host {host}: {counters:?}");
    }
    assert_eq!(path_mtu(&c[0].ns, c[1].ip), 9000, "nothing was too big yet");

    // 2000 bytes of data: a 2028-byte IP packet, over the network's 1450.
    let answer = df_ping(&c[0].ns, c[1].ip, 2000).expect("no fragmentation-needed came back");
    assert_eq!(
        answer,
        FragNeeded {
            from: Ipv4Addr::new(10, 244, 1, 1),
            mtu: 1450,
            df: true
        }
    );
    assert_eq!(
        path_mtu(&c[0].ns, c[1].ip),
        1450,
        "the kernel learned the MTU"
    );
    assert_eq!(mtu_counters(&lab, 0).too_big_sent, 1);
    assert_eq!(
        vswitch_e2e::drops(&lab, 0, "over_mtu"),
        1,
        "dropped and counted"
    );
}

#[test]
fn path_mtu_discovery_alone_carries_tcp_and_the_far_switch_answers_too() {
    // Host 1's network is smaller still, and neither host clamps the MSS.
    let lab = lab(
        "pmtu",
        ["clamp_mss = false", "clamp_mss = false\nmtu = 1400"],
    );
    let c = &lab.containers;
    // Each side sends 8960-byte segments until a switch answers (host 0 with 1450, host 1 with
    // 1400; host 1 cuts host 0's 1450-byte segments to its MTU), then the transfer goes on.
    tcp_transfer(&c[0].ns, &c[1].ns, c[1].ip, 4 << 20);
    tcp_transfer(&c[1].ns, &c[0].ns, c[0].ip, 4 << 20);
    for host in 0..2 {
        let counters = mtu_counters(&lab, host);
        assert_eq!(counters.mss_clamped, 0, "host {host}");
        assert!(counters.too_big_sent >= 1, "host {host}: {counters:?}");
    }
    assert_eq!(path_mtu(&c[0].ns, c[1].ip), 1450);
    assert_eq!(path_mtu(&c[1].ns, c[0].ip), 1400);

    // 1422 bytes of data fill host 0's MTU exactly: the ping passes there, and host 1 answers,
    // through the tunnel, from its own gateway.
    let before = mtu_counters(&lab, 1).too_big_sent;
    let answer = df_ping(&c[0].ns, c[1].ip, 1422).expect("no answer from the far switch");
    assert_eq!(
        answer,
        FragNeeded {
            from: Ipv4Addr::new(10, 244, 2, 1),
            mtu: 1400,
            df: true
        }
    );
    assert_eq!(path_mtu(&c[0].ns, c[1].ip), 1400);
    assert_eq!(mtu_counters(&lab, 1).too_big_sent, before + 1);
}

#[test]
fn ipv6_packet_too_big_comes_from_the_gateway_link_local_and_is_taken() {
    let lab = lab("mtu6", ["", ""]);
    let c = &lab.containers;
    let to = c[1].mac.link_local();
    let (errors, answered) = big_ping6(&c[0].ns, to);
    let gateway = mac_for(Ipv4Addr::new(10, 244, 1, 1)).link_local();
    assert_eq!(
        errors.first(),
        Some(&(gateway, 1450)),
        "the first request is too big: {errors:?}"
    );
    assert!(
        errors.iter().all(|&e| e == (gateway, 1450)),
        "errors from elsewhere: {errors:?}"
    );
    assert!(
        answered,
        "no echo reply: a kernel did not take its packet too big ({errors:?})"
    );
    for host in 0..2 {
        let counters = mtu_counters(&lab, host);
        assert!(counters.too_big_sent >= 1, "host {host}: {counters:?}");
    }
}
