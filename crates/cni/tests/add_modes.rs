//! ADD in standalone mode: every macvtap mode, where the link and its device
//! node end up, and who owns the node.

mod common;

use std::fs;

use common::*;
use serde_json::{json, Value};

const QEMU: u32 = 107;

/// ADDs with `mode` (plus `extra` config keys) and checks the link, the
/// device node and the record. Returns the lab so callers can look further.
fn attach_in_mode(test: &str, mode: Option<&str>, extra: Value) -> (Lab, Value, Link) {
    let lab = lab(test);
    if mode == Some("source") {
        lab.set_node_policy(&json!({"allowSourceMode": true}));
    }
    let mut config = lab.config("1.0.0");
    if let Some(mode) = mode {
        config["mode"] = json!(mode);
    }
    for (k, v) in extra.as_object().expect("extra is an object") {
        config[k] = v.clone();
    }
    let result = lab.add(&config).result();
    let link = assert_attached(
        &lab,
        &lab.pod,
        &result,
        POD_IFNAME,
        mode.unwrap_or("bridge"),
    );
    let tap = lab.pod_tap_path(&lab.container_id, POD_IFNAME);
    lab.assert_device_node(&tap, &lab.pod, &link, QEMU, QEMU);
    let record = lab.record_path(&lab.container_id, POD_IFNAME);
    let text = fs::read_to_string(&record)
        .unwrap_or_else(|e| panic!("no record at {}: {e}", record.display()));
    serde_json::from_str::<Value>(&text)
        .unwrap_or_else(|e| panic!("record {} is not JSON ({e}): {text}", record.display()));
    (lab, result, link)
}

#[test]
fn bridge_mode_creates_the_macvtap_in_the_pod() {
    attach_in_mode("mode-bridge", Some("bridge"), json!({}));
}

#[test]
fn vepa_mode_creates_the_macvtap_in_the_pod() {
    attach_in_mode("mode-vepa", Some("vepa"), json!({}));
}

#[test]
fn private_mode_creates_the_macvtap_in_the_pod() {
    attach_in_mode("mode-private", Some("private"), json!({}));
}

#[test]
fn passthru_mode_creates_the_macvtap_in_the_pod() {
    attach_in_mode("mode-passthru", Some("passthru"), json!({}));
}

#[test]
fn source_mode_installs_the_allowed_macs() {
    let macs = ["02:00:00:00:10:01", "02:00:00:00:10:02"];
    let (_lab, _result, link) =
        attach_in_mode("mode-source", Some("source"), json!({ "sourceMacs": macs }));
    let mut got = link.source_macs.clone();
    got.sort();
    assert_eq!(got, macs, "source MAC list on the link: {}", link.json);
}

#[test]
fn mode_defaults_to_bridge() {
    attach_in_mode("mode-default", None, json!({}));
}

#[test]
fn lower_device_key_is_an_alias_of_master() {
    let lab = lab("lowerdevice-alias");
    let mut config = lab.config("1.0.0");
    config.as_object_mut().expect("object").remove("master");
    config["lowerDevice"] = json!(LOWER);
    let result = lab.add(&config).result();
    assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");
}

#[test]
fn owner_and_group_of_the_device_node_are_configurable() {
    let lab = lab("owner-group");
    let mut config = lab.config("1.0.0");
    config["owner"] = json!(1234);
    config["group"] = json!(5678);
    let result = lab.add(&config).result();
    let link = assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");
    let tap = lab.pod_tap_path(&lab.container_id, POD_IFNAME);
    lab.assert_device_node(&tap, &lab.pod, &link, 1234, 5678);
}

#[test]
fn two_interfaces_in_one_pod_get_their_own_links_and_nodes() {
    let lab = lab("two-ifaces");
    let config = lab.config("1.0.0");
    let first = lab.add(&config).result();
    let second = lab.plugin("ADD", &config).ifname("net2").run().result();
    let l1 = assert_attached(&lab, &lab.pod, &first, "net1", "bridge");
    let l2 = assert_attached(&lab, &lab.pod, &second, "net2", "bridge");
    let n1 = lab.pod_tap_path(&lab.container_id, "net1");
    let n2 = lab.pod_tap_path(&lab.container_id, "net2");
    lab.assert_device_node(&n1, &lab.pod, &l1, QEMU, QEMU);
    lab.assert_device_node(&n2, &lab.pod, &l2, QEMU, QEMU);
    assert_ne!(l1.mac, l2.mac, "two random MACs collided");
}

#[test]
fn two_pods_share_one_lower_device() {
    let lab = lab("two-pods");
    let pod2 = lab.netns("pod2");
    let cid2 = lab.other_container_id("b");
    let config = lab.config("1.0.0");
    let r1 = lab.add(&config).result();
    let r2 = lab
        .plugin("ADD", &config)
        .container_id(&cid2)
        .netns(pod2.path())
        .run()
        .result();
    let l1 = assert_attached(&lab, &lab.pod, &r1, POD_IFNAME, "bridge");
    let l2 = assert_attached(&lab, &pod2, &r2, POD_IFNAME, "bridge");
    lab.assert_device_node(
        &lab.pod_tap_path(&lab.container_id, POD_IFNAME),
        &lab.pod,
        &l1,
        QEMU,
        QEMU,
    );
    lab.assert_device_node(&lab.pod_tap_path(&cid2, POD_IFNAME), &pod2, &l2, QEMU, QEMU);
}

#[test]
fn a_missing_state_dir_is_created() {
    // A fresh node has no /var/lib/macvtap yet; the first ADD must not fail.
    let lab = lab("fresh-statedir");
    let state = lab.dir.path().join("not-yet/state");
    let mut config = lab.config("1.0.0");
    config["stateDir"] = json!(state);
    let result = lab.add(&config).result();
    let link = assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");
    let tap = state
        .join("pods")
        .join(&lab.container_id)
        .join(format!("{POD_IFNAME}.tap"));
    lab.assert_device_node(&tap, &lab.pod, &link, QEMU, QEMU);
}

#[test]
fn link_in_container_uses_a_lower_device_inside_the_pod() {
    let lab = lab("link-in-container");
    // A lower device that lives in POD (its peer in LAN).
    lab.pod.ip_cmd(&format!(
        "link add podup0 type veth peer name lan1 netns {}",
        lab.lan.name()
    ));
    lab.pod.ip_ok(&["link", "set", "podup0", "up"]);
    let mut config = lab.config("1.0.0");
    config["master"] = json!("podup0");
    config["linkInContainer"] = json!(true);
    let result = lab.add(&config).result();

    let link = lab.pod.expect_link(POD_IFNAME);
    assert_eq!(link.kind.as_deref(), Some("macvtap"), "{}", link.json);
    assert_eq!(
        link.link_netnsid, None,
        "lower is not in the pod: {}",
        link.json
    );
    assert_eq!(link.link.as_deref(), Some("podup0"), "{}", link.json);
    assert_eq!(result_mac(&result, POD_IFNAME, &sandbox(&lab)), link.mac);
    assert!(lab.node.macvtaps().is_empty(), "macvtap appeared in NODE");
    let tap = lab.pod_tap_path(&lab.container_id, POD_IFNAME);
    lab.assert_device_node(&tap, &lab.pod, &link, QEMU, QEMU);

    lab.del(&config).success();
    lab.assert_clean("DEL");
    assert!(
        lab.pod.link("podup0").is_some(),
        "DEL removed the lower device"
    );
}

#[test]
fn link_in_container_does_not_look_in_the_host() {
    // up0 exists only in NODE: with linkInContainer the plugin must not
    // fall back to it.
    let lab = lab("link-in-container-missing");
    let mut config = lab.config("1.0.0");
    config["linkInContainer"] = json!(true);
    lab.add(&config).error(100);
    lab.assert_clean("ADD with linkInContainer and no lower in the pod");
}

#[test]
fn the_macvtap_never_appears_in_node() {
    // Created directly in the pod: NODE must not even see it pass through
    // (no create-then-move).
    let lab = lab("never-in-node");
    let monitor = LinkMonitor::start(&lab.node);
    let result = lab.add(&lab.config("1.0.0")).result();
    monitor.sync();
    assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");
    // Any link event in NODE other than for up0 and the monitor's probes
    // means a link was made (or moved) there.
    let up0 = format!(": {LOWER}@");
    let seen: Vec<String> = monitor
        .lines()
        .into_iter()
        .filter(|l| !l.contains(&up0) && !l.contains("mvprobe"))
        .collect();
    assert!(seen.is_empty(), "NODE saw the macvtap: {seen:#?}");
}
