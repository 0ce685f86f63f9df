//! An independent checker of what crossed the underlay: reads a pcap capture (classic format,
//! Ethernet link type), finds every VXLAN datagram in it (also inside a UDP GSO super-packet,
//! which a capture on a veth shows before segmentation), and verifies the inner frames' IPv4
//! header checksums and TCP/UDP checksums in full.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use netns::NetNs;

/// tcpdump writing VXLAN traffic on a namespace's `eth0` to a pcap file, until [`finish`]ed.
///
/// [`finish`]: Capture::finish
pub struct Capture {
    tcpdump: Child,
    path: PathBuf,
}

impl Capture {
    /// Starts capturing UDP port 4789 on `eth0` of `ns` into `path`, and waits until tcpdump
    /// has had time to attach.
    pub fn start(ns: &NetNs, path: &Path) -> Capture {
        let tcpdump = ns
            .command("tcpdump")
            .args(["-i", "eth0", "-U", "-s", "0", "-w"])
            .arg(path)
            .args(["udp", "port", "4789"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running tcpdump (scripts/install-deps installs it)");
        std::thread::sleep(Duration::from_millis(500));
        Capture {
            tcpdump,
            path: path.to_owned(),
        }
    }

    /// Lets the last packets in, stops tcpdump and returns the pcap bytes.
    pub fn finish(mut self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.tcpdump.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.tcpdump.wait();
        std::fs::read(&self.path).expect("reading the capture")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.tcpdump.kill();
        let _ = self.tcpdump.wait();
    }
}

/// What the capture held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WireReport {
    /// Inner TCP/UDP segments whose checksums were verified.
    pub checked: usize,
    /// Of those, how many had a wrong IP header or TCP/UDP checksum.
    pub bad: usize,
    /// Inner frames longer than the given MTU allows.
    pub oversize: usize,
}

fn sum(data: &[u8], mut acc: u64) -> u64 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        acc += u64::from(word);
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Verifies one inner Ethernet frame; `None` when it is not IPv4 TCP/UDP.
fn inner_ok(frame: &[u8]) -> Option<bool> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let header_ok = fold(sum(ip.get(..ihl)?, 0)) == 0xffff;
    let proto = *ip.get(9)?;
    if proto != 6 && proto != 17 {
        return None;
    }
    let l4 = ip.get(ihl..total)?;
    let pseudo = sum(ip.get(12..20)?, u64::from(proto) + l4.len() as u64);
    let l4_ok = (proto == 17 && l4.get(6..8)? == [0, 0]) || fold(sum(l4, pseudo)) == 0xffff;
    Some(header_ok && l4_ok)
}

/// Checks every VXLAN datagram sent from `source` (port 4789) in the pcap `bytes`.
pub fn check_capture(bytes: &[u8], source: Ipv4Addr, mtu: usize) -> WireReport {
    let mut report = WireReport::default();
    let mut at = 24;
    while let Some(record) = bytes.get(at..at + 16) {
        let caplen = u32::from_le_bytes([record[8], record[9], record[10], record[11]]) as usize;
        let Some(packet) = bytes.get(at + 16..at + 16 + caplen) else {
            break;
        };
        at += 16 + caplen;
        // Ethernet, IPv4 from `source`, UDP to 4789.
        if packet.get(12..14) != Some(&[0x08, 0x00]) || packet.get(26..30) != Some(&source.octets())
        {
            continue;
        }
        let ihl = usize::from(packet[14] & 0x0f) * 4;
        let udp = 14 + ihl;
        if packet.get(udp + 2..udp + 4) != Some(&[0x12, 0xb5]) || packet.get(23) != Some(&17) {
            continue;
        }
        // One datagram, or several back to back (GSO): walk them by the inner IP length.
        let mut payload = &packet[udp + 8..];
        while payload.len() >= 8 + 34 {
            let inner = &payload[8..];
            let inner_len = 14 + usize::from(u16::from_be_bytes([inner[16], inner[17]]));
            let Some(frame) = inner.get(..inner_len) else {
                break;
            };
            if let Some(ok) = inner_ok(frame) {
                report.checked += 1;
                if !ok {
                    report.bad += 1;
                }
                if inner_len > 14 + mtu {
                    report.oversize += 1;
                }
            }
            payload = &payload[8 + inner_len..];
        }
    }
    report
}
