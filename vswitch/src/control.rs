//! The control plane: configuration, the control API spoken over a Unix socket, and the daemon
//! that applies both to the datapath.

pub mod api;
pub mod attach;
pub mod config;
pub mod daemon;
pub mod gateway;
pub mod handoff;
pub mod host_tap;
pub mod keeper;
pub mod leases;
pub mod metrics;
pub mod policy;
pub mod render;
pub mod sealing;
pub mod state;
