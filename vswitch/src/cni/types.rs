//! The JSON the CNI spec defines: the network configuration on stdin, the result and the error
//! on stdout. Fields we do not use are kept (`rest`) so that a chained result passes through
//! whole.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The network configuration a runtime passes on stdin (one plugin's part of a conflist, with
/// the list's `cniVersion` and `name`, `runtimeConfig` and `prevResult` filled in).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The spec version the runtime speaks.
    pub cni_version: String,
    /// The network's name in the conflist: our network's name unless `network` says otherwise.
    pub name: String,
    /// The plugin's name (`vswitch-cni`).
    #[serde(default, rename = "type")]
    pub plugin: String,
    /// The `vswitchd` network to join, when it is not named like the conflist.
    #[serde(default)]
    pub network: Option<String>,
    /// The daemon's control socket; `/run/vswitch/vswitchd.sock` when absent.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Name servers to hand the container, passed through to the result.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// What the runtime fills in for the capabilities the conflist declares.
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// The result of the plugins before this one in the chain (ADD, CHECK).
    #[serde(default)]
    pub prev_result: Option<Value>,
}

/// Runtime configuration for the capabilities `vswitch-cni` takes: `ips`, `mac`, `labels`,
/// `bandwidth` and `portMappings`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    /// Static addresses, `10.244.1.7/16` or `10.244.1.7` (one per family at most).
    #[serde(default)]
    pub ips: Vec<String>,
    /// A static MAC.
    #[serde(default)]
    pub mac: Option<String>,
    /// Labels of the container, kept with its attachment.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The `bandwidth` capability: the port's rate limit.
    #[serde(default)]
    pub bandwidth: Option<Bandwidth>,
    /// Ports to publish on the host (the `portMappings` capability), as `vswitch attach
    /// --publish` does.
    #[serde(default, rename = "portMappings")]
    pub port_mappings: Vec<CniPortMapping>,
    /// Capabilities of other plugins in the list (`portMappings`, ...): not ours, ignored.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// One entry of `runtimeConfig.portMappings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniPortMapping {
    /// The host's port.
    pub host_port: u16,
    /// The container's port.
    pub container_port: u16,
    /// `tcp` (the default) or `udp`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// One host address to publish on; vswitch publishes on all of them, so only empty or
    /// `0.0.0.0` is taken.
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

/// The `dns` object of a configuration or a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A result: what a chain of plugins did to the container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// The spec version of this result.
    pub cni_version: String,
    /// Interfaces created, on the host and in sandboxes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Name servers.
    #[serde(default)]
    pub dns: Dns,
    /// Anything else an earlier plugin put there.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// One interface of a result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Its MTU (CNI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The sandbox (namespace path) it is in; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// One address of a result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"` or `"6"`: results before 1.0.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The address with its prefix length.
    pub address: String,
    /// The gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The index in `interfaces` of the interface that has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The destination.
    pub dst: String,
    /// The next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// Anything else (`mtu`, `table`, ...).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The spec's error, printed on stdout with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("CNI error {code}: {msg}{}", details.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct CniError {
    /// The spec version of the answer.
    pub cni_version: String,
    /// The error code: the spec's below 100, ours from 100.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// What exactly went wrong and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

/// The `bandwidth` capability as the reference `bandwidth` plugin reads it: rates in bits per
/// second, bursts in bits. vswitch limits a port with one token bucket per direction at one
/// rate, so the two directions must ask for the same rate (or one of them for none).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    /// Traffic into the container, bits per second.
    #[serde(default)]
    pub ingress_rate: Option<u64>,
    /// Its burst, bits.
    #[serde(default)]
    pub ingress_burst: Option<u64>,
    /// Traffic out of the container, bits per second.
    #[serde(default)]
    pub egress_rate: Option<u64>,
    /// Its burst, bits.
    #[serde(default)]
    pub egress_burst: Option<u64>,
}
