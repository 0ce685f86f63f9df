//! Policies compiled for the frame path: per local port and direction, the rules that apply
//! in the order they are tried; a per-worker flow cache of verdicts; counters per rule;
//! `explain` and `list` for the control plane.
//!
//! Compilation resolves label selectors to addresses (of local endpoints and of endpoints on
//! other hosts alike) once, so evaluating a flow reads no labels. Rules are tried by priority,
//! highest first; at equal priority `log` comes first (it does not decide), then deny, then
//! limit, then allow: deny wins a tie. A [`Compiled`] is immutable apart from its counters and
//! `limit` buckets (atomics); the control plane builds a new one on any change and hands it to
//! every worker in an `Arc`. Each has a new epoch, so verdicts cached under the old one are
//! never used again.

use core::fmt;
use core::hash::{Hash, Hasher};
use core::net::IpAddr;
use core::sync::atomic::{AtomicU64, Ordering};
use std::collections::HashMap;
use std::time::Instant;

use ipnet::IpNet;
use rustc_hash::FxHasher;
use serde::Serialize;

use super::flow::FlowKey;
use super::model::{Action, Direction, Endpoint, PeerMatch, Policy, PortRange, Protocol, Rule};
use super::qos::RateLimiter;
use crate::switch::PortId;
use crate::wire::IpProtocol;

static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// A compiled rule's handle: an index into the [`Compiled`] it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RuleId(pub u32);

/// What policy says about a flow in one direction at one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No policy with rules in this direction selects the endpoint: open.
    Open,
    /// The rule allows it.
    Allow(RuleId),
    /// The rule allows it within its rate.
    Limit(RuleId),
    /// The rule denies it.
    Deny(RuleId),
    /// Policies select the endpoint and none of their rules allows it.
    DefaultDeny,
}

impl Verdict {
    /// True for the verdicts that let traffic pass (a limit still has to admit it).
    pub const fn allows(self) -> bool {
        matches!(self, Verdict::Open | Verdict::Allow(_) | Verdict::Limit(_))
    }

    /// The deciding rule, if a rule decided.
    pub const fn rule(self) -> Option<RuleId> {
        match self {
            Verdict::Allow(r) | Verdict::Limit(r) | Verdict::Deny(r) => Some(r),
            Verdict::Open | Verdict::DefaultDeny => None,
        }
    }
}

/// A verdict and the first `log` rule met on the way to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation {
    /// The decision.
    pub verdict: Verdict,
    /// A `log` rule that matched before the decision, if any.
    pub log: Option<RuleId>,
}

#[derive(Debug)]
enum Peers {
    Any,
    Some {
        /// Addresses of the endpoints the selectors matched, sorted.
        ips: Box<[IpAddr]>,
        nets: Box<[IpNet]>,
    },
}

#[derive(Debug)]
struct CompiledRule {
    policy: u32,
    direction: Direction,
    index: u32,
    priority: i32,
    action: Action,
    protocol: Protocol,
    ports: Box<[PortRange]>,
    peers: Peers,
    /// How many local endpoints the rule applies to.
    endpoints: u32,
}

impl CompiledRule {
    #[inline]
    fn matches(&self, key: &FlowKey, peer: IpAddr) -> bool {
        let proto_ok = match self.protocol {
            Protocol::Any => true,
            Protocol::Tcp => key.proto == IpProtocol::TCP,
            Protocol::Udp => key.proto == IpProtocol::UDP,
            Protocol::Icmp => key.is_icmp(),
        };
        if !proto_ok {
            return false;
        }
        if !self.ports.is_empty() && !self.ports.iter().any(|r| r.contains(key.dst_port)) {
            return false;
        }
        match &self.peers {
            Peers::Any => true,
            Peers::Some { ips, nets } => {
                ips.binary_search(&peer).is_ok() || nets.iter().any(|n| n.contains(&peer))
            }
        }
    }

    fn rank(&self) -> (i64, u8) {
        let action = match self.action {
            Action::Log => 0,
            Action::Deny => 1,
            Action::Limit(_) => 2,
            Action::Allow => 3,
        };
        (-i64::from(self.priority), action)
    }
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct RuleCounter {
    hits: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Debug, Default)]
struct PortTables {
    endpoint: u32,
    /// `None`: no policy selects the endpoint in that direction.
    ingress: Option<Box<[u32]>>,
    egress: Option<Box<[u32]>>,
}

/// Policies and endpoints compiled for evaluation. Shared by the workers in an `Arc`.
#[derive(Debug)]
pub struct Compiled {
    epoch: u64,
    policies: Vec<Policy>,
    endpoints: Vec<Endpoint>,
    rules: Vec<CompiledRule>,
    counters: Box<[RuleCounter]>,
    limiters: Box<[Option<RateLimiter>]>,
    /// Indexed by raw port id.
    ports: Vec<Option<PortTables>>,
    by_ip: HashMap<IpAddr, u32>,
}

/// Bytes a `limit(rate)` bucket holds: 100 ms at the rate, at least 64 KiB (a super-frame).
fn limit_burst(bits_per_sec: u64) -> u64 {
    (bits_per_sec / 80).max(64 * 1024)
}

impl Compiled {
    /// Compiles `policies` for the `endpoints` the node knows (local ones have a port).
    /// `now` starts the clocks of the `limit` buckets.
    pub fn new(policies: &[Policy], endpoints: &[Endpoint], now: Instant) -> Self {
        let mut rules = Vec::new();
        let mut limiters = Vec::new();
        for (pi, policy) in policies.iter().enumerate() {
            for direction in [Direction::Ingress, Direction::Egress] {
                for (ri, rule) in policy.rules(direction).iter().enumerate() {
                    rules.push(compile_rule(pi, ri, policy, direction, rule, endpoints));
                    limiters.push(match rule.action {
                        Action::Limit(rate) => Some(RateLimiter::new(
                            rate,
                            limit_burst(rate.bits_per_sec()),
                            None,
                            now,
                        )),
                        _ => None,
                    });
                }
            }
        }
        let mut order: Vec<u32> = (0..rules.len() as u32).collect();
        order.sort_by_key(|&r| {
            let rule = &rules[r as usize];
            (
                rule.rank(),
                policies[rule.policy as usize].name.as_str(),
                rule.direction,
                rule.index,
            )
        });
        let mut ports: Vec<Option<PortTables>> = Vec::new();
        let mut by_ip = HashMap::new();
        for (ei, ep) in endpoints.iter().enumerate() {
            for ip in &ep.ips {
                by_ip.entry(*ip).or_insert(ei as u32);
            }
            let Some(port) = ep.local else { continue };
            let list = |direction: Direction, rules: &mut [CompiledRule]| {
                let selected = policies
                    .iter()
                    .any(|p| !p.rules(direction).is_empty() && p.selector.matches(&ep.labels));
                selected.then(|| {
                    let list: Box<[u32]> = order
                        .iter()
                        .copied()
                        .filter(|&r| {
                            let rule = &rules[r as usize];
                            rule.direction == direction
                                && policies[rule.policy as usize].selector.matches(&ep.labels)
                        })
                        .collect();
                    for &r in list.iter() {
                        rules[r as usize].endpoints += 1;
                    }
                    list
                })
            };
            let tables = PortTables {
                endpoint: ei as u32,
                ingress: list(Direction::Ingress, &mut rules),
                egress: list(Direction::Egress, &mut rules),
            };
            let at = port.get() as usize;
            if ports.len() <= at {
                ports.resize_with(at + 1, || None);
            }
            ports[at] = Some(tables);
        }
        let counters = (0..rules.len()).map(|_| RuleCounter::default()).collect();
        Compiled {
            epoch: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
            policies: policies.to_vec(),
            endpoints: endpoints.to_vec(),
            rules,
            counters,
            limiters: limiters.into_boxed_slice(),
            ports,
            by_ip,
        }
    }

    /// This compilation's epoch: unique in the process, larger for later compilations.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The endpoint at a local port.
    pub fn endpoint_at(&self, port: PortId) -> Option<&Endpoint> {
        let t = self.ports.get(port.get() as usize)?.as_ref()?;
        self.endpoints.get(t.endpoint as usize)
    }

    /// Number of compiled rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Keeps the counters of rules that are unchanged from `old` (same policy name, direction,
    /// index and content), so a recompilation does not zero what operators read.
    pub fn carry_counters_from(&self, old: &Compiled) {
        let mut old_rules = HashMap::new();
        for (i, r) in old.rules.iter().enumerate() {
            let p = &old.policies[r.policy as usize];
            old_rules.insert((p.name.as_str(), r.direction, r.index), i);
        }
        for (i, r) in self.rules.iter().enumerate() {
            let p = &self.policies[r.policy as usize];
            let Some(&j) = old_rules.get(&(p.name.as_str(), r.direction, r.index)) else {
                continue;
            };
            let op = &old.policies[old.rules[j].policy as usize];
            if op.rules(r.direction).get(r.index as usize)
                != p.rules(r.direction).get(r.index as usize)
            {
                continue;
            }
            let (from, to) = (&old.counters[j], &self.counters[i]);
            to.hits
                .fetch_add(from.hits.load(Ordering::Relaxed), Ordering::Relaxed);
            to.bytes
                .fetch_add(from.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Evaluates `key` in `direction` at local `port`, without cache or counters. The peer is
    /// the source for ingress and the destination for egress. A port the compilation does not
    /// know is open.
    pub fn evaluate(&self, port: PortId, direction: Direction, key: &FlowKey) -> Evaluation {
        let tables = self.ports.get(port.get() as usize).and_then(Option::as_ref);
        let list = match (tables, direction) {
            (Some(t), Direction::Ingress) => t.ingress.as_deref(),
            (Some(t), Direction::Egress) => t.egress.as_deref(),
            (None, _) => None,
        };
        let Some(list) = list else {
            return Evaluation {
                verdict: Verdict::Open,
                log: None,
            };
        };
        let peer = match direction {
            Direction::Ingress => key.src,
            Direction::Egress => key.dst,
        };
        let mut log = None;
        for &r in list {
            let rule = &self.rules[r as usize];
            if !rule.matches(key, peer) {
                continue;
            }
            let id = RuleId(r);
            let verdict = match rule.action {
                Action::Log => {
                    log.get_or_insert(id);
                    continue;
                }
                Action::Allow => Verdict::Allow(id),
                Action::Deny => Verdict::Deny(id),
                Action::Limit(_) => Verdict::Limit(id),
            };
            return Evaluation { verdict, log };
        }
        Evaluation {
            verdict: Verdict::DefaultDeny,
            log,
        }
    }

    /// [`evaluate`](Self::evaluate) through the worker's flow cache, counting `bytes` against
    /// the deciding rule and the log rule.
    #[inline]
    pub fn evaluate_cached(
        &self,
        cache: &mut FlowCache,
        port: PortId,
        direction: Direction,
        key: &FlowKey,
        bytes: u64,
    ) -> Evaluation {
        let eval = match cache.get(self.epoch, port, direction, key) {
            Some(e) => e,
            None => {
                let e = self.evaluate(port, direction, key);
                cache.put(self.epoch, port, direction, key, e);
                e
            }
        };
        if let Some(r) = eval.verdict.rule() {
            self.count(r, bytes);
        }
        if let Some(r) = eval.log {
            self.count(r, bytes);
        }
        eval
    }

    #[inline]
    fn count(&self, rule: RuleId, bytes: u64) {
        if let Some(c) = self.counters.get(rule.0 as usize) {
            c.hits.fetch_add(1, Ordering::Relaxed);
            c.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// The bucket of a `limit(rate)` rule.
    pub fn limiter(&self, rule: RuleId) -> Option<&RateLimiter> {
        self.limiters.get(rule.0 as usize).and_then(Option::as_ref)
    }

    /// Where a rule comes from: policy name, direction, index in that direction's list.
    pub fn origin(&self, rule: RuleId) -> Option<(&str, Direction, usize)> {
        let r = self.rules.get(rule.0 as usize)?;
        Some((
            self.policies[r.policy as usize].name.as_str(),
            r.direction,
            r.index as usize,
        ))
    }

    /// Every rule with its counters, in file order, for `vswitch policy list`.
    pub fn list(&self) -> Vec<RuleView> {
        self.rules
            .iter()
            .zip(self.counters.iter())
            .enumerate()
            .map(|(i, (r, c))| {
                let p = &self.policies[r.policy as usize];
                let rule = &p.rules(r.direction)[r.index as usize];
                RuleView {
                    id: RuleId(i as u32),
                    policy: p.name.clone(),
                    direction: r.direction,
                    index: r.index as usize,
                    priority: r.priority,
                    rule: rule.to_string(),
                    endpoints: r.endpoints as usize,
                    hits: c.hits.load(Ordering::Relaxed),
                    bytes: c.bytes.load(Ordering::Relaxed),
                    limited: self.limiter(RuleId(i as u32)).map_or(0, |l| l.dropped().0),
                }
            })
            .collect()
    }

    /// Says what policy decides for traffic from `src` to `dst` with `protocol` and
    /// destination `port` (ICMP: `type << 8 | code`), at the local endpoints those addresses
    /// belong to, and why. For `vswitch policy explain`. Connection tracking is not consulted:
    /// this is the decision for a new connection.
    pub fn explain(
        &self,
        src: IpAddr,
        dst: IpAddr,
        protocol: IpProtocol,
        port: u16,
    ) -> Explanation {
        let key = FlowKey::new(src, dst, protocol, 0, port);
        let step = |ip: IpAddr, direction: Direction| -> Step {
            let endpoint = self.by_ip.get(&ip).map(|&e| &self.endpoints[e as usize]);
            let Some(ep) = endpoint else {
                return Step {
                    direction,
                    endpoint: None,
                    evaluation: None,
                    why: format!("{ip} is not an endpoint this node knows: not decided here"),
                };
            };
            let Some(local) = ep.local else {
                return Step {
                    direction,
                    endpoint: Some(ep.id.clone()),
                    evaluation: None,
                    why: format!(
                        "{} ({ip}) is on another host: its host decides {direction}",
                        ep.id
                    ),
                };
            };
            let eval = self.evaluate(local, direction, &key);
            let why = match eval.verdict {
                Verdict::Open => format!("no policy selects {} for {direction}: open", ep.id),
                Verdict::DefaultDeny => {
                    let names: Vec<&str> = self
                        .policies
                        .iter()
                        .filter(|p| {
                            !p.rules(direction).is_empty() && p.selector.matches(&ep.labels)
                        })
                        .map(|p| p.name.as_str())
                        .collect();
                    format!(
                        "{} is selected for {direction} by {} and no rule allows this: denied",
                        ep.id,
                        names.join(", ")
                    )
                }
                v => {
                    let id = v.rule().unwrap_or(RuleId(0));
                    let verb = match v {
                        Verdict::Allow(_) => "allowed",
                        Verdict::Limit(_) => "allowed within a limit",
                        _ => "denied",
                    };
                    format!("{verb} by {}", self.describe(id))
                }
            };
            let why = match eval.log {
                Some(l) => format!("{why}; logged by {}", self.describe(l)),
                None => why,
            };
            Step {
                direction,
                endpoint: Some(ep.id.clone()),
                evaluation: Some(eval),
                why,
            }
        };
        let egress = step(src, Direction::Egress);
        let ingress = step(dst, Direction::Ingress);
        let allowed = [&egress, &ingress]
            .iter()
            .all(|s| s.evaluation.is_none_or(|e| e.verdict.allows()));
        Explanation {
            key,
            allowed,
            egress,
            ingress,
        }
    }

    /// `policy "web" ingress[1] (priority 10): allow tcp ports 80 peers endpoints {app=lb}`.
    pub fn describe(&self, rule: RuleId) -> String {
        let Some(r) = self.rules.get(rule.0 as usize) else {
            return format!("rule #{}", rule.0);
        };
        let p = &self.policies[r.policy as usize];
        format!(
            "policy \"{}\" {}[{}] (priority {}): {}",
            p.name,
            r.direction,
            r.index,
            r.priority,
            p.rules(r.direction)[r.index as usize]
        )
    }
}

fn compile_rule(
    pi: usize,
    ri: usize,
    policy: &Policy,
    direction: Direction,
    rule: &Rule,
    endpoints: &[Endpoint],
) -> CompiledRule {
    let peers = if rule.peers.is_empty() {
        Peers::Any
    } else {
        let mut ips = Vec::new();
        let mut nets = Vec::new();
        for peer in &rule.peers {
            match peer {
                PeerMatch::Selector(sel) => ips.extend(
                    endpoints
                        .iter()
                        .filter(|e| sel.matches(&e.labels))
                        .flat_map(|e| e.ips.iter().copied()),
                ),
                PeerMatch::Cidr(net) => nets.push(*net),
            }
        }
        ips.sort_unstable();
        ips.dedup();
        Peers::Some {
            ips: ips.into_boxed_slice(),
            nets: nets.into_boxed_slice(),
        }
    };
    CompiledRule {
        policy: pi as u32,
        direction,
        index: ri as u32,
        priority: policy.priority,
        action: rule.action,
        protocol: rule.protocol,
        ports: rule.ports.clone().into_boxed_slice(),
        peers,
        endpoints: 0,
    }
}

/// One rule with its counters, for `vswitch policy list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleView {
    /// Its handle in this compilation.
    pub id: RuleId,
    /// The policy it belongs to.
    pub policy: String,
    /// Its direction.
    pub direction: Direction,
    /// Its index in the policy's list for that direction.
    pub index: usize,
    /// The policy's priority.
    pub priority: i32,
    /// The rule, written out.
    pub rule: String,
    /// How many local endpoints it applies to.
    pub endpoints: usize,
    /// Frames it decided (or logged).
    pub hits: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Frames its `limit` dropped.
    pub limited: u64,
}

impl Serialize for Direction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What `explain` found at one end of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Egress at the source, ingress at the destination.
    pub direction: Direction,
    /// The endpoint that address belongs to, if known.
    pub endpoint: Option<String>,
    /// The evaluation, when the endpoint is local.
    pub evaluation: Option<Evaluation>,
    /// Why, in words.
    pub why: String,
}

/// The answer of [`Compiled::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The flow explained.
    pub key: FlowKey,
    /// True when neither end denies.
    pub allowed: bool,
    /// The source's egress.
    pub egress: Step,
    /// The destination's ingress.
    pub ingress: Step,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = &self.key;
        let verdict = if self.allowed { "allowed" } else { "denied" };
        if k.is_icmp() {
            writeln!(
                f,
                "{} -> {} proto {} type {} code {}: {verdict}",
                k.src,
                k.dst,
                k.proto.0,
                k.icmp_type(),
                k.dst_port & 0xff
            )?;
        } else {
            writeln!(
                f,
                "{} -> {} proto {} port {}: {verdict}",
                k.src, k.dst, k.proto.0, k.dst_port
            )?;
        }
        writeln!(f, "  egress:  {}", self.egress.why)?;
        write!(f, "  ingress: {}", self.ingress.why)
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// 0: empty.
    epoch: u64,
    port: u32,
    direction: Direction,
    key: FlowKey,
    eval: Evaluation,
}

/// A worker's cache of verdicts: direct-mapped, keyed by flow, port, direction and epoch; a
/// new entry replaces whatever held its slot. Owned by one worker, no locks.
#[derive(Debug)]
pub struct FlowCache {
    slots: Box<[Slot]>,
    mask: usize,
    hits: u64,
    misses: u64,
}

impl FlowCache {
    /// The default number of slots (about 1.2 MB per worker).
    pub const DEFAULT_SLOTS: usize = 16 * 1024;

    /// A cache of `slots` entries, rounded up to a power of two (at least 16).
    pub fn new(slots: usize) -> Self {
        let n = slots.max(16).next_power_of_two();
        let empty = Slot {
            epoch: 0,
            port: 0,
            direction: Direction::Ingress,
            key: FlowKey::new(
                IpAddr::from([0u8; 4]),
                IpAddr::from([0u8; 4]),
                IpProtocol(0),
                0,
                0,
            ),
            eval: Evaluation {
                verdict: Verdict::Open,
                log: None,
            },
        };
        FlowCache {
            slots: vec![empty; n].into_boxed_slice(),
            mask: n - 1,
            hits: 0,
            misses: 0,
        }
    }

    #[inline]
    fn index(&self, port: PortId, direction: Direction, key: &FlowKey) -> usize {
        let mut h = FxHasher::default();
        key.hash(&mut h);
        port.get().hash(&mut h);
        (direction as u8).hash(&mut h);
        let x = h.finish();
        ((x ^ (x >> 29)) as usize) & self.mask
    }

    #[inline]
    fn get(
        &mut self,
        epoch: u64,
        port: PortId,
        direction: Direction,
        key: &FlowKey,
    ) -> Option<Evaluation> {
        let s = &self.slots[self.index(port, direction, key)];
        if s.epoch == epoch && s.port == port.get() && s.direction == direction && s.key == *key {
            self.hits += 1;
            Some(s.eval)
        } else {
            self.misses += 1;
            None
        }
    }

    #[inline]
    fn put(
        &mut self,
        epoch: u64,
        port: PortId,
        direction: Direction,
        key: &FlowKey,
        eval: Evaluation,
    ) {
        let i = self.index(port, direction, key);
        self.slots[i] = Slot {
            epoch,
            port: port.get(),
            direction,
            key: *key,
            eval,
        };
    }

    /// Lookups that hit and missed so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

impl Default for FlowCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_SLOTS)
    }
}
