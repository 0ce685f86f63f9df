//! An attach as a transaction: it is done whole or not at all, whatever fails and whenever the
//! daemon dies.
//!
//! The steps, in order ([`AttachStep`]): lease the address; save the record with an
//! [`Intent`] (the attach in progress); create the TAP under a staging name in the daemon's
//! namespace; move it into the container's namespace under its name; configure it (MAC, MTU,
//! addresses, `lo` and the interface up, the default route); plug it into the datapath (and
//! make the NAT rules of its published ports); save the record without the intent (the
//! commit); write the container's resolv.conf (with `fleet.resolv_conf`); answer. The fleet
//! publishes the container with the next view, which only holds committed ports.
//!
//! A failure at any step undoes, in reverse, every step done: the port leaves the datapath,
//! [`attach::undo_interface`] removes the staged TAP, the container's interface (only if it is
//! ours) and brings `lo` back down if it was down, the record leaves the list, the lease is
//! released. A daemon killed before the commit leaves the record with its intent: the next
//! start undoes the attach the same way (and the lease goes with the record); killed after
//! it, the attach is done and the next start re-adopts it. A kill before the intent is saved
//! leaves at most a lease, which every start releases when no record holds it.
//!
//! Why undo rather than finish: the requester was never answered, so for it the attach
//! failed. A runtime (CNI) treats a failed ADD as nothing done and may place the container
//! elsewhere; a person retries. Finishing would give a container an interface and an address
//! nobody was told about. A retried attach after the undo starts afresh.
//!
//! An undo that cannot be completed now (the namespace cannot be looked at, netlink refuses)
//! keeps the record with its intent, and its lease, and is retried by every sweep.
//!
//! For the tests, a debug build honours `VSWITCH_TEST_FAIL_ATTACH_AT=STEP` (the attach fails
//! at that step) and `VSWITCH_TEST_KILL_ATTACH_AT=STEP` (the daemon kills itself with SIGKILL
//! there); a release build ignores both.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::OnceLock;

use anyhow::Context;
use netns::{NetNs, Netlink};
use tracing::{info, warn};

use super::{Daemon, Owner, Port, Recorded, SWEEP_INTERVAL, State, open_recorded};
use crate::control::api::{ApiError, Attachment, ErrorKind};
use crate::control::attach::{self, mac_for};
use crate::control::leases::Addresses;
use crate::control::state::{Intent, PortRecord};
use crate::io::Command;
use crate::switch::PortId;
use crate::wire::MacAddr;

/// Makes the attach fail at a step (debug builds only; for the tests).
pub const FAIL_ATTACH_ENV: &str = "VSWITCH_TEST_FAIL_ATTACH_AT";
/// Makes the daemon kill itself with SIGKILL at a step of an attach (debug builds only; for
/// the tests).
pub const KILL_ATTACH_ENV: &str = "VSWITCH_TEST_KILL_ATTACH_AT";

/// The steps of an attach, in the order they run. At a step, every step before it is done and
/// nothing of it or after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AttachStep {
    /// Lease the address.
    Lease,
    /// Save the record with its intent.
    Intent,
    /// Create the TAP under its staging name.
    Create,
    /// Move it into the container's namespace.
    Move,
    /// Address, route and bring it up.
    Configure,
    /// Plug it into the datapath.
    Plug,
    /// Save the record as done.
    Commit,
    /// Answer the request (after the commit: only a kill can happen here).
    Answer,
}

impl AttachStep {
    /// Every step, in order.
    pub const ALL: [AttachStep; 8] = [
        AttachStep::Lease,
        AttachStep::Intent,
        AttachStep::Create,
        AttachStep::Move,
        AttachStep::Configure,
        AttachStep::Plug,
        AttachStep::Commit,
        AttachStep::Answer,
    ];

    /// The step's name, as the test variables take it.
    pub fn name(self) -> &'static str {
        match self {
            AttachStep::Lease => "lease",
            AttachStep::Intent => "intent",
            AttachStep::Create => "create",
            AttachStep::Move => "move",
            AttachStep::Configure => "configure",
            AttachStep::Plug => "plug",
            AttachStep::Commit => "commit",
            AttachStep::Answer => "answer",
        }
    }
}

impl fmt::Display for AttachStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AttachStep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AttachStep::ALL
            .into_iter()
            .find(|step| step.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = AttachStep::ALL.iter().map(|s| s.name()).collect();
                format!("no attach step is named {s:?}: one of {}", names.join(", "))
            })
    }
}

/// Where the tests want an attach to fail or the daemon to die.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Hooks {
    fail_at: Option<AttachStep>,
    kill_at: Option<AttachStep>,
}

impl Hooks {
    /// The hooks the environment asks for: none in a release build.
    fn from_env() -> Self {
        if !cfg!(debug_assertions) {
            return Self::default();
        }
        let read = |name: &str| {
            let value = std::env::var(name).ok()?;
            match value.parse::<AttachStep>() {
                Ok(step) => {
                    warn!("{name}={step}: attaches are sabotaged at that step (test only)");
                    Some(step)
                }
                Err(e) => {
                    warn!("{name}: {e}; ignored");
                    None
                }
            }
        };
        let fail_at = read(FAIL_ATTACH_ENV).filter(|&step| {
            let after_commit = step == AttachStep::Answer;
            if after_commit {
                warn!("{FAIL_ATTACH_ENV}: nothing can fail after the commit; ignored");
            }
            !after_commit
        });
        Self {
            fail_at,
            kill_at: read(KILL_ATTACH_ENV),
        }
    }

    /// Called as an attach reaches `step`: dies or fails there when asked to.
    pub(super) fn reach(&self, step: AttachStep) -> anyhow::Result<()> {
        if self.kill_at == Some(step) {
            warn!("{KILL_ATTACH_ENV}: killing the daemon at attach step {step}");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        if self.fail_at == Some(step) {
            anyhow::bail!("{FAIL_ATTACH_ENV}: the attach was made to fail at step {step}");
        }
        Ok(())
    }
}

pub(super) fn hooks() -> &'static Hooks {
    static HOOKS: OnceLock<Hooks> = OnceLock::new();
    HOOKS.get_or_init(Hooks::from_env)
}

/// A validated attach request, for a container not attached yet, and its namespace.
pub(super) struct Plan {
    pub(super) wanted: Wanted,
    pub(super) ns: NetNs,
}

impl std::ops::Deref for Plan {
    type Target = Wanted;

    fn deref(&self) -> &Wanted {
        &self.wanted
    }
}

/// What a validated attach request asks for.
pub(super) struct Wanted {
    pub(super) container_id: String,
    pub(super) netns: String,
    pub(super) ifname: String,
    pub(super) network: String,
    pub(super) ip: Option<IpAddr>,
    pub(super) mac: Option<MacAddr>,
    pub(super) labels: std::collections::BTreeMap<String, String>,
    pub(super) qos: Option<super::super::policy::QosSetting>,
    /// Ports to publish on the host.
    pub(super) published: Vec<crate::control::gateway::PortMapping>,
}

/// What an attach in progress has done so far, to undo.
struct Done {
    owner: Owner,
    /// The record saved with its intent.
    record: Option<PortRecord>,
    /// The port in the datapath.
    port: Option<PortId>,
    /// Whether the NAT rules were made to publish its ports.
    published: bool,
}

impl Daemon {
    /// Runs an attach step by step; on any failure, undoes what was done and returns why.
    pub(super) fn attach_in_steps(
        &self,
        state: &mut State,
        plan: Plan,
    ) -> anyhow::Result<Attachment> {
        let hooks = hooks();
        // Left over from an attach whose undo could not finish: finish it first.
        if let Some(i) = state.undoing.iter().position(|r| {
            r.attachment.container_id == plan.container_id && r.attachment.ifname == plan.ifname
        }) {
            let record = state.undoing.remove(i);
            if let Err(e) = self.undo_recorded(state, record) {
                return Err(ApiError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "an earlier attach of {} {} is still being undone ({e:#}); try again",
                        plan.container_id, plan.ifname
                    ),
                )
                .into());
            }
        }
        let ns_id = plan.ns.id();
        if let Some(other) = state
            .records()
            .iter()
            .find(|r| r.netns_id == (ns_id.dev, ns_id.ino) && r.attachment.ifname == plan.ifname)
        {
            return Err(ApiError::new(
                ErrorKind::NameTaken,
                format!(
                    "{} in {} is the interface of container {}: choose another --ifname",
                    plan.ifname, plan.netns, other.attachment.container_id
                ),
            )
            .field("ifname")
            .into());
        }
        hooks.reach(AttachStep::Lease)?;
        let addresses =
            state
                .leases
                .allocate(&plan.network, &plan.container_id, &plan.ifname, plan.ip)?;
        let mut done = Done {
            owner: (
                plan.network.clone(),
                plan.container_id.clone(),
                plan.ifname.clone(),
            ),
            record: None,
            port: None,
            published: false,
        };
        match self.attach_leased(state, &plan, addresses, &mut done) {
            Ok(attachment) => {
                // After the commit: a failed attach never leaves a resolv.conf behind.
                self.fleet_attached(&attachment);
                info!(
                    container = %plan.container_id,
                    ifname = %plan.ifname,
                    address = %attachment.address,
                    "attached"
                );
                hooks.reach(AttachStep::Answer)?;
                Ok(attachment)
            }
            Err(e) => {
                let e = e.context(format!(
                    "attaching {} to {}",
                    plan.container_id, plan.network
                ));
                Err(self.roll_back(state, &plan.ns, done, e))
            }
        }
    }

    /// The steps after the lease, noting in `done` what there is to undo.
    fn attach_leased(
        &self,
        state: &mut State,
        plan: &Plan,
        addresses: Addresses,
        done: &mut Done,
    ) -> anyhow::Result<Attachment> {
        let hooks = hooks();
        let mut attachment = new_attachment(state, plan, &addresses)?;
        attachment.dns = self.fleet_name_server(attachment.gateway);
        let inside = Netlink::in_namespace(&plan.ns)?;
        let id = plan.ns.id();
        let mut record = PortRecord {
            attachment: attachment.clone(),
            netns_id: (id.dev, id.ino),
            intent: Some(attach::loopback(&inside)?),
            by_helper: false,
        };

        hooks.reach(AttachStep::Intent)?;
        let mut records = state.records();
        records.push(record.clone());
        state
            .store
            .save(&records)
            .map_err(|e| anyhow::Error::new(e).context("saving the attachment list"))?;
        done.record = Some(record.clone());

        hooks.reach(AttachStep::Create)?;
        let tap = attach::create_staged(
            &attachment,
            state.config.node.offloads,
            self.datapath.workers(),
        )?;
        hooks.reach(AttachStep::Move)?;
        attach::move_in(&attachment, &plan.ns)?;
        hooks.reach(AttachStep::Configure)?;
        attach::configure(&inside, &attachment)?;

        hooks.reach(AttachStep::Plug)?;
        let id = self.plug_tap(state, &record, tap)?;
        done.port = Some(id);
        if !attachment.published.is_empty() {
            // The NAT rules are made from the ports in the state: the port is there only for
            // that, and joins for good at the commit. A start undoes an unfinished attach
            // before it makes the rules, so a daemon killed from here on leaves none for it.
            done.published = true;
            self.publish_uncommitted(state, &record, id)?;
        }

        hooks.reach(AttachStep::Commit)?;
        record.intent = None;
        let mut records = state.records();
        records.push(record.clone());
        state
            .store
            .save(&records)
            .map_err(|e| anyhow::Error::new(e).context("saving the attachment list"))?;
        if let Some(id) = done.port.take() {
            state.ports.push(Port { record, id });
        }
        Ok(attachment)
    }

    /// Makes the NAT rules publish the ports of `record`, plugged as `id` and not committed
    /// yet. The rules are made from the ports in the state: the port is there only for that,
    /// and joins for good at the commit. A start undoes an unfinished attach before it makes
    /// the rules, so a daemon killed before the commit leaves none for it; whoever undoes the
    /// attach calls [`Daemon::sync_gateway`] again.
    pub(super) fn publish_uncommitted(
        &self,
        state: &mut State,
        record: &PortRecord,
        id: PortId,
    ) -> anyhow::Result<()> {
        state.ports.push(Port {
            record: record.clone(),
            id,
        });
        let synced = self.sync_gateway(state, false);
        state.ports.pop();
        synced.context("publishing its ports")
    }

    /// Undoes what `done` says was done, in reverse, and returns `error` with what could not be
    /// undone yet (it is retried by the sweep).
    fn roll_back(
        &self,
        state: &mut State,
        ns: &NetNs,
        done: Done,
        error: anyhow::Error,
    ) -> anyhow::Error {
        if let Some(id) = done.port {
            // A stopped datapath takes the port with it: the daemon is exiting.
            let _ = self.datapath.ask(|reply| Command::RemovePort { id, reply });
        }
        if done.published
            && let Err(e) = self.sync_gateway(state, false)
        {
            warn!("undoing an attach: removing the rules of its published ports: {e:#}");
        }
        if let Some(record) = done.record {
            let a = &record.attachment;
            if let Err(e) = attach::undo_interface(a, Some(ns), &intent_of(&record)) {
                warn!(container = %a.container_id, "undoing an attach, retrying: {e:#}");
                state.undoing.push(record);
                return error.context(format!(
                    "and what it set up could not all be removed yet ({e:#}); its address \
                     stays leased and the removal is retried every {}s",
                    SWEEP_INTERVAL.as_secs()
                ));
            }
            // The record goes before the lease. If it cannot go (a full disk), both stay, and
            // the sweep tries again.
            if let Err(save) = state.store.save(&state.records()) {
                warn!(container = %a.container_id, "undoing an attach: {save}");
                state.undoing.push(record);
                return error.context(format!(
                    "and the attachment could not be removed from the list ({save}); its \
                     address stays leased until it can be"
                ));
            }
        }
        self.release_or_keep(state, done.owner, error)
    }

    /// Undoes the attach of a record saved with its intent (found at start, or kept by a
    /// failed undo): what it set up, then the record; the lease is released once no record
    /// holds it. On failure the record is not in `state` any more: the caller keeps it.
    pub(super) fn undo_recorded(
        &self,
        state: &mut State,
        record: PortRecord,
    ) -> anyhow::Result<()> {
        if let Err(e) = undo_setup(&record) {
            state.undoing.push(record);
            return Err(e);
        }
        let a = &record.attachment;
        let owner = (a.network.clone(), a.container_id.clone(), a.ifname.clone());
        if let Err(e) = state.store.save(&state.records()) {
            state.undoing.push(record);
            return Err(anyhow::Error::new(e).context("saving the attachment list"));
        }
        info!(container = %owner.1, ifname = %owner.2, "unfinished attach undone");
        state.unreleased.push(owner);
        self.retry_releases(state);
        Ok(())
    }

    /// Retries the undo of every attach whose undo could not finish before.
    pub(super) fn retry_undos(&self, state: &mut State) {
        for record in std::mem::take(&mut state.undoing) {
            let container = record.attachment.container_id.clone();
            if let Err(e) = self.undo_recorded(state, record) {
                warn!(%container, "undoing an unfinished attach, again: {e:#}");
            }
        }
    }
}

/// The attachment `wanted` gets with the leased `addresses` (without a name server: the caller
/// names the fleet's, if any).
pub(super) fn new_attachment(
    state: &State,
    wanted: &Wanted,
    addresses: &Addresses,
) -> anyhow::Result<Attachment> {
    let network = state
        .networks
        .get(&wanted.network)
        .ok_or_else(|| anyhow::anyhow!("network {:?} went away", wanted.network))?;
    let IpAddr::V4(v4) = addresses.v4.addr() else {
        anyhow::bail!("IPv4 address expected from the pool, got {}", addresses.v4);
    };
    Ok(Attachment {
        container_id: wanted.container_id.clone(),
        netns: wanted.netns.clone(),
        ifname: wanted.ifname.clone(),
        network: wanted.network.clone(),
        vni: network.vni.get(),
        mac: wanted.mac.unwrap_or_else(|| mac_for(v4)),
        address: addresses.v4,
        address6: addresses.v6,
        gateway: IpAddr::V4(network.gateway),
        mtu: network.config.mtu(),
        labels: wanted.labels.clone(),
        qos: wanted.qos,
        published: wanted.published.clone(),
        dns: None,
    })
}

/// The intent of a record; one without (never undone) leaves `lo` as it is.
fn intent_of(record: &PortRecord) -> Intent {
    record.intent.clone().unwrap_or(Intent {
        lo_was_up: true,
        lo_addresses: Vec::new(),
    })
}

/// Takes back what the attach of a record saved with its intent set up in the namespaces.
pub(super) fn undo_setup(record: &PortRecord) -> anyhow::Result<()> {
    let a = &record.attachment;
    let before = intent_of(record);
    match open_recorded(record) {
        Recorded::Present(ns) => Ok(attach::undo_interface(a, Some(&ns), &before)?),
        Recorded::Gone(_) => Ok(attach::undo_interface(a, None, &before)?),
        Recorded::Unknown(e) => Err(e.context("cannot tell whether the namespace is still there")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_named_in_order_and_parse_back() {
        for (i, step) in AttachStep::ALL.iter().enumerate() {
            assert_eq!(step.name().parse::<AttachStep>(), Ok(*step));
            if i > 0 {
                assert!(AttachStep::ALL[i - 1] < *step);
            }
        }
        let e = "later".parse::<AttachStep>().unwrap_err();
        assert!(e.contains("lease, intent, create"), "{e}");
    }

    #[test]
    fn a_hook_fails_only_its_own_step() {
        let hooks = Hooks {
            fail_at: Some(AttachStep::Move),
            kill_at: None,
        };
        assert!(hooks.reach(AttachStep::Create).is_ok());
        let e = hooks.reach(AttachStep::Move).unwrap_err().to_string();
        assert!(e.contains("step move"), "{e}");
        assert!(hooks.reach(AttachStep::Configure).is_ok());
        assert_eq!(Hooks::default().reach(AttachStep::Lease).ok(), Some(()));
    }
}
