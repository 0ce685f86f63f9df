//! The daemon's life cycle: attach and detach (repeated), errors a person can act on, a clean
//! SIGTERM, and a restart after SIGKILL that re-adopts attached containers with their addresses.

use std::net::Ipv4Addr;

use vswitch::control::api::{AttachRequest, DetachRequest, Reply, Request};
use vswitch_e2e::{NetworkSpec, reaches, vswitch_lab};

#[test]
fn detach_removes_everything_and_is_safe_to_repeat() {
    let mut lab = vswitch_lab("dt", 1, &[NetworkSpec::DEFAULT], "");
    let c = lab.add_container(0, "default", None).unwrap();
    let name = lab.containers[c].name.clone();
    let ns = lab.containers[c].ns.clone();
    let nl = netns::Netlink::in_namespace(&ns).unwrap();
    assert!(nl.link_index("eth0").unwrap().is_some());
    let detach = Request::Detach(DetachRequest {
        container_id: name.clone(),
        ifname: None,
    });
    assert!(matches!(
        lab.call(0, &detach).unwrap(),
        Reply::Detached(true)
    ));
    assert!(nl.link_index("eth0").unwrap().is_none());
    assert!(matches!(
        lab.call(0, &detach).unwrap(),
        Reply::Detached(false)
    ));
    // The address is free again (after the hold time it is handed out again; the port is gone
    // from the daemon's list now).
    match lab.call(0, &Request::Ports).unwrap() {
        Reply::Ports(ports) => assert!(ports.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn attach_errors_name_the_problem() {
    let mut lab = vswitch_lab("ae", 1, &[NetworkSpec::DEFAULT], "");
    let c = lab.add_container(0, "default", None).unwrap();
    let netns = lab.containers[c].name.clone();
    let err = lab
        .call(
            0,
            &Request::Attach(AttachRequest {
                netns: netns.clone(),
                network: Some("red".into()),
                ifname: Some("eth1".into()),
                ..Default::default()
            }),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("no network is named \"red\""), "{err}");
    let err = lab
        .call(
            0,
            &Request::Attach(AttachRequest {
                netns: "no-such-namespace-here".into(),
                ..Default::default()
            }),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-namespace-here"), "{err}");
    // The same container and interface again: the same answer (a retried attach).
    let again = lab
        .call(
            0,
            &Request::Attach(AttachRequest {
                netns: netns.clone(),
                ..Default::default()
            }),
        )
        .unwrap();
    let Reply::Attached(a) = again else { panic!() };
    assert_eq!(Some(&a), lab.containers[c].attachment.as_ref());
    // A taken address is refused.
    let taken = a.address.addr();
    lab.add_container(0, "default", Some(Ipv4Addr::new(10, 244, 1, 77)))
        .unwrap();
    let other = netns::NetNs::create(&format!("{netns}x")).unwrap();
    let err = lab
        .call(
            0,
            &Request::Attach(AttachRequest {
                netns: format!("{netns}x"),
                ip: Some(taken),
                ..Default::default()
            }),
        )
        .unwrap_err()
        .to_string();
    drop(other);
    let _ = netns::NetNs::delete(&format!("{netns}x"));
    assert!(err.contains(&taken.to_string()), "{err}");
}

#[test]
fn sigterm_stops_cleanly_and_a_killed_daemon_comes_back_with_its_containers() {
    let mut lab = vswitch_lab("rs", 2, &[NetworkSpec::DEFAULT], "");
    let a = lab.add_container(0, "default", None).unwrap();
    let b = lab.add_container(1, "default", None).unwrap();
    assert!(reaches(&lab.containers[a].ns, lab.containers[b].ip));

    let status = lab.stop_vswitchd(0, false).unwrap().unwrap();
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(!lab.hosts[0].socket.exists(), "control socket left behind");
    lab.spawn_vswitchd(0).unwrap();
    assert!(
        reaches(&lab.containers[a].ns, lab.containers[b].ip),
        "after restart"
    );

    lab.stop_vswitchd(0, true).unwrap();
    lab.spawn_vswitchd(0).unwrap();
    assert!(
        reaches(&lab.containers[a].ns, lab.containers[b].ip),
        "after SIGKILL"
    );
    match lab.call(0, &Request::Ports).unwrap() {
        Reply::Ports(ports) => {
            assert_eq!(ports.len(), 1);
            assert_eq!(
                Some(&ports[0].attachment),
                lab.containers[a].attachment.as_ref()
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_container_that_vanishes_without_detach_is_cleaned_up() {
    let mut lab = vswitch_lab("gn", 1, &[NetworkSpec::DEFAULT], "");
    let c = lab.add_container(0, "default", None).unwrap();
    let address = lab.containers[c].ip;
    netns::NetNs::delete(&lab.containers[c].name).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match lab.call(0, &Request::Ports).unwrap() {
            Reply::Ports(ports) if ports.is_empty() => break,
            Reply::Ports(_) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the port was not removed"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Its address went back to the pool: asking for it by name succeeds.
    let again = lab.add_container(0, "default", Some(address)).unwrap();
    assert_eq!(lab.containers[again].ip, address);
}
