//! A throwaway etcd server on loopback for tests and benches: unique ports, a temporary data
//! directory, killed on drop (on panic too).
//!
//! `/usr/bin/etcd` (Debian's `etcd-server`) must exist: its absence is a failure, not a skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ETCD: &str = "/usr/bin/etcd";

/// A running etcd; killed and its data removed when dropped.
pub struct EtcdServer {
    child: Child,
    /// Client URL, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts a single-member etcd and waits until it reports healthy.
    pub fn start() -> Self {
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: the etcd tests need a real server; install it with \
             `apt-get install etcd-server`"
        );
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(server) => return server,
                Err(e) => last = e,
            }
        }
        panic!("etcd did not start: {last}");
    }

    /// Runs `f` with a plain etcd client, on a runtime of its own.
    #[allow(dead_code)]
    pub fn with_client<T, Fut: std::future::Future<Output = T>>(
        &self,
        f: impl FnOnce(etcd_client::Client) -> Fut,
    ) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let client = etcd_client::Client::connect([self.endpoint.as_str()], None)
                .await
                .expect("etcd reachable");
            f(client).await
        })
    }

    /// The server's process id.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn try_start() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (client, peer) = (free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).map_err(|e| e.to_string())?;
        let child = Command::new(ETCD)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {ETCD}: {e}"))?;
        let mut server = EtcdServer {
            child,
            endpoint: client_url,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("etcd exited with {status}"));
            }
            if healthy(client) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("etcd did not become healthy within 20 s".into())
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}
