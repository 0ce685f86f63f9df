//! MTU done right: a frame too large for the network is answered, and TCP never asks for one.
//!
//! - A frame dropped as larger than the network's MTU (`over_mtu`: from a port, or each segment
//!   of a super-frame; from a peer, the decapsulated frame) is answered with ICMP "fragmentation
//!   needed" (IPv4, type 3 code 4, RFC 1191) or ICMPv6 "packet too big" (type 2, RFC 8201)
//!   carrying the network's MTU, from the network's gateway (its IPv4 address; for IPv6 the
//!   link-local address of its MAC), so the sender's path MTU discovery learns the size instead
//!   of timing out. The error goes back where the frame came from: to the port, or sealed or
//!   plain to the peer that sent it.
//! - Never in answer to an IP packet that fits (a frame over the MTU only by its padding), to
//!   an ICMP error, to a fragment other than the first, to a frame for a multicast or broadcast
//!   address (Ethernet or IP), to a source that cannot be answered (unspecified, multicast,
//!   broadcast, loopback), on a network without a gateway, or to a frame port security
//!   refuses; and at most [`TOO_BIG_RATE`] a second (bursts of [`TOO_BIG_BURST`])
//!   per port and per peer, per replica, so a sender cannot make the switch amplify.
//! - The error quotes as much of the offending packet as fits in 576 bytes (IPv4, RFC 1812) or
//!   1280 (IPv6, RFC 4443): always the IP header and more than the 8 bytes after it.
//! - An IPv4 packet without "don't fragment" is answered the same way (the switch never
//!   fragments: it is still dropped and counted): the sender's stack then fragments to the MTU
//!   itself, where silence would lose every such packet.
//! - TCP segments with SYN (SYN and SYN-ACK), from ports and from peers, have an MSS option
//!   larger than the MTU allows (IPv4: MTU - 40, IPv6: MTU - 60) lowered to it, the checksum
//!   updated incrementally (RFC 1624) or left alone when it is still partial (the sender's
//!   offload completes it over the new bytes). A SYN without the option is left as it is: the
//!   defaults it implies (536 and 1220) fit any MTU of at least 576 (IPv6: 1280). Per network,
//!   [`NetworkConfig::clamp_mss`](super::NetworkConfig::clamp_mss).

use std::time::Instant;

use crate::offload::{self, VnetHdr};
use crate::tunnel::VXLAN_HEADER_LEN;
use crate::wire::{
    self, EthernetFrame, ICMPV4_DEST_UNREACHABLE, ICMPV4_FRAG_NEEDED, ICMPV6_ERROR_HEADER_LEN,
    IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN, Icmpv4Packet, Icmpv6Packet, IpHeaders, IpProtocol,
    Ipv4Packet, Ipv6Packet, TCP_CHECKSUM_AT, TcpPacket, icmpv6_type, update_checksum,
};

use super::route::RouteRewrite;
use super::{Gateway, Output, PeerId, PortId, Switch, Transmit, security};

/// "Too big" errors a port or a peer may draw a second (per replica).
pub const TOO_BIG_RATE: u64 = 100;
/// How many it may draw at once after a quiet spell.
pub const TOO_BIG_BURST: u64 = 20;

/// The largest ICMPv4 error, IP header included (RFC 1812 section 4.3.2.3).
const IPV4_ERROR_MAX: usize = 576;
/// The largest ICMPv6 error, IPv6 header included (RFC 4443 section 2.4 (c)).
const IPV6_ERROR_MAX: usize = 1280;
/// ICMPv4 header before the quoted packet.
const ICMPV4_HEADER_LEN: usize = 8;
const ERROR_TTL: u8 = 64;
/// What an MSS leaves out of the MTU: the IP and TCP headers without options.
const IPV4_MSS_OVERHEAD: u16 = 40;
const IPV6_MSS_OVERHEAD: u16 = 60;

/// A change to a TCP SYN: its MSS value and, when the checksum was complete, the checksum that
/// goes with it. Offsets are from the start of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MssRewrite {
    mss_at: usize,
    mss: u16,
    checksum: Option<(usize, u16)>,
}

impl MssRewrite {
    /// Writes the change into `frame`, the frame it was planned on.
    pub(crate) fn apply(&self, frame: &mut [u8]) {
        if let Some(field) = frame.get_mut(self.mss_at..self.mss_at + 2) {
            field.copy_from_slice(&self.mss.to_be_bytes());
        }
        if let Some((at, checksum)) = self.checksum
            && let Some(field) = frame.get_mut(at..at + 2)
        {
            field.copy_from_slice(&checksum.to_be_bytes());
        }
    }
}

impl Switch {
    /// After a frame from `port` was dropped as over the MTU: answers it with the error, when
    /// the rules allow, as the output's reply.
    pub(super) fn answer_too_big_from_port(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &[u8],
        out: &mut Output,
    ) {
        let Some(p) = self.port_ref(port) else {
            return;
        };
        let Some(net) = self.networks.get(&p.config.vni) else {
            return;
        };
        let Some(gateway) = net.config.gateway else {
            return;
        };
        if p.config.port_security
            && security::check(p, frame, &self.config.allowed_ethertypes).is_err()
        {
            return;
        }
        if !write_too_big(&mut out.reply, frame, gateway, net.config.mtu) {
            out.reply.clear();
            return;
        }
        let Some(p) = self.ports.get_mut(port.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        if !p.too_big.take(now, 1) {
            self.counters.too_big_limited += 1;
            out.reply.clear();
            return;
        }
        let len = out.reply.len() as u64;
        p.stats.tx_frames += 1;
        p.stats.tx_bytes += len;
        self.counters.port_tx_frames += 1;
        self.counters.port_tx_bytes += len;
        self.counters.too_big_sent += 1;
        out.reply_port = Some(port);
    }

    /// After a datagram from `peer` was dropped because its frame, `datagram[out.frame]`, is
    /// over the MTU of network `out.vni`: answers it with the error, when the rules allow, as
    /// the output's reply to that peer.
    pub(super) fn answer_too_big_from_peer(
        &mut self,
        now: Instant,
        peer: Option<PeerId>,
        datagram: &[u8],
        out: &mut Output,
    ) {
        let Some(peer) = peer else {
            return;
        };
        let Some(net) = self.networks.get(&out.vni) else {
            return;
        };
        let Some(gateway) = net.config.gateway else {
            return;
        };
        let Some(frame) = datagram.get(out.frame.clone()) else {
            return;
        };
        if !write_too_big(&mut out.reply, frame, gateway, net.config.mtu) {
            out.reply.clear();
            return;
        }
        let (header, sealed) = (net.header, net.config.sealed);
        let Some(p) = self.peers.get_mut(peer.0 as usize).and_then(Option::as_mut) else {
            out.reply.clear();
            return;
        };
        if !p.too_big.take(now, 1) {
            self.counters.too_big_limited += 1;
            out.reply.clear();
            return;
        }
        let len = (out.reply.len() + VXLAN_HEADER_LEN) as u64;
        p.stats.tx_datagrams += 1;
        p.stats.tx_bytes += len;
        self.counters.peer_tx_datagrams += 1;
        self.counters.peer_tx_bytes += len;
        self.counters.too_big_sent += 1;
        out.reply_peer = Some(Transmit { peer, addr: p.addr });
        out.header = header;
        out.sealed = sealed;
        out.flow_hash = wire::flow_hash(&out.reply);
    }

    /// Plans the MSS clamp of a frame from `port` that is going somewhere; the caller applies
    /// it with [`Output::rewrite`].
    pub(super) fn clamp_mss_from_port(&mut self, port: PortId, frame: &[u8], out: &mut Output) {
        if (out.ports.is_empty() && out.transmits.is_empty()) || out.offload.is_gso() {
            return;
        }
        let Some(net) = self
            .port_ref(port)
            .and_then(|p| self.networks.get(&p.config.vni))
        else {
            return;
        };
        if !net.config.clamp_mss {
            return;
        }
        // A routed frame fits both networks; one replaced by an ARP request needs nothing.
        let mtu = match out.rewrite.route {
            None => net.config.mtu,
            Some(RouteRewrite::Route { .. }) => self
                .networks
                .get(&out.vni)
                .map_or(net.config.mtu, |to| to.config.mtu.min(net.config.mtu)),
            Some(RouteRewrite::Resolve { .. }) => return,
        };
        let partial = out.offload.hdr.flags & VnetHdr::F_NEEDS_CSUM != 0;
        if let Some(rewrite) = plan_mss_clamp(frame, mtu, partial) {
            out.rewrite.mss = Some(rewrite);
            self.counters.mss_clamped += 1;
        }
    }

    /// Clamps the MSS of the frame from a peer, `datagram[out.frame]`, in place.
    pub(super) fn clamp_mss_from_peer(&mut self, datagram: &mut [u8], out: &Output) {
        if out.ports.is_empty() || out.offload.is_gso() {
            return;
        }
        let Some(net) = self.networks.get(&out.vni) else {
            return;
        };
        if !net.config.clamp_mss {
            return;
        }
        let mtu = net.config.mtu;
        let Some(frame) = datagram.get_mut(out.frame.clone()) else {
            return;
        };
        if plan_mss_clamp(frame, mtu, false).is_none() {
            return;
        }
        // A sender whose checksum offload never ran left a partial checksum, which the caller
        // would complete after delivery: complete it now, so the update below starts from a
        // full one.
        offload::complete_partial_checksum(frame);
        if let Some(rewrite) = plan_mss_clamp(frame, mtu, false) {
            rewrite.apply(frame);
            self.counters.mss_clamped += 1;
        }
    }
}

/// Writes into `buf` the "too big" error answering `frame` from `gateway`, for a network whose
/// MTU is `mtu`; false (with `buf` in any state) when the frame must not be answered.
pub(crate) fn write_too_big(buf: &mut Vec<u8>, frame: &[u8], gateway: Gateway, mtu: u16) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    let (sender, to) = (eth.src_addr(), eth.dst_addr());
    if !to.is_unicast() || !sender.is_unicast() || sender.is_zero() {
        return false;
    }
    let Ok(ip) = IpHeaders::locate(frame) else {
        return false;
    };
    let Some(packet) = frame.get(ip.l3..ip.end) else {
        return false;
    };
    // A frame over the MTU only by what follows its IP packet (padding) tells nothing about
    // the path; a packet over the MTU is always longer than its header and 8 bytes.
    if packet.len() <= usize::from(mtu) {
        return false;
    }
    buf.clear();
    // The Ethernet header, VLAN tags and all, turned around.
    buf.extend_from_slice(&frame[..ip.l3]);
    let mut l2 = EthernetFrame::new_unchecked(&mut buf[..]);
    l2.set_dst_addr(sender);
    l2.set_src_addr(gateway.mac);
    if ip.v6 {
        write_packet_too_big(buf, packet, gateway, mtu)
    } else {
        write_frag_needed(buf, packet, gateway, mtu)
    }
}

/// Appends to `buf` the IPv4 packet of a "fragmentation needed" answering `packet`.
fn write_frag_needed(buf: &mut Vec<u8>, packet: &[u8], gateway: Gateway, mtu: u16) -> bool {
    let Ok(offending) = Ipv4Packet::new_checked(packet) else {
        return false;
    };
    let (src, dst) = (offending.src_addr(), offending.dst_addr());
    if offending.fragment_offset() != 0
        || dst.is_multicast()
        || dst.is_broadcast()
        || src.is_unspecified()
        || src.is_multicast()
        || src.is_broadcast()
        || src.is_loopback()
    {
        return false;
    }
    if offending.protocol() == IpProtocol::ICMP {
        match Icmpv4Packet::new_checked(offending.payload()) {
            Ok(icmp) if !icmp.is_error() => {}
            _ => return false,
        }
    }
    let quoted = packet
        .len()
        .min(IPV4_ERROR_MAX - IPV4_MIN_HEADER_LEN - ICMPV4_HEADER_LEN);
    let total = IPV4_MIN_HEADER_LEN + ICMPV4_HEADER_LEN + quoted;
    let start = buf.len();
    buf.resize(start + total, 0);
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[start..]);
    ip.set_version_and_header_len(IPV4_MIN_HEADER_LEN);
    // `total` is at most 576.
    ip.set_total_len(total as u16);
    ip.set_ttl(ERROR_TTL);
    ip.set_protocol(IpProtocol::ICMP);
    ip.set_src_addr(gateway.ip);
    ip.set_dst_addr(src);
    ip.fill_checksum();
    let mut icmp = Icmpv4Packet::new_unchecked(ip.payload_mut());
    icmp.set_msg_type(ICMPV4_DEST_UNREACHABLE);
    icmp.set_code(ICMPV4_FRAG_NEEDED);
    icmp.set_next_hop_mtu(mtu);
    icmp.data_mut().copy_from_slice(&packet[..quoted]);
    icmp.fill_checksum();
    true
}

/// Appends to `buf` the IPv6 packet of a "packet too big" answering `packet`.
fn write_packet_too_big(buf: &mut Vec<u8>, packet: &[u8], gateway: Gateway, mtu: u16) -> bool {
    let Ok(offending) = Ipv6Packet::new_checked(packet) else {
        return false;
    };
    let (src, dst) = (offending.src_addr(), offending.dst_addr());
    if dst.is_multicast() || src.is_unspecified() || src.is_multicast() || src.is_loopback() {
        return false;
    }
    let Ok(upper) = offending.upper_layer() else {
        return false;
    };
    if upper.later_fragment {
        return false;
    }
    if upper.protocol == IpProtocol::ICMPV6 {
        match Icmpv6Packet::new_checked(upper.payload) {
            Ok(icmp) if !icmp.is_error() => {}
            _ => return false,
        }
    }
    let quoted = packet
        .len()
        .min(IPV6_ERROR_MAX - IPV6_HEADER_LEN - ICMPV6_ERROR_HEADER_LEN);
    let payload = ICMPV6_ERROR_HEADER_LEN + quoted;
    let from = gateway.mac.link_local();
    let start = buf.len();
    buf.resize(start + IPV6_HEADER_LEN + payload, 0);
    let mut ip = Ipv6Packet::new_unchecked(&mut buf[start..]);
    ip.set_version();
    // `payload` is at most 1240.
    ip.set_payload_len(payload as u16);
    ip.set_next_header(IpProtocol::ICMPV6);
    ip.set_hop_limit(ERROR_TTL);
    ip.set_src_addr(from);
    ip.set_dst_addr(src);
    let mut icmp = Icmpv6Packet::new_unchecked(ip.payload_mut());
    icmp.set_msg_type(icmpv6_type::PACKET_TOO_BIG);
    icmp.set_code(0);
    icmp.set_mtu(u32::from(mtu));
    icmp.error_data_mut().copy_from_slice(&packet[..quoted]);
    icmp.fill_checksum(from, src);
    true
}

/// The MSS clamp of `frame` for a network of MTU `mtu`: `None` unless it is a TCP SYN whose MSS
/// option asks for more than the MTU allows. `partial`: the checksum field holds only the
/// pseudo-header sum, to be completed over the segment later, so it stays as it is.
pub(crate) fn plan_mss_clamp(frame: &[u8], mtu: u16, partial: bool) -> Option<MssRewrite> {
    let ip = IpHeaders::locate(frame).ok()?;
    if ip.proto != IpProtocol::TCP.0 || ip.fragment {
        return None;
    }
    let tcp = TcpPacket::new_checked(frame.get(ip.l4..ip.end)?).ok()?;
    let flags = tcp.flags();
    if flags & TcpPacket::<&[u8]>::SYN == 0 || flags & TcpPacket::<&[u8]>::RST != 0 {
        return None;
    }
    let overhead = if ip.v6 {
        IPV6_MSS_OVERHEAD
    } else {
        IPV4_MSS_OVERHEAD
    };
    let limit = mtu.checked_sub(overhead)?;
    let (at, mss) = tcp.mss()?;
    if mss <= limit {
        return None;
    }
    let checksum = if partial {
        None
    } else {
        // The checksum covers the segment from the TCP header: a value at an odd offset from
        // it adds its bytes the other way round.
        let (old, new) = if at % 2 == 0 {
            (mss, limit)
        } else {
            (mss.swap_bytes(), limit.swap_bytes())
        };
        Some((
            ip.l4 + TCP_CHECKSUM_AT,
            update_checksum(tcp.checksum(), old, new),
        ))
    };
    Some(MssRewrite {
        mss_at: ip.l4 + at,
        mss: limit,
        checksum,
    })
}

#[cfg(test)]
mod tests;
