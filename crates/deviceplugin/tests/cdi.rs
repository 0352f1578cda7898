//! `--cdi`: the daemon writes a CDI spec per resource into the spec
//! directory (every device: its tap node's container path, host path,
//! type, mode 0660, owner 107:107), answers Allocate with `cdi_devices`
//! next to the DeviceSpecs, removes specs of resources it no longer offers
//! (retired, or configured away while it was down), leaves other vendors'
//! specs alone, and refuses a spec directory others could change.
//! The runtime's side (podman injecting the device) is
//! crates/e2e/tests/podman_cdi.rs.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const DOMAIN_FILE_PREFIX: &str = "macvtap.network.kubevirt.io-";

fn spec_path(dir: &Path, resource: &str) -> PathBuf {
    dir.join(format!("{DOMAIN_FILE_PREFIX}{resource}.json"))
}

fn read_spec(dir: &Path, resource: &str) -> Value {
    let path = spec_path(dir, resource);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text}", path.display()))
}

/// The spec the contract promises for `resource` with `capacity` devices
/// from ifindex `base`, written out here independently of the daemon's
/// own structs.
fn want_spec(world: &World, resource: &str, capacity: u64, base: u64) -> Value {
    let devices: Vec<Value> = (0..capacity)
        .map(|i| {
            let id = format!("{resource}-{i}");
            json!({
                "name": id,
                "containerEdits": {"deviceNodes": [{
                    "path": format!("/dev/tap{}", base + i),
                    "hostPath": world.dev_node(&id).display().to_string(),
                    "type": "c",
                    "permissions": "rw",
                    "fileMode": 0o660,
                    "uid": 107,
                    "gid": 107,
                }]},
            })
        })
        .collect();
    json!({
        "cdiVersion": "0.5.0",
        "kind": format!("macvtap.network.kubevirt.io/{resource}"),
        "devices": devices,
    })
}

fn cdi_args(cmd: DaemonCmd, dir: &Path) -> DaemonCmd {
    let mut cmd = cmd;
    cmd.extra_args.extend([
        "--cdi".to_string(),
        "--cdi-spec-dir".to_string(),
        dir.display().to_string(),
    ]);
    cmd
}

async fn registered(world: &World, dp: &mut Daemon, n: usize) {
    let t = Instant::now();
    while world.kubelet.current_registrations().len() < n {
        dp.assert_running("while registering");
        assert!(
            t.elapsed() < SLOW,
            "{n} registrations not within {SLOW:?}: {:?}\n{}",
            world.kubelet.current_registrations(),
            dp.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_specs_name_every_device_and_allocate_answers_cdi_devices_next_to_device_specs() {
    let world = World::new("dp-cdi");
    let dir = world.lab.dir.path().join("cdi");
    std::fs::create_dir(&dir).expect("create the spec dir");
    // Left from an earlier run: a resource configured away while the
    // daemon was down (ours, to go), another vendor's spec (to stay).
    let stale = spec_path(&dir, "gone");
    std::fs::write(&stale, "{}").expect("write a stale spec");
    let foreign = dir.join("vendor.example-gpu.json");
    std::fs::write(&foreign, "{\"cdiVersion\":\"0.5.0\"}").expect("write a foreign spec");

    // `10g` is a valid resource name but no CDI class (a letter first).
    let conf = json!([
        {"name": "dataplane", "lowerDevice": LOWER, "capacity": 4, "attach": "pod"},
        {"name": "hostnet", "lowerDevice": LOWER, "capacity": 2, "attach": "host"},
        {"name": "10g", "lowerDevice": LOWER, "capacity": 2, "attach": "pod"},
    ])
    .to_string();
    let t = Instant::now();
    let mut dp = cdi_args(world.cmd(&conf), &dir).spawn();
    registered(&world, &mut dp, 3).await;
    measured("start with --cdi to 3 registrations", t.elapsed());

    for (name, capacity) in [("dataplane", 4u64), ("hostnet", 2)] {
        let base = world.ifindex_base(name);
        assert_eq!(
            read_spec(&dir, name),
            want_spec(&world, name, capacity, base),
            "spec of {name}"
        );
        let meta = std::fs::metadata(spec_path(&dir, name)).expect("stat the spec");
        assert_eq!(meta.uid(), 0, "spec of {name} owner");
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o644,
            "spec of {name} mode"
        );
    }
    assert!(
        !spec_path(&dir, "10g").exists(),
        "a spec for 10g, which is no CDI class"
    );
    assert!(!stale.exists(), "the stale spec of `gone` is still there");
    assert!(foreign.exists(), "another vendor's spec was removed");
    let left: Vec<String> = std::fs::read_dir(&dir)
        .expect("list the spec dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");

    // Allocate: every device named in cdi_devices, per container, in the
    // order asked, and the DeviceSpecs still there for older kubelets.
    let mut c = world.client("dataplane").await;
    let resp = within(
        "Allocate",
        SLOW,
        c.allocate(allocate_request(&[
            &["dataplane-2"],
            &["dataplane-0", "dataplane-3"],
        ])),
    )
    .await
    .unwrap_or_else(|e| panic!("Allocate failed: {e}\n{}", dp.logs()))
    .into_inner();
    let base = world.ifindex_base("dataplane");
    for (n, ids) in [vec!["dataplane-2"], vec!["dataplane-0", "dataplane-3"]]
        .iter()
        .enumerate()
    {
        let got = &resp.container_responses[n];
        let names: Vec<&str> = got.cdi_devices.iter().map(|d| d.name.as_str()).collect();
        let want: Vec<String> = ids
            .iter()
            .map(|id| format!("macvtap.network.kubevirt.io/dataplane={id}"))
            .collect();
        assert_eq!(names, want, "container {n}: {got:?}");
        let paths: Vec<&str> = got
            .devices
            .iter()
            .map(|d| d.container_path.as_str())
            .collect();
        let want_paths: Vec<String> = ids
            .iter()
            .map(|id| {
                let i: u64 = id
                    .rsplit('-')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("index");
                format!("/dev/tap{}", base + i)
            })
            .collect();
        assert_eq!(paths, want_paths, "container {n}'s DeviceSpecs: {got:?}");
    }

    // attach: host makes the node at Allocate; the spec's host path is it.
    let mut h = world.client("hostnet").await;
    let resp = within(
        "Allocate",
        SLOW,
        h.allocate(allocate_request(&[&["hostnet-1"]])),
    )
    .await
    .unwrap_or_else(|e| panic!("Allocate hostnet-1 failed: {e}\n{}", dp.logs()))
    .into_inner();
    assert_eq!(
        resp.container_responses[0].cdi_devices[0].name,
        "macvtap.network.kubevirt.io/hostnet=hostnet-1"
    );
    let spec = read_spec(&dir, "hostnet");
    let host_path = spec["devices"][1]["containerEdits"]["deviceNodes"][0]["hostPath"]
        .as_str()
        .expect("a hostPath")
        .to_string();
    let node = std::fs::metadata(&host_path)
        .unwrap_or_else(|e| panic!("the spec's hostPath {host_path} after Allocate: {e}"));
    assert!(
        std::os::unix::fs::FileTypeExt::is_char_device(&node.file_type()),
        "{host_path} is no char device"
    );

    // A resource without a CDI class: DeviceSpecs only.
    let mut g = world.client("10g").await;
    let resp = within(
        "Allocate",
        SLOW,
        g.allocate(allocate_request(&[&["10g-0"]])),
    )
    .await
    .unwrap_or_else(|e| panic!("Allocate 10g-0 failed: {e}\n{}", dp.logs()))
    .into_inner();
    assert!(
        resp.container_responses[0].cdi_devices.is_empty(),
        "{resp:?}"
    );
    assert_eq!(resp.container_responses[0].devices.len(), 1, "{resp:?}");
    dp.assert_running("after the allocations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cdi_allocate_names_no_cdi_devices_and_no_spec_is_written() {
    let world = World::new("dp-nocdi");
    let mut dp = world.start(&conf1("dataplane", 2, "pod"), 1).await;
    let mut c = world.client("dataplane").await;
    let resp = within(
        "Allocate",
        SLOW,
        c.allocate(allocate_request(&[&["dataplane-1"]])),
    )
    .await
    .unwrap_or_else(|e| panic!("Allocate failed: {e}\n{}", dp.logs()))
    .into_inner();
    assert!(
        resp.container_responses[0].cdi_devices.is_empty(),
        "{resp:?}"
    );
    assert_eq!(resp.container_responses[0].devices.len(), 1, "{resp:?}");
    dp.assert_running("after Allocate");
}

/// A spec directory someone else could change is refused at start (exit 1,
/// the reason named): a symlink, a world-writable directory, one below a
/// non-sticky world-writable directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_spec_dir_stops_the_daemon() {
    let world = World::new("dp-cdi-refuse");
    let base = world.lab.dir.path();
    let real = base.join("real");
    std::fs::create_dir(&real).expect("mkdir");
    let link = base.join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let open = base.join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let open_parent = base.join("open-parent");
    std::fs::create_dir(&open_parent).expect("mkdir");
    std::fs::set_permissions(&open_parent, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let below_open = open_parent.join("cdi");
    for (dir, why) in [
        (&link, "a symlink"),
        (&open, "lets others write"),
        (&below_open, "lets others write"),
    ] {
        let mut dp = cdi_args(world.cmd(&conf1("dataplane", 2, "pod")), dir).spawn();
        let t = Instant::now();
        let status = loop {
            if let Some(s) = dp.try_status() {
                break s;
            }
            assert!(
                t.elapsed() < SLOW,
                "the daemon still runs with spec dir {}\n{}",
                dir.display(),
                dp.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(status.code(), Some(1), "{}: {}", dir.display(), dp.logs());
        let logs = dp.logs();
        assert!(
            logs.contains("CDI spec directory") && logs.contains(why),
            "{}: the reason is not named ({why}):\n{logs}",
            dir.display()
        );
    }
    assert!(
        !below_open.exists(),
        "the daemon created a spec dir below a directory others can write"
    );
    assert!(
        world.kubelet.registrations().is_empty(),
        "a daemon with an untrusted spec dir registered"
    );
}

/// Discovery: a resource retired after its link went loses its spec; the
/// others keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_resource_loses_its_cdi_spec() {
    let world = World::new("dp-cdi-retire");
    let lab = &world.lab;
    let dir = lab.dir.path().join("cdi");
    let mut dp = cdi_args(
        world
            .cmd("[]")
            .env("DP_MACVTAP_DISCOVER_KINDS", "veth")
            .env("DP_MACVTAP_RETIRE_AFTER", "0.2"),
        &dir,
    )
    .spawn();
    registered(&world, &mut dp, 1).await;
    let lower_spec = spec_path(&dir, LOWER);
    let inode = |p: &Path| std::fs::metadata(p).map(|m| m.ino()).ok();
    let lower_inode = inode(&lower_spec);
    assert!(lower_inode.is_some(), "no spec of {LOWER}\n{}", dp.logs());
    lab.node.ip_cmd(&format!(
        "link add cdx7 type veth peer name cdl7 netns {}",
        lab.lan.name()
    ));
    registered(&world, &mut dp, 2).await;
    let base = world.ifindex_base("cdx7");
    wait_until(
        "the spec of cdx7",
        SLOW,
        || spec_path(&dir, "cdx7").exists(),
        || dp.logs(),
    )
    .await;
    // Discovery's default capacity, 100 devices: compared in parts so a
    // failure prints something readable.
    let (got, want) = (
        read_spec(&dir, "cdx7"),
        want_spec(&world, "cdx7", 100, base),
    );
    assert_eq!(got["kind"], want["kind"]);
    assert_eq!(got["cdiVersion"], want["cdiVersion"]);
    let (got, want) = (got["devices"].as_array(), want["devices"].as_array());
    assert_eq!(got.map(Vec::len), Some(100), "devices in the spec of cdx7");
    for (n, (g, w)) in got
        .into_iter()
        .flatten()
        .zip(want.into_iter().flatten())
        .enumerate()
    {
        assert_eq!(g, w, "device {n} of cdx7");
    }
    let gone = Instant::now();
    lab.node.ip_cmd("link del cdx7");
    let took = wait_until(
        "the spec of the retired cdx7 removed",
        SLOW,
        || !spec_path(&dir, "cdx7").exists(),
        || dp.logs(),
    )
    .await;
    measured("CDI spec removed after its link went (grace 0.2 s)", took);
    assert!(gone.elapsed() >= Duration::from_millis(200));
    // The spec that did not change was never rewritten (a rename would
    // give it a new inode), so runtimes watching the directory have
    // nothing to read again.
    assert_eq!(
        inode(&lower_spec),
        lower_inode,
        "the spec of {LOWER} was rewritten or removed while other resources changed"
    );
    dp.assert_running("after the retirement");
}
