//! What the underlay sees: tcpdump on a lab host's underlay interface, and the VXLAN-port
//! packets of the capture told apart by kind (plain, sealed, handshake) and VNI, with how
//! often they carry a given byte string in clear. `vswitch demo` shows sealed and plain
//! networks side by side with it.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use netns::NetNs;

use super::LabError;
use crate::tunnel::{self, Kind};

/// A tcpdump of UDP port 4789 on `eth0` of a host namespace, stopped by [`finish`] or on drop.
///
/// [`finish`]: UnderlayCapture::finish
pub struct UnderlayCapture {
    tcpdump: Child,
    path: PathBuf,
}

impl UnderlayCapture {
    /// Starts capturing into `path` and waits until tcpdump has had time to attach.
    pub fn start(ns: &NetNs, path: &Path) -> Result<Self, LabError> {
        let tcpdump = ns
            .command("tcpdump")
            .args(["-i", "eth0", "--immediate-mode", "-U", "-s", "0", "-w"])
            .arg(path)
            .args(["udp", "port", "4789"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| LabError::Io {
                what: "running tcpdump (scripts/install-deps installs it)".into(),
                source,
            })?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self {
            tcpdump,
            path: path.to_owned(),
        })
    }

    /// Lets the last packets in, stops tcpdump and returns what it captured.
    pub fn finish(mut self) -> Result<Vec<u8>, LabError> {
        std::thread::sleep(Duration::from_millis(200));
        let pid = i32::try_from(self.tcpdump.id()).unwrap_or(i32::MAX);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.tcpdump.wait();
        std::fs::read(&self.path).map_err(|source| LabError::Io {
            what: format!("reading {}", self.path.display()),
            source,
        })
    }
}

impl Drop for UnderlayCapture {
    fn drop(&mut self) {
        let _ = self.tcpdump.kill();
        let _ = self.tcpdump.wait();
    }
}

/// Sends `count` UDP datagrams carrying `marker` from namespace `from` to a socket bound at
/// `to` in namespace `to_ns`, for a capture to look for; returns how many arrived.
pub fn send_marker(
    from: &NetNs,
    to_ns: &NetNs,
    to: std::net::Ipv4Addr,
    marker: &[u8],
    count: usize,
) -> Result<usize, LabError> {
    let io = |what: &'static str| {
        move |source| LabError::Io {
            what: what.into(),
            source,
        }
    };
    let receiver = to_ns
        .run(|| std::net::UdpSocket::bind((to, 0)))?
        .map_err(io("binding a UDP socket"))?;
    let port = receiver
        .local_addr()
        .map_err(io("reading a socket address"))?
        .port();
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(io("setting a timeout"))?;
    let sender = from
        .run(|| std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)))?
        .map_err(io("binding a UDP socket"))?;
    for _ in 0..count {
        // A datagram refused on the way is simply not received: the count tells.
        let _ = sender.send_to(marker, (to, port));
    }
    let mut buf = vec![0u8; marker.len() + 1];
    let mut arrived = 0;
    while arrived < count && receiver.recv(&mut buf).is_ok_and(|n| buf[..n] == *marker) {
        arrived += 1;
    }
    Ok(arrived)
}

/// Packets of one kind on one VNI in a capture.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// How many. A GSO train the capture took whole (on a veth it is never cut into
    /// datagrams) counts once.
    pub packets: usize,
    /// How many times the byte string looked for shows in them, in clear.
    pub markers: usize,
}

/// The VXLAN-port packets of `pcap` (Ethernet, IPv4 or IPv6) whose first UDP payload byte says
/// `kind` and whose header names `vni` (handshake messages name no VNI: pass `None`), and how
/// often `marker` shows in them.
pub fn seen(pcap: &[u8], kind: Kind, vni: Option<u32>, marker: &[u8]) -> Seen {
    let mut seen = Seen::default();
    for (packet, payload) in udp_payloads(pcap) {
        if tunnel::classify(payload) != kind {
            continue;
        }
        let payload_vni = payload
            .get(4..7)
            .map(|b| u32::from_be_bytes([0, b[0], b[1], b[2]]));
        if vni.is_some() && payload_vni != vni {
            continue;
        }
        seen.packets += 1;
        if !marker.is_empty() {
            seen.markers += packet
                .windows(marker.len())
                .filter(|w| *w == marker)
                .count();
        }
    }
    seen
}

/// The packets of a classic pcap file of Ethernet frames that carry UDP, each with its (first)
/// UDP payload; what does not parse is skipped.
fn udp_payloads(pcap: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut at = 24;
    std::iter::from_fn(move || {
        loop {
            let record = pcap.get(at..at + 16)?;
            let caplen =
                u32::from_le_bytes([record[8], record[9], record[10], record[11]]) as usize;
            let packet = pcap.get(at + 16..at + 16 + caplen)?;
            at += 16 + caplen;
            if let Some(payload) = udp_payload(packet) {
                return Some((packet, payload));
            }
        }
    })
}

fn udp_payload(frame: &[u8]) -> Option<&[u8]> {
    let (ethertype, ip) = (frame.get(12..14)?, frame.get(14..)?);
    let udp_start = match ethertype {
        [0x08, 0x00] if ip.get(9) == Some(&17) => usize::from(ip.first()? & 0x0f) * 4,
        [0x86, 0xdd] if ip.get(6) == Some(&17) => 40,
        _ => return None,
    };
    let udp = ip.get(udp_start..)?;
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    udp.get(8..len.max(8))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pcap with one Ethernet/IPv4/UDP frame per payload.
    fn pcap(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![0u8; 24];
        for payload in payloads {
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17]);
            frame.extend_from_slice(&[0u8; 10]);
            let udp_len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
            frame.extend_from_slice(&[0x12, 0x34, 0x12, 0xb5]);
            frame.extend_from_slice(&udp_len.to_be_bytes());
            frame.extend_from_slice(&[0, 0]);
            frame.extend_from_slice(payload);
            let caplen = u32::try_from(frame.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&[0u8; 8]);
            out.extend_from_slice(&caplen.to_le_bytes());
            out.extend_from_slice(&caplen.to_le_bytes());
            out.extend_from_slice(&frame);
        }
        out
    }

    #[test]
    fn datagrams_are_told_apart_by_kind_and_vni() {
        let plain42 = [&[0x08, 0, 0, 0, 0, 0, 42, 0][..], b"..MARK..MARK"].concat();
        let plain43 = [0x08, 0, 0, 0, 0, 0, 43, 0, b'x'];
        let sealed43 = [&[0x48, 0, 0, 0, 0, 0, 43, 0][..], &[0u8; 40][..]].concat();
        let handshake = [0xc1u8; 148];
        let capture = pcap(&[&plain42, &plain43, &sealed43, &handshake, &plain42[..5]]);
        assert_eq!(
            seen(&capture, Kind::Plain, Some(42), b"MARK"),
            Seen {
                packets: 1,
                markers: 2
            }
        );
        // Any VNI, a truncated datagram too.
        assert_eq!(seen(&capture, Kind::Plain, None, b"MARK").packets, 3);
        assert_eq!(
            seen(&capture, Kind::Sealed, Some(43), b"MARK"),
            Seen {
                packets: 1,
                markers: 0
            }
        );
        assert_eq!(seen(&capture, Kind::Handshake, None, b"").packets, 1);
        assert_eq!(
            seen(&[0u8; 10], Kind::Plain, None, b"MARK"),
            Seen::default()
        );
    }
}
