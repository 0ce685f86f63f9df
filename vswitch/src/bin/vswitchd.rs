//! `vswitchd --config PATH`: the per-host daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};
use vswitch::control::api::{Request, Response};
use vswitch::control::config::Config;
use vswitch::control::daemon::{Daemon, SWEEP_INTERVAL, resolve_underlay};

#[derive(Parser)]
#[command(
    version,
    about = "Userspace VXLAN switch for containers: the per-host daemon"
)]
struct Args {
    /// The TOML config file.
    #[arg(long, short)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::load(&args.config).and_then(|mut config| {
        resolve_underlay(&mut config, &args.config)?;
        Ok(config)
    }) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("vswitchd: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args.config, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vswitchd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit: every container's TAP holds one
/// descriptor per worker.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("raising the open file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("reading the open file limit: {e}"),
    }
}

fn run(config_path: &Path, config: Config) -> anyhow::Result<()> {
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let socket_path = config.node.control_socket.clone();
    let config_metrics = config.node.metrics_address;
    let daemon = Daemon::start(config_path, config)?;
    let metrics_address = config_metrics;
    let listener = runtime.block_on(async { bind_control_socket(&socket_path) })?;
    if let Some(address) = metrics_address {
        let metrics = runtime
            .block_on(tokio::net::TcpListener::bind(address))
            .with_context(|| format!("binding node.metrics_address {address}"))?;
        runtime.spawn(serve_metrics(Arc::clone(&daemon), metrics));
    }
    let served = runtime.block_on(serve(Arc::clone(&daemon), listener));
    let _ = std::fs::remove_file(&socket_path);
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    served?;
    daemon.shutdown()?;
    info!("stopped");
    Ok(())
}

/// Listens on the control socket, readable and writable by root only. A socket file left by a
/// previous run is replaced; one that answers belongs to a running daemon and is an error.
fn bind_control_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "another vswitchd is listening on {}; stop it or choose another node.control_socket",
            path.display()
        );
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

async fn serve(daemon: Arc<Daemon>, listener: UnixListener) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(Arc::clone(&daemon), stream));
                }
                Err(e) => warn!("control socket: {e}"),
            },
            _ = hangup.recv() => {
                let daemon = Arc::clone(&daemon);
                match off_runtime(move || daemon.reload_from_disk()).await {
                    Some(Ok(summary)) => info!(%summary, "SIGHUP: config reloaded"),
                    Some(Err(e)) => warn!("SIGHUP: config not reloaded: {e:#}"),
                    None => warn!("SIGHUP: the reload did not finish"),
                }
            }
            _ = sweep.tick() => {
                let daemon = Arc::clone(&daemon);
                let _ = off_runtime(move || daemon.sweep()).await;
            }
            _ = terminate.recv() => { info!("SIGTERM: shutting down"); return Ok(()); }
            _ = interrupt.recv() => { info!("SIGINT: shutting down"); return Ok(()); }
        }
    }
}

/// Answers Prometheus scrapes: `GET /metrics` gets the counters, anything else a 404.
async fn serve_metrics(daemon: Arc<Daemon>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let daemon = Arc::clone(&daemon);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut request = String::new();
            // A request line longer than this is not a scrape.
            let mut reader = BufReader::new(read.take(8192));
            let read_line = reader.read_line(&mut request);
            if tokio::time::timeout(std::time::Duration::from_secs(5), read_line)
                .await
                .is_err()
            {
                return;
            }
            let response = if request.starts_with("GET /metrics ") {
                match off_runtime(move || daemon.metrics()).await {
                    Some(Ok(body)) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    _ => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
                }
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = write.write_all(response.as_bytes()).await;
        });
    }
}

/// One client: requests in, one JSON line each, replies out.
async fn connection(daemon: Arc<Daemon>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                let daemon = Arc::clone(&daemon);
                off_runtime(move || daemon.handle(request))
                    .await
                    .unwrap_or_else(|| {
                        Response::Error("internal error: the request was not finished".into())
                    })
            }
            Err(e) => Response::Error(format!("malformed request: {e}")),
        };
        let Ok(mut bytes) = serde_json::to_vec(&response) else {
            return;
        };
        bytes.push(b'\n');
        if write.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

/// Runs blocking control-plane work (netlink, the address store) on a plain thread, outside the
/// runtime, and awaits its result. `None` if the work panicked.
async fn off_runtime<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let _ = done.send(work());
        })
        .ok()?;
    result.await.ok()
}

#[cfg(test)]
mod tests {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, hard / 2, hard).unwrap();
        super::raise_open_file_limit();
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }
}
