//! Services on the gateway address beyond ARP and echo: DNS queries (UDP to port 53 of a
//! network's gateway) from local ports, handed whole to the caller through
//! [`Output::service`](super::Output::service) when the switch was told a name server
//! listens ([`Switch::set_gateway_dns`]); dropped as [`DropReason::Gateway`](super::DropReason)
//! otherwise, like any other frame for the gateway.

use crate::wire::{EtherType, EthernetFrame, IpProtocol, Ipv4Packet, UdpPacket};

use super::{Gateway, Switch};

/// The DNS port.
pub const DNS_PORT: u16 = 53;

impl Switch {
    /// Whether DNS queries to the gateway go to the caller (on) or are dropped (off, the
    /// default).
    pub fn set_gateway_dns(&mut self, on: bool) {
        self.gateway_dns = on;
    }
}

/// Whether `eth` (addressed to the gateway's MAC) is an untagged, unfragmented IPv4 UDP
/// datagram to the gateway's address on port 53.
pub(super) fn is_dns_query(eth: &EthernetFrame<&[u8]>, gateway: Gateway) -> bool {
    if eth.is_tagged() || eth.ethertype() != EtherType::IPV4 {
        return false;
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return false;
    };
    if ip.dst_addr() != gateway.ip || ip.protocol() != IpProtocol::UDP || ip.is_fragment() {
        return false;
    }
    UdpPacket::new_checked(ip.payload()).is_ok_and(|udp| udp.dst_port() == DNS_PORT)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use core::net::Ipv4Addr;
    use std::time::Instant;

    use super::*;
    use crate::switch::{DropReason, NetworkConfig, Output, PortConfig, SwitchConfig};
    use crate::wire::{MacAddr, Vni};

    const GATEWAY: Gateway = Gateway {
        ip: Ipv4Addr::new(10, 0, 0, 1),
        mac: MacAddr([2, 0, 0, 0, 0, 0xfe]),
    };

    /// A UDP datagram from 10.0.0.2 to the gateway's `port`.
    fn udp_to_gateway(src: MacAddr, port: u16) -> Vec<u8> {
        let mut f = GATEWAY.mac.0.to_vec();
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&EtherType::IPV4.0.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip.extend_from_slice(&[10, 0, 0, 2]);
        ip.extend_from_slice(&GATEWAY.ip.octets());
        Ipv4Packet::new_unchecked(&mut ip[..]).fill_checksum();
        f.extend_from_slice(&ip);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(&[0, 20, 0, 0]);
        f.extend_from_slice(&[0; 12]);
        f
    }

    #[test]
    fn dns_queries_to_the_gateway_go_to_the_caller_only_when_asked() {
        let mut sw = Switch::new(SwitchConfig::default());
        let vni = Vni::try_from(42).unwrap();
        sw.add_network(NetworkConfig {
            vni,
            mtu: 1450,
            gateway: Some(GATEWAY),
            sealed: false,
            clamp_mss: true,
        })
        .unwrap();
        let mac = MacAddr([2, 0, 0, 0, 0, 2]);
        let port = sw
            .add_port(PortConfig {
                vni,
                mac,
                ips: vec![Ipv4Addr::new(10, 0, 0, 2).into()],
                port_security: true,
            })
            .unwrap();
        let now = Instant::now();
        let mut out = Output::default();
        let query = udp_to_gateway(mac, DNS_PORT);
        sw.handle_frame(now, port, &query, &mut out);
        assert_eq!(out.dropped, Some(DropReason::Gateway), "off by default");
        assert_eq!(out.service(), None);

        sw.set_gateway_dns(true);
        sw.handle_frame(now, port, &query, &mut out);
        assert_eq!(out.dropped, None);
        assert_eq!(out.service(), Some(port));
        assert!(out.ports.is_empty() && out.transmits.is_empty());
        assert_eq!(out.frame(&query), &query[..]);
        assert_eq!(sw.counters().gateway_dns_queries, 1);

        sw.handle_frame(now, port, &udp_to_gateway(mac, 54), &mut out);
        assert_eq!(out.dropped, Some(DropReason::Gateway), "only port 53");
    }
}
