//! Faults around the CNI plugin: the pod's namespace vanishing before DEL
//! (device-plugin mode; standalone is in check_del.rs), ADD and DEL racing
//! for one attachment, and a state directory on a read-only or a full
//! filesystem.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

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

// ------------------------------------------------ the namespace goes first

/// ADD of `device_id` in a pod of its own, the pod's namespace deleted,
/// then DEL: it succeeds and removes the device node and the record.
fn del_after_the_namespace_is_gone(test: &str, attach: &str) {
    let lab = lab(test);
    let state = lab.state_dir();
    write_resources(
        &state,
        &[Resource::new("dataplane", LOWER, 4, BASE).attach(attach)],
    );
    if attach == "host" {
        // What the device plugin does at Allocate for index 2.
        lab.node.ip_cmd(&format!(
            "link add link {LOWER} name mvtap{idx} index {idx} type macvtap mode bridge",
            idx = BASE + 2
        ));
    }
    let config = dp_config(&state, "dataplane-2");
    let mut pod = lab.netns("doomed");
    let add = |cmd: &str, pod: &Netns| lab.plugin(cmd, &config).netns(pod.path()).run();
    let result = add("ADD", &pod).result();
    let link = assert_attached(&lab, &pod, &result, POD_IFNAME, "bridge");
    let node = state.join("dev/dataplane-2");
    lab.assert_device_node(&node, &pod, &link, 107, 107);
    assert!(lab.record_path(&lab.container_id, POD_IFNAME).exists());

    pod.delete();
    add("DEL", &pod).success();
    assert!(
        !node.exists(),
        "DEL left the device node {}",
        node.display()
    );
    lab.assert_clean("DEL after the pod's namespace was deleted");
    assert!(
        lab.node.macvtaps().is_empty(),
        "a macvtap came back to NODE: {:?}",
        lab.node.macvtaps()
    );
    // And a second DEL, as runtimes retry, is as quiet.
    add("DEL", &pod).success();
    lab.assert_clean("the second DEL");
}

#[test]
fn del_after_the_namespace_is_gone_device_id_attach_pod() {
    del_after_the_namespace_is_gone("fault-nsgone-pod", "pod");
}

#[test]
fn del_after_the_namespace_is_gone_device_id_attach_host() {
    del_after_the_namespace_is_gone("fault-nsgone-host", "host");
}

// ------------------------------------------------ ADD and DEL racing

/// What exists of the one attachment (container, ifname) of `lab`.
#[derive(Debug)]
struct Seen {
    link: bool,
    record: bool,
    node: bool,
    leases: usize,
}

fn seen(lab: &Lab, node_path: &Path) -> Seen {
    Seen {
        link: lab.pod.link(POD_IFNAME).is_some(),
        record: lab.record_path(&lab.container_id, POD_IFNAME).exists(),
        node: DeviceNode::stat(node_path).is_ok_and(|d| d.is_char_device),
        leases: leases_in(&lab.ipam_dir()).len(),
    }
}

/// `rounds` times: ADD and DEL of the same container ID and ifname at
/// once (one of them delayed by 0..3 ms, alternating). Both must succeed
/// and the attachment must end whole or absent: link, record, node (and
/// one lease with IPAM) all there, or none of them.
fn add_del_race(lab: &Lab, config: &Value, node_path: &Path, with_ipam: bool, rounds: u32) {
    let mut outcomes = [0u32; 2]; // [absent, attached]
    let mut failures = Vec::new();
    for round in 0..rounds {
        let barrier = Barrier::new(2);
        let delay = Duration::from_micros(u64::from(round % 4) * 1000);
        let (add, del) = thread::scope(|s| {
            let add = s.spawn(|| {
                barrier.wait();
                if round % 2 == 1 {
                    thread::sleep(delay);
                }
                lab.plugin("ADD", config).run()
            });
            let del = s.spawn(|| {
                barrier.wait();
                if round % 2 == 0 {
                    thread::sleep(delay);
                }
                lab.plugin("DEL", config).run()
            });
            (
                add.join().expect("ADD thread"),
                del.join().expect("DEL thread"),
            )
        });
        if add.exit_code != Some(0) || add.panicked() {
            failures.push(format!("round {round}: ADD failed\n{add}"));
        }
        if del.exit_code != Some(0) || del.panicked() {
            failures.push(format!("round {round}: DEL failed\n{del}"));
        }
        let s = seen(lab, node_path);
        let whole = s.link && s.record && s.node && (!with_ipam || s.leases == 1);
        let absent = !s.link && !s.record && !s.node && s.leases == 0;
        if whole {
            outcomes[1] += 1;
            // The link is the one the record names, the node is its device.
            let link = lab.pod.expect_link(POD_IFNAME);
            lab.assert_device_node(node_path, &lab.pod, &link, 107, 107);
        } else if absent {
            outcomes[0] += 1;
        } else {
            failures.push(format!(
                "round {round}: half an attachment: {s:?}\nADD: {add}\nDEL: {del}"
            ));
        }
        // Start the next round from nothing.
        lab.del(config).success();
        let left = lab.leftovers();
        assert!(
            left.is_empty(),
            "round {round}: a DEL left {left:?}\n{failures:#?}"
        );
    }
    println!(
        "ADD/DEL race: {rounds} rounds, {} ended absent (ADD first), {} attached (DEL first)",
        outcomes[0], outcomes[1]
    );
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn add_and_del_racing_end_whole_or_absent_standalone_with_ipam() {
    let lab = lab("fault-race");
    let mut config = lab.config("1.0.0");
    config["ipam"] = lab.host_local(1);
    let node = lab.pod_tap_path(&lab.container_id, POD_IFNAME);
    add_del_race(&lab, &config, &node, true, 30);
}

#[test]
fn add_and_del_racing_end_whole_or_absent_device_id() {
    let lab = lab("fault-race-dp");
    let state = lab.state_dir();
    write_resources(&state, &[Resource::new("dataplane", LOWER, 4, BASE)]);
    let config = dp_config(&state, "dataplane-1");
    add_del_race(&lab, &config, &state.join("dev/dataplane-1"), false, 20);
}

// ------------------------------------------------ unusable filesystems

/// Files under `dir` other than those named in `expected`.
fn unexpected_files(dir: &Path, expected: &[&str]) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|f| {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            !expected.contains(&name)
        })
        .map(|f| f.display().to_string())
        .collect()
}

/// ADD with the stateDir `state` must fail with 106, naming what failed,
/// and leave no link in the pod (nor in NODE).
fn add_refused_with_106(lab: &Lab, config: &Value, what: &str) -> Value {
    let out = lab.plugin("ADD", config).run();
    let err = out.error(106);
    let msg = err["msg"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains(config["stateDir"].as_str().unwrap_or("?")) || msg.contains("state"),
        "{what}: the message does not say which path failed: {msg}"
    );
    assert!(
        lab.pod.macvtaps().is_empty() && lab.node.macvtaps().is_empty(),
        "{what}: a macvtap was left: pod {:?}, node {:?}\n{out}",
        lab.pod.macvtaps(),
        lab.node.macvtaps()
    );
    err
}

#[test]
fn a_read_only_state_dir_fails_add_with_106_and_leaves_no_link() {
    let lab = lab("fault-rofs");
    let fs_ = TmpfsMount::new("fault-rofs", "size=1m,mode=0755");
    let state = fs_.path().join("state");
    fs::create_dir(&state).expect("mkdir state");
    let mut config = lab.config("1.0.0");
    config["stateDir"] = json!(state);

    // Never used: not even the lock file exists.
    fs_.remount("ro");
    add_refused_with_106(&lab, &config, "a fresh read-only stateDir");
    assert!(files_under(&state).is_empty());

    // In use before: one attachment, then the filesystem goes read-only.
    fs_.remount("rw");
    let first = lab.add(&config).result();
    assert_attached(&lab, &lab.pod, &first, POD_IFNAME, "bridge");
    let before = files_under(&state);
    fs_.remount("ro");
    let second = lab.plugin("ADD", &config).ifname("net2");
    let out = second.run();
    println!("ADD on a read-only filesystem: {}", out.error(106));
    assert!(
        lab.pod.link("net2").is_none(),
        "net2 was left in the pod: {out}"
    );
    assert_eq!(lab.pod.macvtaps().len(), 1, "{:?}", lab.pod.macvtaps());
    assert_eq!(files_under(&state), before, "files changed on a ro fs?");

    // Writable again: DEL of both works and leaves nothing.
    fs_.remount("rw");
    lab.plugin("DEL", &config).ifname("net2").run().success();
    lab.del(&config).success();
    assert!(lab.pod.macvtaps().is_empty());
    assert_eq!(unexpected_files(&state, &["lock"]), Vec::<String>::new());
}

#[test]
fn a_full_state_dir_fails_add_with_106_and_leaves_no_link() {
    let lab = lab("fault-fullfs");
    let fs_ = TmpfsMount::new("fault-fullfs", "size=64k,mode=0755");
    let state = fs_.path().join("state");
    fs::create_dir(&state).expect("mkdir state");
    let mut config = lab.config("1.0.0");
    config["stateDir"] = json!(state);
    config["ipam"] = lab.host_local(1);
    // A first attachment works while there is room.
    lab.add(&config).result();
    let filled = fs_.fill("filler");
    println!("filled the state filesystem with {filled} bytes");

    let out = lab.plugin("ADD", &config).ifname("net2").run();
    println!("ADD on a full filesystem: {}", out.error(106));
    assert!(
        lab.pod.link("net2").is_none(),
        "net2 was left in the pod: {out}"
    );
    assert_eq!(lab.pod.macvtaps().len(), 1, "{:?}", lab.pod.macvtaps());
    assert_eq!(
        leases_in(&lab.ipam_dir()).len(),
        1,
        "the failed ADD kept an IPAM lease"
    );
    let cid = lab.container_id.clone();
    // (The container's lock file stays while it has an attachment: net1.)
    assert_eq!(
        unexpected_files(&state, &["lock", "net1.json", "net1.tap", &cid]),
        Vec::<String>::new(),
        "the failed ADD left files (half a record, a node, a temp file?)"
    );
    assert!(state.join("pods").join(&cid).join("net1.json").exists());

    // The full filesystem does not stop DEL from removing the first one.
    lab.del(&config).success();
    assert!(lab.pod.macvtaps().is_empty());
    assert_eq!(unexpected_files(&state, &["lock"]), Vec::<String>::new());
    fs::remove_file(fs_.path().join("filler")).expect("remove filler");
    lab.assert_clean("DEL on the full filesystem");
}

#[test]
fn a_state_dir_without_free_inodes_fails_add_and_leaves_no_link() {
    let lab = lab("fault-inodes");
    // Device-plugin mode: the node goes to <stateDir>/dev/<id>.
    let fs_ = TmpfsMount::new("fault-inodes", "size=1m,nr_inodes=32,mode=0755");
    let state = fs_.path().join("state");
    write_resources(&state, &[Resource::new("dataplane", LOWER, 4, BASE)]);
    let config = dp_config(&state, "dataplane-0");
    // The node was used before (lock and directories exist), then the
    // filesystem runs out of inodes.
    lab.add(&config).result();
    lab.del(&config).success();
    let made = fs_.exhaust_inodes("f");
    println!("used the last {made} inodes");

    let out = lab.plugin("ADD", &config).run();
    // 104 (the device node cannot be made) or 106 (the state directory
    // cannot take new files): both are the contract's words for this.
    let err = out.error_in(&[104, 106]);
    println!("ADD without free inodes: {err}");
    let msg = err["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&state.display().to_string()),
        "the message does not name the path that failed: {msg}"
    );
    assert!(
        lab.pod.macvtaps().is_empty() && lab.node.macvtaps().is_empty(),
        "a macvtap was left: {out}"
    );
    assert!(!state.join("dev/dataplane-0").exists());
    assert!(files_under(&state.join("pods")).is_empty());
}
