//! The one error type of the crate, worded for the operator who has to act on it.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::owner::Owner;

/// Everything that can go wrong in address management.
///
/// Faults of the caller's input (names, addresses, configuration) are kept apart from the state of
/// the pool (exhaustion, conflicts) and from failures of the store underneath.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A container id, interface name, node name or pool name was rejected.
    #[error("invalid {field}: {problem}")]
    InvalidName {
        /// Which name: "container id", "interface name", "node name" or "pool name".
        field: &'static str,
        /// What is wrong with it.
        problem: NameProblem,
    },

    /// The pool configuration cannot work.
    #[error("pool {pool:?}: {problem}")]
    Config {
        /// Name of the pool.
        pool: String,
        /// What is wrong and how to fix it.
        problem: ConfigProblem,
    },

    /// The store holds this pool with another cluster network or node prefix.
    #[error(
        "pool {pool:?} was created with cluster {stored_cluster} and node prefix /{stored_node_prefix}, \
         but the configuration now says {cluster} and /{node_prefix}: restore the previous values, \
         or give the new layout a new pool name"
    )]
    LayoutChanged {
        /// Name of the pool.
        pool: String,
        /// Cluster network recorded in the store.
        stored_cluster: IpNet,
        /// Node prefix length recorded in the store.
        stored_node_prefix: u8,
        /// Cluster network of the configuration.
        cluster: IpNet,
        /// Node prefix length of the configuration.
        node_prefix: u8,
    },

    /// Every node subnet of the cluster network is claimed by some node.
    #[error(
        "pool {pool:?}: all {count} node subnets (/{node_prefix}) of cluster {cluster} are claimed; \
         remove nodes that are gone, use a larger cluster network, or a longer node_prefix"
    )]
    SubnetsExhausted {
        /// Name of the pool.
        pool: String,
        /// Cluster network.
        cluster: IpNet,
        /// Node prefix length.
        node_prefix: u8,
        /// Number of node subnets in the cluster network.
        count: u128,
    },

    /// The node subnet this node asked for (or held before) is claimed by another node.
    #[error(
        "pool {pool:?}: node subnet {subnet} is claimed by node {holder:?}; give node {node:?} \
         another node_subnet, or leave node_subnet unset to claim a free one"
    )]
    SubnetTaken {
        /// Name of the pool.
        pool: String,
        /// The subnet.
        subnet: IpNet,
        /// This node.
        node: String,
        /// The node that holds the claim.
        holder: String,
    },

    /// This node's claim on its subnet lapsed and another node claimed the subnet.
    #[error(
        "pool {pool:?}: node {node:?} lost its subnet {subnet} to node {holder:?} (its claim expired \
         while the store was unreachable); reopen the pool to claim a free subnet"
    )]
    SubnetLost {
        /// Name of the pool.
        pool: String,
        /// The subnet that was lost.
        subnet: IpNet,
        /// This node.
        node: String,
        /// The node that holds the claim now.
        holder: String,
    },

    /// Every address of the node subnet is leased.
    #[error(
        "pool {pool:?}: node subnet {subnet} is full ({in_use} of {capacity} addresses leased); \
         release leases that are no longer used (gc), or use a shorter node_prefix (each bit less \
         doubles the addresses per node)"
    )]
    AddressesExhausted {
        /// Name of the pool.
        pool: String,
        /// This node's subnet.
        subnet: IpNet,
        /// Addresses leased.
        in_use: u128,
        /// Addresses that can be leased at all.
        capacity: u128,
    },

    /// A requested address is leased to another owner.
    #[error(
        "pool {pool:?}: address {address} is already leased to {holder}; request another address or none"
    )]
    AddressInUse {
        /// Name of the pool.
        pool: String,
        /// The requested address.
        address: IpAddr,
        /// Who holds it.
        holder: Owner,
    },

    /// A requested address does not belong to this node's subnet.
    #[error(
        "pool {pool:?}: address {address} is outside this node's subnet {subnet}; request an address inside it"
    )]
    AddressOutsideSubnet {
        /// Name of the pool.
        pool: String,
        /// The requested address.
        address: IpAddr,
        /// This node's subnet.
        subnet: IpNet,
    },

    /// A requested address is the network, gateway or broadcast address of the subnet.
    #[error(
        "pool {pool:?}: address {address} is the {role} address of {subnet} and is never leased"
    )]
    AddressReserved {
        /// Name of the pool.
        pool: String,
        /// The requested address.
        address: IpAddr,
        /// The node subnet.
        subnet: IpNet,
        /// Which reserved address it is.
        role: Reserved,
    },

    /// The owner already holds a different address than the one it requests.
    #[error(
        "pool {pool:?}: {owner} already holds {held}, not the requested {requested}; release it first"
    )]
    OwnerHoldsOther {
        /// Name of the pool.
        pool: String,
        /// The owner.
        owner: Owner,
        /// The address it holds.
        held: IpAddr,
        /// The address it asked for.
        requested: IpAddr,
    },

    /// A record in the store could not be decoded.
    #[error("store record {key:?} is corrupt: {detail}")]
    Corrupt {
        /// Key of the record.
        key: String,
        /// Why it could not be read.
        detail: String,
    },

    /// The embedded store failed.
    #[error("embedded store {path}: {source}")]
    Embedded {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<redb::Error>,
    },

    /// The etcd store failed.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),

    /// etcd did not answer in time.
    #[error("etcd did not answer within {secs} s; check the endpoints and that etcd is up")]
    EtcdTimeout {
        /// The timeout that passed.
        secs: u64,
    },

    /// Concurrent writers kept invalidating a transaction.
    #[error("store: gave up after {attempts} attempts that conflicted with concurrent writers")]
    Contention {
        /// How many times the transaction was tried.
        attempts: u32,
    },

    /// A store reported success without running the transaction body: a bug in that store.
    #[error("store reported a transaction as done without running it")]
    BodyNotRun,

    /// The store's background worker is gone (the store is shutting down).
    #[error("store is shut down")]
    ShutDown,

    /// An operating system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameProblem {
    /// The name is empty.
    #[error("it is empty")]
    Empty,
    /// The name is longer than allowed.
    #[error("it is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The name contains a control character.
    #[error("it contains the control character {0:?}")]
    ControlChar(char),
    /// The name contains a character not allowed in this kind of name.
    #[error("it contains {0:?}, which is not allowed here")]
    BadChar(char),
}

/// Why a pool configuration cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigProblem {
    /// The cluster network has host bits set.
    #[error("cluster {given} has host bits set; did you mean {network}?")]
    ClusterNotNetwork {
        /// As configured.
        given: IpNet,
        /// With the host bits cleared.
        network: IpNet,
    },
    /// The node prefix is shorter than the cluster prefix.
    #[error("node_prefix /{node_prefix} is shorter than the cluster prefix of {cluster}; use /{} or longer", cluster.prefix_len())]
    NodePrefixShort {
        /// Cluster network.
        cluster: IpNet,
        /// Node prefix length.
        node_prefix: u8,
    },
    /// The node prefix leaves no room for network, gateway, broadcast and one container.
    #[error("node_prefix /{node_prefix} leaves no address for containers; use /{max} or shorter")]
    NodePrefixLong {
        /// Node prefix length.
        node_prefix: u8,
        /// Longest usable node prefix for the family.
        max: u8,
    },
    /// The fixed node subnet is not one of the cluster's node subnets.
    #[error("node_subnet {subnet} is not a /{node_prefix} network inside cluster {cluster}")]
    NodeSubnetInvalid {
        /// As configured.
        subnet: IpNet,
        /// Cluster network.
        cluster: IpNet,
        /// Node prefix length.
        node_prefix: u8,
    },
}

/// The addresses of a node subnet that are never leased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reserved {
    /// The first address (all host bits zero).
    Network,
    /// The first host address, the node's gateway.
    Gateway,
    /// The last address (all host bits one).
    Broadcast,
}

impl std::fmt::Display for Reserved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reserved::Network => "network",
            Reserved::Gateway => "gateway",
            Reserved::Broadcast => "broadcast",
        })
    }
}

impl Error {
    pub(crate) fn embedded(path: &std::path::Path, source: impl Into<redb::Error>) -> Self {
        Error::Embedded {
            path: path.to_path_buf(),
            source: Box::new(source.into()),
        }
    }

    pub(crate) fn corrupt(key: &str, detail: impl std::fmt::Display) -> Self {
        Error::Corrupt {
            key: key.to_owned(),
            detail: detail.to_string(),
        }
    }
}
