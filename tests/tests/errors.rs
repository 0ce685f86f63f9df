//! Errors a person can act on: `vswitch` against a real daemon, each mistake answered with what
//! is wrong, what to do, and its own exit status (README, "Exit status").

use std::path::Path;
use std::process::Command;

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
