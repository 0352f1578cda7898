//! Bad input, one test per row: the error code docs/cni-plugin.md promises,
//! a well-formed error (exit 1, JSON with integer `code` and non-empty
//! `msg`, no panic), and nothing left behind.

mod common;

use std::fs;

use common::*;
use serde_json::{json, Value};

/// The lab's standalone config with `patch`'s keys set (JSON null removes).
fn cfg(lab: &Lab, patch: Value) -> Value {
    let mut config = lab.config("1.0.0");
    let obj = config.as_object_mut().expect("config is an object");
    for (k, v) in patch.as_object().expect("patch is an object") {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    config
}

fn refused(lab: &Lab, plugin: &Plugin, codes: &[i64]) {
    let out = plugin.run();
    out.error_in(codes);
    lab.assert_clean("a refused ADD");
    let nodes: Vec<_> = files_under(lab.dir.path())
        .into_iter()
        .filter(|f| DeviceNode::stat(f).is_ok_and(|d| d.is_char_device))
        .collect();
    assert!(nodes.is_empty(), "device nodes made: {nodes:?}");
}

macro_rules! bad_input {
    ($($name:ident: $codes:expr, |$lab:ident| $plugin:expr;)*) => {
        $(
            #[test]
            fn $name() {
                let $lab = lab(stringify!($name));
                let plugin: Plugin = $plugin;
                refused(&$lab, &plugin, &$codes);
            }
        )*
    };
}

fn add(lab: &Lab, patch: Value) -> Plugin {
    lab.plugin("ADD", &cfg(lab, patch))
}

bad_input! {
    // 6: not JSON / wrong types
    broken_json: [6], |lab| add(&lab, json!({})).stdin(r#"{"cniVersion": "1.0.0", "name": "#);
    empty_stdin: [6], |lab| add(&lab, json!({})).stdin("");
    config_is_an_array: [6], |lab| add(&lab, json!({})).stdin("[1, 2]");
    mtu_is_a_string: [6], |lab| add(&lab, json!({"mtu": "1500"}));
    promisc_is_a_string: [6], |lab| add(&lab, json!({"promiscMode": "yes"}));
    name_is_a_number: [6], |lab| add(&lab, json!({"name": 5}));
    owner_is_a_string: [6], |lab| add(&lab, json!({"owner": "107"}));
    source_macs_is_a_string: [6],
        |lab| add(&lab, json!({"mode": "source", "sourceMacs": "02:00:00:00:00:01"}));
    // A required key missing: a structural (6) or a value (7) problem.
    name_missing: [6, 7], |lab| add(&lab, json!({"name": null}));

    // 1: versions
    cni_version_0_2_0: [1], |lab| add(&lab, json!({"cniVersion": "0.2.0"}));
    cni_version_9_9_9: [1], |lab| add(&lab, json!({"cniVersion": "9.9.9"}));
    cni_version_missing: [1, 6, 7], |lab| add(&lab, json!({"cniVersion": null}));

    // 4: the environment
    command_missing: [4], |lab| add(&lab, json!({})).unset("CNI_COMMAND");
    command_unknown: [4], |lab| add(&lab, json!({})).command("FROB");
    command_lower_case: [4], |lab| add(&lab, json!({})).command("add");
    container_id_missing: [4], |lab| add(&lab, json!({})).unset("CNI_CONTAINERID");
    container_id_with_path: [4], |lab| add(&lab, json!({})).container_id("../../escape");
    ifname_missing: [4], |lab| add(&lab, json!({})).unset("CNI_IFNAME");
    ifname_too_long: [4], |lab| add(&lab, json!({})).ifname("abcdefghijklmnop");
    ifname_with_slash: [4], |lab| add(&lab, json!({})).ifname("a/b");
    ifname_dot_dot: [4], |lab| add(&lab, json!({})).ifname("..");
    ifname_with_space: [4], |lab| add(&lab, json!({})).ifname("a b");
    netns_missing_env: [4], |lab| add(&lab, json!({})).unset("CNI_NETNS");
    netns_is_a_regular_file: [4], |lab| {
        let file = lab.dir.path().join("not-a-netns");
        fs::write(&file, "").expect("write file");
        add(&lab, json!({})).netns(file)
    };
    cni_args_pair_without_equals: [4],
        |lab| add(&lab, json!({})).args("IgnoreUnknown=1;garbage");

    // 3: the namespace does not exist
    netns_path_does_not_exist: [3],
        |lab| add(&lab, json!({})).netns(format!("/run/netns/{}-gone", lab.prefix));

    // 7: invalid values
    mode_unknown: [7], |lab| add(&lab, json!({"mode": "bridgey"}));
    mtu_zero: [7], |lab| add(&lab, json!({"mtu": 0}));
    mtu_67: [7], |lab| add(&lab, json!({"mtu": 67}));
    mtu_70000: [7], |lab| add(&lab, json!({"mtu": 70000}));
    master_and_device_id: [7], |lab| add(&lab, json!({"deviceID": "dataplane-0"}));
    neither_master_nor_device_id: [7], |lab| add(&lab, json!({"master": null}));
    state_dir_relative: [7], |lab| add(&lab, json!({"stateDir": "relative/state"}));
    source_macs_with_bridge_mode: [7],
        |lab| add(&lab, json!({"mode": "bridge", "sourceMacs": ["02:00:00:00:00:01"]}));
    source_macs_with_default_mode: [7],
        |lab| add(&lab, json!({"sourceMacs": ["02:00:00:00:00:01"]}));
    source_mode_without_source_macs: [7], |lab| add(&lab, json!({"mode": "source"}));
    source_mode_with_empty_source_macs: [7],
        |lab| add(&lab, json!({"mode": "source", "sourceMacs": []}));
    source_mode_with_a_multicast_source_mac: [7],
        |lab| add(&lab, json!({"mode": "source", "sourceMacs": ["01:00:5e:00:00:01"]}));
    owner_negative: [7], |lab| add(&lab, json!({"owner": -1}));
    owner_above_u32: [7], |lab| add(&lab, json!({"owner": 4294967296u64}));
    group_negative: [7], |lab| add(&lab, json!({"group": -1}));

    // 100: the lower device does not exist (in NODE)
    lower_device_missing: [100], |lab| add(&lab, json!({"master": "nosuch0"}));

    // 105: the IPAM plugin cannot be run
    ipam_type_unknown: [105], |lab| add(&lab, json!({"ipam": {"type": "no-such-ipam"}}));

    // 106: the state directory is not usable
    state_dir_is_a_file: [106], |lab| {
        let file = lab.dir.path().join("state-file");
        fs::write(&file, "").expect("write file");
        add(&lab, json!({"stateDir": file}))
    };
}
