//! The per-frame path: a frame from a port or a datagram from a peer, turned into an [`Output`].

use core::net::SocketAddr;
use std::time::Instant;

use crate::fdb::{Learned, Location};
use crate::offload::{self, Offload, OffloadError, VNET_HDR_LEN, VnetHdr};
use crate::tunnel::{self, VXLAN_HEADER_LEN};
use crate::wire::{
    self, ArpOperation, ArpPacket, ETHERNET_HEADER_LEN, EtherType, EthernetFrame,
    ICMPV4_ECHO_REPLY, ICMPV4_ECHO_REQUEST, Icmpv4Packet, IpProtocol, Ipv4Packet, MacAddr, Vni,
};

use super::neigh::Heard;
use super::{DropReason, Gateway, Output, PeerId, PortId, Switch, Transmit, Update, security};

const ARP_FRAME_LEN: usize = ETHERNET_HEADER_LEN + ArpPacket::<&[u8]>::LEN;

impl Switch {
    /// Switches one frame read from a local port that has no virtio-net header.
    pub fn handle_frame(&mut self, now: Instant, port: PortId, frame: &[u8], out: &mut Output) {
        out.clear();
        self.port_input(now, port, frame, 0, Ok(Offload::plain(frame.len())), out);
    }

    /// Switches one read from a TAP queue opened with virtio-net headers: the
    /// [`VNET_HDR_LEN`]-byte header, then the frame. The frame is `read[out.frame_range()]`.
    ///
    /// The header is the container's to choose, so it is trusted for nothing: it is checked
    /// against the frame ([`offload::validate`]) and replaced by [`Output::offload`], the only
    /// header the caller may act on (segmenting, completing the checksum, writing the frame to
    /// other TAPs). The MTU is checked against the segments a super-frame will become.
    pub fn handle_tap_read(&mut self, now: Instant, port: PortId, read: &[u8], out: &mut Output) {
        out.clear();
        let frame = read.get(VNET_HDR_LEN..).unwrap_or_default();
        let offload = VnetHdr::parse(read)
            .map_err(|_| DropReason::Runt)
            .and_then(|hdr| offload::validate(&hdr, frame).map_err(offload_drop));
        let offset = VNET_HDR_LEN.min(read.len());
        self.port_input(now, port, frame, offset, offload, out);
    }

    fn port_input(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &[u8],
        offset: usize,
        offload: Result<Offload, DropReason>,
        out: &mut Output,
    ) {
        out.frame = offset..offset + frame.len();
        let len = frame.len() as u64;
        let Some(p) = self.ports.get_mut(port.0 as usize).and_then(Option::as_mut) else {
            self.counters.drops.bump(DropReason::UnknownPort);
            out.dropped = Some(DropReason::UnknownPort);
            return;
        };
        p.stats.rx_frames += 1;
        p.stats.rx_bytes += len;
        self.counters.port_rx_frames += 1;
        self.counters.port_rx_bytes += len;
        let result = offload.and_then(|offload| {
            out.offload = offload;
            self.frame_from_port(now, port, frame, out)
        });
        match result {
            Ok(()) => {
                self.clamp_mss_from_port(port, frame, out);
                self.count_output(len, out);
            }
            Err(reason) => {
                self.drop_output(reason, out);
                if let Some(p) = self.ports.get_mut(port.0 as usize).and_then(Option::as_mut) {
                    p.stats.drops += 1;
                }
                if reason == DropReason::OverMtu {
                    self.answer_too_big_from_port(now, port, frame, out);
                }
            }
        }
    }

    /// Switches one datagram (the UDP payload) received from `from`: plain VXLAN, or sealed,
    /// which is opened in place first. The frame is `datagram[out.frame_range()]`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &mut [u8],
        out: &mut Output,
    ) {
        out.clear();
        let len = datagram.len() as u64;
        self.counters.peer_rx_datagrams += 1;
        self.counters.peer_rx_bytes += len;
        let mut peer = self.peer_by_addr.get(&from.ip()).copied();
        if let Some(id) = peer
            && let Some(p) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut)
        {
            p.stats.rx_datagrams += 1;
            p.stats.rx_bytes += len;
        }
        if super::is_probe(datagram) {
            self.counters.probes += 1;
            return;
        }
        let result = self.datagram_from_peer(now, from, &mut peer, datagram, out);
        match result {
            Ok(()) => {
                self.clamp_mss_from_peer(datagram, out);
                let inner_len = out.frame.len() as u64;
                self.count_output(inner_len, out);
            }
            Err(reason) => {
                self.drop_output(reason, out);
                if let Some(id) = peer
                    && let Some(p) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut)
                {
                    p.stats.drops += 1;
                    p.stats.drop_reasons.bump(reason);
                }
                if reason == DropReason::OverMtu {
                    self.answer_too_big_from_peer(now, peer, datagram, out);
                }
            }
        }
    }

    fn drop_output(&mut self, reason: DropReason, out: &mut Output) {
        out.ports.clear();
        out.transmits.clear();
        out.reply_port = None;
        out.reply.clear();
        out.dropped = Some(reason);
        self.counters.drops.bump(reason);
    }

    fn count_output(&mut self, frame_len: u64, out: &Output) {
        for &port in &out.ports {
            if let Some(p) = self.ports.get_mut(port.0 as usize).and_then(Option::as_mut) {
                p.stats.tx_frames += 1;
                p.stats.tx_bytes += frame_len;
            }
        }
        let n = out.ports.len() as u64;
        self.counters.port_tx_frames += n;
        self.counters.port_tx_bytes += n * frame_len;
        let datagram_len = frame_len + VXLAN_HEADER_LEN as u64;
        for t in &out.transmits {
            if let Some(p) = self
                .peers
                .get_mut(t.peer.0 as usize)
                .and_then(Option::as_mut)
            {
                p.stats.tx_datagrams += 1;
                p.stats.tx_bytes += datagram_len;
            }
        }
        let n = out.transmits.len() as u64;
        self.counters.peer_tx_datagrams += n;
        self.counters.peer_tx_bytes += n * datagram_len;
        if let Some((port, reply)) = out.reply() {
            let reply_len = reply.len() as u64;
            if let Some(p) = self.ports.get_mut(port.0 as usize).and_then(Option::as_mut) {
                p.stats.tx_frames += 1;
                p.stats.tx_bytes += reply_len;
            }
            self.counters.port_tx_frames += 1;
            self.counters.port_tx_bytes += reply_len;
        }
    }

    /// Learns where `mac` is. A full table (or a full share of `at`) only means the MAC is not
    /// learned: the frame is forwarded all the same, so that one source filling the table
    /// cannot cut everyone else off.
    fn learn(&mut self, now: Instant, vni: Vni, mac: MacAddr, at: Location) {
        match self.fdb.learn(now, vni, mac, at) {
            Learned::New => {
                self.counters.fdb_learned += 1;
                self.schedule_sweep(now);
                self.publish_learned(vni, mac, at);
            }
            Learned::Moved { .. } => {
                self.counters.fdb_moves += 1;
                self.publish_learned(vni, mac, at);
            }
            Learned::Refreshed | Learned::Static => {}
            Learned::Full => self.counters.fdb_full += 1,
        }
    }

    fn snoop_arp(&mut self, now: Instant, vni: Vni, arp: &ArpPacket<&[u8]>, from: Location) {
        let ip = arp.sender_ip();
        let mac = arp.sender_mac();
        if ip.is_unspecified() || !mac.is_unicast() || mac.is_zero() {
            return;
        }
        match self.neighbours.learn(now, vni, ip, mac, from) {
            Heard::News => {
                self.schedule_sweep(now);
                self.publish(Update::Neighbour { vni, ip, mac });
            }
            Heard::Known => {}
            Heard::Full => self.counters.neighbours_full += 1,
        }
    }

    /// Takes `n` tokens from the port's flood bucket.
    fn charge_flood(&mut self, now: Instant, port: PortId, n: u64) -> Result<(), DropReason> {
        let bucket = self.ports.get_mut(port.0 as usize).and_then(Option::as_mut);
        if bucket.is_some_and(|p| p.floods.take(now, n)) {
            Ok(())
        } else {
            Err(DropReason::FloodLimited)
        }
    }

    fn frame_from_port(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &[u8],
        out: &mut Output,
    ) -> Result<(), DropReason> {
        let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Runt)?;
        let Some(p) = self.port_ref(port) else {
            return Err(DropReason::UnknownPort);
        };
        let vni = p.config.vni;
        let src = eth.src_addr();
        let dst = eth.dst_addr();
        if p.config.port_security && src != p.config.mac {
            return Err(DropReason::SpoofedSource);
        }
        if !src.is_unicast() || src.is_zero() {
            return Err(DropReason::Malformed);
        }
        let Some(net) = self.networks.get(&vni) else {
            return Err(DropReason::UnknownVni);
        };
        let (_, l3) = security::inner_ethertype(frame)?;
        let segment_len = out.offload.segment_len.min(frame.len());
        if segment_len > l3 + usize::from(net.config.mtu) {
            return Err(DropReason::OverMtu);
        }
        let gateway = net.config.gateway;
        if p.config.port_security {
            security::check(p, frame, &self.config.allowed_ethertypes)?;
        }
        let arp = if eth.ethertype() == EtherType::ARP {
            Some(ArpPacket::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?)
        } else {
            None
        };
        // What a flood of this frame costs the port: a super-frame counts as its segments.
        let flood_cost = frame.len().div_ceil(segment_len.max(1)) as u64;
        let mut charged = false;
        self.learn(now, vni, src, Location::Port(port));

        if let Some(arp) = arp {
            self.snoop_arp(now, vni, &arp, Location::Port(port));
            if arp.operation() == ArpOperation::Request {
                self.charge_flood(now, port, 1)?;
                charged = true;
            }
            if arp.operation() == ArpOperation::Request && !eth.is_tagged() {
                let target = arp.target_ip();
                let answer = match gateway {
                    Some(gw) if gw.ip == target => {
                        self.counters.gateway_arp_replies += 1;
                        Some(gw.mac)
                    }
                    _ if self.config.arp_suppression => self
                        .neighbours
                        .lookup(vni, target)
                        .filter(|&mac| mac != arp.sender_mac() && mac != src)
                        .inspect(|_| self.counters.arp_suppressed += 1),
                    _ => None,
                };
                if let Some(mac) = answer {
                    write_arp_reply(&mut out.reply, src, &arp, mac);
                    out.reply_port = Some(port);
                    return Ok(());
                }
            }
        }

        if let Some(gw) = gateway
            && dst == gw.mac
        {
            if self.gateway_dns && super::services::is_dns_query(&eth, gw) {
                self.counters.gateway_dns_queries += 1;
                out.service = Some(port);
                return Ok(());
            }
            if write_echo_reply(&mut out.reply, &eth, gw)? {
                self.counters.gateway_echo_replies += 1;
                out.reply_port = Some(port);
                return Ok(());
            }
            return self.frame_to_gateway(port, vni, gw, frame, out);
        }

        let known = if dst.is_unicast() {
            self.fdb.lookup(vni, dst)
        } else {
            None
        };
        match known {
            Some(Location::Port(to)) if to == port => return Err(DropReason::Hairpin),
            Some(Location::Port(to)) => out.ports.push(to),
            Some(Location::Peer(to)) => {
                let Some(peer) = self.peers.get(to.0 as usize).and_then(Option::as_ref) else {
                    return Err(DropReason::UnknownPeer);
                };
                out.transmits.push(Transmit {
                    peer: to,
                    addr: peer.addr,
                });
            }
            None => {
                if !charged {
                    self.charge_flood(now, port, flood_cost)?;
                }
                let Some(net) = self.networks.get(&vni) else {
                    return Err(DropReason::UnknownVni);
                };
                out.ports
                    .extend(net.ports.iter().copied().filter(|&p| p != port));
                out.transmits.extend_from_slice(&net.transmits);
                let dynamic = net.dynamic.iter().take(self.config.flood_dynamic_peers);
                out.transmits.extend(dynamic);
                if out.ports.is_empty() && out.transmits.is_empty() {
                    return Err(DropReason::NoMembers);
                }
                self.counters.flooded += 1;
            }
        }
        self.enforce(now, Some(port), frame, out)?;
        if !out.transmits.is_empty() {
            let Some(net) = self.networks.get(&vni) else {
                return Err(DropReason::UnknownVni);
            };
            out.header = net.header;
            out.vni = vni;
            out.sealed = net.config.sealed;
            out.flow_hash = wire::flow_hash(frame);
        }
        Ok(())
    }

    fn datagram_from_peer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        peer: &mut Option<PeerId>,
        datagram: &mut [u8],
        out: &mut Output,
    ) -> Result<(), DropReason> {
        let (vni, range, sealed) = if tunnel::classify(datagram) == tunnel::Kind::Sealed {
            let (vni, range, by) = self.open(datagram)?;
            *peer = Some(by);
            if range.is_empty() {
                // A keepalive: it confirmed the session (opening it did); nothing to forward.
                self.counters.keepalives += 1;
                return Ok(());
            }
            (vni, range, true)
        } else {
            if peer.is_none() && !self.config.accept_unknown_peers {
                return Err(DropReason::UnknownPeer);
            }
            let (vni, range) = tunnel::decap_range(datagram)?;
            (vni, range, false)
        };
        out.frame = range.clone();
        out.vni = vni;
        let Some(net) = self.networks.get(&vni) else {
            return Err(DropReason::UnknownVni);
        };
        if net.config.sealed && !sealed {
            return Err(DropReason::Unsealed);
        }
        let gateway = net.config.gateway;
        let mtu = usize::from(net.config.mtu);
        let id = match *peer {
            Some(id) => {
                let Some(p) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
                    return Err(DropReason::UnknownPeer);
                };
                if p.dynamic {
                    p.last_seen = Some(now);
                }
                if !p.vnis.contains(&vni) {
                    if !p.dynamic {
                        return Err(DropReason::NotMember);
                    }
                    p.vnis.push(vni);
                    p.vnis.sort_unstable();
                    let addr = p.addr;
                    self.rebuild_membership(id);
                    self.publish(Update::PeerFound { addr, vni });
                }
                id
            }
            None => {
                if self.dynamic_peers >= self.config.max_dynamic_peers {
                    return Err(DropReason::UnknownPeer);
                }
                let to = SocketAddr::new(from.ip(), self.config.vxlan_port);
                let id = self.insert_peer(to, vec![vni], true, Some(now));
                self.counters.dynamic_peers_created += 1;
                self.publish(Update::PeerFound { addr: to, vni });
                self.schedule_sweep(now);
                if let Some(p) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) {
                    p.stats.rx_datagrams += 1;
                    p.stats.rx_bytes += datagram.len() as u64;
                }
                *peer = Some(id);
                id
            }
        };

        let inner = &datagram[range];
        let eth = EthernetFrame::new_checked(inner).map_err(|_| DropReason::Runt)?;
        let src = eth.src_addr();
        let dst = eth.dst_addr();
        if !src.is_unicast() || src.is_zero() {
            return Err(DropReason::Malformed);
        }
        let (_, l3) = security::inner_ethertype(inner)?;
        if inner.len() > l3 + mtu {
            out.offload = peer_super_frame(inner, mtu).ok_or(DropReason::OverMtu)?;
        }
        let arp = if eth.ethertype() == EtherType::ARP {
            Some(ArpPacket::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?)
        } else {
            None
        };
        self.learn(now, vni, src, Location::Peer(id));
        if let Some(arp) = arp {
            self.snoop_arp(now, vni, &arp, Location::Peer(id));
        }
        if gateway.is_some_and(|gw| gw.mac == dst) {
            return self.datagram_to_gateway(vni, out);
        }
        let known = if dst.is_unicast() {
            self.fdb.lookup(vni, dst)
        } else {
            None
        };
        match known {
            Some(Location::Port(to)) => out.ports.push(to),
            Some(Location::Peer(_)) => return Err(DropReason::NotLocal),
            None => {
                let Some(net) = self.networks.get(&vni) else {
                    return Err(DropReason::UnknownVni);
                };
                out.ports.extend_from_slice(&net.ports);
                if out.ports.is_empty() {
                    return Err(DropReason::NoMembers);
                }
                self.counters.flooded += 1;
            }
        }
        self.enforce(now, None, inner, out)
    }
}

/// A TCP segment from a peer larger than the MTU: a super-frame from a peer that keeps
/// offloads end to end (a Linux VXLAN device over a veth hands the socket the unsegmented
/// packet), to be cut into MTU-sized segments before delivery. It passes the same checks as a
/// super-frame from a port; anything else over the MTU is dropped.
fn peer_super_frame(frame: &[u8], mtu: usize) -> Option<Offload> {
    let ip = wire::IpHeaders::locate(frame).ok()?;
    if ip.proto != IpProtocol::TCP.0 {
        return None;
    }
    let tcp_header = usize::from(*frame.get(ip.l4 + 12)? >> 4) * 4;
    let gso_size = mtu.checked_sub(ip.l4 - ip.l3 + tcp_header)?;
    let hdr = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: if ip.v6 {
            VnetHdr::GSO_TCPV6
        } else {
            VnetHdr::GSO_TCPV4
        },
        hdr_len: 0,
        gso_size: u16::try_from(gso_size).ok()?,
        csum_start: u16::try_from(ip.l4).ok()?,
        csum_offset: 16,
    };
    offload::validate(&hdr, frame).ok()
}

/// The drop reason for a vnet header that does not describe its frame.
fn offload_drop(e: OffloadError) -> DropReason {
    match e {
        OffloadError::GsoSizeTooSmall(_) => DropReason::GsoTooSmall,
        OffloadError::TsoFlags => DropReason::TsoFlags,
        _ => DropReason::BadOffload,
    }
}

/// Writes into `buf` the ARP reply to `request` (sent by `requester`) saying the target IP is at
/// `mac`.
fn write_arp_reply(
    buf: &mut Vec<u8>,
    requester: MacAddr,
    request: &ArpPacket<&[u8]>,
    mac: MacAddr,
) {
    buf.clear();
    buf.resize(ARP_FRAME_LEN, 0);
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_dst_addr(requester);
    eth.set_src_addr(mac);
    eth.set_outer_ethertype(EtherType::ARP);
    let mut arp = ArpPacket::new_unchecked(eth.payload_mut());
    arp.fill_header();
    arp.set_operation(ArpOperation::Reply);
    arp.set_sender_mac(mac);
    arp.set_sender_ip(request.target_ip());
    arp.set_target_mac(request.sender_mac());
    arp.set_target_ip(request.sender_ip());
}

/// If `eth` is an ICMP echo request to the gateway, writes the echo reply into `buf` and returns
/// true; false if it is something else for the gateway; an error if it is malformed.
pub(super) fn write_echo_reply(
    buf: &mut Vec<u8>,
    eth: &EthernetFrame<&[u8]>,
    gw: Gateway,
) -> Result<bool, DropReason> {
    if eth.is_tagged() || eth.ethertype() != EtherType::IPV4 {
        return Ok(false);
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
    if !ip.verify_checksum() {
        return Err(DropReason::Malformed);
    }
    if ip.dst_addr() != gw.ip || ip.protocol() != IpProtocol::ICMP || ip.is_fragment() {
        return Ok(false);
    }
    let icmp = Icmpv4Packet::new_checked(ip.payload()).map_err(|_| DropReason::Malformed)?;
    if icmp.msg_type() != ICMPV4_ECHO_REQUEST || icmp.code() != 0 {
        return Ok(false);
    }
    if !icmp.verify_checksum() {
        return Err(DropReason::Malformed);
    }
    let requester = eth.src_addr();
    let requester_ip = ip.src_addr();
    let len = ETHERNET_HEADER_LEN + usize::from(ip.total_len());
    let Some(request) = eth.clone().into_inner().get(..len) else {
        return Err(DropReason::Malformed);
    };
    buf.clear();
    buf.extend_from_slice(request);
    let mut reply = EthernetFrame::new_unchecked(&mut buf[..]);
    reply.set_dst_addr(requester);
    reply.set_src_addr(gw.mac);
    let mut ip = Ipv4Packet::new_unchecked(reply.payload_mut());
    ip.set_src_addr(gw.ip);
    ip.set_dst_addr(requester_ip);
    ip.set_ttl(64);
    ip.fill_checksum();
    let mut icmp = Icmpv4Packet::new_unchecked(ip.payload_mut());
    icmp.set_msg_type(ICMPV4_ECHO_REPLY);
    icmp.fill_checksum();
    Ok(true)
}
