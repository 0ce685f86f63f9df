//! libnetwork's plugin protocol as far as vswitch speaks it: the paths Docker posts to, the
//! JSON bodies it sends (read leniently: newer engines add fields) and the answers it reads.
//! Every answer is an object; a refusal carries its message under `Err` (read by the network
//! driver's client) and `Error` (read by the IPAM client), which Docker shows to the user.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The content type of plugin answers.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// The option key under which `docker network create -o` options arrive.
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";

/// The option marking the IPAM request of a network's gateway address.
pub const GATEWAY_REQUEST: &str = "com.docker.network.gateway";

/// One call from Docker, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `/Plugin.Activate`.
    Activate,
    /// `/NetworkDriver.GetCapabilities`.
    Capabilities,
    /// `/NetworkDriver.CreateNetwork`.
    CreateNetwork(CreateNetwork),
    /// `/NetworkDriver.DeleteNetwork`.
    DeleteNetwork(NetworkRef),
    /// `/NetworkDriver.CreateEndpoint`.
    CreateEndpoint(CreateEndpoint),
    /// `/NetworkDriver.DeleteEndpoint`.
    DeleteEndpoint(EndpointRef),
    /// `/NetworkDriver.EndpointOperInfo`.
    EndpointInfo(EndpointRef),
    /// `/NetworkDriver.Join`.
    Join(Join),
    /// `/NetworkDriver.Leave`.
    Leave(EndpointRef),
    /// `/NetworkDriver.DiscoverNew`, `DiscoverDelete`, `ProgramExternalConnectivity` and
    /// `RevokeExternalConnectivity`: nothing to do for a switch without NAT.
    Acknowledge,
    /// `/IpamDriver.GetCapabilities`.
    IpamCapabilities,
    /// `/IpamDriver.GetDefaultAddressSpaces`.
    AddressSpaces,
    /// `/IpamDriver.RequestPool`.
    RequestPool(RequestPool),
    /// `/IpamDriver.ReleasePool`.
    ReleasePool(ReleasePool),
    /// `/IpamDriver.RequestAddress`.
    RequestAddress(RequestAddress),
    /// `/IpamDriver.ReleaseAddress`.
    ReleaseAddress(ReleaseAddress),
}

/// Why a call could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The path names no call of the protocol.
    #[error("unknown call {0:?}: this plugin implements NetworkDriver and IpamDriver")]
    UnknownPath(String),
    /// The body is not the JSON the call takes.
    #[error("{path}: malformed request body: {reason}")]
    BadBody {
        /// The call.
        path: String,
        /// What is wrong, with the field.
        reason: String,
    },
}

/// `CreateNetwork`'s body.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CreateNetwork {
    /// Docker's network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Options; `-o` options under [`GENERIC_OPTIONS`].
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, Value>>,
    /// The IPv4 pools the IPAM driver gave.
    #[serde(rename = "IPv4Data", default)]
    pub ipv4: Option<Vec<IpamData>>,
    /// The IPv6 pools.
    #[serde(rename = "IPv6Data", default)]
    pub ipv6: Option<Vec<IpamData>>,
}

impl CreateNetwork {
    /// The `-o` options, as strings; an error names an option whose value is not a string.
    pub fn driver_options(&self) -> Result<BTreeMap<String, String>, String> {
        let Some(generic) = self.options.as_ref().and_then(|o| o.get(GENERIC_OPTIONS)) else {
            return Ok(BTreeMap::new());
        };
        let Value::Object(map) = generic else {
            return Err(format!("{GENERIC_OPTIONS} is not an object"));
        };
        map.iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(format!("option {k}: expected a string, got {other}")),
            })
            .collect()
    }
}

/// One pool of a network, as Docker passes it to the network driver.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct IpamData {
    /// The address space the IPAM driver named.
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    /// The pool (`10.244.0.0/16`).
    #[serde(rename = "Pool", default)]
    pub pool: String,
    /// The gateway with the pool's prefix length.
    #[serde(rename = "Gateway", default)]
    pub gateway: String,
}

/// A body naming a network.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct NetworkRef {
    /// Docker's network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// A body naming an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct EndpointRef {
    /// Docker's network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Docker's endpoint id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// `CreateEndpoint`'s body.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CreateEndpoint {
    /// Docker's network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Docker's endpoint id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// What the IPAM driver and the user chose.
    #[serde(rename = "Interface", default)]
    pub interface: Option<EndpointInterface>,
}

/// An endpoint's addresses, as Docker sends them and as the driver answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointInterface {
    /// IPv4 address with prefix length.
    #[serde(rename = "Address", default)]
    pub address: String,
    /// IPv6 address with prefix length.
    #[serde(rename = "AddressIPv6", default)]
    pub address_ipv6: String,
    /// MAC (`02:42:...`).
    #[serde(rename = "MacAddress", default)]
    pub mac_address: String,
}

/// `Join`'s body.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Join {
    /// Docker's network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Docker's endpoint id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The path of the container's network namespace.
    #[serde(rename = "SandboxKey", default)]
    pub sandbox_key: String,
}

/// `RequestPool`'s body.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RequestPool {
    /// The address space.
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    /// The subnet asked for (`--subnet`), empty for any.
    #[serde(rename = "Pool", default)]
    pub pool: String,
    /// The range asked for (`--ip-range`).
    #[serde(rename = "SubPool", default)]
    pub sub_pool: String,
    /// `--ipam-opt` options.
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, String>>,
    /// An IPv6 pool.
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

/// `ReleasePool`'s body.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ReleasePool {
    /// The pool id given by `RequestPool`.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// `RequestAddress`'s body.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RequestAddress {
    /// The pool id given by `RequestPool`.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// A fixed address (`--ip`, `--gateway`), empty for any.
    #[serde(rename = "Address", default)]
    pub address: String,
    /// Options; `RequestAddressType` marks the gateway.
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, String>>,
}

impl RequestAddress {
    /// Whether this asks for the network's gateway.
    pub fn is_gateway(&self) -> bool {
        self.options
            .as_ref()
            .and_then(|o| o.get("RequestAddressType"))
            .is_some_and(|t| t == GATEWAY_REQUEST)
    }
}

/// `ReleaseAddress`'s body.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ReleaseAddress {
    /// The pool id given by `RequestPool`.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The address.
    #[serde(rename = "Address", default)]
    pub address: String,
}

/// Reads one call: `path` is the HTTP path, `body` what was posted (possibly empty).
pub fn parse(path: &str, body: &[u8]) -> Result<Call, ProtocolError> {
    fn read<T: for<'de> Deserialize<'de>>(path: &str, body: &[u8]) -> Result<T, ProtocolError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(&mut de).map_err(|e| ProtocolError::BadBody {
            path: path.to_owned(),
            reason: if e.path().iter().next().is_some() {
                format!("{}: {}", e.path(), e.inner())
            } else {
                e.inner().to_string()
            },
        })
    }
    Ok(match path {
        "/Plugin.Activate" => Call::Activate,
        "/NetworkDriver.GetCapabilities" => Call::Capabilities,
        "/NetworkDriver.CreateNetwork" => Call::CreateNetwork(read(path, body)?),
        "/NetworkDriver.DeleteNetwork" => Call::DeleteNetwork(read(path, body)?),
        "/NetworkDriver.CreateEndpoint" => Call::CreateEndpoint(read(path, body)?),
        "/NetworkDriver.DeleteEndpoint" => Call::DeleteEndpoint(read(path, body)?),
        "/NetworkDriver.EndpointOperInfo" => Call::EndpointInfo(read(path, body)?),
        "/NetworkDriver.Join" => Call::Join(read(path, body)?),
        "/NetworkDriver.Leave" => Call::Leave(read(path, body)?),
        "/NetworkDriver.DiscoverNew"
        | "/NetworkDriver.DiscoverDelete"
        | "/NetworkDriver.ProgramExternalConnectivity"
        | "/NetworkDriver.RevokeExternalConnectivity" => Call::Acknowledge,
        "/IpamDriver.GetCapabilities" => Call::IpamCapabilities,
        "/IpamDriver.GetDefaultAddressSpaces" => Call::AddressSpaces,
        "/IpamDriver.RequestPool" => Call::RequestPool(read(path, body)?),
        "/IpamDriver.ReleasePool" => Call::ReleasePool(read(path, body)?),
        "/IpamDriver.RequestAddress" => Call::RequestAddress(read(path, body)?),
        "/IpamDriver.ReleaseAddress" => Call::ReleaseAddress(read(path, body)?),
        other => return Err(ProtocolError::UnknownPath(other.to_owned())),
    })
}

/// A refusal as Docker reads it, from either driver.
pub fn error_body(message: &str) -> Value {
    serde_json::json!({ "Err": message, "Error": message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_read_from_docker_bodies() {
        let body = br#"{"NetworkID":"n1","Options":{"com.docker.network.enable_ipv6":false,
            "com.docker.network.generic":{"vswitch.network":"app"}},
            "IPv4Data":[{"AddressSpace":"vswitch","Pool":"10.244.0.0/16","Gateway":"10.244.1.1/16","AuxAddresses":null}],
            "IPv6Data":[]}"#;
        let Call::CreateNetwork(c) = parse("/NetworkDriver.CreateNetwork", body).unwrap() else {
            panic!("not CreateNetwork");
        };
        assert_eq!(c.network_id, "n1");
        assert_eq!(c.driver_options().unwrap()["vswitch.network"], "app");
        assert_eq!(c.ipv4.unwrap()[0].pool, "10.244.0.0/16");

        let body = br#"{"NetworkID":"n1","EndpointID":"e1","Interface":{"Address":"10.244.1.2/16","AddressIPv6":"","MacAddress":""},"Options":{}}"#;
        let Call::CreateEndpoint(e) = parse("/NetworkDriver.CreateEndpoint", body).unwrap() else {
            panic!("not CreateEndpoint");
        };
        assert_eq!(e.interface.unwrap().address, "10.244.1.2/16");

        let body = br#"{"PoolID":"app","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#;
        let Call::RequestAddress(r) = parse("/IpamDriver.RequestAddress", body).unwrap() else {
            panic!("not RequestAddress");
        };
        assert!(r.is_gateway());
        assert_eq!(parse("/Plugin.Activate", b"").unwrap(), Call::Activate);
        assert_eq!(
            parse("/NetworkDriver.DiscoverNew", b"{}").unwrap(),
            Call::Acknowledge
        );
    }

    #[test]
    fn bad_bodies_and_paths_say_what_is_wrong() {
        let e = parse("/NetworkDriver.Join", br#"{"NetworkID":1}"#).unwrap_err();
        assert!(e.to_string().contains("NetworkID"), "{e}");
        let e = parse("/NetworkDriver.Join", b"").unwrap_err();
        assert!(matches!(e, ProtocolError::BadBody { .. }));
        let e = parse("/Foo.Bar", b"{}").unwrap_err();
        assert_eq!(e, ProtocolError::UnknownPath("/Foo.Bar".into()));
        let c = CreateNetwork {
            options: Some(BTreeMap::from([(
                GENERIC_OPTIONS.to_owned(),
                serde_json::json!({"vswitch.vni": 5}),
            )])),
            ..Default::default()
        };
        assert!(c.driver_options().unwrap_err().contains("vswitch.vni"));
    }
}
