//! Endpoints pinned from outside traffic: containers another node published (the fleet's
//! endpoint registry), placed in the MAC table and the neighbour table before any frame of
//! theirs arrives, so that traffic to them is never flooded and ARP for them is answered here.
//!
//! A pinned MAC is a static FDB entry at its peer, a pinned address a static neighbour heard
//! from that peer: neither ages, learning does not move them, and both go with the peer
//! ([`Switch::remove_peer`]) or one by one ([`Switch::unpin_remote`]). The same calls reach
//! every replica in the same order, so nothing here is published as an [`super::Update`].
//!
//! Liveness probes ([`probe_datagram`]) live here too: a 16-byte datagram on the VXLAN port,
//! too short to be a VXLAN frame, that the receiving switch counts against the peer it came
//! from and drops without a drop reason.

use core::net::{Ipv4Addr, SocketAddr};

use crate::fdb::Location;
use crate::tunnel::VXLAN_HEADER_LEN;
use crate::wire::{MacAddr, Vni};

use super::Switch;

/// The liveness probe, as sent: a VXLAN header (I flag, VNI 0xFFFFFF) and 8 bytes of magic.
/// Shorter than VXLAN plus an Ethernet header, it can never be taken for a frame; a Linux
/// VXLAN device drops it as a runt.
pub const PROBE: [u8; VXLAN_HEADER_LEN + 8] = [
    0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0, b'v', b's', b'w', b'p', b'r', b'o', b'b', b'e',
];

/// The probe datagram a node sends each peer.
pub fn probe_datagram() -> &'static [u8] {
    &PROBE
}

/// Whether a received datagram is a liveness probe.
pub fn is_probe(datagram: &[u8]) -> bool {
    datagram == PROBE
}

/// What [`Switch::pin_remote`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    /// The MAC (and its addresses) now point at the peer.
    Done,
    /// No peer has that address: nothing was pinned.
    UnknownPeer,
    /// The network is not carried here: nothing was pinned.
    UnknownVni,
    /// A local port holds the MAC: it stays local.
    LocalPort,
}

impl Switch {
    /// Pins `mac` on `vni` (and its IPv4 addresses `ips`) to the peer at `peer`. An entry
    /// learned or pinned elsewhere for the same MAC or address is replaced; a local port's MAC
    /// is never taken over.
    pub fn pin_remote(
        &mut self,
        peer: SocketAddr,
        vni: Vni,
        mac: MacAddr,
        ips: &[Ipv4Addr],
    ) -> Pinned {
        let Some(id) = self.peer_id(peer) else {
            return Pinned::UnknownPeer;
        };
        if !self.networks.contains_key(&vni) {
            return Pinned::UnknownVni;
        }
        if let Some(Location::Port(_)) = self.fdb.lookup(vni, mac) {
            return Pinned::LocalPort;
        }
        let at = Location::Peer(id);
        let _ = self.fdb.insert_static(vni, mac, at);
        for &ip in ips {
            self.neighbours.insert_static_at(vni, ip, mac, Some(at));
        }
        Pinned::Done
    }

    /// Unpins `mac` on `vni` and its addresses, if they still point at a peer; false when
    /// there was nothing pinned to remove.
    pub fn unpin_remote(&mut self, vni: Vni, mac: MacAddr, ips: &[Ipv4Addr]) -> bool {
        let pinned = matches!(self.fdb.lookup(vni, mac), Some(Location::Peer(_)))
            && self.fdb.is_static(vni, mac);
        if !pinned {
            return false;
        }
        let _ = self.fdb.remove(vni, mac);
        for &ip in ips {
            self.neighbours.remove_static(vni, ip, mac);
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::switch::{NetworkConfig, Output, PortConfig, SwitchConfig};
    use crate::wire::{ETHERNET_HEADER_LEN, EtherType};

    const PEER: &str = "192.0.2.2:4789";

    fn switch() -> (Switch, Vni) {
        let mut sw = Switch::new(SwitchConfig::default());
        let vni = Vni::try_from(42).unwrap();
        sw.add_network(NetworkConfig {
            vni,
            mtu: 1450,
            gateway: None,
            sealed: false,
            clamp_mss: true,
        })
        .unwrap();
        sw.add_peer(PEER.parse().unwrap(), &[vni]);
        (sw, vni)
    }

    fn local_port(sw: &mut Switch, vni: Vni, mac: MacAddr, ip: Ipv4Addr) -> crate::switch::PortId {
        sw.add_port(PortConfig {
            vni,
            mac,
            ips: vec![ip.into()],
            port_security: true,
        })
        .unwrap()
    }

    /// An ARP request from `mac`/`ip` for `target`.
    fn arp_request(mac: MacAddr, ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&mac.0);
        f.extend_from_slice(&EtherType::ARP.0.to_be_bytes());
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&mac.0);
        f.extend_from_slice(&ip.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target.octets());
        f
    }

    #[test]
    fn pinned_endpoints_are_forwarded_to_and_answered_without_flooding() {
        let (mut sw, vni) = switch();
        let now = Instant::now();
        let here = MacAddr([2, 0, 0, 0, 0, 1]);
        let there = MacAddr([2, 0, 0, 0, 0, 2]);
        let (here_ip, there_ip) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 1, 2));
        let port = local_port(&mut sw, vni, here, here_ip);
        let peer: SocketAddr = PEER.parse().unwrap();
        assert_eq!(sw.pin_remote(peer, vni, there, &[there_ip]), Pinned::Done);

        let mut out = Output::default();
        sw.handle_frame(now, port, &arp_request(here, here_ip, there_ip), &mut out);
        assert_eq!(out.dropped, None);
        assert!(out.transmits.is_empty(), "ARP for a pinned address flooded");
        let (to, reply) = out.reply().unwrap();
        assert_eq!(to, port);
        assert_eq!(&reply[6..12], &there.0, "answered with the pinned MAC");

        // A unicast ARP reply to the pinned MAC goes to its peer alone.
        let mut frame = arp_request(here, here_ip, there_ip);
        frame[..6].copy_from_slice(&there.0);
        frame[ETHERNET_HEADER_LEN + 7] = 2;
        frame[ETHERNET_HEADER_LEN + 18..ETHERNET_HEADER_LEN + 24].copy_from_slice(&there.0);
        sw.handle_frame(now, port, &frame, &mut out);
        assert_eq!(out.dropped, None);
        assert_eq!(out.transmits.len(), 1);
        assert_eq!(out.transmits[0].addr, peer);
        assert_eq!(sw.counters().flooded, 0);

        // Never aged.
        sw.handle_timeout(now + Duration::from_secs(3600));
        assert_eq!(
            sw.fdb().lookup(vni, there),
            Some(Location::Peer(sw.peer_id(peer).unwrap()))
        );
        // Unpinned one by one, or with the peer.
        assert!(sw.unpin_remote(vni, there, &[there_ip]));
        assert_eq!(sw.fdb().lookup(vni, there), None);
        assert!(!sw.unpin_remote(vni, there, &[there_ip]));
        assert_eq!(sw.pin_remote(peer, vni, there, &[there_ip]), Pinned::Done);
        sw.remove_peer(sw.peer_id(peer).unwrap());
        assert_eq!(sw.fdb().lookup(vni, there), None);
        assert!(
            sw.neighbours(now).all(|n| n.ip != there_ip),
            "a pinned neighbour outlived its peer"
        );
    }

    #[test]
    fn local_ports_and_unknown_peers_are_never_pinned_over() {
        let (mut sw, vni) = switch();
        let here = MacAddr([2, 0, 0, 0, 0, 1]);
        local_port(&mut sw, vni, here, Ipv4Addr::new(10, 0, 0, 1));
        let peer: SocketAddr = PEER.parse().unwrap();
        assert_eq!(sw.pin_remote(peer, vni, here, &[]), Pinned::LocalPort);
        assert!(!sw.unpin_remote(vni, here, &[]));
        let other = MacAddr([2, 0, 0, 0, 0, 9]);
        let nobody: SocketAddr = "192.0.2.9:4789".parse().unwrap();
        assert_eq!(sw.pin_remote(nobody, vni, other, &[]), Pinned::UnknownPeer);
        let unknown = Vni::try_from(7).unwrap();
        assert_eq!(sw.pin_remote(peer, unknown, other, &[]), Pinned::UnknownVni);
    }

    #[test]
    fn probes_count_for_their_peer_and_go_no_further() {
        let (mut sw, _) = switch();
        let peer: SocketAddr = PEER.parse().unwrap();
        let mut out = Output::default();
        let mut probe = PROBE;
        sw.handle_datagram(Instant::now(), peer, &mut probe, &mut out);
        assert_eq!(out.dropped, None);
        assert!(out.ports.is_empty() && out.transmits.is_empty());
        assert_eq!(sw.counters().probes, 1);
        assert_eq!(sw.counters().drops.total(), 0);
        let id = sw.peer_id(peer).unwrap();
        assert_eq!(sw.peer_stats(id).unwrap().rx_datagrams, 1);
        assert!(is_probe(probe_datagram()));
        assert!(!is_probe(&PROBE[..15]));
    }
}
