//! `macvtapctl lab`, as the demo runs it: one real VM boot proving ping,
//! TCP and HTTP; the stand-in without QEMU; a deliberately wrong guest
//! MAC that fails with doctor's explanation; `--keep` and its cleanup
//! script. After every run, nothing the lab made is left.

mod common;

use std::path::Path;
use std::process::Command;

use common::{alive, cni_plugin, run};
use serde_json::Value;

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
}

#[test]
fn boots_a_vm_on_the_cni_macvtap_and_proves_ping_tcp_and_http() {
    cni_plugin();
    let out = run(&["lab", "--vm", "always", "--json"]);
    let report = out.json();
    let guest = &report["guest"];
    assert_eq!(guest["kind"], "vm", "{report:#}");
    let mac = report["interface"]["mac"].as_str().unwrap();
    assert_eq!(guest["mac"], mac);
    assert_eq!(report["interface"]["mode"], "bridge");
    assert_eq!(report["cni_device_node_matches"], true);
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
        .ends_with(&format!("mac {mac}")));
    let t = &report["timings"];
    let first_ping = t["start_to_first_ping_ms"].as_f64().unwrap();
    assert!(first_ping > 0.0 && first_ping < 120_000.0, "{t:#}");
    assert!(t["cleanup_ms"].as_f64().is_some(), "{t:#}");
    eprintln!("lab timings: {t}");
    // The narration went to stderr, with the report's numbers.
    assert!(
        out.stderr.contains("== first ping reply from 10.201.0.10"),
        "{}",
        out.stderr
    );
    assert_gone(&report);
}

#[test]
fn without_a_vm_a_stand_in_answers_ping() {
    cni_plugin();
    let report = run(&["lab", "--vm", "never", "--json"]).json();
    assert_eq!(report["guest"]["kind"], "stand-in");
    assert_eq!(report["guest"]["why_not_vm"], "--vm never");
    assert!(!report["ping_rtt_ms"].as_array().unwrap().is_empty());
    assert_eq!(report["tcp_echo"], Value::Null);
    assert_gone(&report);
}

#[test]
fn a_wrong_guest_mac_fails_with_doctors_explanation_and_cleans_up() {
    cni_plugin();
    let before: Vec<_> = lab_namespaces();
    let out = run(&["lab", "--vm", "never", "--guest-mac", "02:00:0a:c9:08:99"]);
    let err = out.fails_with(1).to_string();
    assert!(err.contains("did not answer ping"), "{err}");
    assert!(err.contains("doctor: net1 guest mac"), "{err}");
    assert!(err.contains("02:00:0a:c9:08:99"), "{err}");
    assert!(err.contains("100% loss"), "{err}");
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
    let report = run(&["lab", "--vm", "never", "--keep", "--json"]).json();
    let pod = report["namespaces"]["pod"].as_str().unwrap();
    assert!(Path::new("/run/netns").join(pod).exists());
    let script = report["cleanup_script"].as_str().unwrap().to_string();
    let status = Command::new("sh").arg(&script).status().unwrap();
    assert!(status.success());
    assert_gone(&report);
}

#[test]
fn refuses_netns_and_points_at_a_missing_plugin() {
    let err = run(&["--netns", "x", "lab"]).fails_with(1).to_string();
    assert!(err.contains("makes its own namespaces"), "{err}");
    let err = run(&[
        "lab",
        "--vm",
        "never",
        "--cni-plugin",
        "/nonexistent/macvtap",
    ])
    .fails_with(1)
    .to_string();
    assert!(err.contains("build-release"), "{err}");
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
