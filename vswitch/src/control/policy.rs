//! Network policy and QoS in the control plane: the policies in force (those of the config
//! file, and those applied and deleted at run time, kept in the state directory), their
//! compilation for the containers attached here, the connection table and the ports' rate
//! limits that every worker shares, and the requests that show and change them.
//!
//! The set in force is the config's `[[policies]]`, less the names deleted at run time, with
//! the policies applied at run time added (an applied policy replaces a config one of the same
//! name). The run-time part lives in `policies.json` in the state directory, replaced
//! atomically like the attachment list, so it survives restarts; `vswitch reload` re-reads the
//! config part.
//!
//! Any change of policies, containers or labels compiles the set anew (counters of unchanged
//! rules carried over) and hands the result to every worker in an `Arc`. New connections meet
//! the new rules at once; an established connection is judged again, as the connection it was
//! opened as, on its next packet: still allowed, it goes on; denied now, it is cut.
//!
//! Endpoints on other hosts: static peers exchange no labels, so rules about their containers
//! match them by address: CIDR peers (`{ cidr = "10.244.2.0/24" }`). Containers the fleet
//! publishes ([`crate::fleet`]) come with their labels ([`PolicyPlane::set_remote`]): a
//! label selector in a rule's peers matches them as it matches local containers. Either way a
//! policy selects (and is enforced for) the containers of this node only.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::api::{ApiError, Attachment, ErrorKind};
use super::state::write_private;
use crate::io::{Command, Datapath};
use crate::policy::{
    BitRate, Compiled, Conntrack, Endpoint, LimitSpec, LogLimiter, Policy, PortQos, PortQosSpec,
};
use crate::switch::{PolicyInstall, PortId};
use crate::wire::IpProtocol;

/// Denied flows logged per second, all workers together, after a burst of this many.
const DENIED_LOG_PER_SEC: u64 = 10;

/// `vswitch policy apply`: policies to add or replace (validated again on arrival).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyApply {
    /// The policies, in the file's shape.
    pub policies: Vec<Policy>,
}

/// `vswitch policy delete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDelete {
    /// The policy's name.
    pub name: String,
}

/// `vswitch policy explain SRC DST PROTO PORT`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The source address.
    pub src: IpAddr,
    /// The destination address.
    pub dst: IpAddr,
    /// `tcp`, `udp`, `icmp` or an IP protocol number.
    pub protocol: String,
    /// The destination port (for ICMP, the message type).
    pub port: u16,
}

/// `vswitch qos`: a port's new rate limit, or none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosRequest {
    /// The container id given at attach time.
    pub container_id: String,
    /// The interface; `eth0` when absent.
    #[serde(default)]
    pub ifname: Option<String>,
    /// Bits per second; `None` removes the limit.
    #[serde(default)]
    pub rate: Option<BitRate>,
    /// Bytes; 50 ms at the rate when absent.
    #[serde(default)]
    pub burst: Option<u64>,
}

/// A port's rate limit: the same in each direction, each with its own bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosSetting {
    /// Bits per second.
    pub rate: BitRate,
    /// Bytes the bucket holds.
    pub burst: u64,
}

/// One rule with its counters, as `vswitch policy list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleRow {
    /// The rule's id (as denied-flow log lines name it).
    pub id: u32,
    /// Its policy.
    pub policy: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// Its place in that direction's list.
    pub index: usize,
    /// The policy's priority.
    pub priority: i32,
    /// The rule, written out.
    pub rule: String,
    /// Local endpoints it applies to.
    pub endpoints: usize,
    /// Frames it decided (or logged).
    pub hits: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Frames over its `limit(rate)`.
    pub limited: u64,
}

/// `vswitch policy list`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyList {
    /// The policies in force, in the file's shape.
    pub policies: Vec<Policy>,
    /// Where each comes from: `config` or `applied`, by name.
    pub sources: BTreeMap<String, String>,
    /// Every rule with its counters.
    pub rules: Vec<RuleRow>,
    /// Connections tracked now.
    pub connections: u64,
    /// Connections opened since start.
    pub opened: u64,
    /// Entries that timed out.
    pub expired: u64,
    /// Entries evicted from a full table.
    pub evicted: u64,
}

/// `vswitch policy explain`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExplainView {
    /// Whether a new connection would be let through here.
    pub allowed: bool,
    /// What the source's egress rules say.
    pub egress: String,
    /// What the destination's ingress rules say.
    pub ingress: String,
    /// The whole answer for a person.
    pub text: String,
}

/// The run-time part of the set, as saved.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Overlay {
    /// Applied at run time, by name.
    #[serde(default)]
    applied: BTreeMap<String, Policy>,
    /// Config policies deleted at run time.
    #[serde(default)]
    deleted: BTreeSet<String>,
}

struct Inner {
    path: PathBuf,
    overlay: Overlay,
    config: Vec<Policy>,
    /// This node's containers.
    endpoints: Vec<Endpoint>,
    /// Containers on other nodes, with their labels (from the fleet).
    remote: Vec<Endpoint>,
    compiled: Option<Arc<Compiled>>,
    /// The set in force has been handed to the workers at least once.
    installed: bool,
    /// Each limited port's setting and buckets; a port id reused by another container gets
    /// new buckets.
    qos: BTreeMap<PortId, (String, QosSetting, Arc<PortQos>)>,
}

/// The daemon's policy and QoS state.
pub struct PolicyPlane {
    inner: Mutex<Inner>,
    conntrack: Arc<Conntrack>,
    log: Arc<LogLimiter>,
    /// What queries read, never waiting for a change.
    published: Mutex<Option<Arc<Compiled>>>,
}

/// The QoS setting an attach or `vswitch qos` asks for, checked against the network's MTU.
pub fn qos_setting(
    rate: Option<BitRate>,
    burst: Option<u64>,
    mtu: u16,
) -> Result<Option<QosSetting>, ApiError> {
    let Some(rate) = rate else {
        if burst.is_some() {
            return Err(
                ApiError::new(ErrorKind::BadRequest, "a burst needs a rate (--rate)")
                    .field("burst"),
            );
        }
        return Ok(None);
    };
    let frame = u64::from(mtu) + 14;
    let burst = burst.unwrap_or_else(|| (rate.bits_per_sec() / 8 / 20).max(2 * frame));
    if burst < frame {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!(
                "burst {burst} bytes is less than one frame of the network's MTU ({frame} \
                 bytes): such a port could never send a full-size frame"
            ),
        )
        .field("burst"));
    }
    Ok(Some(QosSetting { rate, burst }))
}

fn qos_of(setting: QosSetting, now: Instant) -> anyhow::Result<PortQos> {
    let limit = LimitSpec {
        rate: setting.rate,
        burst: setting.burst,
        packets: None,
    };
    let spec = PortQosSpec {
        ingress: Some(limit),
        egress: Some(limit),
    };
    Ok(PortQos::from_spec(&spec, 0, now)?)
}

/// The endpoint an attached container is, for policy.
fn endpoint(id: PortId, a: &Attachment) -> Endpoint {
    let name = if a.ifname == "eth0" {
        a.container_id.clone()
    } else {
        format!("{}/{}", a.container_id, a.ifname)
    };
    Endpoint {
        id: name,
        labels: a.labels.clone(),
        ips: [Some(a.address.addr()), a.address6.map(|v6| v6.addr())]
            .into_iter()
            .flatten()
            .collect(),
        local: Some(id),
    }
}

impl PolicyPlane {
    /// The policy state kept in `state_dir`, with the config's policies.
    pub fn open(state_dir: &Path, config: &[Policy]) -> anyhow::Result<Self> {
        let path = state_dir.join("policies.json");
        let overlay = match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is corrupt", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Overlay::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let now = Instant::now();
        Ok(PolicyPlane {
            inner: Mutex::new(Inner {
                path,
                overlay,
                config: config.to_vec(),
                endpoints: Vec::new(),
                remote: Vec::new(),
                compiled: None,
                installed: false,
                qos: BTreeMap::new(),
            }),
            conntrack: Arc::new(Conntrack::default()),
            log: Arc::new(LogLimiter::new(DENIED_LOG_PER_SEC, DENIED_LOG_PER_SEC, now)),
            published: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds or replaces `policies` (by name), saves, and puts them in force.
    pub fn apply(&self, datapath: &Datapath, policies: Vec<Policy>) -> anyhow::Result<String> {
        let mut inner = self.lock();
        let mut overlay = inner.overlay.clone();
        let mut names = Vec::new();
        for p in policies {
            overlay.deleted.remove(&p.name);
            names.push(p.name.clone());
            overlay.applied.insert(p.name.clone(), p);
        }
        save(&inner.path, &overlay)?;
        inner.overlay = overlay;
        self.install(&mut inner, datapath, true)?;
        info!(policies = ?names, "policies applied");
        Ok(format!("applied {}", names.join(", ")))
    }

    /// Removes a policy by name; false when no policy has that name.
    pub fn delete(&self, datapath: &Datapath, name: &str) -> anyhow::Result<bool> {
        let mut inner = self.lock();
        let in_config = inner.config.iter().any(|p| p.name == name);
        let mut overlay = inner.overlay.clone();
        let applied = overlay.applied.remove(name).is_some();
        if !applied && (!in_config || overlay.deleted.contains(name)) {
            return Ok(false);
        }
        if in_config {
            overlay.deleted.insert(name.to_owned());
        }
        save(&inner.path, &overlay)?;
        inner.overlay = overlay;
        self.install(&mut inner, datapath, true)?;
        info!(policy = name, "policy deleted");
        Ok(true)
    }

    /// Brings the compilation and the port limits in line with the config's policies and the
    /// containers attached now (called after every change the daemon makes).
    pub fn sync(
        &self,
        datapath: &Datapath,
        config: &[Policy],
        ports: &[(PortId, &Attachment)],
    ) -> anyhow::Result<()> {
        let mut inner = self.lock();
        let endpoints: Vec<Endpoint> = ports.iter().map(|(id, a)| endpoint(*id, a)).collect();
        let changed = !inner.installed || inner.config != config || inner.endpoints != endpoints;
        inner.config = config.to_vec();
        inner.endpoints = endpoints;
        self.sync_qos(&mut inner, datapath, ports)?;
        self.install(&mut inner, datapath, changed)
    }

    /// Sets the containers on other nodes that rules' label selectors match (those the fleet
    /// publishes), and compiles anew when they changed.
    pub fn set_remote(&self, datapath: &Datapath, remote: Vec<Endpoint>) -> anyhow::Result<()> {
        let mut inner = self.lock();
        if inner.remote == remote {
            return Ok(());
        }
        inner.remote = remote;
        // Before the first sync, the daemon's first view installs them with its ports.
        let installed = inner.installed;
        self.install(&mut inner, datapath, installed)
    }

    fn sync_qos(
        &self,
        inner: &mut Inner,
        datapath: &Datapath,
        ports: &[(PortId, &Attachment)],
    ) -> anyhow::Result<()> {
        let now = Instant::now();
        let mut changes: Vec<(PortId, Option<Arc<PortQos>>)> = Vec::new();
        let wanted: BTreeMap<PortId, (String, QosSetting)> = ports
            .iter()
            .filter_map(|(id, a)| {
                let key = format!("{}/{}", a.container_id, a.ifname);
                a.qos.map(|q| (*id, (key, q)))
            })
            .collect();
        let gone: Vec<PortId> = inner
            .qos
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            inner.qos.remove(&id);
            changes.push((id, None));
        }
        for (id, (key, setting)) in wanted {
            let same = inner
                .qos
                .get(&id)
                .is_some_and(|(k, s, _)| *k == key && *s == setting);
            if !same {
                let qos = Arc::new(qos_of(setting, now)?);
                inner.qos.insert(id, (key, setting, Arc::clone(&qos)));
                changes.push((id, Some(qos)));
            }
        }
        if !changes.is_empty() {
            let changes: Arc<[(PortId, Option<Arc<PortQos>>)]> = changes.into();
            datapath.ask(|reply| Command::SetPortQos {
                changes: Arc::clone(&changes),
                reply,
            })?;
        }
        Ok(())
    }

    /// Compiles the set in force (when `changed`) and hands it to every worker.
    fn install(&self, inner: &mut Inner, datapath: &Datapath, changed: bool) -> anyhow::Result<()> {
        if !changed {
            return Ok(());
        }
        let policies = in_force(&inner.config, &inner.overlay);
        let compiled = (!policies.is_empty()).then(|| {
            // Local endpoints first: an address both claim is the local container's.
            let endpoints: Vec<Endpoint> = inner
                .endpoints
                .iter()
                .chain(&inner.remote)
                .cloned()
                .collect();
            let compiled = Compiled::new(
                &policies.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
                &endpoints,
                Instant::now(),
            );
            if let Some(old) = &inner.compiled {
                compiled.carry_counters_from(old);
            }
            Arc::new(compiled)
        });
        let install = compiled.as_ref().map(|c| PolicyInstall {
            compiled: Arc::clone(c),
            conntrack: Arc::clone(&self.conntrack),
            log: Arc::clone(&self.log),
        });
        datapath.ask(|reply| Command::SetPolicy {
            install: install.clone(),
            reply,
        })?;
        inner.installed = true;
        inner.compiled = compiled.clone();
        *self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = compiled;
        Ok(())
    }

    /// Drops connections that timed out.
    pub fn sweep(&self) {
        self.conntrack.sweep(Instant::now());
    }

    fn published(&self) -> Option<Arc<Compiled>> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The policies in force, their rules and counters.
    pub fn list(&self) -> PolicyList {
        let sources = {
            let inner = self.lock();
            in_force(&inner.config, &inner.overlay)
                .into_iter()
                .map(|(p, source)| (p.name, source.to_owned()))
                .collect::<Vec<_>>()
        };
        let stats = self.conntrack.stats();
        let compiled = self.published();
        let rules = compiled.as_ref().map_or_else(Vec::new, |c| {
            c.list()
                .into_iter()
                .map(|r| RuleRow {
                    id: r.id.0,
                    policy: r.policy,
                    direction: r.direction.to_string(),
                    index: r.index,
                    priority: r.priority,
                    rule: r.rule,
                    endpoints: r.endpoints,
                    hits: r.hits,
                    bytes: r.bytes,
                    limited: r.limited,
                })
                .collect()
        });
        let policies = {
            let inner = self.lock();
            in_force(&inner.config, &inner.overlay)
                .into_iter()
                .map(|(p, _)| p)
                .collect()
        };
        PolicyList {
            policies,
            sources: sources.into_iter().collect(),
            rules,
            connections: stats.entries,
            opened: stats.opened,
            expired: stats.expired,
            evicted: stats.evicted,
        }
    }

    /// What the policy in force decides for a new connection, and why.
    pub fn explain(&self, r: &ExplainRequest) -> Result<ExplainView, ApiError> {
        let protocol = match r.protocol.to_ascii_lowercase().as_str() {
            "tcp" => IpProtocol::TCP,
            "udp" => IpProtocol::UDP,
            "icmp" if r.src.is_ipv6() => IpProtocol::ICMPV6,
            "icmp" => IpProtocol::ICMP,
            other => IpProtocol(other.parse().map_err(|_| {
                ApiError::new(
                    ErrorKind::BadRequest,
                    format!("{other:?} is not a protocol (tcp, udp, icmp or a number)"),
                )
                .field("protocol")
            })?),
        };
        let port = if matches!(protocol, IpProtocol::ICMP | IpProtocol::ICMPV6) {
            r.port << 8
        } else {
            r.port
        };
        let Some(compiled) = self.published() else {
            let why = "no policy is in force: open".to_owned();
            return Ok(ExplainView {
                allowed: true,
                text: format!(
                    "{} -> {} proto {} port {}: allowed\n  {why}",
                    r.src, r.dst, protocol.0, r.port
                ),
                egress: why.clone(),
                ingress: why,
            });
        };
        let e = compiled.explain(r.src, r.dst, protocol, port);
        Ok(ExplainView {
            allowed: e.allowed,
            egress: e.egress.why.clone(),
            ingress: e.ingress.why.clone(),
            text: e.to_string(),
        })
    }
}

/// `vswitch policy list` as tables: the policies, then every rule with its counters.
pub fn render(list: &PolicyList) -> String {
    use super::render::{bytes, table};
    if list.policies.is_empty() {
        return "no policy is in force: every container is open\n".to_owned();
    }
    let policies: Vec<Vec<String>> = list
        .policies
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                list.sources.get(&p.name).cloned().unwrap_or_default(),
                p.selector.to_string(),
                p.priority.to_string(),
                p.ingress.len().to_string(),
                p.egress.len().to_string(),
            ]
        })
        .collect();
    let rules: Vec<Vec<String>> = list
        .rules
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                format!("{} {}[{}]", r.policy, r.direction, r.index),
                r.priority.to_string(),
                r.rule.clone(),
                r.endpoints.to_string(),
                r.hits.to_string(),
                bytes(r.bytes),
                r.limited.to_string(),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "POLICY", "SOURCE", "SELECTOR", "PRIORITY", "INGRESS", "EGRESS",
        ],
        &policies,
    );
    text.push('\n');
    text.push_str(&table(
        &[
            "ID",
            "RULE",
            "PRIORITY",
            "MATCH",
            "ENDPOINTS",
            "HITS",
            "BYTES",
            "LIMITED",
        ],
        &rules,
    ));
    text.push_str(&format!(
        "\nconnections: {} tracked, {} opened, {} expired, {} evicted\n",
        list.connections, list.opened, list.expired, list.evicted
    ));
    text
}

/// The set in force, each policy with where it comes from.
fn in_force(config: &[Policy], overlay: &Overlay) -> Vec<(Policy, &'static str)> {
    config
        .iter()
        .filter(|p| !overlay.deleted.contains(&p.name) && !overlay.applied.contains_key(&p.name))
        .map(|p| (p.clone(), "config"))
        .chain(overlay.applied.values().map(|p| (p.clone(), "applied")))
        .collect()
}

fn save(path: &Path, overlay: &Overlay) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(overlay).context("encoding the policies")?;
    write_private(path, &json).context("saving the policies")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_toml;

    fn policies(text: &str) -> Vec<Policy> {
        parse_toml(text).unwrap()
    }

    #[test]
    fn applied_policies_replace_config_ones_and_deletions_hide_them() {
        let config = policies(
            "[[policy]]\nname = \"a\"\n[[policy.ingress]]\n\n[[policy]]\nname = \"b\"\n[[policy.ingress]]\n",
        );
        let mut overlay = Overlay::default();
        let names = |o: &Overlay| -> Vec<(String, &str)> {
            in_force(&config, o)
                .into_iter()
                .map(|(p, s)| (p.name, s))
                .collect()
        };
        assert_eq!(
            names(&overlay),
            [("a".into(), "config"), ("b".into(), "config")]
        );
        let mut a = config[0].clone();
        a.priority = 5;
        overlay.applied.insert("a".into(), a);
        overlay.deleted.insert("b".into());
        assert_eq!(names(&overlay), [("a".into(), "applied")]);
        let text = serde_json::to_string(&overlay).unwrap();
        let back: Overlay = serde_json::from_str(&text).unwrap();
        assert_eq!(back.applied["a"].priority, 5);
        assert!(back.deleted.contains("b"));
    }

    #[test]
    fn the_daemon_config_takes_policies_and_names_what_is_wrong() {
        use crate::control::config::Config;
        let base = "[node]\nname = \"a\"\naddress = \"192.0.2.1\"\n";
        let good = format!(
            "{base}[[policies]]\nname = \"db\"\nselector = {{ app = \"db\" }}\n\
             [[policies.ingress]]\nprotocol = \"tcp\"\nports = [5432]\n"
        );
        let c = Config::parse(Path::new("/etc/vswitch.toml"), &good).unwrap();
        assert_eq!(c.policies.len(), 1);
        assert_eq!(c.policies[0].ingress[0].ports[0].first, 5432);
        let bad = good.replace("[5432]", "[70000]");
        let e = Config::parse(Path::new("/etc/vswitch.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("policies[0]"), "{e}");
        assert!(
            e.contains("policy \"db\": ingress[0].ports: 70000 is not a port"),
            "{e}"
        );
        let twice = format!("{good}{}", &good[base.len()..]);
        let e = Config::parse(Path::new("/etc/vswitch.toml"), &twice)
            .unwrap_err()
            .to_string();
        assert!(e.contains("policies[1].name"), "{e}");
    }

    #[test]
    fn bursts_hold_a_frame_and_default_to_50_ms() {
        let rate: BitRate = "100M".parse().unwrap();
        let q = qos_setting(Some(rate), None, 1450).unwrap().unwrap();
        assert_eq!(q.burst, 100_000_000 / 8 / 20);
        let small: BitRate = "1k".parse().unwrap();
        assert_eq!(
            qos_setting(Some(small), None, 1450).unwrap().unwrap().burst,
            2 * 1464
        );
        let e = qos_setting(Some(rate), Some(1000), 1450).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("burst"));
        assert!(e.message.contains("1464"), "{}", e.message);
        let e = qos_setting(None, Some(5000), 1450).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("burst"));
        assert_eq!(qos_setting(None, None, 1450).unwrap(), None);
    }
}
