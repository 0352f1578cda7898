//! CNAO's DaemonSet template as it is (deploy/compat/cnao-daemonset.yaml):
//! our binary run with that container's command (`-v 3 -logtostderr`), its
//! env from the ConfigMap, host network, host PID, privileged and only the
//! device-plugin directory mounted, registers with the kubelet stand-in,
//! allocates, and the CNI plugin run on the host attaches the device.
//!
//! The node is emulated without touching the machine's own files: HOST is a
//! new PID namespace (its PID 1 a sleeper) with a mount namespace whose
//! /var/lib is a fresh tmpfs (kubelet and state directories live there);
//! the CONTAINER joins HOST's PID namespace (hostPID) and the lab's NODE
//! network namespace (hostNetwork), and gets a mount namespace of its own
//! with an empty /var/lib and /dev, into which only HOST's
//! /var/lib/kubelet/device-plugins is bind-mounted. Killing HOST's PID 1
//! ends everything in it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use yaml_rust2::{Yaml, YamlLoader};

const FIXTURE: &str = "../../deploy/compat/cnao-daemonset.yaml";

/// What the template says about the device plugin's container.
struct Template {
    command: Vec<String>,
    config_map: String,
    conf_default: String,
    mounts: Vec<String>,
}

fn template() -> Template {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let text = std::fs::read_to_string(&path).expect("read the CNAO fixture");
    let docs = YamlLoader::load_from_str(&text).expect("YAML");
    let by_kind = |kind: &str| -> &Yaml {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} in {}", path.display()))
    };
    let ds = by_kind("DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    assert_eq!(spec["hostPID"].as_bool(), Some(true));
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["privileged"].as_bool(), Some(true));
    let strings = |y: &Yaml| -> Vec<String> {
        y.as_vec()
            .expect("a list")
            .iter()
            .map(|s| s.as_str().expect("a string").to_string())
            .collect()
    };
    let cm = by_kind("ConfigMap");
    let config_map = c["envFrom"][0]["configMapRef"]["name"]
        .as_str()
        .expect("envFrom configMapRef")
        .to_string();
    assert_eq!(cm["metadata"]["name"].as_str(), Some(config_map.as_str()));
    Template {
        command: strings(&c["command"]),
        config_map,
        conf_default: cm["data"]["DP_MACVTAP_CONF"]
            .as_str()
            .expect("DP_MACVTAP_CONF")
            .to_string(),
        mounts: c["volumeMounts"]
            .as_vec()
            .expect("volumeMounts")
            .iter()
            .map(|m| m["mountPath"].as_str().expect("mountPath").to_string())
            .collect(),
    }
}

/// HOST: PID 1 of a new PID namespace, in a mount namespace with a private
/// /var/lib. Killed (by its pid) on drop, which ends the namespace.
struct Host {
    unshare: Child,
    pid1: i32,
}

impl Host {
    fn start() -> Host {
        let mut unshare = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount",
                "--propagation",
                "private",
                "--mount-proc",
            ])
            .args(["sh", "-c"])
            .arg(
                "mount -t tmpfs -o mode=0755 host-var-lib /var/lib \
                 && mkdir -p /var/lib/kubelet/device-plugins /var/lib/kubelet/pod-resources \
                    /var/lib/macvtap \
                 && echo ready && exec sleep 100000",
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        let out = unshare.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("read");
        assert_eq!(line.trim(), "ready", "HOST did not come up");
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id()))
                .expect("children of unshare");
        let pid1 = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("HOST's PID 1");
        Host { unshare, pid1 }
    }

    /// A path of HOST's filesystem, as this process reaches it.
    fn path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{p}", self.pid1))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid we started; no memory is involved.
        unsafe {
            libc::kill(self.pid1, libc::SIGKILL);
        }
        let _ = self.unshare.wait();
    }
}

/// How the container differs from the template's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Exactly the template.
    Template,
    /// Also the host's /var/lib/macvtap mounted (our own manifest's layout).
    StateMounted,
    /// Another host directory mounted at /var/lib/macvtap.
    StateElsewhere,
    /// No hostPID: a PID namespace of its own.
    OwnPids,
}

/// The device plugin's container, as the template describes it.
fn start_container(
    host: &Host,
    node_netns: &Path,
    command: &[String],
    conf: &str,
    variant: Variant,
) -> Child {
    // The image's /macvtap-deviceplugin is our binary.
    assert_eq!(command[0], "/macvtap-deviceplugin");
    let script = r#"
        set -e
        mount --bind /var/lib/kubelet/device-plugins /mnt
        if [ "$STATE_MOUNTED" = 1 ]; then mount --bind /var/lib/macvtap /media; fi
        if [ "$STATE_MOUNTED" = 2 ]; then
            mkdir -p /var/lib/elsewhere && mount --bind /var/lib/elsewhere /media
        fi
        mount -t tmpfs -o mode=0755 container-var-lib /var/lib
        mkdir -p /var/lib/kubelet/device-plugins
        mount --move /mnt /var/lib/kubelet/device-plugins
        if [ "$STATE_MOUNTED" != 0 ]; then
            mkdir -p /var/lib/macvtap && mount --move /media /var/lib/macvtap
        fi
        mount -t tmpfs -o mode=0755 container-dev /dev
        unset STATE_MOUNTED
        exec "$@"
    "#;
    let own_pids: &[&str] = if variant == Variant::OwnPids {
        &["--pid", "--fork", "--mount-proc"]
    } else {
        &[]
    };
    Command::new("nsenter")
        .arg(format!("--target={}", host.pid1))
        .args(["--pid", "--mount"])
        .arg(format!("--net={}", node_netns.display()))
        .args(["--", "unshare", "--mount", "--propagation", "private"])
        .args(own_pids)
        .args(["--", "sh", "-c", script, "sh"])
        .arg(daemon_binary())
        .args(&command[1..])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("DP_MACVTAP_CONF", conf)
        .env(
            "STATE_MOUNTED",
            match variant {
                Variant::StateMounted => "1",
                Variant::StateElsewhere => "2",
                Variant::Template | Variant::OwnPids => "0",
            },
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the container")
}

fn logs(child: Child) -> String {
    let out = child.wait_with_output().expect("container output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cnaos_template_unchanged_registers_allocates_and_attaches() {
    let t = template();
    assert_eq!(
        t.command,
        ["/macvtap-deviceplugin", "-v", "3", "-logtostderr"],
        "the template's command"
    );
    assert_eq!(
        t.mounts,
        ["/var/lib/kubelet/device-plugins"],
        "only this mount"
    );
    assert_eq!(t.conf_default, "[]");
    let world = World::new("dp-cnao");
    let host = Host::start();
    let plugin_dir = host.path("/var/lib/kubelet/device-plugins");
    let kubelet = Kubelet::start(&plugin_dir);
    let podres = PodResources::start(
        &host.path("/var/lib/kubelet/pod-resources/kubelet.sock"),
        &[],
    );
    // The ConfigMap as an operator edits it for this node's uplink (the
    // lab's lower device is a veth, which discovery does not offer).
    let conf = json!([{"name": "dataplane", "lowerDevice": LOWER, "capacity": 4}]).to_string();
    let mut container = Some(start_container(
        &host,
        &world.lab.node.path(),
        &t.command,
        &conf,
        Variant::Template,
    ));
    let started = Instant::now();
    while kubelet.current_registrations().is_empty() && started.elapsed() < SLOW {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let regs = kubelet.current_registrations();
    if regs.is_empty() {
        drop(host);
        panic!(
            "no registration within {SLOW:?} (ConfigMap {}):\n{}",
            t.config_map,
            logs(container.take().expect("container"))
        );
    }
    assert_eq!(regs[0].request.resource_name, resource_name("dataplane"));

    let mut client = client(&plugin_dir.join(endpoint("dataplane"))).await;
    let resp = client
        .allocate(allocate_request(&[&["dataplane-1"]]))
        .await
        .expect("Allocate")
        .into_inner();
    let spec = &resp.container_responses[0].devices[0];
    assert_eq!(
        spec.host_path, "/var/lib/macvtap/dev/dataplane-1",
        "{resp:?}"
    );
    let resources = host.path("/var/lib/macvtap/resources.json");
    let Ok(text) = std::fs::read_to_string(&resources) else {
        drop(host);
        panic!(
            "no resources.json in the host's /var/lib/macvtap:\n{}",
            logs(container.take().expect("container"))
        );
    };
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    let base = doc["resources"][0]["ifindexBase"]
        .as_u64()
        .expect("ifindexBase");
    assert_eq!(spec.container_path, format!("/dev/tap{}", base + 1));

    // The CNI plugin on the host, as Multus calls it: its default state
    // directory is the host's /var/lib/macvtap, where the daemon wrote.
    // (Built first when this test runs alone: a no-op when it is fresh.)
    let cni = cni_binary();
    let profile_dir = cni.parent().expect("profile dir").to_path_buf();
    if let Err(e) = macvtap_testkit::cargo_build_bins(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
        &profile_dir,
        &[("macvtap-cni", "macvtap")],
    ) {
        assert!(
            cni.exists(),
            "the CNI plugin {} is missing: {e}",
            cni.display()
        );
    }
    let add = json!({
        "cniVersion": "1.0.0",
        "name": "dataplane",
        "type": "macvtap",
        "deviceID": "dataplane-1",
    });
    let run_cni = |command: &str| {
        let mut cni = Command::new("nsenter")
            .arg(format!("--target={}", host.pid1))
            .args(["--mount", "--pid"])
            .arg(format!("--net={}", world.lab.node.path().display()))
            .arg("--")
            .arg(&cni)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &world.lab.container_id)
            .env("CNI_NETNS", world.lab.pod.path())
            .env("CNI_IFNAME", "net1")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("MACVTAP_NODE_CONFIG", "/var/lib/no-node-policy.json")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the CNI plugin");
        cni.stdin
            .take()
            .expect("stdin")
            .write_all(add.to_string().as_bytes())
            .expect("config");
        cni.wait_with_output().expect("CNI output")
    };
    let out = run_cni("ADD");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "CNI ADD: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = world.lab.pod.expect_link("net1");
    assert_eq!(
        link.ifindex,
        base + 1,
        "the promised ifindex: {}",
        link.json
    );
    assert!(
        host.path("/var/lib/macvtap/dev/dataplane-1").exists(),
        "the device node the kubelet maps is on the host"
    );
    let out = run_cni("DEL");
    assert!(
        out.status.success(),
        "CNI DEL: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    drop(host);
    let logs = logs(container.take().expect("container"));
    assert!(
        logs.contains("joined the host's mount namespace"),
        "the log says which mode it runs in:\n{logs}"
    );
    assert!(logs.contains("glog -v 3"), "{logs}");
    assert!(
        podres.calls() >= 1,
        "the start-up sweep reached the host's PodResources socket:\n{logs}"
    );
}

/// The same container with the host's state directory mounted (our own
/// manifest's layout) stays in its mount namespace; with another directory
/// mounted there it stays and warns; without hostPID it cannot share the
/// state directory, says so, and still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_layouts_stay_in_their_mount_namespace_and_say_so() {
    let t = template();
    for (variant, says) in [
        (
            Variant::StateMounted,
            "state directory /var/lib/macvtap mounted from the host",
        ),
        (
            Variant::StateElsewhere,
            "state directory /var/lib/macvtap is a mount point but not the host's",
        ),
        (
            Variant::OwnPids,
            "UNSHARED: the state directory /var/lib/macvtap is not mounted",
        ),
    ] {
        let world = World::new("dp-cnao-var");
        let host = Host::start();
        let plugin_dir = host.path("/var/lib/kubelet/device-plugins");
        let kubelet = Kubelet::start(&plugin_dir);
        let conf = json!([{"name": "dataplane", "lowerDevice": LOWER, "capacity": 2}]).to_string();
        let container = start_container(&host, &world.lab.node.path(), &t.command, &conf, variant);
        let started = Instant::now();
        while kubelet.current_registrations().is_empty() && started.elapsed() < SLOW {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let registered = !kubelet.current_registrations().is_empty();
        let on_host = host.path("/var/lib/macvtap/resources.json").exists();
        drop(host);
        let logs = logs(container);
        assert!(registered, "{variant:?}: no registration:\n{logs}");
        assert!(logs.contains(says), "{variant:?}: want {says:?} in\n{logs}");
        assert_eq!(
            on_host,
            variant == Variant::StateMounted,
            "{variant:?}: resources.json in the host's state directory\n{logs}"
        );
        if variant != Variant::StateMounted {
            assert!(logs.contains(" WARN "), "{variant:?}: a warning\n{logs}");
        }
    }
}
