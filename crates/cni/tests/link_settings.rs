//! MTU and promiscuous mode.

mod common;

use common::*;
use serde_json::json;

#[test]
fn configured_mtu_is_applied() {
    let lab = lab("mtu-set");
    let mut config = lab.config("1.0.0");
    config["mtu"] = json!(1400);
    let result = lab.add(&config).result();
    let link = assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");
    assert_eq!(link.mtu, 1400, "{}", link.json);
}

#[test]
fn mtu_defaults_to_the_lower_devices() {
    let lab = lab("mtu-default");
    // Not 1500, so a hard-coded default cannot pass by accident.
    lab.node.ip_ok(&["link", "set", LOWER, "mtu", "4000"]);
    let result = lab.add(&lab.config("1.0.0")).result();
    let link = assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");
    assert_eq!(link.mtu, 4000, "{}", link.json);
}

#[test]
fn mtu_above_the_lower_devices_fails_and_leaves_nothing() {
    let lab = lab("mtu-too-big");
    let mut config = lab.config("1.0.0");
    config["mtu"] = json!(9000); // up0 has 1500
                                 // 7 if the plugin checks against the lower device, 103 if the kernel says no.
    lab.add(&config).error_in(&[7, 103]);
    lab.assert_clean("ADD with mtu above the lower device's");
}

#[test]
fn promisc_mode_sets_iff_promisc() {
    let lab = lab("promisc-on");
    let mut config = lab.config("1.0.0");
    config["promiscMode"] = json!(true);
    let result = lab.add(&config).result();
    let link = assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");
    assert!(link.has_flag("PROMISC"), "no PROMISC flag: {}", link.json);
}

#[test]
fn promisc_mode_is_off_by_default_and_when_false() {
    let lab = lab("promisc-off");
    let default = lab.add(&lab.config("1.0.0")).result();
    let link = assert_attached(&lab, &lab.pod, &default, POD_IFNAME, "bridge");
    assert!(
        !link.has_flag("PROMISC"),
        "PROMISC set by default: {}",
        link.json
    );

    let mut config = lab.config("1.0.0");
    config["promiscMode"] = json!(false);
    let result = lab.plugin("ADD", &config).ifname("net2").run().result();
    let link = assert_attached(&lab, &lab.pod, &result, "net2", "bridge");
    assert!(
        !link.has_flag("PROMISC"),
        "PROMISC set when false: {}",
        link.json
    );
}
