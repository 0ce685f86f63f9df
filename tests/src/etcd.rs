//! A real etcd for fleet tests, in the lab's underlay namespace (reachable only from the lab's
//! hosts), that a test can stop and start again on the same data.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use vswitch::lab::Lab;

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
    pub fn start(lab: &Lab) -> Etcd {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} is missing: scripts/install-deps installs etcd-server"
        );
        let nl = netns::Netlink::in_namespace(lab.underlay()).expect("netlink in the underlay");
        nl.add_address("br0", IpAddr::V4(ETCD_IP), 24)
            .expect("addressing the underlay bridge");
        let mut etcd = Etcd { child: None };
        etcd.resume(lab);
        etcd
    }

    /// The `[store]` section that points a daemon at it.
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
    pub fn resume(&mut self, lab: &Lab) {
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let host = &lab.hosts[0].ns;
        while host
            .run(|| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((ETCD_IP, 2379)),
                    Duration::from_millis(200),
                )
            })
            .expect("entering a host namespace")
            .is_err()
        {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
