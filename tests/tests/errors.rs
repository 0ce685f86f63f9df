//! Errors a person can act on: `vswitch` against a real daemon, each mistake answered with what
//! is wrong, what to do, and its own exit status (README, "Exit status").

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vswitch_e2e::{NetworkSpec, vswitch_lab};

/// Runs `vswitch --socket SOCKET ARGS...`; returns the exit status and stderr.
fn vswitch(socket: &Path, args: &[&str]) -> (i32, String) {
    let exe = vswitch::lab::vswitchd_path().with_file_name("vswitch");
    let out = Command::new(&exe)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_mistake_says_what_to_do_with_its_own_exit_status() {
    let blue = NetworkSpec {
        name: "blue",
        vni: 43,
        subnet: std::net::Ipv4Addr::new(10, 245, 0, 0),
        sealed: false,
    };
    let mut lab = vswitch_lab("err", 1, &[NetworkSpec::DEFAULT, blue], "");
    let socket = lab.hosts[0].socket.clone();
    let c = lab.add_container(0, "default", None).unwrap();
    let name = lab.containers[c].name.clone();
    let taken = lab.containers[c].ip.to_string();

    let expect = |args: &[&str], code: i32, words: &[&str]| {
        let (status, stderr) = vswitch(&socket, args);
        assert_eq!(status, code, "{args:?}: {stderr}");
        for word in words {
            assert!(stderr.contains(word), "{args:?}: {word:?} not in {stderr}");
        }
    };
    expect(
        &["attach", &name, "--network", "red", "--ifname", "eth1"],
        5,
        &["no network is named \"red\"", "blue, default"],
    );
    expect(
        &["attach", "vswitch-no-such-ns"],
        6,
        &["no network namespace is named", "ip netns add"],
    );
    expect(
        &["attach", "pid:4000000"],
        6,
        &["no process 4000000", "PID of a process"],
    );
    expect(
        &["attach", "/run/netns/vswitch-no-such-ns"],
        6,
        &[
            "no network namespace at /run/netns/vswitch-no-such-ns",
            "check the path",
        ],
    );
    expect(
        &[
            "attach", &name, "--ifname", "eth1", "--id", "other", "--ip", &taken,
        ],
        8,
        &["already leased", &taken],
    );
    expect(
        &["attach", &name, "--network", "blue"],
        9,
        &["already attached to network \"default\"", "vswitch detach"],
    );
    // An interface of the container's own, not ours, under the name asked for.
    let nl = netns::Netlink::in_namespace(&lab.containers[c].ns).unwrap();
    nl.create_veth("eth2", "peer2").unwrap();
    expect(
        &["attach", &name, "--ifname", "eth2", "--id", "x2"],
        10,
        &["eth2 already exists", "choose another --ifname"],
    );
    // The refusal left the container's own device alone.
    let eth2 = nl.link_info("eth2").unwrap().expect("eth2 is still there");
    assert_eq!(eth2.kind.as_deref(), Some("veth"));
    // Another container id on the interface this one holds: refused, naming the holder.
    expect(
        &["attach", &name, "--id", "x4"],
        10,
        &[
            "eth0 in",
            "is the interface of container",
            &name,
            "choose another --ifname",
        ],
    );
    expect(
        &["attach", &name, "--ifname", "a/b", "--id", "x3"],
        2,
        &["interface name", "--ifname"],
    );
    // The socket is root's: anyone else is told so, and what to do.
    let (status, stderr) = {
        let exe = vswitch::lab::vswitchd_path().with_file_name("vswitch");
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .arg("--socket")
            .arg(&socket)
            .arg("status")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(status, 4, "{stderr}");
    assert!(
        stderr.contains("permission denied") && stderr.contains("run as root"),
        "{stderr}"
    );

    lab.stop_vswitchd(0, false).unwrap();
    expect(&["status"], 3, &["vswitchd is not running", "--socket"]);
}

/// The `CapEff` line of a process's status: its effective capabilities.
fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("a CapEff line");
    u64::from_str_radix(line.trim(), 16).expect("hex")
}

#[test]
fn a_daemon_without_privileges_says_what_it_needs() {
    let mut lab = vswitch_lab("erp", 1, &[NetworkSpec::DEFAULT], "");
    let c = lab.add_container(0, "default", None).unwrap();
    let name = lab.containers[c].name.clone();
    lab.stop_vswitchd(0, false).unwrap();
    let host = &lab.hosts[0];
    // Root, but with every capability dropped.
    let mut child = host
        .ns
        .command("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(vswitch::lab::vswitchd_path())
        .arg("--config")
        .arg(&host.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let _daemon = Kill(&mut child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while vswitch::control::api::call(&host.socket, &vswitch::control::api::Request::Status)
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "vswitchd did not come up without capabilities"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(effective_caps(pid), 0);
    let (status, stderr) = vswitch(
        &host.socket,
        &["attach", &name, "--ifname", "eth1", "--id", "nocaps"],
    );
    assert_eq!(status, 4, "{stderr}");
    assert!(
        stderr.contains("CAP_NET_ADMIN") && stderr.contains("CAP_SYS_ADMIN"),
        "{stderr}"
    );
    // The container it could not re-open is kept, record and all.
    let list = lab.dir().join(&host.name).join("state").join("ports.json");
    let listed = std::fs::read_to_string(list).unwrap();
    assert!(
        listed.contains(&name) && !listed.contains("nocaps"),
        "{listed}"
    );
}
