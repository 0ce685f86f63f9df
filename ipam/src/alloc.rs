//! The allocator: key layout, records, and every decision about subnets and addresses, written
//! once against [`Txn`] so that all stores share it.
//!
//! Per pool `P`, the store holds:
//!
//! ```text
//! ipam/P/config                      PoolRecord   cluster network and node prefix, fixed at creation
//! ipam/P/subnet/<net>                ClaimRecord  which node holds a node subnet (session key)
//! ipam/P/node/<node>                 NodeRecord   the subnet a node held last, to get it back
//! ipam/P/owner/<container>/<ifname>  LeaseRecord  a lease, by owner
//! ipam/P/addr/<address>              AddrRecord   leased to an owner, or released at a time
//! ipam/P/free/<net>/<ms>/<address>   (empty)      release queue of a node subnet, oldest first
//! ipam/P/cursor/<net>                offset       next never-used host offset of a node subnet
//! ```
//!
//! Invariants every transaction keeps: an `owner` record and the `addr` record of its address
//! name each other; a released `addr` record has exactly one `free` entry; every host offset of a
//! node subnet below its cursor has an `addr` record. Together they mean an address is never
//! leased twice and never lost: it is leased, queued for reuse, or above the cursor.
//!
//! Every decision rests on keys read with [`Txn::get`], so optimistic stores detect conflicts.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::Error;
use crate::owner::{Owner, escape};
use crate::store::Txn;
use crate::subnet::{FIRST_OFFSET, Layout, NodeSubnet};

/// How many stale queue entries one allocation cleans up before it stops looking.
const MAX_STALE: usize = 16;

#[derive(Serialize, Deserialize)]
struct PoolRecord {
    cluster: IpNet,
    node_prefix: u8,
}

#[derive(Serialize, Deserialize)]
struct ClaimRecord {
    node: String,
}

#[derive(Serialize, Deserialize)]
struct NodeRecord {
    subnet: IpNet,
}

/// A lease as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    pub(crate) owner: Owner,
    pub(crate) address: IpAddr,
    pub(crate) node_subnet: IpNet,
    pub(crate) node: String,
    pub(crate) allocated_at_ms: u64,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AddrRecord {
    Leased(Owner),
    Released { at_ms: u64 },
}

/// Keys of one pool.
struct Keys<'a>(&'a str);

impl Keys<'_> {
    fn config(&self) -> String {
        format!("ipam/{}/config", self.0)
    }
    fn subnets(&self) -> String {
        format!("ipam/{}/subnet/", self.0)
    }
    fn subnet(&self, net: IpNet) -> String {
        format!("ipam/{}/subnet/{}", self.0, net.network())
    }
    fn node(&self, node: &str) -> String {
        format!("ipam/{}/node/{}", self.0, escape(node))
    }
    fn owners(&self) -> String {
        format!("ipam/{}/owner/", self.0)
    }
    fn owner(&self, owner: &Owner) -> String {
        format!("ipam/{}/owner/{}", self.0, owner.key())
    }
    fn addrs(&self) -> String {
        format!("ipam/{}/addr/", self.0)
    }
    fn addr(&self, addr: IpAddr) -> String {
        format!("ipam/{}/addr/{}", self.0, addr)
    }
    fn queues(&self) -> String {
        format!("ipam/{}/free/", self.0)
    }
    fn queue(&self, net: IpNet) -> String {
        format!("ipam/{}/free/{}/", self.0, net.network())
    }
    fn queued(&self, net: IpNet, at_ms: u64, addr: IpAddr) -> String {
        format!("{}{:020}/{}", self.queue(net), at_ms, addr)
    }
    fn cursors(&self) -> String {
        format!("ipam/{}/cursor/", self.0)
    }
    fn cursor(&self, net: IpNet) -> String {
        format!("ipam/{}/cursor/{}", self.0, net.network())
    }
}

fn decode<T: DeserializeOwned>(key: &str, raw: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(raw).map_err(|e| Error::corrupt(key, e))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain records into memory cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn read<T: DeserializeOwned>(tx: &mut dyn Txn, key: &str) -> Result<Option<T>, Error> {
    tx.get(key)?.map(|raw| decode(key, &raw)).transpose()
}

/// Everything an operation on one node's part of a pool needs to know.
pub(crate) struct Ctx<'a> {
    pub(crate) pool: &'a str,
    pub(crate) subnet: NodeSubnet,
    pub(crate) node: &'a str,
    pub(crate) hold_ms: u64,
}

impl Ctx<'_> {
    fn keys(&self) -> Keys<'_> {
        Keys(self.pool)
    }
}

/// Records the pool's layout on first use; refuses a different one later.
fn ensure_layout(tx: &mut dyn Txn, pool: &str, layout: Layout) -> Result<(), Error> {
    let key = Keys(pool).config();
    match read::<PoolRecord>(tx, &key)? {
        None => tx.put(
            &key,
            &encode(&PoolRecord {
                cluster: layout.cluster,
                node_prefix: layout.node_prefix,
            }),
        ),
        Some(r) if r.cluster == layout.cluster && r.node_prefix == layout.node_prefix => Ok(()),
        Some(r) => Err(Error::LayoutChanged {
            pool: pool.to_owned(),
            stored_cluster: r.cluster,
            stored_node_prefix: r.node_prefix,
            cluster: layout.cluster,
            node_prefix: layout.node_prefix,
        }),
    }
}

/// The node holding a subnet's claim, if any.
fn holder(tx: &mut dyn Txn, pool: &str, net: IpNet) -> Result<Option<String>, Error> {
    Ok(read::<ClaimRecord>(tx, &Keys(pool).subnet(net))?.map(|c| c.node))
}

/// Claims a node subnet for `node`: the fixed one, else the one it held last if still free,
/// else the first free one.
pub(crate) fn claim(
    tx: &mut dyn Txn,
    pool: &str,
    layout: Layout,
    node: &str,
    fixed: Option<IpNet>,
) -> Result<NodeSubnet, Error> {
    ensure_layout(tx, pool, layout)?;
    let keys = Keys(pool);
    let taken = |subnet: IpNet, holder: String| Error::SubnetTaken {
        pool: pool.to_owned(),
        subnet,
        node: node.to_owned(),
        holder,
    };
    let last = read::<NodeRecord>(tx, &keys.node(node))?.map(|r| r.subnet);
    let chosen = match fixed {
        Some(net) => match holder(tx, pool, net)? {
            Some(h) if h != node => return Err(taken(net, h)),
            _ => net,
        },
        None => {
            let sticky = match last.filter(|net| layout.index_of(*net).is_some()) {
                Some(net) => match holder(tx, pool, net)? {
                    Some(h) if h != node => None,
                    _ => Some(net),
                },
                None => None,
            };
            match sticky {
                Some(net) => net,
                None => first_free(tx, pool, layout, node)?,
            }
        }
    };
    if holder(tx, pool, chosen)?.is_none() {
        tx.put_session(
            &keys.subnet(chosen),
            &encode(&ClaimRecord {
                node: node.to_owned(),
            }),
        )?;
    }
    if let Some(previous) = last.filter(|net| *net != chosen) {
        if holder(tx, pool, previous)?.as_deref() == Some(node) {
            tx.delete(&keys.subnet(previous))?;
        }
    }
    if last != Some(chosen) {
        tx.put(&keys.node(node), &encode(&NodeRecord { subnet: chosen }))?;
    }
    NodeSubnet::new(chosen).ok_or_else(|| Error::corrupt(&keys.subnet(chosen), "not a node subnet"))
}

/// The node subnet `node` already holds, or the lowest unclaimed one.
fn first_free(tx: &mut dyn Txn, pool: &str, layout: Layout, node: &str) -> Result<IpNet, Error> {
    let prefix = Keys(pool).subnets();
    let mut claimed = BTreeSet::new();
    for (key, raw) in tx.scan(&prefix)? {
        let claim: ClaimRecord = decode(&key, &raw)?;
        let index = key[prefix.len()..]
            .parse::<IpAddr>()
            .ok()
            .and_then(|a| IpNet::new(a, layout.node_prefix).ok())
            .and_then(|net| layout.index_of(net).map(|i| (i, net)));
        match index {
            Some((_, net)) if claim.node == node => return Ok(net),
            Some((i, _)) => {
                claimed.insert(i);
            }
            None => return Err(Error::corrupt(&key, "not a node subnet of the pool")),
        }
    }
    let mut index = 0u128;
    while let Some(subnet) = layout.subnet(index) {
        if !claimed.contains(&index) && holder(tx, pool, subnet.net())?.is_none() {
            return Ok(subnet.net());
        }
        index += 1;
    }
    Err(Error::SubnetsExhausted {
        pool: pool.to_owned(),
        cluster: layout.cluster,
        node_prefix: layout.node_prefix,
        count: layout.subnet_count(),
    })
}

/// Verifies that this node still holds its subnet, and claims it again if the claim lapsed
/// without anybody taking it.
fn check_claim(tx: &mut dyn Txn, ctx: &Ctx<'_>) -> Result<(), Error> {
    let net = ctx.subnet.net();
    match holder(tx, ctx.pool, net)? {
        Some(h) if h == ctx.node => Ok(()),
        Some(h) => Err(Error::SubnetLost {
            pool: ctx.pool.to_owned(),
            subnet: net,
            node: ctx.node.to_owned(),
            holder: h,
        }),
        None => tx.put_session(
            &ctx.keys().subnet(net),
            &encode(&ClaimRecord {
                node: ctx.node.to_owned(),
            }),
        ),
    }
}

/// Leases an address to `owner`: the one it holds already, the one requested, or the next one.
pub(crate) fn allocate(
    tx: &mut dyn Txn,
    ctx: &Ctx<'_>,
    owner: &Owner,
    requested: Option<IpAddr>,
    now_ms: u64,
) -> Result<LeaseRecord, Error> {
    let keys = ctx.keys();
    let owner_key = keys.owner(owner);
    if let Some(held) = read::<LeaseRecord>(tx, &owner_key)? {
        return match requested {
            Some(r) if r != held.address => Err(Error::OwnerHoldsOther {
                pool: ctx.pool.to_owned(),
                owner: owner.clone(),
                held: held.address,
                requested: r,
            }),
            _ => Ok(held),
        };
    }
    check_claim(tx, ctx)?;
    let address = match requested {
        Some(r) => take_requested(tx, ctx, r)?,
        None => take_next(tx, ctx, now_ms)?,
    };
    let record = LeaseRecord {
        owner: owner.clone(),
        address,
        node_subnet: ctx.subnet.net(),
        node: ctx.node.to_owned(),
        allocated_at_ms: now_ms,
    };
    tx.put(&owner_key, &encode(&record))?;
    tx.put(
        &keys.addr(address),
        &encode(&AddrRecord::Leased(owner.clone())),
    )?;
    Ok(record)
}

fn take_requested(tx: &mut dyn Txn, ctx: &Ctx<'_>, address: IpAddr) -> Result<IpAddr, Error> {
    let subnet = ctx.subnet;
    let Some(offset) = subnet.offset_of(address) else {
        return Err(Error::AddressOutsideSubnet {
            pool: ctx.pool.to_owned(),
            address,
            subnet: subnet.net(),
        });
    };
    if let Some(role) = subnet.reserved(offset) {
        return Err(Error::AddressReserved {
            pool: ctx.pool.to_owned(),
            address,
            subnet: subnet.net(),
            role,
        });
    }
    match read::<AddrRecord>(tx, &ctx.keys().addr(address))? {
        Some(AddrRecord::Leased(holder)) => Err(Error::AddressInUse {
            pool: ctx.pool.to_owned(),
            address,
            holder,
        }),
        Some(AddrRecord::Released { at_ms }) => {
            tx.delete(&ctx.keys().queued(subnet.net(), at_ms, address))?;
            Ok(address)
        }
        None => Ok(address),
    }
}

/// The oldest entry of the node subnet's release queue, as (key, released at, address).
/// Entries whose address is not released (which the invariants rule out) are dropped.
fn oldest_released(
    tx: &mut dyn Txn,
    ctx: &Ctx<'_>,
) -> Result<Option<(String, u64, IpAddr)>, Error> {
    let keys = ctx.keys();
    let prefix = keys.queue(ctx.subnet.net());
    for _ in 0..MAX_STALE {
        let Some((key, _)) = tx.first(&prefix)? else {
            return Ok(None);
        };
        let parsed = key[prefix.len()..]
            .split_once('/')
            .and_then(|(at, addr)| Some((at.parse::<u64>().ok()?, addr.parse::<IpAddr>().ok()?)));
        if let Some((at_ms, addr)) = parsed {
            if read::<AddrRecord>(tx, &keys.addr(addr))? == Some(AddrRecord::Released { at_ms }) {
                return Ok(Some((key, at_ms, addr)));
            }
        }
        tx.delete(&key)?;
    }
    Ok(None)
}

fn take_next(tx: &mut dyn Txn, ctx: &Ctx<'_>, now_ms: u64) -> Result<IpAddr, Error> {
    let oldest = oldest_released(tx, ctx)?;
    if let Some((key, at_ms, addr)) = &oldest {
        if at_ms.saturating_add(ctx.hold_ms) <= now_ms {
            tx.delete(key)?;
            return Ok(*addr);
        }
    }
    let keys = ctx.keys();
    let subnet = ctx.subnet;
    let cursor_key = keys.cursor(subnet.net());
    let start = match tx.get(&cursor_key)? {
        Some(raw) => std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.parse::<u128>().ok())
            .ok_or_else(|| Error::corrupt(&cursor_key, "not a host offset"))?,
        None => FIRST_OFFSET,
    };
    let mut offset = start.max(FIRST_OFFSET);
    while offset <= subnet.last_offset() {
        let Some(addr) = subnet.addr(offset) else {
            break;
        };
        offset += 1;
        // An address, once recorded, stays recorded: skipping one needs no check at commit,
        // taking one does.
        let key = keys.addr(addr);
        if tx.peek(&key)?.is_none() && tx.get(&key)?.is_none() {
            tx.put(&cursor_key, offset.to_string().as_bytes())?;
            return Ok(addr);
        }
    }
    if offset != start {
        tx.put(&cursor_key, offset.to_string().as_bytes())?;
    }
    if let Some((key, _, addr)) = oldest {
        tx.delete(&key)?;
        return Ok(addr);
    }
    let addrs = keys.addrs();
    let in_use = tx
        .scan(&addrs)?
        .iter()
        .filter(|(k, _)| {
            k[addrs.len()..]
                .parse::<IpAddr>()
                .is_ok_and(|a| subnet.offset_of(a).is_some())
        })
        .count() as u128;
    Err(Error::AddressesExhausted {
        pool: ctx.pool.to_owned(),
        subnet: subnet.net(),
        in_use,
        capacity: subnet.capacity(),
    })
}

/// Ends `owner`'s lease, if it has one; its address joins the release queue of its subnet.
pub(crate) fn release(
    tx: &mut dyn Txn,
    ctx: &Ctx<'_>,
    owner: &Owner,
    now_ms: u64,
) -> Result<Option<LeaseRecord>, Error> {
    let keys = ctx.keys();
    let owner_key = keys.owner(owner);
    let Some(record) = read::<LeaseRecord>(tx, &owner_key)? else {
        return Ok(None);
    };
    tx.delete(&owner_key)?;
    let addr_key = keys.addr(record.address);
    if read::<AddrRecord>(tx, &addr_key)? == Some(AddrRecord::Leased(owner.clone())) {
        tx.put(&addr_key, &encode(&AddrRecord::Released { at_ms: now_ms }))?;
        tx.put(
            &keys.queued(record.node_subnet, now_ms, record.address),
            b"",
        )?;
    }
    Ok(Some(record))
}

/// The lease of `owner`, whichever node made it.
pub(crate) fn get(
    tx: &mut dyn Txn,
    ctx: &Ctx<'_>,
    owner: &Owner,
) -> Result<Option<LeaseRecord>, Error> {
    read(tx, &ctx.keys().owner(owner))
}

/// Every lease this node made.
pub(crate) fn leases(tx: &mut dyn Txn, ctx: &Ctx<'_>) -> Result<Vec<LeaseRecord>, Error> {
    let mut out = Vec::new();
    for (key, raw) in tx.scan(&ctx.keys().owners())? {
        let record: LeaseRecord = decode(&key, &raw)?;
        if record.node == ctx.node {
            out.push(record);
        }
    }
    Ok(out)
}

/// The outcome of [`crate::Pool::audit`]: the pool's records checked against each other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Audit {
    /// Leases in the pool, all nodes together.
    pub leases: usize,
    /// Released addresses waiting in release queues.
    pub released: usize,
    /// Everything that breaks an invariant; empty for a healthy pool.
    pub problems: Vec<Problem>,
}

/// One broken invariant found by an audit.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// Two leases name the same address.
    DuplicateAddress {
        /// The address.
        address: IpAddr,
        /// One holder.
        first: Owner,
        /// Another holder.
        second: Owner,
    },
    /// A lease whose address record does not name its owner.
    UnrecordedLease {
        /// The lease's owner.
        owner: Owner,
        /// The lease's address.
        address: IpAddr,
    },
    /// An address recorded as leased to an owner that holds no such lease.
    OrphanAddress {
        /// The address.
        address: IpAddr,
    },
    /// A released address missing from its subnet's release queue, or queued more than once.
    QueueMismatch {
        /// The address.
        address: IpAddr,
    },
    /// A host below its subnet's cursor that is neither leased nor queued: lost to allocation.
    Leaked {
        /// The address.
        address: IpAddr,
    },
}

/// Largest cursor whose range an audit walks host by host.
const AUDIT_WALK_LIMIT: u128 = 1 << 20;

/// Checks every invariant of the pool's records.
pub(crate) fn audit(tx: &mut dyn Txn, pool: &str, layout: Layout) -> Result<Audit, Error> {
    let keys = Keys(pool);
    let mut report = Audit::default();
    let mut by_address: HashMap<IpAddr, Owner> = HashMap::new();
    for (key, raw) in tx.scan(&keys.owners())? {
        let lease: LeaseRecord = decode(&key, &raw)?;
        report.leases += 1;
        if let Some(first) = by_address.insert(lease.address, lease.owner.clone()) {
            report.problems.push(Problem::DuplicateAddress {
                address: lease.address,
                first,
                second: lease.owner.clone(),
            });
        }
    }
    let mut queued: HashMap<IpAddr, usize> = HashMap::new();
    for (key, _) in tx.scan(&keys.queues())? {
        let addr = key
            .rsplit('/')
            .next()
            .and_then(|a| a.parse::<IpAddr>().ok())
            .ok_or_else(|| Error::corrupt(&key, "not a queue entry"))?;
        *queued.entry(addr).or_default() += 1;
    }
    let mut recorded: HashSet<IpAddr> = HashSet::new();
    let addrs = keys.addrs();
    let mut leased_records = HashMap::new();
    for (key, raw) in tx.scan(&addrs)? {
        let addr: IpAddr = key[addrs.len()..]
            .parse()
            .map_err(|e| Error::corrupt(&key, e))?;
        match decode::<AddrRecord>(&key, &raw)? {
            AddrRecord::Leased(owner) => {
                if by_address.get(&addr) != Some(&owner) {
                    report
                        .problems
                        .push(Problem::OrphanAddress { address: addr });
                }
                leased_records.insert(addr, owner);
            }
            AddrRecord::Released { .. } => {
                report.released += 1;
                if queued.remove(&addr) != Some(1) {
                    report
                        .problems
                        .push(Problem::QueueMismatch { address: addr });
                }
            }
        }
        recorded.insert(addr);
    }
    for address in queued.into_keys() {
        report.problems.push(Problem::QueueMismatch { address });
    }
    for (address, owner) in &by_address {
        if leased_records.get(address) != Some(owner) {
            report.problems.push(Problem::UnrecordedLease {
                owner: owner.clone(),
                address: *address,
            });
        }
    }
    let cursors = keys.cursors();
    for (key, raw) in tx.scan(&cursors)? {
        let subnet = key[cursors.len()..]
            .parse::<IpAddr>()
            .ok()
            .and_then(|a| IpNet::new(a, layout.node_prefix).ok())
            .and_then(NodeSubnet::new)
            .ok_or_else(|| Error::corrupt(&key, "not a node subnet"))?;
        let cursor = std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.parse::<u128>().ok())
            .ok_or_else(|| Error::corrupt(&key, "not a host offset"))?;
        if cursor > AUDIT_WALK_LIMIT {
            continue;
        }
        for offset in FIRST_OFFSET..cursor.min(subnet.last_offset() + 1) {
            if let Some(address) = subnet.addr(offset) {
                if !recorded.contains(&address) {
                    report.problems.push(Problem::Leaked { address });
                }
            }
        }
    }
    Ok(report)
}
