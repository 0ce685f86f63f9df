//! Configuration of the switch, its networks and its ports, and the errors of changing them.

use core::net::{IpAddr, Ipv4Addr};

use crate::fdb::FdbConfig;
use crate::wire::{MacAddr, Vni};

use super::PortId;

/// Settings of the whole switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Forwarding database limits and aging; the neighbour table uses the same aging and
    /// `max_entries`.
    pub fdb: FdbConfig,
    /// Accept datagrams from addresses that are not configured peers, creating a peer for each
    /// (at most `max_dynamic_peers`; they are forgotten after `fdb.aging` without traffic).
    /// Default false.
    pub accept_unknown_peers: bool,
    /// Most peers created by `accept_unknown_peers`. Default 256.
    pub max_dynamic_peers: usize,
    /// Most dynamic peers a flood (broadcast, multicast, unknown unicast) is replicated to, so
    /// that peers which showed up on their own cannot multiply every flood. Default 16.
    pub flood_dynamic_peers: usize,
    /// Floods (broadcast, multicast, unknown unicast) and ARP requests each port may send a
    /// second, per replica; a super-frame counts as its segments. Default 1000.
    pub flood_rate: u64,
    /// How many floods a port may send at once after a quiet spell. Default 1000.
    pub flood_burst: u64,
    /// EtherTypes a port with port security may send besides IPv4, IPv6 and ARP. Default none.
    pub allowed_ethertypes: Vec<u16>,
    /// Answer ARP requests for known addresses locally instead of flooding them. Default true.
    pub arp_suppression: bool,
    /// The VXLAN port peers listen on: where datagrams to a peer learned from its traffic go
    /// (its source port is a flow hash, not its listening port).
    pub vxlan_port: u16,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            fdb: FdbConfig::default(),
            accept_unknown_peers: false,
            max_dynamic_peers: 256,
            flood_dynamic_peers: 16,
            flood_rate: 1000,
            flood_burst: 1000,
            allowed_ethertypes: Vec::new(),
            arp_suppression: true,
            vxlan_port: 4789,
        }
    }
}

/// One overlay network, identified by its VNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The network's VNI.
    pub vni: Vni,
    /// Inner IP MTU: frames longer than the Ethernet header plus this are dropped (`OverMtu`)
    /// and answered with ICMP "too big" errors. Default 1450, which fits VXLAN over IPv4 on a
    /// 1500-byte underlay.
    pub mtu: u16,
    /// The address the switch answers for (ARP and ICMP echo), if any, and sends ICMP errors
    /// from; a network without one sends none.
    pub gateway: Option<Gateway>,
    /// Frames on this network cross the underlay only sealed, and only sealed datagrams that
    /// authenticate are accepted for it. Default false.
    pub sealed: bool,
    /// Lower the MSS option of TCP SYNs (from ports and peers) to what the MTU allows: MTU - 40
    /// for IPv4, MTU - 60 for IPv6. Default true.
    pub clamp_mss: bool,
}

impl NetworkConfig {
    /// Default inner MTU.
    pub const DEFAULT_MTU: u16 = 1450;
    /// Smallest MTU accepted: the IPv4 minimum.
    pub const MIN_MTU: u16 = 68;

    /// A network on `vni` with the default MTU and no gateway.
    pub fn new(vni: Vni) -> Self {
        NetworkConfig {
            vni,
            mtu: Self::DEFAULT_MTU,
            gateway: None,
            sealed: false,
            clamp_mss: true,
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self::new(Vni::DEFAULT)
    }
}

/// The gateway address of a network, answered by the switch itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gateway {
    /// The gateway's IPv4 address.
    pub ip: Ipv4Addr,
    /// The MAC the switch answers with.
    pub mac: MacAddr,
}

/// A local port: one container interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// The network the port is on.
    pub vni: Vni,
    /// The interface's MAC: a static FDB entry.
    pub mac: MacAddr,
    /// The interface's addresses: static neighbours (IPv4) and the allowed sources.
    pub ips: Vec<IpAddr>,
    /// Drop frames whose source MAC or IP is not the port's own. Default true.
    pub port_security: bool,
}

impl PortConfig {
    /// A port on `vni` with `mac`, no addresses, and port security on.
    pub fn new(vni: Vni, mac: MacAddr) -> Self {
        PortConfig {
            vni,
            mac,
            ips: Vec::new(),
            port_security: true,
        }
    }
}

/// Why a change to the switch's configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SwitchError {
    /// No network has this VNI.
    #[error("no network with VNI {0}")]
    UnknownVni(Vni),
    /// No port has this id.
    #[error("no port {0}")]
    UnknownPort(PortId),
    /// The MTU is outside what the switch supports.
    #[error("MTU {mtu} out of range {min}..=65535", min = NetworkConfig::MIN_MTU)]
    InvalidMtu {
        /// The rejected MTU.
        mtu: u16,
    },
    /// The port MAC is not a unicast address.
    #[error("port MAC {0} is not a unicast address")]
    InvalidMac(MacAddr),
    /// Another port of the network already has this MAC.
    #[error("MAC {mac} already belongs to port {port} on VNI {vni}")]
    MacInUse {
        /// The network.
        vni: Vni,
        /// The duplicate MAC.
        mac: MacAddr,
        /// The port that has it.
        port: PortId,
    },
    /// The network has no gateway, so it cannot have a host port.
    #[error("VNI {0} has no gateway")]
    NoGateway(Vni),
    /// The MAC is the network's gateway MAC.
    #[error("MAC {mac} is the gateway MAC of VNI {vni}")]
    GatewayMac {
        /// The network.
        vni: Vni,
        /// The MAC.
        mac: MacAddr,
    },
}
