//! The etcd store: shared state for a fleet, with optimistic transactions and a session lease.
//!
//! A transaction body runs against live reads; every key it reads with `get` is recorded with its
//! `mod_revision`, and the commit is one etcd `Txn` that applies the buffered writes only if each
//! of those keys is still at the revision seen (`0` for an absent key, so creating a key is a
//! compare-and-swap). When another writer got in between, the body runs again. Two allocators can
//! therefore never claim the same address, whatever nodes they run on.
//!
//! Keys written with [`Txn::put_session`] are bound to one etcd lease per store, granted with the
//! configured TTL and kept alive by this process. When the process stops, they vanish a TTL later.
//! If the lease expires while the process lives (etcd unreachable for longer than the TTL), a new
//! lease is granted and the session keys are written again where nobody took them meanwhile.
//!
//! etcd-client is asynchronous; this store runs it on a runtime of its own, on a dedicated thread,
//! so its blocking API can be called from any thread, inside a tokio runtime or not.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn as EtcdTxnReq, TxnOp,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{Backing, Body, OverlayTxn, Store};
use crate::error::Error;

/// How many times a transaction is tried against concurrent writers before giving up.
const MAX_ATTEMPTS: u32 = 100;
/// Entries fetched per request by a scan.
const SCAN_PAGE: i64 = 1000;

/// Where the etcd store finds its cluster and how it behaves.
///
/// In TOML (every key optional):
///
/// ```toml
/// endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
/// prefix = "/vswitch/ipam/"
/// ttl_secs = 10
/// timeout_secs = 5
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members.
    pub endpoints: Vec<String>,
    /// Prefix of every key this store writes; fleets sharing one etcd use distinct prefixes.
    pub prefix: String,
    /// Lifetime of a node's subnet claim after its process stops, in seconds (at least 2).
    pub ttl_secs: u64,
    /// Time allowed for each request to etcd, in seconds.
    pub timeout_secs: u64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: "/vswitch/ipam/".to_owned(),
            ttl_secs: 10,
            timeout_secs: 5,
        }
    }
}

/// A store in etcd.
pub struct EtcdStore {
    inner: Arc<Inner>,
    shutdown: Option<oneshot::Sender<()>>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.inner.prefix)
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

struct Inner {
    rt: tokio::runtime::Handle,
    client: Client,
    prefix: String,
    ttl: i64,
    timeout: Duration,
    session: Mutex<Session>,
}

/// The store's lease and the keys bound to it.
struct Session {
    lease: i64,
    keys: BTreeMap<String, Vec<u8>>,
}

impl EtcdStore {
    /// Connects to etcd, grants the session lease and starts keeping it alive.
    pub fn connect(config: &EtcdConfig) -> Result<Self, Error> {
        let (handle_tx, handle_rx) = mpsc::sync_channel(1);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("ipam-etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                if handle_tx.send(Ok(rt.handle().clone())).is_ok() {
                    let _ = rt.block_on(shutdown_rx);
                }
            })
            .map_err(|source| Error::Io {
                what: "starting the etcd worker thread",
                source,
            })?;
        let rt = handle_rx
            .recv()
            .map_err(|_| Error::ShutDown)?
            .map_err(|source| Error::Io {
                what: "building the etcd runtime",
                source,
            })?;
        let timeout = Duration::from_secs(config.timeout_secs.max(1));
        let endpoints = config.endpoints.clone();
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let client = run(&rt, timeout, async move {
            Ok(Client::connect(endpoints, Some(options)).await?)
        })?;
        let ttl = config.ttl_secs.clamp(2, i64::MAX as u64) as i64;
        let mut c = client.clone();
        let lease = run(&rt, timeout, async move {
            Ok(c.lease_grant(ttl, None).await?.id())
        })?;
        let inner = Arc::new(Inner {
            rt,
            client,
            prefix: config.prefix.clone(),
            ttl,
            timeout,
            session: Mutex::new(Session {
                lease,
                keys: BTreeMap::new(),
            }),
        });
        inner.rt.spawn(keep_alive(Arc::downgrade(&inner)));
        Ok(Self {
            inner,
            shutdown: Some(shutdown_tx),
            worker: Some(worker),
        })
    }
}

impl Drop for EtcdStore {
    /// Stops the worker, and with it the keepalive: session keys vanish a TTL later.
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Runs a future on the store's runtime and waits for it, from any thread.
fn run<T, F>(rt: &tokio::runtime::Handle, timeout: Duration, fut: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Error>> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    rt.spawn(async move {
        let out = match tokio::time::timeout(timeout, fut).await {
            Ok(out) => out,
            Err(_) => Err(Error::EtcdTimeout {
                secs: timeout.as_secs(),
            }),
        };
        let _ = tx.send(out);
    });
    rx.recv().map_err(|_| Error::ShutDown)?
}

impl Inner {
    fn run<T, F>(&self, fut: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, Error>> + Send + 'static,
    {
        run(&self.rt, self.timeout, fut)
    }

    /// The session, also after a panic elsewhere: its fields are always consistent.
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lease(&self) -> i64 {
        self.session().lease
    }

    fn full(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    fn strip(&self, key: &[u8]) -> Result<String, Error> {
        let key = std::str::from_utf8(key).map_err(|e| Error::corrupt("(not UTF-8)", e))?;
        key.strip_prefix(&self.prefix)
            .map(str::to_owned)
            .ok_or_else(|| Error::corrupt(key, "outside the store's prefix"))
    }

    /// Entries under `prefix`, at most `limit` of them, paged and read at one revision.
    fn range_paged(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let full = self.full(prefix);
        let end = prefix_end(full.as_bytes());
        let mut client = self.client.kv_client();
        let stored = self.run(async move {
            let mut out = Vec::new();
            let mut start = full.into_bytes();
            let mut revision = 0;
            loop {
                let want = (limit - out.len()).min(SCAN_PAGE as usize) as i64;
                let options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(want)
                    .with_revision(revision);
                let resp = client.get(start.clone(), Some(options)).await?;
                if revision == 0 {
                    revision = resp.header().map_or(0, |h| h.revision());
                }
                for kv in resp.kvs() {
                    out.push((kv.key().to_vec(), kv.value().to_vec()));
                }
                match out.last() {
                    Some((last, _)) if resp.more() && out.len() < limit => {
                        start = last.clone();
                        start.push(0);
                    }
                    _ => return Ok(out),
                }
            }
        })?;
        stored
            .into_iter()
            .map(|(k, v)| Ok((self.strip(&k)?, v)))
            .collect()
    }

    /// Grants a new lease if `expired` is still the current one, and writes the session keys
    /// again wherever they are absent.
    fn renew(&self, expired: i64) -> Result<(), Error> {
        let mut client = self.client.clone();
        let ttl = self.ttl;
        let lease = self.run(async move { Ok(client.lease_grant(ttl, None).await?.id()) })?;
        let keys = {
            let mut session = self.session();
            if session.lease != expired {
                drop(session);
                let mut client = self.client.clone();
                let _ = self.run(async move { Ok(client.lease_revoke(lease).await.map(|_| ())?) });
                return Ok(());
            }
            session.lease = lease;
            session.keys.clone()
        };
        for (key, value) in keys {
            let full = self.full(&key);
            let mut client = self.client.clone();
            self.run(async move {
                let txn = EtcdTxnReq::new()
                    .when([Compare::version(full.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        full,
                        value,
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                client.txn(txn).await?;
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// Keeps the session lease alive until the store is dropped; grants a new one if it expired.
async fn keep_alive(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let lease = strong.lease();
        let mut client = strong.client.clone();
        let period = Duration::from_millis((strong.ttl as u64 * 1000 / 3).max(500));
        let timeout = strong.timeout;
        drop(strong);
        if let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await {
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(timeout, stream.message()).await {
                    Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => {
                        if let Some(strong) = inner.upgrade() {
                            let _ = tokio::task::spawn_blocking(move || strong.renew(lease)).await;
                        }
                        break;
                    }
                    _ => break,
                }
                tokio::time::sleep(period).await;
                if inner.strong_count() == 0 {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

enum Outcome {
    Committed,
    Conflict,
    LeaseExpired(i64),
}

/// Commits a transaction: its writes, provided that every key it read with `get` is unchanged.
fn commit(inner: &Inner, txn: OverlayTxn<'_, Inner>) -> Result<Outcome, Error> {
    if txn.overlay.is_empty() {
        return Ok(Outcome::Committed);
    }
    let lease = inner.lease();
    let compares: Vec<Compare> = txn
        .reads
        .iter()
        .map(|(k, rev)| Compare::mod_revision(inner.full(k), CompareOp::Equal, *rev))
        .collect();
    let mut session_keys = Vec::new();
    let ops: Vec<TxnOp> = txn
        .overlay
        .into_writes()
        .map(|(k, w)| match w {
            Some((v, true)) => {
                session_keys.push((k.clone(), v.clone()));
                TxnOp::put(inner.full(&k), v, Some(PutOptions::new().with_lease(lease)))
            }
            Some((v, false)) => TxnOp::put(inner.full(&k), v, None),
            None => TxnOp::delete(inner.full(&k), None),
        })
        .collect();
    let mut client = inner.client.kv_client();
    let request = EtcdTxnReq::new().when(compares).and_then(ops);
    let result = inner.run(async move { Ok(client.txn(request).await?) });
    match result {
        Ok(resp) if resp.succeeded() => {
            inner.session().keys.extend(session_keys);
            Ok(Outcome::Committed)
        }
        Ok(_) => Ok(Outcome::Conflict),
        Err(Error::Etcd(etcd_client::Error::GRpcStatus(status)))
            if status.message().contains("lease not found") =>
        {
            Ok(Outcome::LeaseExpired(lease))
        }
        Err(e) => Err(e),
    }
}

impl Backing for Inner {
    fn fetch(&self, key: &str) -> Result<(i64, Option<Vec<u8>>), Error> {
        let full = self.full(key);
        let mut client = self.client.kv_client();
        self.run(async move {
            let resp = client.get(full, None).await?;
            Ok(resp.kvs().first().map_or((0, None), |kv| {
                (kv.mod_revision(), Some(kv.value().to_vec()))
            }))
        })
    }

    fn range(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, Error> {
        self.range_paged(prefix, limit)
    }
}

impl Store for EtcdStore {
    fn transact(&self, body: &mut Body<'_>) -> Result<(), Error> {
        let random = RandomState::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let mut txn = OverlayTxn::new(self.inner.as_ref());
            body(&mut txn)?;
            match commit(&self.inner, txn)? {
                Outcome::Committed => return Ok(()),
                Outcome::LeaseExpired(lease) => self.inner.renew(lease)?,
                Outcome::Conflict => {
                    let cap = u64::from(attempt.min(20)) * 1000;
                    let jitter = random.hash_one(attempt) % cap;
                    std::thread::sleep(Duration::from_micros(jitter));
                }
            }
        }
        Err(Error::Contention {
            attempts: MAX_ATTEMPTS,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn default_config_matches_documentation() {
        let c = EtcdConfig::default();
        assert_eq!(c.prefix, "/vswitch/ipam/");
        assert_eq!(c.ttl_secs, 10);
        let parsed: EtcdConfig =
            serde_json::from_str(r#"{"endpoints":["http://10.0.0.1:2379"]}"#).unwrap();
        assert_eq!(parsed.endpoints, ["http://10.0.0.1:2379"]);
        assert_eq!(parsed.timeout_secs, 5);
    }
}
