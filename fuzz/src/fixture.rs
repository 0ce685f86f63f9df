//! A switch set up like a small node, built once per fuzzing process and cloned for every input
//! so that each input meets the same state (crashes reproduce from the input alone).
//!
//! - network VNI 42, MTU 1450, gateway 10.244.1.1 at [`GATEWAY_MAC`];
//! - port A ([`PORT_A_MAC`]), port security on, addresses 10.244.1.2 and fd00:10:244:1::2;
//! - port B ([`PORT_B_MAC`]), port security off, address 10.244.1.3, one MAC learned behind it
//!   and a per-port limit of that one learned MAC, so a further new source MAC is `fdb_full`;
//! - network VNI 43 with port C, which the peer does not carry, and no gateway;
//! - network VNI 44, gateway 10.246.1.1 at [`GATEWAY44_MAC`], with port D (10.246.1.2), routed
//!   to from VNI 42 (as is VNI 43, which has no gateway to route through);
//! - a host port on VNI 42;
//! - a configured peer at [`PEER`] on VNI 42 with [`REMOTE_MAC`] learned behind it;
//! - aging of 2 s, so that the sweep after each input forgets what the input taught.
//!
//! Two variants differ in `accept_unknown_peers`; both are replicated (they collect the
//! updates a sibling worker would apply).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use vswitch::fdb::FdbConfig;
use vswitch::switch::{
    Gateway, NetworkConfig, Output, PortConfig, PortId, Route, Switch, SwitchConfig,
};
use vswitch::tunnel;
use vswitch::wire::{MacAddr, Vni};

/// The MAC the switch answers for the gateway with.
pub const GATEWAY_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01];
/// Port A's MAC.
pub const PORT_A_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02];
/// Port B's MAC.
pub const PORT_B_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03];
/// Port C's MAC (VNI 43).
pub const PORT_C_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf5, 0x01, 0x02];
/// A MAC learned behind port B (port security off there).
pub const BEHIND_B_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x0b, 0x01];
/// A container's MAC on the peer.
pub const REMOTE_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x02];
/// Gateway address of VNI 42.
pub const GATEWAY_IP: [u8; 4] = [10, 244, 1, 1];
/// Port A's IPv4 address.
pub const PORT_A_IP: [u8; 4] = [10, 244, 1, 2];
/// Port A's IPv6 address.
pub const PORT_A_IP6: [u8; 16] = [
    0xfd, 0x00, 0x00, 0x10, 0x02, 0x44, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x02,
];
/// Port B's IPv4 address.
pub const PORT_B_IP: [u8; 4] = [10, 244, 1, 3];
/// The remote container's IPv4 address.
pub const REMOTE_IP: [u8; 4] = [10, 244, 2, 2];
/// The configured peer's VXLAN endpoint.
pub const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11)), 4789);
/// An address that is no configured peer.
pub const STRANGER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 51000);
/// The MAC of VNI 44's gateway.
pub const GATEWAY44_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf6, 0x01, 0x01];
/// Port D's MAC (VNI 44).
pub const PORT_D_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf6, 0x01, 0x02];
/// The MTU of both networks.
pub const MTU: u16 = 1450;

/// A switch in the state described in the module documentation, with its handles.
#[derive(Clone)]
pub struct Fixture {
    /// The switch under test.
    pub switch: Switch,
    /// A sibling replica, for updates the switch publishes.
    pub sibling: Switch,
    /// The time the fixture was built at; inputs come a second later.
    pub start: Instant,
    /// Port A (security on).
    pub port_a: PortId,
    /// Port B (security off).
    pub port_b: PortId,
    /// Port C (VNI 43).
    pub port_c: PortId,
    /// Port D (VNI 44).
    pub port_d: PortId,
    /// VNI 42's host port.
    pub host_port: PortId,
}

impl Fixture {
    /// Builds the fixture; `accept_unknown_peers` as given.
    ///
    /// # Panics
    ///
    /// When the switch refuses the setup (a broken fixture, not a finding).
    pub fn new(accept_unknown_peers: bool) -> Self {
        let start = Instant::now();
        let config = SwitchConfig {
            fdb: FdbConfig {
                aging: Duration::from_secs(2),
                max_entries: 64,
                max_per_port: 1,
                max_per_peer: 16,
            },
            accept_unknown_peers,
            max_dynamic_peers: 2,
            ..SwitchConfig::default()
        };
        let mut switch = Switch::new(config);
        let vni42 = Vni::DEFAULT;
        let vni43 = Vni::try_from(43).expect("43 is a VNI");
        let mut net = NetworkConfig::new(vni42);
        net.mtu = MTU;
        net.gateway = Some(Gateway {
            ip: GATEWAY_IP.into(),
            mac: MacAddr(GATEWAY_MAC),
        });
        switch.add_network(net).expect("network 42");
        let mut net43 = NetworkConfig::new(vni43);
        net43.mtu = MTU;
        switch.add_network(net43).expect("network 43");
        let mut a = PortConfig::new(vni42, MacAddr(PORT_A_MAC));
        a.ips = vec![
            IpAddr::V4(PORT_A_IP.into()),
            IpAddr::V6(Ipv6Addr::from(PORT_A_IP6)),
        ];
        let port_a = switch.add_port(a).expect("port A");
        let mut b = PortConfig::new(vni42, MacAddr(PORT_B_MAC));
        b.ips = vec![IpAddr::V4(PORT_B_IP.into())];
        b.port_security = false;
        let port_b = switch.add_port(b).expect("port B");
        let port_c = switch
            .add_port(PortConfig::new(vni43, MacAddr(PORT_C_MAC)))
            .expect("port C");
        let vni44 = Vni::try_from(44).expect("44 is a VNI");
        let mut net44 = NetworkConfig::new(vni44);
        net44.mtu = MTU;
        net44.gateway = Some(Gateway {
            ip: Ipv4Addr::new(10, 246, 1, 1),
            mac: MacAddr(GATEWAY44_MAC),
        });
        switch.add_network(net44).expect("network 44");
        let mut d = PortConfig::new(vni44, MacAddr(PORT_D_MAC));
        d.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 246, 1, 2))];
        let port_d = switch.add_port(d).expect("port D");
        let route = |vni, subnet: &str| Route {
            vni,
            subnet: subnet.parse().expect("a prefix"),
        };
        switch
            .set_routes(
                vni42,
                vec![route(vni43, "10.245.0.0/16"), route(vni44, "10.246.0.0/16")],
            )
            .expect("routes");
        let host_port = switch.add_host_port(vni42).expect("host port");
        switch.add_peer(PEER, &[vni42]);
        let sibling = switch.clone();
        switch.set_replicated(true);

        let mut out = Output::new();
        // A MAC behind port B, and an ARP request from it that teaches a neighbour.
        let arp = arp_request(BEHIND_B_MAC, [10, 244, 1, 99], REMOTE_IP);
        switch.handle_frame(start, port_b, &arp, &mut out);
        // The remote container, learned behind the peer from its ARP request.
        let arp = arp_request(REMOTE_MAC, REMOTE_IP, PORT_A_IP);
        let mut datagram = tunnel::encap_header(vni42).to_vec();
        datagram.extend_from_slice(&arp);
        switch.handle_datagram(start, PEER, &mut datagram, &mut out);
        let mut updates = Vec::new();
        switch.take_updates(&mut updates);
        let mut sibling = sibling;
        for update in &updates {
            sibling.apply(start, update);
        }
        Fixture {
            switch,
            sibling,
            start,
            port_a,
            port_b,
            port_c,
            port_d,
            host_port,
        }
    }

    /// When inputs are handled: a second after the fixture was built.
    pub fn now(&self) -> Instant {
        self.start + Duration::from_secs(1)
    }

    /// Hands the updates the switch collected to the sibling, then ages both well past the
    /// aging time, as a worker's tick and its siblings would.
    pub fn settle(&mut self) {
        let now = self.now();
        let mut updates = Vec::new();
        self.switch.take_updates(&mut updates);
        for update in &updates {
            self.sibling.apply(now, update);
        }
        let later = now + Duration::from_secs(5);
        for switch in [&mut self.switch, &mut self.sibling] {
            if switch.poll_timeout().is_some_and(|due| due <= later) {
                switch.handle_timeout(later);
            }
        }
    }
}

/// A broadcast ARP request from `mac`/`ip` for `target`.
pub fn arp_request(mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}
