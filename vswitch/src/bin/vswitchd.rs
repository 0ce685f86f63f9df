//! `vswitchd --config PATH`: the per-host daemon.
//!
//! The control plane runs on a small tokio runtime: the control socket, the metrics endpoint,
//! signals and the sweep. Everything it serves is bounded, so a local user or a container
//! cannot starve it:
//!
//! - files are created under umask 077: the control socket is never, even for an instant,
//!   more open than 0600 (0660 with `node.control_group`), and state files are 0600;
//! - a control client must be root, the daemon's own user, or a member of
//!   `node.control_group` (checked with `SO_PEERCRED`); others get one error line;
//! - at most [`MAX_CONTROL_CONNECTIONS`] control connections at once, request lines of at most
//!   [`MAX_REQUEST_LINE`] bytes, and [`CONTROL_IDLE`] without a request closes a connection;
//! - metrics are served by hyper (HTTP/1, no keep-alive) to at most [`MAX_METRICS_CONNECTIONS`]
//!   connections at once, each with [`METRICS_DEADLINE`] to finish; extra connections are
//!   closed at once; a scrape reads published snapshots, nothing more;
//! - a datapath worker that panics or fails ends the daemon with a non-zero status, so that a
//!   supervisor restarts it and the restart re-adopts the containers.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tracing::{info, warn};
use vswitch::control::api::{ApiError, ErrorKind, Request, Response};
use vswitch::control::config::Config;
use vswitch::control::daemon::{Daemon, SWEEP_INTERVAL, resolve_underlay};
use vswitch::control::metrics;

/// Control connections served at once; more are refused with an error line.
const MAX_CONTROL_CONNECTIONS: usize = 64;
/// The longest request line taken: room for a policy set of some thousands of rules.
const MAX_REQUEST_LINE: usize = 1024 * 1024;
/// A control connection with no request for this long is closed.
const CONTROL_IDLE: Duration = Duration::from_secs(30);
/// Metrics connections served at once; more are closed at once.
const MAX_METRICS_CONNECTIONS: usize = 32;
/// Time a metrics client has for its request headers.
const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a metrics connection may last in all.
const METRICS_DEADLINE: Duration = Duration::from_secs(10);
/// Pause after a failed accept (descriptors exhausted): no busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Parser)]
#[command(
    version,
    about = "Userspace VXLAN switch for containers: the per-host daemon"
)]
struct Args {
    /// The TOML config file.
    #[arg(long, short)]
    config: PathBuf,
    /// Run as the queue keeper of the daemon of that config (the daemon starts it itself).
    #[arg(long, hide = true)]
    keep_queues: bool,
}

fn main() -> ExitCode {
    // Before any file or socket exists: nothing the daemon creates is open to group or others
    // unless it says so.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
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
    if args.keep_queues {
        let socket = vswitch::control::keeper::socket_path(&config.node.state_dir);
        return match vswitch::control::keeper::run(&socket) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vswitchd queue keeper: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let control_group = match resolve_group(&args.config, &config) {
        Ok(group) => group,
        Err(e) => {
            eprintln!("vswitchd: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args.config, config, control_group) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vswitchd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The gid of `node.control_group`, looked up at start.
fn resolve_group(path: &Path, config: &Config) -> anyhow::Result<Option<nix::unistd::Gid>> {
    let Some(name) = &config.node.control_group else {
        return Ok(None);
    };
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(Some(group.gid)),
        Ok(None) => anyhow::bail!(
            "config {}: node.control_group: no group is named {name:?}",
            path.display()
        ),
        Err(e) => anyhow::bail!(
            "config {}: node.control_group: looking up {name:?}: {e}",
            path.display()
        ),
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

fn run(
    config_path: &Path,
    config: Config,
    control_group: Option<nix::unistd::Gid>,
) -> anyhow::Result<()> {
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let socket_path = config.node.control_socket.clone();
    let metrics_address = config.node.metrics_address;
    let daemon = Daemon::start(config_path, config)?;
    let listener = runtime.block_on(async { bind_control_socket(&socket_path, control_group) })?;
    if let Some(address) = metrics_address {
        let metrics = runtime
            .block_on(tokio::net::TcpListener::bind(address))
            .with_context(|| format!("binding node.metrics_address {address}"))?;
        runtime.spawn(serve_metrics(Arc::clone(&daemon), metrics));
    }
    runtime.spawn(sweep(Arc::clone(&daemon)));
    let access = Access {
        own_uid: nix::unistd::geteuid().as_raw(),
        group: control_group,
    };
    let served = runtime.block_on(serve(Arc::clone(&daemon), listener, access));
    let _ = std::fs::remove_file(&socket_path);
    runtime.shutdown_timeout(Duration::from_secs(2));
    served?;
    daemon.shutdown()?;
    info!("stopped");
    Ok(())
}

/// Listens on the control socket. The socket file is born mode 0700 at most (umask 077), then
/// set to 0600, or to 0660 owned by `group`: never wider on the way. A socket file left by a
/// previous run is replaced; one that answers belongs to a running daemon and is an error;
/// anything else at that path is left alone and is an error.
fn bind_control_socket(
    path: &Path,
    group: Option<nix::unistd::Gid>,
) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            if let Some(gid) = group {
                // Members must be able to reach the socket.
                nix::unistd::chown(dir, None, Some(gid))
                    .with_context(|| format!("giving {} to the control group", dir.display()))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
                    .with_context(|| format!("opening {} to the control group", dir.display()))?;
            }
        }
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "another vswitchd is listening on {}; stop it or choose another node.control_socket",
            path.display()
        );
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; remove it or choose another node.control_socket",
            path.display()
        ),
        Err(_) => {}
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let mode = match group {
        Some(gid) => {
            nix::unistd::chown(path, None, Some(gid))
                .with_context(|| format!("giving {} to the control group", path.display()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// Who may use the control socket.
#[derive(Clone, Copy)]
struct Access {
    own_uid: u32,
    group: Option<nix::unistd::Gid>,
}

impl Access {
    /// Whether a client with these credentials may send requests; `Err` says why not.
    fn check(&self, uid: u32, gid: u32) -> Result<(), String> {
        if uid == 0 || uid == self.own_uid {
            return Ok(());
        }
        let Some(group) = self.group else {
            return Err(format!(
                "permission denied: uid {uid} may not use the control socket (only root and \
                 the daemon's user; run as root, or set node.control_group and add the user \
                 to it)"
            ));
        };
        if gid == group.as_raw() || is_member(uid, group) {
            return Ok(());
        }
        Err(format!(
            "permission denied: uid {uid} is not in the control group (node.control_group, \
             gid {group}); add the user to that group, or run as root"
        ))
    }
}

/// Whether the user `uid` has `group` among its supplementary groups.
fn is_member(uid: u32, group: nix::unistd::Gid) -> bool {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return false;
    };
    matches!(
        nix::unistd::Group::from_gid(group),
        Ok(Some(g)) if g.mem.contains(&user.name)
    )
}

async fn serve(daemon: Arc<Daemon>, listener: UnixListener, access: Access) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut failed = daemon.datapath_failed();
    let slots = Arc::new(Semaphore::new(MAX_CONTROL_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        let daemon = Arc::clone(&daemon);
                        tokio::spawn(async move {
                            connection(daemon, stream, access).await;
                            drop(slot);
                        });
                    }
                    Err(_) => refuse(&stream, ApiError::new(ErrorKind::Unavailable, format!(
                        "too many control connections (at most {MAX_CONTROL_CONNECTIONS}); try again"
                    ))),
                },
                Err(e) => {
                    warn!("control socket: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = hangup.recv() => {
                let daemon = Arc::clone(&daemon);
                match off_runtime(move || daemon.reload_from_disk()).await {
                    Some(Ok(summary)) => info!(%summary, "SIGHUP: config reloaded"),
                    Some(Err(e)) => warn!("SIGHUP: config not reloaded: {e:#}"),
                    None => warn!("SIGHUP: the reload did not finish"),
                }
            }
            changed = failed.changed() => {
                let why = failed.borrow().clone();
                let why = match (changed, why) {
                    (_, Some(why)) => why,
                    (Err(_), None) => "the datapath stopped".to_owned(),
                    (Ok(()), None) => continue,
                };
                tracing::error!("{why}: exiting so that a supervisor restarts vswitchd");
                anyhow::bail!("{why}; exiting (a restart re-adopts the containers)");
            }
            _ = terminate.recv() => { info!("SIGTERM: shutting down"); return Ok(()); }
            _ = interrupt.recv() => { info!("SIGINT: shutting down"); return Ok(()); }
        }
    }
}

/// Every [`SWEEP_INTERVAL`], detaches containers that vanished (one sweep at a time).
async fn sweep(daemon: Arc<Daemon>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let daemon = Arc::clone(&daemon);
        let _ = off_runtime(move || daemon.sweep()).await;
    }
}

/// Answers a client that will not be served with one error line, without waiting for it.
fn refuse(stream: &UnixStream, error: ApiError) {
    if let Ok(mut line) = serde_json::to_vec(&Response::Error(error)) {
        line.push(b'\n');
        let _ = stream.try_write(&line);
    }
}

/// One client: its credentials checked, then requests in, one JSON line each, replies out.
async fn connection(daemon: Arc<Daemon>, stream: UnixStream, access: Access) {
    let verdict = match stream.peer_cred() {
        Ok(cred) => access.check(cred.uid(), cred.gid()),
        Err(e) => Err(format!("permission denied: no peer credentials: {e}")),
    };
    if let Err(message) = verdict {
        warn!("control socket: {message}");
        refuse(&stream, ApiError::new(ErrorKind::PermissionDenied, message));
        // Let the client finish sending its request, so that it reads the answer rather than
        // a broken pipe; a little of it, for a little while.
        let mut sink = vec![0u8; 4096];
        let mut stream = stream;
        let drain = async {
            for _ in 0..16 {
                if matches!(stream.read(&mut sink).await, Ok(0) | Err(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        return;
    }
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        // One byte more than allowed tells an over-long line from one of exactly the limit.
        let limit = (MAX_REQUEST_LINE + 1) as u64;
        let mut bounded = (&mut reader).take(limit);
        let read = bounded.read_until(b'\n', &mut line);
        let n = match tokio::time::timeout(CONTROL_IDLE, read).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_REQUEST_LINE {
            let refusal = Response::Error(ApiError::new(
                ErrorKind::BadRequest,
                format!("request line longer than {MAX_REQUEST_LINE} bytes: refused"),
            ));
            let _ = reply(&mut write, &refusal).await;
            return;
        }
        let response = match serde_json::from_slice::<Request>(&line) {
            Ok(Request::HelperReserve(r)) => {
                if handoff(&daemon, r, &mut reader, &mut write).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(request) => {
                let daemon = Arc::clone(&daemon);
                off_runtime(move || daemon.handle(request))
                    .await
                    .unwrap_or_else(|| {
                        Response::Error(ApiError::new(
                            ErrorKind::Internal,
                            "internal error: the request was not finished (see the daemon's log)",
                        ))
                    })
            }
            Err(e) => Response::Error(ApiError::new(
                ErrorKind::BadRequest,
                format!("malformed request: {e}"),
            )),
        };
        if reply(&mut write, &response).await.is_err() {
            return;
        }
    }
}

/// An attach by a privileged helper (`vswitch::control::handoff`): the reservation is
/// answered, then the plug, with the TAP's queues, is read from the socket itself (the queues
/// travel as `SCM_RIGHTS` with its bytes). A plug that does not come in [`CONTROL_IDLE`], or
/// comes malformed, drops the reservation. `Err` when the connection is done with.
async fn handoff(
    daemon: &Arc<Daemon>,
    request: vswitch::control::handoff::ReserveRequest,
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> Result<(), ()> {
    use std::os::fd::AsFd;
    let reserved = {
        let daemon = Arc::clone(daemon);
        off_runtime(move || daemon.reserve_for_helper(request)).await
    };
    let reservation = match reserved {
        Some(Ok(reservation)) => reservation,
        Some(Err(e)) => return reply(write, &Response::Error(e)).await.map_err(drop),
        None => return Err(()),
    };
    let key = (
        reservation.attachment.container_id.clone(),
        reservation.attachment.ifname.clone(),
    );
    let send_queues = reservation.send_queues;
    let answer = Response::Ok(vswitch::control::api::Reply::HelperReserved(reservation));
    let answered = reply(write, &answer).await;
    if !send_queues {
        return answered.map_err(drop);
    }
    let abandon = |daemon: &Arc<Daemon>| {
        let daemon = Arc::clone(daemon);
        let key = key.clone();
        off_runtime(move || daemon.abandon(&key))
    };
    // The helper sends nothing before the answer: nothing of the plug can be buffered.
    if answered.is_err() || !reader.buffer().is_empty() {
        abandon(daemon).await;
        return Err(());
    }
    let socket = reader.get_ref().as_ref();
    let mut buf = vec![0u8; MAX_REQUEST_LINE];
    let received = tokio::time::timeout(CONTROL_IDLE, async {
        loop {
            socket.readable().await?;
            let got = socket.try_io(tokio::io::Interest::READABLE, || {
                netns::recv_with_fds(socket.as_fd(), &mut buf, netns::MAX_FDS).map_err(|e| {
                    e.errno().map_or_else(
                        || std::io::Error::other(e.to_string()),
                        std::io::Error::from_raw_os_error,
                    )
                })
            });
            match got {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    })
    .await;
    let (n, fds) = match received {
        Ok(Ok((n, fds))) if n > 0 => (n, fds),
        _ => {
            abandon(daemon).await;
            return Err(());
        }
    };
    let line = buf.get(..n).unwrap_or_default();
    let plug = match serde_json::from_slice::<Request>(line) {
        Ok(Request::Plug(plug)) if line.ends_with(b"\n") => plug,
        _ => {
            abandon(daemon).await;
            let refusal = Response::Error(ApiError::new(
                ErrorKind::BadRequest,
                "after reserve, a plug request with the queues was expected",
            ));
            let _ = reply(write, &refusal).await;
            return Err(());
        }
    };
    let plugged = {
        let daemon = Arc::clone(daemon);
        let key = key.clone();
        off_runtime(move || daemon.plug_handed(&key, plug, fds)).await
    };
    let Some(response) = plugged else {
        abandon(daemon).await;
        return Err(());
    };
    reply(write, &response).await.map_err(drop)
}

/// Runs blocking control-plane work (netlink, the address store) on a plain thread, outside the
/// runtime (netlink refuses to block a runtime's thread), and awaits its result; `None` if the
/// work panicked. Changes are made one at a time and at most [`MAX_CONTROL_CONNECTIONS`]
/// connections wait for one, so these threads are few.
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

async fn reply(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(response)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await
}

/// Answers Prometheus scrapes with hyper: `GET /metrics` gets the counters, other paths 404,
/// other methods 405. One request per connection, a bounded number of connections.
async fn serve_metrics(daemon: Arc<Daemon>, listener: tokio::net::TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(false)
        .max_buf_size(8192)
        .timer(TokioTimer::new())
        .header_read_timeout(METRICS_HEADER_TIMEOUT);
    let http = Arc::new(http);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("metrics endpoint: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Over the cap: closed at once, costing nothing more.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let daemon = Arc::clone(&daemon);
        let http = Arc::clone(&http);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let daemon = Arc::clone(&daemon);
                async move { Ok::<_, std::convert::Infallible>(scrape(&daemon, &request)) }
            });
            let served = http.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(METRICS_DEADLINE, served).await;
            drop(slot);
        });
    }
}

fn scrape<B>(daemon: &Daemon, request: &hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    let (status, content_type, body) = if request.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics\n".to_owned(),
        )
    } else if request.method() != Method::GET {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_owned(),
        )
    } else {
        (
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            metrics::render(&daemon.metrics()),
        )
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
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

    #[test]
    fn only_root_the_daemons_user_and_the_group_get_in() {
        let alone = super::Access {
            own_uid: 500,
            group: None,
        };
        assert!(alone.check(0, 0).is_ok());
        assert!(alone.check(500, 500).is_ok());
        let e = alone.check(1000, 1000).unwrap_err();
        assert!(e.contains("permission denied") && e.contains("1000"), "{e}");
        let grouped = super::Access {
            own_uid: 0,
            group: Some(nix::unistd::Gid::from_raw(4242)),
        };
        assert!(grouped.check(1000, 4242).is_ok());
        let e = grouped.check(1000, 1000).unwrap_err();
        assert!(e.contains("control group"), "{e}");
    }
}
