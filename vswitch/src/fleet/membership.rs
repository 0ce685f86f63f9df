//! The etcd session: this node in the fleet, and the fleet as this node sees it.
//!
//! One session at a time: connect, grant a lease of the configured TTL, write this node's
//! record and endpoints under it (deleting endpoints of ours that are no longer attached:
//! leftovers of a previous run), list the fleet, hand the plan to the [`Sink`], then watch
//! from the listing's revision while keeping the lease alive and writing local changes.
//!
//! Any error (etcd gone, the lease lost, the watch cancelled by a compaction) ends the session;
//! the sink is told the store is unreachable, and a new session starts after [`RETRY`]. Nothing
//! is removed meanwhile: peers and pinned endpoints stay as they were, and traffic flows. The
//! next session lists the fleet again, so a change missed while cut off is applied then. It
//! writes this node's records under its new lease before revoking the old one (if it still
//! lives), so the other nodes never see this node leave for a reconnection.
//!
//! When the daemon stops on purpose, the lease is revoked: the others remove this node at once
//! instead of a TTL later.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use etcd_client::{
    Client, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions, WatchOptions,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::record::{EndpointRecord, Keys, NodeRecord};
use super::registry::{Change, Registry};

/// Pause between two sessions.
pub const RETRY: Duration = Duration::from_secs(1);
/// HTTP/2 keepalive on the etcd connection: a silent etcd is noticed within this plus the
/// request timeout.
const CONNECTION_KEEPALIVE: Duration = Duration::from_secs(2);

/// Where the fleet's etcd is and how the session behaves.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Client URLs of the etcd members.
    pub endpoints: Vec<String>,
    /// The store prefix (`/vswitch` by default); fleet keys live under `PREFIX/fleet/`.
    pub prefix: String,
    /// The lease's lifetime.
    pub ttl: Duration,
    /// Time allowed for each request.
    pub timeout: Duration,
}

/// What this node publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Local {
    /// Its record.
    pub node: NodeRecord,
    /// Its attached containers.
    pub endpoints: Vec<EndpointRecord>,
}

/// Where the session sends what it learns.
pub trait Sink: Send + Sync {
    /// Makes these changes here (in order); `registry` holds the whole fleet as now known.
    fn apply(&self, changes: Vec<Change>, registry: &Registry);
    /// Whether etcd answers.
    fn store_reachable(&self, reachable: bool);
}

/// Runs sessions until `stop` changes (or its sender goes), then revokes the lease.
pub async fn run(
    config: MembershipConfig,
    mut local: watch::Receiver<Local>,
    sink: Arc<dyn Sink>,
    mut stop: watch::Receiver<bool>,
) {
    let me = local.borrow().node.name.clone();
    let keys = Keys::new(&config.prefix);
    let mut registry = Registry::new(&me, keys.clone());
    let mut held: Option<(Client, i64)> = None;
    let mut reachable: Option<bool> = None;
    loop {
        let mut session = Session {
            config: &config,
            keys: &keys,
            local: &mut local,
            registry: &mut registry,
            sink: &*sink,
            held: &mut held,
            reachable: &mut reachable,
        };
        let ended = tokio::select! {
            ended = session.run() => ended,
            _ = stop.changed() => break,
        };
        let Err(e) = ended;
        if reachable != Some(false) {
            warn!(
                "fleet: etcd unreachable; peers and endpoints stay as they are and traffic \
                 flows; retrying every {}s: {e:#}",
                RETRY.as_secs()
            );
            sink.store_reachable(false);
            reachable = Some(false);
        } else {
            debug!("fleet: etcd still unreachable: {e:#}");
        }
        if local.has_changed().is_err() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.changed() => break,
        }
    }
    if let Some((mut client, lease)) = held {
        match timed(config.timeout, client.lease_revoke(lease)).await {
            Ok(_) => info!("fleet: left (lease revoked)"),
            Err(e) => debug!("fleet: revoking the lease on the way out: {e:#}"),
        }
    }
}

/// Awaits `future` for at most `limit`.
async fn timed<T, E>(
    limit: Duration,
    future: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(limit, future).await {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("etcd did not answer within {limit:?}"),
    }
}

struct Session<'a> {
    config: &'a MembershipConfig,
    keys: &'a Keys,
    local: &'a mut watch::Receiver<Local>,
    registry: &'a mut Registry,
    sink: &'a dyn Sink,
    held: &'a mut Option<(Client, i64)>,
    reachable: &'a mut Option<bool>,
}

/// What of ours is in etcd now, by key, with the value written (empty: rewrite it).
#[derive(Default)]
struct Published {
    node: Option<Vec<u8>>,
    endpoints: BTreeMap<String, Vec<u8>>,
}

impl Session<'_> {
    async fn run(&mut self) -> anyhow::Result<Infallible> {
        let t = self.config.timeout;
        let options = ConnectOptions::new()
            .with_connect_timeout(t)
            .with_keep_alive(CONNECTION_KEEPALIVE, t)
            .with_keep_alive_while_idle(true);
        let mut client = timed(
            t,
            Client::connect(self.config.endpoints.clone(), Some(options)),
        )
        .await
        .context("connecting to etcd")?;
        let ttl = self.config.ttl.as_secs().max(2) as i64;
        let lease = timed(t, client.lease_grant(ttl, None))
            .await
            .context("granting the membership lease")?
            .id();
        let previous = self.held.replace((client.clone(), lease));
        let (mut keeper, mut acks) = timed(t, client.lease_keep_alive(lease))
            .await
            .context("keeping the lease alive")?;

        // Ours in etcd now (a previous run's, or this run's before an outage).
        let me = self.local.borrow().node.name.clone();
        let mine = timed(
            t,
            client.get(
                self.keys.endpoints_of(&me),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await
        .context("listing this node's endpoints")?;
        let mut published = Published::default();
        for kv in mine.kvs() {
            if let Ok(key) = kv.key_str() {
                published.endpoints.insert(key.to_owned(), Vec::new());
            }
        }
        let current = self.local.borrow_and_update().clone();
        self.publish(&mut client, lease, &current, &mut published)
            .await?;
        if let Some((mut old_client, old)) = previous
            && old != lease
        {
            let _ = timed(t, old_client.lease_revoke(old)).await;
        }

        let listing = timed(
            t,
            client.get(self.keys.root(), Some(GetOptions::new().with_prefix())),
        )
        .await
        .context("listing the fleet")?;
        let revision = listing.header().map_or(0, |h| h.revision());
        self.registry
            .replace(listing.kvs().iter().map(|kv| (kv.key(), kv.value())));
        let plan = self.registry.plan();
        self.sink.apply(plan, self.registry);
        if *self.reachable != Some(true) {
            info!(
                nodes = self.registry.nodes().len(),
                revision, "fleet: registered in etcd and listed the fleet"
            );
            self.sink.store_reachable(true);
            *self.reachable = Some(true);
        }

        let mut watch = timed(
            t,
            client.watch(
                self.keys.root(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await
        .context("watching the fleet")?;
        let mut keepalive = tokio::time::interval(Duration::from_secs((ttl as u64 / 3).max(1)));
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = keepalive.tick() => {
                    timed(t, keeper.keep_alive()).await.context("renewing the lease")?;
                    let ack = timed(t, acks.message())
                        .await
                        .context("renewing the lease")?
                        .context("the lease's renewal stream ended")?;
                    if ack.ttl() <= 0 {
                        anyhow::bail!("the membership lease expired");
                    }
                }
                message = watch.message() => {
                    let response = message
                        .context("watching the fleet")?
                        .context("the watch ended")?;
                    if response.canceled() {
                        anyhow::bail!(
                            "the watch was cancelled (compacted at revision {}): listing again",
                            response.compact_revision()
                        );
                    }
                    let mut changed = false;
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        match event.event_type() {
                            EventType::Put => self.registry.put(kv.key(), kv.value()),
                            EventType::Delete => self.registry.delete(kv.key()),
                        }
                        changed = true;
                    }
                    if changed {
                        let plan = self.registry.plan();
                        self.sink.apply(plan, self.registry);
                    }
                }
                changed = self.local.changed() => {
                    changed.context("the daemon stopped")?;
                    let current = self.local.borrow_and_update().clone();
                    self.publish(&mut client, lease, &current, &mut published).await?;
                }
            }
        }
    }

    /// Writes what changed of ours under `lease` and deletes what is no longer ours.
    async fn publish(
        &self,
        client: &mut Client,
        lease: i64,
        local: &Local,
        published: &mut Published,
    ) -> anyhow::Result<()> {
        let t = self.config.timeout;
        let put = || Some(PutOptions::new().with_lease(lease));
        let node = serde_json::to_vec(&local.node)?;
        if published.node.as_ref() != Some(&node) {
            timed(
                t,
                client.put(self.keys.node(&local.node.name), node.clone(), put()),
            )
            .await
            .context("writing this node's record")?;
            published.node = Some(node);
        }
        let mut wanted = BTreeMap::new();
        for endpoint in &local.endpoints {
            wanted.insert(self.keys.endpoint(endpoint), serde_json::to_vec(endpoint)?);
        }
        for (key, value) in &wanted {
            if published.endpoints.get(key) != Some(value) {
                timed(t, client.put(key.clone(), value.clone(), put()))
                    .await
                    .with_context(|| format!("writing {key}"))?;
                published.endpoints.insert(key.clone(), value.clone());
            }
        }
        let gone: Vec<String> = published
            .endpoints
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            timed(t, client.delete(key.clone(), None::<DeleteOptions>))
                .await
                .with_context(|| format!("deleting {key}"))?;
            published.endpoints.remove(&key);
        }
        Ok(())
    }
}
