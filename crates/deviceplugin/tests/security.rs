//! Security properties of the device plugin's files: its sockets are for
//! root (the kubelet) only, the state it shares with the CNI is not
//! world-accessible (directories 0711 or stricter, records and the
//! resource configuration not readable or writable by others), the device
//! nodes it makes are 0660 for 107:107 and the kernel's global
//! `/dev/tap<ifindex>` is never chowned.
//!
//! Covered elsewhere: Allocate refuses IDs a resource does not offer and
//! leaves nothing (allocate.rs `allocate_refuses_ids_not_offered_and_leaves_nothing`).

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::json;

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_state_and_device_nodes_are_not_world_accessible() {
    let world = World::new("dp-sec-modes");
    let lab = &world.lab;
    // A state directory the daemon creates itself.
    let state = lab.dir.path().join("fresh/state");
    let conf = json!([
        {"name": "podnet", "lowerDevice": LOWER, "capacity": 4, "attach": "pod"},
        {"name": "hostnet", "lowerDevice": LOWER, "capacity": 4, "attach": "host"},
    ])
    .to_string();
    let mut cmd = world.cmd(&conf);
    cmd.state_dir = state.clone();
    let mut dp = cmd.spawn();
    world.kubelet.wait_registrations(2, SLOW).await;

    let mut host = world.client("hostnet").await;
    let mut pod = world.client("podnet").await;
    host.allocate(allocate_request(&[&["hostnet-0"]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate hostnet-0: {e}\n{}", dp.logs()));
    pod.allocate(allocate_request(&[&["podnet-1"]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate podnet-1: {e}\n{}", dp.logs()));
    let config = json!({"cniVersion": "0.3.1", "name": "podnet", "type": "macvtap",
                        "deviceID": "podnet-1", "stateDir": state});
    lab.plugin("ADD", &config)
        .args("IgnoreUnknown=1;MAC=02:00:00:5e:c0:10")
        .run()
        .result();

    let mut problems = Vec::new();
    // Sockets: only root may connect.
    let sockets: Vec<PathBuf> = sockets_in(&world.plugin_dir)
        .into_iter()
        .filter(|s| !s.ends_with(KUBELET_SOCKET))
        .collect();
    assert_eq!(sockets.len(), 2, "{sockets:?}");
    for s in &sockets {
        let m = mode(s);
        if m & 0o077 != 0 {
            problems.push(format!("socket {} is {m:o} (want 0600)", s.display()));
        }
    }
    // Directories: others may traverse (to reach a node by its path), not
    // list or write.
    for dir in [
        state.clone(),
        state.join("allocations"),
        state.join("dev"),
        state.join("pods"),
        state.join("pods").join(&lab.container_id),
    ] {
        let m = mode(&dir);
        if m & 0o066 != 0 {
            problems.push(format!(
                "directory {} is {m:o} (want 0711 or stricter)",
                dir.display()
            ));
        }
    }
    // Files: not readable or writable by others.
    let mut files = vec![state.join("resources.json"), state.join("lock")];
    files.extend(files_under(&state.join("allocations")));
    files.extend(
        files_under(&state.join("pods"))
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "json")),
    );
    assert!(files.len() >= 5, "{files:?}");
    for f in &files {
        let m = mode(f);
        if m & 0o007 != 0 {
            problems.push(format!(
                "{} is {m:o}: others may read or write it",
                f.display()
            ));
        }
    }
    // Device nodes: 0660 for 107:107, the right device.
    let resources: serde_json::Value =
        serde_json::from_slice(&fs::read(state.join("resources.json")).expect("resources.json"))
            .expect("resources.json is JSON");
    let base = resources["resources"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "hostnet"))
        .and_then(|r| r["ifindexBase"].as_u64())
        .unwrap_or_else(|| panic!("no hostnet in {resources}"));
    let host_link = lab.node.expect_link(&format!("mvtap{base}"));
    lab.assert_device_node(
        &state.join("dev/hostnet-0"),
        &lab.node,
        &host_link,
        107,
        107,
    );
    let pod_link = lab.pod.expect_link("net1");
    lab.assert_device_node(&state.join("dev/podnet-1"), &lab.pod, &pod_link, 107, 107);
    // The kernel's global node for hostnet-0's ifindex is left alone.
    let global = PathBuf::from(format!("/dev/tap{}", host_link.ifindex));
    if let Ok(d) = DeviceNode::stat(&global) {
        if (d.uid, d.gid) == (107, 107) || d.mode & 0o066 != 0 {
            problems.push(format!("{} was changed: {d:?}", global.display()));
        }
    }
    dp.assert_running("after the checks");
    assert!(problems.is_empty(), "{problems:#?}");
}
