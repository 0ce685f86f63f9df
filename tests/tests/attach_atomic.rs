//! An attach is done whole or not at all (README, "Containers"): a failure injected at each of
//! its steps leaves the links of both namespaces, the namespaces, the leases and the records
//! as they were; a daemon killed at each step and started again is consistent (undone before
//! the commit, attached after it); and a retried attach then goes through.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipam::{EmbeddedStore, Pool, PoolConfig};
use ipnet::IpNet;
use netns::{NetNs, Netlink};
use vswitch::control::api::{self, AttachRequest, DetachRequest, Reply, Request};
use vswitch::control::daemon::{AttachStep, FAIL_ATTACH_ENV, KILL_ATTACH_ENV};
use vswitch_e2e::{Lab, NetworkSpec, reaches, vswitch_lab};

/// A `vswitchd` this test starts itself, with test variables; killed on drop.
struct Daemon(Child);

impl Daemon {
    fn start(lab: &Lab, env: Option<(&str, AttachStep)>) -> Daemon {
        let host = &lab.hosts[0];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&host.log)
            .expect("opening the log");
        let mut command = host.ns.command(vswitch::lab::vswitchd_path());
        command
            .arg("--config")
            .arg(&host.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log"))
            .stderr(log);
        if let Some((name, step)) = env {
            command.env(name, step.name());
        }
        let mut daemon = Daemon(command.spawn().expect("starting vswitchd"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while api::call(&host.socket, &Request::Status).is_err() {
            if let Ok(Some(status)) = daemon.0.try_wait() {
                panic!(
                    "vswitchd exited at start ({status}): see {}",
                    host.log.display()
                );
            }
            assert!(Instant::now() < deadline, "vswitchd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// SIGTERM, and wait for it.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }

    /// Waits for it to die on its own (killed by the test hook).
    fn wait_killed(mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(status.signal(), Some(9), "{status}");
                return;
            }
            assert!(Instant::now() < deadline, "vswitchd was not killed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A namespace of the test's own, as a runtime makes it: `lo` down, nothing else.
struct Fresh {
    name: String,
    ns: NetNs,
}

impl Fresh {
    fn new(lab: &Lab) -> Fresh {
        let name = format!("{}-fresh", lab_id(lab));
        let _ = NetNs::delete(&name);
        let ns = NetNs::create(&name).expect("creating the namespace");
        Fresh { name, ns }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let _ = NetNs::delete(&self.name);
    }
}

/// Everything an attach could leave behind.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    /// The daemon's namespace: name, kind, MAC, up.
    host_links: BTreeSet<String>,
    /// The container's: links with their state, addresses and routes.
    container: BTreeSet<String>,
    /// The lab's namespaces.
    namespaces: BTreeSet<String>,
    /// Leases of this node: container, interface, address.
    leases: BTreeSet<String>,
    /// The attachment list as saved.
    records: String,
}

fn links(nl: &Netlink) -> BTreeSet<String> {
    let mut listed = BTreeSet::new();
    for link in nl.links().expect("listing links") {
        listed.insert(format!(
            "{} {:?} {:?} up={} mtu={:?}",
            link.name, link.kind, link.mac, link.up, link.mtu
        ));
        for address in nl.addresses(&link.name).expect("listing addresses") {
            listed.insert(format!("{} address {address}", link.name));
        }
    }
    listed
}

/// The prefix of the lab's namespaces.
fn lab_id(lab: &Lab) -> String {
    lab.dir()
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vswitch-lab-"))
        .expect("a lab directory")
        .to_owned()
}

fn state_dir(lab: &Lab) -> PathBuf {
    lab.dir().join(&lab.hosts[0].name).join("state")
}

fn leases(lab: &Lab) -> BTreeSet<String> {
    let store =
        EmbeddedStore::open(state_dir(lab).join("ipam.redb")).expect("opening the lease store");
    let mut config = PoolConfig::new(
        "default",
        "10.244.0.0/16".parse::<IpNet>().expect("a prefix"),
    );
    config.node_prefix = Some(24);
    config.node_subnet = Some("10.244.1.0/24".parse().expect("a prefix"));
    let pool = Pool::open(Arc::new(store), &config, &lab.hosts[0].name).expect("opening the pool");
    pool.leases()
        .expect("listing leases")
        .into_iter()
        .map(|l| {
            format!(
                "{} {} {}",
                l.owner.container_id(),
                l.owner.ifname(),
                l.address
            )
        })
        .collect()
}

fn snapshot(lab: &Lab, fresh: &Fresh) -> Snapshot {
    let container_nl = Netlink::in_namespace(&fresh.ns).expect("netlink in the container");
    let mut container = links(&container_nl);
    for route in container_nl.routes().expect("listing routes") {
        container.insert(format!("route {route:?}"));
    }
    let id = lab_id(lab);
    let namespaces = std::fs::read_dir(netns::NETNS_RUN_DIR)
        .expect("listing namespaces")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&id))
        .collect();
    Snapshot {
        host_links: links(&Netlink::in_namespace(&lab.hosts[0].ns).expect("netlink on the host")),
        container,
        namespaces,
        leases: leases(lab),
        records: std::fs::read_to_string(state_dir(lab).join("ports.json"))
            .expect("reading ports.json"),
    }
}

fn attach(socket: &Path, netns: &str) -> Result<Reply, api::ClientError> {
    api::call(
        socket,
        &Request::Attach(AttachRequest {
            netns: netns.to_owned(),
            ..Default::default()
        }),
    )
}

fn ports(socket: &Path) -> Vec<String> {
    match api::call(socket, &Request::Ports).expect("vswitch ports") {
        Reply::Ports(ports) => ports
            .into_iter()
            .map(|p| p.attachment.container_id)
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// A lab with one host whose daemon is stopped, and one container attached before.
fn lab_with_a_container(tag: &str) -> (Lab, String) {
    let mut lab = vswitch_lab(tag, 1, &[NetworkSpec::DEFAULT], "");
    let c = lab
        .add_container(0, "default", None)
        .expect("attaching a container");
    let name = lab.containers[c].name.clone();
    lab.stop_vswitchd(0, false).expect("stopping vswitchd");
    (lab, name)
}

const FAILING: [AttachStep; 7] = [
    AttachStep::Lease,
    AttachStep::Intent,
    AttachStep::Create,
    AttachStep::Move,
    AttachStep::Configure,
    AttachStep::Plug,
    AttachStep::Commit,
];

#[test]
fn a_failure_at_any_step_leaves_nothing_behind() {
    let (lab, first) = lab_with_a_container("atf");
    let socket = lab.hosts[0].socket.clone();
    let fresh = Fresh::new(&lab);
    for step in FAILING {
        let daemon = Daemon::start(&lab, Some((FAIL_ATTACH_ENV, step)));
        let before = snapshot(&lab, &fresh);
        let e = attach(&socket, &fresh.name).unwrap_err().to_string();
        assert!(e.contains(&format!("step {step}")), "{step}: {e}");
        assert_eq!(snapshot(&lab, &fresh), before, "after a failure at {step}");
        assert_eq!(ports(&socket), vec![first.clone()], "{step}");
        daemon.stop();
    }
    // Nothing of the failed attempts stands in the way.
    let daemon = Daemon::start(&lab, None);
    let Ok(Reply::Attached(attached)) = attach(&socket, &fresh.name) else {
        panic!("the attach after the failures failed");
    };
    let IpAddr::V4(gateway) = attached.gateway else {
        panic!("an IPv4 gateway");
    };
    assert!(reaches(&fresh.ns, gateway));
    daemon.stop();
}

#[test]
fn a_daemon_killed_at_any_step_comes_back_consistent() {
    let (lab, first) = lab_with_a_container("atk");
    let socket = lab.hosts[0].socket.clone();
    let fresh = Fresh::new(&lab);
    for step in AttachStep::ALL {
        let daemon = Daemon::start(&lab, Some((KILL_ATTACH_ENV, step)));
        let before = snapshot(&lab, &fresh);
        assert!(attach(&socket, &fresh.name).is_err(), "{step}: answered");
        daemon.wait_killed();
        let daemon = Daemon::start(&lab, None);
        if step < AttachStep::Answer {
            // Not committed: undone at start.
            assert_eq!(snapshot(&lab, &fresh), before, "after a kill at {step}");
            assert_eq!(ports(&socket), vec![first.clone()], "{step}");
        } else {
            // Committed: re-adopted, whole.
            let mut listed = ports(&socket);
            listed.sort();
            let mut expected = vec![first.clone(), fresh.name.clone()];
            expected.sort();
            assert_eq!(listed, expected);
            let after = snapshot(&lab, &fresh);
            assert!(after.records.contains(&fresh.name) && !after.records.contains("intent"));
            assert!(after.leases.iter().any(|l| l.starts_with(&fresh.name)));
            assert!(
                after
                    .container
                    .iter()
                    .any(|l| l.starts_with("eth0 address 10.244.1."))
            );
            let detached = api::call(
                &socket,
                &Request::Detach(DetachRequest {
                    container_id: fresh.name.clone(),
                    ifname: None,
                }),
            );
            assert!(
                matches!(detached, Ok(Reply::Detached(true))),
                "{detached:?}"
            );
            // A detach takes back all of it, but `lo`, which it leaves up.
            let mut after = snapshot(&lab, &fresh);
            after.container.retain(|l| !l.starts_with("lo "));
            let mut expected = before;
            expected.container.retain(|l| !l.starts_with("lo "));
            assert_eq!(after, expected);
        }
        // A retried attach goes through.
        let Ok(Reply::Attached(_)) = attach(&socket, &fresh.name) else {
            panic!("the attach retried after a kill at {step} failed");
        };
        let detached = api::call(
            &socket,
            &Request::Detach(DetachRequest {
                container_id: fresh.name.clone(),
                ifname: None,
            }),
        );
        assert!(
            matches!(detached, Ok(Reply::Detached(true))),
            "{detached:?}"
        );
        Netlink::in_namespace(&fresh.ns)
            .unwrap()
            .set_down("lo")
            .unwrap();
        daemon.stop();
    }
}
