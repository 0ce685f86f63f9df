//! The daemon's counters for Prometheus, encoded by `prometheus-client` in the OpenMetrics text
//! format and served on `node.metrics_address` at `/metrics`.
//!
//! A scrape is built from a [`Scrape`]: figures the control plane already holds (the workers'
//! published snapshots and its own lists), never a walk over a worker's tables.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::api::{PeerView, PortView, Traffic};
use super::policy::PolicyList;
use crate::fleet::health::{NodeHealthView, NodeState, PeerState};
use crate::io::IoCounters;
use crate::switch::Counters;

/// The content type of a scrape's body.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What one scrape reports.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Switch-wide counters.
    pub counters: Counters,
    /// Counters of the I/O shell.
    pub io: IoCounters,
    /// MAC table entries.
    pub fdb_entries: usize,
    /// Attached containers.
    pub ports: Vec<PortView>,
    /// Peers.
    pub peers: Vec<PeerView>,
    /// Each datapath worker's traffic, in worker order.
    pub workers: Vec<Traffic>,
    /// The node's health.
    pub health: Option<NodeHealthView>,
    /// The policies in force, their rules' counters and the connection table's.
    pub policy: PolicyList,
}

type Labels = Vec<(&'static str, String)>;

/// Escapes a label value as the text format wants (backslash, double quote, newline): container
/// ids and names come from requests, and the encoder writes values as they are.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric: Counter = Counter::default();
    metric.inc_by(value);
    registry.register(name, help, metric);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: usize) {
    let metric: Gauge = Gauge::default();
    metric.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, metric);
}

fn counters(
    registry: &mut Registry,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    for (labels, value) in samples {
        family.get_or_create(&labels).inc_by(value);
    }
    registry.register(name, help, family);
}

/// Each peer's dropped datagrams, by reason.
fn peer_drops(registry: &mut Registry, peers: &[PeerView]) {
    counters(
        registry,
        "vswitch_peer_drops",
        "Datagrams from the peer dropped, by reason",
        peers.iter().flat_map(|p| {
            p.drops_by_reason.iter().map(|(reason, &n)| {
                (
                    vec![("peer", label(&p.name)), ("reason", reason.clone())],
                    n,
                )
            })
        }),
    );
}

/// Reads one count of a session.
type SessionCount = fn(&super::sealing::SessionStatus) -> u64;

/// Each sealed peer's session: up or not, sessions made, rekeys, refused handshake messages.
fn sessions(registry: &mut Registry, peers: &[PeerView]) {
    let sealed = || {
        peers
            .iter()
            .filter_map(|p| Some((vec![("peer", label(&p.name))], p.session.as_ref()?)))
    };
    let up = Family::<Labels, Gauge>::default();
    for (labels, session) in sealed() {
        up.get_or_create(&labels)
            .set(i64::from(session.state == "up"));
    }
    registry.register(
        "vswitch_peer_session_up",
        "1 when the sealed session with the peer is up, 0 while handshaking",
        up,
    );
    let per_peer: [(&str, &str, SessionCount); 3] = [
        (
            "vswitch_peer_handshakes",
            "Sealed sessions made with the peer (the first and every rekey)",
            |s| s.handshakes,
        ),
        (
            "vswitch_peer_rekeys",
            "Sealed sessions made with the peer while one was up",
            |s| s.rekeys,
        ),
        (
            "vswitch_peer_handshakes_refused",
            "Handshake messages from the peer's address refused (a wrong key, stale, unknown)",
            |s| s.refused,
        ),
    ];
    for (name, help, value) in per_peer {
        counters(
            registry,
            name,
            help,
            sealed().map(|(labels, session)| (labels, value(session))),
        );
    }
}

/// Renders a scrape. Counter names get their `_total` suffix from the encoder.
pub fn render(s: &Scrape) -> String {
    let mut registry = Registry::default();
    let c = &s.counters;
    let totals: [(&str, &str, u64); 14] = [
        (
            "vswitch_port_rx_frames",
            "Frames received from containers",
            c.port_rx_frames,
        ),
        (
            "vswitch_port_rx_bytes",
            "Bytes received from containers",
            c.port_rx_bytes,
        ),
        (
            "vswitch_port_tx_frames",
            "Frames written to containers",
            c.port_tx_frames,
        ),
        (
            "vswitch_port_tx_bytes",
            "Bytes written to containers",
            c.port_tx_bytes,
        ),
        (
            "vswitch_peer_rx_datagrams",
            "VXLAN datagrams received from peers",
            c.peer_rx_datagrams,
        ),
        (
            "vswitch_peer_rx_bytes",
            "VXLAN bytes received from peers",
            c.peer_rx_bytes,
        ),
        (
            "vswitch_peer_tx_datagrams",
            "VXLAN datagrams sent to peers",
            c.peer_tx_datagrams,
        ),
        (
            "vswitch_peer_tx_bytes",
            "VXLAN bytes sent to peers",
            c.peer_tx_bytes,
        ),
        (
            "vswitch_icmp_too_big",
            "ICMP fragmentation-needed and ICMPv6 packet-too-big errors sent for frames over the MTU",
            c.too_big_sent,
        ),
        (
            "vswitch_icmp_too_big_limited",
            "Such errors not sent: their port or peer was over the rate limit",
            c.too_big_limited,
        ),
        (
            "vswitch_mss_clamped",
            "TCP SYNs whose MSS option was lowered to what the MTU allows",
            c.mss_clamped,
        ),
        (
            "vswitch_routed",
            "Frames routed from one network to another",
            c.routed,
        ),
        (
            "vswitch_route_resolves",
            "ARP requests the gateway sent to resolve a routed frame's destination",
            c.route_resolves,
        ),
        (
            "vswitch_ttl_exceeded",
            "Routed frames whose TTL ran out, answered with ICMP time exceeded",
            c.ttl_exceeded,
        ),
    ];
    for (name, help, value) in totals {
        counter(&mut registry, name, help, value);
    }
    counters(
        &mut registry,
        "vswitch_drops",
        "Frames and datagrams dropped, by reason",
        c.drops
            .iter()
            .map(|(reason, n)| (vec![("reason", reason.as_str().to_owned())], n)),
    );
    let io: [(&str, &str, u64); 3] = [
        (
            "vswitch_tap_write_errors",
            "Frames a container's TAP refused",
            s.io.tap_write_errors,
        ),
        (
            "vswitch_udp_send_errors",
            "Datagrams the underlay refused",
            s.io.udp_send_errors,
        ),
        (
            "vswitch_offload_errors",
            "Super-frames that could not be segmented",
            s.io.offload_errors,
        ),
    ];
    for (name, help, value) in io {
        counter(&mut registry, name, help, value);
    }
    counters(
        &mut registry,
        "vswitch_worker_frames",
        "Frames and datagrams each datapath worker took in (rx) and sent (tx)",
        s.workers.iter().enumerate().flat_map(|(index, traffic)| {
            [("rx", traffic.rx_frames), ("tx", traffic.tx_frames)].map(|(direction, value)| {
                (
                    vec![
                        ("worker", index.to_string()),
                        ("direction", direction.to_owned()),
                    ],
                    value,
                )
            })
        }),
    );
    gauge(
        &mut registry,
        "vswitch_fdb_entries",
        "MAC table entries",
        s.fdb_entries,
    );
    gauge(
        &mut registry,
        "vswitch_ports",
        "Attached containers",
        s.ports.len(),
    );
    gauge(
        &mut registry,
        "vswitch_peers",
        "Configured peers",
        s.peers.len(),
    );
    counters(
        &mut registry,
        "vswitch_container_bytes",
        "Bytes from (rx) and to (tx) each attached container",
        s.ports.iter().flat_map(|p| {
            let a = &p.attachment;
            [("rx", p.traffic.rx_bytes), ("tx", p.traffic.tx_bytes)].map(|(direction, value)| {
                (
                    vec![
                        ("container", label(&a.container_id)),
                        ("ifname", label(&a.ifname)),
                        ("network", label(&a.network)),
                        ("direction", direction.to_owned()),
                    ],
                    value,
                )
            })
        }),
    );
    counters(
        &mut registry,
        "vswitch_peer_bytes",
        "VXLAN bytes from (rx) and to (tx) each peer",
        s.peers.iter().flat_map(|p| {
            [("rx", p.traffic.rx_bytes), ("tx", p.traffic.tx_bytes)].map(|(direction, value)| {
                (
                    vec![
                        ("peer", label(&p.name)),
                        ("direction", direction.to_owned()),
                    ],
                    value,
                )
            })
        }),
    );
    let states = Family::<Labels, Gauge>::default();
    for p in &s.peers {
        if let Some(h) = &p.health {
            for state in [PeerState::Up, PeerState::Degraded, PeerState::Down] {
                states
                    .get_or_create(&vec![
                        ("peer", label(&p.name)),
                        ("state", state.to_string()),
                    ])
                    .set(i64::from(h.state == state));
            }
        }
    }
    registry.register(
        "vswitch_peer_state",
        "1 for each peer's tunnel state (up, degraded, down), 0 for the others",
        states,
    );
    if let Some(h) = &s.health {
        let node = Family::<Labels, Gauge>::default();
        for state in [
            NodeState::Ready,
            NodeState::Degraded,
            NodeState::Disconnected,
        ] {
            node.get_or_create(&vec![("state", state.to_string())])
                .set(i64::from(h.state == state));
        }
        registry.register(
            "vswitch_node_state",
            "1 for the node's state (Ready, Degraded, Disconnected), 0 for the others",
            node,
        );
    }
    policy(&mut registry, s);
    sessions(&mut registry, &s.peers);
    peer_drops(&mut registry, &s.peers);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// Per-rule counters, each container's policy and rate-limit drops, the connection table.
fn policy(registry: &mut Registry, s: &Scrape) {
    counters(
        registry,
        "vswitch_container_policy_drops",
        "Frames from or to each container dropped by policy (denied) or a rate limit (limited)",
        s.ports.iter().flat_map(|p| {
            let a = &p.attachment;
            [("denied", p.denied), ("limited", p.limited)].map(|(reason, value)| {
                (
                    vec![
                        ("container", label(&a.container_id)),
                        ("ifname", label(&a.ifname)),
                        ("reason", reason.to_owned()),
                    ],
                    value,
                )
            })
        }),
    );
    let rule = |r: &super::policy::RuleRow| {
        vec![
            ("policy", label(&r.policy)),
            ("direction", r.direction.clone()),
            ("rule", r.index.to_string()),
        ]
    };
    let rules = &s.policy.rules;
    type Field = fn(&super::policy::RuleRow) -> u64;
    let families: [(&str, &str, Field); 3] = [
        (
            "vswitch_policy_rule_frames",
            "Frames each policy rule decided or logged",
            |r| r.hits,
        ),
        (
            "vswitch_policy_rule_bytes",
            "Bytes of the frames each policy rule decided or logged",
            |r| r.bytes,
        ),
        (
            "vswitch_policy_rule_limited",
            "Frames over the rate of each limit(rate) rule",
            |r| r.limited,
        ),
    ];
    for (name, help, value) in families {
        counters(
            registry,
            name,
            help,
            rules.iter().map(|r| (rule(r), value(r))),
        );
    }
    gauge(
        registry,
        "vswitch_conntrack_entries",
        "Connections tracked now",
        usize::try_from(s.policy.connections).unwrap_or(usize::MAX),
    );
    counter(
        registry,
        "vswitch_conntrack_opened",
        "Connections policy allowed and the table tracked",
        s.policy.opened,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::{Attachment, Traffic};

    #[test]
    fn scrapes_follow_the_text_format() {
        let counters = Counters {
            port_rx_frames: 7,
            ..Counters::default()
        };
        let ports = vec![PortView {
            attachment: Attachment::example("web\"1\nx"),
            traffic: Traffic {
                rx_bytes: 100,
                tx_bytes: 200,
                ..Traffic::default()
            },
            denied: 4,
            limited: 0,
        }];
        let policy = PolicyList {
            rules: vec![super::super::policy::RuleRow {
                id: 0,
                policy: "db".into(),
                direction: "ingress".into(),
                index: 1,
                priority: 0,
                rule: "allow tcp".into(),
                endpoints: 1,
                hits: 9,
                bytes: 900,
                limited: 0,
            }],
            connections: 2,
            ..PolicyList::default()
        };
        let text = render(&Scrape {
            counters,
            io: IoCounters::default(),
            fdb_entries: 3,
            ports,
            peers: vec![PeerView {
                name: "h1".into(),
                endpoint: "192.0.2.2:4789".parse().unwrap(),
                networks: vec!["sealed".into()],
                macs: 0,
                traffic: Traffic::default(),
                session: Some(crate::control::sealing::SessionStatus {
                    state: "up".into(),
                    last_handshake_secs: Some(3),
                    handshakes: 4,
                    rekeys: 3,
                    refused: 1,
                }),
                drops_by_reason: std::collections::BTreeMap::from([("replayed".to_owned(), 2)]),
                health: None,
                discovered: false,
            }],
            workers: vec![Traffic::default(), Traffic::default()],
            health: None,
            policy,
        });
        assert!(text.contains(
            "vswitch_policy_rule_frames_total{policy=\"db\",direction=\"ingress\",rule=\"1\"} 9\n"
        ), "{text}");
        assert!(text.contains("reason=\"denied\"} 4\n"), "{text}");
        assert!(text.contains("vswitch_conntrack_entries 2\n"), "{text}");
        assert!(text.contains("vswitch_drops_total{reason=\"policy_denied\"} 0\n"));
        for sample in [
            "vswitch_peer_session_up{peer=\"h1\"} 1\n",
            "vswitch_peer_handshakes_total{peer=\"h1\"} 4\n",
            "vswitch_peer_rekeys_total{peer=\"h1\"} 3\n",
            "vswitch_peer_handshakes_refused_total{peer=\"h1\"} 1\n",
            "vswitch_peer_drops_total{peer=\"h1\",reason=\"replayed\"} 2\n",
        ] {
            assert!(text.contains(sample), "{sample} in {text}");
        }
        assert!(
            text.contains("vswitch_worker_frames_total{worker=\"1\",direction=\"rx\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE vswitch_port_rx_frames counter\nvswitch_port_rx_frames_total 7\n"
            ),
            "{text}"
        );
        assert!(text.contains("vswitch_drops_total{reason=\"unknown_peer\"} 0\n"));
        assert!(text.contains("# TYPE vswitch_fdb_entries gauge\nvswitch_fdb_entries 3\n"));
        assert!(text.contains(
            "vswitch_container_bytes_total{container=\"web\\\"1\\nx\",ifname=\"eth0\",network=\"default\",direction=\"tx\"} 200\n"
        ), "{text}");
        assert!(text.ends_with("# EOF\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<u64>().is_ok(), "{line}");
        }
    }
}
