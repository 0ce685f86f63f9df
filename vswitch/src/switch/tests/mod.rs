//! Tests of the switch: one switch driven directly, a multi-host simulator (several switches, a
//! fake underlay delivering their transmits) on a virtual clock, and random input.

#![allow(clippy::unwrap_used)]

mod fuzz;
mod hostile;
mod policy;
mod replica;
mod sealed;
mod sim;
mod single;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use etherparse::{
    ArpHardwareId, ArpOperation as EpArpOp, ArpPacket as EpArp, EtherType as EpEtherType,
    PacketBuilder,
};

use super::*;
use crate::fdb::Location;
use crate::tunnel::encap_header;
use crate::wire::{
    self, ArpOperation, ArpPacket, EthernetFrame, ICMPV4_ECHO_REPLY, Icmpv4Packet, Ipv4Packet,
    MacAddr, Vni,
};

pub(super) fn vni(n: u32) -> Vni {
    Vni::try_from(n).unwrap()
}

/// A locally administered unicast MAC ending in `host`, `n`.
pub(super) fn mac(host: u8, n: u8) -> MacAddr {
    MacAddr([0x02, 0x42, 0, 0, host, n])
}

pub(super) fn ip(host: u8, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, host, n)
}

pub(super) const GW_MAC: MacAddr = MacAddr([0x02, 0xee, 0, 0, 0, 1]);

pub(super) fn gateway(host: u8) -> Gateway {
    Gateway {
        ip: Ipv4Addr::new(10, 244, host, 1),
        mac: GW_MAC,
    }
}

pub(super) fn udp(
    src: MacAddr,
    dst: MacAddr,
    sip: Ipv4Addr,
    dip: Ipv4Addr,
    payload: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(sip.octets(), dip.octets(), 64)
        .udp(40000, 5001)
        .write(&mut out, &vec![0xab; payload])
        .unwrap();
    out
}

pub(super) fn arp(
    src: MacAddr,
    dst: MacAddr,
    op: EpArpOp,
    sender: (MacAddr, Ipv4Addr),
    target: (MacAddr, Ipv4Addr),
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .arp(
            EpArp::new(
                ArpHardwareId::ETHERNET,
                EpEtherType::IPV4,
                op,
                &sender.0.0,
                &sender.1.octets(),
                &target.0.0,
                &target.1.octets(),
            )
            .unwrap(),
        )
        .write(&mut out)
        .unwrap();
    out
}

pub(super) fn arp_request(src: MacAddr, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    arp(
        src,
        MacAddr::BROADCAST,
        EpArpOp::REQUEST,
        (src, sender_ip),
        (MacAddr::ZERO, target_ip),
    )
}

pub(super) fn echo_request(
    src: MacAddr,
    dst: MacAddr,
    sip: Ipv4Addr,
    dip: Ipv4Addr,
    seq: u16,
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(sip.octets(), dip.octets(), 64)
        .icmpv4_echo_request(0x4242, seq)
        .write(&mut out, b"0123456789abcdef0123456789abcdef")
        .unwrap();
    out
}

pub(super) fn ipv6_udp(src: MacAddr, dst: MacAddr, sip: Ipv6Addr, dip: Ipv6Addr) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv6(sip.octets(), dip.octets(), 64)
        .udp(1, 2)
        .write(&mut out, b"v6")
        .unwrap();
    out
}

pub(super) fn datagram(vni: Vni, frame: &[u8]) -> Vec<u8> {
    let mut d = encap_header(vni).to_vec();
    d.extend_from_slice(frame);
    d
}

pub(super) fn peer_addr(host: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, host)), 4789)
}

pub(super) fn port_cfg(v: Vni, mac: MacAddr, ips: &[Ipv4Addr]) -> PortConfig {
    PortConfig {
        vni: v,
        mac,
        ips: ips.iter().map(|&i| IpAddr::V4(i)).collect(),
        port_security: true,
    }
}

/// A switch with network 42 (gateway 10.244.0.1) and `n` ports with MACs mac(0, i) and IPs
/// 10.244.0.(10 + i).
pub(super) fn one_switch(config: SwitchConfig, n: u8) -> (Switch, Vec<PortId>) {
    let mut sw = Switch::new(config);
    sw.add_network(NetworkConfig {
        gateway: Some(gateway(0)),
        ..NetworkConfig::new(Vni::DEFAULT)
    })
    .unwrap();
    let ports = (0..n)
        .map(|i| {
            sw.add_port(port_cfg(Vni::DEFAULT, mac(0, i), &[ip(0, 10 + i)]))
                .unwrap()
        })
        .collect();
    (sw, ports)
}
