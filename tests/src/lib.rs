//! Helpers shared by the end-to-end tests: clusters with `vswitchd` hosts (built on
//! [`vswitch::lab`]), reachability checks and verified TCP transfers between containers.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use netns::NetNs;

pub mod wire_check;
use vswitch::control::api::{FdbView, Reply, Request};
pub use vswitch::lab::{HostKind, Lab, NetworkSpec};
pub use wire_check::Capture;

/// A lab with `hosts` `vswitchd` hosts, each carrying `networks` and started with `extra`
/// config appended.
pub fn vswitch_lab(tag: &str, hosts: usize, networks: &[NetworkSpec<'_>], extra: &str) -> Lab {
    vswitch_lab_with(tag, hosts, networks, extra, |_| {})
}

/// [`vswitch_lab`] with `configure` applied to the lab before its hosts are added.
pub fn vswitch_lab_with(
    tag: &str,
    hosts: usize,
    networks: &[NetworkSpec<'_>],
    extra: &str,
    configure: impl FnOnce(&mut Lab),
) -> Lab {
    let mut lab = Lab::new(tag).expect("creating the lab");
    configure(&mut lab);
    for _ in 0..hosts {
        lab.add_host(HostKind::Vswitch).expect("adding a host");
    }
    for host in 0..hosts {
        lab.start_vswitchd(host, networks, extra)
            .expect("starting vswitchd");
    }
    lab
}

/// A `vswitchd` host (index 0) and a Linux kernel VXLAN host (index 1) on VNI 42, with one
/// container each: ours attached by the daemon, the kernel's at `kernel_ip`. Returns the lab
/// and the two containers' indexes.
pub fn kernel_pair(tag: &str, kernel_ip: Ipv4Addr) -> (Lab, usize, usize) {
    let mut lab = Lab::new(tag).expect("creating the lab");
    let ours = lab.add_host(HostKind::Vswitch).expect("adding a host");
    let kernel = lab
        .add_host(HostKind::Kernel { vni: 42 })
        .expect("adding a kernel host");
    lab.start_vswitchd(ours, &[NetworkSpec::DEFAULT], "")
        .expect("starting vswitchd");
    let a = lab
        .add_container(ours, "default", None)
        .expect("attaching a container");
    let b = lab
        .add_container(kernel, "default", Some(kernel_ip))
        .expect("adding a container on the kernel host");
    (lab, a, b)
}

/// Whether `from` gets an ICMP echo reply from `to` within a few tries.
pub fn reaches(from: &NetNs, to: Ipv4Addr) -> bool {
    !vswitch::lab::traffic::ping(
        from,
        to,
        5,
        Duration::from_millis(50),
        Duration::from_millis(500),
    )
    .expect("pinging")
    .is_empty()
}

/// Sends `len` bytes of a known pattern over TCP from `from` to `to` (listening in `to_ns`) and
/// checks that exactly those bytes arrived.
pub fn tcp_transfer(from: &NetNs, to_ns: &NetNs, to: Ipv4Addr, len: usize) {
    let listener = to_ns
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("entering the namespace")
        .expect("listening");
    let port = listener.local_addr().expect("listener address").port();
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accepting");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut received = Vec::with_capacity(len);
        stream.read_to_end(&mut received).expect("receiving");
        received
    });
    let mut stream = from
        .run(|| TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(5)))
        .expect("entering the namespace")
        .expect("connecting");
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let data = pattern(len);
    stream.write_all(&data).expect("sending");
    drop(stream);
    let received = receiver.join().expect("receiver thread");
    assert_eq!(received.len(), len, "byte count");
    assert!(
        received == data,
        "the bytes that arrived differ from those sent"
    );
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The MAC table of host `host`.
pub fn fdb(lab: &Lab, host: usize) -> Vec<FdbView> {
    match lab.call(host, &Request::Fdb).expect("vswitch fdb") {
        Reply::Fdb(entries) => entries,
        other => panic!("unexpected reply {other:?}"),
    }
}

/// How many frames or datagrams `vswitchd` on `host` dropped for `reason` (its snake_case name).
pub fn drops(lab: &Lab, host: usize, reason: &str) -> u64 {
    match lab.call(host, &Request::Status).expect("status") {
        Reply::Status(s) => s
            .drops
            .iter()
            .find(|(r, _)| r == reason)
            .map_or(0, |(_, n)| *n),
        other => panic!("unexpected reply {other:?}"),
    }
}
