//! Property tests: random sequences of allocate / request / release / gc / restart / time steps
//! against a model, on the in-memory and the embedded store. No address is ever leased twice,
//! none is lost, and reuse follows the hold-time and oldest-first rules.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use ipam::{EmbeddedStore, Error, MemStore, Owner, Pool, PoolConfig, Store};
use proptest::prelude::*;

const HOLD_SECS: u64 = 30;
const OWNERS: usize = 18;

#[derive(Clone, Debug)]
enum Op {
    Allocate(usize),
    Request(usize, u32),
    Release(usize),
    Gc(u32),
    Advance(u64),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..OWNERS).prop_map(Op::Allocate),
        2 => (0..OWNERS, 0u32..18).prop_map(|(o, h)| Op::Request(o, h)),
        4 => (0..OWNERS).prop_map(Op::Release),
        1 => any::<u32>().prop_map(Op::Gc),
        2 => (0u64..45).prop_map(Op::Advance),
        1 => Just(Op::Restart),
    ]
}

fn owner(i: usize) -> Owner {
    Owner::new(format!("container-{i}"), "eth0").unwrap()
}

fn config() -> PoolConfig {
    // Two node subnets of 16 addresses: 13 leasable each.
    let mut c = PoolConfig::new("prop", "10.9.0.0/27".parse().unwrap());
    c.node_prefix = Some(28);
    c.hold = Duration::from_secs(HOLD_SECS);
    c
}

/// What the pool should hold.
#[derive(Default)]
struct Model {
    leases: BTreeMap<usize, IpAddr>,
    /// Free addresses that were leased before, with their release time in ms.
    released: HashMap<IpAddr, u64>,
}

struct Harness {
    reopen: Box<dyn Fn() -> Arc<dyn Store>>,
    clock: Arc<AtomicU64>,
    pool: Pool,
}

impl Harness {
    fn new(reopen: Box<dyn Fn() -> Arc<dyn Store>>) -> Self {
        let clock = Arc::new(AtomicU64::new(0));
        let pool = Self::open(&reopen(), &clock);
        Self {
            reopen,
            clock,
            pool,
        }
    }

    fn open(store: &Arc<dyn Store>, clock: &Arc<AtomicU64>) -> Pool {
        let c = clock.clone();
        Pool::open(store.clone(), &config(), "node-a")
            .unwrap()
            .with_clock(move || {
                UNIX_EPOCH
                    + Duration::from_secs(1_700_000_000)
                    + Duration::from_millis(c.load(Ordering::SeqCst))
            })
    }

    fn now_ms(&self) -> u64 {
        1_700_000_000_000 + self.clock.load(Ordering::SeqCst)
    }

    /// Closes the store (the last handle goes with the pool) and opens it again.
    fn restart(&mut self) {
        let placeholder = Pool::open(Arc::new(MemStore::new()), &config(), "x").unwrap();
        drop(std::mem::replace(&mut self.pool, placeholder));
        self.pool = Self::open(&(self.reopen)(), &self.clock);
    }
}

fn run(mut h: Harness, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let subnet = h.pool.node_subnet();
    let capacity = h.pool.capacity() as usize;
    let hosts: Vec<IpAddr> = subnet.hosts().filter(|a| *a != h.pool.gateway()).collect();
    prop_assert_eq!(hosts.len(), capacity);
    let mut m = Model::default();

    for op in ops {
        let now = h.now_ms();
        match op {
            Op::Allocate(o) => {
                let result = h.pool.allocate(&owner(o), None);
                if let Some(held) = m.leases.get(&o) {
                    prop_assert_eq!(result.unwrap().address, *held);
                    continue;
                }
                if m.leases.len() == capacity {
                    prop_assert!(
                        matches!(result, Err(Error::AddressesExhausted { .. })),
                        "{:?}",
                        result
                    );
                    continue;
                }
                let lease = result.map_err(|e| TestCaseError::fail(format!("no leak: {e}")))?;
                let a = lease.address;
                prop_assert!(hosts.contains(&a), "{} outside the leasable hosts", a);
                prop_assert!(!m.leases.values().any(|x| *x == a), "{} leased twice", a);
                let hold_ms = HOLD_SECS * 1000;
                let oldest = m.released.values().min().copied();
                let expired_exists = oldest.is_some_and(|t| t + hold_ms <= now);
                match m.released.get(&a) {
                    Some(t) => {
                        prop_assert_eq!(Some(*t), oldest, "reuse is oldest release first");
                        if t + hold_ms > now {
                            let fresh_or_expired = hosts.iter().any(|x| {
                                !m.leases.values().any(|l| l == x)
                                    && m.released.get(x).is_none_or(|t| t + hold_ms <= now)
                            });
                            prop_assert!(!fresh_or_expired, "{} reused within its hold time", a);
                        }
                    }
                    None => prop_assert!(
                        !expired_exists,
                        "released addresses past their hold come first"
                    ),
                }
                m.released.remove(&a);
                m.leases.insert(o, a);
            }
            Op::Request(o, offset) => {
                let a = match subnet.network() {
                    IpAddr::V4(n) => IpAddr::V4((u32::from(n) + offset).into()),
                    IpAddr::V6(_) => unreachable!(),
                };
                let result = h.pool.allocate(&owner(o), Some(a));
                if let Some(held) = m.leases.get(&o) {
                    if *held == a {
                        prop_assert_eq!(result.unwrap().address, a);
                    } else {
                        prop_assert!(
                            matches!(result, Err(Error::OwnerHoldsOther { .. })),
                            "{:?}",
                            result
                        );
                    }
                } else if !subnet.contains(&a) {
                    prop_assert!(
                        matches!(result, Err(Error::AddressOutsideSubnet { .. })),
                        "{:?}",
                        result
                    );
                } else if !hosts.contains(&a) {
                    prop_assert!(
                        matches!(result, Err(Error::AddressReserved { .. })),
                        "{:?}",
                        result
                    );
                } else if m.leases.values().any(|x| *x == a) {
                    prop_assert!(
                        matches!(result, Err(Error::AddressInUse { .. })),
                        "{:?}",
                        result
                    );
                } else {
                    prop_assert_eq!(result.unwrap().address, a);
                    m.released.remove(&a);
                    m.leases.insert(o, a);
                }
            }
            Op::Release(o) => {
                let got = h.pool.release(&owner(o)).unwrap().map(|l| l.address);
                let want = m.leases.remove(&o);
                prop_assert_eq!(got, want);
                if let Some(a) = want {
                    m.released.insert(a, now);
                }
            }
            Op::Gc(mask) => {
                let live: Vec<Owner> = (0..OWNERS)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(owner)
                    .collect();
                let mut got: Vec<IpAddr> = h
                    .pool
                    .gc(&live)
                    .unwrap()
                    .into_iter()
                    .map(|l| l.address)
                    .collect();
                got.sort();
                let dead: Vec<usize> = m
                    .leases
                    .keys()
                    .copied()
                    .filter(|i| mask & (1 << i) == 0)
                    .collect();
                let mut want: Vec<IpAddr> = dead.iter().map(|i| m.leases[i]).collect();
                want.sort();
                prop_assert_eq!(got, want);
                for i in dead {
                    if let Some(a) = m.leases.remove(&i) {
                        m.released.insert(a, now);
                    }
                }
            }
            Op::Advance(secs) => {
                h.clock.fetch_add(secs * 1000, Ordering::SeqCst);
            }
            Op::Restart => h.restart(),
        }
        let mut held: Vec<(String, IpAddr)> = h
            .pool
            .leases()
            .unwrap()
            .into_iter()
            .map(|l| (l.owner.container_id().to_owned(), l.address))
            .collect();
        held.sort();
        let mut want: Vec<(String, IpAddr)> = m
            .leases
            .iter()
            .map(|(i, a)| (owner(*i).container_id().to_owned(), *a))
            .collect();
        want.sort();
        prop_assert_eq!(held, want);
        let audit = h.pool.audit().unwrap();
        prop_assert!(audit.problems.is_empty(), "{:?}", audit.problems);
    }

    // Nothing leaked: once everything is released and rested, the whole subnet can be leased.
    for i in m.leases.keys() {
        h.pool.release(&owner(*i)).unwrap();
    }
    h.clock.fetch_add(HOLD_SECS * 1000, Ordering::SeqCst);
    let mut all: Vec<IpAddr> = (0..capacity)
        .map(|i| h.pool.allocate(&owner(100 + i), None).map(|l| l.address))
        .collect::<Result<_, _>>()
        .map_err(|e| TestCaseError::fail(format!("leak: {e}")))?;
    all.sort();
    all.dedup();
    prop_assert_eq!(all.len(), capacity);
    let extra = h.pool.allocate(&owner(999), None);
    prop_assert!(
        matches!(extra, Err(Error::AddressesExhausted { .. })),
        "{:?}",
        extra
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn memory_store_never_double_allocates_or_leaks(ops in prop::collection::vec(op(), 1..80)) {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        run(Harness::new(Box::new(move || store.clone())), ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn embedded_store_never_double_allocates_or_leaks_across_restarts(
        ops in prop::collection::vec(op(), 1..50)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.redb");
        let reopen = move || -> Arc<dyn Store> { Arc::new(EmbeddedStore::open(&path).unwrap()) };
        run(Harness::new(Box::new(reopen)), ops)?;
    }
}
