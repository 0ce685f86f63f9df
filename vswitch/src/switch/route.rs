//! The gateway as a router: routing between connected networks, and the host port.
//!
//! Routing is distributed: a frame a container sends to its gateway's MAC for an address in a
//! connected network is routed by the switch of the node where it enters, never hairpinned
//! through a router node. The frame is rewritten in place (source MAC: the destination
//! network's gateway MAC on this node; destination MAC: the target's, from the neighbour table;
//! TTL decremented, the IPv4 header checksum patched) and switched in the destination network,
//! locally or encapsulated with that network's VNI. A TTL that would reach zero is answered with
//! an ICMP time-exceeded from the source network's gateway. A target whose MAC is not known yet
//! is asked for with an ARP request from the destination network's gateway, flooded in that
//! network, in place of the frame (which is lost, as a router drops a packet awaiting ARP): the
//! answer teaches the neighbour table, and the sender's retransmission is routed.
//!
//! The host port is a port holding the gateway's MAC (a TAP in the node's own namespace holding
//! the gateway's address): what the switch does not answer or route for the gateway, it hands
//! to the host, which reaches containers (and is reached by them) through it.
//!
//! Only IPv4 is routed; other frames to the gateway go to the host port when there is one.

use ipnet::Ipv4Net;
use rustc_hash::FxHashMap;

use crate::wire::{
    self, ArpOperation, ArpPacket, ETHERNET_HEADER_LEN, EtherType, EthernetFrame, Icmpv4Packet,
    IpProtocol, Ipv4Packet, MacAddr, Vni,
};

use super::config::PortConfig;
use super::{DropReason, Gateway, Output, PortId, Switch, SwitchError};

/// A network reachable from another one through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The destination network.
    pub vni: Vni,
    /// Its IPv4 subnet.
    pub subnet: Ipv4Net,
}

/// What the caller must do to a routed frame before forwarding it, with [`Output::rewrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RouteRewrite {
    /// Set the MACs, decrement the TTL and patch the IPv4 header checksum.
    Route {
        /// New source MAC.
        src: MacAddr,
        /// New destination MAC.
        dst: MacAddr,
    },
    /// Forward, instead of the frame, an ARP request for `target` from `gateway`.
    Resolve {
        /// The asking gateway.
        gateway: Gateway,
        /// The address asked for.
        target: core::net::Ipv4Addr,
    },
}

/// Routes and host ports of the switch's networks.
#[derive(Debug, Clone, Default)]
pub(super) struct Router {
    routes: FxHashMap<Vni, Vec<Route>>,
    host_ports: FxHashMap<Vni, PortId>,
}

impl Router {
    /// Forgets everything about `vni`, as a source and as a destination.
    pub(super) fn remove_vni(&mut self, vni: Vni) {
        self.routes.remove(&vni);
        for routes in self.routes.values_mut() {
            routes.retain(|r| r.vni != vni);
        }
        self.host_ports.remove(&vni);
    }

    pub(super) fn remove_port(&mut self, port: PortId) {
        self.host_ports.retain(|_, &mut p| p != port);
    }
}

/// An ARP request frame's length.
const ARP_FRAME_LEN: usize = ETHERNET_HEADER_LEN + ArpPacket::<&[u8]>::LEN;
/// ICMP time exceeded.
const ICMPV4_TIME_EXCEEDED: u8 = 11;
/// Of the original datagram, an ICMP error quotes the IP header and this much more.
const ICMP_QUOTE: usize = 8;

impl Switch {
    /// Sets the networks frames from `from` may be routed to (replacing earlier routes).
    /// Routes are one way: connecting two networks both ways takes a route each way.
    pub fn set_routes(&mut self, from: Vni, routes: Vec<Route>) -> Result<(), SwitchError> {
        if !self.networks.contains_key(&from) {
            return Err(SwitchError::UnknownVni(from));
        }
        if routes.is_empty() {
            self.router.routes.remove(&from);
        } else {
            self.router.routes.insert(from, routes);
        }
        Ok(())
    }

    /// The routes out of `from`.
    pub fn routes(&self, from: Vni) -> &[Route] {
        self.router.routes.get(&from).map_or(&[], Vec::as_slice)
    }

    /// Adds the network's host port: a port with the gateway's MAC and no port security (the
    /// host sends from any address), to which the switch hands what it does not answer or route
    /// for the gateway. Returns the existing one if there is one.
    pub fn add_host_port(&mut self, vni: Vni) -> Result<PortId, SwitchError> {
        if let Some(&port) = self.router.host_ports.get(&vni) {
            return Ok(port);
        }
        let Some(net) = self.networks.get(&vni) else {
            return Err(SwitchError::UnknownVni(vni));
        };
        let Some(gw) = net.config.gateway else {
            return Err(SwitchError::NoGateway(vni));
        };
        let mut config = PortConfig::new(vni, gw.mac);
        config.port_security = false;
        let port = self.insert_port(config)?;
        self.router.host_ports.insert(vni, port);
        Ok(port)
    }

    /// The network's host port.
    pub fn host_port(&self, vni: Vni) -> Option<PortId> {
        self.router.host_ports.get(&vni).copied()
    }

    /// A frame from a local port to the gateway's MAC that is neither ARP for the gateway nor an
    /// echo request to it: routed, handed to the host port, or dropped.
    pub(super) fn frame_to_gateway(
        &mut self,
        port: PortId,
        vni: Vni,
        gw: Gateway,
        frame: &[u8],
        out: &mut Output,
    ) -> Result<(), DropReason> {
        if self.route(port, vni, gw, frame, out)? {
            return Ok(());
        }
        match self.router.host_ports.get(&vni) {
            Some(&host) if host != port => {
                out.ports.push(host);
                Ok(())
            }
            _ => Err(DropReason::Gateway),
        }
    }

    /// A frame from a peer to this node's gateway MAC: for the host, if it has a port.
    pub(super) fn datagram_to_gateway(
        &mut self,
        vni: Vni,
        out: &mut Output,
    ) -> Result<(), DropReason> {
        match self.router.host_ports.get(&vni) {
            Some(&host) => {
                out.ports.push(host);
                Ok(())
            }
            None => Err(DropReason::Gateway),
        }
    }

    /// Routes the frame if its destination is in a network connected to `vni`; false if not.
    fn route(
        &mut self,
        port: PortId,
        vni: Vni,
        gw: Gateway,
        frame: &[u8],
        out: &mut Output,
    ) -> Result<bool, DropReason> {
        let Some(routes) = self.router.routes.get(&vni) else {
            return Ok(false);
        };
        let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Malformed)?;
        if eth.is_tagged() || eth.ethertype() != EtherType::IPV4 {
            return Ok(false);
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
        let dst = ip.dst_addr();
        let Some(route) = routes.iter().find(|r| r.subnet.contains(&dst)).copied() else {
            return Ok(false);
        };
        if !ip.verify_checksum() {
            return Err(DropReason::Malformed);
        }
        let Some(target) = self.networks.get(&route.vni) else {
            return Err(DropReason::NoRoute);
        };
        let Some(target_gw) = target.config.gateway else {
            return Err(DropReason::NoRoute);
        };
        if dst == target_gw.ip {
            // The other network's gateway is this switch too: it answers echo requests as it
            // does for its own, from the MAC the sender addressed.
            let as_seen = Gateway {
                ip: target_gw.ip,
                mac: gw.mac,
            };
            if super::path::write_echo_reply(&mut out.reply, &eth, as_seen)? {
                self.counters.gateway_echo_replies += 1;
                out.reply_port = Some(port);
                return Ok(true);
            }
            return Err(DropReason::Gateway);
        }
        if ip.ttl() <= 1 {
            write_time_exceeded(&mut out.reply, &eth, &ip, gw);
            self.counters.ttl_exceeded += 1;
            out.reply_port = Some(port);
            return Ok(true);
        }
        let segment_len = out.offload.segment_len.min(frame.len());
        if segment_len > eth.header_len() + usize::from(target.config.mtu) {
            return Err(DropReason::OverMtu);
        }
        out.vni = route.vni;
        out.header = target.header;
        out.sealed = target.config.sealed;
        out.flow_hash = wire::flow_hash(frame);
        let Some(mac) = self.neighbours.lookup(route.vni, dst) else {
            // Ask, in the destination network, who has the address.
            out.rewrite.route = Some(RouteRewrite::Resolve {
                gateway: target_gw,
                target: dst,
            });
            out.ports.extend_from_slice(&target.ports);
            out.transmits.extend_from_slice(&target.transmits);
            let dynamic = target.dynamic.iter().take(self.config.flood_dynamic_peers);
            out.transmits.extend(dynamic);
            if out.ports.is_empty() && out.transmits.is_empty() {
                return Err(DropReason::NoMembers);
            }
            self.counters.route_resolves += 1;
            return Ok(true);
        };
        match self.fdb.lookup(route.vni, mac) {
            Some(crate::fdb::Location::Port(to)) => out.ports.push(to),
            Some(crate::fdb::Location::Peer(to)) => {
                let Some(peer) = self.peers.get(to.0 as usize).and_then(Option::as_ref) else {
                    return Err(DropReason::UnknownPeer);
                };
                out.transmits.push(super::Transmit {
                    peer: to,
                    addr: peer.addr,
                });
            }
            None => {
                out.ports.extend_from_slice(&target.ports);
                out.transmits.extend_from_slice(&target.transmits);
                if out.ports.is_empty() && out.transmits.is_empty() {
                    return Err(DropReason::NoMembers);
                }
            }
        }
        out.rewrite.route = Some(RouteRewrite::Route {
            src: target_gw.mac,
            dst: mac,
        });
        self.counters.routed += 1;
        Ok(true)
    }
}

impl Output {
    /// Makes `input[self.frame_range()]` the routed frame to forward; false when it was
    /// replaced by an ARP request (then the frame range and offload are the request's).
    pub(super) fn apply_route(&mut self, route: RouteRewrite, input: &mut [u8]) -> bool {
        match route {
            RouteRewrite::Route { src, dst } => {
                if let Some(frame) = input.get_mut(self.frame.clone()) {
                    decrement_ttl(frame, src, dst);
                }
                true
            }
            RouteRewrite::Resolve { gateway, target } => {
                let start = self.frame.start;
                if let Some(buf) = input.get_mut(start..start + ARP_FRAME_LEN) {
                    write_arp_request(buf, gateway, target);
                    self.frame = start..start + ARP_FRAME_LEN;
                    self.offload = crate::offload::Offload::plain(ARP_FRAME_LEN);
                }
                false
            }
        }
    }
}

/// Sets the MACs and decrements the TTL of an untagged IPv4 frame whose TTL is above 1,
/// patching the header checksum (RFC 1624).
fn decrement_ttl(frame: &mut [u8], src: MacAddr, dst: MacAddr) {
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.set_src_addr(src);
    eth.set_dst_addr(dst);
    let Some(ip) = frame.get_mut(ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + 12) else {
        return;
    };
    let ttl = ip[8];
    if ttl <= 1 {
        return;
    }
    ip[8] = ttl - 1;
    // The TTL is the high byte of the 16-bit word it shares with the protocol: that word drops
    // by 0x0100, so the one's-complement checksum rises by 0x0100 (with end-around carry).
    let sum = u32::from(u16::from_be_bytes([ip[10], ip[11]])) + 0x0100;
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(sum as u16).to_be_bytes());
}

/// Writes into `buf` (exactly [`ARP_FRAME_LEN`] bytes) a broadcast ARP request for `target`
/// from `gateway`.
fn write_arp_request(buf: &mut [u8], gateway: Gateway, target: core::net::Ipv4Addr) {
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_dst_addr(MacAddr::BROADCAST);
    eth.set_src_addr(gateway.mac);
    eth.set_outer_ethertype(EtherType::ARP);
    let mut arp = ArpPacket::new_unchecked(eth.payload_mut());
    arp.fill_header();
    arp.set_operation(ArpOperation::Request);
    arp.set_sender_mac(gateway.mac);
    arp.set_sender_ip(gateway.ip);
    arp.set_target_mac(MacAddr([0; 6]));
    arp.set_target_ip(target);
}

/// Writes into `buf` the ICMP time-exceeded error for `ip` (carried by `eth`), from `gw`.
fn write_time_exceeded(
    buf: &mut Vec<u8>,
    eth: &EthernetFrame<&[u8]>,
    ip: &Ipv4Packet<&[u8]>,
    gw: Gateway,
) {
    let original = eth.payload();
    let quote = original
        .len()
        .min(ip.header_len() + ICMP_QUOTE)
        .min(usize::from(ip.total_len()));
    let icmp_len = 8 + quote;
    let ip_len = 20 + icmp_len;
    buf.clear();
    buf.resize(ETHERNET_HEADER_LEN + ip_len, 0);
    let mut reply = EthernetFrame::new_unchecked(&mut buf[..]);
    reply.set_dst_addr(eth.src_addr());
    reply.set_src_addr(gw.mac);
    reply.set_outer_ethertype(EtherType::IPV4);
    let mut out = Ipv4Packet::new_unchecked(reply.payload_mut());
    out.set_version_and_header_len(20);
    out.set_total_len(ip_len as u16);
    out.set_ttl(64);
    out.set_protocol(IpProtocol::ICMP);
    out.set_src_addr(gw.ip);
    out.set_dst_addr(ip.src_addr());
    out.fill_checksum();
    let payload = out.payload_mut();
    payload[8..8 + quote].copy_from_slice(&original[..quote]);
    let mut icmp = Icmpv4Packet::new_unchecked(payload);
    icmp.set_msg_type(ICMPV4_TIME_EXCEEDED);
    icmp.set_code(0);
    icmp.fill_checksum();
}

#[cfg(test)]
mod tests;
