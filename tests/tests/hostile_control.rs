//! The control plane against a hostile or unlucky host: namespace paths that are FIFOs, devices
//! or symlinks; the daemon's descriptors exhausted while it sweeps; a full disk while it
//! detaches; ten thousand idle metrics connections; a datapath worker that panics; clients
//! that are not allowed in, that send over-long lines or too many connections.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use vswitch::control::api::{AttachRequest, DetachRequest, Reply, Request, Response};
use vswitch_e2e::{Lab, NetworkSpec, vswitch_lab};

/// One request on a fresh connection, with a deadline: `Err` when no answer came in time.
fn ask(socket: &Path, request: &Request, within: Duration) -> Result<Response, String> {
    let stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(within))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(|e| e.to_string())?;
    read_response(&stream)
}

fn read_response(stream: &UnixStream) -> Result<Response, String> {
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(|e| format!("no answer: {e}"))?;
    serde_json::from_str(&reply).map_err(|e| format!("{e}: {reply:?}"))
}

fn error_of(response: Result<Response, String>) -> String {
    match response {
        Ok(Response::Error(e)) => e.message,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn attach(netns: &str) -> Request {
    Request::Attach(AttachRequest {
        netns: netns.to_owned(),
        ..Default::default()
    })
}

fn ports(lab: &Lab) -> Vec<String> {
    match lab.call(0, &Request::Ports).expect("vswitch ports") {
        Reply::Ports(ports) => ports
            .into_iter()
            .map(|p| p.attachment.container_id)
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// The descriptor number a process's next open would get.
fn lowest_free_fd(pid: u32) -> usize {
    let used: std::collections::BTreeSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("listing the daemon's descriptors")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap_or(0)
}

/// A `vswitchd` this test started itself, stopped when dropped (on panic too).
struct OwnDaemon(Child);

impl OwnDaemon {
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops the lab's daemon on host 0 and starts one with `command` (run in the host's network
/// namespace, its output appended to the host's log); returns once it answers.
fn restart_with(lab: &mut Lab, program: &str, args: &[&str], env: &[(&str, &str)]) -> OwnDaemon {
    lab.stop_vswitchd(0, false).expect("stopping vswitchd");
    let host = &lab.hosts[0];
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&host.log)
        .expect("log");
    let mut command = host.ns.command(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut daemon = OwnDaemon(command.spawn().expect("starting vswitchd"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while ask(&host.socket, &Request::Status, Duration::from_secs(2)).is_err() {
        if let Ok(Some(status)) = daemon.0.try_wait() {
            panic!(
                "vswitchd exited ({status}): {}",
                std::fs::read_to_string(&host.log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "vswitchd did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
}

fn vswitchd() -> String {
    vswitch::lab::vswitchd_path().display().to_string()
}

#[test]
fn fifo_device_and_symlink_namespace_paths_are_answered_at_once() {
    let lab = vswitch_lab("hf", 1, &[NetworkSpec::DEFAULT], "");
    let socket = lab.hosts[0].socket.clone();
    let fifo = lab.dir().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let link = lab.dir().join("link");
    std::os::unix::fs::symlink("/proc/self/ns/net", &link).unwrap();
    for (path, what) in [
        (fifo.as_path(), "FIFO"),
        (Path::new("/dev/zero"), "device"),
        (link.as_path(), "symbolic link"),
    ] {
        let netns = path.display().to_string();
        // Asked on one connection while another asks for the status: both answer promptly.
        let asking = {
            let socket = socket.clone();
            std::thread::spawn(move || ask(&socket, &attach(&netns), Duration::from_secs(5)))
        };
        std::thread::sleep(Duration::from_millis(100));
        let status = ask(&socket, &Request::Status, Duration::from_secs(5));
        assert!(
            matches!(status, Ok(Response::Ok(Reply::Status(_)))),
            "{status:?}"
        );
        let e = error_of(asking.join().unwrap());
        assert!(e.contains(what), "{what}: {e}");
    }
}

#[test]
fn exhausted_descriptors_during_the_sweep_detach_nothing() {
    let mut lab = vswitch_lab("hd", 1, &[NetworkSpec::DEFAULT], "");
    let c = lab.add_container(0, "default", None).unwrap();
    let name = lab.containers[c].name.clone();
    let pid = lab.hosts[0].daemon_pid().unwrap().to_string();
    let limit = |value: &str| {
        let out = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={value}")])
            .output()
            .expect("running prlimit");
        assert!(out.status.success(), "{out:?}");
    };
    let original = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let (soft, hard) = original
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| {
            let mut fields = l.split_whitespace().skip(3);
            Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
        })
        .expect("the daemon's open file limit");
    // Not one more descriptor for two sweeps (every 5 s); only the soft limit moves, so that
    // it can be put back.
    // A descriptor closed after the limit was set (a finished connection) would leave a hole
    // under it: set it again until none is left.
    let daemon = lab.hosts[0].daemon_pid().unwrap();
    let mut settled = false;
    for _ in 0..20 {
        let free = lowest_free_fd(daemon);
        limit(&format!("{free}:{hard}"));
        std::thread::sleep(Duration::from_millis(300));
        if lowest_free_fd(daemon) >= free {
            settled = true;
            break;
        }
    }
    assert!(settled, "the daemon's descriptors never settled");
    std::thread::sleep(Duration::from_secs(12));
    limit(&format!("{soft}:{hard}"));
    assert_eq!(ports(&lab), vec![name.clone()], "the port was detached");
    let nl = netns::Netlink::in_namespace(&lab.containers[c].ns).unwrap();
    assert!(nl.link_index("eth0").unwrap().is_some(), "eth0 was removed");
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    assert!(log.contains("cannot tell whether the namespace"), "{log}");
    // And once the namespace really goes, the sweep does detach it.
    netns::NetNs::delete(&name).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ports(&lab).is_empty() {
        assert!(Instant::now() < deadline, "the vanished container stayed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_full_disk_during_detach_changes_nothing_and_is_reported() {
    let mut lab = vswitch_lab("hs", 1, &[NetworkSpec::DEFAULT], "");
    let state = lab.dir().join("h0").join("state");
    let config = lab.hosts[0].config.display().to_string();
    // The state directory on a small tmpfs in a mount namespace of the daemon's own.
    let script = r#"mount -t tmpfs -o size=4m,mode=0700 tmpfs "$0" && exec "$1" --config "$2""#;
    let daemon = restart_with(
        &mut lab,
        "unshare",
        &[
            "--mount",
            "--propagation",
            "slave",
            "--",
            "sh",
            "-c",
            script,
            &state.display().to_string(),
            &vswitchd(),
            &config,
        ],
        &[],
    );
    let c = lab.add_container(0, "default", None).unwrap();
    let name = lab.containers[c].name.clone();
    let address = lab.containers[c].ip;
    let inside = PathBuf::from(format!("/proc/{}/root", daemon.0.id())).join(
        state
            .strip_prefix("/")
            .expect("an absolute state directory"),
    );
    assert!(inside.join("ports.json").exists(), "not the daemon's view");
    // Fill it up.
    let filler = inside.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 256 * 1024];
    let mut full = false;
    for _ in 0..64 {
        if file
            .write_all(&chunk)
            .and_then(|()| file.sync_all())
            .is_err()
        {
            full = true;
            break;
        }
    }
    assert!(full, "the tmpfs never filled");
    let detach = Request::Detach(DetachRequest {
        container_id: name.clone(),
        ifname: None,
    });
    let e = lab.call(0, &detach).unwrap_err().to_string();
    assert!(
        e.contains("No space left on device") && e.contains("nothing was changed"),
        "{e}"
    );
    // Record, port, interface and lease are all still there.
    assert_eq!(ports(&lab), vec![name.clone()]);
    let listed = std::fs::read_to_string(inside.join("ports.json")).unwrap();
    assert!(listed.contains(&name), "{listed}");
    let nl = netns::Netlink::in_namespace(&lab.containers[c].ns).unwrap();
    assert!(nl.link_index("eth0").unwrap().is_some(), "eth0 was removed");
    // An attach on the full disk fails as a whole: no port, no record, no lease left behind.
    let fresh_name = format!("{name}f");
    let fresh = netns::NetNs::create(&fresh_name).unwrap();
    let attach_fresh = attach(&fresh_name);
    let refused = lab
        .call(0, &attach_fresh)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    let after_refusal = ports(&lab);
    let listed_after = std::fs::read_to_string(inside.join("ports.json")).unwrap();
    drop(file);
    std::fs::remove_file(&filler).unwrap();
    let fresh_attached = lab.call(0, &attach_fresh);
    let fresh_link = netns::Netlink::in_namespace(&fresh)
        .unwrap()
        .link_index("eth0")
        .unwrap();
    drop(fresh);
    let _ = netns::NetNs::delete(&fresh_name);
    assert!(refused.contains("No space left on device"), "{refused}");
    assert_eq!(after_refusal, vec![name.clone()]);
    assert!(!listed_after.contains(&fresh_name), "{listed_after}");
    // With room again it attaches: nothing of the failed attempt stood in the way.
    assert!(
        matches!(fresh_attached, Ok(Reply::Attached(_))),
        "{fresh_attached:?}"
    );
    assert!(fresh_link.is_some());
    // The address is still leased: another container cannot have it.
    let other_name = format!("{name}t");
    let other = netns::NetNs::create(&other_name).unwrap();
    let same_address = Request::Attach(AttachRequest {
        netns: other_name.clone(),
        ip: Some(address.into()),
        ..Default::default()
    });
    let taken = lab
        .call(0, &same_address)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    // With room again the same detach goes through, and the address is free.
    let detached = lab.call(0, &detach);
    let again = lab.call(0, &same_address);
    drop(other);
    let _ = netns::NetNs::delete(&other_name);
    assert!(taken.contains(&address.to_string()), "{taken}");
    assert!(matches!(detached.unwrap(), Reply::Detached(true)));
    assert!(nl.link_index("eth0").unwrap().is_none());
    assert!(matches!(again.unwrap(), Reply::Attached(a) if a.address.addr() == address));
    drop(daemon);
}

#[test]
fn ten_thousand_idle_metrics_connections_leave_attach_answering() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let wanted = 12_000.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).unwrap();
    let mut lab = Lab::new("hm").unwrap();
    lab.add_host(vswitch_e2e::HostKind::Vswitch).unwrap();
    lab.start_vswitchd_with(
        0,
        &[NetworkSpec::DEFAULT],
        "metrics_address = \"127.0.0.1:9489\"",
        "",
    )
    .unwrap();
    let pid = lab.hosts[0].daemon_pid().unwrap();
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, 9489));
    let before = open_fds(pid);
    // Ten threads of a thousand each: a connection whose SYN met a full accept queue waits a
    // second for its retry, and the threads wait in parallel.
    let started = Instant::now();
    let idle: Vec<TcpStream> = std::thread::scope(|scope| {
        let ns = &lab.hosts[0].ns;
        let threads: Vec<_> = (0..10)
            .map(|_| {
                scope.spawn(move || {
                    ns.run(move || {
                        let mut idle = Vec::new();
                        for _ in 0..1_000 {
                            if started.elapsed() > Duration::from_secs(60) {
                                break;
                            }
                            let connected =
                                TcpStream::connect_timeout(&address, Duration::from_secs(3));
                            if let Ok(stream) = connected {
                                idle.push(stream);
                            }
                        }
                        idle
                    })
                    .expect("entering the host's namespace")
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("a connecting thread"))
            .collect()
    });
    assert!(idle.len() >= 9_000, "only {} connections", idle.len());
    // They cost the daemon a bounded number of descriptors, and attach still answers.
    let held = open_fds(pid);
    assert!(
        held < before + 200,
        "{held} descriptors open (from {before})"
    );
    let asked = Instant::now();
    let c = lab.add_container(0, "default", None).unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    drop(idle);
    // A scrape gets through once the idle ones have timed out.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let scraped = lab.hosts[0]
            .ns
            .run(move || -> std::io::Result<String> {
                let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
                let mut text = String::new();
                stream.read_to_string(&mut text)?;
                Ok(text)
            })
            .unwrap();
        match scraped {
            Ok(text) if text.starts_with("HTTP/1.1 200") => break text,
            _ => {}
        }
        assert!(Instant::now() < deadline, "no scrape answered");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.contains("vswitch_ports 1\n"), "{body}");
    assert!(body.contains(&lab.containers[c].name), "{body}");
}

#[test]
fn a_worker_panic_ends_the_daemon_with_a_failure() {
    let mut lab = vswitch_lab("hp", 1, &[NetworkSpec::DEFAULT], "");
    let c = lab.add_container(0, "default", None).unwrap();
    let config = lab.hosts[0].config.display().to_string();
    let mut daemon = restart_with(
        &mut lab,
        &vswitchd(),
        &["--config", &config],
        &[(vswitch::io::TEST_PANIC_ENV, "1000")],
    );
    let status = daemon
        .wait_exit(Duration::from_secs(15))
        .expect("vswitchd lived on after its worker panicked");
    assert!(!status.success(), "{status}");
    let log = std::fs::read_to_string(&lab.hosts[0].log).unwrap();
    assert!(log.contains("datapath worker 0 panicked"), "{log}");
    // A supervisor's restart re-adopts the container.
    lab.spawn_vswitchd(0).unwrap();
    assert_eq!(ports(&lab), vec![lab.containers[c].name.clone()]);
}

#[test]
fn the_control_socket_is_private_from_birth_and_checks_peer_credentials() {
    let mut lab = vswitch_lab("hc", 1, &[NetworkSpec::DEFAULT], "");
    let socket = lab.hosts[0].socket.clone();
    let pid = lab.hosts[0].daemon_pid().unwrap();
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Everything the daemon creates is born private: no window with a wider mode.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("Umask:\t0077"), "{status}");
    let state = lab.dir().join("h0").join("state");
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for file in ["ports.json", "ipam.redb"] {
        let mode = std::fs::metadata(state.join(file)).unwrap().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{file} is {mode:o}");
    }

    // With a control group: 0660, that group, and only its members (or root) get in.
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(65534))
        .unwrap()
        .expect("a group with gid 65534");
    lab.stop_vswitchd(0, false).unwrap();
    let config = std::fs::read_to_string(&lab.hosts[0].config).unwrap();
    let config = config.replacen(
        "[node]\n",
        &format!("[node]\ncontrol_group = \"{}\"\n", group.name),
        1,
    );
    std::fs::write(&lab.hosts[0].config, config).unwrap();
    lab.spawn_vswitchd(0).unwrap();
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 65534);
    // The CLI where an unprivileged user can run it.
    let cli = lab.dir().join("vswitch");
    std::fs::copy(
        vswitch::lab::vswitchd_path().with_file_name("vswitch"),
        &cli,
    )
    .unwrap();
    let as_user = |gid: &str, groups: &str| {
        Command::new("setpriv")
            .args(["--reuid", "12345", "--regid", gid])
            .args(groups.split_whitespace())
            .arg("--")
            .arg(&cli)
            .arg("--socket")
            .arg(&socket)
            .arg("status")
            .output()
            .expect("running setpriv")
    };
    // Allowed through the file's group permission, refused by the credential check: the
    // process's group is not the control group and the user is no member of it.
    let refused = as_user("12345", "--groups 65534");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("permission denied") && stderr.contains("control group"),
        "{stderr}"
    );
    // A process of the control group is served.
    let served = as_user("65534", "--clear-groups");
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );
}

#[test]
fn over_long_lines_and_too_many_connections_are_refused() {
    let lab = vswitch_lab("hl", 1, &[NetworkSpec::DEFAULT], "");
    let socket = lab.hosts[0].socket.clone();
    // A line past 1 MiB: refused with a reason, and the connection closed.
    let stream = UnixStream::connect(&socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = br#"{"op":"attach","netns":""#.to_vec();
    line.resize(1100 * 1024, b'x');
    // The daemon may close before reading it all: the write may fail, the answer may not.
    let _ = (&stream).write_all(&line);
    let e = error_of(read_response(&stream));
    assert!(e.contains("longer than 1048576 bytes"), "{e}");

    // 64 connections at once are served; the 65th is told why not.
    let held: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let extra = UnixStream::connect(&socket).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let e = error_of(read_response(&extra));
    assert!(e.contains("too many control connections"), "{e}");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !matches!(
        ask(&socket, &Request::Status, Duration::from_secs(2)),
        Ok(Response::Ok(_))
    ) {
        assert!(
            Instant::now() < deadline,
            "not served after the others left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
