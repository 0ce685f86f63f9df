//! The policy file format (TOML and JSON, one shape) and its validation into the typed model.
//!
//! ```toml
//! [[policy]]
//! name = "web"
//! selector = { app = "web" }          # empty or absent: every endpoint
//! priority = 10                       # higher first; default 0
//!
//! [[policy.ingress]]
//! peers = [{ selector = { app = "lb" } }, { cidr = "192.0.2.0/24" }]   # absent: any peer
//! protocol = "tcp"                    # tcp | udp | icmp | any (default)
//! ports = [80, "8000-8080"]           # tcp and udp only; absent: every port
//! action = "allow"                    # allow (default) | deny | log | limit(100M)
//! ```
//!
//! Errors name the policy, the rule and the field: `policy "web": ingress[1].ports: 70000 is
//! not a port`. Syntax errors (wrong types, unknown keys) name the path the parser saw.

use std::collections::BTreeSet;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::model::{
    Action, Direction, Labels, PeerMatch, Policy, PortRange, Protocol, Rule, Selector,
};
use super::rate::{BitRate, RateError};

/// Why a policy file or a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The text is not TOML or JSON of the policy file's shape (bad syntax, a wrong type, an
    /// unknown key); `path` is where the parser was (`policy[0].ingress[1].protocol`).
    #[error("{format} policy file: {path}: {message}")]
    Syntax {
        /// "TOML" or "JSON".
        format: &'static str,
        /// Where in the document.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A policy's field holds a value the format does not allow.
    #[error("policy \"{policy}\": {field}: {problem}")]
    Invalid {
        /// The policy's name (or `#index` when the name itself is missing).
        policy: String,
        /// The field, with the rule it belongs to: `ingress[1].ports`.
        field: String,
        /// What is wrong with it.
        problem: Problem,
    },
}

/// What is wrong with a field of a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// The policy has no name.
    #[error("a policy needs a name")]
    EmptyName,
    /// Another policy of the set has this name.
    #[error("defined twice")]
    DuplicateName,
    /// A label key is empty.
    #[error("label keys cannot be empty")]
    EmptyLabelKey,
    /// The priority does not fit in 32 bits.
    #[error("{0} is out of range (a 32-bit signed integer)")]
    Priority(i64),
    /// The protocol is not one of tcp, udp, icmp, any.
    #[error("{0:?} is not a protocol (tcp, udp, icmp, any)")]
    UnknownProtocol(String),
    /// A port number outside 1..=65535.
    #[error("{0} is not a port")]
    NotAPort(i64),
    /// A port string that is neither a number nor `first-last`.
    #[error("{0:?} is not a port or a range (write 80 or \"8000-8080\")")]
    NotAPortRange(String),
    /// A range whose end comes before its start.
    #[error("{first}-{last} ends before it starts")]
    ReversedRange {
        /// The first port written.
        first: u16,
        /// The last port written.
        last: u16,
    },
    /// Ports given for a protocol that has none.
    #[error("ports need protocol tcp or udp, not {0}")]
    PortsNeedTcpOrUdp(Protocol),
    /// A peer with neither or both of `selector` and `cidr`.
    #[error("a peer is either selector = {{ .. }} or cidr = \"..\", exactly one")]
    PeerShape,
    /// A CIDR that does not parse.
    #[error("{0:?} is not an address or prefix")]
    BadCidr(String),
    /// A prefix with bits set past its length.
    #[error("{given} has host bits set (did you mean {net}?)")]
    HostBits {
        /// As written.
        given: String,
        /// The network it would be.
        net: IpNet,
    },
    /// The action is not one of allow, deny, log, limit(rate).
    #[error("{0:?} is not an action (allow, deny, log, limit(RATE))")]
    UnknownAction(String),
    /// The rate of `limit(..)` does not parse.
    #[error("{0}")]
    Rate(RateError),
}

/// One policy as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    name: String,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    selector: Labels,
    #[serde(default)]
    priority: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ingress: Vec<RawRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    egress: Vec<RawRule>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    peers: Vec<RawPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ports: Vec<RawPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    action: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    selector: Option<Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cidr: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    policy: Vec<RawPolicy>,
}

/// Parses and validates a TOML policy file (`[[policy]]` tables).
pub fn parse_toml(text: &str) -> Result<Vec<Policy>, PolicyError> {
    let syntax = |path: String, message: String| PolicyError::Syntax {
        format: "TOML",
        path: if path.is_empty() { ".".into() } else { path },
        message,
    };
    let de = toml::de::Deserializer::parse(text)
        .map_err(|e| syntax(".".into(), e.message().to_owned()))?;
    let file: RawFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        syntax(path, e.into_inner().message().to_owned())
    })?;
    validate_all(file.policy)
}

/// Parses and validates a JSON policy file: `{"policy": [..]}` or the bare array.
pub fn parse_json(text: &str) -> Result<Vec<Policy>, PolicyError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Shape {
        File(RawFile),
        List(Vec<RawPolicy>),
    }
    // An error at the top level has an empty path: it is named "." like the others' roots.
    let syntax = |path: String, message: String| PolicyError::Syntax {
        format: "JSON",
        path: if path.is_empty() { ".".into() } else { path },
        message,
    };
    // Try the documented shape first for its precise path; fall back to the bare list.
    let mut de = serde_json::Deserializer::from_str(text);
    let policies = match serde_path_to_error::deserialize::<_, RawFile>(&mut de) {
        Ok(file) => file.policy,
        Err(file_err) => match serde_json::from_str::<Shape>(text) {
            Ok(Shape::List(list)) => list,
            Ok(Shape::File(file)) => file.policy,
            Err(_) => {
                if text.trim_start().starts_with('[') {
                    let mut de = serde_json::Deserializer::from_str(text);
                    let e = serde_path_to_error::deserialize::<_, Vec<RawPolicy>>(&mut de)
                        .err()
                        .map(|e| (e.path().to_string(), e.into_inner().to_string()));
                    let (path, message) = e.unwrap_or_else(|| (".".into(), "malformed".into()));
                    return Err(syntax(path, message));
                }
                let path = file_err.path().to_string();
                return Err(syntax(path, file_err.into_inner().to_string()));
            }
        },
    };
    validate_all(policies)
}

/// Validates a set of policies: each alone, then that names are unique.
fn validate_all(raw: Vec<RawPolicy>) -> Result<Vec<Policy>, PolicyError> {
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (index, p) in raw.into_iter().enumerate() {
        let policy = validate(p, index)?;
        if !names.insert(policy.name.clone()) {
            return Err(PolicyError::Invalid {
                policy: policy.name,
                field: "name".into(),
                problem: Problem::DuplicateName,
            });
        }
        out.push(policy);
    }
    Ok(out)
}

impl TryFrom<RawPolicy> for Policy {
    type Error = PolicyError;

    fn try_from(raw: RawPolicy) -> Result<Self, PolicyError> {
        validate(raw, 0)
    }
}

impl<'de> Deserialize<'de> for Policy {
    /// A single policy in the file's shape (for the control API), validated.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawPolicy::deserialize(deserializer)?;
        Policy::try_from(raw).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Policy {
    /// The file's shape, so that what `list` prints can be read back.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        RawPolicy::from(self).serialize(serializer)
    }
}

impl From<&Policy> for RawPolicy {
    fn from(p: &Policy) -> Self {
        let rules = |rules: &[Rule]| -> Vec<RawRule> {
            rules
                .iter()
                .map(|r| RawRule {
                    peers: r
                        .peers
                        .iter()
                        .map(|peer| match peer {
                            PeerMatch::Selector(s) => RawPeer {
                                selector: Some(s.match_labels.clone()),
                                cidr: None,
                            },
                            PeerMatch::Cidr(net) => RawPeer {
                                selector: None,
                                cidr: Some(net.to_string()),
                            },
                        })
                        .collect(),
                    protocol: Some(r.protocol.to_string()),
                    ports: r
                        .ports
                        .iter()
                        .map(|range| {
                            if range.first == range.last {
                                RawPort::Number(i64::from(range.first))
                            } else {
                                RawPort::Text(range.to_string())
                            }
                        })
                        .collect(),
                    action: Some(r.action.to_string()),
                })
                .collect()
        };
        RawPolicy {
            name: p.name.clone(),
            selector: p.selector.match_labels.clone(),
            priority: i64::from(p.priority),
            ingress: rules(&p.ingress),
            egress: rules(&p.egress),
        }
    }
}

fn validate(raw: RawPolicy, index: usize) -> Result<Policy, PolicyError> {
    let policy_name = if raw.name.is_empty() {
        format!("#{index}")
    } else {
        raw.name.clone()
    };
    let invalid = |field: String, problem: Problem| PolicyError::Invalid {
        policy: policy_name.clone(),
        field,
        problem,
    };
    if raw.name.trim().is_empty() {
        return Err(invalid("name".into(), Problem::EmptyName));
    }
    check_labels(&raw.selector).map_err(|p| invalid("selector".into(), p))?;
    let priority = i32::try_from(raw.priority)
        .map_err(|_| invalid("priority".into(), Problem::Priority(raw.priority)))?;
    let rules = |direction: Direction, list: Vec<RawRule>| -> Result<Vec<Rule>, PolicyError> {
        list.into_iter()
            .enumerate()
            .map(|(n, r)| {
                validate_rule(r).map_err(|(field, problem)| {
                    invalid(format!("{direction}[{n}].{field}"), problem)
                })
            })
            .collect()
    };
    let ingress = rules(Direction::Ingress, raw.ingress)?;
    let egress = rules(Direction::Egress, raw.egress)?;
    Ok(Policy {
        name: raw.name,
        selector: Selector {
            match_labels: raw.selector,
        },
        priority,
        ingress,
        egress,
    })
}

fn check_labels(labels: &Labels) -> Result<(), Problem> {
    if labels.keys().any(|k| k.trim().is_empty()) {
        return Err(Problem::EmptyLabelKey);
    }
    Ok(())
}

fn validate_rule(raw: RawRule) -> Result<Rule, (String, Problem)> {
    let protocol = match raw
        .protocol
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("any") => Protocol::Any,
        Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        Some("icmp") | Some("icmpv6") => Protocol::Icmp,
        Some(_) => {
            return Err((
                "protocol".into(),
                Problem::UnknownProtocol(raw.protocol.unwrap_or_default()),
            ));
        }
    };
    let mut ports = Vec::with_capacity(raw.ports.len());
    for port in &raw.ports {
        ports.push(parse_port(port).map_err(|p| ("ports".to_owned(), p))?);
    }
    if !ports.is_empty() && !matches!(protocol, Protocol::Tcp | Protocol::Udp) {
        return Err(("ports".into(), Problem::PortsNeedTcpOrUdp(protocol)));
    }
    let mut peers = Vec::with_capacity(raw.peers.len());
    for (n, peer) in raw.peers.into_iter().enumerate() {
        let at = |field: &str| format!("peers[{n}]{field}");
        peers.push(match (peer.selector, peer.cidr) {
            (Some(labels), None) => {
                check_labels(&labels).map_err(|p| (at(".selector"), p))?;
                PeerMatch::Selector(Selector {
                    match_labels: labels,
                })
            }
            (None, Some(cidr)) => PeerMatch::Cidr(parse_cidr(&cidr).map_err(|p| (at(".cidr"), p))?),
            _ => return Err((at(""), Problem::PeerShape)),
        });
    }
    let action = match raw.action.as_deref() {
        None => Action::Allow,
        Some(text) => parse_action(text).map_err(|p| ("action".to_owned(), p))?,
    };
    Ok(Rule {
        peers,
        protocol,
        ports,
        action,
    })
}

fn parse_port(raw: &RawPort) -> Result<PortRange, Problem> {
    let number = |n: i64| match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(Problem::NotAPort(n)),
    };
    match raw {
        RawPort::Number(n) => number(*n).map(PortRange::single),
        RawPort::Text(text) => {
            let one = |s: &str| -> Result<u16, Problem> {
                let n: i64 = s
                    .trim()
                    .parse()
                    .map_err(|_| Problem::NotAPortRange(text.clone()))?;
                number(n)
            };
            match text.split_once('-') {
                None => one(text).map(PortRange::single),
                Some((a, b)) => {
                    let (first, last) = (one(a)?, one(b)?);
                    if first > last {
                        return Err(Problem::ReversedRange { first, last });
                    }
                    Ok(PortRange { first, last })
                }
            }
        }
    }
}

fn parse_cidr(text: &str) -> Result<IpNet, Problem> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<core::net::IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let net: IpNet = text
        .parse()
        .map_err(|_| Problem::BadCidr(text.to_owned()))?;
    if net.trunc() != net {
        return Err(Problem::HostBits {
            given: text.to_owned(),
            net: net.trunc(),
        });
    }
    Ok(net)
}

fn parse_action(text: &str) -> Result<Action, Problem> {
    let t = text.trim();
    match t.to_ascii_lowercase().as_str() {
        "allow" => return Ok(Action::Allow),
        "deny" => return Ok(Action::Deny),
        "log" => return Ok(Action::Log),
        _ => {}
    }
    let inner = t
        .strip_prefix("limit(")
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or_else(|| Problem::UnknownAction(text.to_owned()))?;
    inner
        .parse::<BitRate>()
        .map(Action::Limit)
        .map_err(Problem::Rate)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[policy]]
name = "web"
selector = { app = "web" }
priority = 10

[[policy.ingress]]
peers = [{ selector = { app = "lb" } }, { cidr = "192.0.2.0/24" }]
protocol = "tcp"
ports = [80, "8000-8080"]

[[policy.ingress]]
protocol = "icmp"
action = "limit(1.5M)"

[[policy.egress]]
peers = [{ cidr = "10.0.0.7" }]
action = "deny"

[[policy]]
name = "log-all"
"#;

    #[test]
    fn toml_example_parses() {
        let policies = parse_toml(EXAMPLE).unwrap();
        assert_eq!(policies.len(), 2);
        let web = &policies[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.priority, 10);
        assert_eq!(web.ingress.len(), 2);
        assert_eq!(web.ingress[0].protocol, Protocol::Tcp);
        assert_eq!(
            web.ingress[0].ports,
            vec![
                PortRange::single(80),
                PortRange {
                    first: 8000,
                    last: 8080
                }
            ]
        );
        assert_eq!(web.ingress[0].action, Action::Allow);
        assert_eq!(
            web.ingress[1].action,
            Action::Limit(BitRate::new(1_500_000).unwrap())
        );
        assert_eq!(
            web.egress[0].peers,
            vec![PeerMatch::Cidr("10.0.0.7/32".parse().unwrap())]
        );
        assert!(policies[1].ingress.is_empty() && policies[1].selector.match_labels.is_empty());
    }

    #[test]
    fn json_round_trips_through_serialize() {
        let policies = parse_toml(EXAMPLE).unwrap();
        let json = serde_json::to_string(&serde_json::json!({ "policy": policies })).unwrap();
        assert_eq!(parse_json(&json).unwrap(), policies);
        let bare = serde_json::to_string(&policies).unwrap();
        assert_eq!(parse_json(&bare).unwrap(), policies);
        let one: Policy =
            serde_json::from_str(&serde_json::to_string(&policies[0]).unwrap()).unwrap();
        assert_eq!(one, policies[0]);
    }

    fn err_toml(text: &str) -> String {
        parse_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_policy_rule_and_field() {
        let rule = |body: &str| {
            format!("[[policy]]\nname = \"web\"\n[[policy.ingress]]\n[[policy.ingress]]\n{body}\n")
        };
        assert_eq!(
            err_toml(&rule("protocol = \"tcp\"\nports = [80, 70000]")),
            "policy \"web\": ingress[1].ports: 70000 is not a port"
        );
        assert_eq!(
            err_toml(&rule("protocol = \"tcp\"\nports = [\"90-80\"]")),
            "policy \"web\": ingress[1].ports: 90-80 ends before it starts"
        );
        assert_eq!(
            err_toml(&rule("protocol = \"tcp\"\nports = [\"http\"]")),
            "policy \"web\": ingress[1].ports: \"http\" is not a port or a range (write 80 or \"8000-8080\")"
        );
        assert_eq!(
            err_toml(&rule("ports = [80]")),
            "policy \"web\": ingress[1].ports: ports need protocol tcp or udp, not any"
        );
        assert_eq!(
            err_toml(&rule("protocol = \"sctp\"")),
            "policy \"web\": ingress[1].protocol: \"sctp\" is not a protocol (tcp, udp, icmp, any)"
        );
        assert_eq!(
            err_toml(&rule("peers = [{ cidr = \"10.0.0.1/8\" }]")),
            "policy \"web\": ingress[1].peers[0].cidr: 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)"
        );
        assert_eq!(
            err_toml(&rule("peers = [{ cidr = \"10.0.0.0/33\" }]")),
            "policy \"web\": ingress[1].peers[0].cidr: \"10.0.0.0/33\" is not an address or prefix"
        );
        assert_eq!(
            err_toml(&rule("peers = [{}]")),
            "policy \"web\": ingress[1].peers[0]: a peer is either selector = { .. } or cidr = \"..\", exactly one"
        );
        assert_eq!(
            err_toml(&rule("action = \"limit(fast)\"")),
            "policy \"web\": ingress[1].action: \"fast\" is not a rate (write bits per second like 800k, 100M, 1.5G)"
        );
        assert_eq!(
            err_toml(&rule("action = \"drop\"")),
            "policy \"web\": ingress[1].action: \"drop\" is not an action (allow, deny, log, limit(RATE))"
        );
        assert_eq!(
            err_toml("[[policy]]\nname = \"a\"\npriority = 3000000000"),
            "policy \"a\": priority: 3000000000 is out of range (a 32-bit signed integer)"
        );
        assert_eq!(
            err_toml("[[policy]]\nname = \"a\"\n[[policy]]\nname = \"a\""),
            "policy \"a\": name: defined twice"
        );
        assert_eq!(
            err_toml("[[policy]]\nname = \"\""),
            "policy \"#0\": name: a policy needs a name"
        );
    }

    #[test]
    fn syntax_errors_name_the_path() {
        let e = err_toml("[[policy]]\nname = \"web\"\n[[policy.egress]]\nport = [80]\n");
        assert!(
            e.starts_with("TOML policy file: policy[0].egress[0]"),
            "{e}"
        );
        assert!(e.contains("port"), "{e}");
        let e = parse_json(r#"{"policy":[{"name":"web","priority":"high"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("JSON policy file: policy[0].priority"), "{e}");
        let e = parse_json(
            r#"{"policy":[{"name":"web","egress":[{"ports":[70000],"protocol":"udp"}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "policy \"web\": egress[0].ports: 70000 is not a port");
        assert!(parse_json("not json").is_err());
    }
}
