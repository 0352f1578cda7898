//! doctor against real faults made in private namespaces: each one is
//! named, explained and given its fix; a clean setup exits 0.

mod common;

use std::process::{Command, Stdio};

use common::{finding, run_in, ChildGuard};
use macvtap_testkit::{Netns, TempDir};
use serde_json::Value;

const MAC: &str = "02:00:0a:c9:03:0a";
const WRONG_MAC: &str = "02:00:0a:c9:03:99";

fn world(tag: &str) -> Netns {
    common::macvtap_world(tag, Some(MAC))
}

fn doctor(ns: &Netns, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["doctor", "--interface", "mv0", "--json"];
    args.extend_from_slice(extra);
    let out = run_in(ns, &args);
    let report = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor printed no JSON ({e}): {out:?}"));
    (out.code, report)
}

fn problem<'a>(report: &'a Value, check: &str) -> &'a Value {
    let f = finding(report, "mv0", check);
    assert_eq!(f["status"], "problem", "{f:#}");
    assert!(
        f["fix"].as_str().is_some_and(|s| !s.is_empty()),
        "no fix: {f:#}"
    );
    f
}

#[test]
fn a_clean_macvtap_passes_and_each_fault_is_named_with_its_fix() {
    let ns = world("doc-faults");
    let (code, report) = doctor(&ns, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["problems"], 0);
    for check in ["state", "lower", "tap node"] {
        assert_eq!(finding(&report, "mv0", check)["status"], "ok", "{check}");
    }
    // The KVM verdict follows this host's facts.
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let vt = cpu.split_whitespace().any(|f| f == "vmx" || f == "svm");
    let kvm = finding(&report, "host", "kvm");
    let usable = vt && std::path::Path::new("/dev/kvm").exists();
    assert_eq!(kvm["status"] == "ok", usable, "{kvm:#}");

    ns.ip_cmd("link set up1 down");
    let (code, report) = doctor(&ns, &[]);
    assert_eq!(code, Some(1));
    let f = problem(&report, "lower");
    assert!(
        f["summary"].as_str().unwrap().contains("no carrier"),
        "{f:#}"
    );
    ns.ip_cmd("link set up1 up");

    ns.ip_cmd("link set up0 down");
    let (code, report) = doctor(&ns, &[]);
    assert_eq!(code, Some(1));
    assert_eq!(problem(&report, "lower")["fix"], "ip link set up0 up");
    ns.ip_cmd("link set up0 up");

    ns.ip_cmd("link set mv0 down");
    let (_, report) = doctor(&ns, &[]);
    assert_eq!(problem(&report, "state")["fix"], "ip link set mv0 up");
    ns.ip_cmd("link set mv0 up");

    let (code, report) = doctor(&ns, &["--guest-mac", WRONG_MAC]);
    assert_eq!(code, Some(1));
    let f = problem(&report, "guest mac");
    let summary = f["summary"].as_str().unwrap();
    assert!(
        summary.contains(WRONG_MAC) && summary.contains(MAC),
        "{f:#}"
    );
    assert!(f["why"].as_str().unwrap().contains("100% loss"), "{f:#}");
    let (code, report) = doctor(&ns, &["--guest-mac", MAC]);
    assert_eq!(code, Some(0));
    assert_eq!(finding(&report, "mv0", "guest mac")["status"], "ok");

    ns.ip_cmd("addr add 10.201.3.2/24 dev up1");
    let (code, report) = doctor(&ns, &["--guest-ip", "10.201.3.2"]);
    assert_eq!(code, Some(1));
    let f = problem(&report, "guest ip");
    assert!(f["summary"].as_str().unwrap().contains("up1"), "{f:#}");
    let (code, _) = doctor(&ns, &["--guest-ip", "10.201.3.3"]);
    assert_eq!(code, Some(0));

    // The text form says the same, with the fix.
    ns.ip_cmd("link set up0 down");
    let out = run_in(&ns, &["doctor", "--interface", "mv0"]);
    let text = out.fails_with(1).to_string() + &out.stdout;
    assert!(text.contains("PROBLEM  mv0 lower"), "{text}");
    assert!(text.contains("fix: ip link set up0 up"), "{text}");
}

#[test]
fn the_host_cannot_reach_bridge_mode_guests_until_a_shim_exists() {
    let ns = world("doc-shim");
    ns.ip_cmd("addr add 10.201.4.1/24 dev up0");
    let (code, report) = doctor(&ns, &["--guest-ip", "10.201.4.10"]);
    assert_eq!(code, Some(0), "a note is not a problem: {report:#}");
    let f = finding(&report, "mv0", "host reach");
    assert_eq!(f["status"], "note");
    let fix = f["fix"].as_str().unwrap();
    assert!(fix.contains("type macvlan mode bridge"), "{fix}");
    assert!(
        fix.contains("ip route add 10.201.4.10/32 dev mvshim0"),
        "{fix}"
    );

    // Apply the offered fix (its `ip` lines) and ask again.
    for line in fix.lines().filter_map(|l| l.strip_prefix("ip ")) {
        ns.ip_cmd(line);
    }
    let (_, report) = doctor(&ns, &["--guest-ip", "10.201.4.10"]);
    let f = finding(&report, "mv0", "host reach");
    assert_eq!(f["status"], "ok", "{f:#}");
    assert!(f["summary"].as_str().unwrap().contains("mvshim0"));
}

#[test]
fn a_tap_name_owned_by_another_namespace_is_caught() {
    // Two macvtaps with one ifindex: the first got /dev/tap<ifindex>.
    let (first, second) = common::same_ifindex_pair("doc-tap");
    let (code, report) = doctor(&first, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    let (code, report) = doctor(&second, &[]);
    assert_eq!(code, Some(1));
    let f = problem(&report, "tap node");
    assert!(
        f["summary"]
            .as_str()
            .unwrap()
            .contains("another namespace's macvtap"),
        "{f:#}"
    );
    let shown = run_in(&second, &["show", "mv0", "--json"]).json();
    assert_eq!(shown["device_node"], Value::Null, "{shown:#}");
    assert_ne!(shown["device"], common::device_of(&first, "mv0").as_str());
}

#[test]
fn a_dev_without_tap_nodes_is_explained_with_qemus_error() {
    let ns = world("doc-dev");
    // A private mount namespace where /dev is a bare tmpfs (a container's
    // view), then one with nothing mounted on /dev at all.
    for (setup, dev_check) in [
        ("mount -t tmpfs none /dev", "note"),
        ("umount -l /dev", "problem"),
    ] {
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("{setup} && exec \"$0\" \"$@\""))
            .arg(common::ctl_path())
            .args([
                "--netns",
                ns.name(),
                "doctor",
                "--interface",
                "mv0",
                "--json",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            finding(&report, "host", "/dev")["status"],
            dev_check,
            "{setup}"
        );
        let f = problem(&report, "tap node");
        assert!(
            f["summary"].as_str().unwrap().contains("does not exist"),
            "{f:#}"
        );
        let why = f["why"].as_str().unwrap();
        assert!(why.contains("TUNGETIFF"), "{f:#}");
        // libvirt's words for the same missing node, which never name it
        // (crates/lab/tests/libvirt.rs makes libvirt 9.0 say them).
        assert!(
            why.contains("Unable to create tap device mv0: Invalid argument"),
            "{f:#}"
        );
        assert!(why.contains("Unable to open /dev/net/tun"), "{f:#}");
        assert!(
            f["fix"]
                .as_str()
                .unwrap()
                .contains("device plugin's resource"),
            "{f:#}"
        );
    }
}

#[test]
fn the_guest_mac_is_read_from_the_process_that_holds_the_tap() {
    let ns = world("doc-holder");
    let dir = TempDir::new("doc-holder");
    let device = common::device_of(&ns, "mv0");
    let (major, minor) = device.split_once(':').unwrap();
    let node = dir.path().join("tap");
    let made = Command::new("mknod")
        .arg(&node)
        .args(["c", major, minor])
        .status()
        .unwrap();
    assert!(made.success());

    // A QEMU-shaped command line on a shell that holds the tap as fd 3 and
    // waits on a builtin (no child inherits the fd).
    let hold = |guest_mac: &str| {
        ChildGuard(
            Command::new("sh")
                .arg("-c")
                .arg("exec 3<>\"$0\" && read wait_forever")
                .arg(&node)
                .args(["-netdev", "tap,id=n0,fd=3"])
                .arg("-device")
                .arg(format!("virtio-net-pci,netdev=n0,mac={guest_mac}"))
                .stdin(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    };
    let holder = hold(WRONG_MAC);
    let mut report = Value::Null;
    let seen = common::eventually(std::time::Duration::from_secs(5), || {
        report = doctor(&ns, &[]).1;
        finding(&report, "mv0", "guest mac")["status"] == "problem"
    });
    assert!(seen, "{report:#}");
    let summary = finding(&report, "mv0", "guest mac")["summary"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(summary.contains(WRONG_MAC), "{summary}");
    assert!(
        summary.contains(&format!("pid {}", holder.pid())),
        "{summary}"
    );
    drop(holder);

    let _holder = hold(MAC);
    let seen = common::eventually(std::time::Duration::from_secs(5), || {
        report = doctor(&ns, &[]).1;
        finding(&report, "mv0", "guest mac")["status"] == "ok"
    });
    assert!(seen, "{report:#}");
}
