//! Docker's remote network driver and IPAM driver for vswitch (`vswitch-docker`): libnetwork's
//! plugin protocol, JSON over HTTP on a Unix socket in `/run/docker/plugins/`, translated into
//! requests on vswitchd's control socket.
//!
//! - [`protocol`]: the calls and their bodies;
//! - [`driver`]: what each call does (networks, pools, addresses, TAPs);
//! - [`server`]: the HTTP server on the plugin socket.

pub mod driver;
pub mod protocol;
pub mod server;
