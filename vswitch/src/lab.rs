//! Throwaway clusters on one machine, for `vswitch demo`, the end-to-end tests and the
//! end-to-end benchmark: network namespaces as hosts and containers, a bridged veth underlay,
//! `vswitchd` or the Linux kernel's VXLAN on each host, and traffic generated from inside the
//! containers. Nothing leaves the namespaces the lab creates.

pub mod capture;
mod cluster;
pub mod etcd;
pub mod traffic;

pub use cluster::{
    Cleanup, Container, Host, HostKind, KERNEL_BASELINE_PORT, KERNEL_BASELINE_VNI, Lab, LabError,
    NetworkSpec, vswitchd_path,
};
