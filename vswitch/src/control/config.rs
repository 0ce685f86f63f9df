//! The daemon's TOML configuration: what a node is, which networks it carries, who its peers are,
//! and where cluster state lives. Parsing is strict (unknown keys are errors) and every error
//! names the file, the key and the reason.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::wire::Vni;

/// The VXLAN destination port assigned by IANA (RFC 7348).
pub const DEFAULT_UDP_PORT: u16 = 4789;
/// Inner MTU that fits a 1500-byte underlay: 1500 - 20 (IPv4) - 8 (UDP) - 8 (VXLAN) - 14 (Ethernet).
pub const DEFAULT_MTU: u16 = 1450;
/// The network name used when a request names none.
pub const DEFAULT_NETWORK: &str = "default";

/// A configuration that failed to load: which file, which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("config {}: {key}: {reason}", path.display())]
pub struct ConfigError {
    /// The file that was read.
    pub path: PathBuf,
    /// The dotted key path that is wrong (`networks[1].vni`), or `-` when the file itself is.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The whole daemon configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node.
    pub node: NodeConfig,
    /// Networks this node carries; one named `default` on VNI 42 when none is given.
    #[serde(default = "default_networks")]
    pub networks: Vec<NetworkConfig>,
    /// The other nodes, reached over the underlay.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Where cluster state (address leases) lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// Switching tables and their limits.
    #[serde(default)]
    pub switch: SwitchTuning,
    /// Fleet membership (with an etcd store) and peer health.
    #[serde(default)]
    pub fleet: crate::fleet::FleetConfig,
    /// Network policies in force from the start (the policy file's shape, see README); those
    /// applied at run time are kept in the state directory beside them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<crate::policy::Policy>,
}

/// This node: its name, its underlay address and its local files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// A name unique in the cluster.
    pub name: String,
    /// The underlay address VXLAN is sent from and received on (IPv4 or IPv6).
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// Instead of `address`: the interface whose address (its first IPv4 one, else its first
    /// global IPv6 one) is the underlay address, looked up at start.
    #[serde(default)]
    pub interface: Option<String>,
    /// The VXLAN UDP port, the same on every node.
    #[serde(default = "default_udp_port")]
    pub port: u16,
    /// Where the daemon keeps its state (address leases, attached ports).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The control API socket used by the `vswitch` command (mode 0600).
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// How many sockets, bound to ports in the ephemeral range, spread the outer UDP source port
    /// over flows.
    #[serde(default = "default_source_ports")]
    pub source_ports: usize,
    /// Datapath worker threads, each serving one queue of every TAP and one socket of the
    /// VXLAN port. Default: one per CPU the daemon may run on, at most 16.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Let containers hand the switch 64 KB TCP/UDP super-frames with partial checksums
    /// (virtio-net headers on the TAPs), segmented in userspace towards peers and coalesced
    /// from them. Off: one MTU-sized frame per read and write.
    #[serde(default = "default_true")]
    pub offloads: bool,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when absent.
    #[serde(default)]
    pub metrics_address: Option<SocketAddr>,
    /// A group whose members may use the control socket besides root (the socket is then mode
    /// 0660 and owned by this group); only root and the daemon's own user when absent.
    #[serde(default)]
    pub control_group: Option<String>,
    /// The file holding this node's private key (`vswitch keygen` writes one), needed when a
    /// network is sealed.
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// Seconds after which a sealed session is rekeyed: 120 by default, and only shorter. For
    /// tests that want many rekeys quickly; a deployment has no reason to set it.
    #[serde(default)]
    pub rekey_after_secs: Option<u64>,
    /// Datagrams sent on a sealed session after which it is rekeyed: 2^40 by default, and only
    /// fewer. For tests, like `rekey_after_secs`.
    #[serde(default)]
    pub rekey_after_messages: Option<u64>,
}

/// One overlay network: an L2 segment spanning every node, identified on the wire by its VNI.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The name containers are attached by.
    pub name: String,
    /// The VXLAN network identifier (24 bits), checked as it is read: a bad value is an error
    /// naming `networks[N].vni`, never a silent default.
    #[serde(default)]
    pub vni: Vni,
    /// The cluster-wide IPv4 subnet; containers are configured with its prefix length.
    #[serde(default = "default_subnet")]
    pub subnet: Ipv4Net,
    /// The length of the per-node slices of `subnet` that addresses are allocated from.
    #[serde(default = "default_node_prefix_len")]
    pub node_prefix_len: u8,
    /// This node's slice, fixed; claimed from the store when absent.
    #[serde(default)]
    pub node_subnet: Option<Ipv4Net>,
    /// An optional cluster-wide IPv6 ULA prefix, split into one /64 per node.
    #[serde(default)]
    pub subnet6: Option<Ipv6Net>,
    /// The inner (container) MTU; by default 1450, or 1422 on a sealed network (see
    /// [`NetworkConfig::mtu`]).
    #[serde(default, rename = "mtu")]
    pub mtu_setting: Option<u16>,
    /// Seal the network: frames cross the underlay only authenticated and encrypted, to and
    /// from peers whose public keys are configured.
    #[serde(default)]
    pub encryption: bool,
    /// Lower the MSS option of TCP SYNs to what the MTU allows (MTU - 40, IPv6 MTU - 60), so
    /// containers whose interface MTU is larger never start connections the path cannot carry.
    #[serde(default = "default_true")]
    pub clamp_mss: bool,
    /// A file holding the sealed network's pre-shared key (`vswitch keygen --psk` writes one,
    /// mode 0600), mixed into the handshake with every peer of the network. Every sealed
    /// network shared with one peer must name the same file, or none.
    #[serde(default)]
    pub psk_file: Option<PathBuf>,
    /// Seconds a released address rests before it is handed out again (while others are free),
    /// so stale ARP and conntrack entries elsewhere do not meet a new container.
    #[serde(default = "default_address_hold")]
    pub address_hold_secs: u64,
    /// Give the host a port on the network: an interface in the daemon's namespace holding the
    /// gateway address. Absent: on when `masquerade` is. See [`NetworkConfig::host_port`].
    #[serde(default, rename = "host_port")]
    pub host_port_setting: Option<bool>,
    /// Masquerade the network's traffic to outside the cluster's networks behind the host's
    /// address (needs the host port).
    #[serde(default)]
    pub masquerade: bool,
    /// Networks this one is connected to: the switch routes between them, both ways.
    #[serde(default)]
    pub routes_to: Vec<String>,
}

/// Another node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its node name.
    pub name: String,
    /// Its underlay address.
    pub address: IpAddr,
    /// Its VXLAN port, when it differs from this node's.
    #[serde(default)]
    pub port: Option<u16>,
    /// Its public key (`vswitch pubkey` on that node), needed for sealed networks.
    #[serde(default)]
    pub public_key: Option<String>,
    /// The networks it carries; all of this node's networks when absent.
    #[serde(default)]
    pub networks: Option<Vec<String>>,
}

/// Where leases and node subnets are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum StoreConfig {
    /// An embedded database in the state directory: one machine, no server.
    #[default]
    Embedded,
    /// An etcd cluster shared by the fleet.
    Etcd {
        /// Client URLs, e.g. `http://10.0.0.5:2379`.
        endpoints: Vec<String>,
        /// A key prefix, so several clusters can share one etcd.
        #[serde(default = "default_etcd_prefix")]
        prefix: String,
        /// How long a node's subnet claim outlives the node.
        #[serde(default = "default_lease_ttl")]
        lease_ttl_secs: u64,
    },
}

/// Limits and timers of the switching tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchTuning {
    /// Seconds after which a learned MAC that has not been seen is forgotten.
    #[serde(default = "default_fdb_aging")]
    pub fdb_aging_secs: u64,
    /// Learned MACs kept at most, over all networks.
    #[serde(default = "default_fdb_max")]
    pub fdb_max_entries: usize,
    /// Learned MACs kept at most behind one local port.
    #[serde(default = "default_fdb_max_per_port")]
    pub fdb_max_per_port: usize,
    /// Learned MACs (and ARP neighbours) kept at most behind one peer.
    #[serde(default = "default_fdb_max_per_peer")]
    pub fdb_max_per_peer: usize,
    /// Broadcast, multicast, unknown-unicast frames and ARP requests a port may send a second
    /// (per worker); beyond that they are dropped (`flood_limited`).
    #[serde(default = "default_flood_rate")]
    pub flood_rate: u64,
    /// How many of those a port may send at once after a quiet spell.
    #[serde(default = "default_flood_burst")]
    pub flood_burst: u64,
    /// EtherTypes a port with port security may send besides IPv4, IPv6 and ARP.
    #[serde(default)]
    pub allowed_ethertypes: Vec<u16>,
    /// Peers created by `accept_unknown_peers`, at most.
    #[serde(default = "default_max_dynamic_peers")]
    pub max_dynamic_peers: usize,
    /// Of those, how many a flood (broadcast, unknown unicast) is replicated to.
    #[serde(default = "default_flood_dynamic_peers")]
    pub flood_dynamic_peers: usize,
    /// Accept VXLAN from addresses that are not configured peers (off: an open VXLAN port lets
    /// anyone who can reach it inject frames into the overlay).
    #[serde(default)]
    pub accept_unknown_peers: bool,
    /// Answer ARP requests for addresses the switch knows instead of flooding them.
    #[serde(default = "default_true")]
    pub arp_suppression: bool,
}

impl Default for SwitchTuning {
    fn default() -> Self {
        Self {
            fdb_aging_secs: default_fdb_aging(),
            fdb_max_entries: default_fdb_max(),
            fdb_max_per_port: default_fdb_max_per_port(),
            fdb_max_per_peer: default_fdb_max_per_peer(),
            flood_rate: default_flood_rate(),
            flood_burst: default_flood_burst(),
            allowed_ethertypes: Vec::new(),
            max_dynamic_peers: default_max_dynamic_peers(),
            flood_dynamic_peers: default_flood_dynamic_peers(),
            accept_unknown_peers: false,
            arp_suppression: true,
        }
    }
}

/// The network of a config that names none: a new node's containers reach the host and the
/// outside world, as under Docker's default bridge.
fn default_networks() -> Vec<NetworkConfig> {
    vec![NetworkConfig {
        masquerade: true,
        ..NetworkConfig::named(DEFAULT_NETWORK)
    }]
}
fn default_udp_port() -> u16 {
    DEFAULT_UDP_PORT
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/vswitch")
}
fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/vswitch/vswitchd.sock")
}
fn default_source_ports() -> usize {
    8
}
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(DEFAULT_MAX_WORKERS))
}

/// Most workers chosen by default: past this, more queues and buffers per container cost more
/// than a host's containers gain; set `node.workers` to go further.
const DEFAULT_MAX_WORKERS: usize = 16;

/// Most datapath workers: a TAP has at most 256 queues.
const MAX_WORKERS: usize = 256;
fn default_subnet() -> Ipv4Net {
    Ipv4Net::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default()
}
fn default_node_prefix_len() -> u8 {
    24
}
fn default_address_hold() -> u64 {
    30
}
fn default_etcd_prefix() -> String {
    "/vswitch".to_owned()
}
fn default_lease_ttl() -> u64 {
    30
}
fn default_fdb_aging() -> u64 {
    300
}
fn default_fdb_max() -> usize {
    65_536
}
fn default_fdb_max_per_peer() -> usize {
    crate::fdb::FdbConfig::default().max_per_peer
}
fn default_flood_rate() -> u64 {
    crate::switch::SwitchConfig::default().flood_rate
}
fn default_flood_burst() -> u64 {
    crate::switch::SwitchConfig::default().flood_burst
}
fn default_max_dynamic_peers() -> usize {
    crate::switch::SwitchConfig::default().max_dynamic_peers
}
fn default_flood_dynamic_peers() -> usize {
    crate::switch::SwitchConfig::default().flood_dynamic_peers
}
fn default_fdb_max_per_port() -> usize {
    1024
}
fn default_true() -> bool {
    true
}

impl NetworkConfig {
    /// A network with every default and the given name.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            vni: Vni::DEFAULT,
            subnet: default_subnet(),
            node_prefix_len: default_node_prefix_len(),
            node_subnet: None,
            subnet6: None,
            mtu_setting: None,
            encryption: false,
            clamp_mss: true,
            psk_file: None,
            address_hold_secs: default_address_hold(),
            host_port_setting: None,
            masquerade: false,
            routes_to: Vec::new(),
        }
    }

    /// Whether the network has a host port: as configured, else when it is masqueraded.
    pub fn host_port(&self) -> bool {
        self.host_port_setting.unwrap_or(self.masquerade)
    }

    /// The VNI.
    pub fn vni(&self) -> Vni {
        self.vni
    }

    /// The inner MTU: as configured, else 1450 (1500 less VXLAN over IPv4), less the 28 bytes
    /// sealing adds on a sealed network.
    pub fn mtu(&self) -> u16 {
        let sealing = if self.encryption {
            crate::tunnel::SEALED_OVERHEAD as u16
        } else {
            0
        };
        self.mtu_setting.unwrap_or(DEFAULT_MTU - sealing)
    }
}

impl PeerConfig {
    /// The peer's VXLAN endpoint, given this node's default port.
    pub fn endpoint(&self, default_port: u16) -> SocketAddr {
        SocketAddr::new(self.address, self.port.unwrap_or(default_port))
    }
}

impl SwitchTuning {
    /// The FDB aging time.
    pub fn fdb_aging(&self) -> Duration {
        Duration::from_secs(self.fdb_aging_secs)
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            key: "-".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates config text; `path` is only used in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| toml_error(path, text, &e))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let mut err = toml_error(path, text, &inner);
            // A key spelled as the empty string leaves an empty path: keep the error's own key.
            if key != "." && !key.is_empty() {
                err.key = key;
            }
            err
        })?;
        config.validate().map_err(|(key, reason)| ConfigError {
            path: path.to_owned(),
            key,
            reason,
        })?;
        Ok(config)
    }

    /// Looks up a network by name.
    pub fn network(&self, name: &str) -> Option<&NetworkConfig> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// The networks `peer` carries, of this node's.
    pub fn peer_networks<'a>(
        &'a self,
        peer: &'a PeerConfig,
    ) -> impl Iterator<Item = &'a NetworkConfig> + 'a {
        self.networks.iter().filter(move |n| {
            peer.networks
                .as_ref()
                .is_none_or(|names| names.contains(&n.name))
        })
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: String, reason: String| Err((key, reason));
        validate_name(&self.node.name).or_else(|r| err("node.name".into(), r))?;
        for (i, p) in self.policies.iter().enumerate() {
            if self.policies[..i].iter().any(|q| q.name == p.name) {
                return err(
                    format!("policies[{i}].name"),
                    format!("policy {:?} is defined twice", p.name),
                );
            }
        }
        if self.node.port == 0 {
            return err("node.port".into(), "must not be 0".into());
        }
        match (&self.node.address, &self.node.interface) {
            (Some(_), Some(_)) | (None, None) => {
                return err(
                    "node.address".into(),
                    "set either node.address or node.interface".into(),
                );
            }
            (Some(address), None) if address.is_unspecified() || address.is_multicast() => {
                return err(
                    "node.address".into(),
                    format!("{address} is not a unicast address"),
                );
            }
            (None, Some(name)) if name.is_empty() || name.len() > 15 || name.contains('/') => {
                return err(
                    "node.interface".into(),
                    format!("{name:?} is not an interface name"),
                );
            }
            _ => {}
        }
        if !(1..=256).contains(&self.node.source_ports) {
            return err(
                "node.source_ports".into(),
                format!("{} is not in 1..=256", self.node.source_ports),
            );
        }
        if !(1..=MAX_WORKERS).contains(&self.node.workers) {
            return err(
                "node.workers".into(),
                format!("{} is not in 1..={MAX_WORKERS}", self.node.workers),
            );
        }
        if self.networks.is_empty() {
            return err("networks".into(), "at least one network is needed".into());
        }
        let mut names = BTreeSet::new();
        let mut vnis = BTreeSet::new();
        for (i, net) in self.networks.iter().enumerate() {
            let key = |field: &str| format!("networks[{i}].{field}");
            validate_name(&net.name).or_else(|r| err(key("name"), r))?;
            if !names.insert(net.name.as_str()) {
                return err(
                    key("name"),
                    format!("network {:?} is defined twice", net.name),
                );
            }
            let vni = net.vni;
            if !vnis.insert(vni) {
                return err(key("vni"), format!("VNI {vni} is used by two networks"));
            }
            if net.subnet.prefix_len() > 30 {
                return err(
                    key("subnet"),
                    format!("{} leaves no room for containers", net.subnet),
                );
            }
            if net.node_prefix_len < net.subnet.prefix_len() || net.node_prefix_len > 30 {
                return err(
                    key("node_prefix_len"),
                    format!(
                        "/{} must lie between the subnet's /{} and /30",
                        net.node_prefix_len,
                        net.subnet.prefix_len()
                    ),
                );
            }
            if let Some(node_subnet) = net.node_subnet {
                if node_subnet.prefix_len() != net.node_prefix_len
                    || !net.subnet.contains(&node_subnet)
                    || node_subnet.network() != node_subnet.addr()
                {
                    return err(
                        key("node_subnet"),
                        format!(
                            "{node_subnet} is not a /{} slice of {}",
                            net.node_prefix_len, net.subnet
                        ),
                    );
                }
            }
            if let Some(v6) = net.subnet6 {
                if v6.prefix_len() > 64 {
                    return err(
                        key("subnet6"),
                        format!("{v6} is longer than /64; one /64 per node is carved from it"),
                    );
                }
            }
            if !(576..=9000).contains(&net.mtu()) {
                return err(key("mtu"), format!("{} is not in 576..=9000", net.mtu()));
            }
        }
        super::gateway::validate(&self.networks)?;
        if let Some(group) = &self.node.control_group {
            validate_name(group).or_else(|r| err("node.control_group".into(), r))?;
        }
        let mut peer_names = BTreeSet::new();
        // Peers are told apart by source address alone, whatever their port.
        let mut addresses = std::collections::BTreeMap::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let key = |field: &str| format!("peers[{i}].{field}");
            validate_name(&peer.name).or_else(|r| err(key("name"), r))?;
            if peer.name == self.node.name {
                return err(key("name"), "a peer cannot have this node's name".into());
            }
            if !peer_names.insert(peer.name.as_str()) {
                return err(key("name"), format!("peer {:?} is listed twice", peer.name));
            }
            if let Some(address) = self.node.address {
                check_family(peer.address, address).or_else(|r| err(key("address"), r))?;
            }
            if peer.address.is_unspecified() || peer.address.is_multicast() {
                return err(
                    key("address"),
                    format!("{} is not a unicast address", peer.address),
                );
            }
            if peer.port == Some(0) {
                return err(key("port"), "must not be 0".into());
            }
            if let Some(node) = self.node.address {
                check_not_self(peer.address, node).or_else(|r| err(key("address"), r))?;
            }
            if let Some(first) = addresses.insert(peer.address, i) {
                return err(
                    key("address"),
                    format!(
                        "{} is already the address of peers[{first}]: two peers cannot share an \
                         address",
                        peer.address
                    ),
                );
            }
            for (j, name) in peer.networks.iter().flatten().enumerate() {
                if self.network(name).is_none() {
                    return err(
                        format!("peers[{i}].networks[{j}]"),
                        format!("no network is named {name:?}"),
                    );
                }
            }
            match &peer.public_key {
                Some(text) => {
                    if let Err(e) = text.parse::<crypto::PublicKey>() {
                        return err(key("public_key"), format!("{e}"));
                    }
                }
                None => {
                    if let Some(sealed) = self.peer_networks(peer).find(|n| n.encryption) {
                        return err(
                            key("public_key"),
                            format!(
                                "network {:?} is sealed: give this peer's public key (`vswitch \
                                 pubkey` on it prints it)",
                                sealed.name
                            ),
                        );
                    }
                }
            }
        }
        super::sealing::validate(self).or_else(|(key, reason)| err(key, reason))?;
        if self.networks.iter().any(|n| n.encryption) && self.node.private_key.is_none() {
            return err(
                "node.private_key".into(),
                "a network is sealed: name the file `vswitch keygen` wrote".into(),
            );
        }
        if let StoreConfig::Etcd {
            endpoints,
            lease_ttl_secs,
            ..
        } = &self.store
        {
            if endpoints.is_empty() {
                return err(
                    "store.endpoints".into(),
                    "at least one endpoint is needed".into(),
                );
            }
            if *lease_ttl_secs < 5 {
                return err("store.lease_ttl_secs".into(), "must be at least 5".into());
            }
        }
        if let Err((key, reason)) = self.fleet.check() {
            return err(key, reason);
        }
        if self.switch.fdb_aging_secs == 0 {
            return err("switch.fdb_aging_secs".into(), "must be at least 1".into());
        }
        for (key, value) in [
            ("switch.fdb_max_entries", self.switch.fdb_max_entries),
            ("switch.fdb_max_per_port", self.switch.fdb_max_per_port),
            ("switch.fdb_max_per_peer", self.switch.fdb_max_per_peer),
            ("switch.flood_burst", self.switch.flood_burst as usize),
        ] {
            if value == 0 {
                return err(key.into(), "must be at least 1".into());
            }
        }
        for (i, &ethertype) in self.switch.allowed_ethertypes.iter().enumerate() {
            if ethertype < 0x0600 {
                return err(
                    format!("switch.allowed_ethertypes[{i}]"),
                    format!("{ethertype:#06x} is a length, not an EtherType (0x0600 or more)"),
                );
            }
        }
        Ok(())
    }
}

/// A peer must be reachable from this node's underlay address: same IP family.
fn check_family(peer: IpAddr, node: IpAddr) -> Result<(), String> {
    if peer.is_ipv4() == node.is_ipv4() {
        Ok(())
    } else {
        Err(format!(
            "{peer} is not of the same IP family as this node's underlay address {node}"
        ))
    }
}

/// A peer cannot be this node: its frames would come back to it.
fn check_not_self(peer: IpAddr, node: IpAddr) -> Result<(), String> {
    if peer == node {
        Err(format!(
            "{peer} is this node's own underlay address (node.address): a node is not its own peer"
        ))
    } else {
        Ok(())
    }
}

impl Config {
    /// Fixes the underlay address (looked up from `node.interface`) and checks the peers
    /// against it.
    pub fn set_underlay_address(&mut self, address: IpAddr) -> Result<(), (String, String)> {
        for (i, peer) in self.peers.iter().enumerate() {
            let key = || format!("peers[{i}].address");
            check_family(peer.address, address).map_err(|r| (key(), r))?;
            check_not_self(peer.address, address).map_err(|r| (key(), r))?;
        }
        self.node.address = Some(address);
        Ok(())
    }
}

/// Names of nodes, networks and peers: short, printable, shell- and key-safe.
fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{name:?} must be 1 to 63 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{name:?} may contain only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let location = e.span().map(|span| {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        format!(" (line {line})")
    });
    ConfigError {
        path: path.to_owned(),
        key: "-".into(),
        reason: format!("{}{}", e.message(), location.unwrap_or_default()),
    }
}

impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Embedded => f.write_str("embedded"),
            StoreConfig::Etcd { endpoints, .. } => write!(f, "etcd {}", endpoints.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/vswitch.toml"), text)
    }

    const MINIMAL: &str = "[node]\nname = \"a\"\naddress = \"192.0.2.1\"\n";

    #[test]
    fn minimal_config_takes_the_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.node.port, 4789);
        assert_eq!(c.networks.len(), 1);
        let net = &c.networks[0];
        assert_eq!(
            (net.name.as_str(), net.vni.get(), net.mtu()),
            ("default", 42, 1450)
        );
        assert_eq!(net.subnet.to_string(), "10.244.0.0/16");
        assert_eq!(net.node_prefix_len, 24);
        assert!(matches!(c.store, StoreConfig::Embedded));
        assert_eq!(c.switch.fdb_aging_secs, 300);
        assert!(!c.switch.accept_unknown_peers);
        assert!(c.node.workers >= 1);
    }

    #[test]
    fn full_config_parses() {
        let c = parse(
            r#"
            [node]
            name = "host-a"
            address = "fd00::1"
            port = 8472
            state_dir = "/tmp/x"
            control_socket = "/tmp/x/sock"

            [[networks]]
            name = "blue"
            vni = 100
            subnet = "10.10.0.0/16"
            node_subnet = "10.10.3.0/24"
            subnet6 = "fd00:10:244::/48"
            mtu = 1400

            [[peers]]
            name = "host-b"
            address = "fd00::2"
            networks = ["blue"]

            [store]
            kind = "etcd"
            endpoints = ["http://127.0.0.1:2379"]
            "#,
        )
        .unwrap();
        assert_eq!(c.networks[0].vni(), Vni::try_from(100).unwrap());
        assert_eq!(
            c.peers[0].endpoint(c.node.port).to_string(),
            "[fd00::2]:8472"
        );
        assert!(matches!(
            c.store,
            StoreConfig::Etcd {
                lease_ttl_secs: 30,
                ..
            }
        ));
    }

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_reason() {
        let e = error_of(&format!(
            "{MINIMAL}[[networks]]\nname = \"x\"\nvni = 16777216\n"
        ));
        assert!(
            e.starts_with("config /etc/vswitch.toml: networks[0].vni: "),
            "{e}"
        );
        assert!(e.contains("16777216"), "{e}");

        let e = error_of("[node]\nname = \"a\"\naddress = \"not-an-ip\"\n");
        assert!(e.contains("node.address"), "{e}");
        assert!(e.contains("line 3"), "{e}");

        let e = error_of(&format!("{MINIMAL}colour = \"blue\"\n"));
        assert!(e.contains("colour"), "{e}");

        let e = error_of("[node]\nname = \"a\"\n");
        assert!(e.contains("node.address"), "{e}");

        let e = error_of(&format!(
            "{MINIMAL}[[peers]]\nname = \"b\"\naddress = \"fd00::2\"\n"
        ));
        assert!(
            e.contains("peers[0].address") && e.contains("IP family"),
            "{e}"
        );

        let e = error_of(&format!(
            "{MINIMAL}[[peers]]\nname = \"b\"\naddress = \"192.0.2.2\"\nnetworks = [\"red\"]\n"
        ));
        assert!(e.contains("peers[0].networks[0]"), "{e}");

        let e = error_of(&format!(
            "{MINIMAL}[[networks]]\nname = \"x\"\nnode_subnet = \"10.245.1.0/24\"\n"
        ));
        assert!(e.contains("networks[0].node_subnet"), "{e}");

        let e = error_of(&format!(
            "{MINIMAL}[[networks]]\nname = \"x\"\n[[networks]]\nname = \"y\"\n"
        ));
        assert!(
            e.contains("networks[1].vni") && e.contains("two networks"),
            "{e}"
        );

        let e = error_of("[node]\nname = \"a\"\naddress = \"192.0.2.1\"\nworkers = 0\n");
        assert!(
            e.contains("node.workers") && e.contains("0 is not in"),
            "{e}"
        );

        let e = error_of("[node\n");
        assert!(e.contains("config /etc/vswitch.toml: -:"), "{e}");
    }

    #[test]
    fn bad_vnis_are_errors_naming_the_network_never_a_default() {
        for bad in ["16777216", "-1", "\"blue\"", "4294967296"] {
            let e = error_of(&format!(
                "{MINIMAL}[[networks]]\nname = \"x\"\n[[networks]]\nname = \"y\"\nvni = {bad}\n"
            ));
            assert!(
                e.starts_with("config /etc/vswitch.toml: networks[1].vni: "),
                "{bad}: {e}"
            );
        }
        let c = parse(&format!(
            "{MINIMAL}[[networks]]\nname = \"x\"\nvni = 16777215\n"
        ))
        .unwrap();
        assert_eq!(c.networks[0].vni().get(), 16_777_215);
    }

    #[test]
    fn two_peers_on_one_address_are_an_error_naming_the_second() {
        let e = error_of(&format!(
            "{MINIMAL}[[peers]]\nname = \"b\"\naddress = \"192.0.2.2\"\n\
             [[peers]]\nname = \"c\"\naddress = \"192.0.2.2\"\nport = 4790\n"
        ));
        assert!(
            e.starts_with("config /etc/vswitch.toml: peers[1].address: ") && e.contains("peers[0]"),
            "{e}"
        );
    }

    #[test]
    fn a_peer_at_this_nodes_address_is_an_error() {
        let e = error_of(&format!(
            "{MINIMAL}[[peers]]\nname = \"b\"\naddress = \"192.0.2.1\"\n"
        ));
        assert!(
            e.starts_with("config /etc/vswitch.toml: peers[0].address: ")
                && e.contains("own underlay address"),
            "{e}"
        );
        // The same when the address comes from node.interface.
        let mut c = parse(
            "[node]\nname = \"a\"\ninterface = \"eth0\"\n\
             [[peers]]\nname = \"b\"\naddress = \"192.0.2.9\"\n",
        )
        .unwrap();
        let (key, _) = c
            .set_underlay_address("192.0.2.9".parse().unwrap())
            .unwrap_err();
        assert_eq!(key, "peers[0].address");
    }

    #[test]
    fn missing_file_is_reported_with_its_path() {
        let e = Config::load(Path::new("/nonexistent/vswitch.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/vswitch.toml") && e.contains("cannot read"),
            "{e}"
        );
    }
}
