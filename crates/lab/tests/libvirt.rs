//! The virt-launcher side with real libvirt: `macvtap-lab --vmm libvirt`
//! (libvirtd as root, `qemu:///system`) and `--vmm libvirt-session`
//! (libvirtd and QEMU as uid 107, `qemu:///session`, as KubeVirt runs
//! them) boot the guest on the device plugin's device through
//! `<interface type='ethernet'><target dev='net1' managed='no'/>`, and the
//! LAN reaches it. And the launcher without its `/dev/tap<ifindex>`: libvirt
//! fails with words that do not name the node, and `macvtapctl doctor`, run
//! in that same mount namespace, does.
//!
//! Fails when libvirtd is not installed (`./scripts/test` installs it
//! through scripts/install-deps: `apt-get install --no-install-recommends
//! libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients`).

mod common;

use std::path::Path;
use std::process::Command;

use common::{alive, cni_plugin, ctl, device_plugin, finding, run};
use macvtap_lab::guest;
use macvtap_lab::libvirt::{
    domain_xml, DomainSpec, Launcher, LauncherSpec, LibvirtError, LibvirtMode,
};
use macvtap_net::MacAddr;
use macvtap_testkit::{Lab, POD_IFNAME};
use serde_json::Value;

/// libvirtd and virsh are there; a test that needs them and finds them
/// missing fails rather than passing without having run.
fn require_libvirt() {
    for tool in ["libvirtd", "virsh"] {
        let runs = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            runs,
            "{tool} is missing: run scripts/install-deps (it installs libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients)"
        );
    }
}

/// One lab run under libvirt: the report's libvirt part, the guest's
/// answers, and nothing left behind.
fn lab_under_libvirt(vmm: &str, uid: u64, uri: &str) {
    require_libvirt();
    cni_plugin();
    device_plugin();
    let report = run(&[
        "--vm",
        "always",
        "--device-plugin",
        "always",
        "--vmm",
        vmm,
        "--json",
    ])
    .json();
    let guest = &report["guest"];
    let libvirt = &guest["libvirt"];
    assert_eq!(libvirt["uri"], uri, "{report:#}");
    assert_eq!(libvirt["uid"], uid, "{report:#}");
    // libvirt itself opened the node the DeviceSpec promised.
    let container_path = report["device_plugin"]["container_path"]
        .as_str()
        .expect("container_path");
    assert_eq!(libvirt["tap_node"], container_path, "{report:#}");
    let held = libvirt["qemu_tap_fd"].as_str().expect("QEMU holds a tap");
    assert!(
        held.ends_with(&format!("-> {container_path}")),
        "{held} {container_path}"
    );
    assert_eq!(
        report["interface"]["ifindex"]
            .as_u64()
            .map(|i| format!("/dev/tap{i}")),
        Some(container_path.to_string())
    );
    // The LAN reached the guest: pings, TCP echo, and the page the guest
    // signs with its NIC's MAC, the macvtap's.
    assert!(
        !report["ping_rtt_ms"]
            .as_array()
            .expect("ping_rtt_ms")
            .is_empty(),
        "{report:#}"
    );
    assert!(report["tcp_echo"].is_string(), "{report:#}");
    let body = report["http_body"].as_str().expect("HTTP body");
    let mac = report["interface"]["mac"].as_str().expect("interface mac");
    assert!(body.contains(&format!("mac {mac} ")), "{body}");
    eprintln!(
        "{vmm}: libvirtd socket {} ms, virsh create {} ms, QEMU start to first ping {} ms, whole lab {} ms",
        libvirt["start_to_socket_ms"],
        libvirt["create_ms"],
        report["timings"]["start_to_first_ping_ms"],
        report["timings"]["total_ms"]
    );
    // Everything is gone: QEMU, libvirtd, the namespaces, the directory.
    for pid in [&guest["qemu_pid"], &libvirt["libvirtd_pid"]] {
        let pid = pid.as_u64().expect("pid") as u32;
        assert!(!alive(pid), "pid {pid} survived the lab");
    }
    let dir = report["lab_dir"].as_str().expect("lab_dir");
    assert!(!Path::new(dir).exists(), "{dir} survived the lab");
    for role in ["lan", "node", "pod"] {
        let name = report["namespaces"][role].as_str().expect("namespace");
        assert!(!Path::new("/run/netns").join(name).exists(), "{name}");
    }
}

#[test]
fn libvirt_as_root_opens_the_device_plugins_node_and_the_lan_reaches_the_guest() {
    lab_under_libvirt("libvirt", 0, "qemu:///system");
}

#[test]
fn libvirt_session_as_uid_107_opens_the_device_plugins_node_and_the_lan_reaches_the_guest() {
    lab_under_libvirt("libvirt-session", 107, "qemu:///session");
}

/// A launcher whose mount namespace lacks /dev/tap<ifindex> (a pod that
/// got the macvtap from the CNI plugin in standalone mode, without the
/// device plugin's resource): libvirt takes net1 for a plain tap.
#[test]
fn without_its_tap_node_libvirt_fails_without_naming_it_and_doctor_names_it() {
    require_libvirt();
    let image = guest::ensure(Path::new(macvtap_lab::cli::DEFAULT_CACHE_DIR))
        .expect("the lab's guest image")
        .image;
    let lab = Lab::new("libvirt-nonode", cni_plugin());
    let mac = "02:00:0a:c9:08:0a";
    let config = lab.config("1.0.0");
    lab.plugin("ADD", &config)
        .args(&format!("IgnoreUnknown=1;MAC={mac}"))
        .run()
        .result();
    let image_dir = image.kernel.parent().unwrap();
    let file = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();

    // (with /dev/net/tun, as KubeVirt maps it; without it)
    for (tun, said) in [
        (true, "Unable to create tap device net1: Invalid argument"),
        (false, "Unable to open /dev/net/tun"),
    ] {
        let dir = lab.dir.path().join(format!("libvirt-tun-{tun}"));
        let launcher = Launcher::start(&LauncherSpec {
            netns: lab.pod.name(),
            dir: &dir,
            mode: LibvirtMode::System,
            tap: None,
            tun,
            image_dir,
        })
        .expect("libvirtd starts");
        let xml = domain_xml(&DomainSpec {
            name: "nonode",
            kernel: &launcher.image_path(&file(&image.kernel)),
            initrd: &launcher.image_path(&file(&image.initramfs)),
            cmdline: "console=ttyS0",
            interface: POD_IFNAME,
            mac: MacAddr::parse_unicast(mac).unwrap(),
            serial: &dir.join("serial.log"),
        });
        let err = match launcher.create("nonode", &xml) {
            Err(LibvirtError::Create(said)) => said,
            other => panic!("libvirt started a domain without /dev/tapN (tun {tun}): {other:?}"),
        };
        assert!(err.contains(said), "tun {tun}: {err}");
        assert!(
            !err.contains("/dev/tap"),
            "libvirt named the node now: {err}"
        );

        // doctor, in the launcher's own mount and network namespaces.
        let out = Command::new("nsenter")
            .arg(format!("--mount={}", launcher.mount_ns().display()))
            .arg(format!("--net=/run/netns/{}", lab.pod.name()))
            .arg(ctl())
            .args(["doctor", "--interface", POD_IFNAME, "--json"])
            .args(["--state-dir", &lab.state_dir().display().to_string()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let f = finding(&report, POD_IFNAME, "tap node");
        assert_eq!(f["status"], "problem", "{f:#}");
        assert!(
            f["summary"].as_str().unwrap().contains("does not exist"),
            "{f:#}"
        );
        let why = f["why"].as_str().unwrap();
        assert!(why.contains(said.split(':').next().unwrap()), "{why}");
        let fix = f["fix"].as_str().unwrap();
        assert!(fix.contains("device plugin"), "{fix}");
    }
    lab.del(&config).success();
    lab.assert_clean("DEL after the libvirt test");
}

/// Standalone mode cannot give a virt-launcher its device: the lab says so
/// before it makes anything.
#[test]
fn libvirt_without_the_device_plugin_is_refused_with_the_reason() {
    cni_plugin();
    let out = run(&["--vmm", "libvirt", "--device-plugin", "never"]);
    let err = out.fails_with(1);
    assert!(
        err.contains("standalone mode cannot give a virt-launcher its device"),
        "{err}"
    );
}
