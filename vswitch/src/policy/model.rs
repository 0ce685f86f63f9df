//! The policy model as users write it: labelled endpoints, policies that select them, and the
//! ingress and egress rules that say which peers may talk to them, how.

use core::fmt;
use core::net::IpAddr;
use std::collections::BTreeMap;

use ipnet::IpNet;

use super::rate::BitRate;
use crate::switch::PortId;

/// Labels of an endpoint: `app = "web"`, `tier = "frontend"`.
pub type Labels = BTreeMap<String, String>;

/// Selects endpoints whose labels include every one of `match_labels`; empty selects all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Labels an endpoint must carry, each with this value.
    pub match_labels: Labels,
}

impl Selector {
    /// True when `labels` carries every label of the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.match_labels.is_empty() {
            return f.write_str("{all}");
        }
        f.write_str("{")?;
        for (n, (k, v)) in self.match_labels.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        f.write_str("}")
    }
}

/// The peers a rule is about: endpoints by label, or addresses by prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMatch {
    /// Endpoints (local or on other hosts) whose labels the selector matches.
    Selector(Selector),
    /// Any address in the prefix (the fallback for peers whose labels this node does not know).
    Cidr(IpNet),
}

impl fmt::Display for PeerMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerMatch::Selector(s) => write!(f, "endpoints {s}"),
            PeerMatch::Cidr(net) => write!(f, "{net}"),
        }
    }
}

/// The transport protocol a rule matches. `Icmp` matches ICMP over IPv4 and ICMPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
    /// Any protocol.
    Any,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Any => "any",
        })
    }
}

/// An inclusive range of TCP or UDP ports, `first <= last`, both at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (equal to `first` for a single port).
    pub last: u16,
}

impl PortRange {
    /// The single port `port`.
    pub const fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// True when `port` is in the range.
    pub const fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let the traffic pass.
    Allow,
    /// Drop it.
    Deny,
    /// Count and report it, then go on to the next rule (not a decision of its own).
    Log,
    /// Let it pass within this rate, shared by everything the rule matches; drop the excess.
    Limit(BitRate),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Allow => f.write_str("allow"),
            Action::Deny => f.write_str("deny"),
            Action::Log => f.write_str("log"),
            Action::Limit(rate) => write!(f, "limit({rate})"),
        }
    }
}

/// One ingress or egress rule of a policy. Empty `peers` matches every peer, empty `ports`
/// every port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The peers (sources for ingress, destinations for egress) the rule applies to.
    pub peers: Vec<PeerMatch>,
    /// The protocol it applies to.
    pub protocol: Protocol,
    /// Destination ports (TCP and UDP only).
    pub ports: Vec<PortRange>,
    /// What it does.
    pub action: Action,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action, self.protocol)?;
        if !self.ports.is_empty() {
            f.write_str(" ports ")?;
            for (n, p) in self.ports.iter().enumerate() {
                if n > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{p}")?;
            }
        }
        if self.peers.is_empty() {
            f.write_str(" any peer")
        } else {
            f.write_str(" peers ")?;
            for (n, p) in self.peers.iter().enumerate() {
                if n > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{p}")?;
            }
            Ok(())
        }
    }
}

/// A policy: the endpoints it selects and their rules, in each direction.
///
/// An endpoint that no policy with rules in a direction selects is open in that direction;
/// once selected, traffic no rule allows is denied. Rules of higher `priority` are evaluated
/// first; at equal priority a deny wins over limit and allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Unique name.
    pub name: String,
    /// The endpoints the policy applies to.
    pub selector: Selector,
    /// Higher goes first. Default 0.
    pub priority: i32,
    /// Rules for traffic into the selected endpoints.
    pub ingress: Vec<Rule>,
    /// Rules for traffic out of the selected endpoints.
    pub egress: Vec<Rule>,
}

impl Policy {
    /// The rules of one direction.
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// An endpoint the node knows: a local port, or a container on another host with the labels
/// that travelled with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// A name for people (container id or port name).
    pub id: String,
    /// Its labels.
    pub labels: Labels,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// The local port, for endpoints on this host.
    pub local: Option<PortId>,
}

/// Which way traffic goes, seen from the endpoint a policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Into the endpoint: the peer is the source.
    Ingress,
    /// Out of the endpoint: the peer is the destination.
    Egress,
}

impl Direction {
    /// The other direction.
    pub const fn reverse(self) -> Self {
        match self {
            Direction::Ingress => Direction::Egress,
            Direction::Egress => Direction::Ingress,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selector_needs_every_label() {
        let sel = Selector {
            match_labels: labels(&[("app", "web"), ("tier", "front")]),
        };
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "front"), ("x", "y")])));
        assert!(!sel.matches(&labels(&[("app", "web")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "back")])));
        assert!(Selector::default().matches(&Labels::new()));
        assert_eq!(sel.to_string(), "{app=web,tier=front}");
    }
}
