//! The container's kernel takes the UDP super-frames the coalescer builds: datagrams merged by
//! [`Coalescer`] and written as USO frames to a TAP in a namespace of the test's own come out
//! of a plain UDP socket there as the datagrams that went in, byte for byte, with no error
//! counted on the link or by UDP.
//!
//! Needs root (namespaces and TAP devices). Every namespace is named after the process and a
//! counter and is removed on drop, on panic too; no traffic leaves it.

#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use etherparse::{IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, PacketBuilder};
use netns::{NetNs, Netlink, Tap, TapOptions};
use vswitch::offload::{self, Coalescer, VnetHdr};
use vswitch::wire;

const TAP: &str = "uso0";
const TAP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x55, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x55, 0x02];
/// Benchmarking range (RFC 2544): it exists only inside the test's namespace.
const TAP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 55, 1);
const PEER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 55, 2);
const TAP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x55, 0, 0, 0, 0, 0, 1);
const PEER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x55, 0, 0, 0, 0, 0, 2);
const PORT: u16 = 5000;

/// Deletes the namespace's name when dropped.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = NetNs::delete(&self.0);
    }
}

/// A namespace standing in for a container: a TAP with the vnet header, addresses on it and
/// UDP sockets bound to them.
struct Container {
    tap: File,
    v4: UdpSocket,
    v6: UdpSocket,
    ns: NetNs,
    _guard: NsGuard,
}

impl Container {
    fn new() -> Container {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "vs-uso-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ns = NetNs::create(&name).unwrap();
        let guard = NsGuard(name);
        let mut opts = TapOptions::new(TAP);
        opts.vnet_hdr = true;
        let tap = ns.run(|| Tap::create(&opts)).unwrap().unwrap();
        assert_eq!(tap.vnet_hdr_len(), offload::VNET_HDR_LEN);
        let tap = File::from(tap.into_queues().remove(0));
        let dad = format!("/proc/sys/net/ipv6/conf/{TAP}/accept_dad");
        ns.run(|| fs::write(&dad, "0")).unwrap().unwrap();
        let nl = Netlink::in_namespace(&ns).unwrap();
        nl.set_mac(TAP, TAP_MAC).unwrap();
        nl.set_up("lo").unwrap();
        nl.set_up(TAP).unwrap();
        nl.add_address(TAP, IpAddr::V4(TAP_V4), 24).unwrap();
        nl.add_address(TAP, IpAddr::V6(TAP_V6), 64).unwrap();
        // An address can stay unusable for a moment after it is added (the link's carrier comes
        // up after the address on a loaded machine): retry a bounded time.
        let bind = |ip: IpAddr| {
            let deadline = Instant::now() + Duration::from_secs(5);
            let s = loop {
                match ns.run(|| UdpSocket::bind((ip, PORT))).unwrap() {
                    Ok(s) => break s,
                    Err(e)
                        if e.kind() == ErrorKind::AddrNotAvailable && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("binding {ip}: {e}"),
                }
            };
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            s
        };
        let v4 = bind(IpAddr::V4(TAP_V4));
        let v6 = bind(IpAddr::V6(TAP_V6));
        Container {
            tap,
            v4,
            v6,
            ns,
            _guard: guard,
        }
    }

    /// Writes one frame behind its vnet header, as the datapath does.
    fn write(&mut self, hdr: &VnetHdr, frame: &[u8]) {
        let mut buf = hdr.emit().to_vec();
        buf.extend_from_slice(frame);
        assert_eq!(self.tap.write(&buf).unwrap(), buf.len());
    }

    /// Receives exactly `n` datagrams (waiting at most three seconds for them), then checks
    /// that no more arrive.
    fn receive(&self, v6: bool, n: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let sock = if v6 { &self.v6 } else { &self.v4 };
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < n && Instant::now() < deadline {
            match sock.recv_from(&mut buf) {
                Ok((len, from)) => got.push((from, buf[..len].to_vec())),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("receiving: {e}"),
            }
        }
        assert_eq!(got.len(), n, "datagrams received");
        match sock.recv_from(&mut buf) {
            Ok((len, _)) => panic!("an extra datagram of {len} bytes"),
            Err(e) => assert!(matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut
            )),
        }
        got
    }

    /// The TAP's receive counters (packets, errors, drops) and UDP's (datagrams in, errors,
    /// checksum errors) for `v6` or IPv4, read inside the namespace.
    fn counters(&self, v6: bool) -> ([u64; 3], [u64; 3]) {
        let (dev, snmp) = self
            .ns
            .run(|| {
                let dev = fs::read_to_string("/proc/thread-self/net/dev").unwrap();
                let snmp = if v6 {
                    fs::read_to_string("/proc/thread-self/net/snmp6").unwrap()
                } else {
                    fs::read_to_string("/proc/thread-self/net/snmp").unwrap()
                };
                (dev, snmp)
            })
            .unwrap();
        let line = dev
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{TAP}:")))
            .unwrap();
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let link = [f[1], f[2], f[3]];
        let udp = if v6 {
            let get = |key: &str| {
                snmp.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap()
            };
            [
                get("Udp6InDatagrams"),
                get("Udp6InErrors"),
                get("Udp6InCsumErrors"),
            ]
        } else {
            let mut rows = snmp.lines().filter(|l| l.starts_with("Udp:"));
            let names: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
            let values: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
            let get = |key: &str| {
                let i = names.iter().position(|n| *n == key).unwrap();
                values[i].parse().unwrap()
            };
            [get("InDatagrams"), get("InErrors"), get("InCsumErrors")]
        };
        (link, udp)
    }
}

/// A datagram from the peer to the container's socket, with a correct checksum, or with the
/// pseudo-header sum a sender with checksum offload leaves (`partial`).
fn datagram(v6: bool, sport: u16, id: u16, payload: &[u8], partial: bool) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(PEER_MAC, TAP_MAC);
    let mut out = Vec::new();
    let ip = if v6 {
        IpHeaders::Ipv6(
            etherparse::Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: 0,
                next_header: IpNumber::UDP,
                hop_limit: 64,
                source: PEER_V6.octets(),
                destination: TAP_V6.octets(),
            },
            Default::default(),
        )
    } else {
        let len = (8 + payload.len()) as u16;
        let mut h =
            Ipv4Header::new(len, 64, IpNumber::UDP, PEER_V4.octets(), TAP_V4.octets()).unwrap();
        h.identification = id;
        h.dont_fragment = true;
        IpHeaders::Ipv4(h, Ipv4Extensions::default())
    };
    eth.ip(ip)
        .udp(sport, PORT)
        .write(&mut out, payload)
        .unwrap();
    if partial {
        let l4 = l4(v6);
        let len = (out.len() - l4) as u16;
        let sum = if v6 {
            wire::pseudo_header_v6(PEER_V6.octets(), TAP_V6.octets(), 17, u32::from(len))
        } else {
            wire::pseudo_header_v4(PEER_V4.octets(), TAP_V4.octets(), 17, len)
        };
        out[l4 + 6..l4 + 8].copy_from_slice(&wire::fold(sum).to_be_bytes());
    }
    out
}

/// `n` datagrams of `size` bytes, then one of `last` bytes when `last` is not 0: distinct
/// payloads, IPv4 identifications counting up.
fn flow(v6: bool, sport: u16, n: usize, size: usize, last: usize, partial: bool) -> Vec<Vec<u8>> {
    (0..n + usize::from(last > 0))
        .map(|i| {
            let len = if i < n { size } else { last };
            let payload: Vec<u8> = (0..len).map(|b| (b * 7 + i * 13) as u8).collect();
            datagram(v6, sport, 0x4000 + i as u16, &payload, partial)
        })
        .collect()
}

/// Where the UDP header of a datagram built by [`datagram`] starts.
fn l4(v6: bool) -> usize {
    if v6 { 14 + 40 } else { 14 + 20 }
}

/// Coalesces `frames`, writes what comes out to the container's TAP, and returns the vnet
/// headers written.
fn coalesce_and_write(c: &mut Container, frames: &[Vec<u8>]) -> Vec<VnetHdr> {
    let mut co = Coalescer::new();
    let mut out = Vec::new();
    let mut emit = |_: u32, h: &VnetHdr, f: &[u8]| out.push((*h, f.to_vec()));
    for f in frames {
        co.push(0, f, &mut emit);
    }
    co.flush(&mut emit);
    for (h, f) in &out {
        c.write(h, f);
    }
    out.into_iter().map(|(h, _)| h).collect()
}

/// Sends `frames` through the coalescer and the TAP and checks that the socket receives each
/// datagram's payload from the right source, in order, and that nothing was counted as an
/// error.
fn deliver(v6: bool, frames: &[Vec<u8>]) -> Vec<VnetHdr> {
    let mut c = Container::new();
    let hdrs = coalesce_and_write(&mut c, frames);
    let got = c.receive(v6, frames.len());
    let peer: IpAddr = if v6 { PEER_V6.into() } else { PEER_V4.into() };
    for (i, ((from, data), frame)) in got.iter().zip(frames).enumerate() {
        let udp = &frame[l4(v6)..];
        let sport = u16::from_be_bytes([udp[0], udp[1]]);
        assert_eq!(
            *from,
            SocketAddr::new(peer, sport),
            "source of datagram {i}"
        );
        assert_eq!(data[..], udp[8..], "datagram {i}");
    }
    let (link, udp) = c.counters(v6);
    assert_eq!(
        link,
        [hdrs.len() as u64, 0, 0],
        "TAP packets, errors, drops"
    );
    assert_eq!(
        udp,
        [frames.len() as u64, 0, 0],
        "UDP in, errors, checksum errors"
    );
    hdrs
}

#[test]
fn ipv4_run_of_twenty_datagrams_is_one_write() {
    let frames = flow(false, 40000, 20, 18, 0, false);
    let hdrs = deliver(false, &frames);
    assert_eq!(hdrs.len(), 1);
    assert_eq!(hdrs[0].gso_type, VnetHdr::GSO_UDP_L4);
    assert_eq!(hdrs[0].gso_size, 18);
}

#[test]
fn ipv6_full_run_with_a_shorter_last_datagram() {
    let frames = flow(true, 40001, 63, 64, 7, false);
    let hdrs = deliver(true, &frames);
    assert_eq!(hdrs.len(), 1);
    assert_eq!(hdrs[0].gso_type, VnetHdr::GSO_UDP_L4);
    assert_eq!(hdrs[0].gso_size, 64);
}

#[test]
fn several_runs_of_partial_checksums_and_a_lone_datagram() {
    for v6 in [false, true] {
        let mut frames = flow(v6, 40002, 150, 64, 0, true);
        frames.extend(flow(v6, 40003, 1, 333, 0, true));
        let hdrs = deliver(v6, &frames);
        let types: Vec<(u8, u8, u16)> = hdrs
            .iter()
            .map(|h| (h.gso_type, h.flags, h.gso_size))
            .collect();
        let uso = (VnetHdr::GSO_UDP_L4, VnetHdr::F_NEEDS_CSUM, 64);
        let lone = (VnetHdr::GSO_NONE, VnetHdr::F_NEEDS_CSUM, 0);
        assert_eq!(types, [uso, uso, uso, lone], "IPv6: {v6}");
    }
}
