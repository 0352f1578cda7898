//! Live configuration: the daemon reads its resources from `--config-file`
//! (a ConfigMap mounted as a volume) and applies every change while the
//! kubelet stand-in watches: resources added, removed, changed (capacity,
//! mode, lower device), broken edits, rapid series of edits, plain edits
//! in place and editors' rename-over, switching to discovery and back.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const KEY: &str = "DP_MACVTAP_CONF";

/// A ConfigMap volume as the kubelet lays it out: `KEY -> ..data/KEY`,
/// `..data -> ..<timestamp>`; an update writes a new timestamped
/// directory, then renames a new `..data` symlink over the old one.
struct ConfigMapVolume {
    dir: PathBuf,
    generation: u32,
    current: Option<String>,
}

impl ConfigMapVolume {
    fn new(dir: PathBuf, content: &str) -> ConfigMapVolume {
        fs::create_dir_all(&dir).expect("create the volume dir");
        let mut v = ConfigMapVolume {
            dir,
            generation: 0,
            current: None,
        };
        v.update(content);
        std::os::unix::fs::symlink(format!("..data/{KEY}"), v.path()).expect("the key's symlink");
        v
    }

    /// The path the daemon is given.
    fn path(&self) -> PathBuf {
        self.dir.join(KEY)
    }

    /// The kubelet's update; returns when the new `..data` is in place.
    fn update(&mut self, content: &str) -> Instant {
        self.generation += 1;
        let ts = format!("..2026_11_30_13_00_00.{:09}", self.generation);
        let data = self.dir.join(&ts);
        fs::create_dir(&data).expect("the timestamped dir");
        fs::write(data.join(KEY), content).expect("the key's file");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).expect("..data_tmp");
        fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        let swapped = Instant::now();
        if let Some(old) = self.current.replace(ts) {
            fs::remove_dir_all(self.dir.join(old)).expect("remove the old timestamped dir");
        }
        swapped
    }
}

/// The daemon for `world`, configured by the file at `path` (and no
/// DP_MACVTAP_CONF), with metrics on `metrics` in NODE.
fn live_cmd(world: &World, path: &Path, metrics: &str) -> DaemonCmd {
    let mut cmd = world.cmd("").no_conf().metrics(metrics);
    cmd.extra_args = vec!["--config-file".into(), path.display().to_string()];
    cmd
}

/// Waits for an accepted registration of resource `name` after the first
/// `seen` ones of the log; returns its index in the log.
async fn registration_of(world: &World, dp: &Daemon, name: &str, seen: usize) -> usize {
    let wanted = resource_name(name);
    let mut found = None;
    let _ = poll_until(SLOW, || {
        found = world
            .kubelet
            .registrations()
            .iter()
            .enumerate()
            .skip(seen)
            .find(|(_, r)| r.request.resource_name == wanted && r.refused.is_none())
            .map(|(i, _)| i);
        found.is_some()
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "no registration of {name} after #{seen}: {:#?}\n{}",
            world.kubelet.registrations(),
            dp.logs()
        )
    })
}

/// What the kubelet does on a registration: ListAndWatch on the endpoint.
/// Returns the watch and its first list.
async fn kubelet_watches(world: &World, name: &str) -> (DeviceWatch, Update) {
    let w = world.watch(name).await;
    let first = w.first(SLOW).await;
    (w, first)
}

/// One GET in NODE, retried while the metrics port is not up yet:
/// (status, body).
fn http_get(netns: &Path, addr: &str, path: &str) -> (u16, String) {
    let deadline = Instant::now() + SLOW;
    loop {
        match common::http_get(netns, addr, path) {
            Ok(r) => return r,
            Err(e) if Instant::now() > deadline => panic!("GET {path}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The value of the sample `series` (name and labels, as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

const RELOADS_OK: &str = "macvtap_deviceplugin_config_reloads_total{result=\"ok\"}";
const RELOADS_ERR: &str = "macvtap_deviceplugin_config_reloads_total{result=\"error\"}";
const LAST_OK: &str = "macvtap_deviceplugin_config_last_reload_success";

/// A second uplink `up9` in NODE, up, its peer in LAN.
fn second_uplink(lab: &Lab) {
    lab.node.ip_cmd(&format!(
        "link add up9 type veth peer name lan9 netns {}",
        lab.lan.name()
    ));
    lab.node.ip_cmd("link set up9 up");
    lab.lan.ip_cmd("link set lan9 up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_updates_add_change_and_remove_resources_and_survive_a_broken_edit() {
    let world = World::new("dp-live");
    let lab = &world.lab;
    second_uplink(lab);
    let metrics = "127.0.0.1:9811";
    let node = lab.node.path();
    let mut cm = ConfigMapVolume::new(
        lab.dir.subdir("config"),
        &json!([{"name": "a", "lowerDevice": LOWER, "capacity": 2}]).to_string(),
    );
    let mut dp = live_cmd(&world, &cm.path(), metrics).spawn();
    registration_of(&world, &dp, "a", 0).await;
    let (wa, first) = kubelet_watches(&world, "a").await;
    assert_eq!(ids(&first.devices), expected_ids("a", 2));
    let base_a = world.ifindex_base("a");

    // Added: served and registered; `a` is left alone.
    let seen = world.kubelet.registrations().len();
    let swapped = cm.update(
        &json!([
            {"name": "a", "lowerDevice": LOWER, "capacity": 2},
            {"name": "b", "lowerDevice": LOWER, "capacity": 3, "attach": "host"},
        ])
        .to_string(),
    );
    registration_of(&world, &dp, "b", seen).await;
    let (wb, first_b) = kubelet_watches(&world, "b").await;
    measured(
        "ConfigMap swap -> new resource's list at the kubelet",
        first_b.at.duration_since(swapped),
    );
    assert_eq!(ids(&first_b.devices), expected_ids("b", 3));
    assert!(
        all(&first_b.devices, HEALTHY),
        "{}",
        describe(&first_b.devices)
    );
    assert_eq!(world.resource_entry("b")["attach"], "host");
    let base_b = world.ifindex_base("b");

    // A device of b in use (attach host: the macvtap is made now).
    let mut cb = world.client("b").await;
    within(
        "Allocate b-0",
        SLOW,
        cb.allocate(allocate_request(&[&["b-0"]])),
    )
    .await
    .unwrap_or_else(|e| panic!("Allocate b-0: {e}\n{}", dp.logs()));
    let in_use = format!("mvtap{base_b}");
    assert_eq!(
        lab.node.expect_link(&in_use).mode.as_deref(),
        Some("bridge")
    );

    // Capacity up: the kubelet's open ListAndWatch stream gets the new
    // list; no re-registration, same socket.
    let seen = world.kubelet.registrations().len();
    let swapped = cm.update(
        &json!([
            {"name": "a", "lowerDevice": LOWER, "capacity": 4},
            {"name": "b", "lowerDevice": LOWER, "capacity": 3, "attach": "host"},
        ])
        .to_string(),
    );
    let up = wa
        .wait_for("4 devices", SLOW, |d| ids(d) == expected_ids("a", 4))
        .await;
    measured(
        "ConfigMap swap -> grown capacity's ListAndWatch update at the kubelet",
        up.at.duration_since(swapped),
    );
    assert!(all(&up.devices, HEALTHY), "{}", describe(&up.devices));
    assert_eq!(world.ifindex_base("a"), base_a, "a grew in place");
    assert_eq!(world.resource_entry("a")["capacity"], 4);
    // a's new devices can be allocated on the kubelet's connection.
    let mut ca = world.client("a").await;
    within(
        "Allocate a-3",
        SLOW,
        ca.allocate(allocate_request(&[&["a-3"]])),
    )
    .await
    .unwrap_or_else(|e| panic!("Allocate a-3 after growing: {e}\n{}", dp.logs()));

    // Capacity down.
    let swapped = cm.update(
        &json!([
            {"name": "a", "lowerDevice": LOWER, "capacity": 1},
            {"name": "b", "lowerDevice": LOWER, "capacity": 3, "attach": "host"},
        ])
        .to_string(),
    );
    let down = wa
        .wait_for("1 device", SLOW, |d| ids(d) == expected_ids("a", 1))
        .await;
    measured(
        "ConfigMap swap -> shrunk capacity's ListAndWatch update at the kubelet",
        down.at.duration_since(swapped),
    );
    let refused = within(
        "Allocate a-3",
        SLOW,
        ca.allocate(allocate_request(&[&["a-3"]])),
    )
    .await;
    assert!(
        refused.is_err(),
        "a-3 allocated after shrinking to 1: {refused:?}"
    );

    // Mode and lower device of b: new Allocates use them; the device in
    // use keeps its settings. b-0's ifindex is held by that device, on the
    // old lower device: not a device of the new settings, so it is
    // Unhealthy until its pod lets it go.
    let swapped = cm.update(
        &json!([
            {"name": "a", "lowerDevice": LOWER, "capacity": 1},
            {"name": "b", "lowerDevice": "up9", "mode": "vepa", "capacity": 3, "attach": "host"},
        ])
        .to_string(),
    );
    let changed = wb
        .wait_for("b-0 held on the old lower device", SLOW, |d| {
            d.iter().map(|d| (d.id.as_str(), d.health.as_str())).eq([
                ("b-0", UNHEALTHY),
                ("b-1", HEALTHY),
                ("b-2", HEALTHY),
            ])
        })
        .await;
    measured(
        "ConfigMap swap -> lower device change's ListAndWatch update at the kubelet",
        changed.at.duration_since(swapped),
    );
    assert_eq!(world.resource_entry("b")["lowerDevice"], "up9");
    assert_eq!(world.resource_entry("b")["mode"], "vepa");
    assert_eq!(world.ifindex_base("b"), base_b);
    within(
        "Allocate b-1",
        SLOW,
        cb.allocate(allocate_request(&[&["b-1"]])),
    )
    .await
    .unwrap_or_else(|e| panic!("Allocate b-1 after the change: {e}\n{}", dp.logs()));
    let fresh = lab.node.expect_link(&format!("mvtap{}", base_b + 1));
    assert_eq!(fresh.mode.as_deref(), Some("vepa"), "{}", fresh.json);
    assert!(fresh.json.to_string().contains("up9"), "{}", fresh.json);
    let old = lab.node.expect_link(&in_use);
    assert_eq!(old.mode.as_deref(), Some("bridge"), "{}", old.json);
    assert_eq!(
        world.kubelet.registrations().len(),
        seen,
        "a change re-registered: {:#?}",
        world.kubelet.registrations()
    );
    assert!(wa.ended().is_none() && wb.ended().is_none());

    // A broken edit: nothing changes, it is logged (file, key, line and
    // column), counted, and /healthz stays healthy.
    let registrations = world.kubelet.registrations().len();
    cm.update("[{\"name\": \"a\",\n  \"lowerDevice\": }]");
    wait_until(
        "the broken edit logged",
        SLOW,
        || dp.stderr().contains("line 2, column"),
        || dp.logs(),
    )
    .await;
    let log = dp.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("line 2, column"))
        .unwrap_or_default();
    assert!(line.contains(&format!("(key {KEY})")), "{line}");
    assert!(line.contains("last good configuration"), "{line}");
    let (code, text) = http_get(&node, metrics, "/metrics");
    assert_eq!(code, 200, "{text}");
    assert_eq!(sample(&text, RELOADS_ERR), Some(1.0), "{text}");
    assert_eq!(sample(&text, LAST_OK), Some(0.0), "{text}");
    let (code, body) = http_get(&node, metrics, "/healthz");
    assert_eq!(code, 200, "/healthz after a broken edit: {body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.kubelet.registrations().len(), registrations);
    assert!(world.socket("a").exists() && world.socket("b").exists());
    assert!(wa.ended().is_none(), "a's stream ended on a broken edit");

    // Removed: b's socket goes, its stream ends; the device in use stays. The fix also counts as a good reload.
    cm.update(&json!([{"name": "a", "lowerDevice": LOWER, "capacity": 1}]).to_string());
    let only_a = || {
        world.resources_json()["resources"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["name"] == "a")
    };
    wait_until("b gone from resources.json", SLOW, only_a, || {
        format!("{}\n{}", world.resources_json(), dp.logs())
    })
    .await;
    assert!(!world.socket("b").exists(), "b's socket is still there");
    assert!(
        poll_until(SLOW, || wb.ended().is_some()).await.is_ok(),
        "b's ListAndWatch stream still open after its removal"
    );
    assert!(
        lab.node.link(&in_use).is_some(),
        "the device in use was removed"
    );
    assert!(world.socket("a").exists());
    assert!(wa.ended().is_none(), "a's stream ended when b was removed");
    let (_, text) = http_get(&node, metrics, "/metrics");
    assert_eq!(sample(&text, LAST_OK), Some(1.0), "{text}");
    assert_eq!(sample(&text, RELOADS_ERR), Some(1.0), "{text}");
    assert!(
        sample(&text, RELOADS_OK).is_some_and(|n| n >= 5.0),
        "{text}"
    );
    assert!(
        !text.contains("resource=\"macvtap.network.kubevirt.io/b\""),
        "{text}"
    );
    let (code, body) = http_get(&node, metrics, "/healthz");
    assert_eq!(code, 200, "{body}");
    dp.assert_running("after every change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_series_of_edits_ends_in_the_last_one() {
    let mut world = World::new("dp-live-rapid");
    let conf = |capacity: u32| {
        json!([{"name": "a", "lowerDevice": LOWER, "capacity": capacity}]).to_string()
    };
    let mut cm = ConfigMapVolume::new(world.lab.dir.subdir("config"), &conf(1));
    let mut dp = live_cmd(&world, &cm.path(), "127.0.0.1:9812").spawn();
    registration_of(&world, &dp, "a", 0).await;
    let seen = world.kubelet.registrations().len();
    let (w, _) = kubelet_watches(&world, "a").await;
    // 30 updates, 5 ms apart, some of them broken.
    let burst = Instant::now();
    let mut swapped = burst;
    for i in 0..30u32 {
        let content = if i % 7 == 3 {
            "[{".to_string()
        } else {
            conf(2 + i)
        };
        swapped = cm.update(&content);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The last one wins.
    wait_until(
        "capacity 31 in resources.json",
        SLOW,
        || world.resources_json()["resources"][0]["capacity"] == 31,
        || dp.logs(),
    )
    .await;
    let list = w
        .wait_for("31 devices", SLOW, |d| ids(d) == expected_ids("a", 31))
        .await;
    measured(
        "last of 30 rapid ConfigMap swaps -> its ListAndWatch update at the kubelet",
        list.at.duration_since(swapped),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lists: Vec<usize> = w.updates().iter().map(|u| u.devices.len()).collect();
    println!(
        "30 edits in {:?} -> ListAndWatch lists of {lists:?} devices",
        swapped.duration_since(burst)
    );
    // Debounced: far fewer updates than edits, and the last one stays.
    assert!(lists.len() <= 6, "{} updates for 30 edits", lists.len());
    assert_eq!(lists.last(), Some(&31));
    assert_eq!(world.kubelet.registrations().len(), seen);
    dp.assert_running("after the rapid edits");

    // A kubelet restart after the changes: served and registered again
    // with the settings in effect.
    drop(w);
    world.kubelet.restart();
    registration_of(&world, &dp, "a", seen).await;
    let (_w, list) = kubelet_watches(&world, "a").await;
    assert_eq!(ids(&list.devices), expected_ids("a", 31));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_file_edited_in_place_or_renamed_over_and_the_env_var_ignored() {
    let world = World::new("dp-live-plain");
    let lab = &world.lab;
    let dir = lab.dir.subdir("etc");
    fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("resources.json");

    // Broken at start: refused, naming the file and the place.
    fs::write(&path, "[{\"name\": \"a\",\n\n  \"capacity\": x}]").expect("write");
    let mut broken = live_cmd(&world, &path, "127.0.0.1:9813").spawn();
    let status = broken
        .wait_exit(SLOW)
        .await
        .expect("a broken file at start must stop the daemon");
    assert!(!status.success());
    let _ = poll_until(SECOND, || broken.stderr().contains("line 3")).await;
    let err = broken.stderr();
    assert!(
        err.contains("resources.json (key resources.json)") && err.contains("line 3"),
        "{err}"
    );
    drop(broken);

    fs::write(
        &path,
        json!([{"name": "a", "lowerDevice": LOWER, "capacity": 2}]).to_string(),
    )
    .expect("write");
    // The file wins over DP_MACVTAP_CONF.
    let mut cmd = live_cmd(&world, &path, "127.0.0.1:9813");
    cmd.conf = Some(json!([{"name": "fromenv", "lowerDevice": LOWER}]).to_string());
    let mut dp = cmd.spawn();
    registration_of(&world, &dp, "a", 0).await;
    assert!(!world.socket("fromenv").exists());
    assert!(
        dp.stderr().contains("DP_MACVTAP_CONF is set but ignored"),
        "{}",
        dp.logs()
    );

    let (w, _) = kubelet_watches(&world, "a").await;
    // In place (truncate and write, as `echo > file`).
    let t = Instant::now();
    fs::write(
        &path,
        json!([{"name": "a", "lowerDevice": LOWER, "capacity": 3}]).to_string(),
    )
    .expect("write");
    let list = w
        .wait_for("3 devices", SLOW, |d| ids(d) == expected_ids("a", 3))
        .await;
    measured(
        "in-place write -> new list at the kubelet",
        list.at.duration_since(t),
    );

    // An editor's save: a new file renamed over the old one.
    let tmp = dir.join(".resources.json.swp");
    fs::write(
        &tmp,
        json!([{"name": "a", "lowerDevice": LOWER, "capacity": 5}]).to_string(),
    )
    .expect("write");
    fs::rename(&tmp, &path).expect("rename over");
    w.wait_for("5 devices", SLOW, |d| ids(d) == expected_ids("a", 5))
        .await;

    // Deleted: a refused change, the resources stay.
    fs::remove_file(&path).expect("remove");
    wait_until(
        "the missing file logged",
        SLOW,
        || dp.stderr().contains("cannot read it"),
        || dp.logs(),
    )
    .await;
    assert!(world.socket("a").exists());
    dp.assert_running("after the edits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_between_a_list_and_discovery() {
    let world = World::new("dp-live-disc");
    let mut cm = ConfigMapVolume::new(
        world.lab.dir.subdir("config"),
        &json!([{"name": "a", "lowerDevice": LOWER, "capacity": 2}]).to_string(),
    );
    // Discovery offers veths here (the lab's uplink is one).
    let mut dp = live_cmd(&world, &cm.path(), "127.0.0.1:9814")
        .env("DP_MACVTAP_DISCOVER_KINDS", "veth")
        .spawn();
    registration_of(&world, &dp, "a", 0).await;
    let (wa, _) = kubelet_watches(&world, "a").await;

    // `[]`: a goes, the uplink's own resource comes.
    let seen = world.kubelet.registrations().len();
    cm.update("[]");
    registration_of(&world, &dp, LOWER, seen).await;
    let (_wl, list) = kubelet_watches(&world, LOWER).await;
    assert_eq!(ids(&list.devices), expected_ids(LOWER, 100));
    assert!(poll_until(SLOW, || wa.ended().is_some()).await.is_ok());
    assert!(!world.socket("a").exists());

    // Back to a list: discovery's resource goes, a comes back (a new
    // resource to the kubelet, registered again).
    let seen = world.kubelet.registrations().len();
    cm.update(&json!([{"name": "a", "lowerDevice": LOWER, "capacity": 2}]).to_string());
    registration_of(&world, &dp, "a", seen).await;
    wait_until(
        "the discovered resource withdrawn",
        SLOW,
        || !world.socket(LOWER).exists(),
        || dp.logs(),
    )
    .await;
    let (_wa, list) = kubelet_watches(&world, "a").await;
    assert_eq!(ids(&list.devices), expected_ids("a", 2));
    dp.assert_running("after switching");
}
