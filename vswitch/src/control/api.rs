//! The control API between `vswitch` and `vswitchd`: one JSON request per line on a Unix
//! socket, one JSON reply per line back. The types here are the whole protocol.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::host_tap;
use crate::wire::MacAddr;

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Put a container on a network.
    Attach(AttachRequest),
    /// Take a container off a network, completely; doing it twice is not an error.
    Detach(DetachRequest),
    /// The node, its networks, peers and counters.
    Status,
    /// Attached containers.
    Ports,
    /// The MAC tables.
    Fdb,
    /// The peers and their traffic.
    Peers,
    /// Re-read the config file and apply the difference in networks and peers.
    Reload,
    /// Add network policies, or replace those of the same names; kept across restarts.
    PolicyApply(super::policy::PolicyApply),
    /// Remove a network policy by name.
    PolicyDelete(super::policy::PolicyDelete),
    /// The policies in force and their rules with counters.
    PolicyList,
    /// Which rule decides a flow, and why.
    PolicyExplain(super::policy::ExplainRequest),
    /// Set or clear the rate limit of an attached container's port.
    Qos(super::policy::QosRequest),
    /// Lease an address before any interface exists (a runtime's IPAM, see [`host_tap`]).
    Reserve(host_tap::ReserveRequest),
    /// Release a reservation, unplugging its TAP first.
    Unreserve(host_tap::UnreserveRequest),
    /// Create a reservation's TAP in the daemon's namespace and switch it.
    PlugTap(host_tap::PlugTapRequest),
    /// Take an endpoint's TAP off the switch and delete it.
    UnplugTap(host_tap::UnplugTapRequest),
    /// The reservations and their TAPs.
    Reservations,
    /// The first half of an attach made by a privileged helper (`vswitch attach --helper`):
    /// lease and record; the helper sets up the interface and sends [`Request::Plug`] on the
    /// same connection (see [`super::handoff`]).
    HelperReserve(super::handoff::ReserveRequest),
    /// The second half: plug the TAP whose queues come with this message (`SCM_RIGHTS`).
    Plug(super::handoff::PlugRequest),
}

/// What `vswitch attach` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// The container's network namespace: an `ip netns` name, a path, or `pid:N`.
    pub netns: String,
    /// The network to join; `default` when absent.
    #[serde(default)]
    pub network: Option<String>,
    /// The interface name inside the container; `eth0` when absent.
    #[serde(default)]
    pub ifname: Option<String>,
    /// A stable id of the container; the namespace reference when absent.
    #[serde(default)]
    pub container_id: Option<String>,
    /// A fixed address instead of the next free one.
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// A fixed MAC instead of one derived from the address.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Labels of the container (`app=web`), kept with the attachment for policy to select on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Ports to publish on the host's addresses (`vswitch attach --publish 8080:80/tcp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<super::gateway::PortMapping>,
    /// A rate limit on the port, each direction: bits per second (`"100M"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<crate::policy::BitRate>,
    /// The burst of that limit, in bytes (at least one MTU); 50 ms at the rate when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// What `vswitch detach` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetachRequest {
    /// The container id given at attach time (or its namespace reference).
    pub container_id: String,
    /// The interface name; `eth0` when absent.
    #[serde(default)]
    pub ifname: Option<String>,
}

/// A container attached to a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The container's id.
    pub container_id: String,
    /// Its network namespace as given.
    pub netns: String,
    /// The interface inside it.
    pub ifname: String,
    /// The network joined.
    pub network: String,
    /// That network's VNI.
    pub vni: u32,
    /// The interface's MAC.
    pub mac: MacAddr,
    /// The interface's address with the network's prefix length.
    pub address: IpNet,
    /// Its IPv6 address, on dual-stack networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<IpNet>,
    /// The default gateway.
    pub gateway: IpAddr,
    /// The interface MTU.
    pub mtu: u16,
    /// The container's labels, as given at attach.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<super::gateway::PortMapping>,
    /// The name server answering container names (the gateway), when the daemon runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<IpAddr>,
    /// The port's rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<super::policy::QosSetting>,
}

#[cfg(test)]
impl Attachment {
    /// A container `id` on the default network at 10.244.1.2/16, for tests.
    pub(crate) fn example(id: &str) -> Self {
        Attachment {
            container_id: id.into(),
            netns: id.into(),
            ifname: "eth0".into(),
            network: "default".into(),
            vni: 42,
            mac: MacAddr([0x0a, 0x58, 10, 244, 1, 2]),
            address: IpNet::V4(ipnet::Ipv4Net::new([10, 244, 1, 2].into(), 16).unwrap_or_default()),
            address6: None,
            gateway: IpAddr::V4([10, 244, 1, 1].into()),
            mtu: 1450,
            labels: BTreeMap::new(),
            published: Vec::new(),
            dns: None,
            qos: None,
        }
    }
}

/// Traffic counters of one port or peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Frames received from it.
    pub rx_frames: u64,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Frames sent to it.
    pub tx_frames: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// Frames from or to it that were dropped.
    pub drops: u64,
}

/// One attached container and its traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortView {
    /// The attachment.
    #[serde(flatten)]
    pub attachment: Attachment,
    /// Its traffic.
    pub traffic: Traffic,
    /// Frames network policy denied, from it or to it.
    #[serde(default)]
    pub denied: u64,
    /// Frames over a rate limit, from it or to it.
    #[serde(default)]
    pub limited: u64,
}

/// One peer and its traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    /// Its node name.
    pub name: String,
    /// Its VXLAN endpoint.
    pub endpoint: SocketAddr,
    /// The networks shared with it.
    pub networks: Vec<String>,
    /// MACs learned behind it.
    pub macs: usize,
    /// Its traffic.
    pub traffic: Traffic,
    /// Its session, when it carries a sealed network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<super::sealing::SessionStatus>,
    /// Its datagrams dropped, by reason (the reasons with any).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drops_by_reason: BTreeMap<String, u64>,
    /// Its tunnel's health (probes on the VXLAN path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::fleet::health::PeerHealthView>,
    /// Found through the fleet's registry rather than configured.
    #[serde(default)]
    pub discovered: bool,
}

/// One MAC table entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FdbView {
    /// The network.
    pub network: String,
    /// Its VNI.
    pub vni: u32,
    /// The MAC.
    pub mac: MacAddr,
    /// Where frames to it go: `port <ifname>@<container>` or `peer <name>`.
    pub location: String,
    /// Configured rather than learned.
    pub is_static: bool,
    /// Seconds since it was last seen (0 for static entries).
    pub age_secs: u64,
}

/// One network as this node carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkView {
    /// Its name.
    pub name: String,
    /// Its VNI.
    pub vni: u32,
    /// The cluster-wide subnet.
    pub subnet: IpNet,
    /// This node's slice of it.
    pub node_subnet: IpNet,
    /// This node's gateway address on it.
    pub gateway: IpAddr,
    /// Its inner MTU.
    pub mtu: u16,
    /// Containers attached here.
    pub ports: usize,
}

/// The daemon at a glance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    /// This node's name.
    pub node: String,
    /// Its VXLAN endpoint.
    pub endpoint: SocketAddr,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Where leases live.
    pub store: String,
    /// Networks carried.
    pub networks: Vec<NetworkView>,
    /// Number of peers.
    pub peers: usize,
    /// Number of MAC table entries.
    pub fdb_entries: usize,
    /// Totals over every port and peer.
    pub traffic: Traffic,
    /// Dropped frames and datagrams by reason; reasons that never happened are left out.
    pub drops: Vec<(String, u64)>,
    /// Frames a container's TAP refused (its queue was full or it was going away).
    pub tap_write_errors: u64,
    /// Datagrams the underlay refused (socket buffer full, no route, larger than the path MTU).
    pub udp_send_errors: u64,
    /// Super-frames from a TAP that could not be segmented (an offload the switch does not do).
    pub offload_errors: u64,
    /// Traffic of each datapath worker, in worker order: how evenly flows spread over cores.
    #[serde(default)]
    pub workers: Vec<Traffic>,
    /// The node's health: Ready, Degraded or Disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::fleet::health::NodeHealthView>,
    /// Frames over the MTU, and TCP SYNs, as the switch answered and clamped them.
    #[serde(default)]
    pub mtu: MtuView,
    /// Frames routed between networks.
    #[serde(default)]
    pub routing: RoutingView,
}

/// What the switch did about the MTU: "too big" errors sent (and held back by their rate
/// limit), TCP SYNs whose MSS it lowered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtuView {
    /// ICMP "fragmentation needed" and ICMPv6 "packet too big" errors sent.
    pub too_big_sent: u64,
    /// Errors not sent because their port or peer was over the rate limit.
    pub too_big_limited: u64,
    /// TCP SYNs whose MSS option was lowered.
    pub mss_clamped: u64,
}

/// What the switch did routing between networks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingView {
    /// Frames routed from one network to another.
    pub routed: u64,
    /// ARP requests the gateway sent to resolve a routed frame's destination.
    pub route_resolves: u64,
    /// Routed frames whose TTL ran out, answered with ICMP time exceeded.
    pub ttl_exceeded: u64,
}

/// A successful reply's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A container was attached (or already was, with these parameters).
    Attached(Attachment),
    /// A container was detached; `false` when there was nothing to detach.
    Detached(bool),
    /// The daemon's state.
    Status(Box<StatusView>),
    /// Attached containers.
    Ports(Vec<PortView>),
    /// MAC table entries.
    Fdb(Vec<FdbView>),
    /// Peers.
    Peers(Vec<PeerView>),
    /// The config was reloaded; what changed.
    Reloaded(String),
    /// Policies were applied or deleted; what changed.
    Policy(String),
    /// The policies in force.
    Policies(Box<super::policy::PolicyList>),
    /// What policy decides for a flow.
    Explained(super::policy::ExplainView),
    /// An address was reserved (or plugged): the reservation.
    Reserved(host_tap::Reservation),
    /// A reservation was released; `false` when there was none.
    Unreserved(bool),
    /// An endpoint's TAP was unplugged; `false` when it had none.
    Unplugged(bool),
    /// The reservations.
    Reservations(Vec<host_tap::Reservation>),
    /// An attach was reserved for a helper: what to set up, and whether to send the queues.
    HelperReserved(super::handoff::Reservation),
}

/// A reply on the wire: the payload, or an error saying what went wrong and what to do.
///
/// `{"ok":{...}}` or `{"error":{"kind":"unknown_network","message":"...","field":"network"}}`.
// One per request, built and dropped at once: the size of the attachment it may carry costs
// nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The request succeeded.
    Ok(Reply),
    /// The request failed.
    Error(ApiError),
}

/// What kind of failure a refused request met: what a program branches on (the CLI's exit
/// status, the CNI plugin's error code). Stable names on the wire, in `snake_case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or a value in it is invalid (a name, an address outside the
    /// node's subnet); `field` names which.
    BadRequest,
    /// No network of that name is configured on this node.
    UnknownNetwork,
    /// The network namespace (name, path or PID) does not exist.
    NamespaceNotFound,
    /// The node's address pool for the network is full.
    AddressExhausted,
    /// The requested address is leased to another container.
    AddressTaken,
    /// The container's interface is already attached to another network.
    AlreadyAttached,
    /// The interface name is taken inside the container by a device that is not ours.
    NameTaken,
    /// A port asked to be published is published already, for another container (named).
    PortTaken,
    /// The caller may not use the control socket, or the daemon may not do what it was asked.
    PermissionDenied,
    /// The daemon cannot serve the request now (too many connections, the address store is
    /// unreachable); trying again later may succeed.
    Unavailable,
    /// Anything else: the message says what failed.
    Internal,
    /// A kind this client does not know (sent by a newer daemon).
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// The kind's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UnknownNetwork => "unknown_network",
            ErrorKind::NamespaceNotFound => "namespace_not_found",
            ErrorKind::AddressExhausted => "address_exhausted",
            ErrorKind::AddressTaken => "address_taken",
            ErrorKind::AlreadyAttached => "already_attached",
            ErrorKind::NameTaken => "name_taken",
            ErrorKind::PortTaken => "port_taken",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
            ErrorKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: its kind, a message for a person (what is wrong and what to do), and the
/// request field or object it concerns, when there is one (`network`, `netns`, `ip`, `mac`,
/// `ifname`, `container_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What is wrong and what to do about it.
    pub message: String,
    /// The request field or object concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// An error of `kind` with `message`, about no field in particular.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            field: None,
        }
    }

    /// The same error, about `field`.
    #[must_use]
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

/// Why a control request could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon is not listening where expected.
    #[error("{}", connect_message(path, source))]
    Connect {
        /// The socket path tried.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon closed the connection without an answer.
    #[error("vswitchd closed the connection without answering")]
    Closed,
    /// The daemon's answer could not be read.
    #[error("unreadable reply from vswitchd: {0}")]
    Protocol(#[from] serde_json::Error),
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(ApiError),
}

impl ClientError {
    /// Whether the daemon could not be reached at all: no socket, nobody listening.
    pub fn is_daemon_missing(&self) -> bool {
        matches!(self, ClientError::Connect { source, .. }
            if source.kind() != std::io::ErrorKind::PermissionDenied)
    }

    /// The kind of failure, as the daemon would have said it; `None` when the daemon could not
    /// be reached (see [`ClientError::is_daemon_missing`]).
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Refused(e) => Some(e.kind),
            ClientError::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Some(ErrorKind::PermissionDenied)
            }
            ClientError::Connect { .. } => None,
            ClientError::Io(_) | ClientError::Closed => Some(ErrorKind::Unavailable),
            ClientError::Protocol(_) => Some(ErrorKind::Internal),
        }
    }
}

/// What to say when the control socket cannot be reached, by why.
fn connect_message(path: &str, source: &std::io::Error) -> String {
    match source.raw_os_error() {
        Some(libc::ENOENT) => format!(
            "vswitchd is not running: there is no control socket at {path}; start it \
             (vswitchd --config FILE), or point --socket (VSWITCH_SOCKET) at its \
             node.control_socket"
        ),
        Some(libc::ECONNREFUSED) => format!(
            "vswitchd is not running: nobody listens on {path} (a daemon that stopped left it); \
             start vswitchd, or point --socket (VSWITCH_SOCKET) at the running daemon's socket"
        ),
        Some(libc::EACCES | libc::EPERM) => format!(
            "permission denied on {path}: the control socket is for root and the members of \
             node.control_group; run as root or as a member of that group"
        ),
        _ => format!(
            "cannot reach vswitchd at {path}: {source} (is the daemon running? see --socket)"
        ),
    }
}

/// Sends one request and waits for its reply. Attach may take a few seconds (netlink, store).
pub fn call(socket: &Path, request: &Request) -> Result<Reply, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    // A daemon that refuses the client (credentials, too many connections) answers before
    // reading the request and closes: its answer is still there to read.
    let written = (&stream).write_all(&line);
    let mut reader = BufReader::new(&stream);
    let mut reply = String::new();
    match reader.read_line(&mut reply) {
        Ok(n) if n > 0 => {}
        Ok(_) => return Err(written.err().map_or(ClientError::Closed, ClientError::Io)),
        Err(e) => return Err(written.err().unwrap_or(e).into()),
    }
    match serde_json::from_str(&reply)? {
        Response::Ok(reply) => Ok(reply),
        Response::Error(e) => Err(ClientError::Refused(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_json_form() {
        let r = Request::Attach(AttachRequest {
            netns: "c1".into(),
            ip: Some("10.244.1.7".parse().unwrap()),
            ..Default::default()
        });
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"op":"attach","netns":"c1","network":null,"ifname":null,"container_id":null,"ip":"10.244.1.7","mac":null}"#
        );
        let back: Request = serde_json::from_str(r#"{"op":"attach","netns":"c1"}"#).unwrap();
        assert!(matches!(back, Request::Attach(a) if a.netns == "c1" && a.ip.is_none()));
        let status: Request = serde_json::from_str(r#"{"op":"status"}"#).unwrap();
        assert!(matches!(status, Request::Status));
        assert!(serde_json::from_str::<Request>(r#"{"op":"attach","nets":"x"}"#).is_err());
    }

    #[test]
    fn responses_round_trip() {
        let r = Response::Error(
            ApiError::new(ErrorKind::UnknownNetwork, "no network is named \"red\"")
                .field("network"),
        );
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"error":{"kind":"unknown_network","message":"no network is named \"red\"","field":"network"}}"#
        );
        let r = Response::Error(ApiError::new(ErrorKind::Internal, "x"));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"error":{"kind":"internal","message":"x"}}"#);
        let r = Response::Ok(Reply::Detached(false));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"ok":{"detached":false}}"#);
    }

    #[test]
    fn kinds_have_stable_names_and_unknown_ones_are_read() {
        for kind in [
            ErrorKind::BadRequest,
            ErrorKind::UnknownNetwork,
            ErrorKind::NamespaceNotFound,
            ErrorKind::AddressExhausted,
            ErrorKind::AddressTaken,
            ErrorKind::AlreadyAttached,
            ErrorKind::NameTaken,
            ErrorKind::PermissionDenied,
            ErrorKind::Unavailable,
            ErrorKind::Internal,
        ] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), kind);
        }
        let e: Response =
            serde_json::from_str(r#"{"error":{"kind":"from_the_future","message":"m"}}"#).unwrap();
        assert!(
            matches!(e, Response::Error(e) if e.kind == ErrorKind::Unknown && e.field.is_none())
        );
    }

    #[test]
    fn a_missing_daemon_says_so_and_what_to_do() {
        let e = call(Path::new("/nonexistent/vswitchd.sock"), &Request::Status).unwrap_err();
        assert!(e.is_daemon_missing());
        assert_eq!(e.kind(), None);
        let text = e.to_string();
        assert!(
            text.contains("vswitchd is not running") && text.contains("--socket"),
            "{text}"
        );
    }
}
