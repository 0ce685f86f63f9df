//! The etcd store against a real etcd on loopback: nodes claim disjoint subnets and lease
//! disjoint addresses under concurrent load, a stopped node's subnet is freed after the TTL, and
//! a lapsed claim is restored while nobody else took it.

#![allow(clippy::unwrap_used)]

#[path = "support/etcd_server.rs"]
mod etcd_server;

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use etcd_server::EtcdServer;
use ipam::{EtcdConfig, EtcdStore, Owner, Pool, PoolConfig, Store};
use ipnet::IpNet;

const TTL_SECS: u64 = 2;
const PREFIX: &str = "/test/ipam/";

fn store(server: &EtcdServer) -> Arc<dyn Store> {
    Arc::new(
        EtcdStore::connect(&EtcdConfig {
            endpoints: vec![server.endpoint.clone()],
            prefix: PREFIX.into(),
            ttl_secs: TTL_SECS,
            timeout_secs: 5,
        })
        .unwrap(),
    )
}

fn pool(server: &EtcdServer, node: &str) -> Pool {
    Pool::open(store(server), &PoolConfig::default(), node).unwrap()
}

/// Whether the subnet's claim key exists, read with a plain etcd client.
fn claimed(server: &EtcdServer, subnet: IpNet) -> bool {
    let key = format!("{PREFIX}ipam/default/subnet/{}", subnet.network());
    server.with_client(|mut client| async move {
        !client.get(key, None).await.unwrap().kvs().is_empty()
    })
}

#[test]
fn three_nodes_get_disjoint_subnets_and_addresses_under_load() {
    let server = EtcdServer::start();
    let server = &server;
    // Three nodes claim their subnets at the same time; node-0 runs two processes' worth of
    // stores, which contend for the same subnet's addresses.
    let pools: Vec<Pool> = thread::scope(|s| {
        let handles: Vec<_> = ["node-0", "node-0", "node-1", "node-2"]
            .into_iter()
            .map(|n| s.spawn(move || pool(server, n)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let subnets: HashSet<IpNet> = pools.iter().map(|p| p.node_subnet()).collect();
    assert_eq!(
        subnets.len(),
        3,
        "node-0's two stores share one subnet, the others differ"
    );
    assert_eq!(pools[0].node_subnet(), pools[1].node_subnet());

    let leases: Vec<ipam::Lease> = thread::scope(|s| {
        let mut handles = Vec::new();
        for (p, pool) in pools.iter().enumerate() {
            for t in 0..2 {
                handles.push(s.spawn(move || {
                    let mut out = Vec::new();
                    for i in 0..15 {
                        let owner = Owner::new(format!("p{p}-t{t}-{i}"), "eth0").unwrap();
                        out.push(pool.allocate(&owner, None).unwrap());
                        if i % 4 == 0 {
                            pool.release(&owner).unwrap();
                            out.pop();
                        }
                    }
                    out
                }));
            }
        }
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let addresses: HashSet<_> = leases.iter().map(|l| l.address).collect();
    assert_eq!(addresses.len(), leases.len(), "an address was leased twice");
    for lease in &leases {
        assert!(lease.node_subnet.contains(&lease.address));
        let node = pools
            .iter()
            .find(|p| p.node_subnet() == lease.node_subnet)
            .unwrap();
        assert_eq!(lease.gateway, node.gateway());
    }
    let audit = pools[2].audit().unwrap();
    assert!(audit.problems.is_empty(), "{:?}", audit.problems);
    assert_eq!(audit.leases, leases.len());
    let node0: usize = pools[0].leases().unwrap().len();
    assert_eq!(node0, leases.iter().filter(|l| l.node == "node-0").count());
}

#[test]
fn a_stopped_node_loses_its_subnet_after_the_ttl() {
    let server = EtcdServer::start();
    let a = pool(&server, "a");
    let b = pool(&server, "b");
    let c = pool(&server, "c");
    let b_subnet = b.node_subnet();
    b.allocate(&Owner::new("on-b", "eth0").unwrap(), None)
        .unwrap();

    drop(b);
    let stopped = Instant::now();
    let d = pool(&server, "d");
    assert_ne!(
        d.node_subnet(),
        b_subnet,
        "the claim outlives its process by the TTL"
    );
    while claimed(&server, b_subnet) {
        assert!(
            stopped.elapsed() < Duration::from_secs(TTL_SECS + 5),
            "b's subnet is still claimed {:?} after it stopped",
            stopped.elapsed()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let freed_after = stopped.elapsed();
    assert!(
        freed_after >= Duration::from_millis(TTL_SECS * 1000 / 2),
        "freed after {freed_after:?}, before the TTL could pass"
    );
    let e = pool(&server, "e");
    assert_eq!(e.node_subnet(), b_subnet, "the first free subnet is b's");

    // Live nodes keep their claims well past the TTL.
    thread::sleep(Duration::from_secs(TTL_SECS + 1));
    for live in [&a, &c, &d, &e] {
        assert!(claimed(&server, live.node_subnet()));
        live.allocate(&Owner::new("still-here", "eth0").unwrap(), None)
            .unwrap();
    }
    // b comes back: its subnet is taken, so it gets another one, and its old lease is still
    // there for it to release.
    let b = pool(&server, "b");
    assert_ne!(b.node_subnet(), b_subnet);
    assert_eq!(b.gc(&[]).unwrap().len(), 1);
}

#[test]
fn a_lapsed_claim_is_restored_while_nobody_took_it() {
    let server = EtcdServer::start();
    let a = pool(&server, "a");
    let subnet = a.node_subnet();
    // Revoke every lease behind the store's back, as if etcd had expired it.
    server.with_client(|mut client| async move {
        for lease in client.leases().await.unwrap().leases() {
            client.lease_revoke(lease.id()).await.unwrap();
        }
    });
    assert!(!claimed(&server, subnet));
    let deadline = Instant::now() + Duration::from_secs(TTL_SECS + 5);
    while !claimed(&server, subnet) {
        assert!(Instant::now() < deadline, "the claim was not restored");
        thread::sleep(Duration::from_millis(100));
    }
    a.allocate(&Owner::new("after", "eth0").unwrap(), None)
        .unwrap();
}

#[test]
fn usable_and_droppable_inside_a_tokio_runtime() {
    let server = EtcdServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Called straight from async code: blocks this worker, never panics.
        let a = pool(&server, "a");
        let owner = Owner::new("in-async", "eth0").unwrap();
        let lease = a.allocate(&owner, None).unwrap();
        // And from spawn_blocking, as the daemon does.
        let b = tokio::task::spawn_blocking(move || {
            let got = a.get(&owner).unwrap();
            drop(a);
            got
        })
        .await
        .unwrap();
        assert_eq!(b, Some(lease));
    });
}

#[test]
fn unreachable_etcd_is_an_error_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let result = EtcdStore::connect(&EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        timeout_secs: 1,
        ..EtcdConfig::default()
    });
    let err = result.expect_err("nothing listens there");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(!err.to_string().is_empty());
}
