//! A userspace VXLAN switch for container networking.
//!
//! The crate is layered like the per-frame path it implements:
//!
//! - [`wire`]: typed, zero-copy views over the bytes of Ethernet, ARP, IP, UDP, TCP and VXLAN.
//! - [`fdb`]: MAC learning per VNI, with aging, limits, static entries and moves.
//! - [`tunnel`]: VXLAN encapsulation and decapsulation.
//! - [`policy`]: network policy, connection tracking and QoS, compiled for the frame path.
//! - [`switch`]: the sans-IO core. It owns the tables above and turns one input (a frame from a
//!   port, a datagram from a peer, a tick) into actions. No syscalls, no clock reads, no locks.
//! - [`io`]: the thin shell that feeds the core from TAP queues and UDP sockets.
//! - [`control`]: configuration, the control API and the daemon that wires it all together.

pub mod cni;
pub mod control;
pub mod demo;
pub mod docker;
pub mod fdb;
pub mod fleet;
pub mod io;
pub mod lab;
pub mod offload;
pub mod policy;
pub mod switch;
pub mod tunnel;
pub mod wire;
