//! Address arithmetic: a cluster network cut into node subnets, and the host offsets inside one.
//!
//! Addresses of both families are handled as `u128` offsets so that one code path serves IPv4 and
//! IPv6. Nothing here allocates or fails on a valid [`Layout`]; lookups that can miss return
//! `Option`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::error::Reserved;

/// Offset of the first leasable host: after the network address (0) and the gateway (1).
pub(crate) const FIRST_OFFSET: u128 = 2;

/// A cluster network and the prefix length of its node subnets, already validated
/// (`cluster` is a network address; `cluster prefix <= node_prefix <= max - 2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) cluster: IpNet,
    pub(crate) node_prefix: u8,
}

impl Layout {
    /// How many node subnets the cluster network holds.
    pub(crate) fn subnet_count(&self) -> u128 {
        1u128 << (self.node_prefix - self.cluster.prefix_len())
    }

    /// The node subnet with this index, counting from the start of the cluster network.
    pub(crate) fn subnet(&self, index: u128) -> Option<NodeSubnet> {
        if index >= self.subnet_count() {
            return None;
        }
        let host_bits = u32::from(self.cluster.max_prefix_len() - self.node_prefix);
        // A shift by 128 (a /0 node subnet) only happens for index 0.
        let base = to_u128(self.cluster.network()) + index.checked_shl(host_bits).unwrap_or(0);
        NodeSubnet::new(IpNet::new(from_u128(self.cluster, base), self.node_prefix).ok()?)
    }

    /// The index of a node subnet, if it is one of this layout's.
    pub(crate) fn index_of(&self, subnet: IpNet) -> Option<u128> {
        if subnet.prefix_len() != self.node_prefix
            || subnet.trunc() != subnet
            || !self.cluster.contains(&subnet)
        {
            return None;
        }
        let host_bits = u32::from(self.cluster.max_prefix_len() - self.node_prefix);
        let distance = to_u128(subnet.network()) - to_u128(self.cluster.network());
        Some(distance.checked_shr(host_bits).unwrap_or(0))
    }
}

/// One node's subnet, with the offsets of its leasable hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NodeSubnet {
    net: IpNet,
}

impl NodeSubnet {
    /// Wraps a network with at least one leasable host (host bits >= 2).
    pub(crate) fn new(net: IpNet) -> Option<Self> {
        (net.trunc() == net && net.max_prefix_len() - net.prefix_len() >= 2).then_some(Self { net })
    }

    pub(crate) fn net(&self) -> IpNet {
        self.net
    }

    fn host_bits(&self) -> u32 {
        u32::from(self.net.max_prefix_len() - self.net.prefix_len())
    }

    /// Offset of the broadcast address (all host bits set).
    fn broadcast_offset(&self) -> u128 {
        match self.host_bits() {
            128 => u128::MAX,
            bits => (1u128 << bits) - 1,
        }
    }

    /// Offset of the last leasable host.
    pub(crate) fn last_offset(&self) -> u128 {
        self.broadcast_offset() - 1
    }

    /// How many addresses can be leased: all but network, gateway and broadcast.
    pub(crate) fn capacity(&self) -> u128 {
        self.broadcast_offset() - 2
    }

    /// The address at a host offset; offsets past the broadcast address wrap nowhere: `None`.
    pub(crate) fn addr(&self, offset: u128) -> Option<IpAddr> {
        (offset <= self.broadcast_offset())
            .then(|| from_u128(self.net, to_u128(self.net.network()) + offset))
    }

    /// The gateway: the first host address.
    pub(crate) fn gateway(&self) -> IpAddr {
        from_u128(self.net, to_u128(self.net.network()) + 1)
    }

    /// The host offset of an address inside this subnet.
    pub(crate) fn offset_of(&self, addr: IpAddr) -> Option<u128> {
        self.net
            .contains(&addr)
            .then(|| to_u128(addr) - to_u128(self.net.network()))
    }

    /// Which reserved address an offset is, if any.
    pub(crate) fn reserved(&self, offset: u128) -> Option<Reserved> {
        match offset {
            0 => Some(Reserved::Network),
            1 => Some(Reserved::Gateway),
            o if o == self.broadcast_offset() => Some(Reserved::Broadcast),
            _ => None,
        }
    }
}

/// The gateway of any node subnet of a layout's family, or `None` if the network is too small.
pub(crate) fn gateway_of(net: IpNet) -> Option<IpAddr> {
    NodeSubnet::new(net).map(|s| s.gateway())
}

fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Builds an address of `family`'s kind; callers keep `value` in range for the family.
fn from_u128(family: IpNet, value: u128) -> IpAddr {
    match family {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_layout() {
        let l = Layout {
            cluster: net("10.244.0.0/16"),
            node_prefix: 24,
        };
        assert_eq!(l.subnet_count(), 256);
        assert_eq!(l.subnet(0).unwrap().net(), net("10.244.0.0/24"));
        assert_eq!(l.subnet(255).unwrap().net(), net("10.244.255.0/24"));
        assert!(l.subnet(256).is_none());
        assert_eq!(l.index_of(net("10.244.7.0/24")), Some(7));
        assert_eq!(l.index_of(net("10.245.7.0/24")), None);
        assert_eq!(l.index_of(net("10.244.7.0/25")), None);

        let s = l.subnet(1).unwrap();
        assert_eq!(s.gateway(), "10.244.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(s.capacity(), 253);
        assert_eq!(s.addr(FIRST_OFFSET).unwrap().to_string(), "10.244.1.2");
        assert_eq!(s.addr(s.last_offset()).unwrap().to_string(), "10.244.1.254");
        assert_eq!(s.addr(256), None);
        assert_eq!(s.reserved(0), Some(Reserved::Network));
        assert_eq!(s.reserved(1), Some(Reserved::Gateway));
        assert_eq!(s.reserved(255), Some(Reserved::Broadcast));
        assert_eq!(s.reserved(2), None);
        assert_eq!(s.offset_of("10.244.1.77".parse().unwrap()), Some(77));
        assert_eq!(s.offset_of("10.244.2.77".parse().unwrap()), None);
        assert_eq!(s.offset_of("fd00::1".parse().unwrap()), None);
    }

    #[test]
    fn ipv6_layout() {
        let l = Layout {
            cluster: net("fd00:10:244::/48"),
            node_prefix: 64,
        };
        assert_eq!(l.subnet_count(), 65536);
        let s = l.subnet(3).unwrap();
        assert_eq!(s.net(), net("fd00:10:244:3::/64"));
        assert_eq!(s.gateway().to_string(), "fd00:10:244:3::1");
        assert_eq!(
            s.addr(FIRST_OFFSET).unwrap().to_string(),
            "fd00:10:244:3::2"
        );
        assert_eq!(s.capacity(), (1u128 << 64) - 3);
        assert_eq!(l.index_of(net("fd00:10:244:ffff::/64")), Some(65535));
    }

    #[test]
    fn extreme_layouts_do_not_overflow() {
        let l = Layout {
            cluster: net("::/0"),
            node_prefix: 0,
        };
        assert_eq!(l.subnet_count(), 1);
        let s = l.subnet(0).unwrap();
        assert_eq!(s.capacity(), u128::MAX - 2);
        assert_eq!(s.reserved(u128::MAX), Some(Reserved::Broadcast));
        let tiny = NodeSubnet::new(net("10.0.0.0/30")).unwrap();
        assert_eq!(tiny.capacity(), 1);
        assert!(NodeSubnet::new(net("10.0.0.0/31")).is_none());
        assert!(NodeSubnet::new(net("10.0.0.1/30")).is_none());
    }
}
