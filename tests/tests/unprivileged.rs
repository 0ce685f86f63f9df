//! A `vswitchd` that runs as an unprivileged user with no capabilities (README, "Running
//! vswitchd without privileges"): containers attached by the privileged helper
//! (`vswitch attach --helper`) reach each other through it, by ping and TCP; killed and
//! started again (still unprivileged) it takes the queues back from its keeper and they do
//! again; without the keeper the helper sends them again; `vswitch detach --helper` removes
//! everything. And the helper takes back the interface it made when the daemon refuses the
//! plug.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netns::{NetNs, Netlink};
use vswitch::control::api::{self, Reply, Request};
use vswitch::control::daemon::FAIL_ATTACH_ENV;
use vswitch_e2e::{Lab, NetworkSpec, reaches, tcp_transfer, vswitch_lab};

/// A user and group no account uses.
const UID: u32 = 64_917;

/// An unprivileged `vswitchd` on the lab's host 0; killed on drop.
struct Daemon(Child);

impl Daemon {
    fn start(lab: &Lab, env: Option<(&str, &str)>) -> Daemon {
        let host = &lab.hosts[0];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&host.log)
            .expect("opening the log");
        let mut command = host.ns.command("setpriv");
        command
            .arg(format!("--reuid={UID}"))
            .arg(format!("--regid={UID}"))
            .args([
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ])
            .arg(vswitch::lab::vswitchd_path())
            .arg("--config")
            .arg(&host.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log"))
            .stderr(log);
        if let Some((name, value)) = env {
            command.env(name, value);
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
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.0.id()))
            .expect("reading the daemon's status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
        assert!(field("Uid:").starts_with(&UID.to_string()), "{status}");
        daemon
    }

    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A container namespace of the test's own; deleted on drop.
struct Container {
    name: String,
    ns: NetNs,
}

impl Container {
    fn new(lab: &Lab, suffix: &str) -> Container {
        let id = lab
            .dir()
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vswitch-lab-"))
            .expect("the lab's name")
            .to_owned();
        let name = format!("{id}-{suffix}");
        let _ = NetNs::delete(&name);
        let ns = NetNs::create(&name).expect("creating the namespace");
        Container { name, ns }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = NetNs::delete(&self.name);
    }
}

/// Runs `vswitch` (as root, as the helper) against `socket`: exit status, stdout, stderr.
fn vswitch(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let exe = vswitch::lab::vswitchd_path().with_file_name("vswitch");
    let out = Command::new(&exe)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Attaches `c` with the helper; its address.
fn attach(socket: &Path, c: &Container) -> std::net::Ipv4Addr {
    let (status, out, err) = vswitch(
        socket,
        &["attach", &c.name, "--helper", "--json", "--id", &c.name],
    );
    assert_eq!(status, 0, "{err}");
    let a: api::Attachment = serde_json::from_str(&out).expect("the attachment as JSON");
    match a.address.addr() {
        std::net::IpAddr::V4(v4) => v4,
        other => panic!("an IPv4 address expected, got {other}"),
    }
}

/// An unprivileged daemon's lab: host 0's files belong to the daemon's user.
fn lab(tag: &str) -> Lab {
    let mut lab = vswitch_lab(tag, 1, &[NetworkSpec::DEFAULT], "");
    lab.stop_vswitchd(0, false)
        .expect("stopping the root daemon");
    give_to_daemon_user(&lab);
    lab
}

/// Gives the lab's files to the daemon's user.
fn give_to_daemon_user(lab: &Lab) {
    let owner = Some(nix::unistd::Uid::from_raw(UID));
    let group = Some(nix::unistd::Gid::from_raw(UID));
    let mut dirs = vec![lab.dir().to_owned()];
    while let Some(dir) = dirs.pop() {
        nix::unistd::chown(&dir, owner, group).expect("chown");
        for entry in std::fs::read_dir(&dir).expect("listing the lab") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                nix::unistd::chown(&path, owner, group).expect("chown");
            }
        }
    }
}

fn ports(socket: &Path) -> Vec<api::PortView> {
    match api::call(socket, &Request::Ports).expect("listing ports") {
        Reply::Ports(ports) => ports,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn an_unprivileged_daemon_switches_for_the_helper_and_survives_its_restart() {
    let lab = lab("unp");
    let socket = lab.hosts[0].socket.clone();
    let daemon = Daemon::start(&lab, None);
    let a = Container::new(&lab, "a");
    let b = Container::new(&lab, "b");
    let ip_a = attach(&socket, &a);
    let ip_b = attach(&socket, &b);
    assert!(reaches(&a.ns, ip_b), "a cannot reach b");
    tcp_transfer(&a.ns, &b.ns, ip_b, 256 * 1024);
    // Attaching again changes nothing.
    assert_eq!(attach(&socket, &a), ip_a);
    assert_eq!(ports(&socket).len(), 2);

    // Killed, not stopped: it takes its queues back from the keeper all the same.
    drop(daemon);
    let daemon = Daemon::start(&lab, None);
    assert_eq!(ports(&socket).len(), 2, "the ports were not re-adopted");
    assert!(reaches(&b.ns, ip_a), "b cannot reach a after the restart");
    tcp_transfer(&b.ns, &a.ns, ip_a, 256 * 1024);
    // A helper that sends again finds the port plugged.
    assert_eq!(attach(&socket, &b), ip_b);

    // Without the keeper, a restarted daemon waits for the helper to send the queues again.
    daemon.stop();
    let keeper = lab
        .dir()
        .join(&lab.hosts[0].name)
        .join("state")
        .join("keeper.sock");
    std::fs::remove_file(&keeper).expect("removing the keeper's socket");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::os::unix::net::UnixStream::connect(&keeper).is_ok() {
        assert!(Instant::now() < deadline, "the keeper did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let daemon = Daemon::start(&lab, None);
    assert!(ports(&socket).is_empty());
    assert_eq!(attach(&socket, &a), ip_a);
    assert_eq!(attach(&socket, &b), ip_b);
    assert_eq!(ports(&socket).len(), 2);
    assert!(
        reaches(&a.ns, ip_b),
        "a cannot reach b after the helper sent again"
    );

    for c in [&a, &b] {
        let (status, _, err) = vswitch(&socket, &["detach", &c.name, "--helper"]);
        assert_eq!(status, 0, "{err}");
        let inside = Netlink::in_namespace(&c.ns).expect("netlink in the container");
        assert_eq!(inside.link_index("eth0").expect("listing links"), None);
    }
    assert!(ports(&socket).is_empty());
    let list = lab
        .dir()
        .join(&lab.hosts[0].name)
        .join("state")
        .join("ports.json");
    let listed = std::fs::read_to_string(list).expect("reading the attachment list");
    assert!(
        !listed.contains(&a.name) && !listed.contains(&b.name),
        "{listed}"
    );
    drop(daemon);
}

#[test]
fn the_helper_takes_back_its_interface_when_the_plug_is_refused() {
    let lab = lab("unf");
    let socket = lab.hosts[0].socket.clone();
    let _daemon = Daemon::start(&lab, Some((FAIL_ATTACH_ENV, "plug")));
    let c = Container::new(&lab, "c");
    let (status, _, err) = vswitch(&socket, &["attach", &c.name, "--helper", "--id", &c.name]);
    assert_ne!(status, 0);
    assert!(err.contains("step plug"), "{err}");
    let inside = Netlink::in_namespace(&c.ns).expect("netlink in the container");
    let links: Vec<String> = inside
        .links()
        .expect("listing links")
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(links, ["lo"]);
    assert!(ports(&socket).is_empty());
    let list = lab
        .dir()
        .join(&lab.hosts[0].name)
        .join("state")
        .join("ports.json");
    let listed = std::fs::read_to_string(list).unwrap_or_default();
    assert!(!listed.contains(&c.name), "{listed}");
    // The address went back to the pool: the next attach gets it.
    drop(_daemon);
}

/// Runs `vswitch-cni` with `command` for container `c`: exit status and stdout.
fn cni(socket: &Path, command: &str, c: &Container) -> (i32, String) {
    use std::io::Write;
    let exe = vswitch::lab::vswitchd_path().with_file_name("vswitch-cni");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "default",
        "type": "vswitch-cni",
        "socket": socket,
    });
    let mut child = Command::new(&exe)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &c.name)
        .env("CNI_NETNS", format!("/run/netns/{}", c.name))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("writing the config");
    let out = child.wait_with_output().expect("waiting for the plugin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_cni_plugin_hands_the_queues_over_to_an_unprivileged_daemon() {
    let lab = lab("unc");
    let socket = lab.hosts[0].socket.clone();
    let _daemon = Daemon::start(&lab, None);
    let a = Container::new(&lab, "a");
    let b = Container::new(&lab, "b");
    let (status, out) = cni(&socket, "ADD", &a);
    assert_eq!(status, 0, "{out}");
    let result: serde_json::Value = serde_json::from_str(&out).expect("the CNI result");
    let address = result["ips"][0]["address"].as_str().expect("an address");
    assert!(address.starts_with("10.244.1."), "{result}");
    let ip_b = attach(&socket, &b);
    assert!(reaches(&a.ns, ip_b), "a cannot reach b");
    for _ in 0..2 {
        let (status, out) = cni(&socket, "DEL", &a);
        assert_eq!(status, 0, "{out}");
        let inside = Netlink::in_namespace(&a.ns).expect("netlink in the container");
        assert_eq!(inside.link_index("eth0").expect("listing links"), None);
    }
    let (status, _, err) = vswitch(&socket, &["detach", &b.name, "--helper"]);
    assert_eq!(status, 0, "{err}");
    assert!(ports(&socket).is_empty());
}

#[test]
fn a_helper_hands_over_a_port_the_daemon_made_when_it_ran_as_root() {
    let mut lab = vswitch_lab("unm", 1, &[NetworkSpec::DEFAULT], "");
    let c = lab
        .add_container(0, "default", None)
        .expect("attaching as root");
    let name = lab.containers[c].name.clone();
    lab.stop_vswitchd(0, false)
        .expect("stopping the root daemon");
    give_to_daemon_user(&lab);
    let socket = lab.hosts[0].socket.clone();
    let _daemon = Daemon::start(&lab, None);
    // It cannot re-open the TAP it made as root: the port waits.
    assert!(ports(&socket).is_empty());
    let (status, _, err) = vswitch(&socket, &["attach", &name, "--helper"]);
    assert_eq!(status, 0, "{err}");
    assert_eq!(ports(&socket).len(), 1);
    let gateway = std::net::Ipv4Addr::new(10, 244, 1, 1);
    assert!(
        reaches(&lab.containers[c].ns, gateway),
        "the gateway does not answer"
    );
    let (status, _, err) = vswitch(&socket, &["detach", &name, "--helper"]);
    assert_eq!(status, 0, "{err}");
    let inside = Netlink::in_namespace(&lab.containers[c].ns).expect("netlink in the container");
    assert_eq!(inside.link_index("eth0").expect("listing links"), None);
}
