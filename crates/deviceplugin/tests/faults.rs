//! Faults around the device plugin: the lower device deleted while its
//! devices are allocated and attached; the daemon killed (SIGKILL) in the
//! middle of many Allocates and restarted with no pod holding anything;
//! crash litter in the state directory at start.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Instant;

use common::*;
use serde_json::{json, Value};

fn two_attach_modes() -> String {
    json!([
        {"name": "podnet", "lowerDevice": LOWER, "capacity": 4, "attach": "pod"},
        {"name": "hostnet", "lowerDevice": LOWER, "capacity": 4, "attach": "host"},
    ])
    .to_string()
}

/// The attachment record the CNI keeps for (container, ifname).
fn pod_record(world: &World, ifname: &str) -> std::path::PathBuf {
    world
        .state_dir()
        .join("pods")
        .join(&world.lab.container_id)
        .join(format!("{ifname}.json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_device_deleted_under_attached_devices() {
    let world = World::new("dp-fault-lower");
    let lab = &world.lab;
    let mut dp = world.start(&two_attach_modes(), 2).await;
    let wp = world.watch("podnet").await;
    let wh = world.watch("hostnet").await;
    wp.wait_for("podnet healthy", SLOW, |d| all(d, HEALTHY))
        .await;
    wh.wait_for("hostnet healthy", SLOW, |d| all(d, HEALTHY))
        .await;

    let mut pod = world.client("podnet").await;
    let mut host = world.client("hostnet").await;
    pod.allocate(allocate_request(&[&["podnet-0"]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate podnet-0: {e}\n{}", dp.logs()));
    host.allocate(allocate_request(&[&["hostnet-1"], &["hostnet-2"]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate hostnet: {e}\n{}", dp.logs()));
    world
        .cni_add("podnet-0", "net1", "02:00:00:fa:00:01")
        .result();
    world
        .cni_add("hostnet-1", "net2", "02:00:00:fa:00:02")
        .result();
    assert_eq!(lab.pod.macvtaps().len(), 2);
    let hb = world.ifindex_base("hostnet");
    assert!(lab.node.link(&format!("mvtap{}", hb + 2)).is_some());

    // The NIC goes away: the kernel takes every macvtap on it along.
    let gone = Instant::now();
    lab.node.ip_cmd(&format!("link del {LOWER}"));
    for (w, name) in [(&wp, "podnet"), (&wh, "hostnet")] {
        let u = w
            .wait_for(
                &format!("{name} unhealthy after {LOWER} was deleted"),
                2 * SECOND,
                |d| all(d, UNHEALTHY),
            )
            .await;
        measured(
            &format!("{name} Unhealthy after the lower device was deleted"),
            u.at.duration_since(gone),
        );
    }
    assert!(
        lab.pod.macvtaps().is_empty() && lab.node.macvtaps().is_empty(),
        "macvtaps outlived their lower device: pod {:?}, node {:?}",
        lab.pod.macvtaps(),
        lab.node.macvtaps()
    );

    // The runtime's DELs still clean up each pod attachment.
    for (id, ifname) in [("podnet-0", "net1"), ("hostnet-1", "net2")] {
        let del = lab
            .plugin("DEL", &world.cni_config(id))
            .ifname(ifname)
            .run();
        del.success();
        assert!(
            !pod_record(&world, ifname).exists(),
            "DEL of {id} left its record"
        );
        assert!(
            !world.dev_node(id).exists(),
            "DEL of {id} left {}",
            world.dev_node(id).display()
        );
    }
    assert!(files_under(&world.state_dir().join("pods")).is_empty());
    dp.assert_running("after its lower device was deleted");

    // The NIC comes back: healthy again, and the devices work again,
    // hostnet-2 included (its link went with the old NIC).
    lab.node.ip_cmd(&format!(
        "link add {LOWER} type veth peer name lan0 netns {}",
        lab.lan.name()
    ));
    lab.node.ip_cmd(&format!("link set {LOWER} up"));
    lab.lan.ip_cmd("link set lan0 up");
    wp.wait_for("podnet healthy again", 2 * SECOND, |d| all(d, HEALTHY))
        .await;
    wh.wait_for("hostnet healthy again", 2 * SECOND, |d| all(d, HEALTHY))
        .await;
    host.allocate(allocate_request(&[&["hostnet-2"]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate hostnet-2 again: {e}\n{}", dp.logs()));
    let link = lab.node.expect_link(&format!("mvtap{}", hb + 2));
    lab.assert_device_node(&world.dev_node("hostnet-2"), &lab.node, &link, 107, 107);
    world
        .cni_add("hostnet-2", "net2", "02:00:00:fa:00:03")
        .result();
    world
        .cni_add("podnet-0", "net1", "02:00:00:fa:00:04")
        .result();
    for (id, ifname) in [("hostnet-2", "net2"), ("podnet-0", "net1")] {
        let link = lab.pod.expect_link(ifname);
        lab.assert_lower_is_up0(&lab.pod, &link);
        lab.assert_device_node(&world.dev_node(id), &lab.pod, &link, 107, 107);
    }
    dp.assert_running("after the lower device came back");
}

/// Files under `dir` (recursively), split into `.json` records and the
/// rest.
fn split_json(dir: &Path) -> (Vec<std::path::PathBuf>, Vec<std::path::PathBuf>) {
    files_under(dir)
        .into_iter()
        .partition(|f| f.extension().is_some_and(|e| e == "json"))
}

/// The device IDs of the `mvtap<N>` macvtaps in NODE, for a resource with
/// ifindexBase `base`.
fn host_links(lab: &Lab, name: &str, base: u64) -> BTreeSet<String> {
    lab.node
        .macvtaps()
        .into_iter()
        .map(|l| {
            assert_eq!(
                l.name,
                format!("mvtap{}", l.ifindex),
                "a macvtap not named after its ifindex: {}",
                l.json
            );
            format!("{name}-{}", l.ifindex - base)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_allocates_then_a_restart_sweeps_and_allocates_again() {
    const CALLS: u64 = 48;
    let world = World::new("dp-fault-kill");
    let lab = &world.lab;
    let conf = conf1("hostnet", 64, "host");
    let mut dp = world.start(&conf, 1).await;
    let resources_path = world.state_dir().join("resources.json");
    let resources_before = fs::read(&resources_path).expect("resources.json");
    let base = world.ifindex_base("hostnet");
    let allocations = world.state_dir().join("allocations");

    // Many Allocates at once, one device each, each on its own connection.
    let mut clients = Vec::new();
    for _ in 0..CALLS {
        clients.push(world.client("hostnet").await);
    }
    let mut calls = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        calls.push(tokio::spawn(async move {
            let id = format!("hostnet-{i}");
            let r = c.allocate(allocate_request(&[&[id.as_str()]])).await;
            (id, r.is_ok())
        }));
    }
    // SIGKILL once a few have been recorded, with most still to come.
    wait_until(
        "a few allocation records",
        SLOW,
        || split_json(&allocations).0.len() >= 12,
        || dp.logs(),
    )
    .await;
    dp.signal(libc::SIGKILL);
    let st = dp.wait_exit(SLOW).await.expect("SIGKILL ends it");
    assert_eq!(status_text(&st), "signal 9");
    let mut answered = BTreeSet::new();
    for call in calls {
        let (id, ok) = call.await.expect("task");
        if ok {
            answered.insert(id);
        }
    }
    println!(
        "killed with {} of {CALLS} Allocates answered, {} records and {} links left",
        answered.len(),
        split_json(&allocations).0.len(),
        lab.node.macvtaps().len()
    );
    assert!(
        (answered.len() as u64) < CALLS,
        "every Allocate finished before the kill: nothing was interrupted"
    );

    // What the killed daemon left is consistent.
    assert_eq!(
        fs::read(&resources_path).expect("resources.json"),
        resources_before,
        "resources.json changed"
    );
    let (records, other) = split_json(&allocations);
    for r in &records {
        let text = fs::read_to_string(r).expect("read record");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is half-written ({e}): {text:?}", r.display()));
        let stem = r.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        assert_eq!(v["deviceId"], stem, "{}: {v}", r.display());
    }
    if !other.is_empty() {
        println!("temporary files the kill left in allocations/: {other:?}");
    }
    for id in &answered {
        assert!(
            world.allocation_record(id).exists(),
            "{id} was answered but has no record"
        );
        assert!(world.dev_node(id).exists(), "{id} was answered, no node");
    }
    let links = host_links(lab, "hostnet", base);
    for id in &answered {
        assert!(links.contains(id), "{id} was answered, no link");
    }

    // Restart; PodResources says no pod holds any of them.
    let regs_before = world.kubelet.registrations().len();
    let mut dp = world.spawn(&conf);
    world
        .kubelet
        .wait_registrations(regs_before + 1, SLOW)
        .await;
    // The sweep ran before the daemon registered.
    let (records, _) = split_json(&allocations);
    assert!(records.is_empty(), "records not swept: {records:?}");
    let nodes: Vec<_> = files_under(&world.state_dir().join("dev"))
        .into_iter()
        .filter(|f| {
            !f.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(".")
                .starts_with('.')
        })
        .collect();
    assert!(nodes.is_empty(), "device nodes not swept: {nodes:?}");
    let links = host_links(lab, "hostnet", base);
    assert!(links.is_empty(), "links not swept: {links:?}");
    assert_eq!(
        world.ifindex_base("hostnet"),
        base,
        "ifindexBase moved across the crash"
    );

    // And it allocates again, for devices that were in flight too.
    let mut c = world.client("hostnet").await;
    let last = format!("hostnet-{}", CALLS - 1);
    c.allocate(allocate_request(&[&["hostnet-0"], &[last.as_str()]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate after the restart: {e}\n{}", dp.logs()));
    for (id, i) in [("hostnet-0".to_string(), 0), (last.clone(), CALLS - 1)] {
        let link = lab.node.expect_link(&format!("mvtap{}", base + i));
        lab.assert_device_node(&world.dev_node(&id), &lab.node, &link, 107, 107);
        assert!(world.allocation_record(&id).exists());
    }
    world
        .cni_add("hostnet-0", "net1", "02:00:00:fa:01:01")
        .result();
    let link = lab.pod.expect_link("net1");
    assert_eq!(link.ifindex, base);
    lab.assert_device_node(&world.dev_node("hostnet-0"), &lab.pod, &link, 107, 107);
    dp.assert_running("after the crash restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_litter_and_a_corrupt_record_do_not_stop_the_startup_sweep() {
    let world = World::new("dp-fault-litter");
    let lab = &world.lab;
    let conf = conf1("hostnet", 8, "host");
    let mut dp = world.start(&conf, 1).await;
    let base = world.ifindex_base("hostnet");
    let mut c = world.client("hostnet").await;
    c.allocate(allocate_request(&[&["hostnet-1"], &["hostnet-2"]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate: {e}\n{}", dp.logs()));
    dp.signal(libc::SIGKILL);
    dp.wait_exit(SLOW).await.expect("SIGKILL ends it");

    // What a kill in the middle of writing leaves (the names the state
    // crate and the device-node code use for their temporary files), and a
    // record that is not JSON any more.
    let state = world.state_dir();
    let allocations = state.join("allocations");
    let half = allocations.join("hostnet-3.tmp424242");
    fs::write(&half, r#"{"deviceId": "hostnet-3", "resou"#).expect("write");
    let corrupt = allocations.join("hostnet-4.json");
    fs::write(&corrupt, "\0\0\0garbage").expect("write");
    let tmp_node = state.join("dev").join(".hostnet-3.424242.tmp");
    let st = std::process::Command::new("mknod")
        .arg(&tmp_node)
        .args(["c", "1", "3"])
        .status()
        .expect("run mknod");
    assert!(st.success());

    let regs_before = world.kubelet.registrations().len();
    let mut dp = world.spawn(&conf);
    world
        .kubelet
        .wait_registrations(regs_before + 1, SLOW)
        .await;
    let mut problems = Vec::new();
    for id in ["hostnet-1", "hostnet-2"] {
        if world.allocation_record(id).exists() {
            problems.push(format!("{id}'s record was not swept"));
        }
        if world.dev_node(id).exists() {
            problems.push(format!("{id}'s device node was not swept"));
        }
    }
    let links = host_links(lab, "hostnet", base);
    if !links.is_empty() {
        problems.push(format!("links not swept: {links:?}"));
    }
    for (what, f) in [
        ("a half-written temporary record", &half),
        ("a corrupt record of a device no pod holds", &corrupt),
        ("a temporary device node", &tmp_node),
    ] {
        if fs::symlink_metadata(f).is_ok() {
            problems.push(format!("{what} was left: {}", f.display()));
        }
    }
    dp.assert_running("after sweeping litter");
    assert!(
        problems.is_empty(),
        "{problems:#?}\n{}\nstate left: {:#?}",
        dp.logs(),
        files_under(&state)
    );
}
