//! The chained handover's view of `prevResult`: which container interface
//! to hand over, and the result that reports its addresses on the macvtap.
//! Pure functions of the parsed result (no kernel), so that every bad chain
//! is tested without root.

use std::net::IpAddr;

use macvtap_handover::Dns;
use serde_json::Value;

use crate::error::{code, err, Result};
use crate::spec::{CniResult, Interface, IpConfig};

/// The container interface a handover takes over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// Its index in `prevResult.interfaces`.
    pub index: usize,
    pub name: String,
    /// The MAC the previous plugin reported, if any.
    pub mac: Option<String>,
    /// The namespace the previous plugin says it is in.
    pub sandbox: String,
    /// The addresses `prevResult.ips` assigns to it (IPv4 first).
    pub addresses: Vec<IpAddr>,
}

fn is_container(i: &Interface) -> bool {
    i.sandbox.as_deref().is_some_and(|s| !s.is_empty())
}

fn ips_of(prev: &CniResult, index: usize) -> Vec<&IpConfig> {
    prev.ips
        .iter()
        .filter(|ip| ip.interface == Some(index))
        .collect()
}

/// Pick the container interface to hand over: the one named `wanted`
/// (`handoverInterface`), else the first container interface (one with a
/// `sandbox`) that `prevResult.ips` gives an IPv4 address.
///
/// Errors: no container interface, or none named `wanted` (code 7: the
/// chain is wrong); the chosen one has no IPv4 address (code 108).
pub fn choose(prev: &CniResult, wanted: Option<&str>) -> Result<Chosen> {
    let containers: Vec<(usize, &Interface)> = prev
        .interfaces
        .iter()
        .enumerate()
        .filter(|(_, i)| is_container(i))
        .collect();
    if containers.is_empty() {
        return Err(err(
            code::INVALID_CONFIG,
            "prevResult has no container interface (none with a \"sandbox\"): a handover must follow a plugin that makes one, such as bridge or ptp",
        ));
    }
    let has_v4 = |index: usize| ips_of(prev, index).iter().any(|ip| ip.address.is_ipv4());
    let (index, iface) = match wanted {
        Some(name) => *containers
            .iter()
            .find(|(_, i)| i.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = containers.iter().map(|(_, i)| i.name.as_str()).collect();
                err(
                    code::INVALID_CONFIG,
                    format!(
                        "prevResult has no container interface {name:?} (handoverInterface); its container interfaces are {}",
                        names.join(", ")
                    ),
                )
            })?,
        None => *containers
            .iter()
            .find(|(index, _)| has_v4(*index))
            .ok_or_else(|| {
                err(
                    code::NOT_HANDOVER_READY,
                    "no container interface in prevResult has an IPv4 address: there is no identity to hand over",
                )
            })?,
    };
    if !has_v4(index) {
        return Err(err(
            code::NOT_HANDOVER_READY,
            format!(
                "container interface {:?} has no IPv4 address in prevResult: there is no identity to hand over",
                iface.name
            ),
        ));
    }
    let mut addresses: Vec<IpAddr> = ips_of(prev, index).iter().map(|ip| ip.address).collect();
    addresses.sort_by_key(|a| !a.is_ipv4());
    Ok(Chosen {
        index,
        name: iface.name.clone(),
        mac: iface.mac.clone(),
        sandbox: iface.sandbox.clone().unwrap_or_default(),
        addresses,
    })
}

/// The result of a handover: `prev` with the macvtap added as a container
/// interface and the chosen interface's addresses moved to it; routes and
/// DNS as the previous plugin reported them (the guest takes them all).
pub fn handed_over(prev: &CniResult, chosen: &Chosen, macvtap: Interface) -> CniResult {
    let mut out = prev.clone();
    let ours = out.interfaces.len();
    out.interfaces.push(macvtap);
    for ip in &mut out.ips {
        if ip.interface == Some(chosen.index) {
            ip.interface = Some(ours);
        }
    }
    out
}

/// `prevResult`'s `dns` as the handover records it (and the guest gets it):
/// name servers (an entry that is not an IP address is a decode error,
/// code 6) and search domains; `domain` and `options` are not handed over.
pub fn dns_of(prev: &CniResult) -> Result<Dns> {
    let mut dns = Dns::default();
    let Some(obj) = prev.dns.as_ref().and_then(Value::as_object) else {
        return Ok(dns);
    };
    let strings = |key: &str| -> Vec<String> {
        obj.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    for ns in strings("nameservers") {
        dns.nameservers.push(ns.parse().map_err(|_| {
            err(
                code::DECODE,
                format!("prevResult dns.nameservers: {ns:?} is not an IP address"),
            )
        })?);
    }
    dns.search = strings("search");
    Ok(dns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the reference bridge plugin (with host-local) returns.
    fn bridge_result() -> CniResult {
        CniResult::parse(&json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
                {"name": "veth1234", "mac": "aa:bb:cc:00:00:02"},
                {"name": "eth0", "mac": "aa:bb:cc:00:00:03", "sandbox": "/run/netns/a"}
            ],
            "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
            "dns": {"nameservers": ["10.88.0.1"]}
        }))
        .unwrap()
    }

    #[test]
    fn the_first_container_interface_with_ipv4_is_chosen() {
        let c = choose(&bridge_result(), None).unwrap();
        assert_eq!(c.index, 2);
        assert_eq!(c.name, "eth0");
        assert_eq!(c.mac.as_deref(), Some("aa:bb:cc:00:00:03"));
        assert_eq!(c.sandbox, "/run/netns/a");
        assert_eq!(c.addresses, vec!["10.88.0.5".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn a_named_interface_is_chosen_and_a_missing_one_is_a_config_error() {
        let mut prev = bridge_result();
        prev.interfaces.push(Interface {
            name: "net1".into(),
            mac: None,
            mtu: None,
            sandbox: Some("/run/netns/a".into()),
        });
        prev.ips.push(IpConfig {
            address: "fd00::5".parse().unwrap(),
            prefix_len: 64,
            gateway: None,
            interface: Some(3),
        });
        prev.ips.push(IpConfig {
            address: "10.9.0.5".parse().unwrap(),
            prefix_len: 24,
            gateway: None,
            interface: Some(3),
        });
        let c = choose(&prev, Some("net1")).unwrap();
        assert_eq!(c.index, 3);
        // IPv4 first, whatever order prevResult gives.
        assert_eq!(
            c.addresses,
            vec![
                "10.9.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        let e = choose(&prev, Some("eth9")).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("eth0, net1"), "{}", e.msg);
        // A host-side interface is not a container interface, even by name.
        let e = choose(&prev, Some("cni0")).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
    }

    #[test]
    fn bad_chains_get_their_codes() {
        // Nothing in a sandbox (e.g. a plugin that only made host links).
        let mut prev = bridge_result();
        prev.interfaces[2].sandbox = None;
        assert_eq!(choose(&prev, None).unwrap_err().code, code::INVALID_CONFIG);
        let mut prev = bridge_result();
        prev.interfaces[2].sandbox = Some(String::new());
        assert_eq!(choose(&prev, None).unwrap_err().code, code::INVALID_CONFIG);
        // Empty result.
        assert_eq!(
            choose(&CniResult::default(), None).unwrap_err().code,
            code::INVALID_CONFIG
        );
        // IPv6 only.
        let mut prev = bridge_result();
        prev.ips[0].address = "fd00::5".parse().unwrap();
        assert_eq!(
            choose(&prev, None).unwrap_err().code,
            code::NOT_HANDOVER_READY
        );
        assert_eq!(
            choose(&prev, Some("eth0")).unwrap_err().code,
            code::NOT_HANDOVER_READY
        );
        // An address that names no interface is nobody's.
        let mut prev = bridge_result();
        prev.ips[0].interface = None;
        assert_eq!(
            choose(&prev, None).unwrap_err().code,
            code::NOT_HANDOVER_READY
        );
        // An address on a host interface does not count for a container one.
        let mut prev = bridge_result();
        prev.ips[0].interface = Some(0);
        assert_eq!(
            choose(&prev, None).unwrap_err().code,
            code::NOT_HANDOVER_READY
        );
    }

    #[test]
    fn the_result_moves_the_addresses_to_the_macvtap_and_keeps_routes_and_dns() {
        let prev = bridge_result();
        let c = choose(&prev, None).unwrap();
        let mv = Interface {
            name: "hvtap2".into(),
            mac: Some("02:00:00:00:00:09".into()),
            mtu: Some(1500),
            sandbox: Some("/run/netns/a".into()),
        };
        let out = handed_over(&prev, &c, mv.clone());
        assert_eq!(out.interfaces.len(), 4);
        assert_eq!(out.interfaces[3], mv);
        assert_eq!(out.interfaces[..3], prev.interfaces[..]);
        assert_eq!(out.ips.len(), 1);
        assert_eq!(out.ips[0].interface, Some(3));
        assert_eq!(out.ips[0].address, prev.ips[0].address);
        assert_eq!(out.ips[0].gateway, prev.ips[0].gateway);
        assert_eq!(out.routes, prev.routes);
        assert_eq!(out.dns, prev.dns);
        let json = out.to_json(crate::spec::Version::V100);
        assert_eq!(json["ips"][0]["interface"], 3);
        assert_eq!(json["interfaces"][3]["mac"], "02:00:00:00:00:09");
    }

    #[test]
    fn dns_comes_from_prev_result() {
        let dns = dns_of(&bridge_result()).unwrap();
        assert_eq!(
            dns.nameservers,
            vec!["10.88.0.1".parse::<IpAddr>().unwrap()]
        );
        assert!(dns.search.is_empty());
        let mut prev = bridge_result();
        prev.dns = Some(
            json!({"nameservers": ["fd00::53", "10.0.0.53"], "search": ["a.example", "b.example"], "domain": "x"}),
        );
        let dns = dns_of(&prev).unwrap();
        assert_eq!(dns.nameservers.len(), 2);
        assert_eq!(dns.search, vec!["a.example", "b.example"]);
        prev.dns = None;
        assert_eq!(dns_of(&prev).unwrap(), Dns::default());
        prev.dns = Some(json!({"nameservers": ["ns1.example"]}));
        assert_eq!(dns_of(&prev).unwrap_err().code, code::DECODE);
    }
}
