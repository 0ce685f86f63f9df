//! Interoperability with the Linux kernel's own VXLAN: a host running a kernel `vxlan` device
//! and bridge (built with iproute2's netlink calls inside test namespaces) and a host running
//! `vswitchd` carry one L2 segment, in both directions, for ICMP and TCP.

use std::net::Ipv4Addr;

use vswitch_e2e::{fdb, kernel_pair, reaches, tcp_transfer};

#[test]
fn vswitchd_and_kernel_vxlan_interoperate_both_ways() {
    let (lab, a, b) = kernel_pair("kx", Ipv4Addr::new(10, 244, 200, 2));
    let ours = 0;
    let c = &lab.containers;
    assert!(reaches(&c[a].ns, c[b].ip), "vswitch -> kernel");
    assert!(reaches(&c[b].ns, c[a].ip), "kernel -> vswitch");
    tcp_transfer(&c[a].ns, &c[b].ns, c[b].ip, 8 << 20);
    tcp_transfer(&c[b].ns, &c[a].ns, c[a].ip, 8 << 20);
    // The kernel container's MAC was learned behind the kernel host.
    let kernel_mac = c[b].mac;
    let entry = fdb(&lab, ours)
        .into_iter()
        .find(|e| e.mac == kernel_mac)
        .expect("kernel container's MAC learned");
    assert!(entry.location.starts_with("peer h1"), "{}", entry.location);
}
