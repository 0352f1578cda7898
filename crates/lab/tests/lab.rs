//! `macvtap-lab`, as the demo runs it: one real VM boot on the device
//! plugin's path (the real daemon, the kubelet stand-in's Allocate, the
//! CNI ADD as Multus sends it) proving ping, TCP and HTTP; the standalone
//! CNI path with the stand-in instead of QEMU; `auto` without the daemon
//! next to macvtap-lab; a deliberately wrong guest MAC that fails with
//! doctor's explanation; `--keep` and its cleanup script. After every run,
//! nothing the lab made is left.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{alive, cni_plugin, device_plugin, run};
use serde_json::{json, Value};

/// Asserts that nothing named in the report survived the lab.
fn assert_gone(report: &Value) {
    for role in ["lan", "node", "pod"] {
        let name = report["namespaces"][role].as_str().expect("namespace name");
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "namespace {name} survived the lab"
        );
    }
    let dir = report["lab_dir"].as_str().expect("lab_dir");
    assert!(!Path::new(dir).exists(), "{dir} survived the lab");
    if let Some(pid) = report["guest"]["qemu_pid"].as_u64() {
        assert!(!alive(pid as u32), "QEMU (pid {pid}) survived the lab");
    }
    if let Some(pid) = report["device_plugin"]["pid"].as_u64() {
        assert!(
            !alive(pid as u32),
            "the device plugin (pid {pid}) survived the lab"
        );
    }
}

fn ms(t: &Value, key: &str) -> f64 {
    let v = t[key]
        .as_f64()
        .unwrap_or_else(|| panic!("timing {key} missing: {t:#}"));
    assert!(v > 0.0 && v < 120_000.0, "{key} = {v} ms: {t:#}");
    v
}

#[test]
fn the_device_plugins_device_boots_a_vm_that_answers_ping_tcp_and_http() {
    cni_plugin();
    device_plugin();
    let out = run(&["--vm", "always", "--device-plugin", "always", "--json"]);
    let report = out.json();
    let lab_dir = report["lab_dir"].as_str().unwrap().to_string();
    assert_eq!(report["attach_mode"], "device-plugin", "{report:#}");
    let dp = &report["device_plugin"];

    // The daemon ran with every path under the lab's directory, on up0.
    for key in ["plugin_dir", "state_dir", "pod_resources_socket", "log"] {
        let path = dp[key].as_str().unwrap();
        assert!(path.starts_with(&format!("{lab_dir}/")), "{key} {path}");
    }
    let conf: Value = serde_json::from_str(dp["conf"].as_str().unwrap()).unwrap();
    assert_eq!(conf[0]["name"], "dataplane", "{conf}");
    assert_eq!(conf[0]["lowerDevice"], "up0", "{conf}");

    // The kubelet stand-in's view: registration, a Healthy list (up0 with
    // carrier exists only in the lab's node namespace: the daemon ran
    // there), the preferred device, Allocate.
    assert_eq!(dp["resource_name"], "macvtap.network.kubevirt.io/dataplane");
    assert_eq!(dp["endpoint"], "macvtap.network.kubevirt.io_dataplane");
    assert_eq!(dp["version"], "v1beta1");
    assert_eq!(dp["healthy_devices"], 4, "{dp:#}");
    let device_id = dp["device_id"].as_str().unwrap();
    assert_eq!(dp["preferred"], json!([device_id]), "{dp:#}");
    assert!(
        ["dataplane-0", "dataplane-1", "dataplane-2", "dataplane-3"].contains(&device_id),
        "{device_id}"
    );
    assert_eq!(dp["permissions"], "rw");

    // Multus' delegation: the seeds' NAD plus deviceID; its CNI_ARGS. (The
    // state directory is node policy, given to the plugin by the node.)
    assert_eq!(
        dp["cni_config"],
        json!({"cniVersion": "0.3.1", "name": "dataplane", "type": "macvtap", "mtu": 1500,
               "deviceID": device_id})
    );
    let mac = report["interface"]["mac"].as_str().unwrap();
    let args = dp["cni_args"].as_str().unwrap();
    assert!(
        args.starts_with(
            "IgnoreUnknown=true;K8S_POD_NAMESPACE=lab;K8S_POD_NAME=vm;K8S_POD_INFRA_CONTAINER_ID="
        ) && args.ends_with(&format!(";MAC={mac}")),
        "{args}"
    );

    // What the DeviceSpec promised is what the pod got.
    let ifindex = report["interface"]["ifindex"].as_u64().unwrap();
    assert_eq!(dp["container_path"], format!("/dev/tap{ifindex}"));
    assert_eq!(dp["promised_ifindex"], ifindex);
    assert_eq!(dp["pod_ifindex"], ifindex);
    assert_eq!(
        dp["host_path"],
        format!("{}/dev/{device_id}", dp["state_dir"].as_str().unwrap())
    );
    assert_eq!(dp["node_device"], report["interface"]["device"]);
    assert_eq!(dp["node_owner"], "107:107");
    assert_eq!(dp["node_mode"], "0660");
    assert_eq!(dp["opened_as"], "uid 107 gid 107");
    assert_eq!(report["cni_device_node"], dp["host_path"]);
    assert_eq!(report["cni_device_node_matches"], true);
    assert_eq!(report["interface"]["mode"], "bridge");

    // A real VM on that node, reached from the LAN.
    let guest = &report["guest"];
    assert_eq!(guest["kind"], "vm", "{report:#}");
    assert_eq!(guest["mac"], mac);
    assert!(!report["ping_rtt_ms"].as_array().unwrap().is_empty());
    assert!(report["tcp_echo"]
        .as_str()
        .unwrap()
        .contains(report["tag"].as_str().unwrap()));
    assert!(report["http_status"].as_str().unwrap().contains(" 200"));
    // The guest's own page names its NIC's MAC: the macvtap's.
    assert!(report["http_body"]
        .as_str()
        .unwrap()
        .ends_with(&format!("mac {mac} name macvtap-guest via guestip")));

    // The handover path: the node's up0 plays a container; its identity
    // went to a second guest over DHCP, which answered at its address with
    // the macvtap's MAC, and came back.
    let h = &report["handover"];
    assert_eq!(h["address"], "10.201.0.20/24", "{h:#}");
    let body = h["http_body"].as_str().unwrap();
    let hmac = h["mac"].as_str().unwrap();
    assert!(
        body.ends_with(&format!("mac {hmac} name lab-handover via dhcp")),
        "{h:#}"
    );
    for key in ["apply_ms", "lease_ms", "first_reply_ms", "undo_ms"] {
        ms(h, key);
    }
    assert!(ms(h, "lease_ms") <= ms(h, "first_reply_ms"), "{h:#}");

    // Cleanup stopped the daemon with SIGTERM: exit 0, its sockets removed.
    let stopped = dp["stopped"].as_str().unwrap();
    assert!(
        stopped.starts_with("SIGTERM -> exit 0") && stopped.ends_with("its sockets removed"),
        "{stopped}"
    );

    let t = &report["timings"];
    for key in [
        "registration_ms",
        "devices_healthy_ms",
        "preferred_allocation_ms",
        "allocate_ms",
        "cni_add_ms",
        "start_to_first_ping_ms",
        "device_plugin_stop_ms",
        "cleanup_ms",
    ] {
        ms(t, key);
    }
    eprintln!("lab timings: {t}");
    // The narration went to stderr, with the report's numbers.
    for line in [
        "== first ping reply from 10.201.0.10",
        "   registered macvtap.network.kubevirt.io/dataplane (v1beta1",
        "   ListAndWatch: 4 devices, all Healthy",
        "  Allocate  ",
        "(device plugin: SIGTERM -> exit 0",
        "== handover: apply ",
        "up0 has exactly its identity again",
    ] {
        assert!(out.stderr.contains(line), "no {line:?} in:\n{}", out.stderr);
    }
    assert_gone(&report);
}

#[test]
fn standalone_without_a_vm_a_stand_in_answers_ping() {
    cni_plugin();
    let report = run(&["--vm", "never", "--device-plugin", "never", "--json"]).json();
    assert_eq!(report["attach_mode"], "standalone");
    assert_eq!(report["why_standalone"], "--device-plugin never");
    assert_eq!(report["device_plugin"], Value::Null);
    assert_eq!(report["timings"]["allocate_ms"], Value::Null);
    let node = report["cni_device_node"].as_str().unwrap();
    assert!(
        node.ends_with(&format!(
            "/state/pods/{}/net1.tap",
            report["tag"].as_str().unwrap()
        )),
        "{node}"
    );
    assert_eq!(report["cni_device_node_matches"], true);
    assert_eq!(report["guest"]["kind"], "stand-in");
    assert_eq!(report["guest"]["why_not_vm"], "--vm never");
    assert!(!report["ping_rtt_ms"].as_array().unwrap().is_empty());
    assert_eq!(report["tcp_echo"], Value::Null);
    assert_gone(&report);
}

#[test]
fn auto_without_the_daemon_next_to_the_lab_runs_standalone_and_always_refuses() {
    let plugin = cni_plugin();
    // A macvtap-lab alone in a directory: no macvtap-deviceplugin beside it.
    let dir = macvtap_testkit::TempDir::new("lab-alone");
    let alone = dir.path().join("macvtap-lab");
    std::fs::copy(common::lab_path(), &alone).unwrap();
    let lab = |mode: &str| {
        Command::new(&alone)
            .args(["--vm", "never", "--json", "--device-plugin", mode])
            .arg("--cni-plugin")
            .arg(&plugin)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = lab("auto");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["attach_mode"], "standalone");
    let why = report["why_standalone"].as_str().unwrap();
    assert!(
        why.contains("macvtap-deviceplugin is not in") && why.contains("build-release"),
        "{why}"
    );
    assert_gone(&report);

    let out = lab("always");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--device-plugin always, but macvtap-deviceplugin is not in"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_wrong_guest_mac_fails_with_doctors_explanation_and_cleans_up() {
    cni_plugin();
    device_plugin();
    let before: Vec<_> = lab_namespaces();
    let out = run(&["--vm", "never", "--guest-mac", "02:00:0a:c9:08:99"]);
    let err = out.fails_with(1).to_string();
    assert!(err.contains("did not answer ping"), "{err}");
    assert!(err.contains("doctor: net1 guest mac"), "{err}");
    assert!(err.contains("02:00:0a:c9:08:99"), "{err}");
    assert!(err.contains("100% loss"), "{err}");
    // auto: the daemon next to macvtap-lab attached the pod, and was stopped.
    assert!(out.stdout.contains("\n== device plugin "), "{}", out.stdout);
    assert!(
        out.stdout.contains("   Allocate(dataplane-"),
        "{}",
        out.stdout
    );
    let daemon = out
        .stdout
        .lines()
        .find_map(|l| {
            l.split_once("(pid ")
                .filter(|_| l.starts_with("== device plugin "))
        })
        .and_then(|(_, rest)| rest.split(')').next()?.parse::<u32>().ok())
        .expect("the lab names the daemon's pid");
    assert!(!alive(daemon), "the device plugin (pid {daemon}) survived");
    // This run's namespaces are gone (others may belong to parallel tests).
    let ours = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("== namespaces "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the lab names its namespaces")
        .to_string();
    assert!(!lab_namespaces().contains(&ours), "{ours} survived");
    assert!(before.iter().all(|n| n != &ours));
}

#[test]
fn keep_leaves_the_world_and_a_script_that_removes_it() {
    cni_plugin();
    device_plugin();
    let report = run(&[
        "--vm",
        "never",
        "--device-plugin",
        "always",
        "--keep",
        "--json",
    ])
    .json();
    let pod = report["namespaces"]["pod"].as_str().unwrap();
    assert!(Path::new("/run/netns").join(pod).exists());
    // The device plugin outlives macvtap-lab, still serving its socket.
    let dp = &report["device_plugin"];
    let pid = dp["pid"].as_u64().unwrap() as u32;
    assert!(alive(pid), "the kept device plugin (pid {pid}) is gone");
    let socket =
        Path::new(dp["plugin_dir"].as_str().unwrap()).join("macvtap.network.kubevirt.io_dataplane");
    assert!(socket.exists(), "{}", socket.display());
    let script = report["cleanup_script"].as_str().unwrap().to_string();
    let status = Command::new("sh").arg(&script).status().unwrap();
    assert!(status.success());
    assert_gone(&report);
}

#[test]
fn refuses_netns_and_points_at_a_missing_plugin() {
    // The lab makes its own namespaces: it has no --netns to act in one.
    let err = run(&["--netns", "x"]).fails_with(2).to_string();
    assert!(err.contains("--netns"), "{err}");
    let err = run(&["--vm", "never", "--cni-plugin", "/nonexistent/macvtap"])
        .fails_with(1)
        .to_string();
    assert!(err.contains("build-release"), "{err}");
    let err = run(&[
        "--vm",
        "never",
        "--device-plugin-bin",
        "/nonexistent/macvtap-deviceplugin",
    ])
    .fails_with(1)
    .to_string();
    assert!(
        err.contains("--device-plugin-bin /nonexistent/macvtap-deviceplugin: no such file"),
        "{err}"
    );
}

fn lab_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("mvlab-"))
                .collect()
        })
        .unwrap_or_default()
}
