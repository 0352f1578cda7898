//! The lab's device-plugin path, as on a KubeVirt node: the real
//! `macvtap-deviceplugin` in the node namespace registers with the lab's
//! kubelet stand-in, which sees its devices Healthy and Allocates one; the
//! CNI plugin then attaches that deviceID to the pod exactly as Multus
//! delegates the seeds' NetworkAttachmentDefinition; the lab checks that
//! the pod got what the DeviceSpec promised.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use macvtap_net::NodeInfo;
use serde::Serialize;
use serde_json::{json, Value};

use crate::admission::KubeletSide;
use crate::{
    check_signal, ms, sandbox_id, CniCall, Ctx, LabError, Made, Say, World, POD_IF, UPLINK,
};
use macvtap_deviceplugin::proto::deviceplugin::ContainerAllocateResponse;
use macvtap_testkit::device_plugin::{Daemon, DaemonCmd};
use macvtapctl::iface::InterfaceInfo;
use macvtapctl::links;
use macvtapctl::tap;

/// The resource the lab offers: the seeds' `dataplane` on the uplink.
pub const RESOURCE: &str = "dataplane";
const CAPACITY: u32 = 4;
/// The VM's user and group in KubeVirt images (the CNI's default owner).
pub const QEMU_UID: u32 = 107;
pub const QEMU_GID: u32 = 107;
/// Daemon start to Allocate answered.
const KUBELET_TIMEOUT: Duration = Duration::from_secs(20);

/// What the device-plugin path did, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct DevicePluginReport {
    pub binary: String,
    pub pid: u32,
    /// `DP_MACVTAP_CONF` as the daemon got it.
    pub conf: String,
    pub plugin_dir: String,
    pub state_dir: String,
    pub pod_resources_socket: String,
    pub log: String,
    /// From the RegisterRequest.
    pub resource_name: String,
    pub endpoint: String,
    pub version: String,
    /// Devices in the first all-Healthy ListAndWatch list.
    pub healthy_devices: usize,
    /// ListAndWatch lists received (until the report).
    pub list_updates: usize,
    /// The plugin's GetPreferredAllocation answer.
    pub preferred: Option<Vec<String>>,
    pub device_id: String,
    pub container_path: String,
    pub host_path: String,
    pub permissions: String,
    /// The ifindex `container_path` promises, and the pod's link's.
    pub promised_ifindex: u32,
    pub pod_ifindex: u32,
    /// The node at host_path: device number, owner, mode.
    pub node_device: String,
    pub node_owner: String,
    pub node_mode: String,
    /// Who opened host_path for the guest.
    pub opened_as: String,
    /// The CNI configuration and CNI_ARGS of the ADD (as Multus sends them).
    pub cni_config: Value,
    pub cni_args: String,
    /// How the daemon ended at cleanup ("exit 0 ...").
    pub stopped: Option<String>,
}

/// What the attachment gave the lab.
pub struct Attached {
    pub info: InterfaceInfo,
    pub node: PathBuf,
    pub node_matches: bool,
    /// The tap opened through the DeviceSpec's host_path as the VM's user.
    pub fd: OwnedFd,
    pub report: DevicePluginReport,
}

/// Start the kubelet stand-in and the daemon, wait for the allocation,
/// attach the pod, check it.
pub(crate) fn attach(
    ctx: &mut Ctx,
    world: &World,
    binary: &Path,
    plugin: &Path,
) -> Result<Attached, LabError> {
    let (say, node, pod, dir, mac) = (ctx.say, &world.node, &world.pod, &world.dir, world.mac);
    let sandbox_id = &sandbox_id(world.nonce);
    let conf = json!([{
        "name": RESOURCE,
        "lowerDevice": UPLINK,
        "mode": "bridge",
        "capacity": CAPACITY,
    }])
    .to_string();
    let log = dir.join("device-plugin.log");
    let launch = DaemonCmd {
        binary: binary.to_path_buf(),
        netns: node.path().to_path_buf(),
        conf: Some(conf.clone()),
        env: Default::default(),
        plugin_dir: dir.join("device-plugins"),
        state_dir: dir.join("state"),
        pod_resources: dir.join("pod-resources").join("kubelet.sock"),
        metrics: None,
        extra_args: vec![],
        log: Some(log.clone()),
        own_process_group: true,
        dies_with_us: !ctx.args.keep,
    };
    let kubelet = KubeletSide::start(&launch.plugin_dir).map_err(|e| {
        LabError::DevicePlugin(format!(
            "cannot serve the kubelet stand-in on {}: {}",
            launch.plugin_dir.join("kubelet.sock").display(),
            macvtap_net::error_chain(&e)
        ))
    })?;
    let kubelet = ctx.made.kubelet.insert(kubelet);
    say.line(format!(
        "== kubelet stand-in: Registration on {}",
        kubelet.dir().join("kubelet.sock").display()
    ));
    let daemon = launch.try_spawn().map_err(|e| {
        LabError::DevicePlugin(format!(
            "cannot start {}: {}",
            binary.display(),
            macvtap_net::error_chain(&e)
        ))
    })?;
    let daemon = ctx.made.daemon.insert(daemon);
    say.line(format!(
        "== device plugin {} (pid {}) in {}: DP_MACVTAP_CONF={conf}",
        binary.display(),
        daemon.pid(),
        node.name().unwrap_or("the node"),
    ));
    say.line(format!(
        "   --device-plugin-path {} --state-dir {} --pod-resources-socket {}",
        launch.plugin_dir.display(),
        launch.state_dir.display(),
        launch.pod_resources.display()
    ));

    let got = await_allocation(ctx.made, say)?;
    let timings = &mut ctx.timings;
    timings.registration_ms = Some(ms(got.registered_at - got.started));
    timings.devices_healthy_ms = Some(ms(got.healthy_at - got.registered_at));
    timings.preferred_allocation_ms = got.allocation.preferred_took.map(ms);
    timings.allocate_ms = Some(ms(got.allocation.took));
    let allocation = &got.allocation;
    let spec = match allocation.response.devices.as_slice() {
        [one] => one.clone(),
        other => {
            return Err(LabError::Check {
                what: "Allocate",
                detail: format!("{} DeviceSpecs for one device: {other:?}", other.len()),
            })
        }
    };
    let promised = spec
        .container_path
        .strip_prefix("/dev/tap")
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| LabError::Check {
            what: "Allocate",
            detail: format!(
                "container_path {:?} is not /dev/tap<ifindex>",
                spec.container_path
            ),
        })?;
    say.line(format!(
        "   Allocate({}) in {:.1} ms: container_path {}, host_path {}, permissions {:?}",
        allocation.device_id,
        ms(allocation.took),
        spec.container_path,
        spec.host_path,
        spec.permissions
    ));
    check_signal()?;

    // Multus: the NAD's config plus the deviceID it read from the pod's
    // resource, CNI_ARGS from the runtime plus the network's MAC.
    let config = json!({
        "cniVersion": "0.3.1",
        "name": "dataplane",
        "type": "macvtap",
        "mtu": 1500,
        "deviceID": allocation.device_id,
    });
    let cni_args = format!(
        "IgnoreUnknown=true;K8S_POD_NAMESPACE=lab;K8S_POD_NAME=vm;\
         K8S_POD_INFRA_CONTAINER_ID={sandbox_id};MAC={mac}"
    );
    say.line(format!(
        "== CNI ADD as Multus delegates it: {} with {config}",
        plugin.display()
    ));
    say.line(format!(
        "   CNI_IFNAME={POD_IF} CNI_ARGS={cni_args}, from {}",
        node.name().unwrap_or("the node")
    ));
    let cni = CniCall {
        plugin,
        node,
        pod,
        container_id: sandbox_id,
        args: cni_args.clone(),
        state_dir: &launch.state_dir,
    };
    cni.add(&config, ctx)?;
    check_signal()?;

    // The pod got what the DeviceSpec promised.
    let info = links::show(pod, POD_IF)?;
    for line in info.text().lines() {
        say.line(format!("   {line}"));
    }
    if info.mac.as_deref() != Some(&mac.to_string()) {
        return Err(LabError::Check {
            what: "CNI ADD",
            detail: format!("{POD_IF} has MAC {:?}, not {mac} from CNI_ARGS", info.mac),
        });
    }
    if info.ifindex != promised {
        return Err(LabError::Check {
            what: "promised ifindex",
            detail: format!(
                "{POD_IF} in the pod has ifindex {}, the DeviceSpec promised {} ({})",
                info.ifindex, promised, spec.container_path
            ),
        });
    }
    let host_path = PathBuf::from(&spec.host_path);
    let node_info = NodeInfo::stat(&host_path).map_err(|e| LabError::Check {
        what: "DeviceSpec host_path",
        detail: format!("{}: {}", host_path.display(), macvtap_net::error_chain(&e)),
    })?;
    let node_dev = node_info.dev.to_string();
    let node_matches = node_info.is_char_device && Some(&node_dev) == info.device.as_ref();
    let owner = format!("{}:{}", node_info.uid, node_info.gid);
    let mode = format!("{:04o}", node_info.mode);
    say.line(format!(
        "   {POD_IF} has ifindex {} = the promised {}; host_path {} is {} {owner} {mode}: {}",
        info.ifindex,
        spec.container_path,
        host_path.display(),
        if node_info.is_char_device {
            format!("char device {node_dev}")
        } else {
            "not a character device".into()
        },
        if node_matches {
            "the device sysfs shows inside the pod"
        } else {
            "NOT the pod's device"
        }
    ));
    if !node_matches {
        return Err(LabError::Check {
            what: "DeviceSpec host_path",
            detail: format!(
                "{} is {node_dev} (char device: {}), the pod's {POD_IF} is {:?}",
                host_path.display(),
                node_info.is_char_device,
                info.device
            ),
        });
    }
    if (node_info.uid, node_info.gid, node_info.mode) != (QEMU_UID, QEMU_GID, 0o660) {
        return Err(LabError::Check {
            what: "DeviceSpec host_path",
            detail: format!(
                "{} is {owner} {mode}, the VM's user needs {QEMU_UID}:{QEMU_GID} 0660",
                host_path.display()
            ),
        });
    }
    let fd = tap::open_node_as(&host_path, QEMU_UID, QEMU_GID, POD_IF)?;
    say.line(format!(
        "   opened {} as uid {QEMU_UID} gid {QEMU_GID} (the VM's user): it is {POD_IF}'s tap (TUNGETIFF)",
        host_path.display()
    ));

    let report = DevicePluginReport {
        binary: binary.display().to_string(),
        pid: got.pid,
        conf,
        plugin_dir: launch.plugin_dir.display().to_string(),
        state_dir: launch.state_dir.display().to_string(),
        pod_resources_socket: launch.pod_resources.display().to_string(),
        log: log.display().to_string(),
        resource_name: got.resource_name,
        endpoint: got.endpoint,
        version: got.version,
        healthy_devices: got.healthy_devices,
        list_updates: got.list_updates,
        preferred: allocation.preferred.clone(),
        device_id: allocation.device_id.clone(),
        container_path: spec.container_path.clone(),
        host_path: spec.host_path.clone(),
        permissions: spec.permissions.clone(),
        promised_ifindex: promised,
        pod_ifindex: info.ifindex,
        node_device: node_dev,
        node_owner: owner,
        node_mode: mode,
        opened_as: format!("uid {QEMU_UID} gid {QEMU_GID}"),
        cni_config: config,
        cni_args,
        stopped: None,
    };
    Ok(Attached {
        info,
        node: host_path,
        node_matches,
        fd,
        report,
    })
}

/// One device allocated to one container, as the kubelet got it.
struct Allocation {
    device_id: String,
    /// The plugin's preferred choice, when it offers one.
    preferred: Option<Vec<String>>,
    preferred_took: Option<Duration>,
    response: ContainerAllocateResponse,
    /// The Allocate call, round trip.
    took: Duration,
}

/// What the kubelet stand-in saw up to the allocation.
struct Got {
    pid: u32,
    started: Instant,
    registered_at: Instant,
    healthy_at: Instant,
    resource_name: String,
    endpoint: String,
    version: String,
    healthy_devices: usize,
    list_updates: usize,
    allocation: Allocation,
}

/// How long the lab's thread waits on the kubelet side at a time before it
/// looks at the daemon and the signals again.
const SLICE: Duration = Duration::from_millis(20);

/// Admit the pod as the kubelet does (registration, ListAndWatch until
/// Healthy, GetPreferredAllocation, Allocate), watching the daemon and the
/// signals meanwhile.
fn await_allocation(made: &mut Made, say: Say) -> Result<Got, LabError> {
    let (Some(kubelet), Some(daemon)) = (made.kubelet.as_mut(), made.daemon.as_mut()) else {
        return Err(LabError::DevicePlugin("not started".into()));
    };
    let started = daemon.started;
    let deadline = started + KUBELET_TIMEOUT;
    let failed = |daemon: &Daemon, why: String| {
        LabError::DevicePlugin(format!(
            "the kubelet stand-in: {why}\n{}",
            daemon.log_tail()
        ))
    };

    let registered = loop {
        still_waiting(daemon, deadline, "it never registered")?;
        match kubelet.registration(SLICE) {
            Ok(Some(r)) => break r,
            Ok(None) => {}
            Err(why) => return Err(failed(daemon, why)),
        }
    };
    let request = &registered.request;
    let options = match (&registered.refused, &registered.dial_back) {
        (None, Ok(options)) => *options,
        (why, dial_back) => {
            let why = why
                .clone()
                .or_else(|| dial_back.as_ref().err().cloned())
                .unwrap_or_default();
            return Err(LabError::DevicePlugin(format!(
                "the kubelet stand-in refused the registration of {:?}: {why}\n{}",
                request.resource_name,
                daemon.log_tail()
            )));
        }
    };
    say.line(format!(
        "   registered {} ({}, endpoint {}, options {{pre_start_required: {}, get_preferred_allocation_available: {}}}) {:.1} ms after the daemon started",
        request.resource_name,
        request.version,
        request.endpoint,
        options.pre_start_required,
        options.get_preferred_allocation_available,
        ms(registered.at - started)
    ));
    kubelet
        .list_and_watch(&registered)
        .map_err(|why| failed(daemon, why))?;

    let mut lists = 0;
    let healthy = loop {
        still_waiting(
            daemon,
            deadline,
            "registered, but its devices never were all Healthy",
        )?;
        let update = match kubelet.list(lists, SLICE) {
            Ok(Some(update)) => update,
            Ok(None) => continue,
            Err(why) => return Err(failed(daemon, why)),
        };
        lists += 1;
        let devices = &update.devices;
        let n_healthy = devices.iter().filter(|d| d.health == "Healthy").count();
        if n_healthy == devices.len() && n_healthy > 0 {
            let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
            say.line(format!(
                "   ListAndWatch: {n_healthy} devices, all Healthy ({}), {:.1} ms after registration",
                ids.join(" "),
                ms(update.at - registered.at)
            ));
            break update;
        }
        say.line(format!(
            "   ListAndWatch: {n_healthy} of {} devices Healthy; waiting",
            devices.len()
        ));
    };

    still_waiting(daemon, deadline, "Allocate did not answer")?;
    let available: Vec<String> = healthy.devices.iter().map(|d| d.id.clone()).collect();
    let (preferred, preferred_took) = if options.get_preferred_allocation_available {
        let (ids, took) = kubelet
            .preferred_allocation(&available)
            .map_err(|why| failed(daemon, why))?;
        (Some(ids), Some(took))
    } else {
        (None, None)
    };
    // The kubelet takes the plugin's preference when it is a valid one.
    let device_id = preferred
        .as_ref()
        .and_then(|p| p.first())
        .filter(|id| available.contains(id))
        .or_else(|| available.first())
        .cloned()
        .ok_or_else(|| {
            failed(
                daemon,
                format!("{} offers no device", request.resource_name),
            )
        })?;
    let (response, took) = kubelet
        .allocate(&device_id)
        .map_err(|why| failed(daemon, why))?;
    if let Some(p) = &preferred {
        say.line(format!(
            "   GetPreferredAllocation(size 1): {p:?} in {:.1} ms",
            preferred_took.map(ms).unwrap_or_default()
        ));
    }
    Ok(Got {
        pid: daemon.pid() as u32,
        started,
        registered_at: registered.at,
        healthy_at: healthy.at,
        resource_name: request.resource_name.clone(),
        endpoint: request.endpoint.clone(),
        version: request.version.clone(),
        healthy_devices: available.len(),
        list_updates: lists,
        allocation: Allocation {
            device_id,
            preferred,
            preferred_took,
            response,
            took,
        },
    })
}

/// `Err` when a signal came, the daemon exited or the deadline passed
/// (`waiting_for` says what had not happened yet).
fn still_waiting(
    daemon: &mut Daemon,
    deadline: Instant,
    waiting_for: &str,
) -> Result<(), LabError> {
    check_signal()?;
    if let Some(status) = daemon.try_status() {
        return Err(LabError::DevicePlugin(format!(
            "the daemon exited ({status}) before the kubelet stand-in allocated a device\n{}",
            daemon.log_tail()
        )));
    }
    if Instant::now() > deadline {
        return Err(LabError::DevicePlugin(format!(
            "no allocation within {KUBELET_TIMEOUT:?} of the daemon's start ({waiting_for})\n{}",
            daemon.log_tail()
        )));
    }
    Ok(())
}
