//! A real etcd for the lab's fleets (tests and the fleet benchmark), in the lab's underlay
//! namespace (reachable only from the lab's hosts), that can be stopped and started again on
//! the same data. Needs Debian's `etcd-server` (`scripts/install-deps`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{Lab, LabError};

const ETCD: &str = "/usr/bin/etcd";
/// Where etcd listens, on the underlay bridge.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

/// A running (or stopped) etcd; killed on drop.
pub struct Etcd {
    child: Option<Child>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Etcd {
    /// Addresses the underlay bridge and starts etcd there; returns once it accepts clients.
    pub fn start(lab: &Lab) -> Result<Etcd, LabError> {
        if !std::path::Path::new(ETCD).exists() {
            return Err(LabError::Daemon(format!(
                "{ETCD} is missing: scripts/install-deps installs etcd-server"
            )));
        }
        let nl = netns::Netlink::in_namespace(lab.underlay())?;
        nl.add_address("br0", IpAddr::V4(ETCD_IP), 24)?;
        let mut etcd = Etcd { child: None };
        etcd.resume(lab)?;
        Ok(etcd)
    }

    /// The `[store]` section that points a daemon at it, with fleet keys under `prefix`.
    pub fn store_config(prefix: &str) -> String {
        format!(
            "[store]\nkind = \"etcd\"\nendpoints = [\"http://{ETCD_IP}:2379\"]\nprefix = \"{prefix}\"\n"
        )
    }

    /// Kills it (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same data; returns once it accepts clients.
    pub fn resume(&mut self, lab: &Lab) -> Result<(), LabError> {
        let client = format!("http://{ETCD_IP}:2379");
        let peer = format!("http://{ETCD_IP}:2380");
        let child = lab
            .underlay()
            .command(ETCD)
            .arg("--data-dir")
            .arg(lab.dir().join("etcd"))
            .args(["--name", "lab", "--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("lab={peer}")])
            // Compaction keeps the history of a long-running fleet (a benchmark) small.
            .args(["--auto-compaction-mode", "revision"])
            .args(["--auto-compaction-retention", "1000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| LabError::Io {
                what: "starting etcd".into(),
                source,
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let Some(host) = lab.hosts.first() else {
            return Err(LabError::Daemon(
                "etcd needs a host to be reached from".into(),
            ));
        };
        loop {
            let reached = host.ns.run(|| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((ETCD_IP, 2379)),
                    Duration::from_millis(200),
                )
            })?;
            if reached.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Daemon("etcd did not start within 20 s".into()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
