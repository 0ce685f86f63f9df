//! What each call of Docker's does, in terms of the daemon's control API: networks map to
//! networks vswitchd carries, the IPAM pools are their subnets, addresses are reservations,
//! and an endpoint's interface is a TAP the daemon creates at `Join` and Docker moves.
//!
//! The only state kept here is which vswitch network each Docker network is (Docker sends the
//! options only at creation); everything else lives in the daemon.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use ipnet::IpNet;
use serde_json::{Value, json};

use super::protocol::{Call, CreateEndpoint, CreateNetwork, Join, RequestAddress, RequestPool};
use crate::control::api::{self, ClientError, NetworkView, Reply, Request};
use crate::control::host_tap::{
    PlugTapRequest, Reservation, ReserveRequest, UnplugTapRequest, UnreserveRequest,
};
use crate::wire::MacAddr;

/// The address space the IPAM driver names, by which the network driver recognises its pools.
pub const ADDRESS_SPACE: &str = "vswitch";

/// `-o` option: the vswitch network (by name) the Docker network is.
pub const OPTION_NETWORK: &str = "vswitch.network";
/// `-o` option: the vswitch network (by VNI) the Docker network is.
pub const OPTION_VNI: &str = "vswitch.vni";
/// `--ipam-opt` option: the vswitch network a pool is taken from, when no subnet is given.
pub const IPAM_OPTION_NETWORK: &str = "vswitch.network";

/// The prefix of the interface names Docker gives inside containers.
const DST_PREFIX: &str = "eth";

/// A way to call vswitchd.
pub trait Control: Send + Sync {
    /// Sends one request and returns the reply.
    fn call(&self, request: &Request) -> Result<Reply, ClientError>;
}

/// vswitchd's control socket.
pub struct SocketControl(pub PathBuf);

impl Control for SocketControl {
    fn call(&self, request: &Request) -> Result<Reply, ClientError> {
        api::call(&self.0, request)
    }
}

/// The driver: the control connection and the network map.
pub struct Driver<C> {
    control: C,
    /// Where the network map is kept; `None` keeps it in memory only.
    networks_file: Option<PathBuf>,
    networks: Mutex<BTreeMap<String, String>>,
}

/// The name of the TAP of an endpoint: `vsw` and the id's first 12 characters.
pub fn tap_name(endpoint_id: &str) -> String {
    let id: String = endpoint_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!("vsw{id}")
}

impl<C: Control> Driver<C> {
    /// A driver keeping its network map in `state_dir` (created if needed).
    pub fn open(control: C, state_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let networks_file = state_dir.join("networks.json");
        let networks = match std::fs::read_to_string(&networks_file) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is corrupt", networks_file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", networks_file.display()));
            }
        };
        Ok(Self {
            control,
            networks_file: Some(networks_file),
            networks: Mutex::new(networks),
        })
    }

    /// A driver whose network map lives in memory only: Docker networks are forgotten when it
    /// stops (for tests and fuzzing).
    pub fn in_memory(control: C) -> Self {
        Self {
            control,
            networks_file: None,
            networks: Mutex::new(BTreeMap::new()),
        }
    }

    /// Answers one call: the JSON body, or the message of a refusal.
    pub fn handle(&self, call: Call) -> Result<Value, String> {
        match call {
            Call::Activate => Ok(json!({"Implements": ["NetworkDriver", "IpamDriver"]})),
            Call::Capabilities => Ok(json!({"Scope": "local", "ConnectivityScope": "global"})),
            Call::CreateNetwork(c) => self.create_network(&c).map(|()| json!({})),
            Call::DeleteNetwork(n) => self.forget_network(&n.network_id).map(|()| json!({})),
            Call::CreateEndpoint(e) => self.create_endpoint(&e),
            Call::DeleteEndpoint(e) | Call::Leave(e) => {
                self.unplug(&e.endpoint_id).map(|_| json!({}))
            }
            Call::EndpointInfo(_) | Call::Acknowledge | Call::ReleasePool(_) => Ok(json!({})),
            Call::Join(j) => self.join(&j),
            Call::IpamCapabilities => Ok(json!({"RequiresMACAddress": false})),
            Call::AddressSpaces => Ok(json!({
                "LocalDefaultAddressSpace": ADDRESS_SPACE,
                "GlobalDefaultAddressSpace": ADDRESS_SPACE,
            })),
            Call::RequestPool(r) => self.request_pool(&r),
            Call::RequestAddress(r) => self.request_address(&r),
            Call::ReleaseAddress(r) => self.release_address(&r.pool_id, &r.address),
        }
    }

    fn call(&self, request: &Request) -> Result<Reply, String> {
        self.control.call(request).map_err(|e| e.to_string())
    }

    fn vswitch_networks(&self) -> Result<Vec<NetworkView>, String> {
        match self.call(&Request::Status)? {
            Reply::Status(s) => Ok(s.networks),
            other => Err(unexpected(&other)),
        }
    }

    fn network_named(&self, name: &str) -> Result<NetworkView, String> {
        let networks = self.vswitch_networks()?;
        let names: Vec<&str> = networks.iter().map(|n| n.name.as_str()).collect();
        let known = names.join(", ");
        networks
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .ok_or_else(|| {
                format!("vswitchd carries no network named {name:?} (it carries: {known})")
            })
    }

    fn create_network(&self, c: &CreateNetwork) -> Result<(), String> {
        let options = c.driver_options()?;
        if let Some(unknown) = options
            .keys()
            .find(|k| *k != OPTION_NETWORK && *k != OPTION_VNI)
        {
            return Err(format!(
                "unknown option {unknown:?}: vswitch networks take -o {OPTION_NETWORK}=NAME and \
                 -o {OPTION_VNI}=VNI"
            ));
        }
        if c.ipv6.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err("IPv6 is not supported on vswitch Docker networks yet".into());
        }
        let pools = c.ipv4.clone().unwrap_or_default();
        let [pool] = pools.as_slice() else {
            return Err(format!(
                "a vswitch network takes exactly one IPv4 pool, got {}",
                pools.len()
            ));
        };
        if pool.address_space != ADDRESS_SPACE {
            return Err(format!(
                "vswitch networks take their addresses from vswitch's IPAM: add --ipam-driver \
                 with this plugin's name (the pool came from address space {:?})",
                pool.address_space
            ));
        }
        let networks = self.vswitch_networks()?;
        let by_subnet = networks.iter().find(|n| n.subnet.to_string() == pool.pool);
        let chosen = match (options.get(OPTION_NETWORK), options.get(OPTION_VNI)) {
            (Some(name), _) => networks.iter().find(|n| &n.name == name).ok_or_else(|| {
                format!("option {OPTION_NETWORK}: vswitchd carries no network named {name:?}")
            })?,
            (None, Some(vni)) => {
                let vni: u32 = vni
                    .parse()
                    .map_err(|_| format!("option {OPTION_VNI}: {vni:?} is not a number"))?;
                networks.iter().find(|n| n.vni == vni).ok_or_else(|| {
                    format!("option {OPTION_VNI}: vswitchd carries no network with VNI {vni}")
                })?
            }
            (None, None) => {
                by_subnet.ok_or_else(|| format!("no vswitch network has subnet {}", pool.pool))?
            }
        };
        if let Some(vni) = options.get(OPTION_VNI)
            && vni.parse::<u32>().ok() != Some(chosen.vni)
        {
            return Err(format!(
                "option {OPTION_VNI}={vni} disagrees with network {:?} (VNI {})",
                chosen.name, chosen.vni
            ));
        }
        if chosen.subnet.to_string() != pool.pool {
            return Err(format!(
                "--subnet {} is not the subnet of vswitch network {:?} ({})",
                pool.pool, chosen.name, chosen.subnet
            ));
        }
        let mut map = self.lock();
        map.insert(c.network_id.clone(), chosen.name.clone());
        self.save(&map)
    }

    fn forget_network(&self, network_id: &str) -> Result<(), String> {
        let mut map = self.lock();
        if map.remove(network_id).is_some() {
            self.save(&map)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.networks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn save(&self, map: &BTreeMap<String, String>) -> Result<(), String> {
        let Some(file) = &self.networks_file else {
            return Ok(());
        };
        let tmp = file.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(map).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, file))
            .map_err(|e| format!("saving {}: {e}", file.display()))
    }

    fn network_of(&self, network_id: &str) -> Result<String, String> {
        self.lock().get(network_id).cloned().ok_or_else(|| {
            format!("network {network_id} is unknown to the vswitch plugin (was it created while the plugin used another state directory?)")
        })
    }

    fn create_endpoint(&self, e: &CreateEndpoint) -> Result<Value, String> {
        let network = self.network_of(&e.network_id)?;
        let interface = e.interface.clone().unwrap_or_default();
        if interface.address.is_empty() {
            return Err("the endpoint has no IPv4 address: use vswitch's IPAM driver".into());
        }
        let address: IpNet = interface
            .address
            .parse()
            .map_err(|_| format!("endpoint address {:?} is not an address", interface.address))?;
        let mac = match interface.mac_address.as_str() {
            "" => None,
            text => Some(
                text.parse::<MacAddr>()
                    .map_err(|_| format!("MAC address {text:?} is not a MAC"))?,
            ),
        };
        let reservation = self.reserve(ReserveRequest {
            network,
            ip: Some(address.addr()),
            endpoint: Some(e.endpoint_id.clone()),
            mac,
        })?;
        // Docker refuses an answer that repeats what it chose itself.
        if mac.is_some() {
            return Ok(json!({}));
        }
        Ok(json!({"Interface": {"MacAddress": reservation.mac.to_string()}}))
    }

    fn reserve(&self, request: ReserveRequest) -> Result<Reservation, String> {
        match self.call(&Request::Reserve(request))? {
            Reply::Reserved(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    fn join(&self, j: &Join) -> Result<Value, String> {
        self.network_of(&j.network_id)?;
        let tap = tap_name(&j.endpoint_id);
        let plugged = match self.call(&Request::PlugTap(PlugTapRequest {
            endpoint: j.endpoint_id.clone(),
            tap: tap.clone(),
            sandbox: j.sandbox_key.clone(),
        }))? {
            Reply::Reserved(r) => r,
            other => return Err(unexpected(&other)),
        };
        Ok(json!({
            "InterfaceName": {"SrcName": plugged.tap.unwrap_or(tap), "DstPrefix": DST_PREFIX},
            "Gateway": plugged.gateway.to_string(),
            "StaticRoutes": [],
            "DisableGatewayService": false,
        }))
    }

    fn unplug(&self, endpoint_id: &str) -> Result<bool, String> {
        match self.call(&Request::UnplugTap(UnplugTapRequest {
            endpoint: endpoint_id.to_owned(),
        }))? {
            Reply::Unplugged(done) => Ok(done),
            other => Err(unexpected(&other)),
        }
    }

    fn request_pool(&self, r: &RequestPool) -> Result<Value, String> {
        if r.v6 {
            return Err("vswitch's IPAM has no IPv6 pools for Docker yet".into());
        }
        if !r.sub_pool.is_empty() {
            return Err(format!(
                "--ip-range {} is not supported: vswitch gives each node its own slice of the \
                 subnet",
                r.sub_pool
            ));
        }
        let options = r.options.clone().unwrap_or_default();
        if let Some(unknown) = options.keys().find(|k| *k != IPAM_OPTION_NETWORK) {
            return Err(format!(
                "unknown IPAM option {unknown:?}: vswitch's IPAM takes --ipam-opt \
                 {IPAM_OPTION_NETWORK}=NAME"
            ));
        }
        let network = if r.pool.is_empty() {
            let name = options
                .get(IPAM_OPTION_NETWORK)
                .map_or("default", String::as_str);
            self.network_named(name)?
        } else {
            let networks = self.vswitch_networks()?;
            let subnets: Vec<String> = networks
                .iter()
                .map(|n| format!("{} ({})", n.subnet, n.name))
                .collect();
            networks
                .into_iter()
                .find(|n| n.subnet.to_string() == r.pool)
                .ok_or_else(|| {
                    format!(
                        "no vswitch network has subnet {}; this node's networks: {}",
                        r.pool,
                        subnets.join(", ")
                    )
                })?
        };
        Ok(json!({"PoolID": network.name, "Pool": network.subnet.to_string(), "Data": {}}))
    }

    fn request_address(&self, r: &RequestAddress) -> Result<Value, String> {
        let requested = match r.address.as_str() {
            "" => None,
            text => Some(
                text.parse::<IpAddr>()
                    .map_err(|_| format!("{text:?} is not an IP address"))?,
            ),
        };
        if r.is_gateway() {
            let network = self.network_named(&r.pool_id)?;
            if let Some(ip) = requested
                && ip != network.gateway
            {
                return Err(format!(
                    "--gateway {ip}: the gateway of network {:?} on this node is {}",
                    network.name, network.gateway
                ));
            }
            let gateway = IpNet::new(network.gateway, network.subnet.prefix_len())
                .map_err(|e| e.to_string())?;
            return Ok(json!({"Address": gateway.to_string(), "Data": {}}));
        }
        let reservation = self.reserve(ReserveRequest {
            network: r.pool_id.clone(),
            ip: requested,
            endpoint: None,
            mac: None,
        })?;
        Ok(json!({"Address": reservation.address.to_string(), "Data": {}}))
    }

    fn release_address(&self, pool_id: &str, address: &str) -> Result<Value, String> {
        let ip: IpAddr = address
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|_| format!("{address:?} is not an IP address"))?;
        let network = self.network_named(pool_id)?;
        if ip == network.gateway {
            return Ok(json!({}));
        }
        match self.call(&Request::Unreserve(UnreserveRequest {
            network: pool_id.to_owned(),
            address: ip,
        }))? {
            Reply::Unreserved(_) => Ok(json!({})),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(reply: &Reply) -> String {
    format!("vswitchd answered with an unexpected reply: {reply:?}")
}

#[cfg(test)]
mod tests;
