//! Several datapath workers per daemon: flows spread over them and still arrive whole and in
//! order, every worker forwards to MACs another learned, and containers survive a restart with
//! a different number of workers.

use std::thread;

use vswitch::control::api::{Reply, Request, StatusView};
use vswitch_e2e::{Lab, NetworkSpec, fdb, reaches, tcp_transfer};

fn status(lab: &Lab, host: usize) -> StatusView {
    match lab.call(host, &Request::Status).expect("vswitch status") {
        Reply::Status(status) => *status,
        other => panic!("unexpected reply {other:?}"),
    }
}

fn lab_with_workers(tag: &str, workers: usize) -> Lab {
    let mut lab = Lab::new(tag).expect("creating the lab");
    for _ in 0..2 {
        lab.add_host(vswitch_e2e::HostKind::Vswitch)
            .expect("adding a host");
    }
    for host in 0..2 {
        lab.start_vswitchd_with(
            host,
            &[NetworkSpec::DEFAULT],
            &format!("workers = {workers}"),
            "",
        )
        .expect("starting vswitchd");
    }
    lab
}

#[test]
fn flows_spread_over_workers_and_arrive_whole() {
    let mut lab = lab_with_workers("wk", 3);
    let a = lab.add_container(0, "default", None).unwrap();
    let b = lab.add_container(1, "default", None).unwrap();
    let c = lab.add_container(1, "default", None).unwrap();
    assert!(reaches(&lab.containers[a].ns, lab.containers[b].ip));
    assert!(reaches(&lab.containers[c].ns, lab.containers[a].ip));

    // Drops before now are the flood of a container's first multicast to a host that had no
    // container yet (`no_members`): counted from here on, the flows must lose nothing.
    let drops_before: Vec<u64> = (0..2)
        .map(|host| status(&lab, host).traffic.drops)
        .collect();

    // Sixteen connections at once, half to each container: each a flow of its own.
    let transfers: Vec<_> = (0..16)
        .map(|i| {
            let from = lab.containers[a].ns.clone();
            let to = &lab.containers[if i % 2 == 0 { b } else { c }];
            let (to_ns, to_ip) = (to.ns.clone(), to.ip);
            thread::spawn(move || tcp_transfer(&from, &to_ns, to_ip, 2 << 20))
        })
        .collect();
    for transfer in transfers {
        transfer.join().expect("a transfer failed");
    }

    for (host, before) in drops_before.into_iter().enumerate() {
        let s = status(&lab, host);
        assert_eq!(s.workers.len(), 3, "host {host}");
        let busy = s.workers.iter().filter(|w| w.rx_frames > 100).count();
        assert!(
            busy >= 2,
            "host {host}: flows were not spread: {:?}",
            s.workers
        );
        assert_eq!(s.traffic.drops, before, "host {host}: {:?}", s.drops);
    }
    // Each TAP holds a descriptor per worker: the daemon runs with its open-file limit raised.
    let pid = lab.hosts[0].daemon_pid().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers[0], numbers[1], "soft limit not raised: {files}");
    // One row per MAC, however many workers know it.
    let entries = fdb(&lab, 0);
    for mac in [lab.containers[b].mac, lab.containers[c].mac] {
        let rows = entries.iter().filter(|e| e.mac == mac).count();
        assert_eq!(rows, 1, "{entries:?}");
    }
}

#[test]
fn containers_survive_a_change_of_worker_count() {
    let mut lab = lab_with_workers("wr", 1);
    let a = lab.add_container(0, "default", None).unwrap();
    let b = lab.add_container(1, "default", None).unwrap();
    assert!(reaches(&lab.containers[a].ns, lab.containers[b].ip));
    for workers in [4, 1, 2] {
        lab.stop_vswitchd(0, false).unwrap();
        lab.start_vswitchd_with(
            0,
            &[NetworkSpec::DEFAULT],
            &format!("workers = {workers}"),
            "",
        )
        .unwrap();
        assert_eq!(status(&lab, 0).workers.len(), workers);
        assert!(
            reaches(&lab.containers[a].ns, lab.containers[b].ip),
            "with {workers} workers"
        );
        let (from, to) = (&lab.containers[b], &lab.containers[a]);
        tcp_transfer(&from.ns, &to.ns, to.ip, 1 << 20);
    }
    // A reload cannot change the worker count: it says a restart is needed.
    let config = std::fs::read_to_string(&lab.hosts[0].config).unwrap();
    std::fs::write(
        &lab.hosts[0].config,
        config.replace("workers = 2", "workers = 3"),
    )
    .unwrap();
    match lab.call(0, &Request::Reload).unwrap() {
        Reply::Reloaded(summary) => assert!(summary.contains("restart vswitchd"), "{summary}"),
        other => panic!("unexpected reply {other:?}"),
    }
    assert_eq!(status(&lab, 0).workers.len(), 2);
}
