//! Offloads end to end: containers hand `vswitchd` TSO super-frames with partial checksums and
//! get coalesced ones back; whatever the peer (our switch with offloads on or off, the Linux
//! kernel's VXLAN with offloads on or off), data crosses intact both ways, and every frame our
//! switch puts on the underlay is MTU-sized with correct checksums, as an independent checker
//! reading a tcpdump capture confirms.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use vswitch_e2e::wire_check::check_capture;
use vswitch_e2e::{Capture, HostKind, Lab, NetworkSpec, kernel_pair, reaches, tcp_transfer};

fn ethtool_off(ns: &netns::NetNs) {
    let status = ns
        .command("ethtool")
        .args([
            "-K", "eth0", "tx", "off", "tso", "off", "gso", "off", "gro", "off",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running ethtool (scripts/install-deps installs it)");
    assert!(status.success(), "ethtool -K failed");
}

#[test]
fn offloading_and_plain_vswitchd_interoperate() {
    let mut lab = Lab::new("of").unwrap();
    lab.add_host(HostKind::Vswitch).unwrap();
    lab.add_host(HostKind::Vswitch).unwrap();
    lab.start_vswitchd(0, &[NetworkSpec::DEFAULT], "").unwrap();
    lab.start_vswitchd_with(1, &[NetworkSpec::DEFAULT], "offloads = false", "")
        .unwrap();
    let a = lab.add_container(0, "default", None).unwrap();
    let b = lab.add_container(1, "default", None).unwrap();
    let local = lab.add_container(0, "default", None).unwrap();
    let c = &lab.containers;
    assert!(reaches(&c[a].ns, c[b].ip));
    tcp_transfer(&c[a].ns, &c[b].ns, c[b].ip, 16 << 20);
    tcp_transfer(&c[b].ns, &c[a].ns, c[a].ip, 16 << 20);
    // Super-frames between two offloading ports on one host pass whole.
    tcp_transfer(&c[a].ns, &c[local].ns, c[local].ip, 16 << 20);
}

#[test]
fn kernel_vxlan_without_offloads_interoperates() {
    let (lab, a, b) = kernel_pair("ko", Ipv4Addr::new(10, 244, 200, 3));
    ethtool_off(&lab.containers[b].ns);
    let c = &lab.containers;
    tcp_transfer(&c[a].ns, &c[b].ns, c[b].ip, 8 << 20);
    tcp_transfer(&c[b].ns, &c[a].ns, c[a].ip, 8 << 20);
}

#[test]
fn frames_on_the_underlay_are_mtu_sized_with_correct_checksums() {
    let (lab, a, b) = kernel_pair("wc", Ipv4Addr::new(10, 244, 200, 4));
    let (ours, kernel) = (0, 1);
    let capture = Capture::start(&lab.hosts[kernel].ns, &lab.dir().join("underlay.pcap"));
    let c = &lab.containers;
    tcp_transfer(&c[a].ns, &c[b].ns, c[b].ip, 4 << 20);
    let bytes = capture.finish();
    let report = check_capture(&bytes, lab.hosts[ours].address, 1450);
    assert!(
        report.checked > 1000,
        "too few segments captured: {report:?}"
    );
    assert_eq!(report.bad, 0, "{report:?}");
    assert_eq!(report.oversize, 0, "{report:?}");
}

/// Packets the container's eth0 has received (frames `vswitchd` wrote to its TAP).
fn rx_packets(ns: &netns::NetNs) -> u64 {
    let out = ns
        .command("ip")
        .args(["-s", "-j", "link", "show", "eth0"])
        .output()
        .expect("running ip");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    links[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets")
}

/// Sends `bursts` bursts of `per_burst` numbered datagrams of `size` bytes from `from` to `to`
/// and returns what arrived, in arrival order.
fn udp_bursts(
    from: &netns::NetNs,
    to_ns: &netns::NetNs,
    to: Ipv4Addr,
    bursts: u32,
    per_burst: u32,
    size: usize,
) -> Vec<Vec<u8>> {
    use std::net::UdpSocket;
    let sink = to_ns
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5300)))
        .expect("entering the namespace")
        .expect("binding the sink");
    sink.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("sink timeout");
    let source = from
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("entering the namespace")
        .expect("binding the source");
    source.connect((to, 5300)).expect("connecting");
    let receiver = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = sink.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    });
    for burst in 0..bursts {
        for i in 0..per_burst {
            let n = burst * per_burst + i;
            let mut datagram = vec![(n % 251) as u8; size];
            datagram[..4].copy_from_slice(&n.to_be_bytes());
            source.send(&datagram).expect("sending");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    receiver.join().expect("the receiver")
}

#[test]
fn udp_bursts_are_merged_and_arrive_whole_and_in_order() {
    let lab = vswitch_e2e::vswitch_lab("ub", 2, &[NetworkSpec::DEFAULT], "");
    let mut lab = lab;
    let a = lab.add_container(0, "default", None).unwrap();
    let b = lab.add_container(1, "default", None).unwrap();
    let c = &lab.containers;
    assert!(reaches(&c[a].ns, c[b].ip));
    // Odd sizes, small and near the MTU: every datagram arrives once, whole, in order, in
    // fewer TAP writes than datagrams.
    for size in [64usize, 333, 1400] {
        let before = rx_packets(&c[b].ns);
        let got = udp_bursts(&c[a].ns, &c[b].ns, c[b].ip, 10, 40, size);
        let writes = rx_packets(&c[b].ns) - before;
        assert_eq!(got.len(), 400, "{size}-byte datagrams");
        assert!(
            writes < 200,
            "{size}-byte datagrams took {writes} TAP writes"
        );
        for (n, datagram) in got.iter().enumerate() {
            let mut expect = vec![(n % 251) as u8; size];
            expect[..4].copy_from_slice(&(n as u32).to_be_bytes());
            assert!(*datagram == expect, "datagram {n} of {size} bytes");
        }
    }
}
