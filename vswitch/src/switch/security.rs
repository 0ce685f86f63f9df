//! Port security: what a container may send, judged on the frame exactly as it will leave.
//!
//! A port with port security sends only from its own MAC, and through any number of VLAN tags
//! (802.1Q, 802.1ad QinQ) only:
//!
//! - IPv4 from its own addresses (or 0.0.0.0, as DHCP does), ARP whose sender MAC is its own and
//!   whose sender address is its own (or 0.0.0.0, an ARP probe);
//! - IPv6 from its own addresses, the link-local address derived from its MAC (EUI-64), or `::`
//!   (duplicate address detection); Neighbor Advertisements only for those targets; never a
//!   Router Advertisement or a Redirect, wherever extension headers hide them;
//! - no other EtherType, unless the switch is configured to allow it.
//!
//! A port without addresses of a family may send that family only from the unspecified
//! address (and, for IPv6, its link-local one).

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::{
    self, ArpPacket, EtherType, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv6Packet,
    icmpv6_type as icmpv6,
};

use super::{DropReason, Port};

const ICMPV6: IpProtocol = IpProtocol(58);

/// The EtherType past every VLAN tag and where its payload starts, as a drop reason on failure.
pub(super) fn inner_ethertype(frame: &[u8]) -> Result<(EtherType, usize), DropReason> {
    wire::ethertype_past_tags(frame).map_err(|e| match e {
        wire::Error::Truncated => DropReason::Runt,
        _ => DropReason::Malformed,
    })
}

/// Checks a frame from a port with port security; `allowed` lists EtherTypes allowed beyond
/// IPv4, IPv6 and ARP. The source MAC has been checked already.
pub(super) fn check(port: &Port, frame: &[u8], allowed: &[u16]) -> Result<(), DropReason> {
    let (ethertype, at) = inner_ethertype(frame)?;
    let payload = frame.get(at..).ok_or(DropReason::Runt)?;
    match ethertype {
        EtherType::ARP => {
            let arp = ArpPacket::new_checked(payload).map_err(|_| DropReason::Malformed)?;
            if arp.sender_mac() != port.config.mac || !ipv4_allowed(port, arp.sender_ip()) {
                return Err(DropReason::SpoofedSource);
            }
        }
        EtherType::IPV4 => {
            let ip = Ipv4Packet::new_checked(payload).map_err(|_| DropReason::Malformed)?;
            if !ipv4_allowed(port, ip.src_addr()) {
                return Err(DropReason::SpoofedSource);
            }
        }
        EtherType::IPV6 => check_ipv6(port, payload)?,
        EtherType(other) if allowed.contains(&other) => {}
        _ => return Err(DropReason::Ethertype),
    }
    Ok(())
}

fn ipv4_allowed(port: &Port, ip: Ipv4Addr) -> bool {
    ip.is_unspecified() || port.ipv4.contains(&ip)
}

fn ipv6_own(port: &Port, ip: Ipv6Addr) -> bool {
    ip == port.link_local || port.ipv6.contains(&ip)
}

fn check_ipv6(port: &Port, payload: &[u8]) -> Result<(), DropReason> {
    let ip = Ipv6Packet::new_checked(payload).map_err(|_| DropReason::Malformed)?;
    let src = ip.src_addr();
    if !src.is_unspecified() && !ipv6_own(port, src) {
        return Err(DropReason::SpoofedSource);
    }
    let upper = ip.upper_layer().map_err(|_| DropReason::Malformed)?;
    if upper.protocol != ICMPV6 || upper.later_fragment {
        return Ok(());
    }
    let icmp = Icmpv6Packet::new_checked(upper.payload).map_err(|_| DropReason::Malformed)?;
    match icmp.msg_type() {
        icmpv6::ROUTER_ADVERTISEMENT | icmpv6::REDIRECT => Err(DropReason::RaGuard),
        icmpv6::NEIGHBOR_ADVERTISEMENT => {
            let target = icmp.target_addr().map_err(|_| DropReason::Malformed)?;
            if ipv6_own(port, target) {
                Ok(())
            } else {
                Err(DropReason::SpoofedSource)
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::MacAddr;

    #[test]
    fn link_local_is_modified_eui64() {
        let mac = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
        assert_eq!(
            mac.link_local(),
            "fe80::858:aff:fef4:102".parse::<Ipv6Addr>().unwrap()
        );
    }
}
