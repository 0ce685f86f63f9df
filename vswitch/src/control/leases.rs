//! Address leases of attached containers: one `ipam` pool per network (and one more per network
//! with an IPv6 prefix), kept in the configured store: the embedded database in the state
//! directory, or etcd for a fleet.
//!
//! After an I/O error (a full disk) the embedded database refuses every later transaction
//! until it is opened again; the pools here then reopen it and retry once, so that the leases
//! work again as soon as the disk does.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ipam::{EmbeddedStore, EtcdConfig, EtcdStore, Owner, Pool, PoolConfig, Store};
use ipnet::{IpNet, Ipv4Net};

use super::config::{Config, NetworkConfig, StoreConfig};

/// Makes a state file readable and writable by its owner only: one created by an older daemon
/// (under a looser umask) may be open to others.
fn restrict(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("checking {}", path.display()))?;
    if meta.is_file() && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

/// A container's addresses on one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The IPv4 address with the network's prefix length.
    pub v4: IpNet,
    /// The IPv6 address with the network's IPv6 prefix length, on dual-stack networks.
    pub v6: Option<IpNet>,
}

/// The pools of every network this node carries.
pub struct Leases {
    store: Option<Arc<dyn Store>>,
    /// The embedded database's file, for reopening it.
    embedded: Option<PathBuf>,
    node: String,
    pools: BTreeMap<String, (Pool, Option<Pool>)>,
    /// The networks the pools were opened for, for reopening them.
    networks: BTreeMap<String, NetworkConfig>,
}

/// Whether `e` is the embedded database refusing work after an earlier I/O error.
fn needs_reopen(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ipam::Error>(),
            Some(ipam::Error::Embedded { source, .. }) if matches!(**source, redb::Error::PreviousIo)
        )
    })
}

impl Leases {
    /// Opens the store the config names.
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        let mut embedded = None;
        let store: Arc<dyn Store> = match &config.store {
            StoreConfig::Embedded => {
                let path = config.node.state_dir.join("ipam.redb");
                std::fs::create_dir_all(&config.node.state_dir)
                    .with_context(|| format!("creating {}", config.node.state_dir.display()))?;
                let store = EmbeddedStore::open(&path)?;
                restrict(&path)?;
                embedded = Some(path);
                Arc::new(store)
            }
            StoreConfig::Etcd {
                endpoints,
                prefix,
                lease_ttl_secs,
            } => Arc::new(EtcdStore::connect(&EtcdConfig {
                endpoints: endpoints.clone(),
                prefix: format!("{}/ipam/", prefix.trim_end_matches('/')),
                ttl_secs: *lease_ttl_secs,
                ..EtcdConfig::default()
            })?),
        };
        Ok(Self {
            store: Some(store),
            embedded,
            node: config.node.name.clone(),
            pools: BTreeMap::new(),
            networks: BTreeMap::new(),
        })
    }

    fn store(&self) -> anyhow::Result<Arc<dyn Store>> {
        self.store
            .clone()
            .context("the address store is closed after a failed reopen")
    }

    /// Runs `op`; when the embedded database refuses it after an earlier I/O error, reopens
    /// the database and the pools and runs it once more.
    fn retrying<R>(&mut self, op: impl Fn(&Self) -> anyhow::Result<R>) -> anyhow::Result<R> {
        match op(self) {
            Err(e) if self.embedded.is_some() && needs_reopen(&e) => {
                self.reopen()
                    .with_context(|| format!("reopening the address store after: {e:#}"))?;
                op(self)
            }
            other => other,
        }
    }

    fn reopen(&mut self) -> anyhow::Result<()> {
        let Some(path) = self.embedded.clone() else {
            return Ok(());
        };
        tracing::warn!(path = %path.display(), "reopening the address store after an I/O error");
        // Every handle on the old database goes before the new one is opened.
        self.pools.clear();
        self.store = None;
        self.store = Some(Arc::new(EmbeddedStore::open(&path)?));
        let networks: Vec<NetworkConfig> = self.networks.values().cloned().collect();
        for network in &networks {
            self.open_pool(network)?;
        }
        Ok(())
    }

    /// Opens the pools of a network, claiming this node's subnets, and returns the IPv4 one.
    pub fn open_pool(&mut self, network: &NetworkConfig) -> anyhow::Result<Ipv4Net> {
        let hold = Duration::from_secs(network.address_hold_secs);
        let mut v4 = PoolConfig::new(network.name.clone(), IpNet::V4(network.subnet));
        v4.node_prefix = Some(network.node_prefix_len);
        v4.node_subnet = network.node_subnet.map(IpNet::V4);
        v4.hold = hold;
        let pool = Pool::open(self.store()?, &v4, &self.node)
            .with_context(|| format!("network {}: claiming a node subnet", network.name))?;
        let IpNet::V4(subnet) = pool.node_subnet() else {
            anyhow::bail!("network {}: the pool returned an IPv6 subnet", network.name);
        };
        let pool6 = match network.subnet6 {
            Some(prefix) => {
                let mut v6 = PoolConfig::new(format!("{}-v6", network.name), IpNet::V6(prefix));
                v6.hold = hold;
                Some(Pool::open(self.store()?, &v6, &self.node).with_context(|| {
                    format!("network {}: claiming an IPv6 node subnet", network.name)
                })?)
            }
            None => None,
        };
        self.pools.insert(network.name.clone(), (pool, pool6));
        self.networks.insert(network.name.clone(), network.clone());
        Ok(subnet)
    }

    fn pools(&self, network: &str) -> anyhow::Result<&(Pool, Option<Pool>)> {
        self.pools
            .get(network)
            .with_context(|| format!("no address pool for network {network:?}"))
    }

    /// Leases addresses to a container's interface: `requested` if given (refused when taken
    /// or outside this node's subnet), else the next free one. Asking again for the same owner
    /// returns the same addresses.
    pub fn allocate(
        &mut self,
        network: &str,
        container_id: &str,
        ifname: &str,
        requested: Option<IpAddr>,
    ) -> anyhow::Result<Addresses> {
        self.retrying(|leases| leases.allocate_once(network, container_id, ifname, requested))
    }

    fn allocate_once(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
        requested: Option<IpAddr>,
    ) -> anyhow::Result<Addresses> {
        let owner = Owner::new(container_id, ifname)?;
        let (pool, pool6) = self.pools(network)?;
        let (v4_request, v6_request) = match requested {
            Some(ip @ IpAddr::V4(_)) => (Some(ip), None),
            Some(ip @ IpAddr::V6(_)) => (None, Some(ip)),
            None => (None, None),
        };
        if v6_request.is_some() && pool6.is_none() {
            anyhow::bail!("network {network} has no IPv6 prefix (networks[].subnet6)");
        }
        let v4 = pool.allocate(&owner, v4_request)?.interface_address();
        let v6 = match pool6 {
            Some(pool6) => match pool6.allocate(&owner, v6_request) {
                Ok(lease) => Some(lease.interface_address()),
                Err(e) => {
                    let _ = pool.release(&owner);
                    return Err(e.into());
                }
            },
            None => None,
        };
        Ok(Addresses { v4, v6 })
    }

    /// Releases a container's addresses; nothing happens if it holds none.
    pub fn release(
        &mut self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> anyhow::Result<()> {
        self.retrying(|leases| leases.release_once(network, container_id, ifname))
    }

    fn release_once(&self, network: &str, container_id: &str, ifname: &str) -> anyhow::Result<()> {
        let owner = Owner::new(container_id, ifname)?;
        let (pool, pool6) = self.pools(network)?;
        pool.release(&owner)?;
        if let Some(pool6) = pool6 {
            pool6.release(&owner)?;
        }
        Ok(())
    }

    /// Releases every lease of this node whose owner is not in `live` (network, container id,
    /// interface); returns how many were released.
    pub fn retain(&mut self, live: &[(String, String, String)]) -> anyhow::Result<usize> {
        self.retrying(|leases| leases.retain_once(live))
    }

    fn retain_once(&self, live: &[(String, String, String)]) -> anyhow::Result<usize> {
        let mut released = 0;
        for (network, (pool, pool6)) in &self.pools {
            let owners: Vec<Owner> = live
                .iter()
                .filter(|(n, _, _)| n == network)
                .filter_map(|(_, id, ifname)| Owner::new(id.as_str(), ifname.as_str()).ok())
                .collect();
            released += pool.gc(&owners)?.len();
            if let Some(pool6) = pool6 {
                released += pool6.gc(&owners)?.len();
            }
        }
        Ok(released)
    }
}
