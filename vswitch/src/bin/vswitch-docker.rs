//! `vswitch-docker`: Docker's network and IPAM driver for vswitch. Serves libnetwork's plugin
//! protocol on `/run/docker/plugins/NAME.sock` (the socket's name is the driver's name) and
//! turns each call into requests on vswitchd's control socket.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tracing::info;
use vswitch::docker::driver::{Driver, SocketControl};
use vswitch::docker::server;

#[derive(Parser)]
#[command(
    name = "vswitch-docker",
    version,
    about = "Docker network and IPAM driver for vswitch"
)]
struct Args {
    /// vswitchd's control socket.
    #[arg(
        long,
        env = "VSWITCH_SOCKET",
        default_value = "/run/vswitch/vswitchd.sock"
    )]
    socket: PathBuf,
    /// Where Docker finds the plugin: `/run/docker/plugins/NAME.sock` makes driver NAME.
    #[arg(long, default_value = "/run/docker/plugins/vswitch.sock")]
    plugin_socket: PathBuf,
    /// Where the plugin keeps which vswitch network each Docker network is.
    #[arg(long, default_value = "/var/lib/vswitch-docker")]
    state_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let driver = Driver::open(SocketControl(args.socket.clone()), &args.state_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listener = server::bind(&args.plugin_socket)?;
        info!(
            plugin_socket = %args.plugin_socket.display(),
            control_socket = %args.socket.display(),
            "vswitch-docker ready"
        );
        let served = server::serve(Arc::new(driver), listener);
        tokio::select! {
            result = served => result,
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = terminate() => Ok(()),
        }
    })?;
    let _ = std::fs::remove_file(&args.plugin_socket);
    Ok(())
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
