//! The fleet: nodes that find each other through etcd, and how each sees the others.
//!
//! - [`record`]: what a node publishes about itself and its containers, and where (keys).
//! - [`registry`]: the fleet as read from etcd, and the plan that turns it into peers and
//!   pinned endpoints here (pure: tested without etcd).
//! - [`membership`]: the etcd session: a lease kept alive, this node's records written under
//!   it, the registry listed then watched from the list's revision, listed again after any
//!   error (an outage, a compaction).
//! - [`dns`]: the embedded name server that answers container names on each gateway.
//! - [`health`]: tunnel liveness per peer from probes on the VXLAN path, and the node's state.
//!
//! The daemon applies what these decide (`control::daemon`'s fleet glue): the fleet never
//! touches a worker itself.

pub mod dns;
pub mod health;
pub mod membership;
pub mod record;
pub mod registry;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[fleet]`: membership and health settings.
///
/// ```toml
/// [fleet]
/// ttl_secs = 10          # a silent node is removed everywhere this long after it stopped
/// probe_interval_ms = 1000
/// dns = true             # container names answered on each gateway, UDP 53
/// resolv_conf = true     # attach writes /etc/netns/NAME/resolv.conf
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Lifetime of this node's membership lease, in seconds: when the node stops (or is cut
    /// off from etcd) for this long, every other node removes it. Default 10, at least 2.
    pub ttl_secs: u64,
    /// How often each peer is probed over the tunnel, in milliseconds. Default 1000.
    pub probe_interval_ms: u64,
    /// Answer container names on each network's gateway address (UDP 53). Default on.
    pub dns: bool,
    /// With `dns`: attach writes `/etc/netns/NAME/resolv.conf` (the gateway as name server)
    /// for containers attached by namespace name, and detach removes it. Default on.
    pub resolv_conf: bool,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 10,
            probe_interval_ms: 1000,
            dns: true,
            resolv_conf: true,
        }
    }
}

impl FleetConfig {
    /// The membership lease's lifetime.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }

    /// The probe interval.
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }

    /// What is wrong with these settings: the key and the reason.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.ttl_secs < 2 {
            return Err(("fleet.ttl_secs".into(), "must be at least 2".into()));
        }
        if !(50..=60_000).contains(&self.probe_interval_ms) {
            return Err((
                "fleet.probe_interval_ms".into(),
                "must be between 50 and 60000".into(),
            ));
        }
        Ok(())
    }
}
