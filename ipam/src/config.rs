//! Pool configuration: the serde-facing shape, its defaults, and its validation into a [`Layout`].

use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigProblem, Error};
use crate::owner::check_pool_name;
use crate::subnet::Layout;

/// Default IPv4 cluster network.
pub const DEFAULT_CLUSTER_V4: &str = "10.244.0.0/16";
/// Default IPv6 cluster network (unique local).
pub const DEFAULT_CLUSTER_V6: &str = "fd00:10:244::/48";
/// Default node prefix length for IPv4 pools.
pub const DEFAULT_NODE_PREFIX_V4: u8 = 24;
/// Default node prefix length for IPv6 pools.
pub const DEFAULT_NODE_PREFIX_V6: u8 = 64;
/// Default time a released address rests before it is handed out again.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(30);

/// One address pool: a cluster network shared by all nodes, cut into one subnet per node.
///
/// A pool has one address family; a dual-stack network uses two pools (for example `default`
/// and `default-v6`) and allocates the same owner in both.
///
/// In TOML (every key optional):
///
/// ```toml
/// name = "default"            # appears in store keys: letters, digits, . _ -
/// cluster = "10.244.0.0/16"
/// node_prefix = 24            # default 24 for IPv4, 64 for IPv6
/// node_subnet = "10.244.1.0/24"  # fixed; unset = claim the first free one
/// hold_secs = 30
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Pool name, unique per network.
    pub name: String,
    /// The cluster network all containers of the pool share.
    pub cluster: IpNet,
    /// Prefix length of each node's subnet; `None` takes the family default (/24, /64).
    pub node_prefix: Option<u8>,
    /// This node's subnet when fixed by configuration; `None` claims one from the store.
    pub node_subnet: Option<IpNet>,
    /// How long a released address rests before reuse, while other addresses are free.
    #[serde(rename = "hold_secs", with = "secs")]
    pub hold: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self::new("default", default_cluster_v4())
    }
}

impl PoolConfig {
    /// A pool with the given name and cluster network and every other setting at its default.
    pub fn new(name: impl Into<String>, cluster: IpNet) -> Self {
        Self {
            name: name.into(),
            cluster,
            node_prefix: None,
            node_subnet: None,
            hold: DEFAULT_HOLD,
        }
    }

    /// The default IPv6 pool: `default-v6`, `fd00:10:244::/48`, one /64 per node.
    pub fn default_v6() -> Self {
        Self::new("default-v6", default_cluster_v6())
    }

    /// The node prefix length in effect.
    pub fn node_prefix(&self) -> u8 {
        self.node_prefix.unwrap_or(match self.cluster {
            IpNet::V4(_) => DEFAULT_NODE_PREFIX_V4,
            IpNet::V6(_) => DEFAULT_NODE_PREFIX_V6,
        })
    }

    /// Checks the configuration and returns its layout.
    pub(crate) fn layout(&self) -> Result<Layout, Error> {
        check_pool_name(&self.name)?;
        let fail = |problem| Error::Config {
            pool: self.name.clone(),
            problem,
        };
        let cluster = self.cluster;
        if cluster.trunc() != cluster {
            return Err(fail(ConfigProblem::ClusterNotNetwork {
                given: cluster,
                network: cluster.trunc(),
            }));
        }
        let node_prefix = self.node_prefix();
        let max = cluster.max_prefix_len() - 2;
        if node_prefix > max {
            return Err(fail(ConfigProblem::NodePrefixLong { node_prefix, max }));
        }
        if node_prefix < cluster.prefix_len() {
            return Err(fail(ConfigProblem::NodePrefixShort {
                cluster,
                node_prefix,
            }));
        }
        let layout = Layout {
            cluster,
            node_prefix,
        };
        if let Some(subnet) = self.node_subnet {
            if layout.index_of(subnet).is_none() {
                return Err(fail(ConfigProblem::NodeSubnetInvalid {
                    subnet,
                    cluster,
                    node_prefix,
                }));
            }
        }
        Ok(layout)
    }
}

fn default_cluster_v4() -> IpNet {
    IpNet::V4(ipnet::Ipv4Net::new_assert(
        std::net::Ipv4Addr::new(10, 244, 0, 0),
        16,
    ))
}

fn default_cluster_v6() -> IpNet {
    IpNet::V6(ipnet::Ipv6Net::new_assert(
        std::net::Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0),
        48,
    ))
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_constants() {
        let v4 = PoolConfig::default();
        assert_eq!(v4.cluster.to_string(), DEFAULT_CLUSTER_V4);
        assert_eq!(v4.node_prefix(), 24);
        assert_eq!(v4.hold, DEFAULT_HOLD);
        let v6 = PoolConfig::default_v6();
        assert_eq!(v6.cluster.to_string(), DEFAULT_CLUSTER_V6);
        assert_eq!(v6.node_prefix(), 64);
        assert!(v4.layout().is_ok());
        assert!(v6.layout().is_ok());
    }

    #[test]
    fn rejects_unusable_layouts() {
        let with = |f: &dyn Fn(&mut PoolConfig)| {
            let mut c = PoolConfig::default();
            f(&mut c);
            c.layout()
        };
        let problem = |r: Result<Layout, Error>| match r {
            Err(Error::Config { problem, .. }) => problem,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert!(matches!(
            problem(with(&|c| c.cluster = "10.244.1.0/16".parse().unwrap())),
            ConfigProblem::ClusterNotNetwork { .. }
        ));
        assert!(matches!(
            problem(with(&|c| c.node_prefix = Some(31))),
            ConfigProblem::NodePrefixLong { max: 30, .. }
        ));
        assert!(matches!(
            problem(with(&|c| c.node_prefix = Some(8))),
            ConfigProblem::NodePrefixShort { .. }
        ));
        for bad in ["10.245.1.0/24", "10.244.1.0/25", "fd00::/64"] {
            assert!(matches!(
                problem(with(&|c| c.node_subnet = Some(bad.parse().unwrap()))),
                ConfigProblem::NodeSubnetInvalid { .. }
            ));
        }
        assert!(matches!(
            with(&|c| c.name = "no spaces".into()),
            Err(Error::InvalidName { .. })
        ));
        assert!(with(&|c| c.node_subnet = Some("10.244.9.0/24".parse().unwrap())).is_ok());
    }

    #[test]
    fn serde_keys_and_defaults() {
        let c: PoolConfig = serde_json::from_str(
            r#"{"cluster":"fd00:1::/48","node_subnet":"fd00:1:0:5::/64","hold_secs":5}"#,
        )
        .unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.node_prefix(), 64);
        assert_eq!(c.hold, Duration::from_secs(5));
        assert!(c.layout().is_ok());
        assert!(serde_json::from_str::<PoolConfig>(r#"{"clutser":"10.0.0.0/8"}"#).is_err());
    }
}
