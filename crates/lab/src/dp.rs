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

use crate::kubelet::{Allocation, Event, KubeletStandIn};
use crate::{
    check_signal, ms, sandbox_id, CniCall, Ctx, LabError, Made, Say, World, POD_IF, UPLINK,
};
use macvtap_testkit::device_plugin::DaemonCmd;
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
    let kubelet = KubeletStandIn::start(&launch.plugin_dir).map_err(|e| {
        LabError::DevicePlugin(format!(
            "cannot serve the kubelet stand-in on {}: {e}",
            launch.plugin_dir.join("kubelet.sock").display()
        ))
    })?;
    let kubelet = ctx.made.kubelet.insert(kubelet);
    say.line(format!(
        "== kubelet stand-in: Registration on {}",
        kubelet.dir().join("kubelet.sock").display()
    ));
    let daemon = launch
        .try_spawn()
        .map_err(|e| LabError::DevicePlugin(format!("cannot start {}: {e}", binary.display())))?;
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
        detail: format!("{}: {e}", host_path.display()),
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

/// Follow the stand-in's events until Allocate answered, watching the
/// daemon and the signals meanwhile.
fn await_allocation(made: &mut Made, say: Say) -> Result<Got, LabError> {
    let (Some(kubelet), Some(daemon)) = (made.kubelet.as_ref(), made.daemon.as_mut()) else {
        return Err(LabError::DevicePlugin("not started".into()));
    };
    let started = daemon.started;
    let deadline = started + KUBELET_TIMEOUT;
    let mut registered: Option<(Instant, String, String, String)> = None;
    let mut healthy: Option<(Instant, usize)> = None;
    let mut list_updates = 0;
    loop {
        check_signal()?;
        if let Some(status) = daemon.try_status() {
            return Err(LabError::DevicePlugin(format!(
                "the daemon exited ({status}) before the kubelet stand-in allocated a device\n{}",
                daemon.log_tail()
            )));
        }
        let event = kubelet
            .next_event(Duration::from_millis(20))
            .map_err(LabError::DevicePlugin)?;
        match event {
            Some(Event::Registered {
                request,
                at,
                options,
            }) => {
                say.line(format!(
                    "   registered {} ({}, endpoint {}, options {{pre_start_required: {}, get_preferred_allocation_available: {}}}) {:.1} ms after the daemon started",
                    request.resource_name,
                    request.version,
                    request.endpoint,
                    options.pre_start_required,
                    options.get_preferred_allocation_available,
                    ms(at - started)
                ));
                registered.get_or_insert((
                    at,
                    request.resource_name,
                    request.endpoint,
                    request.version,
                ));
            }
            Some(Event::Refused { request, why }) => {
                return Err(LabError::DevicePlugin(format!(
                    "the kubelet stand-in refused the registration of {:?}: {why}\n{}",
                    request.resource_name,
                    daemon.log_tail()
                )))
            }
            Some(Event::Devices { at, devices }) => {
                list_updates += 1;
                let n_healthy = devices.iter().filter(|d| d.health == "Healthy").count();
                if healthy.is_none() && n_healthy == devices.len() && n_healthy > 0 {
                    healthy = Some((at, n_healthy));
                    let since = registered.as_ref().map(|r| at - r.0).unwrap_or_default();
                    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
                    say.line(format!(
                        "   ListAndWatch: {n_healthy} devices, all Healthy ({}), {:.1} ms after registration",
                        ids.join(" "),
                        ms(since)
                    ));
                } else if healthy.is_none() {
                    say.line(format!(
                        "   ListAndWatch: {n_healthy} of {} devices Healthy; waiting",
                        devices.len()
                    ));
                }
            }
            Some(Event::Allocated(allocation)) => {
                let (
                    Some((registered_at, resource_name, endpoint, version)),
                    Some((healthy_at, n)),
                ) = (registered, healthy)
                else {
                    return Err(LabError::DevicePlugin(
                        "an allocation before registration and a healthy list".into(),
                    ));
                };
                if let Some(p) = &allocation.preferred {
                    say.line(format!(
                        "   GetPreferredAllocation(size 1): {p:?} in {:.1} ms",
                        allocation.preferred_took.map(ms).unwrap_or_default()
                    ));
                }
                return Ok(Got {
                    pid: daemon.pid() as u32,
                    started,
                    registered_at,
                    healthy_at,
                    resource_name,
                    endpoint,
                    version,
                    healthy_devices: n,
                    list_updates,
                    allocation,
                });
            }
            Some(Event::Failed(why)) => {
                return Err(LabError::DevicePlugin(format!(
                    "the kubelet stand-in: {why}\n{}",
                    daemon.log_tail()
                )))
            }
            None => {}
        }
        if Instant::now() > deadline {
            return Err(LabError::DevicePlugin(format!(
                "no allocation within {KUBELET_TIMEOUT:?} of the daemon's start ({})\n{}",
                match (&registered, &healthy) {
                    (None, _) => "it never registered",
                    (Some(_), None) => "registered, but its devices never were all Healthy",
                    _ => "Allocate did not answer",
                },
                daemon.log_tail()
            )));
        }
    }
}
