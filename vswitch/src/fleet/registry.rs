//! The fleet as read from etcd, and the plan that makes this node agree with it.
//!
//! The registry keeps what etcd holds under the fleet's keys (fed by a full listing, then by
//! watch events) and what was last applied here: peers (other nodes) and pinned endpoints
//! (their containers). [`Registry::plan`] compares the two and returns the changes to make, in
//! an order that is always safe: unpins, then nodes that left, then nodes that joined, then
//! pins. A node whose record changed (a restart: a new boot; or a new endpoint or networks)
//! leaves and joins again, so that nothing learned behind its former self survives; its
//! endpoints are pinned again after the join. This node's own records are never applied.
//!
//! A listing replaces the whole state, so a change missed while a watch was broken is caught
//! by the next listing: nothing here depends on seeing every event.

use std::collections::BTreeMap;

use super::record::{EndpointRecord, KeyKind, Keys, NodeRecord};

/// One change to make here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node is no longer in the fleet (or restarted): remove it as a peer, with everything
    /// learned and pinned behind it.
    Leave(NodeRecord),
    /// A node joined (or came back): add it as a peer.
    Join(NodeRecord),
    /// Pin a container of `node` to it.
    Pin {
        /// The node it is attached on.
        node: NodeRecord,
        /// The container's interface.
        endpoint: EndpointRecord,
    },
    /// Unpin a container that went away (its node stays).
    Unpin(EndpointRecord),
}

/// The fleet's records, and what of them is applied here.
#[derive(Debug)]
pub struct Registry {
    me: String,
    keys: Keys,
    nodes: BTreeMap<String, NodeRecord>,
    endpoints: BTreeMap<String, EndpointRecord>,
    applied_nodes: BTreeMap<String, NodeRecord>,
    applied_endpoints: BTreeMap<String, EndpointRecord>,
    malformed: u64,
}

impl Registry {
    /// An empty registry for the node `me`, reading keys laid out as `keys` says.
    pub fn new(me: &str, keys: Keys) -> Self {
        Self {
            me: me.to_owned(),
            keys,
            nodes: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            applied_nodes: BTreeMap::new(),
            applied_endpoints: BTreeMap::new(),
            malformed: 0,
        }
    }

    /// Replaces what is known with a full listing.
    pub fn replace<'a>(&mut self, listing: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) {
        self.nodes.clear();
        self.endpoints.clear();
        for (key, value) in listing {
            self.put(key, value);
        }
    }

    /// A key was written. Values that do not parse, or that disagree with their key, are
    /// ignored and counted.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        let Ok(key) = std::str::from_utf8(key) else {
            self.malformed += 1;
            return;
        };
        match self.keys.parse(key) {
            Some(KeyKind::Node(name)) => match serde_json::from_slice::<NodeRecord>(value) {
                Ok(record) if record.name == name => {
                    self.nodes.insert(name.to_owned(), record);
                }
                _ => {
                    self.nodes.remove(name);
                    self.malformed += 1;
                }
            },
            Some(KeyKind::Endpoint { node }) => {
                match serde_json::from_slice::<EndpointRecord>(value) {
                    Ok(record) if record.node == node => {
                        self.endpoints.insert(key.to_owned(), record);
                    }
                    _ => {
                        self.endpoints.remove(key);
                        self.malformed += 1;
                    }
                }
            }
            None => {}
        }
    }

    /// A key was deleted (or its lease expired).
    pub fn delete(&mut self, key: &[u8]) {
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        match self.keys.parse(key) {
            Some(KeyKind::Node(name)) => {
                self.nodes.remove(name);
            }
            Some(KeyKind::Endpoint { .. }) => {
                self.endpoints.remove(key);
            }
            None => {}
        }
    }

    /// Records that could not be read (not JSON, or naming another node than their key).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Every node known (this one included), by name.
    pub fn nodes(&self) -> &BTreeMap<String, NodeRecord> {
        &self.nodes
    }

    /// Every endpoint known (this node's included), by key.
    pub fn endpoints(&self) -> &BTreeMap<String, EndpointRecord> {
        &self.endpoints
    }

    /// The changes that make this node agree with the registry; they count as applied from
    /// then on.
    pub fn plan(&mut self) -> Vec<Change> {
        let nodes: BTreeMap<String, NodeRecord> = self
            .nodes
            .iter()
            .filter(|(name, _)| **name != self.me)
            .map(|(name, r)| (name.clone(), r.clone()))
            .collect();
        let endpoints: BTreeMap<String, EndpointRecord> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.node != self.me && nodes.contains_key(&e.node))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let rejoined = |name: &str| {
            self.applied_nodes
                .get(name)
                .is_some_and(|old| nodes.get(name).is_some_and(|new| new != old))
        };
        let mut unpins = Vec::new();
        let mut leaves = Vec::new();
        let mut joins = Vec::new();
        let mut pins = Vec::new();
        for (key, old) in &self.applied_endpoints {
            // A node that leaves takes its pins along; a node that stays loses only these.
            let node_stays = nodes.contains_key(&old.node) && !rejoined(&old.node);
            if node_stays && endpoints.get(key) != Some(old) {
                unpins.push(Change::Unpin(old.clone()));
            }
        }
        for (name, old) in &self.applied_nodes {
            if !nodes.contains_key(name) || rejoined(name) {
                leaves.push(Change::Leave(old.clone()));
            }
        }
        for (name, new) in &nodes {
            if self.applied_nodes.get(name) != Some(new) {
                joins.push(Change::Join(new.clone()));
            }
        }
        for (key, new) in &endpoints {
            let unchanged = self.applied_endpoints.get(key) == Some(new) && !rejoined(&new.node);
            if !unchanged && let Some(node) = nodes.get(&new.node) {
                pins.push(Change::Pin {
                    node: node.clone(),
                    endpoint: new.clone(),
                });
            }
        }
        self.applied_nodes = nodes;
        self.applied_endpoints = endpoints;
        unpins
            .into_iter()
            .chain(leaves)
            .chain(joins)
            .chain(pins)
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fleet::record::NetworkRef;
    use crate::wire::MacAddr;

    fn keys() -> Keys {
        Keys::new("/vswitch")
    }

    fn node(name: &str, boot: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            endpoint: format!("192.0.2.{}:4789", name.len()).parse().unwrap(),
            networks: vec![NetworkRef {
                name: "default".into(),
                vni: 42,
            }],
            public_key: None,
            boot: boot.into(),
        }
    }

    fn endpoint(node: &str, container: &str, mac: u8) -> EndpointRecord {
        EndpointRecord {
            node: node.into(),
            container_id: container.into(),
            ifname: "eth0".into(),
            name: container.into(),
            network: "default".into(),
            vni: 42,
            mac: MacAddr([2, 0, 0, 0, 0, mac]),
            ips: vec![format!("10.244.0.{mac}").parse().unwrap()],
            labels: BTreeMap::new(),
        }
    }

    fn put_node(r: &mut Registry, n: &NodeRecord) {
        r.put(
            keys().node(&n.name).as_bytes(),
            &serde_json::to_vec(n).unwrap(),
        );
    }

    fn put_endpoint(r: &mut Registry, e: &EndpointRecord) {
        r.put(
            keys().endpoint(e).as_bytes(),
            &serde_json::to_vec(e).unwrap(),
        );
    }

    fn kinds(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Leave(n) => format!("leave {}", n.name),
                Change::Join(n) => format!("join {}", n.name),
                Change::Pin { endpoint, .. } => format!("pin {}", endpoint.container_id),
                Change::Unpin(e) => format!("unpin {}", e.container_id),
            })
            .collect()
    }

    #[test]
    fn nodes_join_with_their_endpoints_and_this_node_is_left_out() {
        let mut r = Registry::new("me", keys());
        put_node(&mut r, &node("me", "1"));
        put_endpoint(&mut r, &endpoint("me", "mine", 1));
        put_endpoint(&mut r, &endpoint("b", "c1", 2));
        assert!(r.plan().is_empty(), "an endpoint waits for its node");
        put_node(&mut r, &node("b", "1"));
        assert_eq!(kinds(&r.plan()), ["join b", "pin c1"]);
        assert!(r.plan().is_empty(), "applied once");
        put_endpoint(&mut r, &endpoint("b", "c2", 3));
        assert_eq!(kinds(&r.plan()), ["pin c2"]);
        r.delete(keys().endpoint(&endpoint("b", "c1", 2)).as_bytes());
        assert_eq!(kinds(&r.plan()), ["unpin c1"]);
    }

    #[test]
    fn a_node_that_expires_leaves_with_its_endpoints_at_once() {
        let mut r = Registry::new("me", keys());
        put_node(&mut r, &node("b", "1"));
        put_endpoint(&mut r, &endpoint("b", "c1", 2));
        r.plan();
        // The lease expired: etcd deletes the node and its endpoints, in any order.
        r.delete(keys().node("b").as_bytes());
        assert_eq!(
            kinds(&r.plan()),
            ["leave b"],
            "no unpin: the leave takes them"
        );
        r.delete(keys().endpoint(&endpoint("b", "c1", 2)).as_bytes());
        assert!(r.plan().is_empty());
    }

    #[test]
    fn a_restarted_node_rejoins_and_only_its_current_endpoints_come_back() {
        let mut r = Registry::new("me", keys());
        put_node(&mut r, &node("b", "boot1"));
        put_endpoint(&mut r, &endpoint("b", "old", 2));
        put_endpoint(&mut r, &endpoint("b", "kept", 3));
        r.plan();
        // The restart: a new boot, the old container gone, a new one.
        put_node(&mut r, &node("b", "boot2"));
        r.delete(keys().endpoint(&endpoint("b", "old", 2)).as_bytes());
        put_endpoint(&mut r, &endpoint("b", "new", 4));
        assert_eq!(
            kinds(&r.plan()),
            ["leave b", "join b", "pin kept", "pin new"]
        );
    }

    #[test]
    fn a_listing_after_an_outage_catches_every_missed_change() {
        let mut r = Registry::new("me", keys());
        for name in ["b", "cc", "ddd"] {
            put_node(&mut r, &node(name, "1"));
        }
        put_endpoint(&mut r, &endpoint("b", "c1", 2));
        put_endpoint(&mut r, &endpoint("cc", "c2", 3));
        r.plan();
        // Meanwhile: ddd expired, cc's container moved to a new MAC, e joined.
        let listing: Vec<(String, Vec<u8>)> = vec![
            (
                keys().node("b"),
                serde_json::to_vec(&node("b", "1")).unwrap(),
            ),
            (
                keys().node("cc"),
                serde_json::to_vec(&node("cc", "1")).unwrap(),
            ),
            (
                keys().node("eeee"),
                serde_json::to_vec(&node("eeee", "1")).unwrap(),
            ),
            (
                keys().endpoint(&endpoint("b", "c1", 2)),
                serde_json::to_vec(&endpoint("b", "c1", 2)).unwrap(),
            ),
            (
                keys().endpoint(&endpoint("cc", "c2", 9)),
                serde_json::to_vec(&endpoint("cc", "c2", 9)).unwrap(),
            ),
        ];
        r.replace(listing.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())));
        assert_eq!(
            kinds(&r.plan()),
            ["unpin c2", "leave ddd", "join eeee", "pin c2"]
        );
        assert!(r.plan().is_empty());
    }

    #[test]
    fn malformed_records_are_ignored_and_counted() {
        let mut r = Registry::new("me", keys());
        r.put(keys().node("b").as_bytes(), b"not json");
        let mut liar = node("c", "1");
        liar.name = "someone-else".into();
        r.put(
            keys().node("c").as_bytes(),
            &serde_json::to_vec(&liar).unwrap(),
        );
        let stray = endpoint("x", "c1", 2);
        r.put(
            keys().endpoint(&endpoint("b", "c1", 2)).as_bytes(),
            &serde_json::to_vec(&stray).unwrap(),
        );
        r.put(&[0xff, 0xfe], b"{}");
        r.put(b"/vswitch/ipam/foo", b"whatever");
        assert_eq!(r.malformed(), 4);
        assert!(r.plan().is_empty());
    }
}
