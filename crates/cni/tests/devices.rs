//! Device-plugin mode (deviceID + `<stateDir>/resources.json`) and the
//! /dev/tap<ifindex> clash between namespaces.

mod common;

use std::path::Path;

use common::*;
use serde_json::{json, Value};

const BASE: u32 = 4096;

fn dp_config(state_dir: &Path, device_id: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "dpnet",
        "type": "macvtap",
        "deviceID": device_id,
        "stateDir": state_dir,
    })
}

fn dev_node(state_dir: &Path, device_id: &str) -> std::path::PathBuf {
    state_dir.join("dev").join(device_id)
}

#[test]
fn device_id_attaches_with_the_promised_ifindex_and_node() {
    let lab = lab("dp-attach");
    let state = lab.state_dir();
    write_resources(&state, &[Resource::new("dataplane", LOWER, 4, BASE)]);
    let config = dp_config(&state, "dataplane-2");
    let result = lab.add(&config).result();
    let link = assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");
    assert_eq!(
        link.ifindex,
        u64::from(BASE + 2),
        "promised ifindex: {}",
        link.json
    );
    lab.assert_device_node(&dev_node(&state, "dataplane-2"), &lab.pod, &link, 107, 107);

    lab.del(&config).success();
    assert!(lab.pod.link(POD_IFNAME).is_none(), "DEL left the link");
    assert!(
        !dev_node(&state, "dataplane-2").exists(),
        "DEL left the device node"
    );
    lab.assert_clean("DEL");
}

#[test]
fn the_resources_mode_and_last_index_are_used() {
    let lab = lab("dp-mode");
    let state = lab.state_dir();
    write_resources(
        &state,
        &[
            Resource::new("dataplane", LOWER, 4, BASE),
            Resource::new("vepanet", LOWER, 2, BASE + 100).mode("vepa"),
        ],
    );
    let result = lab.add(&dp_config(&state, "vepanet-1")).result();
    let link = assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "vepa");
    assert_eq!(link.ifindex, u64::from(BASE + 101));
    lab.assert_device_node(&dev_node(&state, "vepanet-1"), &lab.pod, &link, 107, 107);
}

#[test]
fn device_ids_not_offered_are_refused_and_nothing_is_created() {
    let lab = lab("dp-refused");
    let state = lab.state_dir();
    write_resources(&state, &[Resource::new("dataplane", LOWER, 4, BASE)]);
    // (deviceID, accepted codes): 102 = not offered, 7 = malformed.
    let cases: [(&str, &[i64]); 11] = [
        ("other-0", &[102]),
        ("dataplane-4", &[102]),
        ("dataplane-100", &[102]),
        ("../x", &[102, 7]),
        ("dataplane-1/../../x", &[102, 7]),
        ("../dataplane-1", &[102, 7]),
        ("dataplane--1", &[102, 7]),
        ("dataplane-", &[102, 7]),
        ("dataplane", &[102, 7]),
        ("dataplane-01", &[102, 7]),
        ("dataplane-+1", &[102, 7]),
    ];
    let mut failures = Vec::new();
    for (id, codes) in cases {
        let plugin = lab.plugin("ADD", &dp_config(&state, id));
        expect_refused(
            &lab,
            &format!("deviceID {id:?}"),
            &plugin,
            codes,
            &mut failures,
        );
        // No node under dev/, nor wherever a traversal could point.
        let made: Vec<_> = files_under(lab.dir.path())
            .into_iter()
            .filter(|f| {
                f.starts_with(state.join("dev")) || f.ends_with("x") || f.ends_with("dataplane-1")
            })
            .collect();
        assert!(made.is_empty(), "deviceID {id:?} left {made:?}");
    }
    assert_no_failures(&failures);
}

#[test]
fn device_id_without_resources_json_is_refused_with_102() {
    let lab = lab("dp-no-resources");
    let plugin = lab.plugin("ADD", &dp_config(&lab.state_dir(), "dataplane-0"));
    let mut failures = Vec::new();
    expect_refused(&lab, "no resources.json", &plugin, &[102], &mut failures);
    assert_no_failures(&failures);
}

#[test]
fn attach_host_moves_the_device_plugins_link_into_the_pod() {
    let lab = lab("dp-attach-host");
    let state = lab.state_dir();
    write_resources(
        &state,
        &[Resource::new("dataplane", LOWER, 8, BASE).attach("host")],
    );
    // What the device plugin does at Allocate for index 4.
    let ifindex = (BASE + 4).to_string();
    let host_name = format!("mvtap{ifindex}");
    lab.node.ip_cmd(&format!(
        "link add link {LOWER} name {host_name} index {ifindex} type macvtap mode bridge"
    ));
    let result = lab.add(&dp_config(&state, "dataplane-4")).result();
    let link = assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");
    assert_eq!(link.ifindex, u64::from(BASE + 4));
    assert!(
        lab.node.link(&host_name).is_none(),
        "{host_name} still in NODE"
    );
    lab.assert_device_node(&dev_node(&state, "dataplane-4"), &lab.pod, &link, 107, 107);
}

#[test]
fn attach_host_without_the_device_plugins_link_creates_it_in_the_pod() {
    // After a reboot (or a re-created sandbox) the kubelet reuses its
    // checkpointed allocation without calling Allocate, and the link the
    // device plugin once made died with the old pod: the deviceID and
    // resources.json alone must still attach, directly inside the pod.
    let lab = lab("dp-attach-host-missing");
    let state = lab.state_dir();
    write_resources(
        &state,
        &[Resource::new("dataplane", LOWER, 8, BASE).attach("host")],
    );
    let config = dp_config(&state, "dataplane-4");
    let result = lab.add(&config).result();
    let link = assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");
    assert_eq!(
        link.ifindex,
        u64::from(BASE) + 4,
        "promised ifindex: {}",
        link.json
    );
    assert!(lab.node.macvtaps().is_empty(), "a macvtap appeared in NODE");
    lab.assert_device_node(&dev_node(&state, "dataplane-4"), &lab.pod, &link, 107, 107);
    lab.del(&config).success();
    lab.assert_clean("DEL");
}

/// Asserts the two links share an ifindex (so both want the same
/// /dev/tap<N>) but have different device numbers, and that each node
/// carries its own link's number.
fn assert_each_node_is_its_own(
    lab: &Lab,
    (ns1, link1, node1): (&Netns, &Link, &Path),
    (ns2, link2, node2): (&Netns, &Link, &Path),
) {
    assert_eq!(
        link1.ifindex, link2.ifindex,
        "precondition: both macvtaps must have the same ifindex"
    );
    let (dev1, dev2) = (ns1.tap_dev(link1), ns2.tap_dev(link2));
    assert_ne!(dev1, dev2, "two macvtaps cannot share a device number");
    lab.assert_device_node(node1, ns1, link1, 107, 107);
    lab.assert_device_node(node2, ns2, link2, 107, 107);
}

#[test]
fn same_ifindex_in_two_pods_gives_each_node_its_own_device() {
    // Two nodes' worth of state (two stateDirs) hand out the same deviceID,
    // so both pods get a macvtap with ifindex BASE: /dev/tap<BASE> can only
    // name one of them.
    let lab = lab("clash-dp");
    let pod2 = lab.netns("pod2");
    let state1 = lab.state_dir();
    let state2 = lab.dir.subdir("state2");
    for s in [&state1, &state2] {
        write_resources(s, &[Resource::new("dataplane", LOWER, 4, BASE)]);
    }
    let r1 = lab.add(&dp_config(&state1, "dataplane-0")).result();
    let r2 = lab
        .plugin("ADD", &dp_config(&state2, "dataplane-0"))
        .container_id(&lab.other_container_id("b"))
        .netns(pod2.path())
        .run()
        .result();
    let l1 = assert_attached(&lab, &lab.pod, &r1, POD_IFNAME, "bridge");
    let l2 = assert_attached(&lab, &pod2, &r2, POD_IFNAME, "bridge");
    assert_each_node_is_its_own(
        &lab,
        (&lab.pod, &l1, &dev_node(&state1, "dataplane-0")),
        (&pod2, &l2, &dev_node(&state2, "dataplane-0")),
    );
}

#[test]
fn standalone_node_is_right_when_another_pod_holds_the_same_tap_name() {
    // A macvtap made by someone else in POD2 takes ifindex 2 first (a fresh
    // namespace's first link after lo); the plugin's link in POD then gets
    // ifindex 2 too, and its node must still be its own device.
    let lab = lab("clash-standalone");
    let pod2 = lab.netns("pod2");
    lab.node.ip_cmd(&format!(
        "link add link {LOWER} name other0 index 2 netns {} type macvtap",
        pod2.name()
    ));
    let other = pod2.expect_link("other0");
    let result = lab.add(&lab.config("1.0.0")).result();
    let link = lab.pod.expect_link(POD_IFNAME);
    assert_eq!(
        link.ifindex, other.ifindex,
        "precondition: the kernel gave the plugin's link another ifindex"
    );
    assert_eq!(result_mac(&result, POD_IFNAME, &sandbox(&lab)), link.mac);
    let mine = lab.pod.tap_dev(&link);
    assert_ne!(mine, pod2.tap_dev(&other));
    let tap = lab.pod_tap_path(&lab.container_id, POD_IFNAME);
    lab.assert_device_node(&tap, &lab.pod, &link, 107, 107);
}

#[test]
fn attach_host_link_of_another_kind_is_refused_with_102() {
    let lab = lab("dp-attach-host-veth");
    let state = lab.state_dir();
    write_resources(
        &state,
        &[Resource::new("dataplane", LOWER, 8, BASE).attach("host")],
    );
    // Something that is not the device plugin's macvtap under its name.
    lab.node
        .ip_cmd("link add mvtap4100 type veth peer name mvpeer");
    let plugin = lab.plugin("ADD", &dp_config(&state, "dataplane-4"));
    let mut failures = Vec::new();
    expect_refused(&lab, "attach host, veth", &plugin, &[102], &mut failures);
    assert_no_failures(&failures);
    assert!(lab.node.link("mvtap4100").is_some(), "the veth was moved");
}

#[test]
fn attach_host_rollback_gives_the_link_back_to_the_host() {
    let lab = lab("dp-attach-host-rollback");
    let state = lab.state_dir();
    write_resources(
        &state,
        &[Resource::new("dataplane", LOWER, 8, BASE).attach("host")],
    );
    lab.node.ip_cmd(&format!(
        "link add link {LOWER} name mvtap4100 index 4100 type macvtap mode bridge"
    ));
    let mut config = dp_config(&state, "dataplane-4");
    config["ipam"] = json!({"type": "no-such-ipam"});
    lab.add(&config).any_error();
    let back = lab
        .node
        .link("mvtap4100")
        .expect("the device plugin's link was not given back to the host");
    assert_eq!(back.ifindex, 4100);
    assert!(lab.pod.link(POD_IFNAME).is_none(), "link left in the pod");
    assert!(files_under(&state.join("dev")).is_empty());
    assert!(files_under(&state.join("pods")).is_empty());
}

#[test]
fn an_out_of_range_ifindex_base_is_refused_cleanly() {
    // resources.json is written by another program; a bad one must give a
    // CNI error, not a panic or a link with some other ifindex.
    let lab = lab("dp-bad-base");
    let state = lab.state_dir();
    let mut failures = Vec::new();
    // u32::MAX and 3e9 are no kernel ifindex (a positive i32); base 0 makes
    // index 0 "any ifindex" and index 1 the loopback's.
    for base in [u64::from(u32::MAX), 3_000_000_000, 0] {
        write_resources_json(
            &state,
            &json!({"resources": [{
                "name": "dataplane", "lowerDevice": LOWER, "mode": "bridge",
                "capacity": 4, "attach": "pod", "ifindexBase": base
            }]}),
        );
        for id in ["dataplane-0", "dataplane-1"] {
            let plugin = lab.plugin("ADD", &dp_config(&state, id));
            let label = format!("ifindexBase {base}, {id}");
            let out = plugin.run();
            if let Err(e) = out.error_code() {
                failures.push(format!("{label}: {e}"));
            }
            let left = lab.leftovers();
            assert!(left.is_empty(), "{label}: left {left:#?}\n{out}");
        }
    }
    assert_no_failures(&failures);
}

#[test]
fn a_broken_resources_json_is_refused_cleanly() {
    let lab = lab("dp-broken-resources");
    let state = lab.state_dir();
    std::fs::write(state.join("resources.json"), "{\"resources\": [").expect("write");
    let out = lab.add(&dp_config(&state, "dataplane-1"));
    out.any_error();
    lab.assert_clean("ADD with a broken resources.json");
}

#[test]
fn a_late_del_of_the_previous_owner_leaves_the_new_owners_node() {
    // Pod 1 had dataplane-0; its sandbox vanished before its DEL ran, the
    // device was given to pod 2, then pod 1's DEL arrives late. Pod 2's
    // device node (same path) must survive it.
    let mut lab = lab("dp-late-del");
    let state = lab.state_dir();
    write_resources(&state, &[Resource::new("dataplane", LOWER, 4, BASE)]);
    let config = dp_config(&state, "dataplane-0");
    lab.add(&config).result();
    lab.pod.delete();

    let pod2 = lab.netns("pod2");
    let cid2 = lab.other_container_id("b");
    let r2 = lab
        .plugin("ADD", &config)
        .container_id(&cid2)
        .netns(pod2.path())
        .run()
        .result();
    let l2 = assert_attached(&lab, &pod2, &r2, POD_IFNAME, "bridge");
    let node = dev_node(&state, "dataplane-0");
    lab.assert_device_node(&node, &pod2, &l2, 107, 107);

    lab.del(&config).success(); // pod 1's late DEL
    assert!(pod2.link(POD_IFNAME).is_some(), "pod 2's link was removed");
    lab.assert_device_node(&node, &pod2, &l2, 107, 107);
}

#[test]
fn check_passes_after_a_device_id_add() {
    let lab = lab("dp-check");
    let state = lab.state_dir();
    write_resources(
        &state,
        &[Resource::new("dataplane", LOWER, 4, BASE).mode("vepa")],
    );
    let config = dp_config(&state, "dataplane-1");
    let result = lab.add(&config).result();
    lab.check(&config, &result).success();
    lab.pod
        .ip_cmd(&format!("link set {POD_IFNAME} type macvtap mode bridge"));
    lab.check(&config, &result).error(107);
}

#[test]
fn del_works_after_resources_json_is_gone() {
    // A reconfigured or reinstalled device plugin must not strand pods.
    let lab = lab("dp-del-no-resources");
    let state = lab.state_dir();
    write_resources(&state, &[Resource::new("dataplane", LOWER, 4, BASE)]);
    let config = dp_config(&state, "dataplane-3");
    lab.add(&config).result();
    std::fs::remove_file(state.join("resources.json")).expect("remove resources.json");
    lab.del(&config).success();
    lab.assert_clean("DEL without resources.json");
    assert!(lab.pod.link(POD_IFNAME).is_none());
}

#[test]
fn a_taken_promised_ifindex_fails_and_leaves_the_other_link_alone() {
    let lab = lab("dp-ifindex-taken");
    let state = lab.state_dir();
    write_resources(&state, &[Resource::new("dataplane", LOWER, 4, BASE)]);
    let taken = (BASE + 1).to_string();
    lab.pod.ip_cmd(&format!(
        "link add other0 index {taken} type veth peer name other1"
    ));
    let plugin = lab.plugin("ADD", &dp_config(&state, "dataplane-1"));
    let mut failures = Vec::new();
    expect_refused(&lab, "ifindex taken", &plugin, &[103], &mut failures);
    assert_no_failures(&failures);
    let other = lab.pod.expect_link("other0");
    assert_eq!(other.ifindex, u64::from(BASE + 1));
    assert_eq!(other.kind.as_deref(), Some("veth"));
}

#[test]
fn attach_host_applies_the_configured_mac_and_mtu() {
    let lab = lab("dp-attach-host-mac");
    let state = lab.state_dir();
    write_resources(
        &state,
        &[Resource::new("dataplane", LOWER, 8, BASE).attach("host")],
    );
    lab.node.ip_cmd(&format!(
        "link add link {LOWER} name mvtap4098 index 4098 type macvtap mode bridge"
    ));
    let mut config = dp_config(&state, "dataplane-2");
    config["mac"] = json!("02:00:00:00:77:01");
    config["mtu"] = json!(1400);
    let result = lab.add(&config).result();
    let link = assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");
    assert_eq!(link.mac, "02:00:00:00:77:01");
    assert_eq!(link.mtu, 1400);
    assert_eq!(link.ifindex, 4098);
}

/// A device serves one pod at a time: while the pod that holds it lives, a
/// configuration naming the same deviceID for another pod is refused (102)
/// and changes nothing; once the holder's DEL ran, the device is free.
#[test]
fn a_device_held_by_a_live_pod_is_refused_to_another() {
    let lab = lab("dp-held");
    let state = lab.state_dir();
    write_resources(&state, &[Resource::new("dataplane", LOWER, 4, BASE)]);
    let config = dp_config(&state, "dataplane-1");
    let r1 = lab.add(&config).result();
    let l1 = assert_attached(&lab, &lab.pod, &r1, POD_IFNAME, "bridge");
    let node = dev_node(&state, "dataplane-1");

    let pod2 = lab.netns("pod2");
    let cid2 = lab.other_container_id("thief");
    let second = |lab: &Lab| {
        lab.plugin("ADD", &config)
            .container_id(&cid2)
            .netns(pod2.path())
            .run()
    };
    let refused = second(&lab).error(102);
    assert!(
        refused["msg"]
            .as_str()
            .unwrap_or_default()
            .contains(&lab.container_id),
        "the error should name the holder: {refused}"
    );
    assert!(pod2.macvtaps().is_empty(), "the refused ADD made a link");
    lab.assert_device_node(&node, &lab.pod, &l1, 107, 107);

    lab.del(&config).success();
    let r2 = second(&lab).result();
    let l2 = assert_attached(&lab, &pod2, &r2, POD_IFNAME, "bridge");
    lab.assert_device_node(&node, &pod2, &l2, 107, 107);
}
