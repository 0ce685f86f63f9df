//! Network policy and QoS on the frame path: where the switch asks [`crate::policy`] about a
//! frame, once the FDB has said where it goes.
//!
//! The control plane installs, on every worker's switch, the compiled policy in an `Arc`
//! together with the connection table and the deny-log limiter all workers share
//! ([`Switch::set_policy`]), and the shared QoS buckets of each limited port
//! ([`Switch::set_port_qos`]). A switch with neither checks one flag per frame and goes on.
//!
//! Which ports a frame crosses, and so which rules apply (a super-frame is decided once and
//! charged its full size on the wire, every segment's headers included):
//!
//! - port to port: egress QoS of the source, then one decision with the egress rules of the
//!   source and the ingress rules of the destination, then ingress QoS of the destination;
//! - port to peer: egress QoS and egress rules of the source; the peer's host decides ingress;
//! - peer to port: ingress rules and ingress QoS of the destination; the sender's host
//!   decided egress;
//! - broadcast, multicast and unknown unicast: egress once at the source (tracked), then each
//!   receiving port's ingress rules (not tracked: a flood opens no connection) and QoS; the
//!   ports that refuse are left out, and the frame is dropped when nobody is left.
//!
//! Non-IP frames and the ICMPv6 messages IPv6 needs (neighbour discovery) are not subject to
//! rules (port security judges them) but count against QoS. While a policy is in force, IP
//! traffic from or to a port the compilation does not know yet (plugged a moment ago, the new
//! compilation on its way) is denied: a container is never open before its policy applies. Denied flows are kept, at the
//! rate the shared [`LogLimiter`] allows, for the caller to log ([`Switch::take_denied`]).

use std::sync::Arc;
use std::time::Instant;

use crate::offload::Offload;
use crate::policy::{
    Classified, Compiled, Conntrack, Direction, FlowCache, FlowKey, LogLimiter, Outcome, PortQos,
    Ports, RuleId, classify,
};

use super::counters::DropCounters;
use super::{DropReason, Output, PortId, Switch};

/// Denied flows kept between two [`Switch::take_denied`] calls; more are counted as suppressed.
const DENIED_KEPT: usize = 64;

/// What the control plane hands each worker's switch to enforce policy.
#[derive(Debug, Clone)]
pub struct PolicyInstall {
    /// The policies compiled for this node's endpoints (the same `Arc` on every worker).
    pub compiled: Arc<Compiled>,
    /// The connection table, shared by every worker.
    pub conntrack: Arc<Conntrack>,
    /// How many denied flows may be logged, shared by every worker.
    pub log: Arc<LogLimiter>,
}

/// A denied flow worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeniedFlow {
    /// The flow.
    pub flow: FlowKey,
    /// Where it was denied.
    pub direction: Direction,
    /// The deny rule, or `None` for "selected and nothing allows it".
    pub rule: Option<RuleId>,
    /// Denied flows left out of the log since the previous one.
    pub suppressed: u64,
}

/// The switch's policy and QoS state.
#[derive(Debug, Default)]
pub(super) struct Enforcement {
    policy: Option<PolicyInstall>,
    cache: Option<FlowCache>,
    /// By raw port id.
    qos: Vec<Option<Arc<PortQos>>>,
    limited_ports: usize,
    denied: Vec<DeniedFlow>,
}

impl Clone for Enforcement {
    /// A clone shares the policy and buckets and starts with an empty flow cache.
    fn clone(&self) -> Self {
        Enforcement {
            policy: self.policy.clone(),
            cache: self.policy.as_ref().map(|_| FlowCache::default()),
            qos: self.qos.clone(),
            limited_ports: self.limited_ports,
            denied: Vec::new(),
        }
    }
}

impl Enforcement {
    #[inline]
    pub(super) fn is_active(&self) -> bool {
        self.policy.is_some() || self.limited_ports > 0
    }

    fn qos(&self, port: PortId) -> Option<&PortQos> {
        self.qos.get(port.get() as usize)?.as_deref()
    }

    /// Decides `frame` (going where `out` says) and takes the ports that refuse it out of
    /// `out`. `from` is the local port it came from, `None` for a frame from a peer.
    fn enforce(
        &mut self,
        now: Instant,
        from: Option<PortId>,
        frame: &[u8],
        out: &mut Output,
        drops: &mut DropCounters,
    ) -> Result<(), DropReason> {
        let (bytes, packets) = wire_size(frame.len(), &out.offload);
        if let Some(from) = from
            && let Some(qos) = self.qos(from)
            && !qos.admit(Direction::Egress, now, bytes, packets)
        {
            return Err(DropReason::RateLimited);
        }
        if let Some(policy) = &self.policy {
            let flow = match classify(frame) {
                Classified::Flow(flow) => Some(flow),
                Classified::Exempt => None,
                Classified::Malformed => return Err(DropReason::Malformed),
            };
            if let Some(flow) = flow {
                let cache = self.cache.get_or_insert_with(FlowCache::default);
                let compiled = &policy.compiled;
                // A port plugged since the compilation waits for the next one, closed.
                if from.is_some_and(|p| compiled.endpoint_at(p).is_none()) {
                    return Err(DropReason::PolicyDenied);
                }
                let before = out.ports.len();
                out.ports.retain(|&p| compiled.endpoint_at(p).is_some());
                for _ in out.ports.len()..before {
                    drops.bump(DropReason::PolicyDenied);
                }
                if out.ports.is_empty() && out.transmits.is_empty() {
                    return Err(DropReason::PolicyDenied);
                }
                let single = out.ports.len() + out.transmits.len() == 1;
                let to = if single {
                    out.ports.first().copied()
                } else {
                    None
                };
                if single || from.is_some() {
                    let decision = compiled.check(
                        now,
                        cache,
                        &policy.conntrack,
                        &flow,
                        Ports { from, to },
                        bytes,
                    );
                    match decision.outcome {
                        Outcome::Denied { direction, rule } => {
                            if let Some(suppressed) = policy.log.check(now)
                                && self.denied.len() < DENIED_KEPT
                            {
                                self.denied.push(DeniedFlow {
                                    flow: flow.key,
                                    direction,
                                    rule,
                                    suppressed,
                                });
                            }
                            return Err(DropReason::PolicyDenied);
                        }
                        Outcome::Limited { .. } => return Err(DropReason::RateLimited),
                        Outcome::Established | Outcome::Related | Outcome::Allowed => {}
                    }
                }
                if !single {
                    let before = out.ports.len();
                    out.ports.retain(|&port| {
                        compiled
                            .evaluate_cached(cache, port, Direction::Ingress, &flow.key, bytes)
                            .verdict
                            .allows()
                    });
                    for _ in out.ports.len()..before {
                        drops.bump(DropReason::PolicyDenied);
                    }
                    if out.ports.is_empty() && out.transmits.is_empty() {
                        return Err(DropReason::PolicyDenied);
                    }
                }
            }
        }
        if self.limited_ports > 0 {
            let before = out.ports.len();
            let qos = &self.qos;
            out.ports.retain(|&port| {
                qos.get(port.get() as usize)
                    .and_then(Option::as_deref)
                    .is_none_or(|q| q.admit(Direction::Ingress, now, bytes, packets))
            });
            if out.ports.is_empty() && out.transmits.is_empty() && before > 0 {
                return Err(DropReason::RateLimited);
            }
            for _ in out.ports.len()..before {
                drops.bump(DropReason::RateLimited);
            }
        }
        Ok(())
    }
}

/// Bytes and packets a frame is on the wire: a super-frame as the segments it becomes.
fn wire_size(len: usize, offload: &Offload) -> (u64, u64) {
    let gso_size = usize::from(offload.hdr.gso_size);
    if !offload.is_gso() || gso_size == 0 {
        return (len as u64, 1);
    }
    let headers = offload.segment_len.saturating_sub(gso_size).min(len);
    let segments = (len - headers).div_ceil(gso_size).max(1);
    ((len + (segments - 1) * headers) as u64, segments as u64)
}

impl Switch {
    /// Enforces `install` from now on (`None`: no policy). Keeps the flow cache's memory
    /// across installs; a new compilation has a new epoch, so no old verdict is reused.
    pub fn set_policy(&mut self, install: Option<PolicyInstall>) {
        if install.is_some() && self.enforcement.cache.is_none() {
            self.enforcement.cache = Some(FlowCache::default());
        }
        if install.is_none() {
            self.enforcement.denied.clear();
        }
        self.enforcement.policy = install;
    }

    /// The policy in force.
    pub fn policy(&self) -> Option<&Arc<Compiled>> {
        self.enforcement.policy.as_ref().map(|p| &p.compiled)
    }

    /// Limits a port's traffic with buckets shared by every worker (`None`: no limit).
    pub fn set_port_qos(&mut self, port: PortId, qos: Option<Arc<PortQos>>) {
        let e = &mut self.enforcement;
        let at = port.get() as usize;
        if e.qos.len() <= at {
            e.qos.resize(at + 1, None);
        }
        e.qos[at] = qos;
        e.limited_ports = e.qos.iter().filter(|q| q.is_some()).count();
    }

    /// True when denied flows wait to be logged.
    #[inline]
    pub fn has_denied(&self) -> bool {
        !self.enforcement.denied.is_empty()
    }

    /// Denied flows worth a log line since the last call (bounded, and only as many as the
    /// shared log limiter lets through).
    pub fn take_denied(&mut self) -> std::vec::Drain<'_, DeniedFlow> {
        self.enforcement.denied.drain(..)
    }

    /// Applies policy and QoS to a frame the FDB has sent to `out`'s ports and peers.
    #[inline]
    pub(super) fn enforce(
        &mut self,
        now: Instant,
        from: Option<PortId>,
        frame: &[u8],
        out: &mut Output,
    ) -> Result<(), DropReason> {
        if !self.enforcement.is_active() {
            return Ok(());
        }
        let to = out.ports.first().copied();
        let result = self
            .enforcement
            .enforce(now, from, frame, out, &mut self.counters.drops);
        if let Err(reason) = result {
            self.count_enforced(reason, from.or(to));
        }
        result
    }

    /// Counts a frame policy or QoS refused against its source port, or for a frame from a
    /// peer, its destination port.
    fn count_enforced(&mut self, reason: DropReason, port: Option<PortId>) {
        if let Some(p) = port.and_then(|p| self.ports.get_mut(p.get() as usize)?.as_mut()) {
            match reason {
                DropReason::PolicyDenied => p.stats.denied += 1,
                DropReason::RateLimited => p.stats.limited += 1,
                _ => {}
            }
        }
    }

    /// Forgets a removed port's buckets.
    pub(super) fn forget_port_qos(&mut self, port: PortId) {
        if self.enforcement.qos(port).is_some() {
            self.set_port_qos(port, None);
        }
    }
}
