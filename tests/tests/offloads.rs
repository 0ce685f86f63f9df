//! Offloads end to end: containers hand `vswitchd` TSO super-frames with partial checksums and
//! get coalesced ones back; whatever the peer (our switch with offloads on or off, the Linux
//! kernel's VXLAN with offloads on or off), data crosses intact both ways, and every frame our
//! switch puts on the underlay is MTU-sized with correct checksums, as an independent checker
//! reading a tcpdump capture confirms.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use vswitch_e2e::wire_check::check_capture;
use vswitch_e2e::{HostKind, Lab, NetworkSpec, kernel_pair, reaches, tcp_transfer};

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
    let capture = lab.dir().join("underlay.pcap");
    let mut tcpdump = lab.hosts[kernel]
        .ns
        .command("tcpdump")
        .args(["-i", "eth0", "-U", "-s", "0", "-w"])
        .arg(&capture)
        .args(["udp", "port", "4789"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running tcpdump (scripts/install-deps installs it)");
    std::thread::sleep(Duration::from_millis(500));
    let c = &lab.containers;
    tcp_transfer(&c[a].ns, &c[b].ns, c[b].ip, 4 << 20);
    std::thread::sleep(Duration::from_millis(300));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tcpdump.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = tcpdump.wait();
    let bytes = std::fs::read(&capture).expect("reading the capture");
    let report = check_capture(&bytes, lab.hosts[ours].address, 1450);
    assert!(
        report.checked > 1000,
        "too few segments captured: {report:?}"
    );
    assert_eq!(report.bad, 0, "{report:?}");
    assert_eq!(report.oversize, 0, "{report:?}");
}
