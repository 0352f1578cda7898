//! ADD: resolve what to attach, record the intent, claim a device, make the
//! link and its device node, record the attachment, then IPAM; a failure
//! at any step undoes, in reverse, exactly what was done.

use macvtap_net::{DeviceNumber, MacAddr, MacvtapMode, MacvtapSpec, NetNs};
use macvtap_state::{
    Attach, AttachmentRecord, Claim, NodeIdentity, NodeRef, Phase, ResolvedDevice, StateDir,
};
use serde_json::Value;

use super::{load_record_or_drop, pod_of, refuse_self_as_ipam, with_failures};
use crate::config::{Config, Source};
use crate::error::{code, err, CniError, Result};
use crate::ipam::Ipam;
use crate::kernel::{Kernel, Pod, RealKernel};
use crate::spec::{CniResult, Env, Interface};

/// Where the macvtap comes from and where its node goes, fully resolved.
struct Target {
    lower: String,
    mode: MacvtapMode,
    source_macs: Vec<MacAddr>,
    ifindex: Option<u32>,
    device: Option<ResolvedDevice>,
}

impl Target {
    fn resolve(cfg: &Config, state: &StateDir) -> Result<Self> {
        match &cfg.source {
            Source::Lower {
                device,
                mode,
                source_macs,
            } => Ok(Target {
                lower: device.clone(),
                mode: *mode,
                source_macs: source_macs.clone(),
                ifindex: None,
                device: None,
            }),
            Source::Handover { .. } => Err(err(
                code::INVALID_CONFIG,
                "a handover is not a macvtap of its own: it is attached by the handover path",
            )),
            Source::Device(id) => {
                let dev = super::resolve_device(state, id)?;
                Ok(Target {
                    lower: dev.resource.lower_device.clone(),
                    mode: dev.resource.mode,
                    source_macs: Vec::new(),
                    ifindex: Some(dev.ifindex),
                    device: Some(dev),
                })
            }
        }
    }

    fn attach(&self) -> Attach {
        self.device
            .as_ref()
            .map_or(Attach::Pod, |d| d.resource.attach)
    }

    fn node<'a>(&'a self, env: &'a Env) -> NodeRef<'a> {
        match &self.device {
            Some(dev) => NodeRef::Device(&dev.device_id),
            None => NodeRef::Standalone {
                container_id: &env.container_id,
                ifname: &env.ifname,
            },
        }
    }
}

/// How to undo the pod's link.
#[derive(Debug)]
enum LinkUndo {
    /// Made by this ADD: delete the link the record names (by ifindex, or
    /// by the MAC chosen for it while the kernel's ifindex is not known).
    Created,
    /// The device plugin's link, moved in: give it back as it was.
    FromHost { index: u32, name: String },
}

/// What ADD has done so far, to undo in reverse on failure.
#[derive(Debug, Default)]
pub(crate) struct Undo {
    /// The intent or the record of this attachment.
    record: bool,
    /// The deviceID this ADD claimed (or was claiming).
    claim: Option<String>,
    /// The link in the pod.
    link: Option<LinkUndo>,
    /// The record as last saved (it names the link by MAC and ifindex).
    saved: Option<AttachmentRecord>,
    /// The device node this ADD made, by identity.
    node: Option<NodeIdentity>,
    ipam: bool,
}

pub(super) fn add(cfg: &Config, env: &Env, stdin: &[u8]) -> Result<Value> {
    let container_id = env.require_container_id()?;
    env.require_ifname()?;
    let netns_path = env.require_netns()?;
    let pod = Pod::open(netns_path)?;
    let ipam = cfg
        .ipam
        .as_ref()
        .map(|i| Ipam::new(&i.plugin, &env.path, stdin));
    if let Some(ipam) = &ipam {
        refuse_self_as_ipam(ipam)?; // also: fail before touching anything
    }
    let state = StateDir::open(&cfg.policy.state_dir)?;
    // The container's lock is held through IPAM; the node lock only around
    // the short sections that touch what other containers share.
    let container = state.lock_container(container_id, cfg.policy.lock_timeout)?;
    let mut kernel = RealKernel::new(Some(pod), ipam);
    let result = add_with(cfg, env, &state, &mut kernel);
    match result {
        Ok(_) => drop(container),
        Err(_) => state.finish_container(container),
    }
    result
}

/// ADD with the container's lock held, against any [`Kernel`]: on failure
/// everything done is undone in reverse, and what the undoing could not do
/// is in the error's details.
pub(crate) fn add_with(
    cfg: &Config,
    env: &Env,
    state: &StateDir,
    kernel: &mut dyn Kernel,
) -> Result<Value> {
    let mut undo = Undo::default();
    match add_locked(cfg, env, state, kernel, &mut undo) {
        Ok(value) => Ok(value),
        Err(e) => {
            let failures = rollback(cfg, env, state, kernel, undo);
            Err(with_failures(e, "rolling back", failures))
        }
    }
}

fn add_locked(
    cfg: &Config,
    env: &Env,
    state: &StateDir,
    kernel: &mut dyn Kernel,
    undo: &mut Undo,
) -> Result<Value> {
    let ifname = env.ifname.as_str();
    let netns_id = kernel.pod_netns()?;
    // What an interrupted ADD of this attachment left (a kill -9 between
    // any two steps) goes first, so that a retried ADD succeeds.
    if let Some(old) = load_record_or_drop(state, &env.container_id, ifname)? {
        let link_there = kernel
            .pod_link(ifname)?
            .is_some_and(|l| l.index == old.ifindex && l.kind.as_deref() == Some("macvtap"));
        if old.phase == Phase::Attached && link_there {
            return Err(err(
                code::INTERFACE_EXISTS,
                format!(
                    "interface {ifname:?} is already attached to container {}",
                    env.container_id
                ),
            ));
        }
        let _node_lock = match old.device_id {
            Some(_) => Some(state.lock(cfg.policy.lock_timeout)?),
            None => None,
        };
        if let Some(e) = super::teardown::teardown(state, &old, kernel)
            .into_iter()
            .next()
        {
            return Err(e);
        }
        state.remove_record(&env.container_id, ifname)?;
    }

    let target = Target::resolve(cfg, state)?;
    // Shared between containers (claims, nodes under dev/, Allocate): only
    // device-plugin devices need the node lock, and only until IPAM.
    let node_lock = match target.device {
        Some(_) => Some(state.lock(cfg.policy.lock_timeout)?),
        None => None,
    };
    // attach: host whose link is gone (a reboot, a re-created sandbox: the
    // kubelet reuses its checkpointed allocation without calling Allocate,
    // and the moved link died with the old pod) is served like attach: pod,
    // from resources.json alone (docs/cni-plugin.md, "Device plugin mode").
    let host_name = target.device.as_ref().map(ResolvedDevice::host_link_name);
    let host_link = match (target.attach(), &host_name) {
        (Attach::Host, Some(name)) => kernel.host_link(name)?,
        _ => None,
    };
    let mac = match (cfg.mac, &host_link) {
        (Some(mac), _) => mac,
        // Chosen before the link is made, so that the intent record names
        // the link an interrupted ADD made.
        (None, Some(link)) => link.mac.unwrap_or_else(MacAddr::random_local),
        (None, None) => MacAddr::random_local(),
    };
    // The intent goes first: whatever a kill -9 interrupts from here on
    // (the claim included), DEL finds a record naming it.
    let mut record = AttachmentRecord {
        network: cfg.name.clone(),
        container_id: env.container_id.clone(),
        ifname: ifname.to_string(),
        netns: env.netns.clone(),
        netns_dev: Some(netns_id.0),
        netns_ino: Some(netns_id.1),
        phase: Phase::Intent,
        ifindex: target.ifindex.unwrap_or(0),
        device_id: target.device.as_ref().map(|d| d.device_id.clone()),
        node_path: state.node_path(target.node(env)),
        node_identity: None,
        mac: mac.to_string(),
    };
    undo.record = true;
    undo.saved = Some(record.clone());
    state.save_record(&record)?;
    if let Some(dev) = &target.device {
        undo.claim = Some(dev.device_id.clone());
        claim_device(state, env, netns_id, dev)?;
    }
    if target.attach() == Attach::Host && kernel.pod_link(ifname)?.is_some() {
        // (For attach: pod the kernel's EEXIST on create says the same.)
        return Err(err(
            code::INTERFACE_EXISTS,
            format!("interface {ifname:?} already exists in {}", env.netns),
        ));
    }

    match host_link {
        None => {
            create_link(cfg, &target, kernel, mac, ifname)?;
            undo.link = Some(LinkUndo::Created);
        }
        Some(link) => {
            let name = host_name.unwrap_or_default();
            let lower = kernel.host_link(&target.lower)?.map(|l| l.index);
            // Only the link Allocate made: a macvtap with the promised ifindex
            // on the resource's lower device, not any link of that name.
            let ours = link.kind.as_deref() == Some("macvtap")
                && Some(link.index) == target.ifindex
                && link.lower_index.is_some()
                && link.lower_index == lower;
            if !ours {
                return Err(err(
                    code::DEVICE_NOT_OFFERED,
                    format!("the host's link {name:?} is not the device plugin's macvtap for this device"),
                ));
            }
            kernel.move_to_pod(link.index, ifname)?;
            // A moved link keeps its ifindex.
            undo.link = Some(LinkUndo::FromHost {
                index: link.index,
                name,
            });
            kernel.configure_pod_link(
                link.index,
                Some(mac),
                cfg.mtu,
                Some(cfg.promisc),
                Some(true),
            )?;
        }
    }
    let link = kernel.pod_link(ifname)?.ok_or_else(|| {
        err(
            code::KERNEL,
            format!("interface {ifname:?} vanished right after it was made"),
        )
    })?;

    let dev: DeviceNumber = kernel.tap_device_number(ifname, link.index)?;
    let identity = kernel.make_node(state, target.node(env), dev, cfg.owner, cfg.group)?;
    undo.node = Some(identity);

    let mac = link.mac.map(|m| m.to_string()).unwrap_or_default();
    record.phase = Phase::Attached;
    record.ifindex = link.index;
    record.node_identity = Some(identity);
    record.mac = mac.clone();
    undo.saved = Some(record.clone());
    state.save_record(&record)?;
    drop(node_lock);

    let mut result = match &cfg.prev_result {
        Some(prev) => CniResult::parse(prev)?,
        None => CniResult::default(),
    };
    let our_index = result.interfaces.len();
    result.interfaces.push(Interface {
        name: ifname.to_string(),
        mac: Some(mac),
        mtu: Some(link.mtu),
        sandbox: Some(env.netns.clone()),
    });
    if kernel.has_ipam() {
        undo.ipam = true;
        let out = kernel
            .ipam("ADD", &[])?
            .ok_or_else(|| err(code::IPAM_EXEC, "IPAM plugin printed no result"))?;
        let mut leased = CniResult::parse(&out)?;
        if leased.ips.is_empty() {
            return Err(err(code::IPAM_EXEC, "IPAM plugin returned no addresses"));
        }
        for ip in &mut leased.ips {
            ip.interface = Some(our_index);
        }
        kernel.configure_addresses(&link, &leased)?;
        result.ips.extend(leased.ips);
        result.routes.extend(leased.routes);
        if leased
            .dns
            .as_ref()
            .is_some_and(|d| d.as_object().is_some_and(|o| !o.is_empty()))
        {
            result.dns = leased.dns;
        }
    }
    Ok(result.to_json(cfg.version))
}

/// Create the macvtap: in the pod directly, or in the pod's namespace on a
/// lower device that lives there (`linkInContainer`).
fn create_link(
    cfg: &Config,
    target: &Target,
    kernel: &mut dyn Kernel,
    mac: MacAddr,
    ifname: &str,
) -> Result<()> {
    let where_ = if cfg.link_in_container {
        "the pod's namespace"
    } else {
        "the host namespace"
    };
    let lower = kernel
        .lower_link(cfg.link_in_container, &target.lower)?
        .ok_or_else(|| {
            err(
                code::LOWER_DEVICE_MISSING,
                format!("lower device {:?} does not exist in {where_}", target.lower),
            )
        })?;
    let spec = MacvtapSpec {
        name: ifname,
        lower_index: lower.index,
        mode: target.mode,
        source_macs: &target.source_macs,
        mac: Some(mac),
        mtu: cfg.mtu,
        promisc: cfg.promisc,
        up: true,
        ifindex: target.ifindex,
        netns_fd: None,
    };
    let Err(e) = kernel.create_macvtap(cfg.link_in_container, &spec) else {
        return Ok(());
    };
    // EEXIST is the name, or (when we asked for one) the ifindex.
    let name_taken = e.errno == Some(libc::EEXIST) && kernel.pod_link(ifname)?.is_some();
    Err(match (e.errno, spec.ifindex) {
        (Some(libc::EEXIST), _) if name_taken => err(
            code::INTERFACE_EXISTS,
            format!("interface {ifname:?} already exists in the pod"),
        ),
        (Some(libc::EEXIST | libc::EBUSY), Some(index)) => err(
            code::KERNEL,
            format!("ifindex {index} promised for this device is already taken in the pod"),
        ),
        _ => e.error,
    })
}

/// Claim a device-plugin device for this attachment (node lock held).
///
/// A deviceID in a configuration proves nothing: the device plugin's grant
/// (its allocation record) must exist, name this device as resources.json
/// does, and, once the device plugin learnt which pod the kubelet gave it
/// to, name this pod. One attachment holds a device at a time: another
/// holder under the same grant whose namespace still lives keeps it; a
/// holder under an older grant lost it when the kubelet handed it out again.
fn claim_device(
    state: &StateDir,
    env: &Env,
    netns_id: (u64, u64),
    dev: &ResolvedDevice,
) -> Result<()> {
    let id = &dev.device_id;
    let not_granted = |why: String| err(code::DEVICE_NOT_OFFERED, format!("device {id:?} {why}"));
    let grant = state.load_allocation(id)?.ok_or_else(|| {
        not_granted("was not allocated by this node's device plugin: a deviceID is usable only by the pod the kubelet gave it to".into())
    })?;
    if grant.resource != dev.resource.name || grant.ifindex != dev.ifindex {
        return Err(not_granted(format!(
            "was allocated as {}/ifindex {}, which resources.json no longer describes",
            grant.resource, grant.ifindex
        )));
    }
    let pod = pod_of(env);
    if let Some(granted) = &grant.pod {
        if pod.as_ref() != Some(granted) {
            return Err(not_granted(format!(
                "is allocated to pod {}/{}, not to {}",
                granted.namespace,
                granted.name,
                pod.as_ref().map_or("this one".to_string(), |p| format!(
                    "{}/{}",
                    p.namespace, p.name
                ))
            )));
        }
    }
    if let Some(held) = state.load_claim(id) {
        let other = held.container_id != env.container_id || held.ifname != env.ifname;
        // A claim protects its holder only under the current grant and, once
        // the grant names its pod, only if the holder is that pod (an ADD
        // before the device plugin learnt the pod could be anyone's).
        let rightful = held.grant == grant.grant
            && grant
                .pod
                .as_ref()
                .is_none_or(|p| held.pod.as_ref() == Some(p));
        if other && rightful && claim_alive(state, &held) {
            return Err(not_granted(format!(
                "is attached to container {} ({}) in {}",
                held.container_id, held.ifname, held.netns
            )));
        }
    }
    let claim = Claim {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: env.netns.clone(),
        netns_dev: Some(netns_id.0),
        netns_ino: Some(netns_id.1),
        grant: grant.grant,
        pod,
    };
    state.save_claim(id, &claim)?;
    Ok(())
}

/// Does the claim's attachment still exist: its record, and its namespace
/// (the same one, not another at a reused path)?
fn claim_alive(state: &StateDir, held: &Claim) -> bool {
    let Ok(ns) = NetNs::open(&held.netns) else {
        return false;
    };
    let same_ns = match (held.netns_dev, held.netns_ino, ns.identity()) {
        (Some(d), Some(i), Ok(found)) => found == (d, i),
        (None, None, _) => true,
        _ => false,
    };
    same_ns
        && state
            .load_record(&held.container_id, &held.ifname)
            .ok()
            .flatten()
            .is_some()
}

/// Undo what ADD did, in reverse order; every failure is returned.
fn rollback(
    cfg: &Config,
    env: &Env,
    state: &StateDir,
    kernel: &mut dyn Kernel,
    undo: Undo,
) -> Vec<CniError> {
    let mut failures = Vec::new();
    if undo.ipam {
        if let Err(e) = kernel.ipam("DEL", &[]) {
            failures.push(e);
        }
    }
    // The claim and a device's node are shared with other containers.
    let _node_lock = if undo.claim.is_some() {
        state
            .lock(cfg.policy.lock_timeout)
            .map_err(|e| failures.push(e.into()))
            .ok()
    } else {
        None
    };
    let node = match &undo.claim {
        Some(id) => NodeRef::Device(id),
        None => NodeRef::Standalone {
            container_id: &env.container_id,
            ifname: &env.ifname,
        },
    };
    if let Some(made) = undo.node {
        // The node this ADD made, if it is still that file.
        if let Err(e) = kernel.remove_node(state, node, Some(made)) {
            failures.push(e);
        }
    }
    match (&undo.link, &undo.saved) {
        (Some(LinkUndo::Created), Some(record)) => {
            if let Err(e) = kernel.delete_recorded_link(record) {
                failures.push(e);
            }
        }
        (Some(LinkUndo::FromHost { index, name }), _) => {
            if let Err(e) = kernel.return_to_host(*index, name) {
                failures.push(e);
            }
        }
        _ => {}
    }
    if let Some(id) = &undo.claim {
        if let Err(e) = state.release_claim(id, &env.container_id, &env.ifname) {
            failures.push(e.into());
        }
    }
    if undo.record {
        if let Err(e) = state.remove_record(&env.container_id, &env.ifname) {
            failures.push(e.into());
        }
    }
    failures
}
