//! VERSION, and the shape of ADD's result in every supported spec version,
//! with and without IPAM.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn version_lists_all_five_spec_versions() {
    let lab = lab("version-cmd");
    let out = lab
        .plugin("VERSION", &json!({"cniVersion": "1.1.0"}))
        .unset("CNI_CONTAINERID")
        .unset("CNI_NETNS")
        .unset("CNI_IFNAME")
        .run()
        .result();
    assert!(out["cniVersion"].is_string(), "no cniVersion: {out}");
    let listed: Vec<&str> = out["supportedVersions"]
        .as_array()
        .unwrap_or_else(|| panic!("no supportedVersions array: {out}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for v in VERSIONS {
        assert!(listed.contains(&v), "VERSION does not list {v}: {out}");
    }
}

/// Checks the parts of a result that do not depend on IPAM; returns the
/// index of the pod's interface.
fn check_common_shape(lab: &Lab, version: &str, result: &Value) -> usize {
    assert_eq!(result["cniVersion"], version, "result version: {result}");
    let idx = pod_interface(result, POD_IFNAME, &sandbox(lab));
    let link = lab.pod.expect_link(POD_IFNAME);
    let mac = result["interfaces"][idx]["mac"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(mac.to_ascii_lowercase(), link.mac, "result: {result}");
    idx
}

fn result_without_ipam(version: &str) {
    let lab = lab(&format!("shape-{version}"));
    let result = lab.add(&lab.config(version)).result();
    check_common_shape(&lab, version, &result);
    let no_ips = match &result["ips"] {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    assert!(
        no_ips,
        "no IPAM configured but the result has ips: {result}"
    );
}

/// With IPAM: one IPv4 address on the pod interface, `version: "4"` before
/// 1.0.0 and no `version` from 1.0.0 on, the route from the IPAM config.
fn check_ipam_shape(lab: &Lab, version: &str, result: &Value, want_addr: Option<&str>) {
    let idx = check_common_shape(lab, version, result);
    let ips = result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("result has no ips: {result}"));
    assert_eq!(ips.len(), 1, "one address expected: {result}");
    let ip = &ips[0];
    let addr = ip["address"].as_str().unwrap_or_default();
    assert!(
        addr.starts_with("10.200.1.") && addr.ends_with("/24"),
        "address {addr:?} not from the range: {result}"
    );
    if let Some(want) = want_addr {
        assert_eq!(addr, want, "{result}");
    }
    assert_eq!(ip["gateway"], "10.200.1.1", "{result}");
    assert_eq!(
        ip["interface"].as_u64(),
        Some(idx as u64),
        "ips[0].interface must index the pod interface: {result}"
    );
    if version.starts_with("0.") {
        assert_eq!(
            ip["version"], "4",
            "{version} results need ips[].version: {result}"
        );
    } else {
        assert!(
            ip.get("version").is_none(),
            "{version} results have no ips[].version: {result}"
        );
    }
    let routes = result["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("result has no routes: {result}"));
    assert!(
        routes.iter().any(|r| r["dst"] == "10.200.2.0/24"),
        "route from the IPAM config missing: {result}"
    );
    // And the kernel agrees with the result.
    assert_eq!(
        lab.pod.addr_cidrs(POD_IFNAME, "inet"),
        vec![addr.to_string()]
    );
}

fn result_with_host_local(version: &str) {
    let lab = lab(&format!("shape-ipam-{version}"));
    let mut config = lab.config(version);
    config["ipam"] = lab.host_local(1);
    let result = lab.add(&config).result();
    check_ipam_shape(&lab, version, &result, None);
}

#[test]
fn result_0_3_0_without_ipam() {
    result_without_ipam("0.3.0");
}

#[test]
fn result_0_3_1_without_ipam() {
    result_without_ipam("0.3.1");
}

#[test]
fn result_0_4_0_without_ipam() {
    result_without_ipam("0.4.0");
}

#[test]
fn result_1_0_0_without_ipam() {
    result_without_ipam("1.0.0");
}

#[test]
fn result_1_1_0_without_ipam() {
    result_without_ipam("1.1.0");
}

#[test]
fn result_0_3_0_with_host_local() {
    result_with_host_local("0.3.0");
}

#[test]
fn result_0_3_1_with_host_local() {
    result_with_host_local("0.3.1");
}

#[test]
fn result_0_4_0_with_host_local() {
    result_with_host_local("0.4.0");
}

#[test]
fn result_1_0_0_with_host_local() {
    result_with_host_local("1.0.0");
}

#[test]
fn result_1_1_0_with_host_local_that_speaks_only_1_0_0() {
    // The plugin asks the IPAM plugin's VERSION and hands it a 1.0.0
    // configuration; the result still comes out in 1.1.0's shape, and DEL
    // releases the lease through the same negotiation.
    result_with_host_local("1.1.0");
    let lab = lab("shape-ipam-negotiated-del");
    let mut config = lab.config("1.1.0");
    config["ipam"] = lab.host_local(1);
    lab.add(&config).result();
    lab.del(&config).success();
    lab.assert_clean("DEL after a negotiated 1.1.0 ADD");
}

#[test]
fn result_1_1_0_with_ipam() {
    // Debian's host-local (1.1.1) stops at spec 1.0.0, so a stand-in IPAM
    // plugin that speaks 1.1.0 answers here.
    let lab = lab("shape-ipam-1.1.0");
    let answer = json!({
        "cniVersion": "1.1.0",
        "ips": [{"address": "10.200.1.20/24", "gateway": "10.200.1.1"}],
        "routes": [{"dst": "10.200.2.0/24"}],
        "dns": {}
    });
    let mut config = lab.config("1.1.0");
    config["ipam"] = lab.fake_ipam("ipam-110", &answer, 0);
    let result = lab.add(&config).result();
    check_ipam_shape(&lab, "1.1.0", &result, Some("10.200.1.20/24"));
    let adds: Vec<String> = lab
        .fake_ipam_calls("ipam-110")
        .into_iter()
        .filter(|c| c.starts_with("ADD"))
        .collect();
    assert_eq!(adds, vec![format!("ADD {} {POD_IFNAME}", lab.container_id)]);
}

#[test]
fn chained_add_keeps_the_previous_result() {
    let lab = lab("chained");
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "02:00:00:00:99:01", "sandbox": sandbox(&lab)}],
        "ips": [{"address": "10.200.7.5/24", "gateway": "10.200.7.1", "interface": 0}],
        "routes": [{"dst": "10.200.8.0/24"}]
    });
    let mut config = lab.config("1.0.0");
    config["ipam"] = lab.host_local(1);
    config["prevResult"] = prev;
    let result = lab.add(&config).result();

    assert_eq!(result["interfaces"][0]["name"], "eth0", "{result}");
    let ours = pod_interface(&result, POD_IFNAME, &sandbox(&lab));
    assert_eq!(ours, 1, "{result}");
    let ips = result["ips"].as_array().expect("ips");
    assert!(
        ips.iter()
            .any(|ip| ip["address"] == "10.200.7.5/24" && ip["interface"] == 0),
        "previous address lost: {result}"
    );
    assert!(
        ips.iter().any(|ip| ip["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.200.1."))
            && ip["interface"] == 1),
        "our address missing or not pointing at our interface: {result}"
    );
    let routes = result["routes"].as_array().expect("routes");
    for dst in ["10.200.8.0/24", "10.200.2.0/24"] {
        assert!(
            routes.iter().any(|r| r["dst"] == dst),
            "route {dst} missing: {result}"
        );
    }
}
