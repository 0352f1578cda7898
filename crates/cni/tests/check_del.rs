//! CHECK against prevResult, and DEL in every state of the world.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

fn ipam_config(lab: &Lab, version: &str) -> Value {
    let mut config = lab.config(version);
    config["mtu"] = json!(1400);
    config["ipam"] = lab.host_local(1);
    config
}

fn check_passes_after_add(version: &str) {
    let lab = lab(&format!("check-ok-{version}"));
    let config = ipam_config(&lab, version);
    let result = lab.add(&config).result();
    lab.check(&config, &result).success();
}

#[test]
fn check_passes_after_add_1_0_0() {
    check_passes_after_add("1.0.0");
}

#[test]
fn check_passes_after_add_0_4_0() {
    check_passes_after_add("0.4.0");
}

/// ADD, a passing CHECK, `tamper`, then CHECK must report 107.
fn check_detects(test: &str, tamper: impl FnOnce(&Lab)) {
    check_detects_in("1.0.0", test, tamper);
}

fn check_detects_in(version: &str, test: &str, tamper: impl FnOnce(&Lab)) {
    let lab = lab(test);
    let config = ipam_config(&lab, version);
    let result = lab.add(&config).result();
    lab.check(&config, &result).success();
    tamper(&lab);
    lab.check(&config, &result).error(107);
}

#[test]
fn check_detects_a_changed_mac() {
    check_detects("check-mac", |lab| {
        lab.pod
            .ip_ok(&["link", "set", POD_IFNAME, "address", "02:00:00:00:ee:01"]);
    });
}

#[test]
fn check_detects_a_changed_mac_0_4_0() {
    check_detects_in("0.4.0", "check-mac-0.4.0", |lab| {
        lab.pod
            .ip_ok(&["link", "set", POD_IFNAME, "address", "02:00:00:00:ee:01"]);
    });
}

#[test]
fn check_detects_a_removed_address_0_4_0() {
    check_detects_in("0.4.0", "check-addr-0.4.0", |lab| {
        lab.pod.ip_ok(&["addr", "flush", "dev", POD_IFNAME]);
    });
}

#[test]
fn check_detects_a_changed_mtu() {
    check_detects("check-mtu", |lab| {
        lab.pod.ip_ok(&["link", "set", POD_IFNAME, "mtu", "1300"]);
    });
}

#[test]
fn check_detects_a_link_that_is_down() {
    check_detects("check-down", |lab| {
        lab.pod.ip_ok(&["link", "set", POD_IFNAME, "down"]);
    });
}

#[test]
fn check_detects_a_removed_address() {
    check_detects("check-addr", |lab| {
        lab.pod.ip_ok(&["addr", "flush", "dev", POD_IFNAME]);
    });
}

#[test]
fn check_detects_a_missing_link() {
    check_detects("check-gone", |lab| {
        lab.pod.ip_ok(&["link", "del", POD_IFNAME]);
    });
}

#[test]
fn check_detects_a_device_node_with_the_wrong_mode() {
    check_detects("check-node-mode", |lab| {
        let node = lab.pod_tap_path(&lab.container_id, POD_IFNAME);
        std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666))
            .expect("chmod device node");
    });
}

#[test]
fn check_detects_a_device_node_with_the_wrong_owner() {
    check_detects("check-node-owner", |lab| {
        let node = lab.pod_tap_path(&lab.container_id, POD_IFNAME);
        std::os::unix::fs::chown(&node, Some(0), Some(0)).expect("chown device node");
    });
}

#[test]
fn check_detects_a_device_node_with_the_wrong_number() {
    check_detects("check-node-number", |lab| {
        let node = lab.pod_tap_path(&lab.container_id, POD_IFNAME);
        let old = DeviceNode::stat(&node).expect("device node");
        std::fs::remove_file(&node).expect("remove device node");
        // Same major, another minor: another macvtap's device.
        let minor = (old.minor + 1).to_string();
        let major = old.major.to_string();
        let st = Command::new("mknod")
            .args(["-m", "0660"])
            .arg(&node)
            .args(["c", &major, &minor])
            .status()
            .expect("run mknod");
        assert!(st.success());
        std::os::unix::fs::chown(&node, Some(107), Some(107)).expect("chown");
    });
}

#[test]
fn check_is_refused_before_spec_0_4_0() {
    let lab = lab("check-0.3.1");
    let config = lab.config("0.3.1");
    let result = lab.add(&config).result();
    lab.check(&config, &result).any_error();
}

#[test]
fn del_twice_succeeds_and_leaves_nothing() {
    let lab = lab("del-twice");
    let config = ipam_config(&lab, "1.0.0");
    lab.add(&config).result();
    lab.del(&config).success();
    lab.assert_clean("the first DEL");
    lab.del(&config).success();
    lab.assert_clean("the second DEL");
}

#[test]
fn del_with_prev_result_succeeds() {
    let lab = lab("del-prevresult");
    let config = ipam_config(&lab, "1.0.0");
    let result = lab.add(&config).result();
    let mut with_prev = config.clone();
    with_prev["prevResult"] = result;
    lab.del(&with_prev).success();
    lab.assert_clean("DEL with prevResult");
}

#[test]
fn del_after_the_namespace_is_gone_cleans_node_record_and_lease() {
    let mut lab = lab("del-no-netns");
    let config = ipam_config(&lab, "1.0.0");
    lab.add(&config).result();
    assert!(!leases_in(&lab.ipam_dir()).is_empty(), "no lease after ADD");
    lab.pod.delete();
    assert!(!lab.pod.path().exists());
    lab.del(&config).success();
    lab.assert_clean("DEL after the pod namespace was deleted");
}

#[test]
fn del_without_add_succeeds() {
    let lab = lab("del-no-add");
    lab.del(&ipam_config(&lab, "1.0.0")).success();
    lab.assert_clean("DEL without ADD");
}

#[test]
fn del_in_spec_0_3_0_succeeds() {
    let lab = lab("del-0.3.0");
    let config = ipam_config(&lab, "0.3.0");
    lab.add(&config).result();
    lab.del(&config).success();
    lab.assert_clean("DEL");
}

#[test]
fn del_leaves_a_link_it_did_not_create() {
    let lab = lab("del-foreign");
    // A macvtap with the pod's ifname, made by someone else.
    lab.node.ip_cmd(&format!(
        "link add link {LOWER} name {POD_IFNAME} netns {} type macvtap",
        lab.pod.name()
    ));
    let before = lab.pod.expect_link(POD_IFNAME);
    lab.del(&lab.config("1.0.0")).success();
    let after = lab
        .pod
        .link(POD_IFNAME)
        .expect("DEL removed a link it did not create");
    assert_eq!(after.ifindex, before.ifindex);
}

#[test]
fn check_detects_a_changed_mode() {
    check_detects("check-mode", |lab| {
        lab.pod
            .ip_ok(&["link", "set", POD_IFNAME, "type", "macvtap", "mode", "vepa"]);
    });
}

#[test]
fn check_detects_promiscuous_mode_turned_on() {
    check_detects("check-promisc", |lab| {
        lab.pod.ip_ok(&["link", "set", POD_IFNAME, "promisc", "on"]);
    });
}

#[test]
fn del_without_cni_netns_still_removes_the_link() {
    // CNI_NETNS may be empty on DEL; the plugin's record knows the pod.
    let lab = lab("del-no-netns-env");
    let config = ipam_config(&lab, "1.0.0");
    lab.add(&config).result();
    lab.plugin("DEL", &config)
        .unset("CNI_NETNS")
        .run()
        .success();
    lab.assert_clean("DEL without CNI_NETNS");
}

#[test]
fn del_leaves_a_link_that_replaced_the_plugins_own() {
    let lab = lab("del-replaced");
    let config = lab.config("1.0.0");
    lab.add(&config).result();
    // Someone deletes our macvtap and puts their own link under the name.
    lab.pod.ip_ok(&["link", "del", POD_IFNAME]);
    lab.pod
        .ip_cmd(&format!("link add {POD_IFNAME} type veth peer name peer1"));
    let theirs = lab.pod.expect_link(POD_IFNAME);
    lab.del(&config).success();
    let after = lab
        .pod
        .link(POD_IFNAME)
        .expect("DEL removed a link it did not create");
    assert_eq!(after.ifindex, theirs.ifindex);
    assert!(files_under(&lab.state_dir().join("pods")).is_empty());
}

/// A runtime may send DEL with a configuration ADD would refuse (Multus
/// cannot recover the deviceID once the pod is gone): the record says
/// what was made, so DEL still removes all of it.
#[test]
fn del_with_a_config_add_would_refuse_still_cleans_up() {
    let lab = lab("del-lenient");
    let config = lab.config("1.0.0");
    lab.add(&config).result();
    let mut bare = config.clone();
    let obj = bare.as_object_mut().expect("object");
    obj.remove("master");
    obj.remove("lowerDevice");
    obj.insert("mode".into(), serde_json::json!("nat"));
    lab.plugin("DEL", &bare)
        .args("MAC=01:00:00:00:00:01")
        .run()
        .success();
    assert!(lab.pod.macvtaps().is_empty(), "DEL left the macvtap");
    lab.assert_clean("DEL with a bare configuration");
}
