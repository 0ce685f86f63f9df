//! Network policy, connection tracking and QoS: the decisions the frame path asks for.
//!
//! The control plane parses policies ([`parse_toml`], [`parse_json`]), compiles them with the
//! endpoints it knows ([`Compiled::new`]) and hands the result to every worker in an `Arc`
//! (a new compilation on any change; [`Compiled::carry_counters_from`] keeps counters). It owns
//! one [`Conntrack`] and one [`PortQos`] per port, shared by the workers, and calls
//! [`Conntrack::sweep`] every few seconds. Each worker owns a [`FlowCache`]. Per frame (a
//! super-frame once):
//!
//! 1. [`classify`] the frame: [`Classified::Exempt`] passes, [`Classified::Malformed`] drops;
//! 2. egress QoS of the source port: [`PortQos::admit`];
//! 3. [`Compiled::check`] with the ports crossed ([`Ports`]) and the wire size: a [`Decision`];
//! 4. ingress QoS of the destination port.
//!
//! No syscalls, no clock reads, no allocation per frame; the only lock is a shard of the
//! connection table (see [`Conntrack`]).

mod compile;
mod conntrack;
mod enforce;
mod flow;
mod model;
mod parse;
mod qos;
mod rate;

pub use compile::{Compiled, Evaluation, Explanation, FlowCache, RuleId, RuleView, Step, Verdict};
pub use conntrack::{Conntrack, ConntrackConfig, ConntrackStats, Limits, Timeouts, Tracked};
pub use enforce::{Decision, Outcome, Ports};
pub use flow::{Classified, FlowInfo, FlowKey, classify};
pub use model::{
    Action, Direction, Endpoint, Labels, PeerMatch, Policy, PortRange, Protocol, Rule, Selector,
};
pub use parse::{PolicyError, Problem, parse_json, parse_toml};
pub use qos::{
    LimitSpec, LogLimiter, PacketLimit, PortQos, PortQosSpec, QosError, RateLimiter, SharedBucket,
};
pub use rate::{BitRate, RateError};

#[cfg(test)]
mod tests;
