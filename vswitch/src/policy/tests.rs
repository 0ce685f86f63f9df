//! Policy evaluation, connection tracking and the per-frame decision, on a virtual clock.

#![allow(clippy::unwrap_used)]

use core::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::switch::PortId;
use crate::wire::{IpProtocol, TcpPacket};

type Tcp = TcpPacket<&'static [u8]>;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ep(id: &str, labels: &[(&str, &str)], ips: &[&str], port: Option<u32>) -> Endpoint {
    Endpoint {
        id: id.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ips: ips.iter().map(|s| ip(s)).collect(),
        local: port.map(PortId::from_raw),
    }
}

/// web (port 1), db (port 2), lb on another host, and an unlabelled local box (port 3).
fn endpoints() -> Vec<Endpoint> {
    vec![
        ep("web", &[("app", "web")], &["10.0.0.1", "fd00::1"], Some(1)),
        ep("db", &[("app", "db")], &["10.0.0.2", "fd00::2"], Some(2)),
        ep("lb", &[("app", "lb")], &["10.0.1.9"], None),
        ep("box", &[], &["10.0.0.3"], Some(3)),
    ]
}

const POLICIES: &str = r#"
[[policy]]
name = "db"
selector = { app = "db" }
priority = 10
[[policy.ingress]]
peers = [{ selector = { app = "web" } }]
protocol = "tcp"
ports = [5432]
[[policy.ingress]]
protocol = "icmp"

[[policy]]
name = "web"
selector = { app = "web" }
[[policy.ingress]]
peers = [{ selector = { app = "lb" } }, { cidr = "192.0.2.0/24" }, { cidr = "2001:db8::/32" }]
protocol = "tcp"
ports = [80, "8000-8080"]
[[policy.egress]]
peers = [{ cidr = "10.0.0.0/16" }]
[[policy.egress]]
peers = [{ cidr = "10.0.0.0/16" }]
protocol = "udp"
ports = [53]
action = "log"

[[policy]]
name = "no-smtp"
selector = { app = "web" }
[[policy.egress]]
protocol = "tcp"
ports = [25]
action = "deny"
"#;

fn compiled(text: &str) -> Compiled {
    Compiled::new(&parse_toml(text).unwrap(), &endpoints(), Instant::now())
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16) -> FlowKey {
    FlowKey::new(ip(src), ip(dst), IpProtocol::TCP, sport, dport)
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> FlowKey {
    FlowKey::new(ip(src), ip(dst), IpProtocol::UDP, sport, dport)
}

fn port(n: u32) -> PortId {
    PortId::from_raw(n)
}

fn verdict(c: &Compiled, p: u32, d: Direction, key: FlowKey) -> Verdict {
    c.evaluate(port(p), d, &key).verdict
}

fn named(c: &Compiled, v: Verdict) -> Option<(String, Direction, usize)> {
    v.rule()
        .and_then(|r| c.origin(r))
        .map(|(n, d, i)| (n.to_owned(), d, i))
}

#[test]
fn evaluation_matrix() {
    let c = compiled(POLICIES);
    use Direction::*;
    // Selector peers, protocol and port.
    let v = verdict(&c, 2, Ingress, tcp("10.0.0.1", "10.0.0.2", 40000, 5432));
    assert_eq!(named(&c, v), Some(("db".into(), Ingress, 0)));
    assert!(matches!(v, Verdict::Allow(_)));
    assert_eq!(
        verdict(&c, 2, Ingress, tcp("10.0.0.1", "10.0.0.2", 40000, 5433)),
        Verdict::DefaultDeny
    );
    assert_eq!(
        verdict(&c, 2, Ingress, udp("10.0.0.1", "10.0.0.2", 40000, 5432)),
        Verdict::DefaultDeny
    );
    assert_eq!(
        verdict(&c, 2, Ingress, tcp("10.0.0.3", "10.0.0.2", 40000, 5432)),
        Verdict::DefaultDeny
    );
    // IPv6 address of the same endpoint matches its selector.
    assert!(verdict(&c, 2, Ingress, tcp("fd00::1", "fd00::2", 1, 5432)).allows());
    // ICMP from anyone; ICMPv6 too.
    let ping = FlowKey::new(ip("10.0.0.3"), ip("10.0.0.2"), IpProtocol::ICMP, 7, 8 << 8);
    assert!(verdict(&c, 2, Ingress, ping).allows());
    let ping6 = FlowKey::new(
        ip("fd00::9"),
        ip("fd00::2"),
        IpProtocol::ICMPV6,
        7,
        128 << 8,
    );
    assert!(verdict(&c, 2, Ingress, ping6).allows());
    // A remote endpoint matched by label, CIDR peers in both families, port ranges.
    assert!(verdict(&c, 1, Ingress, tcp("10.0.1.9", "10.0.0.1", 1, 80)).allows());
    assert!(verdict(&c, 1, Ingress, tcp("192.0.2.77", "10.0.0.1", 1, 8080)).allows());
    assert!(verdict(&c, 1, Ingress, tcp("2001:db8::5", "fd00::1", 1, 8000)).allows());
    assert_eq!(
        verdict(&c, 1, Ingress, tcp("192.0.2.77", "10.0.0.1", 1, 8081)),
        Verdict::DefaultDeny
    );
    assert_eq!(
        verdict(&c, 1, Ingress, tcp("198.51.100.1", "10.0.0.1", 1, 80)),
        Verdict::DefaultDeny
    );
    // Egress: CIDR allow, deny rule of another policy at the same priority wins the tie.
    assert!(verdict(&c, 1, Egress, tcp("10.0.0.1", "10.0.0.2", 1, 5432)).allows());
    let smtp = verdict(&c, 1, Egress, tcp("10.0.0.1", "10.0.0.2", 1, 25));
    assert_eq!(named(&c, smtp), Some(("no-smtp".into(), Egress, 0)));
    assert!(matches!(smtp, Verdict::Deny(_)));
    assert_eq!(
        verdict(&c, 1, Egress, tcp("10.0.0.1", "8.8.8.8", 1, 443)),
        Verdict::DefaultDeny
    );
    // Log does not decide: the allow after it does, and the log rule is reported.
    let e = c.evaluate(port(1), Egress, &udp("10.0.0.1", "10.0.0.2", 1, 53));
    assert!(matches!(e.verdict, Verdict::Allow(_)));
    assert_eq!(e.log.and_then(|r| c.origin(r)), Some(("web", Egress, 1)));
    // Not selected in a direction: open. Not selected at all: open both ways.
    assert_eq!(
        verdict(&c, 2, Egress, tcp("10.0.0.2", "8.8.8.8", 1, 443)),
        Verdict::Open
    );
    assert_eq!(
        verdict(&c, 3, Ingress, tcp("8.8.8.8", "10.0.0.3", 1, 22)),
        Verdict::Open
    );
    assert_eq!(
        verdict(&c, 3, Egress, tcp("10.0.0.3", "8.8.8.8", 1, 22)),
        Verdict::Open
    );
    assert_eq!(
        verdict(&c, 99, Egress, tcp("10.0.0.3", "8.8.8.8", 1, 22)),
        Verdict::Open
    );
}

#[test]
fn priority_orders_rules_and_deny_wins_ties() {
    let text = r#"
[[policy]]
name = "allow-high"
priority = 100
[[policy.ingress]]
protocol = "tcp"
ports = [22]
[[policy]]
name = "deny-low"
priority = 5
[[policy.ingress]]
action = "deny"
[[policy]]
name = "allow-low"
priority = 5
[[policy.ingress]]
"#;
    let c = compiled(text);
    let ssh = verdict(&c, 3, Direction::Ingress, tcp("8.8.8.8", "10.0.0.3", 1, 22));
    assert_eq!(named(&c, ssh).map(|n| n.0), Some("allow-high".into()));
    let http = verdict(&c, 3, Direction::Ingress, tcp("8.8.8.8", "10.0.0.3", 1, 80));
    assert_eq!(named(&c, http).map(|n| n.0), Some("deny-low".into()));
    assert!(matches!(http, Verdict::Deny(_)));
    // A policy with only ingress rules leaves egress open.
    assert_eq!(
        verdict(&c, 3, Direction::Egress, tcp("10.0.0.3", "8.8.8.8", 1, 80)),
        Verdict::Open
    );
}

#[test]
fn explain_says_which_rule_and_why() {
    let c = compiled(POLICIES);
    let e = c.explain(ip("10.0.0.1"), ip("10.0.0.2"), IpProtocol::TCP, 5432);
    assert!(e.allowed);
    assert_eq!(
        e.to_string(),
        "10.0.0.1 -> 10.0.0.2 proto 6 port 5432: allowed\n  \
         egress:  allowed by policy \"web\" egress[0] (priority 0): allow any peers 10.0.0.0/16\n  \
         ingress: allowed by policy \"db\" ingress[0] (priority 10): allow tcp ports 5432 peers endpoints {app=web}"
    );
    let e = c.explain(ip("10.0.0.3"), ip("10.0.0.2"), IpProtocol::TCP, 5432);
    assert!(!e.allowed);
    assert_eq!(e.egress.why, "no policy selects box for egress: open");
    assert_eq!(
        e.ingress.why,
        "db is selected for ingress by db and no rule allows this: denied"
    );
    let e = c.explain(ip("10.0.0.1"), ip("10.0.1.9"), IpProtocol::TCP, 25);
    assert!(
        e.egress
            .why
            .starts_with("denied by policy \"no-smtp\" egress[0]"),
        "{}",
        e.egress.why
    );
    assert_eq!(
        e.ingress.why,
        "lb (10.0.1.9) is on another host: its host decides ingress"
    );
}

fn info(key: FlowKey, tcp_flags: u8) -> FlowInfo {
    FlowInfo {
        key,
        tcp_flags,
        later_fragment: false,
        related: None,
    }
}

const SYN: u8 = Tcp::SYN;
const SYNACK: u8 = Tcp::SYN | Tcp::ACK;
const ACK: u8 = Tcp::ACK;

#[test]
fn replies_pass_without_a_rule_and_counters_count() {
    let c = compiled(POLICIES);
    let ct = Conntrack::default();
    let mut cache = FlowCache::new(64);
    let t0 = Instant::now();
    let open = info(tcp("10.0.0.1", "10.0.0.2", 40000, 5432), SYN);
    let d = c.check(
        t0,
        &mut cache,
        &ct,
        &open,
        Ports {
            from: Some(port(1)),
            to: Some(port(2)),
        },
        74,
    );
    assert_eq!(d.outcome, Outcome::Allowed);
    // db's egress is open, web's ingress does not allow db: only tracking lets this pass.
    let reply = info(open.key.reversed(), SYNACK);
    assert_eq!(
        c.evaluate(port(1), Direction::Ingress, &reply.key).verdict,
        Verdict::DefaultDeny
    );
    let d = c.check(
        t0,
        &mut cache,
        &ct,
        &reply,
        Ports {
            from: Some(port(2)),
            to: Some(port(1)),
        },
        74,
    );
    assert_eq!(d.outcome, Outcome::Established);
    // A new connection the other way is still denied.
    let back = info(tcp("10.0.0.2", "10.0.0.1", 5432, 80), SYN);
    let d = c.check(
        t0,
        &mut cache,
        &ct,
        &back,
        Ports {
            from: Some(port(2)),
            to: Some(port(1)),
        },
        74,
    );
    assert_eq!(
        d.outcome,
        Outcome::Denied {
            direction: Direction::Ingress,
            rule: None
        }
    );
    // Rule counters: the db ingress rule and web egress rule each decided one frame.
    let list = c.list();
    let row = list
        .iter()
        .find(|r| r.policy == "db" && r.index == 0)
        .unwrap();
    assert_eq!((row.hits, row.bytes, row.endpoints), (1, 74, 1));
    // Counters survive a recompilation of unchanged rules.
    let again = compiled(POLICIES);
    again.carry_counters_from(&c);
    let row = again
        .list()
        .into_iter()
        .find(|r| r.policy == "db" && r.index == 0)
        .unwrap();
    assert_eq!(row.hits, 1);
}

#[test]
fn udp_icmp_and_related_errors() {
    let c = compiled(POLICIES);
    let ct = Conntrack::default();
    let mut cache = FlowCache::new(64);
    let t0 = Instant::now();
    // web -> db UDP is allowed by web's egress (db ingress only allows tcp 5432 + icmp).
    let q = info(udp("10.0.0.1", "10.0.1.9", 5000, 53), 0);
    assert!(
        c.check(
            t0,
            &mut cache,
            &ct,
            &q,
            Ports {
                from: Some(port(1)),
                to: None
            },
            60
        )
        .passes()
    );
    let a = info(q.key.reversed(), 0);
    assert_eq!(
        c.check(
            t0,
            &mut cache,
            &ct,
            &a,
            Ports {
                from: None,
                to: Some(port(1))
            },
            60
        )
        .outcome,
        Outcome::Established
    );
    // Port unreachable about that query, from the peer: related.
    let err = FlowInfo {
        related: Some(q.key),
        ..info(
            FlowKey::new(
                ip("10.0.1.9"),
                ip("10.0.0.1"),
                IpProtocol::ICMP,
                0,
                3 << 8 | 3,
            ),
            0,
        )
    };
    assert_eq!(
        c.check(
            t0,
            &mut cache,
            &ct,
            &err,
            Ports {
                from: None,
                to: Some(port(1))
            },
            90
        )
        .outcome,
        Outcome::Related
    );
    // Echo request web -> db allowed by db's icmp rule; the reply passes web's closed ingress.
    let ping = info(
        FlowKey::new(ip("10.0.0.1"), ip("10.0.0.2"), IpProtocol::ICMP, 9, 8 << 8),
        0,
    );
    assert!(
        c.check(
            t0,
            &mut cache,
            &ct,
            &ping,
            Ports {
                from: Some(port(1)),
                to: Some(port(2))
            },
            98
        )
        .passes()
    );
    let pong = info(
        FlowKey::new(ip("10.0.0.2"), ip("10.0.0.1"), IpProtocol::ICMP, 9, 0),
        0,
    );
    assert_eq!(
        c.check(
            t0,
            &mut cache,
            &ct,
            &pong,
            Ports {
                from: Some(port(2)),
                to: Some(port(1))
            },
            98
        )
        .outcome,
        Outcome::Established
    );
    // db pinging web with the same identifier is not a reply.
    let reverse_ping = info(
        FlowKey::new(ip("10.0.0.2"), ip("10.0.0.1"), IpProtocol::ICMP, 9, 8 << 8),
        0,
    );
    assert!(
        !c.check(
            t0,
            &mut cache,
            &ct,
            &reverse_ping,
            Ports {
                from: Some(port(2)),
                to: Some(port(1))
            },
            98
        )
        .passes()
    );
    // After 30 s of silence the echo entry is gone, the UDP one (replied: 180 s) is not.
    let t1 = t0 + Duration::from_secs(31);
    assert!(
        !c.check(
            t1,
            &mut cache,
            &ct,
            &pong,
            Ports {
                from: Some(port(2)),
                to: Some(port(1))
            },
            98
        )
        .passes()
    );
    assert!(
        c.check(
            t1,
            &mut cache,
            &ct,
            &a,
            Ports {
                from: None,
                to: Some(port(1))
            },
            60
        )
        .passes()
    );
}

#[test]
fn tcp_states_and_timeouts() {
    let ct = Conntrack::default();
    let t0 = Instant::now();
    let k = tcp("10.0.0.1", "10.0.0.2", 40000, 80);
    let (fwd, rev) = (info(k, SYN), info(k.reversed(), SYNACK));
    ct.open(t0, &fwd, 1, [None, None]);
    let known = |t| matches!(ct.track(t, &info(k.reversed(), ACK)), Tracked::Known { .. });
    // Opening: 60 s without a reply.
    assert!(ct.contains(t0 + Duration::from_secs(59), &k));
    assert!(!ct.contains(t0 + Duration::from_secs(61), &k));
    // Established: 2 h 5 min.
    ct.open(t0, &fwd, 1, [None, None]);
    assert!(matches!(
        ct.track(t0, &rev),
        Tracked::Known {
            original: false,
            ..
        }
    ));
    let t1 = t0 + Duration::from_secs(7400);
    assert!(known(t1));
    // FIN one way: 120 s; FIN both ways: 10 s.
    assert!(matches!(
        ct.track(t1, &info(k, Tcp::FIN | ACK)),
        Tracked::Known { original: true, .. }
    ));
    assert!(known(t1 + Duration::from_secs(110)));
    let t2 = t1 + Duration::from_secs(110);
    ct.track(t2, &info(k.reversed(), Tcp::FIN | ACK));
    assert!(ct.contains(t2 + Duration::from_secs(9), &k));
    assert!(!ct.contains(t2 + Duration::from_secs(11), &k));
    // RST closes at once (10 s).
    ct.open(t0, &fwd, 1, [None, None]);
    ct.track(t0, &rev);
    ct.track(t0, &info(k, Tcp::RST));
    assert!(!ct.contains(t0 + Duration::from_secs(11), &k));
    // A SYN from the far side on a closed tuple is a new connection for policy.
    ct.open(t0, &fwd, 1, [None, None]);
    ct.track(t0, &info(k, Tcp::RST));
    assert_eq!(ct.track(t0, &info(k.reversed(), SYN)), Tracked::New);
    let stats = ct.stats();
    assert_eq!((stats.opened, stats.entries), (4, 0));
}

#[test]
fn the_table_is_bounded_and_evicts_unused_entries_first() {
    let ct = Conntrack::new(ConntrackConfig {
        capacity: 64,
        shards: 1,
        ..ConntrackConfig::default()
    });
    let t0 = Instant::now();
    let flow = |n: u16| info(udp("10.0.0.1", "10.0.0.2", 1000 + n, 53), 0);
    for n in 0..64 {
        ct.open(t0, &flow(n), 1, [None, None]);
    }
    // Flow 0 is in use; 1 is not.
    assert!(matches!(ct.track(t0, &flow(0)), Tracked::Known { .. }));
    for n in 64..96 {
        ct.open(t0, &flow(n), 1, [None, None]);
    }
    let stats = ct.stats();
    assert_eq!((stats.entries, stats.evicted), (64, 32));
    assert!(ct.contains(t0, &flow(0).key));
    assert!(!ct.contains(t0, &flow(1).key));
    // Expired entries go before live ones.
    let t1 = t0 + Duration::from_secs(31);
    ct.open(t1, &flow(200), 1, [None, None]);
    assert_eq!(ct.stats().evicted, 32);
    ct.sweep(t1);
    assert_eq!(ct.stats().entries, 1);
}

#[test]
fn a_policy_change_reevaluates_established_connections_on_their_next_packet() {
    let old = compiled(POLICIES);
    let ct = Conntrack::default();
    let mut cache = FlowCache::new(64);
    let t0 = Instant::now();
    let pg = info(tcp("10.0.0.1", "10.0.0.2", 40000, 5432), SYN);
    let ping = info(
        FlowKey::new(ip("10.0.0.1"), ip("10.0.0.2"), IpProtocol::ICMP, 9, 8 << 8),
        0,
    );
    assert!(
        old.check(
            t0,
            &mut cache,
            &ct,
            &pg,
            Ports {
                from: Some(port(1)),
                to: Some(port(2))
            },
            60
        )
        .passes()
    );
    assert!(
        old.check(
            t0,
            &mut cache,
            &ct,
            &ping,
            Ports {
                from: Some(port(1)),
                to: Some(port(2))
            },
            60
        )
        .passes()
    );
    // db no longer accepts postgres from web; ICMP still allowed.
    let new = compiled(&POLICIES.replace("ports = [5432]", "ports = [5433]"));
    assert_ne!(new.epoch(), old.epoch());
    // The reply of the revoked connection is dropped and its entry is gone.
    let reply = info(pg.key.reversed(), SYNACK);
    let d = new.check(
        t0,
        &mut cache,
        &ct,
        &reply,
        Ports {
            from: Some(port(2)),
            to: Some(port(1)),
        },
        60,
    );
    assert_eq!(
        d.outcome,
        Outcome::Denied {
            direction: Direction::Ingress,
            rule: None
        }
    );
    assert!(!ct.contains(t0, &pg.key));
    // The ping, still allowed, goes on under the new epoch.
    let pong = info(
        FlowKey::new(ip("10.0.0.2"), ip("10.0.0.1"), IpProtocol::ICMP, 9, 0),
        0,
    );
    let d = new.check(
        t0,
        &mut cache,
        &ct,
        &pong,
        Ports {
            from: Some(port(2)),
            to: Some(port(1)),
        },
        60,
    );
    assert_eq!(d.outcome, Outcome::Established);
    assert!(matches!(ct.track(t0, &pong), Tracked::Known { epoch, .. } if epoch == new.epoch()));
}

#[test]
fn limit_rules_drop_the_excess_of_established_connections_too() {
    let text = r#"
[[policy]]
name = "slow"
selector = { app = "db" }
[[policy.ingress]]
action = "limit(8M)"
"#;
    let c = compiled(text);
    let ct = Conntrack::default();
    let mut cache = FlowCache::new(64);
    let t0 = Instant::now();
    let k = udp("10.0.0.1", "10.0.0.2", 1, 2);
    // Burst 100 ms (100 kB) at 1 MB/s: 66 frames of 1500 bytes, then drops until time passes.
    let passed = (0..100)
        .filter(|_| {
            c.check(
                t0,
                &mut cache,
                &ct,
                &info(k, 0),
                Ports {
                    from: Some(port(1)),
                    to: Some(port(2)),
                },
                1500,
            )
            .passes()
        })
        .count();
    assert_eq!(passed, 66);
    let later = t0 + Duration::from_millis(15);
    assert!(
        c.check(
            later,
            &mut cache,
            &ct,
            &info(k, 0),
            Ports {
                from: Some(port(1)),
                to: Some(port(2))
            },
            1500
        )
        .passes()
    );
    // Replies are not charged.
    assert!(
        c.check(
            t0,
            &mut cache,
            &ct,
            &info(k.reversed(), 0),
            Ports {
                from: Some(port(2)),
                to: Some(port(1))
            },
            1500
        )
        .passes()
    );
    let row = c.list().into_iter().find(|r| r.policy == "slow").unwrap();
    assert_eq!(row.limited, 34);
}

#[test]
fn the_flow_cache_gives_the_evaluation_and_forgets_old_epochs() {
    let c = compiled(POLICIES);
    let mut cache = FlowCache::new(16);
    let k = tcp("10.0.0.1", "10.0.0.2", 1, 25);
    let a = c.evaluate_cached(&mut cache, port(1), Direction::Egress, &k, 1);
    let b = c.evaluate_cached(&mut cache, port(1), Direction::Egress, &k, 1);
    assert_eq!(a, b);
    assert_eq!(cache.stats(), (1, 1));
    let c2 = compiled(POLICIES);
    c2.evaluate_cached(&mut cache, port(1), Direction::Egress, &k, 1);
    assert_eq!(cache.stats(), (1, 2));
}

/// Four workers share one table: two see the opening packets of 2,000 connections, two see
/// the replies (handed over as soon as the opening packet passed), all with their own caches.
/// Every reply passes, though web's ingress allows none of them by rule.
#[test]
fn tracking_holds_across_workers() {
    let c = Arc::new(compiled(POLICIES));
    let ct = Arc::new(Conntrack::default());
    let t0 = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel::<FlowInfo>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let mut handles = Vec::new();
    for w in 0..2u16 {
        let (c, ct, tx) = (c.clone(), ct.clone(), tx.clone());
        handles.push(std::thread::spawn(move || {
            let mut cache = FlowCache::new(1024);
            for n in 0..1000u16 {
                let f = info(
                    tcp("10.0.0.1", "10.0.0.2", 10_000 + w * 1000 + n, 5432),
                    SYN,
                );
                assert!(
                    c.check(
                        t0,
                        &mut cache,
                        &ct,
                        &f,
                        Ports {
                            from: Some(port(1)),
                            to: Some(port(2))
                        },
                        74
                    )
                    .passes()
                );
                tx.send(info(f.key.reversed(), SYNACK)).unwrap();
            }
            0
        }));
    }
    drop(tx);
    for _ in 0..2 {
        let (c, ct, rx) = (c.clone(), ct.clone(), rx.clone());
        handles.push(std::thread::spawn(move || {
            let mut cache = FlowCache::new(1024);
            let mut passed = 0;
            loop {
                let next = rx.lock().unwrap().recv();
                let Ok(reply) = next else { break };
                let d = c.check(
                    t0,
                    &mut cache,
                    &ct,
                    &reply,
                    Ports {
                        from: Some(port(2)),
                        to: Some(port(1)),
                    },
                    74,
                );
                assert_eq!(d.outcome, Outcome::Established);
                passed += 1;
            }
            passed
        }));
    }
    let replies: i32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(replies, 2000);
    assert_eq!(ct.stats().entries, 2000);
}

mod replies {
    use proptest::prelude::*;

    use super::*;

    const HOSTS: [&str; 5] = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.9", "192.0.2.7"];

    /// The local port of an address among [`endpoints`], if it is local.
    fn local(ip: &str) -> Option<PortId> {
        endpoints()
            .into_iter()
            .find(|e| e.ips.contains(&super::ip(ip)))
            .and_then(|e| e.local)
    }

    proptest! {
        /// Whatever the flow, the ports it crosses and the packets before it: once its opening
        /// packet is allowed, its reply passes (over a policy set with deny and log rules and
        /// defaults in both directions).
        #[test]
        fn a_reply_of_an_allowed_flow_always_passes(
            flows in prop::collection::vec(
                (0usize..5, 0usize..5, 0u8..3, 1u16..65535, prop::sample::select(vec![25u16, 53, 80, 5432, 8080])),
                1..40,
            ),
        ) {
            let c = compiled(POLICIES);
            let ct = Conntrack::default();
            let mut cache = FlowCache::new(64);
            let t0 = Instant::now();
            for (n, (s, d, proto, sport, dport)) in flows.into_iter().enumerate() {
                if s == d {
                    continue;
                }
                let (src, dst) = (HOSTS[s], HOSTS[d]);
                let (key, flags) = match proto {
                    0 => (tcp(src, dst, sport, dport), SYN),
                    1 => (udp(src, dst, sport, dport), 0),
                    _ => (FlowKey::new(ip(src), ip(dst), IpProtocol::ICMP, sport, 8 << 8), 0),
                };
                let ports = Ports { from: local(src), to: local(dst) };
                let now = t0 + Duration::from_millis(n as u64);
                let open = c.check(now, &mut cache, &ct, &info(key, flags), ports, 100);
                if !open.passes() {
                    continue;
                }
                let reply_key = if proto == 2 {
                    FlowKey::new(ip(dst), ip(src), IpProtocol::ICMP, sport, 0)
                } else {
                    key.reversed()
                };
                let back = Ports { from: ports.to, to: ports.from };
                let reply_flags = if proto == 0 { SYNACK } else { 0 };
                let reply = c.check(now, &mut cache, &ct, &info(reply_key, reply_flags), back, 100);
                prop_assert!(reply.passes(), "{key:?} allowed, its reply {:?}", reply.outcome);
            }
        }
    }
}

#[test]
fn a_syntax_error_at_the_top_of_a_json_file_names_the_root() {
    let e = parse_json(r#"{""""policy": [{"name": "web"}]"#).unwrap_err();
    let PolicyError::Syntax { path, .. } = e else {
        panic!("a syntax error expected: {e}");
    };
    assert_eq!(path, ".");
}
