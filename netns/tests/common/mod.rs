//! Helpers shared by the root tests: unique names and namespaces removed on drop.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use netns::{NetNs, Netlink};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short token unique to this process and call: at most 10 bytes, so interface
/// names built from it with a 5-byte prefix or suffix fit in 15 bytes.
pub fn unique() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{:02x}", std::process::id() & 0xff_ffff, n & 0xff)
}

/// A namespace created for one test, deleted when dropped (on panic too).
pub struct TestNs {
    pub name: String,
    pub ns: NetNs,
}

impl TestNs {
    pub fn new(role: &str) -> TestNs {
        let name = format!("nstest-{role}-{}", unique());
        let ns = NetNs::create(&name).unwrap();
        TestNs { name, ns }
    }

    pub fn netlink(&self) -> Netlink {
        Netlink::in_namespace(&self.ns).unwrap()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = NetNs::delete(&self.name);
    }
}
