//! The per-frame decision: connection tracking first, then the flow cache, then the rules.
//!
//! A policy change (a new [`Compiled`], hence a new epoch) applies to new connections at once.
//! An established connection is re-evaluated, as the connection it was opened as, on its next
//! packet in either direction: still allowed, it carries on under the new epoch; denied now, its
//! entry is removed and the packet dropped. So revoking access cuts live connections within one
//! packet, and a change that does not concern a connection costs it one evaluation.

use std::time::Instant;

use super::compile::{Compiled, FlowCache, RuleId, Verdict};
use super::conntrack::{Conntrack, Limits, Tracked};
use super::flow::FlowInfo;
use super::model::Direction;
use crate::switch::PortId;

/// Why a frame passes or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Part of a tracked connection policy allowed.
    Established,
    /// An ICMP error about a tracked connection.
    Related,
    /// A new connection (or untracked packet) the rules allow, or no policy concerns.
    Allowed,
    /// Denied in `direction` (at the source port for egress, the destination for ingress);
    /// by a rule, or by default when no rule allows.
    Denied {
        /// Where.
        direction: Direction,
        /// The deny rule, or `None` for "selected, and nothing allows it".
        rule: Option<RuleId>,
    },
    /// Over the rate of a `limit(rate)` rule.
    Limited {
        /// The limit rule.
        rule: RuleId,
    },
}

/// The decision for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Pass or drop, and why.
    pub outcome: Outcome,
    /// A `log` rule matched: the caller may log the frame (through a
    /// [`LogLimiter`](super::LogLimiter)).
    pub log: Option<RuleId>,
}

impl Decision {
    /// True when the frame may go on.
    pub const fn passes(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Established | Outcome::Related | Outcome::Allowed
        )
    }
}

/// The local ports a frame crosses: `from` the port it came from (its egress policy applies),
/// `to` the port it goes to (its ingress policy applies); `None` for a side that is a peer
/// host, which decides there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// The source port, for frames read from a local container.
    pub from: Option<PortId>,
    /// The destination port, for frames written to a local container.
    pub to: Option<PortId>,
}

impl Compiled {
    /// Decides one frame (a super-frame once, for all its segments).
    ///
    /// `ports` says which local ports it crosses (see [`Ports`]). `bytes`
    /// is its full size on the wire, charged to `limit` rules and counted per rule. The caller
    /// owns `cache` (one per worker); `ct` is shared by all workers.
    pub fn check(
        &self,
        now: Instant,
        cache: &mut FlowCache,
        ct: &Conntrack,
        flow: &FlowInfo,
        ports: Ports,
        bytes: u64,
    ) -> Decision {
        let Ports { from, to } = ports;
        if let Tracked::Known {
            original,
            epoch,
            limits,
        } = ct.track(now, flow)
        {
            let limits = if epoch == self.epoch() {
                limits
            } else {
                // Re-evaluate the connection the way it was opened.
                let (key, of, ot) = if original {
                    (flow.key, from, to)
                } else {
                    (flow.key.reversed(), to, from)
                };
                match self.decide(cache, &FlowInfo { key, ..*flow }, of, ot, bytes) {
                    Ok((limits, _)) => {
                        ct.revalidate(flow, self.epoch(), limits);
                        limits
                    }
                    Err(denied) => {
                        ct.remove(flow);
                        return denied;
                    }
                }
            };
            if original && let Err(limited) = self.charge(now, limits, bytes) {
                return limited;
            }
            return Decision {
                outcome: Outcome::Established,
                log: None,
            };
        }
        if let Some(related) = &flow.related
            && ct.contains(now, related)
        {
            return Decision {
                outcome: Outcome::Related,
                log: None,
            };
        }
        let (limits, log) = match self.decide(cache, flow, from, to, bytes) {
            Ok(found) => found,
            Err(denied) => return denied,
        };
        if let Err(limited) = self.charge(now, limits, bytes) {
            return limited;
        }
        ct.open(now, flow, self.epoch(), limits);
        Decision {
            outcome: Outcome::Allowed,
            log,
        }
    }

    /// Egress at `from`, then ingress at `to`: the `limit` rules to charge and the log rule,
    /// or the denial.
    fn decide(
        &self,
        cache: &mut FlowCache,
        flow: &FlowInfo,
        from: Option<PortId>,
        to: Option<PortId>,
        bytes: u64,
    ) -> Result<(Limits, Option<RuleId>), Decision> {
        let mut limits: Limits = [None, None];
        let mut log = None;
        for (slot, (port, direction)) in [(from, Direction::Egress), (to, Direction::Ingress)]
            .into_iter()
            .enumerate()
        {
            let Some(port) = port else { continue };
            let eval = self.evaluate_cached(cache, port, direction, &flow.key, bytes);
            log = log.or(eval.log);
            match eval.verdict {
                Verdict::Open | Verdict::Allow(_) => {}
                Verdict::Limit(rule) => limits[slot] = Some(rule),
                Verdict::Deny(rule) => {
                    return Err(Decision {
                        outcome: Outcome::Denied {
                            direction,
                            rule: Some(rule),
                        },
                        log,
                    });
                }
                Verdict::DefaultDeny => {
                    return Err(Decision {
                        outcome: Outcome::Denied {
                            direction,
                            rule: None,
                        },
                        log,
                    });
                }
            }
        }
        Ok((limits, log))
    }

    fn charge(&self, now: Instant, limits: Limits, bytes: u64) -> Result<(), Decision> {
        for rule in limits.into_iter().flatten() {
            if let Some(l) = self.limiter(rule)
                && !l.admit(now, bytes, 1)
            {
                return Err(Decision {
                    outcome: Outcome::Limited { rule },
                    log: None,
                });
            }
        }
        Ok(())
    }
}
