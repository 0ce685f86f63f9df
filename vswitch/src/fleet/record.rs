//! What a node publishes in etcd, and under which keys.
//!
//! Under the store's prefix (`/vswitch` by default):
//!
//! - `PREFIX/fleet/nodes/NODE`: a [`NodeRecord`] (JSON);
//! - `PREFIX/fleet/endpoints/NODE/CONTAINER/IFNAME`: an [`EndpointRecord`] (JSON).
//!
//! Both are written under the node's lease: they vanish a lease TTL after the node stops.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::wire::MacAddr;

/// A node, as the fleet sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its name, unique in the fleet.
    pub name: String,
    /// Where it receives VXLAN.
    pub endpoint: SocketAddr,
    /// The networks it carries.
    pub networks: Vec<NetworkRef>,
    /// Its public key, when it has one (sealed networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Different at every start of the daemon: a node whose boot changed restarted, and what
    /// was learned behind it before is stale.
    pub boot: String,
}

/// A network a node carries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkRef {
    /// Its name.
    pub name: String,
    /// Its VNI.
    pub vni: u32,
}

/// An attached container's interface, as the fleet sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// The node it is attached on.
    pub node: String,
    /// The container's id.
    pub container_id: String,
    /// Its interface in the container.
    pub ifname: String,
    /// The name DNS answers for it.
    pub name: String,
    /// Its network.
    pub network: String,
    /// That network's VNI.
    pub vni: u32,
    /// Its MAC.
    pub mac: MacAddr,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The keys of one fleet in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

/// What a key under the fleet's root names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind<'a> {
    /// A node record, by node name.
    Node(&'a str),
    /// An endpoint record, with the node it belongs to.
    Endpoint {
        /// The node.
        node: &'a str,
    },
}

impl Keys {
    /// The keys under the store prefix `prefix` (`/vswitch` by default).
    pub fn new(prefix: &str) -> Self {
        Self {
            root: format!("{}/fleet/", prefix.trim_end_matches('/')),
        }
    }

    /// The prefix of every fleet key.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// A node's record.
    pub fn node(&self, name: &str) -> String {
        format!("{}nodes/{name}", self.root)
    }

    /// The prefix of a node's endpoints.
    pub fn endpoints_of(&self, node: &str) -> String {
        format!("{}endpoints/{node}/", self.root)
    }

    /// An endpoint's record.
    pub fn endpoint(&self, e: &EndpointRecord) -> String {
        format!(
            "{}{}/{}",
            self.endpoints_of(&e.node),
            e.container_id,
            e.ifname
        )
    }

    /// What `key` names; `None` for keys that are not the fleet's.
    pub fn parse<'a>(&self, key: &'a str) -> Option<KeyKind<'a>> {
        let rest = key.strip_prefix(&self.root)?;
        if let Some(name) = rest.strip_prefix("nodes/") {
            return (!name.is_empty() && !name.contains('/')).then_some(KeyKind::Node(name));
        }
        let rest = rest.strip_prefix("endpoints/")?;
        let (node, tail) = rest.split_once('/')?;
        (!node.is_empty() && !tail.is_empty()).then_some(KeyKind::Endpoint { node })
    }
}

/// The name DNS answers for an attached container: its `name` label, else the namespace's
/// name when it was attached by name, else its container id.
pub fn endpoint_name(netns: &str, container_id: &str, labels: &BTreeMap<String, String>) -> String {
    if let Some(name) = labels.get("name") {
        return name.clone();
    }
    if !netns.contains('/') && !netns.starts_with("pid:") && !netns.is_empty() {
        return netns.to_owned();
    }
    container_id.to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_foreign_keys_are_refused() {
        let keys = Keys::new("/vswitch/");
        assert_eq!(keys.node("n1"), "/vswitch/fleet/nodes/n1");
        assert_eq!(
            keys.parse("/vswitch/fleet/nodes/n1"),
            Some(KeyKind::Node("n1"))
        );
        assert_eq!(
            keys.parse("/vswitch/fleet/endpoints/n1/c1/eth0"),
            Some(KeyKind::Endpoint { node: "n1" })
        );
        for bad in [
            "/vswitch/ipam/x",
            "/vswitch/fleet/nodes/",
            "/vswitch/fleet/nodes/a/b",
            "/vswitch/fleet/endpoints/n1",
            "/vswitch/fleet/endpoints/n1/",
            "/other/fleet/nodes/n1",
        ] {
            assert_eq!(keys.parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_come_from_the_label_then_the_namespace_then_the_id() {
        let mut labels = BTreeMap::new();
        assert_eq!(endpoint_name("web", "abc", &labels), "web");
        assert_eq!(endpoint_name("/proc/1/ns/net", "abc", &labels), "abc");
        assert_eq!(endpoint_name("pid:12", "abc", &labels), "abc");
        labels.insert("name".into(), "db".into());
        assert_eq!(endpoint_name("web", "abc", &labels), "db");
    }
}
