//! `vswitch`: attach containers, inspect the daemon, and run the demo.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use vswitch::control::api::{
    self, AttachRequest, ClientError, DetachRequest, ErrorKind, Reply, Request,
};
use vswitch::control::gateway::PortMapping;
use vswitch::control::handoff;
use vswitch::control::policy::{ExplainRequest, PolicyApply, PolicyDelete, QosRequest};
use vswitch::control::render;
use vswitch::control::sealing;
use vswitch::policy::BitRate;
use vswitch::wire::MacAddr;

#[derive(Parser)]
#[command(
    version,
    about = "Userspace VXLAN switch for containers: control and demo"
)]
struct Cli {
    /// The daemon's control socket.
    #[arg(
        long,
        global = true,
        env = "VSWITCH_SOCKET",
        default_value = "/run/vswitch/vswitchd.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Put a container on a network: a TAP inside its namespace with an address, a default
    /// route and a MAC.
    Attach(AttachArgs),
    /// Take a container off its network: remove the interface and release the address. Safe to
    /// repeat.
    Detach(DetachArgs),
    /// The node, its networks, traffic and drops.
    Status(Output),
    /// Attached containers and their traffic.
    Ports(Output),
    /// The MAC tables.
    Fdb(Output),
    /// The peers and their traffic.
    Peers(Output),
    /// Addresses reserved for Docker endpoints, and their TAPs.
    Reservations(Output),
    /// Make the daemon re-read its config file and apply added or removed networks and peers
    /// (as SIGHUP does).
    Reload,
    /// Build a throwaway two-host cluster in namespaces on this machine, show it working, measure
    /// it against the kernel's VXLAN, and remove everything.
    Demo(vswitch::demo::DemoOptions),
    /// Make this node's key pair for sealed networks: write the private key to FILE (mode 0600,
    /// never over an existing file) and print the public key for the peers' configs. With
    /// --psk, write a new pre-shared key for a sealed network to FILE instead, printing nothing.
    Keygen {
        /// Where to write the key: `node.private_key` (default /etc/vswitch/private.key), or
        /// with --psk a network's `psk_file`.
        file: Option<std::path::PathBuf>,
        /// Write a pre-shared key (copy the file to every node of the network).
        #[arg(long, requires = "file")]
        psk: bool,
    },
    /// This node itself.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Network policies: apply, list, delete, explain.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Set the rate limit of an attached container's port; without --rate, remove it.
    Qos(QosArgs),
    /// Print the public key that goes with a private key file.
    Pubkey {
        /// The private key file.
        #[arg(default_value = "/etc/vswitch/private.key")]
        file: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Remove, in this namespace, every nftables rule and interface vswitchd makes (the table
    /// inet vswitch, host ports vsw-*, TAPs left by an interrupted attach). Run it with the
    /// daemon stopped; containers' own interfaces go with detach.
    Clean,
}

#[derive(Args)]
struct AttachArgs {
    /// The container's network namespace: an `ip netns` name, a path such as
    /// /proc/1234/ns/net, or pid:1234.
    netns: String,
    /// The network to join.
    #[arg(long, default_value = "default")]
    network: String,
    /// The interface name inside the container.
    #[arg(long, default_value = "eth0")]
    ifname: String,
    /// A stable id of the container (defaults to the namespace argument).
    #[arg(long = "id")]
    container_id: Option<String>,
    /// A fixed address instead of the next free one.
    #[arg(long)]
    ip: Option<IpAddr>,
    /// A fixed MAC instead of one derived from the address.
    #[arg(long)]
    mac: Option<MacAddr>,
    /// A label of the container, KEY=VALUE (repeatable), kept with the attachment.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Publish a port: HOST_PORT:CONTAINER_PORT[/tcp|/udp] (repeatable); connections to the
    /// host's port, on any of its addresses, reach the container's.
    #[arg(long = "publish", short = 'p')]
    publish: Vec<PortMapping>,
    /// A rate limit on the port in bits per second, each direction, with SI suffixes: 800k,
    /// 100M, 1.5G.
    #[arg(long)]
    rate: Option<BitRate>,
    /// The rate limit's bucket in bytes (at least one MTU-sized frame); 50 ms at the rate by
    /// default.
    #[arg(long)]
    burst: Option<u64>,
    /// Set the interface up here and hand its queues to vswitchd (for a daemon that runs
    /// without privileges; this command needs CAP_NET_ADMIN and CAP_SYS_ADMIN).
    #[arg(long)]
    helper: bool,
    #[command(flatten)]
    output: Output,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Add the policies of FILE (TOML or JSON), replacing those of the same names; they are
    /// kept across restarts.
    Apply {
        /// The policy file: TOML (`[[policy]]` tables) or JSON (`{"policy": [..]}`).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// The policies in force and each rule with its counters.
    List(Output),
    /// Remove a policy by name.
    Delete {
        /// The policy's name.
        name: String,
    },
    /// Which rule decides a new connection from SRC to DST, and why.
    Explain {
        /// The source address.
        src: IpAddr,
        /// The destination address.
        dst: IpAddr,
        /// tcp, udp, icmp or an IP protocol number.
        proto: String,
        /// The destination port (for icmp, the message type: 8 for echo request).
        port: u16,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Args)]
struct QosArgs {
    /// The container id (or the namespace argument given to attach).
    container_id: String,
    /// The interface name inside the container.
    #[arg(long, default_value = "eth0")]
    ifname: String,
    /// The limit in bits per second, each direction, with SI suffixes: 800k, 100M, 1.5G.
    #[arg(long)]
    rate: Option<BitRate>,
    /// The bucket in bytes (at least one MTU-sized frame); 50 ms at the rate by default.
    #[arg(long)]
    burst: Option<u64>,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct DetachArgs {
    /// The container id (or the namespace argument given to attach).
    container_id: String,
    /// The interface name inside the container.
    #[arg(long, default_value = "eth0")]
    ifname: String,
    /// Remove the interface here, once vswitchd let it go (it was attached with --helper).
    #[arg(long)]
    helper: bool,
}

#[derive(Args)]
struct Output {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vswitch: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit status of a failure: one per kind of refusal (README, "Exit status"), 1 for
/// anything else. Clap exits with 2 on a bad command line, as a bad request does.
fn exit_code(e: &anyhow::Error) -> u8 {
    let Some(client) = e.chain().find_map(|e| e.downcast_ref::<ClientError>()) else {
        return 1;
    };
    if client.is_daemon_missing() {
        return 3;
    }
    match client.kind() {
        Some(ErrorKind::BadRequest) => 2,
        Some(ErrorKind::PermissionDenied) => 4,
        Some(ErrorKind::UnknownNetwork) => 5,
        Some(ErrorKind::NamespaceNotFound) => 6,
        Some(ErrorKind::AddressExhausted) => 7,
        Some(ErrorKind::AddressTaken) => 8,
        Some(ErrorKind::AlreadyAttached) => 9,
        Some(ErrorKind::NameTaken) => 10,
        Some(ErrorKind::Unavailable) => 11,
        Some(ErrorKind::PortTaken) => 12,
        _ => 1,
    }
}

/// A helper's failure, with the daemon's refusal kept as a [`ClientError`] for the exit status.
fn helper_error(e: handoff::HelperError) -> anyhow::Error {
    match e {
        handoff::HelperError::Daemon(e) => e.into(),
        other => other.into(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let call = |request: Request| api::call(&cli.socket, &request);
    match cli.command {
        Command::Attach(args) => {
            let request = AttachRequest {
                netns: args.netns,
                network: Some(args.network),
                ifname: Some(args.ifname),
                container_id: args.container_id,
                ip: args.ip,
                mac: args.mac,
                labels: args.labels.into_iter().collect(),
                publish: args.publish,
                rate: args.rate,
                burst: args.burst,
            };
            let reply = if args.helper {
                Reply::Attached(handoff::attach(&cli.socket, request).map_err(helper_error)?)
            } else {
                call(Request::Attach(request))?
            };
            let Reply::Attached(a) = reply else {
                anyhow::bail!("unexpected reply from vswitchd: {reply:?}");
            };
            print(args.output.json, &a, render::attachment)
        }
        Command::Detach(args) => {
            let request = DetachRequest {
                container_id: args.container_id.clone(),
                ifname: Some(args.ifname.clone()),
            };
            let reply = if args.helper {
                Reply::Detached(handoff::detach(&cli.socket, request).map_err(helper_error)?)
            } else {
                call(Request::Detach(request))?
            };
            match reply {
                Reply::Detached(true) => println!("detached {} {}", args.container_id, args.ifname),
                Reply::Detached(false) => println!(
                    "{} {} was not attached; nothing to do",
                    args.container_id, args.ifname
                ),
                other => anyhow::bail!("unexpected reply from vswitchd: {other:?}"),
            }
            Ok(())
        }
        Command::Status(o) => match call(Request::Status)? {
            Reply::Status(s) => print(o.json, &*s, render::status),
            other => anyhow::bail!("unexpected reply from vswitchd: {other:?}"),
        },
        Command::Ports(o) => match call(Request::Ports)? {
            Reply::Ports(p) => print(o.json, &p, |p| render::ports(p)),
            other => anyhow::bail!("unexpected reply from vswitchd: {other:?}"),
        },
        Command::Fdb(o) => match call(Request::Fdb)? {
            Reply::Fdb(f) => print(o.json, &f, |f| render::fdb(f)),
            other => anyhow::bail!("unexpected reply from vswitchd: {other:?}"),
        },
        Command::Peers(o) => match call(Request::Peers)? {
            Reply::Peers(p) => print(o.json, &p, |p| render::peers(p)),
            other => anyhow::bail!("unexpected reply from vswitchd: {other:?}"),
        },
        Command::Reservations(o) => match call(Request::Reservations)? {
            Reply::Reservations(r) => print(o.json, &r, |r| render::reservations(r)),
            other => anyhow::bail!("unexpected reply from vswitchd: {other:?}"),
        },
        Command::Reload => match call(Request::Reload)? {
            Reply::Reloaded(summary) => {
                println!("{summary}");
                Ok(())
            }
            other => anyhow::bail!("unexpected reply from vswitchd: {other:?}"),
        },
        Command::Policy(command) => policy(&call, command),
        Command::Qos(args) => match call(Request::Qos(QosRequest {
            container_id: args.container_id,
            ifname: Some(args.ifname),
            rate: args.rate,
            burst: args.burst,
        }))? {
            Reply::Attached(a) => print(args.output.json, &a, render::attachment),
            other => anyhow::bail!("unexpected reply from vswitchd: {other:?}"),
        },
        Command::Demo(options) => vswitch::demo::run(&options).context("demo failed"),
        Command::Keygen { file, psk: true } => {
            use rand::SeedableRng;
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let file = file.context("--psk needs the file to write")?;
            sealing::write_psk(&file, &crypto::PresharedKey::generate(&mut rng))
        }
        Command::Keygen { file, psk: false } => {
            use rand::SeedableRng;
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let file = file.unwrap_or_else(|| "/etc/vswitch/private.key".into());
            let secret = crypto::StaticSecret::generate(&mut rng);
            sealing::write_private_key(&file, &secret)?;
            println!("{}", secret.public_key());
            Ok(())
        }
        Command::Node(NodeCommand::Clean) => {
            let removed = vswitch::control::gateway::clean()?;
            if removed.is_empty() {
                println!("nothing to remove");
            }
            for what in removed {
                println!("removed {what}");
            }
            Ok(())
        }
        Command::Pubkey { file } => {
            println!("{}", sealing::read_private_key(&file)?.public_key());
            Ok(())
        }
    }
}

fn policy(
    call: &dyn Fn(Request) -> Result<Reply, ClientError>,
    command: PolicyCommand,
) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let start = text.trim_start();
            let json = match file.extension().and_then(|e| e.to_str()) {
                Some("json") => true,
                Some("toml") => false,
                _ => start.starts_with('{') || (start.starts_with('[') && !start.starts_with("[[")),
            };
            let policies = if json {
                vswitch::policy::parse_json(&text)
            } else {
                vswitch::policy::parse_toml(&text)
            }
            .with_context(|| format!("{}", file.display()))?;
            match call(Request::PolicyApply(PolicyApply { policies }))? {
                Reply::Policy(summary) => println!("{summary}"),
                other => anyhow::bail!("unexpected reply from vswitchd: {other:?}"),
            }
        }
        PolicyCommand::List(o) => match call(Request::PolicyList)? {
            Reply::Policies(list) => print(o.json, &*list, vswitch::control::policy::render)?,
            other => anyhow::bail!("unexpected reply from vswitchd: {other:?}"),
        },
        PolicyCommand::Delete { name } => {
            match call(Request::PolicyDelete(PolicyDelete { name }))? {
                Reply::Policy(summary) => println!("{summary}"),
                other => anyhow::bail!("unexpected reply from vswitchd: {other:?}"),
            }
        }
        PolicyCommand::Explain {
            src,
            dst,
            proto,
            port,
            output,
        } => match call(Request::PolicyExplain(ExplainRequest {
            src,
            dst,
            protocol: proto,
            port,
        }))? {
            Reply::Explained(e) => print(output.json, &e, |e| format!("{}\n", e.text))?,
            other => anyhow::bail!("unexpected reply from vswitchd: {other:?}"),
        },
    }
    Ok(())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    table: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", table(value));
    }
    Ok(())
}
