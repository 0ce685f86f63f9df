//! Attach by a privileged helper, for a daemon that runs without privileges.
//!
//! `vswitchd` needs no capability to switch frames: only putting an interface into a container
//! does (creating a TAP and moving it takes `CAP_NET_ADMIN`, entering the container's namespace
//! `CAP_SYS_ADMIN`). So the helper (`vswitch attach --helper`, run as root) does that part and
//! hands the TAP's queues to the daemon, on one connection to the control socket:
//!
//! 1. the helper sends [`Request::HelperReserve`]: the daemon leases the address and saves the record
//!    with its intent (the lease and intent steps of [`super::daemon::AttachStep`]), and answers
//!    [`Reply::Reserved`]: the attachment to set up, how many queues, with offloads or not;
//! 2. the helper creates the TAP, moves it into the container and configures it (create, move,
//!    configure), then sends [`Request::Plug`] with the queues attached (`SCM_RIGHTS`);
//! 3. the daemon plugs them into the datapath and commits (plug, commit), and answers
//!    [`Reply::Attached`].
//!
//! Each side undoes its own steps when the other fails: a helper whose plug is refused, or
//! whose daemon dies, removes the interface it made; a daemon whose helper goes away before the
//! plug (or which dies itself before the commit) drops the record and releases the lease, then
//! or at its next start. The record is marked [`PortRecord::by_helper`]: the daemon never
//! re-opens nor removes that interface itself. After a daemon restart the port waits for its
//! queues: running the same `vswitch attach --helper` again re-sends them (an attach is
//! idempotent), and `vswitch detach --helper` removes the interface after the daemon let go.
//!
//! [`PortRecord::by_helper`]: super::state::PortRecord::by_helper

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use netns::{NetNs, Netlink, NsRef, Offloads};
use serde::{Deserialize, Serialize};

use super::api::{
    ApiError, AttachRequest, Attachment, ClientError, DetachRequest, ErrorKind, Reply, Request,
    Response,
};
use super::attach::{self, AttachError};
use super::state::Intent;

/// The first half of a helper's attach.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    /// What to attach, as for [`Request::Attach`].
    pub attach: AttachRequest,
    /// The (device, inode) of the container's namespace, as the helper opened it.
    pub netns_id: (u64, u64),
    /// How `lo` was in the container before (for the daemon's record of the attach).
    pub before: Intent,
}

/// The daemon's answer to a [`ReserveRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reservation {
    /// The attachment to set up.
    pub attachment: Attachment,
    /// Whether the daemon waits for the queues: false when the container is attached and
    /// plugged already (nothing to do).
    pub send_queues: bool,
    /// How many queues the TAP should have (one per datapath worker).
    pub queues: usize,
    /// Whether the TAP should carry virtio-net headers and offloads.
    pub offloads: bool,
}

/// The second half: the queues come with this message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlugRequest {
    /// The offloads (`TUN_F_*` bits) the helper enabled on the TAP.
    pub offloads: u32,
}

/// Why a helper's attach or detach failed.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The daemon refused, or could not be reached.
    #[error(transparent)]
    Daemon(ClientError),
    /// The interface could not be set up or removed.
    #[error(transparent)]
    Attach(#[from] AttachError),
}

impl From<netns::Error> for HelperError {
    fn from(e: netns::Error) -> Self {
        HelperError::Attach(AttachError::Netns(e))
    }
}

impl From<ClientError> for HelperError {
    fn from(e: ClientError) -> Self {
        HelperError::Daemon(e)
    }
}

/// How long the helper waits for each answer of the daemon.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Attaches a container as the privileged helper of the daemon at `socket`: the daemon leases
/// and records, this process sets the interface up and hands its queues over. Returns the
/// attachment; on failure, nothing this process set up is left behind.
pub fn attach(socket: &Path, request: AttachRequest) -> Result<Attachment, HelperError> {
    let ns_ref: NsRef = request.netns.parse()?;
    let ns = NetNs::open(&ns_ref)?;
    let inside = Netlink::in_namespace(&ns)?;
    let before = attach::loopback(&inside)?;
    let id = ns.id();
    let stream = connect(socket)?;
    let reserve = Request::HelperReserve(ReserveRequest {
        attach: request,
        netns_id: (id.dev, id.ino),
        before: before.clone(),
    });
    let reservation = match exchange(&stream, &reserve, &[])? {
        Reply::HelperReserved(r) => r,
        other => return Err(unexpected(&other)),
    };
    let a = &reservation.attachment;
    if !reservation.send_queues {
        return Ok(a.clone());
    }
    // A container attached before a daemon restart has its interface: re-open it.
    let existing = inside.link_index(&a.ifname)?.is_some();
    let set_up = || -> Result<netns::Tap, AttachError> {
        if existing {
            return attach::ensure_interface(a, &ns, reservation.offloads, reservation.queues);
        }
        let tap = attach::create_staged(a, reservation.offloads, reservation.queues)?;
        attach::move_in(a, &ns)?;
        attach::configure(&inside, a)?;
        Ok(tap)
    };
    let undo = |e: HelperError| -> HelperError {
        if !existing && let Err(undo) = attach::undo_interface(a, Some(&ns), &before) {
            tracing::warn!("removing the interface of a failed attach: {undo}");
        }
        e
    };
    let tap = set_up().map_err(|e| undo(e.into()))?;
    let plug = Request::Plug(PlugRequest {
        offloads: tap.offloads().bits(),
    });
    let fds = netns::borrow_all(tap.queues());
    match exchange(&stream, &plug, &fds) {
        Ok(Reply::Attached(a)) => Ok(a),
        Ok(other) => Err(undo(unexpected(&other))),
        Err(e) => Err(undo(e.into())),
    }
}

/// Detaches a container attached by a helper: the daemon lets the port go, then this process
/// removes the interface. `Ok(false)` when the daemon held no such attachment.
pub fn detach(socket: &Path, request: DetachRequest) -> Result<bool, HelperError> {
    let ifname = request.ifname.clone().unwrap_or_else(|| "eth0".into());
    let ports = match super::api::call(socket, &Request::Ports)? {
        Reply::Ports(ports) => ports,
        other => return Err(unexpected(&other)),
    };
    let attachment = ports
        .into_iter()
        .map(|p| p.attachment)
        .find(|a| a.container_id == request.container_id && a.ifname == ifname);
    let detached = match super::api::call(socket, &Request::Detach(request))? {
        Reply::Detached(detached) => detached,
        other => return Err(unexpected(&other)),
    };
    if let Some(a) = attachment
        && let Ok(ns_ref) = a.netns.parse::<NsRef>()
        && let Ok(ns) = NetNs::open(&ns_ref)
    {
        // Only the interface that is ours (a TAP with the attachment's MAC), `lo` left as is.
        let keep_lo = Intent {
            lo_was_up: true,
            lo_addresses: Vec::new(),
        };
        attach::undo_interface(&a, Some(&ns), &keep_lo)?;
    }
    Ok(detached)
}

fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    Ok(stream)
}

/// Sends one request (with descriptors) and reads its one-line answer.
fn exchange(
    stream: &UnixStream,
    request: &Request,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<Reply, ClientError> {
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    let sent = netns::send_with_fds(stream.as_fd(), &line, fds);
    // The daemon answers one line per request and nothing more until the next: a reader
    // per answer loses nothing.
    let mut reply = String::new();
    match BufReader::new(stream).read_line(&mut reply) {
        Ok(n) if n > 0 => {}
        Ok(_) => {
            return Err(match sent {
                Err(e) => ClientError::Io(std::io::Error::other(e)),
                Ok(()) => ClientError::Closed,
            });
        }
        Err(e) => return Err(e.into()),
    }
    match serde_json::from_str(&reply)? {
        Response::Ok(reply) => Ok(reply),
        Response::Error(e) => Err(ClientError::Refused(e)),
    }
}

fn unexpected(reply: &Reply) -> HelperError {
    HelperError::Daemon(ClientError::Refused(ApiError::new(
        ErrorKind::Internal,
        format!("unexpected reply from vswitchd: {reply:?}"),
    )))
}

/// The offloads a [`PlugRequest`] names.
pub fn offloads_of(plug: &PlugRequest) -> Offloads {
    Offloads::from_bits_truncate(plug.offloads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_and_plug_have_a_stable_json_form() {
        let line = r#"{"op":"helper_reserve","attach":{"netns":"c1","ifname":"eth0"},"netns_id":[4,4026532000],"before":{"lo_was_up":false,"lo_addresses":["127.0.0.1/8"]}}"#;
        let Ok(Request::HelperReserve(r)) = serde_json::from_str::<Request>(line) else {
            panic!("a reserve request");
        };
        assert_eq!(r.netns_id, (4, 4_026_532_000));
        assert!(!r.before.lo_was_up);
        let Ok(Request::Plug(p)) =
            serde_json::from_str::<Request>(r#"{"op":"plug","offloads":99}"#)
        else {
            panic!("a plug request");
        };
        assert_eq!(offloads_of(&p), Offloads::from_bits_truncate(99));
        let extra = r#"{"op":"plug","offloads":1,"fds":[3]}"#;
        assert!(serde_json::from_str::<Request>(extra).is_err());
    }
}
