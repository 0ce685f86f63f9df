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
        transact(self.store.as_ref(), |tx| {
            alloc::release(tx, &ctx, owner, now)
        })?
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::config::DEFAULT_HOLD;
    use crate::error::Reserved;
    use crate::store::MemStore;

    /// A manual clock starting at a fixed time.
    #[derive(Clone, Default)]
    struct TestClock(Arc<AtomicU64>);

    impl TestClock {
        fn advance(&self, d: Duration) {
            self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
        }
        fn install(&self, pool: Pool) -> Pool {
            let t = self.0.clone();
            pool.with_clock(move || {
                UNIX_EPOCH
                    + Duration::from_secs(1_700_000_000)
                    + Duration::from_millis(t.load(Ordering::SeqCst))
            })
        }
    }

    fn owner(i: usize) -> Owner {
        Owner::new(format!("c{i}"), "eth0").unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn small(name: &str) -> PoolConfig {
        let mut c = PoolConfig::new(name, "10.9.0.0/28".parse().unwrap());
        c.node_prefix = Some(29);
        c
    }

    fn open(store: &Arc<MemStore>, config: &PoolConfig, node: &str, clock: &TestClock) -> Pool {
        clock.install(Pool::open(store.clone(), config, node).unwrap())
    }

    #[test]
    fn sequential_leases_with_cluster_prefix_and_gateway() {
        let store = Arc::new(MemStore::new());
        let pool = open(&store, &PoolConfig::default(), "a", &TestClock::default());
        assert_eq!(
            pool.node_subnet(),
            "10.244.0.0/24".parse::<IpNet>().unwrap()
        );
        let l1 = pool.allocate(&owner(1), None).unwrap();
        let l2 = pool.allocate(&owner(2), None).unwrap();
        assert_eq!(l1.address, ip("10.244.0.2"));
        assert_eq!(l2.address, ip("10.244.0.3"));
        assert_eq!(l1.gateway, ip("10.244.0.1"));
        assert_eq!(l1.interface_address().to_string(), "10.244.0.2/16");
        assert_eq!(l1.prefix_len(), 16);
        assert_eq!(l1.node, "a");
        assert_eq!(pool.allocate(&owner(1), None).unwrap(), l1);
        assert_eq!(pool.allocate(&owner(1), Some(l1.address)).unwrap(), l1);
        assert_eq!(pool.get(&owner(1)).unwrap(), Some(l1));
        assert_eq!(pool.leases().unwrap().len(), 2);
    }

    #[test]
    fn release_is_idempotent_and_reuse_waits_for_the_hold_time() {
        let store = Arc::new(MemStore::new());
        let clock = TestClock::default();
        let pool = open(&store, &PoolConfig::default(), "a", &clock);
        let a = pool.allocate(&owner(1), None).unwrap().address;
        let b = pool.allocate(&owner(2), None).unwrap().address;
        assert_eq!(pool.release(&owner(2)).unwrap().map(|l| l.address), Some(b));
        clock.advance(Duration::from_secs(1));
        assert_eq!(pool.release(&owner(1)).unwrap().map(|l| l.address), Some(a));
        assert_eq!(pool.release(&owner(1)).unwrap(), None);
        assert_eq!(pool.get(&owner(1)).unwrap(), None);

        let fresh = pool.allocate(&owner(3), None).unwrap().address;
        assert_eq!(
            fresh,
            ip("10.244.0.4"),
            "held addresses are not reused while others are free"
        );
        clock.advance(DEFAULT_HOLD);
        assert_eq!(
            pool.allocate(&owner(4), None).unwrap().address,
            b,
            "oldest release first"
        );
        assert_eq!(pool.allocate(&owner(5), None).unwrap().address, a);
        assert_eq!(
            pool.allocate(&owner(6), None).unwrap().address,
            ip("10.244.0.5")
        );
        assert!(pool.audit().unwrap().problems.is_empty());
    }

    #[test]
    fn requested_addresses() {
        let store = Arc::new(MemStore::new());
        let pool = open(&store, &PoolConfig::default(), "a", &TestClock::default());
        let l = pool.allocate(&owner(1), Some(ip("10.244.0.3"))).unwrap();
        assert_eq!(l.address, ip("10.244.0.3"));
        assert!(matches!(
            pool.allocate(&owner(2), Some(ip("10.244.0.3"))),
            Err(Error::AddressInUse { holder, .. }) if holder == owner(1)
        ));
        assert!(matches!(
            pool.allocate(&owner(2), Some(ip("10.244.1.3"))),
            Err(Error::AddressOutsideSubnet { .. })
        ));
        assert!(matches!(
            pool.allocate(&owner(2), Some(ip("fd00::3"))),
            Err(Error::AddressOutsideSubnet { .. })
        ));
        for (a, role) in [
            ("10.244.0.0", Reserved::Network),
            ("10.244.0.1", Reserved::Gateway),
            ("10.244.0.255", Reserved::Broadcast),
        ] {
            assert!(matches!(
                pool.allocate(&owner(2), Some(ip(a))),
                Err(Error::AddressReserved { role: r, .. }) if r == role
            ));
        }
        assert!(matches!(
            pool.allocate(&owner(1), Some(ip("10.244.0.9"))),
            Err(Error::OwnerHoldsOther { .. })
        ));
        // Sequential allocation steps over the requested address.
        assert_eq!(
            pool.allocate(&owner(2), None).unwrap().address,
            ip("10.244.0.2")
        );
        assert_eq!(
            pool.allocate(&owner(3), None).unwrap().address,
            ip("10.244.0.4")
        );
        // A released address can be requested at once, hold time or not.
        pool.release(&owner(1)).unwrap();
        assert_eq!(
            pool.allocate(&owner(4), Some(ip("10.244.0.3")))
                .unwrap()
                .address,
            ip("10.244.0.3")
        );
        assert!(pool.audit().unwrap().problems.is_empty());
    }

    #[test]
    fn exhaustion_says_what_to_do_and_held_addresses_are_the_last_resort() {
        let store = Arc::new(MemStore::new());
        let clock = TestClock::default();
        let pool = open(&store, &small("tiny"), "a", &clock);
        assert_eq!(pool.capacity(), 5);
        for i in 0..5 {
            pool.allocate(&owner(i), None).unwrap();
        }
        let err = pool.allocate(&owner(9), None).unwrap_err();
        assert!(matches!(
            err,
            Error::AddressesExhausted {
                in_use: 5,
                capacity: 5,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("\"tiny\"") && msg.contains("10.9.0.0/29") && msg.contains("node_prefix"),
            "{msg}"
        );
        let released = pool.release(&owner(2)).unwrap().unwrap();
        assert_eq!(
            pool.allocate(&owner(9), None).unwrap().address,
            released.address
        );
    }

    #[test]
    fn node_subnets_are_claimed_once_and_kept() {
        let store = Arc::new(MemStore::new());
        let clock = TestClock::default();
        let config = small("tiny");
        let a = open(&store, &config, "a", &clock);
        let b = open(&store, &config, "b", &clock);
        assert_ne!(a.node_subnet(), b.node_subnet());
        assert_eq!(
            open(&store, &config, "a", &clock).node_subnet(),
            a.node_subnet()
        );
        let err = Pool::open(store.clone(), &config, "c").unwrap_err();
        assert!(
            matches!(err, Error::SubnetsExhausted { count: 2, .. }),
            "{err}"
        );
        let mut fixed = config.clone();
        fixed.node_subnet = Some(a.node_subnet());
        assert!(matches!(
            Pool::open(store.clone(), &fixed, "c"),
            Err(Error::SubnetTaken { holder, .. }) if holder == "a"
        ));
        assert_eq!(
            open(&store, &fixed, "a", &clock).node_subnet(),
            a.node_subnet()
        );
        // Moving a node to another fixed subnet gives its previous one back.
        let mut wide = PoolConfig::default();
        let x = open(&store, &wide, "x", &clock);
        assert_eq!(x.node_subnet().to_string(), "10.244.0.0/24");
        wide.node_subnet = Some("10.244.9.0/24".parse().unwrap());
        assert_eq!(
            open(&store, &wide, "x", &clock).node_subnet(),
            wide.node_subnet.unwrap()
        );
        wide.node_subnet = None;
        assert_eq!(
            open(&store, &wide, "y", &clock).node_subnet().to_string(),
            "10.244.0.0/24"
        );
        let mut other = config.clone();
        other.node_prefix = Some(30);
        assert!(matches!(
            Pool::open(store.clone(), &other, "a"),
            Err(Error::LayoutChanged {
                stored_node_prefix: 29,
                ..
            })
        ));
        assert!(matches!(
            Pool::open(store.clone(), &config, "bad\nname"),
            Err(Error::InvalidName { .. })
        ));
    }

    #[test]
    fn gc_releases_what_is_not_live_on_this_node() {
        let store = Arc::new(MemStore::new());
        let clock = TestClock::default();
        let a = open(&store, &PoolConfig::default(), "a", &clock);
        let b = open(&store, &PoolConfig::default(), "b", &clock);
        for i in 0..4 {
            a.allocate(&owner(i), None).unwrap();
        }
        b.allocate(&owner(10), None).unwrap();
        let live = [owner(1), owner(3)];
        let mut released: Vec<Owner> = a.gc(&live).unwrap().into_iter().map(|l| l.owner).collect();
        released.sort();
        assert_eq!(released, [owner(0), owner(2)]);
        assert_eq!(a.leases().unwrap().len(), 2);
        assert!(
            b.get(&owner(10)).unwrap().is_some(),
            "other nodes' leases are left alone"
        );
        assert!(a.gc(&live).unwrap().is_empty());
        assert!(a.audit().unwrap().problems.is_empty());
    }

    #[test]
    fn dual_stack_pools_share_a_store() {
        let store = Arc::new(MemStore::new());
        let clock = TestClock::default();
        let v4 = open(&store, &PoolConfig::default(), "a", &clock);
        let v6 = open(&store, &PoolConfig::default_v6(), "a", &clock);
        assert_eq!(v6.node_subnet().to_string(), "fd00:10:244::/64");
        let o = owner(1);
        let l4 = v4.allocate(&o, None).unwrap();
        let l6 = v6.allocate(&o, None).unwrap();
        assert_eq!(l4.address, ip("10.244.0.2"));
        assert_eq!(l6.address, ip("fd00:10:244::2"));
        assert_eq!(l6.gateway, ip("fd00:10:244::1"));
        assert_eq!(l6.interface_address().to_string(), "fd00:10:244::2/48");
        assert_eq!(
            v6.allocate(&owner(2), None).unwrap().address,
            ip("fd00:10:244::3")
        );
        assert!(matches!(
            v6.allocate(&owner(3), Some(ip("fd00:10:244::"))),
            Err(Error::AddressReserved {
                role: Reserved::Network,
                ..
            })
        ));
        v4.release(&o).unwrap();
        assert!(v6.get(&o).unwrap().is_some());
    }
}
