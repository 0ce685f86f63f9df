//! The daemon's half of an attach by a privileged helper ([`crate::control::handoff`]):
//! reserve (lease, intent), then plug the queues the helper sends, then commit. A reservation
//! whose plug never comes (the helper failed, went away, or the connection closed) is dropped
//! and its lease released.
//!
//! The queues of a plugged port are also given to the queue keeper ([`keeper`]), which the
//! daemon starts when it first needs it: a restarted daemon takes them back from it, and so
//! re-adopts the helpers' ports without any privilege. A port the keeper does not hold (it was
//! not running, or was stopped) waits for its helper to send the queues again.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use netns::Tap;
use tracing::{info, warn};

use super::transaction::{self, AttachStep, Wanted, hooks};
use super::{Daemon, Port, State, api_error};
use crate::control::api::{ApiError, Attachment, ErrorKind, Reply, Response};
use crate::control::handoff::{PlugRequest, Reservation, ReserveRequest, offloads_of};
use crate::control::keeper;
use crate::control::state::PortRecord;

/// Which attachment a connection reserved: container id and interface.
pub type ReservedKey = (String, String);

/// What the keeper gave back at start, by key: offloads and queues.
pub(super) type KeptQueues = BTreeMap<String, (u32, Vec<OwnedFd>)>;

/// The keeper's name for an attachment's queues.
fn kept_key(container_id: &str, ifname: &str) -> String {
    serde_json::to_string(&(container_id, ifname)).unwrap_or_default()
}

impl Daemon {
    /// Reserves an attach for a helper: leases the address and saves the record with its
    /// intent. A container attached already is answered as it is: with `send_queues` when
    /// its port waits for a helper's queues (after a restart).
    pub fn reserve_for_helper(&self, r: ReserveRequest) -> Result<Reservation, ApiError> {
        self.change(|state| self.reserve_in_steps(state, r))
            .map_err(|e| api_error(&e))
    }

    fn reserve_in_steps(
        &self,
        state: &mut State,
        r: ReserveRequest,
    ) -> anyhow::Result<Reservation> {
        let admitted = self.admit(state, &r.attach)?;
        let reservation = |attachment: Attachment, send_queues: bool| Reservation {
            attachment,
            send_queues,
            queues: self.datapath.workers(),
            offloads: state.config.node.offloads,
        };
        if let Some(existing) = admitted.existing {
            // A port waiting for its queues: a helper's after a restart, or one the daemon made
            // itself and cannot re-open now (it runs without privileges since).
            let waits = state
                .waiting
                .iter()
                .any(|w| w.attachment == existing.attachment);
            return Ok(reservation(existing.attachment, waits));
        }
        if state.reserved.iter().any(|p| {
            p.attachment.container_id == admitted.container_id
                && p.attachment.ifname == admitted.ifname
        }) {
            return Err(ApiError::new(
                ErrorKind::Unavailable,
                format!(
                    "{} {} is being attached by another helper; try again",
                    admitted.container_id, admitted.ifname
                ),
            )
            .into());
        }
        if let Some(other) = state
            .records()
            .iter()
            .find(|p| p.netns_id == r.netns_id && p.attachment.ifname == admitted.ifname)
        {
            return Err(ApiError::new(
                ErrorKind::NameTaken,
                format!(
                    "{} in {} is the interface of container {}: choose another --ifname",
                    admitted.ifname, r.attach.netns, other.attachment.container_id
                ),
            )
            .field("ifname")
            .into());
        }
        let qos = super::qos_of(state, &admitted.network, r.attach.rate, r.attach.burst)?;
        let wanted = Wanted {
            container_id: admitted.container_id,
            netns: r.attach.netns,
            ifname: admitted.ifname,
            network: admitted.network,
            ip: r.attach.ip,
            mac: r.attach.mac,
            labels: r.attach.labels,
            qos,
            published: r.attach.publish,
        };
        let hooks = hooks();
        hooks.reach(AttachStep::Lease)?;
        let addresses = state.leases.allocate(
            &wanted.network,
            &wanted.container_id,
            &wanted.ifname,
            wanted.ip,
        )?;
        let owner = (
            wanted.network.clone(),
            wanted.container_id.clone(),
            wanted.ifname.clone(),
        );
        let recorded = transaction::new_attachment(state, &wanted, &addresses).and_then(|mut a| {
            a.dns = self.fleet_name_server(a.gateway);
            hooks.reach(AttachStep::Intent)?;
            let record = PortRecord {
                attachment: a,
                netns_id: r.netns_id,
                intent: Some(r.before),
                by_helper: true,
            };
            let mut records = state.records();
            records.push(record.clone());
            state
                .store
                .save(&records)
                .map_err(|e| anyhow::Error::new(e).context("saving the attachment list"))?;
            Ok(record)
        });
        match recorded {
            Ok(record) => {
                state.reserved.push(record.clone());
                Ok(reservation(record.attachment, true))
            }
            Err(e) => Err(self.release_or_keep(state, owner, e)),
        }
    }

    /// Plugs the queues a helper sent for the attach its connection reserved (or for a port
    /// that waits for them after a restart), and commits.
    pub fn plug_handed(&self, key: &ReservedKey, plug: PlugRequest, fds: Vec<OwnedFd>) -> Response {
        let result = self.change(|state| self.plug_in_steps(state, key, &plug, fds));
        match result {
            Ok(a) => Response::Ok(Reply::Attached(a)),
            Err(e) => Response::Error(api_error(&e)),
        }
    }

    fn plug_in_steps(
        &self,
        state: &mut State,
        key: &ReservedKey,
        plug: &PlugRequest,
        fds: Vec<OwnedFd>,
    ) -> anyhow::Result<Attachment> {
        let is_key =
            |r: &PortRecord| r.attachment.container_id == key.0 && r.attachment.ifname == key.1;
        if let Some(i) = state.waiting.iter().position(is_key) {
            // A port restored after a restart: its record is committed already. From now on
            // its interface is the helper's.
            let mut record = state.waiting[i].clone();
            record.by_helper = true;
            let tap = handed_tap(&record, plug, fds)?;
            let copies = copies_of(&tap);
            let id = self.plug_tap(state, &record, tap)?;
            self.keep(state, &record, plug.offloads, copies);
            state.waiting.remove(i);
            info!(container = %key.0, ifname = %key.1, "port restored from a helper's queues");
            let published = !record.attachment.published.is_empty();
            state.ports.push(Port { record, id });
            if published && let Err(e) = self.sync_gateway(state, false) {
                warn!(container = %key.0, "publishing its ports again: {e:#}");
            }
            if let Err(e) = state.store.save(&state.records()) {
                // The next start then tries to re-open the interface itself, and waits again.
                warn!(container = %key.0, "saving that a helper holds the interface: {e}");
            }
            return Ok(state.ports[state.ports.len() - 1].record.attachment.clone());
        }
        let Some(i) = state.reserved.iter().position(is_key) else {
            anyhow::bail!(ApiError::new(
                ErrorKind::BadRequest,
                "plug without a reservation on this connection: send reserve first",
            ));
        };
        let mut record = state.reserved[i].clone();
        let plugged = (|| {
            let tap = handed_tap(&record, plug, fds)?;
            let copies = copies_of(&tap);
            hooks().reach(AttachStep::Plug)?;
            let id = self.plug_tap(state, &record, tap)?;
            let published = if record.attachment.published.is_empty() {
                Ok(())
            } else {
                self.publish_uncommitted(state, &record, id)
            };
            if let Err(e) = published.and_then(|()| hooks().reach(AttachStep::Commit)) {
                let _ = self
                    .datapath
                    .ask(|reply| crate::io::Command::RemovePort { id, reply });
                self.unpublish(state, &record);
                return Err(e);
            }
            Ok((id, copies))
        })();
        let (id, copies) = match plugged {
            Ok(plugged) => plugged,
            Err(e) => return Err(self.drop_reservation(state, key, e)),
        };
        record.intent = None;
        state.reserved.remove(i);
        let mut records = state.records();
        records.push(record.clone());
        if let Err(e) = state.store.save(&records) {
            let _ = self
                .datapath
                .ask(|reply| crate::io::Command::RemovePort { id, reply });
            self.unpublish(state, &record);
            state.reserved.push(record);
            let e = anyhow::Error::new(e).context("saving the attachment list");
            return Err(self.drop_reservation(state, key, e));
        }
        info!(container = %key.0, ifname = %key.1, address = %record.attachment.address, "attached by a helper");
        self.keep(state, &record, plug.offloads, copies);
        // After the commit, as for an attach of the daemon's own.
        self.fleet_attached(&record.attachment);
        hooks().reach(AttachStep::Answer)?;
        let attachment = record.attachment.clone();
        state.ports.push(Port { record, id });
        Ok(attachment)
    }

    /// After a failed plug: takes the rules of the record's published ports away again.
    fn unpublish(&self, state: &mut State, record: &PortRecord) {
        if !record.attachment.published.is_empty()
            && let Err(e) = self.sync_gateway(state, false)
        {
            warn!(container = %record.attachment.container_id, "removing the rules of its published ports: {e:#}");
        }
    }

    /// Drops the reservation of a connection whose plug will not come.
    pub fn abandon(&self, key: &ReservedKey) {
        let _ = self.change(|state| {
            if state
                .reserved
                .iter()
                .any(|r| r.attachment.container_id == key.0 && r.attachment.ifname == key.1)
            {
                warn!(container = %key.0, ifname = %key.1, "the helper did not plug: reservation dropped");
                let e = anyhow::anyhow!("abandoned");
                let _ = self.drop_reservation(state, key, e);
            }
            Ok(())
        });
    }

    /// Removes a reservation from the list and releases its lease; `error` with what could
    /// not be done yet.
    fn drop_reservation(
        &self,
        state: &mut State,
        key: &ReservedKey,
        error: anyhow::Error,
    ) -> anyhow::Error {
        let Some(i) = state
            .reserved
            .iter()
            .position(|r| r.attachment.container_id == key.0 && r.attachment.ifname == key.1)
        else {
            return error;
        };
        let record = state.reserved.remove(i);
        let a = &record.attachment;
        let owner = (a.network.clone(), a.container_id.clone(), a.ifname.clone());
        if let Err(save) = state.store.save(&state.records()) {
            // The record stays on disk with its intent: the next start drops it and its lease.
            warn!(container = %a.container_id, "dropping a reservation: {save}");
            state.unreleased.push(owner);
            return error;
        }
        self.release_or_keep(state, owner, error)
    }
}

impl Daemon {
    /// Gives the keeper copies of a port's queues, starting it if it is not running; a
    /// failure is logged (the port then waits for its helper after a restart).
    fn keep(&self, state: &State, record: &PortRecord, offloads: u32, copies: Vec<OwnedFd>) {
        let a = &record.attachment;
        let socket = keeper::socket_path(&state.config.node.state_dir);
        let kept = self.start_keeper(&socket).and_then(|()| {
            let key = kept_key(&a.container_id, &a.ifname);
            Ok(keeper::keep(&socket, &key, offloads, &copies)?)
        });
        if let Err(e) = kept {
            warn!(container = %a.container_id, "the queue keeper does not hold this port's queues; after a restart its helper must send them again: {e:#}");
        }
    }

    /// Starts the keeper (`vswitchd --config FILE --keep-queues`) unless it runs, in a process
    /// group of its own, and waits for it to answer.
    fn start_keeper(&self, socket: &std::path::Path) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        if keeper::is_running(socket) {
            return Ok(());
        }
        let exe = std::env::current_exe()?;
        let mut child = std::process::Command::new(exe)
            .arg("--config")
            .arg(&self.config_path)
            .arg("--keep-queues")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .spawn()?;
        // Reaped when it exits, so that it leaves no zombie behind while the daemon runs.
        std::thread::Builder::new()
            .name("keeper-wait".into())
            .spawn(move || child.wait())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !keeper::is_running(socket) {
            anyhow::ensure!(Instant::now() < deadline, "the queue keeper did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        info!(socket = %socket.display(), "queue keeper started");
        Ok(())
    }

    /// What the keeper holds, taken at start; empty when no keeper runs.
    pub(super) fn kept_queues(&self, state: &State) -> KeptQueues {
        let socket = keeper::socket_path(&state.config.node.state_dir);
        if !keeper::is_running(&socket) {
            return KeptQueues::new();
        }
        match keeper::give(&socket) {
            Ok(kept) => kept
                .into_iter()
                .map(|(key, offloads, fds)| (key, (offloads, fds)))
                .collect(),
            Err(e) => {
                warn!("taking the queues back from the keeper: {e}");
                KeptQueues::new()
            }
        }
    }

    /// Re-adopts a helper's port from the queues the keeper gave back.
    pub(super) fn readopt_kept(
        &self,
        state: &State,
        record: &PortRecord,
        kept: &mut KeptQueues,
    ) -> anyhow::Result<crate::switch::PortId> {
        let a = &record.attachment;
        let (offloads, fds) = kept
            .remove(&kept_key(&a.container_id, &a.ifname))
            .ok_or_else(|| anyhow::anyhow!("the queue keeper does not hold its queues"))?;
        let tap = handed_tap(record, &PlugRequest { offloads }, fds)?;
        self.plug_tap(state, record, tap)
    }

    /// Has the keeper close the queues no record claimed at start (their container was
    /// detached, or its namespace went, while no daemon ran).
    pub(super) fn forget_unclaimed(&self, state: &State, unclaimed: KeptQueues) {
        let socket = keeper::socket_path(&state.config.node.state_dir);
        for key in unclaimed.into_keys() {
            if let Err(e) = keeper::drop_kept(&socket, &key) {
                warn!("{e}");
            }
        }
    }

    /// Has the keeper close a port's queues (it was detached, or its attach undone).
    pub(super) fn forget_kept(&self, state: &State, record: &PortRecord) {
        let socket = keeper::socket_path(&state.config.node.state_dir);
        let a = &record.attachment;
        if keeper::is_running(&socket)
            && let Err(e) = keeper::drop_kept(&socket, &kept_key(&a.container_id, &a.ifname))
        {
            warn!(container = %a.container_id, "{e}");
        }
    }
}

/// Copies of a TAP's queue descriptors, for the keeper; none when they cannot be made.
fn copies_of(tap: &Tap) -> Vec<OwnedFd> {
    tap.queues()
        .iter()
        .map(OwnedFd::try_clone)
        .collect::<Result<_, _>>()
        .unwrap_or_default()
}

/// The TAP whose queues a helper sent for `record`: they must be queues of one TAP, named as
/// the attachment's interface.
fn handed_tap(record: &PortRecord, plug: &PlugRequest, fds: Vec<OwnedFd>) -> anyhow::Result<Tap> {
    let tap = Tap::from_queues(fds, offloads_of(plug))
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("the queues sent: {e}")))?;
    let a = &record.attachment;
    if tap.name() != a.ifname {
        anyhow::bail!(ApiError::new(
            ErrorKind::BadRequest,
            format!(
                "the queues sent are of {}, not of {} (the interface reserved)",
                tap.name(),
                a.ifname
            ),
        ));
    }
    Ok(tap)
}
