//! `vswitch-cni` driven by libcni, the library container runtimes (containerd, CRI-O, podman)
//! use to run CNI plugins: a small Go program (`tests/cni-driver`) built here against Debian's
//! libcni sources (`golang-github-appc-cni-dev`, with `golang-go`) runs a conflist that chains
//! our plugin before the reference `tuning` plugin (`containernetworking-plugins`), which reads
//! our result as its prevResult. ADD, CHECK, DEL and DEL again, with the result checked against
//! what the namespace really holds; then the errors a runtime sees, with their codes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use netns::{NetNs, Netlink};
use serde_json::Value;
use vswitch::control::api::{Reply, Request};
use vswitch_e2e::{NetworkSpec, reaches, vswitch_lab};

/// Where Debian's containernetworking-plugins puts the reference plugins.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// A container's namespace, deleted on drop (and so on panic).
struct Sandbox {
    name: String,
    ns: NetNs,
}

impl Sandbox {
    fn new(tag: &str) -> Self {
        let name = format!("vscni-{}-{tag}", std::process::id());
        let ns = NetNs::create(&name).expect("creating the container namespace");
        Sandbox { name, ns }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = NetNs::delete(&self.name);
    }
}

/// The libcni driver, built once per test binary into the target directory.
fn driver() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cni-driver");
            let out = dir.join("cni-driver");
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-driver/main.go");
            assert!(
                Path::new("/usr/share/gocode/src/github.com/containernetworking/cni/libcni")
                    .exists(),
                "libcni sources missing: run scripts/install-deps (golang-github-appc-cni-dev)"
            );
            let status = Command::new("go")
                .arg("build")
                .arg("-o")
                .arg(&out)
                .arg(&source)
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode")
                .env("GOCACHE", dir.join("cache"))
                .status()
                .expect("running go (golang-go: run scripts/install-deps)");
            assert!(status.success(), "building the libcni driver failed");
            out
        })
        .clone()
}

/// A plugin directory with our plugin and the reference plugins, as a runtime's CNI_PATH.
fn plugin_dir(lab_dir: &Path) -> PathBuf {
    let dir = lab_dir.join("cni-bin");
    std::fs::create_dir_all(&dir).expect("creating the plugin directory");
    let ours = vswitch::lab::vswitchd_path().with_file_name("vswitch-cni");
    assert!(
        ours.exists(),
        "{} missing: cargo build --bins",
        ours.display()
    );
    let link = |from: &Path, name: &str| {
        let _ = std::os::unix::fs::symlink(from, dir.join(name));
    };
    link(&ours, "vswitch-cni");
    let tuning = Path::new(REFERENCE_PLUGINS).join("tuning");
    assert!(
        tuning.exists(),
        "{} missing: run scripts/install-deps (containernetworking-plugins)",
        tuning.display()
    );
    link(&tuning, "tuning");
    dir
}

/// What the driver printed: the result (or nothing) on success, the error object on failure.
fn drive(
    command: &str,
    conflist: &Path,
    container_id: &str,
    sandbox: &str,
    plugins: &Path,
    cache: &Path,
    capability_args: &str,
) -> Result<Value, Value> {
    let out = Command::new(driver())
        .args([
            command,
            &conflist.display().to_string(),
            container_id,
            sandbox,
            "eth0",
        ])
        .arg(plugins)
        .arg(cache)
        .arg(capability_args)
        .output()
        .expect("running the libcni driver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
    };
    if out.status.success() {
        Ok(value)
    } else {
        Err(value)
    }
}

fn conflist(dir: &Path, file: &str, name: &str, socket: &Path, chained: bool) -> PathBuf {
    let ours = serde_json::json!({
        "type": "vswitch-cni",
        "socket": socket,
        "network": "default",
        "dns": {"nameservers": ["10.244.1.1"], "search": ["cluster.local"]},
        "capabilities": {"ips": true, "mac": true},
    });
    let mut plugins = vec![ours];
    if chained {
        // tuning reads our result as its prevResult and sets a sysctl on the interface it names.
        plugins.push(serde_json::json!({
            "type": "tuning",
            "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"},
        }));
    }
    let list = serde_json::json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins});
    let path = dir.join(file);
    std::fs::write(&path, list.to_string()).expect("writing the conflist");
    path
}

fn sysctl_in(ns: &NetNs, path: &'static str) -> String {
    ns.run(|| std::fs::read_to_string(path))
        .expect("entering the namespace")
        .expect("reading the sysctl")
        .trim()
        .to_owned()
}

/// The result's interface, address, route and DNS against the namespace and the daemon.
fn assert_result_is_true(result: &Value, sandbox: &Sandbox, socket: &Path, want_ip: &str) {
    assert_eq!(result["cniVersion"], "1.0.0", "{result}");
    let interfaces = result["interfaces"].as_array().expect("interfaces");
    let ip = &result["ips"][0];
    let index = ip["interface"].as_u64().expect("ips[0].interface") as usize;
    let interface = &interfaces[index];
    assert_eq!(interface["name"], "eth0");
    assert_eq!(interface["sandbox"], sandbox.path());
    assert_eq!(ip["address"], format!("{want_ip}/16"));
    assert_eq!(ip["gateway"], "10.244.1.1");
    assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(result["routes"][0]["gw"], "10.244.1.1");
    assert_eq!(result["dns"]["nameservers"][0], "10.244.1.1");

    let nl = Netlink::in_namespace(&sandbox.ns).expect("netlink in the sandbox");
    let link = nl
        .link_info("eth0")
        .expect("reading links")
        .expect("eth0 in the sandbox");
    let mac = link
        .mac
        .map(vswitch::wire::MacAddr)
        .expect("a MAC")
        .to_string();
    assert_eq!(interface["mac"], mac);
    let Ok(Reply::Ports(ports)) = vswitch::control::api::call(socket, &Request::Ports) else {
        panic!("vswitch ports failed")
    };
    let port = ports
        .iter()
        .find(|p| p.attachment.ifname == "eth0")
        .expect("the port in vswitch ports");
    assert_eq!(link.mtu, Some(u32::from(port.attachment.mtu)));
    assert_eq!(port.attachment.mac.to_string(), mac);
    let addresses = nl.addresses("eth0").expect("reading addresses");
    assert!(
        addresses.contains(&format!("{want_ip}/16").parse().expect("an address")),
        "{addresses:?}"
    );
    let gateway = IpAddr::from([10, 244, 1, 1]);
    assert!(
        nl.routes()
            .expect("reading routes")
            .iter()
            .any(|r| r.dst.prefix_len() == 0
                && r.gateway == Some(gateway)
                && r.oif == Some(link.index)),
        "no default route via the gateway on eth0"
    );
}

#[test]
fn libcni_runs_add_check_del_and_del_again_through_a_chain() {
    let lab = vswitch_lab("cni", 1, &[NetworkSpec::DEFAULT], "");
    let socket = lab.hosts[0].socket.clone();
    let plugins = plugin_dir(lab.dir());
    let cache = lab.dir().join("cni-cache");
    let list = conflist(lab.dir(), "chain.conflist", "vswitch", &socket, true);
    let sandbox = Sandbox::new("a");
    let id = "ctr-a";
    let ips = r#"{"ips":["10.244.1.77/16"]}"#;
    let run = |command: &str| drive(command, &list, id, &sandbox.path(), &plugins, &cache, ips);

    let result = run("add").unwrap_or_else(|e| panic!("ADD failed: {e}"));
    assert_result_is_true(&result, &sandbox, &socket, "10.244.1.77");
    // tuning found our interface in its prevResult and changed it.
    assert_eq!(
        sysctl_in(&sandbox.ns, "/proc/sys/net/ipv4/conf/eth0/arp_notify"),
        "1"
    );
    // The switch carries it: the gateway answers.
    assert!(reaches(&sandbox.ns, "10.244.1.1".parse().unwrap()));

    run("check").unwrap_or_else(|e| panic!("CHECK failed: {e}"));
    // CHECK looks at the namespace, not only at the daemon's record.
    let nl = Netlink::in_namespace(&sandbox.ns).unwrap();
    nl.set_mtu("eth0", 1400).unwrap();
    let e = run("check").unwrap_err();
    assert_eq!(e["code"], 107, "{e}");
    assert!(e["details"].as_str().unwrap().contains("MTU"), "{e}");
    nl.set_mtu("eth0", 1450).unwrap();
    run("check").unwrap_or_else(|e| panic!("CHECK failed: {e}"));

    run("del").unwrap_or_else(|e| panic!("DEL failed: {e}"));
    assert!(nl.link_index("eth0").unwrap().is_none());
    let Reply::Ports(ports) = lab.call(0, &Request::Ports).unwrap() else {
        panic!()
    };
    assert!(ports.is_empty(), "{ports:?}");
    run("del").unwrap_or_else(|e| panic!("DEL again failed: {e}"));
}

#[test]
fn runtimes_get_a_code_per_refusal_and_del_survives_what_is_gone() {
    let mut lab = vswitch_lab("cnie", 1, &[NetworkSpec::DEFAULT], "");
    let socket = lab.hosts[0].socket.clone();
    let plugins = plugin_dir(lab.dir());
    let cache = lab.dir().join("cni-cache");
    let ours = conflist(lab.dir(), "ours.conflist", "default", &socket, false);
    let a = Sandbox::new("ea");
    let b = Sandbox::new("eb");
    let ip = r#"{"ips":["10.244.1.50/16"]}"#;
    drive("add", &ours, "ctr-a", &a.path(), &plugins, &cache, ip).unwrap();

    // The address another container holds.
    let e = drive("add", &ours, "ctr-b", &b.path(), &plugins, &cache, ip).unwrap_err();
    assert_eq!(e["code"], 104, "{e}");
    assert!(
        e["details"].as_str().unwrap().contains("10.244.1.50"),
        "{e}"
    );

    // A network the daemon does not carry (the conflist's name is the network).
    let red = lab.dir().join("red.conflist");
    let mut list: Value = serde_json::from_slice(&std::fs::read(&ours).unwrap()).unwrap();
    list["name"] = "red".into();
    list["plugins"][0]
        .as_object_mut()
        .unwrap()
        .remove("network");
    std::fs::write(&red, list.to_string()).unwrap();
    let e = drive("add", &red, "ctr-b", &b.path(), &plugins, &cache, "{}").unwrap_err();
    assert_eq!(e["code"], 101, "{e}");
    assert!(e["details"].as_str().unwrap().contains("\"red\""), "{e}");

    // A namespace that does not exist.
    let e = drive(
        "add",
        &ours,
        "ctr-c",
        "/run/netns/vscni-none",
        &plugins,
        &cache,
        "{}",
    )
    .unwrap_err();
    assert_eq!(e["code"], 3, "{e}");

    // DEL when the namespace is already gone: the daemon forgets the container.
    let a_path = a.path();
    drop(a);
    drive("del", &ours, "ctr-a", &a_path, &plugins, &cache, "{}").unwrap();

    // The daemon stopped: ADD says so; DEL of a container whose namespace is gone succeeds.
    lab.stop_vswitchd(0, false).unwrap();
    let e = drive("add", &ours, "ctr-b", &b.path(), &plugins, &cache, "{}").unwrap_err();
    assert_eq!(e["code"], 100, "{e}");
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .contains("vswitchd is not running"),
        "{e}"
    );
    drive("del", &ours, "ctr-a", &a_path, &plugins, &cache, "{}").unwrap();
}
