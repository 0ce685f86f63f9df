//! [`Pool`]: one node's handle on one named pool, and the [`Lease`]s it hands out.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::Serialize;

use crate::alloc::{self, Audit, Ctx, LeaseRecord};
use crate::config::PoolConfig;
use crate::error::Error;
use crate::owner::{Owner, check_node_name};
use crate::store::{Store, Txn};
use crate::subnet::{Layout, NodeSubnet, gateway_of};

/// An address leased to an owner, with what its interface needs to be configured.
///
/// The interface takes [`Lease::interface_address`]: the address with the *cluster* prefix
/// length, since every container of a network shares one L2 segment across hosts; node subnets
/// only shard allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Lease {
    /// The pool it comes from.
    pub pool: String,
    /// Who holds it.
    pub owner: Owner,
    /// The leased address.
    pub address: IpAddr,
    /// The node subnet the address was taken from.
    pub node_subnet: IpNet,
    /// The gateway of that node subnet (its first host address).
    pub gateway: IpAddr,
    /// The cluster network of the pool.
    pub cluster: IpNet,
    /// The node that made the lease.
    pub node: String,
    /// When the lease was made.
    pub allocated_at: SystemTime,
}

impl Lease {
    /// The address with the cluster prefix length, as the interface is configured.
    pub fn interface_address(&self) -> IpNet {
        // The address lies inside the cluster network, so its prefix length is valid for it.
        IpNet::new(self.address, self.cluster.prefix_len()).unwrap_or(self.cluster)
    }

    /// The cluster prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.cluster.prefix_len()
    }
}

/// Runs `f` as one transaction of `store` and returns what its last run produced.
fn transact<T>(
    store: &dyn Store,
    mut f: impl FnMut(&mut dyn Txn) -> Result<T, Error>,
) -> Result<T, Error> {
    let mut out = None;
    store.transact(&mut |tx| {
        out = Some(f(tx)?);
        Ok(())
    })?;
    out.ok_or(Error::BodyNotRun)
}

type Clock = dyn Fn() -> SystemTime + Send + Sync;

/// One node's handle on a named pool: its node subnet is claimed, and addresses are leased
/// from it.
///
/// All methods block on the store; call them from a blocking context (for example tokio's
/// `spawn_blocking`). A `Pool` is `Send + Sync` and can be shared behind an `Arc`.
pub struct Pool {
    store: Arc<dyn Store>,
    name: String,
    node: String,
    layout: Layout,
    subnet: NodeSubnet,
    hold: Duration,
    clock: Box<Clock>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("node", &self.node)
            .field("cluster", &self.layout.cluster)
            .field("node_subnet", &self.subnet.net())
            .field("hold", &self.hold)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Opens the pool `config.name` for node `node`, claiming its node subnet: the one fixed by
    /// `config.node_subnet`, else the one this node held last if still free, else the first
    /// free one.
    pub fn open(store: Arc<dyn Store>, config: &PoolConfig, node: &str) -> Result<Self, Error> {
        let layout = config.layout()?;
        check_node_name(node)?;
        let subnet = transact(store.as_ref(), |tx| {
            alloc::claim(tx, &config.name, layout, node, config.node_subnet)
        })?;
        Ok(Self {
            store,
            name: config.name.clone(),
            node: node.to_owned(),
            layout,
            subnet,
            hold: config.hold,
            clock: Box::new(SystemTime::now),
        })
    }

    /// Replaces the wall clock used for lease times and the hold time (for tests and simulation).
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This node's subnet.
    pub fn node_subnet(&self) -> IpNet {
        self.subnet.net()
    }

    /// The gateway of this node's subnet.
    pub fn gateway(&self) -> IpAddr {
        self.subnet.gateway()
    }

    /// The cluster network.
    pub fn cluster(&self) -> IpNet {
        self.layout.cluster
    }

    /// How many addresses this node's subnet can lease.
    pub fn capacity(&self) -> u128 {
        self.subnet.capacity()
    }

    /// Leases an address to `owner`.
    ///
    /// An owner that already holds a lease gets it back (a retried CNI ADD). `requested` asks
    /// for a particular address, which must lie in this node's subnet and be free; without it
    /// the next address is taken: the longest-released one once its hold time has passed, else
    /// a never-used one, else the longest-released one even within its hold time.
    pub fn allocate(&self, owner: &Owner, requested: Option<IpAddr>) -> Result<Lease, Error> {
        let now = self.now_ms();
        let ctx = self.ctx();
        let record = transact(self.store.as_ref(), |tx| {
            alloc::allocate(tx, &ctx, owner, requested, now)
        })?;
        self.lease(record)
    }

    /// Ends `owner`'s lease and returns it; `None` if it had none (releasing twice is fine).
    pub fn release(&self, owner: &Owner) -> Result<Option<Lease>, Error> {
        let now = self.now_ms();
        let ctx = self.ctx();
        transact(self.store.as_ref(), |tx| alloc::release(tx, &ctx, owner, now))?
            .map(|r| self.lease(r))
            .transpose()
    }

    /// The lease `owner` holds in this pool, made by any node.
    pub fn get(&self, owner: &Owner) -> Result<Option<Lease>, Error> {
        let ctx = self.ctx();
        transact(self.store.as_ref(), |tx| alloc::get(tx, &ctx, owner))?
            .map(|r| self.lease(r))
            .transpose()
    }

    /// Every lease this node made in this pool.
    pub fn leases(&self) -> Result<Vec<Lease>, Error> {
        let ctx = self.ctx();
        transact(self.store.as_ref(), |tx| alloc::leases(tx, &ctx))?
            .into_iter()
            .map(|r| self.lease(r))
            .collect()
    }

    /// Releases every lease this node made whose owner is not in `live`, and returns them.
    pub fn gc<'a>(&self, live: impl IntoIterator<Item = &'a Owner>) -> Result<Vec<Lease>, Error> {
        let live: HashSet<&Owner> = live.into_iter().collect();
        let mut released = Vec::new();
        for lease in self.leases()? {
            if !live.contains(&lease.owner) {
                released.extend(self.release(&lease.owner)?);
            }
        }
        Ok(released)
    }

    /// Checks the records of the whole pool (all nodes) against each other.
    pub fn audit(&self) -> Result<Audit, Error> {
        transact(self.store.as_ref(), |tx| {
            alloc::audit(tx, &self.name, self.layout)
        })
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            pool: &self.name,
            subnet: self.subnet,
            node: &self.node,
            hold_ms: u64::try_from(self.hold.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn now_ms(&self) -> u64 {
        (self.clock)()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn lease(&self, r: LeaseRecord) -> Result<Lease, Error> {
        let gateway = gateway_of(r.node_subnet)
            .ok_or_else(|| Error::corrupt(&r.owner.key(), "node subnet too small"))?;
        Ok(Lease {
            pool: self.name.clone(),
            owner: r.owner,
            address: r.address,
            node_subnet: r.node_subnet,
            gateway,
            cluster: self.layout.cluster,
            node: r.node,
            allocated_at: UNIX_EPOCH + Duration::from_millis(r.allocated_at_ms),
        })
    }
}
