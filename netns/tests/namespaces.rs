//! Creating, opening, entering and deleting network namespaces (needs root).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{TestNs, unique};
use netns::{NetNs, NsRef};

#[test]
fn create_open_delete() {
    let name = format!("nstest-cod-{}", unique());
    let ns = NetNs::create(&name).unwrap();
    assert!(Path::new("/run/netns").join(&name).exists());
    assert_ne!(ns.id(), NetNs::current().unwrap().id());

    let again = NetNs::open(&NsRef::Name(name.clone())).unwrap();
    assert_eq!(again.id(), ns.id());
    let by_path = NetNs::open(&format!("/run/netns/{name}").parse().unwrap()).unwrap();
    assert_eq!(by_path, ns);

    let err = NetNs::create(&name).unwrap_err();
    assert!(err.is_already_exists(), "{err}");

    NetNs::delete(&name).unwrap();
    assert!(!Path::new("/run/netns").join(&name).exists());
    NetNs::delete(&name).unwrap();
    let err = NetNs::open(&NsRef::Name(name)).unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn open_by_pid_and_reject_other_files() {
    let me = NetNs::open(&NsRef::Pid(std::process::id())).unwrap();
    assert_eq!(me.id(), NetNs::current().unwrap().id());
    let err = NetNs::open(&NsRef::Path("/proc/self/ns/mnt".into())).unwrap_err();
    assert!(err.to_string().contains("not a network namespace"), "{err}");
    let err = NetNs::open(&NsRef::Path("/etc/hostname".into())).unwrap_err();
    assert!(err.to_string().contains("not a namespace file"), "{err}");
}

#[test]
fn run_inside() {
    let t = TestNs::new("run");
    let inside = t.ns.run(|| NetNs::current().unwrap().id()).unwrap();
    assert_eq!(inside, t.ns.id());
    assert_ne!(NetNs::current().unwrap().id(), t.ns.id());
    let links =
        t.ns.run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap());
    let links = links.unwrap();
    assert!(links.contains("lo:"));
    assert_eq!(
        links.lines().count(),
        3,
        "a new namespace has only lo: {links}"
    );
}

#[test]
fn command_inside() {
    let t = TestNs::new("cmd");
    let out =
        t.ns.command("readlink")
            .arg("/proc/self/ns/net")
            .output()
            .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim(), format!("net:[{}]", t.ns.id().ino));
}
