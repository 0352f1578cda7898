//! IPAM delegation with the real host-local (and stand-ins where a
//! misbehaving IPAM plugin is needed): configuration, release, rollback.

mod common;

use std::fs;

use common::*;
use serde_json::{json, Value};

fn ipam_config(lab: &Lab, ipam: Value) -> Value {
    let mut config = lab.config("1.0.0");
    config["ipam"] = ipam;
    config
}

#[test]
fn host_local_address_and_route_are_configured_and_released_on_del() {
    let lab = lab("ipam-host-local");
    let config = ipam_config(&lab, lab.host_local(1));
    let result = lab.add(&config).result();
    assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");

    let cidr = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in result: {result}"))
        .to_string();
    assert_eq!(lab.pod.addr_cidrs(POD_IFNAME, "inet"), vec![cidr.clone()]);
    let routes = lab.pod.routes();
    assert!(
        routes.iter().any(|r| r["dst"] == "10.200.2.0/24"
            && r["gateway"] == "10.200.1.1"
            && r["dev"] == POD_IFNAME),
        "route 10.200.2.0/24 via 10.200.1.1 dev {POD_IFNAME} missing: {routes:?}"
    );
    assert!(
        result["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["dst"] == "10.200.2.0/24")),
        "result lacks the route: {result}"
    );

    // host-local's lease is a file named after the address.
    let ip = cidr.split('/').next().unwrap_or_default();
    let leases = leases_in(&lab.ipam_dir());
    assert_eq!(leases.len(), 1, "one lease expected: {leases:?}");
    assert!(
        leases[0].ends_with(ip),
        "lease {:?} is not for {ip}",
        leases[0]
    );
    let owner = fs::read_to_string(&leases[0]).unwrap_or_default();
    assert!(
        owner.contains(&lab.container_id),
        "lease not ours: {owner:?}"
    );

    lab.del(&config).success();
    lab.assert_clean("DEL");
}

#[test]
fn exhausted_range_rolls_back_the_second_attachment() {
    let lab = lab("ipam-exhausted");
    let mut ipam = lab.host_local(1);
    // A range of exactly one address.
    ipam["ranges"][0][0]["rangeStart"] = json!("10.200.1.10");
    ipam["ranges"][0][0]["rangeEnd"] = json!("10.200.1.10");
    let config = ipam_config(&lab, ipam);
    let first = lab.add(&config).result();
    let first_link = assert_attached(&lab, &lab.pod, &first, POD_IFNAME, "bridge");

    let pod2 = lab.netns("pod2");
    let cid2 = lab.other_container_id("b");
    let out = lab
        .plugin("ADD", &config)
        .container_id(&cid2)
        .netns(pod2.path())
        .run();
    // host-local's own error is passed on; any well-formed error is fine.
    out.any_error();

    assert!(
        pod2.macvtaps().is_empty(),
        "macvtap left in pod2 after rollback"
    );
    let files = files_under(&lab.state_dir().join("pods").join(&cid2));
    assert!(
        files.is_empty(),
        "files left for the failed attachment: {files:?}"
    );
    assert_eq!(lab.node.macvtaps().len(), 0, "macvtap left in NODE");
    // The first attachment is untouched, its lease still held.
    let leases = leases_in(&lab.ipam_dir());
    assert_eq!(leases.len(), 1, "leases: {leases:?}");
    assert!(leases[0].ends_with("10.200.1.10"));
    let still = lab.pod.expect_link(POD_IFNAME);
    assert_eq!(
        (still.ifindex, still.mac),
        (first_link.ifindex, first_link.mac)
    );
    assert_eq!(
        lab.pod.addr_cidrs(POD_IFNAME, "inet"),
        vec!["10.200.1.10/24"]
    );
}

#[test]
fn unknown_ipam_type_is_refused_with_105_and_rolled_back() {
    let lab = lab("ipam-unknown");
    let config = ipam_config(&lab, json!({"type": "no-such-ipam-plugin"}));
    lab.add(&config).error(105);
    lab.assert_clean("ADD with an unknown IPAM type");
}

#[test]
fn an_ipam_plugins_own_error_is_passed_on_and_rolled_back() {
    let lab = lab("ipam-own-error");
    let failure = json!({"cniVersion": "1.0.0", "code": 150, "msg": "pool on fire"});
    let config = ipam_config(&lab, lab.fake_ipam("angry-ipam", &failure, 1));
    let err = lab.add(&config).error(150);
    assert!(
        err["msg"]
            .as_str()
            .is_some_and(|m| m.contains("pool on fire")),
        "the IPAM plugin's message was not passed on: {err}"
    );
    lab.assert_clean("ADD whose IPAM plugin failed");
}

#[test]
fn an_unusable_ipam_result_releases_the_lease() {
    // host-local hands out an address and a route whose gateway is not
    // on-link, so the kernel refuses the route after the lease exists: the
    // rollback must give the lease back and remove the link.
    let lab = lab("ipam-bad-route");
    let mut ipam = lab.host_local(1);
    ipam["routes"] = json!([{"dst": "10.200.9.0/24", "gw": "10.200.77.1"}]);
    let config = ipam_config(&lab, ipam);
    lab.add(&config).any_error();
    lab.assert_clean("ADD whose route could not be configured");
}

#[test]
fn del_calls_the_ipam_plugins_del() {
    let lab = lab("ipam-del");
    let answer = json!({
        "cniVersion": "1.0.0",
        "ips": [{"address": "10.200.1.30/24", "gateway": "10.200.1.1"}],
    });
    let config = ipam_config(&lab, lab.fake_ipam("ipam-log", &answer, 0));
    lab.add(&config).result();
    lab.del(&config).success();
    let dels: Vec<String> = lab
        .fake_ipam_calls("ipam-log")
        .into_iter()
        .filter(|c| c.starts_with("DEL"))
        .collect();
    assert_eq!(dels, vec![format!("DEL {} {POD_IFNAME}", lab.container_id)]);
    lab.assert_clean("DEL");
}
