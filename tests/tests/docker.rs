//! `vswitch-docker` driven by a real Docker engine (Debian's `docker.io`): a `dockerd` of the
//! test's own (its own data and exec roots, API socket and pid file, no bridge, no iptables)
//! runs in a lab host namespace beside `vswitchd`, so its containers hang off that namespace
//! and nothing changes in the root one. Images are imported from the static busybox.
//!
//! The plugin socket is `/run/docker/plugins/NAME.sock` with a NAME unique to the run: that is
//! the driver's name for this engine, and no other engine or test uses it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use netns::Netlink;
use vswitch::control::api::{Reply, Request};
use vswitch::control::host_tap::Reservation;
use vswitch_e2e::{Lab, NetworkSpec, reaches, vswitch_lab};

const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
const COMPOSE: &str = "/usr/bin/docker-compose";
const BUSYBOX: &str = "/bin/busybox";
const IMAGE: &str = "vswitch-busybox:1";

const APP: NetworkSpec<'static> = NetworkSpec {
    name: "app",
    vni: 4242,
    subnet: Ipv4Addr::new(10, 245, 0, 0),
    sealed: false,
};

/// A process killed and reaped on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vswitch-docker` serving host `host`'s `vswitchd`, with `dockerd` in that host's namespace.
/// Dropping it removes every container, stops both and removes the plugin socket.
struct Docker {
    driver: String,
    plugin_socket: PathBuf,
    api: String,
    dir: PathBuf,
    plugin: Option<Process>,
    dockerd: Option<Process>,
    host_ns: netns::NetNs,
    control_socket: PathBuf,
}

/// Why the engine could not be had: the test is skipped, saying so.
struct Unavailable(String);

impl Docker {
    fn start(lab: &Lab, host: usize, tag: &str) -> Result<Self, Unavailable> {
        for binary in [DOCKER, DOCKERD, BUSYBOX] {
            assert!(
                Path::new(binary).exists(),
                "{binary} missing: run scripts/install-deps (docker.io, busybox-static)"
            );
        }
        let driver = format!("vswt{}{tag}", std::process::id());
        let dir = lab.dir().join(format!("docker-{tag}"));
        std::fs::create_dir_all(&dir).expect("creating the docker directory");
        let mut docker = Docker {
            plugin_socket: PathBuf::from(format!("/run/docker/plugins/{driver}.sock")),
            api: format!("unix://{}", dir.join("docker.sock").display()),
            driver,
            dir,
            plugin: None,
            dockerd: None,
            host_ns: lab.hosts[host].ns.clone(),
            control_socket: lab.hosts[host].socket.clone(),
        };
        docker.start_plugin();
        docker.start_dockerd()?;
        Ok(docker)
    }

    fn start_plugin(&mut self) {
        let binary = vswitch::lab::vswitchd_path().with_file_name("vswitch-docker");
        assert!(
            binary.exists(),
            "{} missing: cargo build --bins",
            binary.display()
        );
        let log = std::fs::File::create(self.dir.join("plugin.log")).expect("plugin log");
        let child = Command::new(binary)
            .arg("--socket")
            .arg(&self.control_socket)
            .arg("--plugin-socket")
            .arg(&self.plugin_socket)
            .arg("--state-dir")
            .arg(self.dir.join("plugin-state"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting vswitch-docker");
        self.plugin = Some(Process(child));
        wait_for(Duration::from_secs(10), "the plugin socket", || {
            self.plugin_socket.exists()
        });
    }

    fn start_dockerd(&mut self) -> Result<(), Unavailable> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .expect("dockerd log");
        let child = self
            .host_ns
            .command(DOCKERD)
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .arg("--host")
            .arg(&self.api)
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--live-restore",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        let mut dockerd = Process(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.docker(&["version"]).status.success() {
                break;
            }
            let exited = matches!(dockerd.0.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(Unavailable(format!(
                    "dockerd cannot run here ({}): {}",
                    if exited {
                        "it exited"
                    } else {
                        "it did not answer"
                    },
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.dockerd = Some(dockerd);
        Ok(())
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .arg("-H")
            .arg(&self.api)
            .args(args)
            .output()
            .expect("running docker")
    }

    /// Runs docker and returns its stdout; panics with its stderr when it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}\nplugin log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("plugin.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs docker, expects it to fail, and returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(!out.status.success(), "docker {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn import_busybox(&self) {
        let root = self.dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).expect("rootfs");
        std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copying busybox");
        for applet in ["sh", "ping", "ip", "sleep", "cat"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
                .expect("busybox applet link");
        }
        let tar = self.dir.join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("running tar");
        assert!(status.success(), "tar failed");
        self.ok(&["import", &tar.to_string_lossy(), IMAGE]);
    }

    /// The address of container `name` on network `network`.
    fn address(&self, name: &str, network: &str) -> Ipv4Addr {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        let text = self.ok(&["inspect", "-f", &format, name]);
        text.parse()
            .unwrap_or_else(|_| panic!("{name} has no address on {network}: {text:?}"))
    }

    fn pings(&self, from: &str, to: Ipv4Addr) -> bool {
        let to = to.to_string();
        (0..5).any(|_| {
            self.docker(&["exec", from, "ping", "-c", "1", "-W", "1", &to])
                .status
                .success()
        })
    }

    /// Stops dockerd (its containers keep running: live restore) and starts it again.
    fn restart_dockerd(&mut self) {
        drop(self.dockerd.take());
        if let Err(Unavailable(why)) = self.start_dockerd() {
            panic!("dockerd did not come back: {why}");
        }
    }

    fn reservations(&self) -> Vec<Reservation> {
        match vswitch::control::api::call(&self.control_socket, &Request::Reservations) {
            Ok(Reply::Reservations(list)) => list,
            other => panic!("listing reservations: {other:?}"),
        }
    }

    /// The links of the host namespace that are endpoint TAPs.
    fn host_taps(&self) -> Vec<String> {
        Netlink::in_namespace(&self.host_ns)
            .and_then(|nl| nl.links())
            .expect("listing links")
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n.starts_with("vsw"))
            .collect()
    }

    fn network_map(&self) -> String {
        std::fs::read_to_string(self.dir.join("plugin-state/networks.json")).unwrap_or_default()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        drop(self.dockerd.take());
        drop(self.plugin.take());
        let _ = std::fs::remove_file(&self.plugin_socket);
        // dockerd bind-mounts its data root on itself, and a dockerd stopped under running
        // containers leaves that mount behind.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|point| Path::new(point).starts_with(&self.dir))
            .collect();
        mounts.sort_unstable_by(|a, b| b.cmp(a));
        for point in mounts {
            let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_or_skip(lab: &Lab, host: usize, tag: &str) -> Option<Docker> {
    match Docker::start(lab, host, tag) {
        Ok(docker) => Some(docker),
        Err(Unavailable(why)) => {
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

/// Two containers on a vswitch network reach each other and a container attached by
/// `vswitch attach` behind the other host's vswitchd; both daemons restart under them; removal
/// leaves no TAP, reservation or network behind; and Docker's errors say what is wrong.
#[test]
fn docker_containers_share_a_network_across_hosts() {
    let mut lab = vswitch_lab("dk", 2, &[APP], "");
    let remote = lab
        .add_container(1, "app", None)
        .expect("attaching a container on the second host");
    let remote_ip = lab.containers[remote].ip;
    let Some(mut docker) = start_or_skip(&lab, 0, "a") else {
        return;
    };
    docker.import_busybox();
    let driver = docker.driver.clone();

    let refused = docker.fails(&[
        "network",
        "create",
        "-d",
        &driver,
        "--ipam-driver",
        &driver,
        "--subnet",
        "10.245.0.0/16",
        "-o",
        "colour=red",
        "bad",
    ]);
    assert!(refused.contains("unknown option \"colour\""), "{refused}");
    let refused = docker.fails(&[
        "network",
        "create",
        "-d",
        &driver,
        "--ipam-driver",
        &driver,
        "--subnet",
        "10.99.0.0/16",
        "bad",
    ]);
    assert!(
        refused.contains("no vswitch network has subnet 10.99.0.0/16"),
        "{refused}"
    );
    assert!(
        docker.reservations().is_empty(),
        "a refused network left reservations"
    );

    docker.ok(&[
        "network",
        "create",
        "-d",
        &driver,
        "--ipam-driver",
        &driver,
        "--subnet",
        "10.245.0.0/16",
        "-o",
        "vswitch.vni=4242",
        "app",
    ]);
    for (name, ip) in [("alpha", None), ("beta", Some("10.245.1.77"))] {
        let mut args = vec!["run", "-d", "--name", name, "--network", "app"];
        if let Some(ip) = ip {
            args.extend(["--ip", ip]);
        }
        args.extend([IMAGE, "sleep", "600"]);
        docker.ok(&args);
    }
    let a = docker.address("alpha", "app");
    let b = docker.address("beta", "app");
    assert_eq!(b, Ipv4Addr::new(10, 245, 1, 77), "--ip was not honoured");
    assert!(
        docker.host_taps().is_empty(),
        "TAPs left in the host namespace"
    );
    let plugged = docker.reservations();
    assert_eq!(
        plugged.iter().filter(|r| r.tap.is_some()).count(),
        2,
        "{plugged:?}"
    );
    let listed = ports(&lab);
    assert!(
        listed.len() == 2 && listed.iter().all(|(_, tap)| tap.starts_with("vsw")),
        "{listed:?}"
    );
    let listed = Command::new(vswitch::lab::vswitchd_path().with_file_name("vswitch"))
        .arg("--socket")
        .arg(&docker.control_socket)
        .arg("reservations")
        .output()
        .expect("running vswitch reservations");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("10.245.1.77/16") && listed.contains("/netns/"),
        "{listed}"
    );
    let mtu = docker.ok(&["exec", "alpha", "cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu, plugged[0].mtu.to_string());

    let check = |docker: &Docker, lab: &Lab, when: &str| {
        assert!(docker.pings("alpha", b), "alpha does not reach beta {when}");
        assert!(
            docker.pings("beta", remote_ip),
            "beta does not reach the remote container {when}"
        );
        assert!(
            reaches(&lab.containers[remote].ns, a),
            "the remote container does not reach alpha {when}"
        );
    };
    check(&docker, &lab, "at first");

    lab.stop_vswitchd(0, false).expect("stopping vswitchd");
    let refused = docker.fails(&["run", "--rm", "--network", "app", IMAGE, "true"]);
    assert!(refused.contains("vswitchd is not running"), "{refused}");
    lab.spawn_vswitchd(0).expect("restarting vswitchd");
    check(&docker, &lab, "after vswitchd restarted");

    docker.restart_dockerd();
    check(&docker, &lab, "after dockerd restarted");

    // Removed while vswitchd is down: Docker cannot tell it, the restarted daemon finds the
    // sandbox gone and releases the TAP Docker handed back and the address.
    lab.stop_vswitchd(0, false).expect("stopping vswitchd");
    docker.ok(&["rm", "-f", "alpha"]);
    lab.spawn_vswitchd(0).expect("restarting vswitchd");
    let left = docker.reservations();
    assert!(
        left.len() == 1 && left[0].address.addr() == std::net::IpAddr::V4(b),
        "{left:?}"
    );
    assert!(docker.host_taps().is_empty(), "{:?}", docker.host_taps());
    assert!(docker.pings("beta", remote_ip), "beta lost the network");

    docker.ok(&["stop", "-t", "0", "beta"]);
    docker.ok(&["rm", "beta"]);
    assert!(
        docker.reservations().is_empty(),
        "{:?}",
        docker.reservations()
    );
    assert!(docker.host_taps().is_empty(), "{:?}", docker.host_taps());
    docker.ok(&["network", "rm", "app"]);
    assert_eq!(docker.network_map().trim(), "{}");
    assert!(ports(&lab).is_empty(), "{:?}", ports(&lab));
}

/// The ports `vswitch ports` lists on the first host: container (endpoint) and interface.
fn ports(lab: &Lab) -> Vec<(String, String)> {
    match lab.call(0, &Request::Ports).expect("listing ports") {
        Reply::Ports(ports) => ports
            .into_iter()
            .map(|p| (p.attachment.container_id, p.attachment.ifname))
            .collect(),
        other => panic!("unexpected reply {other:?}"),
    }
}

/// A Compose file with `driver:` and `ipam: driver:` set to the plugin brings a two-service
/// stack up on the network, the services reach each other, and `down` leaves nothing behind.
#[test]
fn compose_brings_a_stack_up_and_down() {
    let lab = vswitch_lab("dkc", 1, &[APP], "");
    let Some(docker) = start_or_skip(&lab, 0, "c") else {
        return;
    };
    assert!(
        Path::new(COMPOSE).exists(),
        "{COMPOSE} missing: run scripts/install-deps (docker-compose)"
    );
    docker.import_busybox();
    let project = docker.dir.join("stack");
    std::fs::create_dir_all(&project).expect("project dir");
    let file = project.join("docker-compose.yml");
    std::fs::write(
        &file,
        format!(
            "version: \"2.4\"\nservices:\n  web:\n    image: {IMAGE}\n    command: sleep 600\n    \
             networks: [app]\n  client:\n    image: {IMAGE}\n    command: sleep 600\n    \
             networks: [app]\nnetworks:\n  app:\n    driver: {d}\n    ipam:\n      driver: {d}\n      \
             config:\n        - subnet: 10.245.0.0/16\n",
            d = docker.driver
        ),
    )
    .expect("writing the compose file");
    let compose = |args: &[&str]| {
        let out = Command::new(COMPOSE)
            .arg("-f")
            .arg(&file)
            .args(["-p", "stack"])
            .args(args)
            .env("DOCKER_HOST", &docker.api)
            .output()
            .expect("running docker-compose");
        assert!(
            out.status.success(),
            "docker-compose {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    compose(&["up", "-d"]);
    let web = docker.address("stack_web_1", "stack_app");
    assert!(
        docker.pings("stack_client_1", web),
        "client does not reach web"
    );
    assert_eq!(
        docker.reservations().len(),
        2,
        "{:?}",
        docker.reservations()
    );
    compose(&["down"]);
    assert!(
        docker.reservations().is_empty(),
        "{:?}",
        docker.reservations()
    );
    assert!(docker.host_taps().is_empty(), "{:?}", docker.host_taps());
    assert_eq!(docker.network_map().trim(), "{}");
}

/// The control requests behind the plugin, without Docker: a reservation is plugged as a TAP in
/// the daemon's namespace, unplugged and released; a TAP name that a device of someone else's
/// holds is refused and that device left alone; a full pool refuses the next reservation.
#[test]
fn reserved_taps_are_made_and_removed_in_the_daemons_namespace() {
    use vswitch::control::api::{ClientError, ErrorKind};
    use vswitch::control::host_tap::{
        PlugTapRequest, ReserveRequest, UnplugTapRequest, UnreserveRequest,
    };
    let lab = vswitch_lab("dkr", 1, &[APP], "");
    let socket = &lab.hosts[0].socket;
    let host = Netlink::in_namespace(&lab.hosts[0].ns).expect("netlink");
    host.create_bridge("vswtaken")
        .expect("a device of someone else's");
    let call = |request: Request| vswitch::control::api::call(socket, &request);
    let Ok(Reply::Reserved(reserved)) = call(Request::Reserve(ReserveRequest {
        network: "app".into(),
        endpoint: Some("e1".into()),
        ..Default::default()
    })) else {
        panic!("reserving an address failed");
    };
    assert_eq!(reserved.mtu, 1450);
    let plug = |tap: &str| {
        call(Request::PlugTap(PlugTapRequest {
            endpoint: "e1".into(),
            tap: tap.into(),
            sandbox: "/nonexistent/sandbox".into(),
        }))
    };
    match plug("vswtaken") {
        Err(ClientError::Refused(e)) => assert_eq!(e.kind, ErrorKind::NameTaken, "{e}"),
        other => panic!("plugging over a foreign device: {other:?}"),
    }
    let taken = host
        .link_info("vswtaken")
        .expect("link")
        .expect("left alone");
    assert_eq!(taken.kind.as_deref(), Some("bridge"));

    let Ok(Reply::Reserved(plugged)) = plug("vswe1") else {
        panic!("plugging failed");
    };
    assert_eq!(plugged.tap.as_deref(), Some("vswe1"));
    let tap = host.link_info("vswe1").expect("link").expect("the TAP");
    assert_eq!(tap.kind.as_deref(), Some("tun"));
    assert_eq!(tap.mac, Some(reserved.mac.0));
    assert_eq!(tap.mtu, Some(1450));

    let unplugged = call(Request::UnplugTap(UnplugTapRequest {
        endpoint: "e1".into(),
    }));
    assert!(
        matches!(unplugged, Ok(Reply::Unplugged(true))),
        "{unplugged:?}"
    );
    assert!(host.link_info("vswe1").expect("link").is_none());
    let released = call(Request::Unreserve(UnreserveRequest {
        network: "app".into(),
        address: reserved.address.addr(),
    }));
    assert!(
        matches!(released, Ok(Reply::Unreserved(true))),
        "{released:?}"
    );
    assert!(matches!(call(Request::Reservations), Ok(Reply::Reservations(l)) if l.is_empty()));
    let _ = host.delete_link("vswtaken");

    // This node's /24 holds 253 endpoints besides the gateway; the next is refused, saying so.
    let reserve = || {
        call(Request::Reserve(ReserveRequest {
            network: "app".into(),
            ..Default::default()
        }))
    };
    for n in 0..253 {
        assert!(
            matches!(reserve(), Ok(Reply::Reserved(_))),
            "reservation {n} refused"
        );
    }
    match reserve() {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.kind, ErrorKind::AddressExhausted, "{e}");
            assert!(e.message.contains("is full"), "{e}");
        }
        other => panic!("a full pool gave {other:?}"),
    }
}
