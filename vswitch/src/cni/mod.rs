//! `vswitch-cni`: a CNI plugin (spec 1.0.0, and 1.1's STATUS and GC) that puts containers on a
//! `vswitchd` network through the daemon's control socket.
//!
//! The runtime runs the plugin with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_ARGS` and `CNI_PATH` in the environment and the network configuration on stdin; the
//! plugin answers with a result (ADD), nothing (DEL, CHECK, STATUS, GC), the versions it speaks
//! (VERSION), or the spec's error JSON on stdout with a non-zero exit status. [`run`] is all of
//! it but the process around it, so that it can be tested without one.
//!
//! The conflist's `name` is the `vswitchd` network unless the configuration names one
//! (`"network"`); `"socket"` names the control socket. The daemon's answer maps to the result:
//! one interface in the sandbox, its addresses with the gateway, a default route, and the
//! configuration's `dns` (else the daemon's name server on the gateway, when it runs one); a
//! `prevResult` from plugins before this one is kept, ours appended.

pub mod codes;
pub mod types;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use netns::{NetNs, Netlink, NsRef};
use serde_json::Value;

use self::codes::error;
use self::types::{CniError, CniResult, Dns, Interface, IpConfig, NetConf, Route};
use crate::control::api::{
    self, AttachRequest, Attachment, ClientError, DetachRequest, ErrorKind, Reply, Request,
};
use crate::control::gateway::PortMapping;
use crate::control::handoff::{self, HelperError};
use crate::policy::BitRate;
use crate::wire::MacAddr;

/// Spec versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Where `vswitchd` listens unless the configuration says `"socket"`.
pub const DEFAULT_SOCKET: &str = "/run/vswitch/vswitchd.sock";

/// The version errors are reported in before the configuration has been read.
const FALLBACK_VERSION: &str = "1.0.0";

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`: the path of the container's network namespace.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`: `KEY=VALUE;KEY=VALUE`.
    pub args: Option<String>,
}

impl Env {
    /// Reads the `CNI_*` variables through `get` (`std::env::var` in the plugin).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let non_empty = |key: &str| get(key).filter(|v| !v.is_empty());
        Env {
            command: get("CNI_COMMAND").unwrap_or_default(),
            container_id: non_empty("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS"),
            ifname: non_empty("CNI_IFNAME"),
            args: non_empty("CNI_ARGS"),
        }
    }
}

/// Runs one command: `Ok(Some(json))` is printed on stdout, `Ok(None)` prints nothing, an
/// error is printed as the spec's error JSON.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<String>, CniError> {
    if env.command == "VERSION" {
        return Ok(Some(version(stdin)));
    }
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        error(
            FALLBACK_VERSION,
            codes::DECODE_FAILURE,
            "cannot decode the network configuration",
            format!("stdin: {e}"),
        )
    })?;
    let v = conf.cni_version.clone();
    if !SUPPORTED_VERSIONS.contains(&v.as_str()) {
        return Err(error(
            FALLBACK_VERSION,
            codes::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "cniVersion {v:?} is not one vswitch-cni speaks ({})",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let socket = conf
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let network = conf.network.clone().unwrap_or_else(|| conf.name.clone());
    match env.command.as_str() {
        "ADD" => add(env, &conf, &socket, &network).map(Some),
        "DEL" => del(env, &conf, &socket).map(|()| None),
        "CHECK" => check(env, &conf, &socket, &network).map(|()| None),
        "STATUS" => status(&conf, &socket, &network).map(|()| None),
        // The daemon detaches a container whose namespace is gone within seconds and releases
        // its address: nothing is left for a runtime's garbage collection to find.
        "GC" => Ok(None),
        "" => Err(invalid_env(&v, "CNI_COMMAND is not set")),
        other => Err(invalid_env(
            &v,
            &format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK, VERSION, STATUS or GC"),
        )),
    }
}

/// VERSION: the versions this plugin speaks, in the version the runtime asked in.
fn version(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| FALLBACK_VERSION.to_owned());
    serde_json::json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS }).to_string()
}

fn invalid_env(version: &str, details: &str) -> CniError {
    error(
        version,
        codes::INVALID_ENVIRONMENT,
        "invalid CNI environment",
        details,
    )
}

fn required<'a>(version: &str, value: &'a Option<String>, name: &str) -> Result<&'a str, CniError> {
    value
        .as_deref()
        .ok_or_else(|| invalid_env(version, &format!("{name} is not set")))
}

/// What `CNI_ARGS` carries that we use: a static address and MAC (as the `static` IPAM plugin
/// and the `tuning` plugin take them).
#[derive(Debug, Default, PartialEq, Eq)]
struct CniArgs {
    ip: Option<String>,
    mac: Option<String>,
}

/// Parses `CNI_ARGS`; a key we do not know is an error unless `IgnoreUnknown` is set, as the
/// spec's conventions ask. Kubernetes' `K8S_POD_*` keys are known and ignored.
fn parse_args(version: &str, args: Option<&str>) -> Result<CniArgs, CniError> {
    let mut parsed = CniArgs::default();
    let Some(args) = args else {
        return Ok(parsed);
    };
    let pairs: Vec<(&str, &str)> = args
        .split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=').ok_or_else(|| {
                invalid_env(version, &format!("CNI_ARGS: {pair:?} is not KEY=VALUE"))
            })
        })
        .collect::<Result<_, _>>()?;
    let ignore_unknown = pairs
        .iter()
        .any(|(k, v)| *k == "IgnoreUnknown" && (v.eq_ignore_ascii_case("true") || *v == "1"));
    for (key, value) in pairs {
        match key {
            "IP" => parsed.ip = Some(value.to_owned()),
            "MAC" => parsed.mac = Some(value.to_owned()),
            "IgnoreUnknown" => {}
            k if k.starts_with("K8S_POD_") => {}
            k if ignore_unknown => {
                let _ = k;
            }
            k => {
                return Err(invalid_env(
                    version,
                    &format!(
                        "CNI_ARGS: unknown key {k:?} (vswitch-cni takes IP and MAC; set \
                         IgnoreUnknown=1 to pass others)"
                    ),
                ));
            }
        }
    }
    Ok(parsed)
}

/// The one static address asked for, from `runtimeConfig.ips` or `CNI_ARGS` `IP`.
fn requested_ip(conf: &NetConf, args: &CniArgs) -> Result<Option<IpAddr>, CniError> {
    let v = &conf.cni_version;
    let asked: Vec<&str> = conf
        .runtime_config
        .ips
        .iter()
        .map(String::as_str)
        .chain(args.ip.as_deref())
        .collect();
    let mut ips = Vec::new();
    for text in asked {
        let address = text.split_once('/').map_or(text, |(a, _)| a);
        let ip: IpAddr = address.parse().map_err(|_| {
            error(
                v,
                codes::INVALID_NETWORK_CONFIG,
                "invalid static address",
                format!("{text:?} is not an IP address (e.g. 10.244.1.7/16)"),
            )
        })?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    match ips.as_slice() {
        [] => Ok(None),
        [ip] => Ok(Some(*ip)),
        _ => Err(error(
            v,
            codes::INVALID_NETWORK_CONFIG,
            "more than one static address",
            format!(
                "{} addresses asked for; vswitch-cni takes one (the IPv4 address, or the IPv6 one \
                 on a dual-stack network; the other family is leased)",
                ips.len()
            ),
        )),
    }
}

fn requested_mac(conf: &NetConf, args: &CniArgs) -> Result<Option<MacAddr>, CniError> {
    let Some(text) = conf.runtime_config.mac.as_deref().or(args.mac.as_deref()) else {
        return Ok(None);
    };
    text.parse().map(Some).map_err(|_| {
        error(
            &conf.cni_version,
            codes::INVALID_NETWORK_CONFIG,
            "invalid static MAC",
            format!("{text:?} is not a MAC address (e.g. 0a:58:0a:f4:01:07)"),
        )
    })
}

/// The `portMappings` capability as ports to publish.
fn requested_ports(conf: &NetConf) -> Result<Vec<PortMapping>, CniError> {
    let v = &conf.cni_version;
    let invalid = |details: String| {
        error(
            v,
            codes::INVALID_NETWORK_CONFIG,
            "invalid port mapping",
            details,
        )
    };
    conf.runtime_config
        .port_mappings
        .iter()
        .map(|m| {
            if m.host_ip
                .as_deref()
                .is_some_and(|ip| !ip.is_empty() && ip != "0.0.0.0")
            {
                return Err(error(
                    v,
                    codes::UNSUPPORTED_FIELD,
                    "hostIP is not supported",
                    format!(
                        "runtimeConfig.portMappings: hostIP {:?}: vswitch publishes a port on \
                         every address of the host",
                        m.host_ip.as_deref().unwrap_or_default()
                    ),
                ));
            }
            let protocol = m.protocol.as_deref().unwrap_or("tcp").to_ascii_lowercase();
            format!("{}:{}/{protocol}", m.host_port, m.container_port)
                .parse::<PortMapping>()
                .map_err(|why| invalid(format!("runtimeConfig.portMappings: {why}")))
        })
        .collect()
}

/// The rate limit the `bandwidth` capability asks for: one rate for both directions (the
/// larger burst, in bytes), or an error when the two directions ask for different rates.
fn requested_bandwidth(conf: &NetConf) -> Result<(Option<BitRate>, Option<u64>), CniError> {
    let Some(b) = conf.runtime_config.bandwidth else {
        return Ok((None, None));
    };
    let rate = match (b.ingress_rate, b.egress_rate) {
        (Some(i), Some(e)) if i != e => {
            return Err(error(
                &conf.cni_version,
                codes::UNSUPPORTED_FIELD,
                "different ingress and egress rates",
                format!(
                    "runtimeConfig.bandwidth: vswitch limits both directions of a port at one \
                     rate; ingressRate {i} and egressRate {e} differ (give one, or both the same)"
                ),
            ));
        }
        (Some(r), _) | (None, Some(r)) => r,
        (None, None) => return Ok((None, None)),
    };
    let burst = b
        .ingress_burst
        .max(b.egress_burst)
        .filter(|&bits| bits > 0)
        .map(|bits| bits.div_ceil(8));
    Ok((BitRate::new(rate), burst))
}

fn add(env: &Env, conf: &NetConf, socket: &Path, network: &str) -> Result<String, CniError> {
    let v = &conf.cni_version;
    let container_id = required(v, &env.container_id, "CNI_CONTAINERID")?;
    let ifname = required(v, &env.ifname, "CNI_IFNAME")?;
    let netns = required(v, &env.netns, "CNI_NETNS")?;
    let (rate, burst) = requested_bandwidth(conf)?;
    let args = parse_args(v, env.args.as_deref())?;
    let request = AttachRequest {
        netns: netns.to_owned(),
        network: Some(network.to_owned()),
        ifname: Some(ifname.to_owned()),
        container_id: Some(container_id.to_owned()),
        ip: requested_ip(conf, &args)?,
        mac: requested_mac(conf, &args)?,
        labels: conf.runtime_config.labels.clone(),
        publish: requested_ports(conf)?,
        rate,
        burst,
    };
    let attachment = match api::call(socket, &Request::Attach(request.clone())) {
        Ok(Reply::Attached(a)) => a,
        Ok(other) => return Err(unexpected(v, &other)),
        // A daemon without privileges: the plugin sets the interface up itself and hands its
        // queues over.
        Err(ClientError::Refused(e)) if e.kind == ErrorKind::PermissionDenied => {
            match handoff::attach(socket, request) {
                Ok(a) => a,
                Err(e) => return Err(helper_error(v, e)),
            }
        }
        Err(e) => return Err(codes::from_client(v, &e)),
    };
    let previous = prev_result(conf)?.unwrap_or_default();
    let result = result_of(previous, conf, &attachment, netns);
    serde_json::to_string(&result).map_err(|e| {
        error(
            v,
            codes::IO_FAILURE,
            "cannot encode the result",
            e.to_string(),
        )
    })
}

fn unexpected(version: &str, reply: &Reply) -> CniError {
    error(
        version,
        codes::DAEMON_ERROR,
        "unexpected reply from vswitchd",
        format!("{reply:?}"),
    )
}

fn prev_result(conf: &NetConf) -> Result<Option<CniResult>, CniError> {
    conf.prev_result
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| {
            error(
                &conf.cni_version,
                codes::DECODE_FAILURE,
                "cannot decode prevResult",
                e.to_string(),
            )
        })
}

/// Whether `version` is before 1.0.0 (whose addresses carry `"version"`).
fn before_1_0(version: &str) -> bool {
    matches!(version, "0.3.0" | "0.3.1" | "0.4.0")
}

/// `previous` with the attached interface, its addresses and default route appended.
pub fn result_of(
    mut result: CniResult,
    conf: &NetConf,
    a: &Attachment,
    sandbox: &str,
) -> CniResult {
    let v = conf.cni_version.as_str();
    result.cni_version = v.to_owned();
    let index = result.interfaces.len();
    result.interfaces.push(Interface {
        name: a.ifname.clone(),
        mac: Some(a.mac.to_string()),
        mtu: (v == "1.1.0").then_some(u32::from(a.mtu)),
        sandbox: Some(sandbox.to_owned()),
        rest: Default::default(),
    });
    let family =
        |ip: &IpAddr| before_1_0(v).then(|| if ip.is_ipv4() { "4" } else { "6" }.to_owned());
    result.ips.push(IpConfig {
        version: family(&a.address.addr()),
        address: a.address.to_string(),
        gateway: Some(a.gateway.to_string()),
        interface: Some(index),
    });
    if let Some(v6) = a.address6 {
        result.ips.push(IpConfig {
            version: family(&v6.addr()),
            address: v6.to_string(),
            gateway: None,
            interface: Some(index),
        });
    }
    result.routes.push(Route {
        dst: if a.gateway.is_ipv4() {
            "0.0.0.0/0"
        } else {
            "::/0"
        }
        .to_owned(),
        gw: Some(a.gateway.to_string()),
        rest: Default::default(),
    });
    if let Some(dns) = &conf.dns {
        if result.dns == Default::default() {
            result.dns = dns.clone();
        }
    } else if let Some(server) = a.dns
        && result.dns == Default::default()
    {
        // The daemon's name server on the gateway, which answers the network's containers.
        result.dns = Dns {
            nameservers: vec![server.to_string()],
            search: vec![a.network.clone()],
            ..Dns::default()
        };
    }
    result
}

fn del(env: &Env, conf: &NetConf, socket: &Path) -> Result<(), CniError> {
    let v = &conf.cni_version;
    let container_id = required(v, &env.container_id, "CNI_CONTAINERID")?;
    let ifname = required(v, &env.ifname, "CNI_IFNAME")?;
    let request = DetachRequest {
        container_id: container_id.to_owned(),
        ifname: Some(ifname.to_owned()),
    };
    // As a helper: the interface of a container attached by one (for a daemon without
    // privileges) is removed here; one the daemon made, it removes itself.
    match handoff::detach(socket, request) {
        Ok(_) => Ok(()),
        // With the daemon down and the namespace gone, nothing is left to undo here: the
        // daemon forgets the container and releases its address when it starts. With the
        // namespace still there the interface would stay: the runtime must try again.
        Err(HelperError::Daemon(e)) if e.is_daemon_missing() => match env.netns.as_deref() {
            Some(netns) if Path::new(netns).exists() => Err(codes::from_client(v, &e)),
            _ => Ok(()),
        },
        Err(e) => Err(helper_error(v, e)),
    }
}

/// A helper's failure in the spec's form.
fn helper_error(version: &str, e: HelperError) -> CniError {
    match e {
        HelperError::Daemon(e) => codes::from_client(version, &e),
        HelperError::Attach(e) => error(
            version,
            codes::IO_FAILURE,
            "cannot set up the container's interface",
            e.to_string(),
        ),
    }
}

fn check(env: &Env, conf: &NetConf, socket: &Path, network: &str) -> Result<(), CniError> {
    let v = &conf.cni_version;
    if matches!(v.as_str(), "0.3.0" | "0.3.1") {
        return Err(error(
            v,
            codes::INCOMPATIBLE_VERSION,
            "CHECK needs cniVersion 0.4.0 or later",
            format!("cniVersion is {v}"),
        ));
    }
    let container_id = required(v, &env.container_id, "CNI_CONTAINERID")?;
    let ifname = required(v, &env.ifname, "CNI_IFNAME")?;
    let netns = required(v, &env.netns, "CNI_NETNS")?;
    let ports = match api::call(socket, &Request::Ports) {
        Ok(Reply::Ports(ports)) => ports,
        Ok(other) => return Err(unexpected(v, &other)),
        Err(e) => return Err(codes::from_client(v, &e)),
    };
    let Some(a) = ports
        .into_iter()
        .map(|p| p.attachment)
        .find(|a| a.container_id == container_id && a.ifname == ifname)
    else {
        return Err(error(
            v,
            codes::UNKNOWN_CONTAINER,
            "container not attached",
            format!("vswitchd has no interface {ifname} of container {container_id}"),
        ));
    };
    let failed = |details: String| error(v, codes::CHECK_FAILED, "check failed", details);
    if a.network != network {
        return Err(failed(format!(
            "{container_id} {ifname} is attached to network {:?}, not {network:?}",
            a.network
        )));
    }
    if let Some(previous) = prev_result(conf)? {
        check_prev_result(&previous, &a, netns).map_err(failed)?;
    }
    let ns_ref = NsRef::Path(PathBuf::from(netns));
    let ns = NetNs::open(&ns_ref).map_err(|e| {
        error(
            v,
            codes::UNKNOWN_CONTAINER,
            "no such network namespace",
            format!("CNI_NETNS {netns}: {e}"),
        )
    })?;
    check_namespace(&ns, &a).map_err(failed)
}

/// Our interface in `previous` must be the attached one, with its address.
fn check_prev_result(previous: &CniResult, a: &Attachment, netns: &str) -> Result<(), String> {
    let Some(index) = previous
        .interfaces
        .iter()
        .position(|i| i.name == a.ifname && i.sandbox.as_deref() == Some(netns))
    else {
        return Err(format!(
            "prevResult has no interface {} in {netns}",
            a.ifname
        ));
    };
    let mac = previous.interfaces[index].mac.as_deref();
    if mac.is_some_and(|m| m.parse::<MacAddr>().ok() != Some(a.mac)) {
        return Err(format!(
            "prevResult gives {} the MAC {}, vswitchd {}",
            a.ifname,
            mac.unwrap_or_default(),
            a.mac
        ));
    }
    let has = |address: &ipnet::IpNet| {
        previous.ips.iter().any(|ip| {
            ip.interface == Some(index) && ip.address.parse::<ipnet::IpNet>().ok() == Some(*address)
        })
    };
    for address in std::iter::once(a.address).chain(a.address6) {
        if !has(&address) {
            return Err(format!(
                "prevResult does not give {} the address {address} vswitchd leased it",
                a.ifname
            ));
        }
    }
    Ok(())
}

/// The interface in the namespace must carry the attachment's MAC, MTU, addresses and default
/// route.
pub fn check_namespace(ns: &NetNs, a: &Attachment) -> Result<(), String> {
    let nl = Netlink::in_namespace(ns).map_err(|e| e.to_string())?;
    let Some(link) = nl.link_info(&a.ifname).map_err(|e| e.to_string())? else {
        return Err(format!("there is no interface {} in {}", a.ifname, a.netns));
    };
    if link.mac != Some(a.mac.0) {
        return Err(format!(
            "{} has the MAC {:?}, not {}",
            a.ifname,
            link.mac.map(MacAddr),
            a.mac
        ));
    }
    if link.mtu != Some(u32::from(a.mtu)) {
        return Err(format!(
            "{} has the MTU {:?}, not {}",
            a.ifname, link.mtu, a.mtu
        ));
    }
    let addresses = nl.addresses(&a.ifname).map_err(|e| e.to_string())?;
    for address in std::iter::once(a.address).chain(a.address6) {
        if !addresses.contains(&address) {
            return Err(format!(
                "{} lacks the address {address} (it has {addresses:?})",
                a.ifname
            ));
        }
    }
    let routes = nl.routes().map_err(|e| e.to_string())?;
    let default = routes.iter().any(|r| {
        r.dst.prefix_len() == 0
            && r.dst.addr().is_ipv4() == a.gateway.is_ipv4()
            && r.gateway == Some(a.gateway)
            && r.oif == Some(link.index)
    });
    if !default {
        return Err(format!(
            "there is no default route via {} on {}",
            a.gateway, a.ifname
        ));
    }
    Ok(())
}

fn status(conf: &NetConf, socket: &Path, network: &str) -> Result<(), CniError> {
    let v = &conf.cni_version;
    let unavailable = |details: String| {
        error(
            v,
            codes::NOT_AVAILABLE,
            "vswitch-cni cannot add containers now",
            details,
        )
    };
    match api::call(socket, &Request::Status) {
        Ok(Reply::Status(s)) if s.networks.iter().any(|n| n.name == network) => Ok(()),
        Ok(Reply::Status(s)) => Err(unavailable(format!(
            "vswitchd carries no network {network:?} (it has {})",
            s.networks
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        Ok(other) => Err(unexpected(v, &other)),
        Err(e) => Err(unavailable(e.to_string())),
    }
}

#[cfg(test)]
mod tests;
