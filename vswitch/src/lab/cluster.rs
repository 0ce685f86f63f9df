//! A throwaway cluster: namespaces standing in for hosts joined by a bridged veth underlay,
//! `vswitchd` running in some of them, Linux kernel VXLAN in others, containers on each.
//! Everything lives inside namespaces the lab created and is removed when the lab is dropped
//! (on panic too) or when [`Cleanup::run`] is called from a signal handler.

use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use netns::{NetNs, Netlink, VxlanSpec};

use crate::control::api::{self, AttachRequest, Attachment, Reply, Request};
use crate::wire::MacAddr;

/// Why a lab could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A namespace or link operation failed.
    #[error(transparent)]
    Netns(#[from] netns::Error),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A daemon did not come up or refused a request.
    #[error("{0}")]
    Daemon(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// The underlay subnet, from the range reserved for benchmarking (RFC 2544): it exists only
/// inside the lab's namespaces.
const UNDERLAY_PREFIX: [u8; 3] = [198, 18, 0];
/// UDP port of the kernel VXLAN baseline, so it can share a host with `vswitchd`.
pub const KERNEL_BASELINE_PORT: u16 = 4790;
/// VNI of the kernel VXLAN baseline.
pub const KERNEL_BASELINE_VNI: u32 = 4242;

/// What the lab must remove: daemons to stop and namespaces to delete. Shared with a signal
/// handler so that Ctrl-C cleans up too.
#[derive(Default)]
pub struct Cleanup {
    daemons: Vec<Child>,
    namespaces: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Cleanup {
    /// Stops every daemon, deletes every namespace and directory. Safe to call twice.
    pub fn run(&mut self) {
        for child in &mut self.daemons {
            stop_child(child);
        }
        self.daemons.clear();
        // Containers first, then hosts, then the underlay: links die with their namespace.
        for name in self.namespaces.drain(..).rev() {
            let _ = NetNs::delete(&name);
            // The resolv.conf vswitchd wrote for a named namespace.
            let _ = fs::remove_dir_all(Path::new("/etc/netns").join(&name));
        }
        for dir in self.dirs.drain(..) {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn stop_child(child: &mut Child) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A network every `vswitchd` host of the lab carries: its /16 is `subnet`, and host `i` hands
/// out addresses from its `i+1`th /24.
#[derive(Debug, Clone, Copy)]
pub struct NetworkSpec<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its VNI.
    pub vni: u32,
    /// The first address of its /16.
    pub subnet: Ipv4Addr,
    /// Sealed: frames cross the underlay only encrypted and authenticated.
    pub sealed: bool,
}

impl NetworkSpec<'static> {
    /// The default network: `default`, VNI 42, 10.244.0.0/16.
    pub const DEFAULT: NetworkSpec<'static> = NetworkSpec {
        name: "default",
        vni: 42,
        subnet: Ipv4Addr::new(10, 244, 0, 0),
        sealed: false,
    };
}

/// What runs in a host namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Our daemon.
    Vswitch,
    /// A Linux kernel `vxlan` device and bridge: the reference implementation as a peer.
    Kernel {
        /// Its VNI.
        vni: u32,
    },
}

/// A namespace standing in for a host.
pub struct Host {
    /// Its name within the lab (`h0`, `h1`, ...).
    pub name: String,
    /// Its namespace.
    pub ns: NetNs,
    /// Its underlay IPv4 address.
    pub address: Ipv4Addr,
    /// Its underlay IPv6 address.
    pub address6: Ipv6Addr,
    /// What runs there.
    pub kind: HostKind,
    /// Its `vswitchd` control socket.
    pub socket: PathBuf,
    /// Its `vswitchd` config file.
    pub config: PathBuf,
    /// Its `vswitchd` log.
    pub log: PathBuf,
    /// Its `vswitchd` private key file, for sealed networks.
    pub private_key: PathBuf,
    /// The public key that goes with it.
    pub public_key: String,
    index: usize,
    daemon_pid: Option<u32>,
}

impl Host {
    /// The process id of its `vswitchd`, while one runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon_pid
    }
}

/// A namespace standing in for a container.
pub struct Container {
    /// Its namespace name (as `ip netns` knows it).
    pub name: String,
    /// Its namespace.
    pub ns: NetNs,
    /// The host it runs on.
    pub host: usize,
    /// Its overlay address.
    pub ip: Ipv4Addr,
    /// Its interface's MAC.
    pub mac: MacAddr,
    /// How `vswitchd` attached it, for containers on `vswitchd` hosts.
    pub attachment: Option<Attachment>,
}

/// The cluster.
pub struct Lab {
    id: String,
    dir: PathBuf,
    underlay: NetNs,
    /// The hosts, in creation order.
    pub hosts: Vec<Host>,
    /// The containers, in creation order.
    pub containers: Vec<Container>,
    cleanup: Arc<Mutex<Cleanup>>,
    kernel_links: usize,
    /// Leave `node_subnet` out of the configs, so each daemon claims one from its store.
    pub claim_node_subnets: bool,
    /// Run VXLAN between `vswitchd` hosts over IPv6 (set before adding hosts).
    pub ipv6_underlay: bool,
    /// Name the underlay by interface (`node.interface = "eth0"`) rather than by address.
    pub underlay_by_interface: bool,
    /// TOML lines added to every `[[networks]]` table of the configs written from now on (for
    /// example `mtu = 1400`), so hosts may differ.
    pub network_extra: String,
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// An empty lab: a unique name and the underlay segment. `tag` (a few letters) makes its
    /// namespaces recognisable in `ip netns`.
    pub fn new(tag: &str) -> Result<Self, LabError> {
        let id = format!(
            "{tag}{}x{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("vswitch-lab-{id}"));
        let cleanup = Arc::new(Mutex::new(Cleanup::default()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        lock(&cleanup).dirs.push(dir.clone());
        let underlay_name = format!("{id}-u");
        let underlay = NetNs::create(&underlay_name)?;
        lock(&cleanup).namespaces.push(underlay_name);
        let nl = Netlink::in_namespace(&underlay)?;
        nl.set_up("lo")?;
        nl.create_bridge("br0")?;
        nl.set_up("br0")?;
        Ok(Self {
            id,
            dir,
            underlay,
            hosts: Vec::new(),
            containers: Vec::new(),
            cleanup,
            kernel_links: 0,
            claim_node_subnets: false,
            ipv6_underlay: false,
            underlay_by_interface: false,
            network_extra: String::new(),
        })
    }

    /// The handle a signal handler can use to clean up.
    pub fn cleanup_handle(&self) -> Arc<Mutex<Cleanup>> {
        Arc::clone(&self.cleanup)
    }

    /// The underlay segment's namespace (its bridge is `br0`).
    pub fn underlay(&self) -> &NetNs {
        &self.underlay
    }

    /// The directory holding configs, state and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn create_ns(&self, suffix: &str) -> Result<(String, NetNs), LabError> {
        let name = format!("{}-{suffix}", self.id);
        let ns = NetNs::create(&name)?;
        lock(&self.cleanup).namespaces.push(name.clone());
        Netlink::in_namespace(&ns)?.set_up("lo")?;
        Ok((name, ns))
    }

    /// Adds a host on the underlay; returns its index.
    pub fn add_host(&mut self, kind: HostKind) -> Result<usize, LabError> {
        let index = self.hosts.len();
        let name = format!("h{index}");
        let (_, ns) = self.create_ns(&name)?;
        let octet = u8::try_from(index + 1)
            .map_err(|_| LabError::Daemon("a lab holds at most 254 hosts".into()))?;
        let [a, b, c] = UNDERLAY_PREFIX;
        let address = Ipv4Addr::new(a, b, c, octet);
        let address6 = Ipv6Addr::new(0xfd00, 198, 18, 0, 0, 0, 0, u16::from(octet));
        let nl = Netlink::in_namespace(&ns)?;
        let outside = format!("u{index}");
        nl.create_veth("eth0", &outside)?;
        nl.move_to_namespace(&outside, &self.underlay)?;
        // The address is usable at once, without duplicate address detection.
        ns.run(|| fs::write("/proc/sys/net/ipv6/conf/eth0/accept_dad", "0"))?
            .map_err(io_err("turning off duplicate address detection"))?;
        nl.add_address("eth0", IpAddr::V4(address), 24)?;
        nl.add_address("eth0", IpAddr::V6(address6), 64)?;
        let under = Netlink::in_namespace(&self.underlay)?;
        if self.ipv6_underlay {
            // Room for VXLAN over IPv6 (70 bytes) around 1450-byte inner packets.
            nl.set_mtu("eth0", 1600)?;
            under.set_mtu(&outside, 1600)?;
        }
        nl.set_up("eth0")?;
        under.set_master(&outside, "br0")?;
        under.set_up(&outside)?;
        let host_dir = self.dir.join(&name);
        fs::create_dir_all(&host_dir)
            .map_err(io_err(format!("creating {}", host_dir.display())))?;
        if let HostKind::Kernel { vni } = kind {
            self.kernel_switch(
                &ns,
                address,
                vni,
                crate::control::config::DEFAULT_UDP_PORT,
                "br0",
                "vx0",
            )?;
        }
        let private_key = host_dir.join("private.key");
        let secret = crypto::StaticSecret::generate(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng(),
        );
        crate::control::sealing::write_private_key(&private_key, &secret).map_err(|e| {
            LabError::Io {
                what: format!("writing {}", private_key.display()),
                source: std::io::Error::other(format!("{e:#}")),
            }
        })?;
        self.hosts.push(Host {
            name,
            ns,
            address,
            address6,
            kind,
            socket: host_dir.join("vswitchd.sock"),
            config: host_dir.join("vswitchd.toml"),
            log: host_dir.join("vswitchd.log"),
            private_key,
            public_key: secret.public_key().to_string(),
            index,
            daemon_pid: None,
        });
        Ok(index)
    }

    /// A kernel bridge `bridge` with a VXLAN device `vxlan` in it, flooding to every other host.
    fn kernel_switch(
        &self,
        ns: &NetNs,
        local: Ipv4Addr,
        vni: u32,
        port: u16,
        bridge: &str,
        vxlan: &str,
    ) -> Result<(), LabError> {
        let nl = Netlink::in_namespace(ns)?;
        nl.create_bridge(bridge)?;
        let mut spec = VxlanSpec::new(vxlan, vni);
        spec.local = Some(IpAddr::V4(local));
        spec.port = port;
        spec.underlay = Some("eth0".into());
        spec.remote = self
            .hosts
            .iter()
            .map(|h| IpAddr::V4(h.address))
            .find(|&a| a != IpAddr::V4(local));
        nl.create_vxlan(&spec)?;
        nl.set_master(vxlan, bridge)?;
        nl.set_up(vxlan)?;
        nl.set_up(bridge)?;
        Ok(())
    }

    /// Writes a config for host `index` (every other host a peer, `networks` as given, `extra`
    /// appended verbatim) and starts `vswitchd` there; returns once it answers.
    pub fn start_vswitchd(
        &mut self,
        index: usize,
        networks: &[NetworkSpec<'_>],
        extra: &str,
    ) -> Result<(), LabError> {
        self.start_vswitchd_with(index, networks, "", extra)
    }

    /// [`Lab::start_vswitchd`] with `node_extra` added to the `[node]` table.
    pub fn start_vswitchd_with(
        &mut self,
        index: usize,
        networks: &[NetworkSpec<'_>],
        node_extra: &str,
        extra: &str,
    ) -> Result<(), LabError> {
        let host = &self.hosts[index];
        let underlay = if self.underlay_by_interface {
            "interface = \"eth0\"".to_owned()
        } else {
            format!("address = \"{}\"", self.underlay_address(host))
        };
        let mut config = format!(
            "[node]\nname = \"{}\"\n{underlay}\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\nprivate_key = \"{}\"\n{node_extra}\n\n",
            host.name,
            self.dir.join(&host.name).join("state").display(),
            host.socket.display(),
            host.private_key.display(),
        );
        for network in networks {
            let [a, b, _, _] = network.subnet.octets();
            let _ = write!(
                config,
                "[[networks]]\nname = \"{}\"\nvni = {}\nsubnet = \"{a}.{b}.0.0/16\"\nencryption = {}\n",
                network.name, network.vni, network.sealed,
            );
            if !self.claim_node_subnets {
                let _ = writeln!(config, "node_subnet = \"{a}.{b}.{}.0/24\"", index + 1);
            }
            let _ = writeln!(config, "{}", self.network_extra);
        }
        for peer in self.hosts.iter().filter(|h| h.index != index) {
            let _ = write!(
                config,
                "[[peers]]\nname = \"{}\"\naddress = \"{}\"\npublic_key = \"{}\"\n\n",
                peer.name,
                self.underlay_address(peer),
                peer.public_key,
            );
        }
        config.push_str(extra);
        fs::write(&host.config, &config)
            .map_err(io_err(format!("writing {}", host.config.display())))?;
        self.spawn_vswitchd(index)
    }

    /// The address `vswitchd` on `host` uses on the underlay.
    fn underlay_address(&self, host: &Host) -> IpAddr {
        if self.ipv6_underlay {
            IpAddr::V6(host.address6)
        } else {
            IpAddr::V4(host.address)
        }
    }

    /// Starts `vswitchd` on host `index` with the config already written there.
    pub fn spawn_vswitchd(&mut self, index: usize) -> Result<(), LabError> {
        let host = &self.hosts[index];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&host.log)
            .map_err(io_err(format!("opening {}", host.log.display())))?;
        let log2 = log.try_clone().map_err(io_err("duplicating the log"))?;
        let child = host
            .ns
            .command(vswitchd_path())
            .arg("--config")
            .arg(&host.config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_err(format!("starting {}", vswitchd_path().display())))?;
        let pid = child.id();
        lock(&self.cleanup).daemons.push(child);
        self.hosts[index].daemon_pid = Some(pid);
        self.wait_ready(index)
    }

    fn wait_ready(&self, index: usize) -> Result<(), LabError> {
        let host = &self.hosts[index];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if api::call(&host.socket, &Request::Status).is_ok() {
                return Ok(());
            }
            let exited = {
                let mut cleanup = lock(&self.cleanup);
                cleanup
                    .daemons
                    .iter_mut()
                    .find(|c| Some(c.id()) == host.daemon_pid)
                    .and_then(|c| c.try_wait().ok().flatten())
            };
            if exited.is_some() || Instant::now() > deadline {
                let log = fs::read_to_string(&host.log).unwrap_or_default();
                return Err(LabError::Daemon(format!(
                    "vswitchd on {} did not come up ({}); its log:\n{log}",
                    host.name,
                    exited.map_or("timed out".to_owned(), |s| s.to_string())
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stops `vswitchd` on host `index`: SIGTERM, or SIGKILL when `kill` is set.
    pub fn stop_vswitchd(
        &mut self,
        index: usize,
        kill: bool,
    ) -> Result<Option<std::process::ExitStatus>, LabError> {
        let Some(pid) = self.hosts[index].daemon_pid.take() else {
            return Ok(None);
        };
        let mut cleanup = lock(&self.cleanup);
        let Some(position) = cleanup.daemons.iter().position(|c| c.id() == pid) else {
            return Ok(None);
        };
        let mut child = cleanup.daemons.remove(position);
        drop(cleanup);
        if kill {
            let _ = child.kill();
            return child
                .wait()
                .map(Some)
                .map_err(io_err("waiting for vswitchd"));
        }
        stop_child(&mut child);
        child
            .wait()
            .map(Some)
            .map_err(io_err("waiting for vswitchd"))
    }

    /// A request to the daemon of host `index`.
    pub fn call(&self, index: usize, request: &Request) -> Result<Reply, LabError> {
        api::call(&self.hosts[index].socket, request).map_err(|e| LabError::Daemon(e.to_string()))
    }

    /// A new container on host `index`: on a `vswitchd` host attached to `network` through the
    /// daemon; on a kernel host joined to its bridge with address `ip` (required there).
    pub fn add_container(
        &mut self,
        host: usize,
        network: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<usize, LabError> {
        self.add_container_with(host, network, ip, None)
    }

    /// [`Lab::add_container`] with a fixed MAC.
    pub fn add_container_with(
        &mut self,
        host: usize,
        network: &str,
        ip: Option<Ipv4Addr>,
        mac: Option<MacAddr>,
    ) -> Result<usize, LabError> {
        let index = self.containers.len();
        let (name, ns) = self.create_ns(&format!("c{index}"))?;
        let container = match self.hosts[host].kind {
            HostKind::Vswitch => self.attach(
                host,
                name,
                ns,
                AttachRequest {
                    network: Some(network.to_owned()),
                    ip: ip.map(IpAddr::V4),
                    mac,
                    ..Default::default()
                },
            )?,
            HostKind::Kernel { .. } => {
                let ip = ip.ok_or_else(|| {
                    LabError::Daemon("a container on a kernel host needs an address".into())
                })?;
                let mac = mac.unwrap_or(crate::control::attach::mac_for(ip));
                let subnet = Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default();
                self.veth_container(
                    host,
                    &ns,
                    "br0",
                    IpNet::V4(Ipv4Net::new(ip, subnet.prefix_len()).unwrap_or_default()),
                    mac,
                )?;
                Container {
                    name,
                    ns,
                    host,
                    ip,
                    mac,
                    attachment: None,
                }
            }
        };
        self.containers.push(container);
        Ok(index)
    }

    /// A new container on `vswitchd` host `host`, attached with `request` (labels, a rate
    /// limit, ...); its `netns` is the container's new namespace.
    pub fn add_container_attached(
        &mut self,
        host: usize,
        request: AttachRequest,
    ) -> Result<usize, LabError> {
        let index = self.containers.len();
        let (name, ns) = self.create_ns(&format!("c{index}"))?;
        let container = self.attach(host, name, ns, request)?;
        self.containers.push(container);
        Ok(index)
    }

    fn attach(
        &self,
        host: usize,
        name: String,
        ns: NetNs,
        request: AttachRequest,
    ) -> Result<Container, LabError> {
        let reply = self.call(
            host,
            &Request::Attach(AttachRequest {
                netns: name.clone(),
                ..request
            }),
        )?;
        let Reply::Attached(attachment) = reply else {
            return Err(LabError::Daemon(format!("unexpected reply {reply:?}")));
        };
        let IpAddr::V4(ip) = attachment.address.addr() else {
            return Err(LabError::Daemon("attached without an IPv4 address".into()));
        };
        Ok(Container {
            name,
            ns,
            host,
            ip,
            mac: attachment.mac,
            attachment: Some(attachment),
        })
    }

    /// A veth from a container namespace into `bridge` on host `host`, addressed `address`.
    fn veth_container(
        &mut self,
        host: usize,
        ns: &NetNs,
        bridge: &str,
        address: IpNet,
        mac: MacAddr,
    ) -> Result<(), LabError> {
        let n = self.kernel_links;
        self.kernel_links += 1;
        let inside = format!("kc{n}");
        let outside = format!("kh{n}");
        let nl = Netlink::in_namespace(&self.hosts[host].ns)?;
        nl.create_veth(&inside, &outside)?;
        nl.set_mtu(&inside, 1450)?;
        nl.set_mtu(&outside, 1450)?;
        nl.move_to_namespace_as(&inside, ns, "eth0")?;
        nl.set_master(&outside, bridge)?;
        nl.set_up(&outside)?;
        let c = Netlink::in_namespace(ns)?;
        c.set_mac("eth0", mac.0)?;
        c.add_address("eth0", address.addr(), address.prefix_len())?;
        c.set_up("eth0")?;
        Ok(())
    }

    /// Adds the Linux kernel VXLAN + bridge baseline beside `vswitchd` on every `vswitchd` host
    /// (VNI [`KERNEL_BASELINE_VNI`], port [`KERNEL_BASELINE_PORT`]) with one container each,
    /// addressed 10.250.0.N/24. Returns the containers' indexes.
    pub fn add_kernel_baseline(&mut self) -> Result<Vec<usize>, LabError> {
        let mut containers = Vec::new();
        for host in 0..self.hosts.len() {
            let (ns, address) = (self.hosts[host].ns.clone(), self.hosts[host].address);
            self.kernel_switch(
                &ns,
                address,
                KERNEL_BASELINE_VNI,
                KERNEL_BASELINE_PORT,
                "kbr0",
                "kvx0",
            )?;
            let index = self.containers.len();
            let (name, cns) = self.create_ns(&format!("k{host}"))?;
            let octet = u8::try_from(host + 1).unwrap_or(254);
            let ip = Ipv4Addr::new(10, 250, 0, octet);
            let mac = MacAddr([0x0a, 0x59, 10, 250, 0, octet]);
            self.veth_container(
                host,
                &cns,
                "kbr0",
                IpNet::V4(Ipv4Net::new(ip, 24).unwrap_or_default()),
                mac,
            )?;
            self.containers.push(Container {
                name,
                ns: cns,
                host,
                ip,
                mac,
                attachment: None,
            });
            containers.push(index);
        }
        Ok(containers)
    }

    /// Removes everything now.
    pub fn teardown(&mut self) {
        lock(&self.cleanup).run();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn lock(cleanup: &Mutex<Cleanup>) -> std::sync::MutexGuard<'_, Cleanup> {
    cleanup
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the `vswitchd` binary is: `$VSWITCHD`, else beside this executable (or one level up,
/// for test binaries under `target/*/deps`).
pub fn vswitchd_path() -> PathBuf {
    if let Some(path) = std::env::var_os("VSWITCHD") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let beside = dir.join("vswitchd");
    if beside.exists() {
        return beside;
    }
    dir.parent().map(|d| d.join("vswitchd")).unwrap_or(beside)
}
