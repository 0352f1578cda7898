//! Security properties of the CNI plugin that other files do not check:
//!
//! - nothing outside the pod's namespace and the plugin's own links changes:
//!   NODE's (and LAN's) links, addresses and routes are the same before and
//!   after a series of ADDs, DELs and failed ADDs in every mode;
//! - the global `/dev/tap<ifindex>` node is never chowned (the plugin makes
//!   its own node);
//! - the state it writes is not world-accessible: directories 0711 or
//!   stricter, records and the lock not readable or writable by others;
//! - a symlink planted where the device node goes is replaced, never
//!   followed: its target keeps its owner and mode, and DEL leaves a node
//!   that is no longer the one it made.
//!
//! Covered elsewhere: the node is 0660 and owned by `owner`/`group`
//! (add_modes.rs `owner_and_group_of_the_device_node_are_configurable`,
//! devices.rs); a deviceID no resource offers is refused with nothing made
//! (devices.rs `device_ids_not_offered_are_refused_and_nothing_is_created`,
//! bad_input_corpus.rs `corpus_device_ids`); DEL never removes a link it did
//! not create (check_del.rs).

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

const BASE: u32 = 4096;

/// Everything the plugin could change in a namespace outside the pod.
fn snapshot(ns: &Netns) -> Value {
    json!({
        "links": ns.ip_json(&["-d", "link", "show"]),
        "addrs": ns.ip_json(&["addr", "show"]),
        "routes": ns.ip_json(&["route", "show", "table", "all"]),
        "routes6": ns.ip_json(&["-6", "route", "show", "table", "all"]),
        "rules": ns.ip_json(&["rule", "show"]),
    })
}

/// Files under the lab's directory outside the plugin's stateDir and the
/// IPAM plugin's dataDir, with their mode and owner.
fn files_outside_state(lab: &Lab) -> Vec<(PathBuf, u32, u32, u32)> {
    files_under(lab.dir.path())
        .into_iter()
        .filter(|f| !f.starts_with(lab.state_dir()) && !f.starts_with(lab.ipam_dir()))
        // The fake IPAM plugin's own call log.
        .filter(|f| f.extension().is_none_or(|e| e != "log"))
        .map(|f| {
            let m = fs::symlink_metadata(&f).expect("stat");
            (f, m.mode(), m.uid(), m.gid())
        })
        .collect()
}

/// The first differing line of two pretty-printed documents, for messages.
fn first_difference(a: &Value, b: &Value) -> String {
    let a = serde_json::to_string_pretty(a).expect("serialize");
    let b = serde_json::to_string_pretty(b).expect("serialize");
    for (n, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!("line {n}: before `{}`, after `{}`", x.trim(), y.trim());
        }
    }
    "(one is a prefix of the other)".into()
}

/// Waits until the kernel has finished configuring `dev` in `ns` on its
/// own: its IPv6 link-local address is there and past duplicate address
/// detection. (Else that address and its routes appear in the middle of
/// the test, which is the kernel's doing, not the plugin's.)
fn settle(ns: &Netns, dev: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let addrs = ns.addrs(dev);
        let done = addrs.iter().any(|a| {
            a["family"] == "inet6"
                && a["scope"] == "link"
                && a.get("tentative").is_none()
                && a.get("optimistic").is_none()
        });
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{dev} in {} never got its link-local address: {addrs:?}",
            ns.name()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn adds_dels_and_failed_adds_change_nothing_outside_the_pod() {
    let lab = lab("sec-untouched");
    let state = lab.state_dir();
    write_resources(&state, &[Resource::new("dataplane", LOWER, 4, BASE)]);
    // The administrator allows source mode on this node (it is off by default).
    lab.set_node_policy(&json!({"allowSourceMode": true}));
    let failing_ipam = lab.fake_ipam("refuses", &json!({"code": 11, "msg": "no"}), 1);
    settle(&lab.node, LOWER);
    settle(&lab.lan, "lan0");
    let node_before = snapshot(&lab.node);
    let lan_before = snapshot(&lab.lan);
    let files_before = files_outside_state(&lab);
    let pod_links_before = lab.pod.ip_json(&["-d", "link", "show"]);

    let base = lab.config("1.0.0");
    let with = |patch: Value| {
        let mut c = base.clone();
        for (k, v) in patch.as_object().expect("object") {
            c[k] = v.clone();
        }
        c
    };
    // Attachments that work: ADD, then DEL.
    let working = [
        ("bridge", with(json!({}))),
        ("vepa", with(json!({"mode": "vepa"}))),
        ("private", with(json!({"mode": "private"}))),
        ("passthru", with(json!({"mode": "passthru"}))),
        (
            "passthru with a MAC",
            with(json!({"mode": "passthru", "mac": "02:00:00:5e:c0:01"})),
        ),
        (
            "source",
            with(json!({"mode": "source", "sourceMacs": ["02:00:00:5e:c0:02"]})),
        ),
        (
            "promiscuous, MTU 1400, MAC",
            with(json!({"promiscMode": true, "mtu": 1400, "mac": "02:00:00:5e:c0:03"})),
        ),
        ("host-local IPAM", with(json!({"ipam": lab.host_local(1)}))),
        (
            "deviceID",
            json!({"cniVersion": "1.0.0", "name": "dpnet", "deviceID": "dataplane-1",
                   "stateDir": state, "mtu": 1300}),
        ),
    ];
    for (what, config) in &working {
        lab.add(config)
            .success()
            .as_object()
            .unwrap_or_else(|| panic!("{what}: no result"));
        lab.del(config).success();
        lab.assert_clean(&format!("ADD and DEL, {what}"));
    }

    // ADDs that fail part-way and roll back.
    let failing = [
        (
            "an MTU above the lower device's",
            with(json!({"mtu": 65535})),
        ),
        (
            "an IPAM plugin that fails",
            with(json!({"ipam": failing_ipam})),
        ),
        ("a missing lower device", with(json!({"master": "nosuch0"}))),
        ("a bad MAC", with(json!({"mac": "01:00:00:00:00:01"}))),
        (
            "a deviceID not offered",
            json!({"cniVersion": "1.0.0", "name": "dpnet", "deviceID": "dataplane-9",
                   "stateDir": state}),
        ),
    ];
    for (what, config) in &failing {
        lab.add(config).any_error();
        // The runtime's DEL: success, or refused as the ADD was.
        let del = lab.del(config);
        if del.exit_code != Some(0) {
            del.any_error();
        }
        lab.assert_clean(&format!("a failed ADD ({what}) and its DEL"));
    }
    // The ifname is taken in the pod by a link of someone else.
    lab.pod.ip_cmd("link add net1 type veth peer name net1peer");
    lab.add(&base).error(101);
    lab.del(&base).success();
    lab.pod.ip_cmd("link del net1");

    let node_after = snapshot(&lab.node);
    assert!(
        node_before == node_after,
        "NODE changed: {}\nbefore: {node_before:#}\nafter: {node_after:#}",
        first_difference(&node_before, &node_after)
    );
    let lan_after = snapshot(&lab.lan);
    assert!(
        lan_before == lan_after,
        "LAN changed: {}",
        first_difference(&lan_before, &lan_after)
    );
    let pod_links_after = lab.pod.ip_json(&["-d", "link", "show"]);
    assert!(
        pod_links_before == pod_links_after,
        "POD's links changed after everything was deleted: {}",
        first_difference(&pod_links_before, &pod_links_after)
    );
    assert_eq!(
        files_before,
        files_outside_state(&lab),
        "files outside the stateDir and the IPAM dataDir changed"
    );
}

/// Mode bits of `path` (lstat).
fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

#[test]
fn state_files_are_not_world_accessible_and_dev_tap_is_not_chowned() {
    let lab = lab("sec-modes");
    // A stateDir the plugin creates itself.
    let state = lab.dir.path().join("fresh/state");
    let mut config = lab.config("1.0.0");
    config["stateDir"] = json!(state);
    config["owner"] = json!(4242);
    config["group"] = json!(4343);
    let result = lab.add(&config).result();
    let link = assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");

    let node = state
        .join("pods")
        .join(&lab.container_id)
        .join(format!("{POD_IFNAME}.tap"));
    let record = node.with_extension("json");
    lab.assert_device_node(&node, &lab.pod, &link, 4242, 4343);

    let mut problems = Vec::new();
    for dir in [
        state.clone(),
        state.join("pods"),
        state.join("pods").join(&lab.container_id),
        state.join("locks"),
    ] {
        let m = mode(&dir);
        if m & 0o066 != 0 {
            problems.push(format!(
                "directory {} is {m:o} (want 0711 or stricter)",
                dir.display()
            ));
        }
    }
    for file in [record.clone(), state.join("locks").join(&lab.container_id)] {
        let m = mode(&file);
        if m & 0o007 != 0 {
            problems.push(format!(
                "{} is {m:o}: others may read or write it",
                file.display()
            ));
        }
    }
    // The kernel's own /dev/tap<ifindex> (global name, maybe another
    // pod's device) is never chowned to the configured owner.
    let global = PathBuf::from(format!("/dev/tap{}", link.ifindex));
    if let Ok(d) = DeviceNode::stat(&global) {
        if (d.uid, d.gid) == (4242, 4343) {
            problems.push(format!(
                "{} was chowned to the configured owner: {d:?}",
                global.display()
            ));
        }
    }
    lab.del(&config).success();
    assert!(!node.exists() && !record.exists());
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A victim file outside the state, and its owner and mode.
fn victim(lab: &Lab) -> (PathBuf, (u32, u32, u32)) {
    let path = lab.dir.path().join("victim");
    fs::write(&path, "precious").expect("write victim");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
    let m = fs::metadata(&path).expect("stat");
    (path, (m.uid(), m.gid(), m.mode()))
}

fn assert_victim_untouched(path: &Path, before: (u32, u32, u32), when: &str) {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("{when}: victim gone: {e}"));
    assert_eq!(
        (m.uid(), m.gid(), m.mode()),
        before,
        "{when}: the symlink's target was changed"
    );
    assert_eq!(
        fs::read_to_string(path).expect("read victim"),
        "precious",
        "{when}: the target's content changed"
    );
}

#[test]
fn a_symlink_planted_at_the_node_path_is_replaced_not_followed() {
    let lab = lab("sec-symlink");
    let state = lab.state_dir();
    write_resources(&state, &[Resource::new("dataplane", LOWER, 4, BASE)]);
    let (target, before) = victim(&lab);

    // Device-plugin mode: the node's path is known in advance.
    let dev = state.join("dev");
    fs::create_dir_all(&dev).expect("mkdir dev");
    let node = dev.join("dataplane-0");
    symlink(&target, &node).expect("plant symlink");
    let config = json!({"cniVersion": "1.0.0", "name": "dpnet", "deviceID": "dataplane-0",
                        "stateDir": state, "owner": 4242, "group": 4343});
    let result = lab.add(&config).result();
    let link = assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");
    assert_victim_untouched(&target, before, "ADD over a symlink (deviceID)");
    lab.assert_device_node(&node, &lab.pod, &link, 4242, 4343);

    // Someone swaps the node for a symlink after ADD: DEL leaves it (it is
    // not the node the plugin made) and never touches its target.
    // (Made first and renamed over the node, so that it cannot get the
    // node's inode number back.)
    let planted = dev.join("planted");
    symlink(&target, &planted).expect("plant symlink again");
    fs::rename(&planted, &node).expect("swap the node for the symlink");
    lab.del(&config).success();
    assert_victim_untouched(&target, before, "DEL with a symlink at the node path");
    assert!(
        fs::symlink_metadata(&node).is_ok_and(|m| m.file_type().is_symlink()),
        "DEL removed a file it did not make"
    );
    fs::remove_file(&node).expect("remove planted symlink");

    // Standalone mode: the node's path is <stateDir>/pods/<cid>/<if>.tap.
    let pod_dir = state.join("pods").join(&lab.container_id);
    fs::create_dir_all(&pod_dir).expect("mkdir pod dir");
    let tap = pod_dir.join(format!("{POD_IFNAME}.tap"));
    symlink(&target, &tap).expect("plant symlink");
    let config = lab.config("1.0.0");
    let result = lab.add(&config).result();
    let link = assert_attached(&lab, &lab.pod, &result, POD_IFNAME, "bridge");
    assert_victim_untouched(&target, before, "ADD over a symlink (standalone)");
    lab.assert_device_node(&tap, &lab.pod, &link, 107, 107);
    lab.del(&config).success();
    assert_victim_untouched(&target, before, "DEL (standalone)");
    lab.assert_clean("DEL");
}

/// A state directory a non-root user could change is refused (code 106)
/// before anything is made: a tenant's network configuration could point
/// it at a directory their pod writes, full of forged records.
#[test]
fn a_state_dir_others_can_change_is_refused() {
    let lab = lab("sec-untrusted-state");
    let writable = lab.dir.path().join("shared");
    fs::create_dir(&writable).expect("mkdir");
    fs::set_permissions(&writable, fs::Permissions::from_mode(0o777)).expect("chmod");
    let owned = lab.dir.path().join("tenant");
    fs::create_dir(&owned).expect("mkdir");
    std::os::unix::fs::chown(&owned, Some(1000), Some(1000)).expect("chown");
    for (dir, why) in [
        (writable.join("state"), "lets others write"),
        (owned.join("state"), "owned by uid 1000"),
    ] {
        let mut config = lab.config("1.0.0");
        config["stateDir"] = json!(dir);
        let out = lab.add(&config);
        let err = out.error(106);
        let msg = err["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(why), "{}: {msg}", dir.display());
        assert!(
            lab.pod.macvtaps().is_empty(),
            "a macvtap was made with {}",
            dir.display()
        );
    }
}
