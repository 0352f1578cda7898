//! containerd 1.6 through its CRI API, driven the way the kubelet drives it,
//! with the real device plugin behind the kubelet stand-in:
//!
//! 1. the device plugin (attach: pod) serves `dataplane` on NODE's `up0`;
//!    the stand-in calls Allocate as kubelet admission does and gets the
//!    DeviceSpec (`/dev/tap<ifindex>`, host path under the stateDir);
//! 2. containerd's CNI config carries that `deviceID`, as Multus injects
//!    it into the delegate; RunPodSandbox runs the plugin's ADD, which
//!    creates the macvtap inside the pod with the promised ifindex and
//!    makes the node at the host path;
//! 3. CreateContainer with `Device{container_path, host_path}`, exactly
//!    what the kubelet passes on; the container (uid 107) sees the device
//!    with the pod's major:minor, 107:107, 0660, opens it, and from then on
//!    receives the LAN's frames through it, as a VM would;
//! 4. StopPodSandbox and RemovePodSandbox (the CNI DEL) leave nothing.

mod support;

use macvtap_testkit::device_plugin as common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use macvtap_testkit::NsView;
use serde_json::{json, Value};
use support::containerd::Containerd;
use support::cri::{v1, Cri};
use support::*;

const IMAGE: &str = "localhost/macvtap-e2e-busybox:latest";
const SUBNET: &str = "10.202.2";
const RESOURCE: &str = "dataplane";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pod_gets_the_allocated_macvtap_and_its_device_and_removal_leaves_nothing() {
    require_tools(&COMMON_TOOLS);
    require_tools(&["containerd", "ctr", "runc"]);
    let bins = binaries();
    let world = common::World::new("e2e-containerd");
    assert_eq!(
        common::cni_binary(),
        bins.cni,
        "the world runs another plugin binary"
    );
    let lab = &world.lab;
    lab.lan
        .ip_ok(&["addr", "add", &format!("{SUBNET}.1/24"), "dev", "lan0"]);
    let mut dp = world.start(&common::conf1(RESOURCE, 4, "pod"), 1).await;

    // Kubelet admission: Allocate one device through the stand-in.
    let base = world.ifindex_base(RESOURCE);
    let device_id = format!("{RESOURCE}-2");
    let ifindex = base + 2;
    let mut dpc = world.client(RESOURCE).await;
    let resp = dpc
        .allocate(common::allocate_request(&[&[device_id.as_str()]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate failed: {e}\n{}", dp.logs()))
        .into_inner();
    let spec = resp.container_responses[0].devices[0].clone();
    assert_eq!(
        spec.container_path,
        format!("/dev/tap{ifindex}"),
        "{resp:?}"
    );
    assert_eq!(
        Path::new(&spec.host_path),
        world.dev_node(&device_id),
        "{resp:?}"
    );
    assert!(
        !Path::new(&spec.host_path).exists(),
        "attach pod: the node exists before the CNI ran"
    );

    // containerd's CNI config: the delegate Multus would build from the
    // NAD (deviceID injected), with host-local IPAM so the pod has an
    // address; the stateDir is the test's, never the node's real one.
    let cni_dir = TempDir::new("e2e-containerd-cni");
    let cni = CniBin::new(cni_dir.path(), &bins.cni, &world.state_dir());
    let conf_dir = cni_dir.subdir("net.d");
    let conflist = json!({
        "cniVersion": "0.4.0",
        "name": RESOURCE,
        "plugins": [{
            "type": "macvtap",
            "deviceID": device_id,
            "mtu": 1500,
            "stateDir": world.state_dir(),
            "ipam": {
                "type": "host-local",
                "ranges": [[{
                    "subnet": format!("{SUBNET}.0/24"),
                    "rangeStart": format!("{SUBNET}.10"),
                    "rangeEnd": format!("{SUBNET}.50"),
                }]],
                "dataDir": lab.ipam_dir(),
            },
        }],
    });
    std::fs::write(
        conf_dir.join("10-dataplane.conflist"),
        serde_json::to_string_pretty(&conflist).expect("serialize"),
    )
    .expect("write the conflist");

    let image_dir = TempDir::new("e2e-containerd-image");
    let rootfs = support::image::rootfs_tar(image_dir.path());
    let archive =
        support::image::oci_archive(image_dir.path(), &rootfs, IMAGE, &["sleep", "2147483647"]);

    // Declared after the world: dropped (pods removed, killed) first.
    let t = Instant::now();
    let ctd = Containerd::start(
        "e2e-containerd-rt",
        &lab.node.path(),
        &cni.dir,
        &conf_dir,
        IMAGE,
    )
    .await;
    measured("containerd start until CRI answers", t.elapsed());
    ctd.import(&archive);
    let mut cri = ctd.client().await;
    wait_network_ready(&mut cri, &ctd).await;

    let logs = cni_dir.subdir("pod-logs");
    let sandbox_config = v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: "vm-dataplane".into(),
            uid: lab.prefix.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "vm-dataplane".into(),
        log_directory: logs.display().to_string(),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: ctd.cgroup_parent(),
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(pod_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let sandbox_config_base = sandbox_config.clone();
    let t = Instant::now();
    let sandbox_id = cri
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox failed: {e}\n{}", ctd.logs()))
        .into_inner()
        .pod_sandbox_id;
    let attach = t.elapsed();
    let add = cni.add_of(&sandbox_id);
    measured("containerd RunPodSandbox, per pod (wall)", attach);
    measured("plugin ADD inside RunPodSandbox", add.elapsed);
    assert_eq!(add.ifname, "eth0", "containerd's first network is eth0");

    let (pod_ip, netns) = sandbox_network(&mut cri, &sandbox_id).await;
    assert!(
        pod_ip.starts_with(&format!("{SUBNET}.")),
        "the pod has no host-local address: {pod_ip:?}"
    );
    let pod = NsView::at_path(&netns);

    // The macvtap inside the pod, with the ifindex Allocate promised.
    let link = pod.expect_link("eth0");
    assert_eq!(link.kind.as_deref(), Some("macvtap"), "{}", link.json);
    assert_eq!(link.mode.as_deref(), Some("bridge"), "{}", link.json);
    assert_eq!(
        link.ifindex, ifindex,
        "not the ifindex Allocate promised (the VM opens {})",
        spec.container_path
    );
    assert_eq!(link.mtu, 1500, "{}", link.json);
    assert!(link.is_up(), "{}", link.json);
    assert_eq!(pod.addr_cidrs("eth0", "inet"), vec![format!("{pod_ip}/24")]);
    let nsid = link
        .link_netnsid
        .unwrap_or_else(|| panic!("eth0's lower device is not outside the pod: {}", link.json));
    assert_eq!(pod.peer_name(nsid).as_deref(), Some(lab.node.name()));
    assert_eq!(link.link_index, Some(lab.lower().ifindex), "{}", link.json);
    assert!(
        lab.node.macvtaps().is_empty(),
        "attach pod: a macvtap was made in NODE"
    );

    // The node at the host path: the pod's own device number, for qemu.
    let want_dev = pod.tap_dev(&link);
    let st = DeviceNode::stat(Path::new(&spec.host_path))
        .unwrap_or_else(|e| panic!("the CNI made no node at {}: {e}", spec.host_path));
    assert!(st.is_char_device, "{} is not a char device", spec.host_path);
    assert_eq!((st.major, st.minor), want_dev, "{}", spec.host_path);
    assert_eq!((st.uid, st.gid, st.mode), (QEMU_ID, QEMU_ID, 0o660));

    // Nothing reads the device yet: the pod's own stack answers the LAN.
    let (ok, out) = ping_from(lab.lan.name(), &pod_ip, 2);
    assert!(ok, "LAN -> pod {pod_ip} failed before any reader:\n{out}");

    // The kubelet's CreateContainer with the DeviceSpec, as uid 107.
    let cpath = &spec.container_path;
    let script = format!(
        "stat -c 'device %F %t:%T %u:%g %a' {cpath}; echo \"uid $(id -u)\"; \
         exec 3<>{cpath} || exit 7; echo opened; \
         cat <&3 >/tmp/frames & exec sleep 2147483647"
    );
    let container_config = v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: "compute".into(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image: IMAGE.into(),
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script],
        devices: vec![v1::Device {
            container_path: spec.container_path.clone(),
            host_path: spec.host_path.clone(),
            permissions: spec.permissions.clone(),
        }],
        log_path: "compute.log".into(),
        linux: Some(v1::LinuxContainerConfig {
            security_context: Some(v1::LinuxContainerSecurityContext {
                namespace_options: Some(pod_namespaces()),
                run_as_user: Some(v1::Int64Value {
                    value: i64::from(QEMU_ID),
                }),
                run_as_group: Some(v1::Int64Value {
                    value: i64::from(QEMU_ID),
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let t = Instant::now();
    let container_id = cri
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(container_config),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer failed: {e}\n{}", ctd.logs()))
        .into_inner()
        .container_id;
    cri.start_container(v1::StartContainerRequest {
        container_id: container_id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer failed: {e}\n{}", ctd.logs()));
    measured(
        "CreateContainer + StartContainer with the device",
        t.elapsed(),
    );

    let log_file = logs.join("compute.log");
    let lines = wait_for_log(&mut cri, &container_id, &log_file, "opened").await;
    let want = format!(
        "device character special file {:x}:{:x} {QEMU_ID}:{QEMU_ID} 660",
        want_dev.0, want_dev.1
    );
    assert!(
        lines.iter().any(|l| l == &want),
        "the container does not see {cpath} as the pod's tap device ({want}); it said: {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l == &format!("uid {QEMU_ID}")),
        "{lines:#?}"
    );

    // The container holds the device's queue now: the LAN's frames go to
    // it, no longer to the pod's stack.
    let (ok, out) = ping_from(lab.lan.name(), &pod_ip, 1);
    assert!(
        !ok,
        "the pod's stack still answered while the container held {cpath}:\n{out}"
    );
    let got = frames_size(&mut cri, &container_id).await;
    assert!(
        got > 0,
        "the LAN's frames did not reach the container through {cpath}"
    );

    // The pod sends with the macvtap's MAC: a connection attempt of the
    // unprivileged container makes its stack ARP for the LAN, and the LAN
    // learns the pod at that MAC. (The ARP reply then goes to the
    // container's reader too, so the connection itself cannot succeed.)
    lab.lan.ip_ok(&["neigh", "flush", "dev", "lan0"]);
    pod.ip_ok(&["neigh", "flush", "dev", "eth0"]);
    let (_, said) = exec(
        &mut cri,
        &container_id,
        &["nc", "-w", "1", &format!("{SUBNET}.1"), "80"],
    )
    .await;
    assert_eq!(
        neighbour_mac(lab.lan.name(), "lan0", &pod_ip).as_deref(),
        Some(link.mac.as_str()),
        "the LAN did not learn the pod's address at the macvtap's MAC; the pod's nc said: {said}"
    );
    let after = frames_size(&mut cri, &container_id).await;
    assert!(
        after > got,
        "the LAN's answer to the pod did not reach the container's reader ({got} -> {after} bytes)"
    );

    // Tear down as the kubelet does.
    cri.stop_container(v1::StopContainerRequest {
        container_id: container_id.clone(),
        timeout: 0,
    })
    .await
    .unwrap_or_else(|e| panic!("StopContainer failed: {e}\n{}", ctd.logs()));
    cri.remove_container(v1::RemoveContainerRequest {
        container_id: container_id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemoveContainer failed: {e}\n{}", ctd.logs()));
    let t = Instant::now();
    remove_pod(&mut cri, &ctd, &sandbox_id).await;
    measured(
        "containerd StopPodSandbox + RemovePodSandbox (wall)",
        t.elapsed(),
    );
    assert!(!pod.exists(), "the pod's netns {netns} survived");
    assert_pod_gone(&world, &cni, &spec.host_path, &sandbox_id);

    // The kubelet gives a freed device to the next pod: Allocate again and
    // attach it twice more, each pod removed before the next. Three
    // samples of the per-pod attach time.
    let mut attach_times = vec![attach];
    for round in 1..3 {
        let again = dpc
            .allocate(common::allocate_request(&[&[device_id.as_str()]]))
            .await
            .unwrap_or_else(|e| panic!("Allocate (round {round}) failed: {e}\n{}", dp.logs()))
            .into_inner();
        assert_eq!(again.container_responses[0].devices[0], spec, "{again:?}");
        let mut config = sandbox_config_base.clone();
        if let Some(m) = config.metadata.as_mut() {
            m.name = format!("vm-dataplane-{round}");
            m.uid = format!("{}-{round}", lab.prefix);
        }
        let t = Instant::now();
        let id = cri
            .run_pod_sandbox(v1::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox (round {round}) failed: {e}\n{}", ctd.logs()))
            .into_inner()
            .pod_sandbox_id;
        let took = t.elapsed();
        attach_times.push(took);
        measured("containerd RunPodSandbox, per pod (wall)", took);
        measured("plugin ADD inside RunPodSandbox", cni.add_of(&id).elapsed);
        let (_, netns) = sandbox_network(&mut cri, &id).await;
        let pod = NsView::at_path(&netns);
        let link = pod.expect_link("eth0");
        assert_eq!(link.ifindex, ifindex, "round {round}: {}", link.json);
        let st = DeviceNode::stat(Path::new(&spec.host_path))
            .unwrap_or_else(|e| panic!("round {round}: no node at {}: {e}", spec.host_path));
        assert_eq!((st.major, st.minor), pod.tap_dev(&link), "round {round}");
        remove_pod(&mut cri, &ctd, &id).await;
        assert!(
            !pod.exists(),
            "round {round}: the pod's netns {netns} survived"
        );
        assert_pod_gone(&world, &cni, &spec.host_path, &id);
    }
    measured(
        "containerd RunPodSandbox, per pod, median of 3 (wall)",
        median(attach_times),
    );

    let left = cri
        .list_pod_sandbox(v1::ListPodSandboxRequest {})
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(left.is_empty(), "sandboxes left: {left:?}");
    dp.assert_running("after the pods went");
    drop(cri);
    drop(ctd);
}

/// StopPodSandbox then RemovePodSandbox, as the kubelet does.
async fn remove_pod(cri: &mut Cri, ctd: &Containerd, id: &str) {
    cri.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox failed: {e}\n{}", ctd.logs()));
    cri.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox failed: {e}\n{}", ctd.logs()));
}

/// After a pod's removal: its DEL succeeded, and no link, device node,
/// record, lease or libcni cache entry of it is left.
fn assert_pod_gone(world: &common::World, cni: &CniBin, host_path: &str, id: &str) {
    let dels = cni.calls_of("DEL", id);
    assert!(
        !dels.is_empty() && dels.iter().all(|d| d.exit == 0),
        "the plugin's DEL did not succeed for {id}: {dels:?}"
    );
    assert!(
        !Path::new(host_path).exists(),
        "the device node {host_path} survived the pod"
    );
    world.lab.assert_clean("RemovePodSandbox");
    let cached = cni_cache_entries(id);
    assert!(cached.is_empty(), "libcni cache entries left: {cached:?}");
}

fn pod_namespaces() -> v1::NamespaceOption {
    v1::NamespaceOption {
        network: v1::NamespaceMode::Pod as i32,
        pid: v1::NamespaceMode::Container as i32,
        ipc: v1::NamespaceMode::Pod as i32,
        target_id: String::new(),
    }
}

/// Waits until the CRI reports NetworkReady (the CNI config is loaded).
async fn wait_network_ready(cri: &mut Cri, ctd: &Containerd) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = cri
            .status(v1::StatusRequest { verbose: false })
            .await
            .unwrap_or_else(|e| panic!("CRI Status failed: {e}\n{}", ctd.logs()))
            .into_inner();
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        if conditions
            .iter()
            .any(|c| c.r#type == "NetworkReady" && c.status)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "containerd's network is not ready: {conditions:?}\n{}",
            ctd.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pod's IP and its network namespace path, from PodSandboxStatus.
async fn sandbox_network(cri: &mut Cri, id: &str) -> (String, String) {
    let resp = cri
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let status = resp.status.expect("a sandbox status");
    assert_eq!(status.state, v1::PodSandboxState::SandboxReady as i32);
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    let info: Value = resp
        .info
        .get("info")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_else(|| panic!("no verbose sandbox info: {:?}", resp.info));
    let netns = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["type"] == "network"))
        .and_then(|n| n["path"].as_str())
        .unwrap_or_else(|| panic!("no network namespace path in the sandbox info: {info}"))
        .to_string();
    (ip, netns)
}

/// The container's log lines (CRI log format: time, stream, tag, text).
fn log_lines(path: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or("").to_string())
        .collect()
}

/// Waits until the container logged `marker`; panics if it exits first.
async fn wait_for_log(cri: &mut Cri, id: &str, path: &PathBuf, marker: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = log_lines(path);
        if lines.iter().any(|l| l == marker) {
            return lines;
        }
        let status = cri
            .container_status(v1::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("a container status");
        assert!(
            status.state != v1::ContainerState::ContainerExited as i32,
            "the container exited ({}, {} {}) before saying {marker:?}: {lines:#?}",
            status.exit_code,
            status.reason,
            status.message
        );
        assert!(
            Instant::now() < deadline,
            "the container did not say {marker:?} within 10 s: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// ExecSync in the container: (exit code, stdout + stderr).
async fn exec(cri: &mut Cri, id: &str, cmd: &[&str]) -> (i32, String) {
    let r = cri
        .exec_sync(v1::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync {cmd:?} failed: {e}"))
        .into_inner();
    (
        r.exit_code,
        format!(
            "{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        ),
    )
}

/// How many bytes the container's reader has taken from the tap device.
async fn frames_size(cri: &mut Cri, id: &str) -> u64 {
    let (code, out) = exec(cri, id, &["stat", "-c", "%s", "/tmp/frames"]).await;
    assert_eq!(code, 0, "stat /tmp/frames in the container: {out}");
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("stat printed {out:?}"))
}
