//! Network policy, connection tracking and QoS: the decisions the frame path asks for.

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
