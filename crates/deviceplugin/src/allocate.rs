//! Allocate: promise each device's ifindex and device node, record it, and
//! for `attach: host` resources create the macvtap in the host namespace.

use std::collections::HashSet;
use std::time::Duration;

use macvtap_net::{error_chain, MacvtapSpec, Netlink, SysfsView};
use macvtap_state::{host_link_name, parse_device_id, AllocationRecord, Attach, NodeRef, StateDir};
use tokio::sync::oneshot;
use tonic::Status;

use crate::cdi::{self, CdiError, SpecDir};
use crate::proto::deviceplugin::{
    AllocateResponse, CdiDevice, ContainerAllocateResponse, DeviceSpec,
};
use crate::resource::Resource;

/// Owner of the device nodes the daemon makes itself (`attach: host`):
/// qemu in KubeVirt's images, as the CNI's default.
pub const NODE_OWNER: u32 = 107;

/// The longest wait for the node lock (held by the CNI only around short
/// sections, never across IPAM).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Allocates devices of any resource against one state directory.
#[derive(Debug)]
pub struct Allocator {
    pub state: StateDir,
    /// Where to hand granted devices so that their grants learn their pod
    /// (see [`crate::grants`]); None: they stay unbound.
    pub binder: Option<crate::grants::Binder>,
    /// `--cdi`: the spec directory holding every resource's CDI spec;
    /// Allocate then names each device in `cdi_devices` too.
    pub cdi: Option<SpecDir>,
    /// Where Allocate's durations go; None: not measured.
    pub metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

/// What one Allocate call did, undone in reverse if a later step fails.
#[derive(Default)]
struct Undo {
    records: Vec<String>,
    nodes: Vec<String>,
    links: Vec<u32>,
}

fn internal(what: &str) -> impl Fn(String) -> Status + '_ {
    move |e| Status::internal(format!("{what}: {e}"))
}

/// The answer of one Allocate, and whether anyone still waits for it.
pub type Reply = oneshot::Sender<Result<AllocateResponse, Status>>;

/// The kubelet stopped waiting (deadline, cancelled call, dropped
/// connection): the work done so far is undone and nobody hears of it.
fn abandoned() -> Status {
    Status::cancelled("the caller stopped waiting for this Allocate; everything it did was undone")
}

/// Check a request against the resource before touching anything:
/// every ID offered by it, no ID twice, no more IDs than the resource has.
/// Returns each container's (device ID, ifindex) list.
fn plan(
    resource: &Resource,
    containers: &[Vec<String>],
) -> Result<Vec<Vec<(String, u32)>>, Status> {
    let cfg = &resource.config;
    // No call can name more distinct devices than the resource offers:
    // refuse a long list before looking at it (20,000 IDs used to hold
    // the node lock for 17 s).
    let listed: usize = containers.iter().map(Vec::len).sum();
    if listed > cfg.capacity as usize {
        return Err(Status::invalid_argument(format!(
            "Allocate lists {listed} device IDs; resource {} offers {} devices",
            resource.resource_name(),
            cfg.capacity
        )));
    }
    // The kubelet hands a device to one container once; an ID listed twice
    // (in one container or two) is a broken or hostile caller. Refused,
    // not collapsed: collapsing would answer with fewer devices than asked
    // and leave the caller to guess which container got the device.
    let mut seen = HashSet::with_capacity(listed);
    let mut planned = Vec::with_capacity(containers.len());
    for ids in containers {
        let mut devices = Vec::with_capacity(ids.len());
        for id in ids {
            let index = match parse_device_id(id) {
                Ok((name, index)) if name == cfg.name && index < cfg.capacity => index,
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "device {id:?} is not offered by resource {} ({}-0 .. {}-{})",
                        resource.resource_name(),
                        cfg.name,
                        cfg.name,
                        cfg.capacity - 1
                    )))
                }
            };
            if !seen.insert(index) {
                return Err(Status::invalid_argument(format!(
                    "device {id:?} is listed more than once in one Allocate; the kubelet never does that"
                )));
            }
            devices.push((id.clone(), resource.ifindex_base + index));
        }
        planned.push(devices);
    }
    Ok(planned)
}

impl Allocator {
    /// Answer one Allocate through `reply`. Blocking (files, netlink): run it
    /// off the async workers; the daemon never changes namespace, so any
    /// thread will do. While `reply` has a receiver the work goes on; once
    /// it has none (the gRPC call was cancelled and its future dropped),
    /// whatever this call did is undone, and an answer that finds nobody to
    /// take it is undone too: the kubelet counts a device it never heard of
    /// as free, so nothing may stay for it.
    pub fn allocate_for(&self, resource: &Resource, containers: &[Vec<String>], reply: Reply) {
        let _timer = self.metrics.as_ref().map(|m| m.allocate_timer(resource));
        let planned = match plan(resource, containers) {
            Ok(planned) => planned,
            Err(status) => {
                let _ = reply.send(Err(status));
                return;
            }
        };
        let _lock = match self.state.lock(LOCK_TIMEOUT) {
            Ok(lock) => lock,
            Err(e) => {
                let _ = reply.send(Err(internal("state directory")(error_chain(&e))));
                return;
            }
        };
        // The lock can take long (a CNI ADD holds it): ask before starting.
        if reply.is_closed() {
            tracing::warn!(resource = %resource.config.name, "Allocate cancelled while waiting for the node lock; nothing done");
            return;
        }
        let mut undo = Undo::default();
        let result = self.allocate_locked(resource, &planned, &mut undo, &reply);
        // Still under the lock, so no undo races another Allocate. A failure
        // is undone before it is reported: the caller may retry at once.
        let cancelled = |undo: &Undo| {
            tracing::warn!(
                resource = %resource.config.name,
                records = undo.records.len(),
                links = undo.links.len(),
                "Allocate cancelled by the caller; undoing what it did"
            )
        };
        match result {
            Err(status) => {
                if reply.is_closed() {
                    cancelled(&undo);
                }
                self.undo(undo);
                let _ = reply.send(Err(status));
            }
            Ok(response) => {
                if reply.send(Ok(response)).is_err() {
                    cancelled(&undo);
                    self.undo(undo);
                }
            }
        }
    }

    fn allocate_locked(
        &self,
        resource: &Resource,
        planned: &[Vec<(String, u32)>],
        undo: &mut Undo,
        reply: &Reply,
    ) -> Result<AllocateResponse, Status> {
        let cfg = &resource.config;
        let mut netlink = None;
        let mut grants = Vec::new();
        let mut container_responses = Vec::new();
        for devices in planned {
            let mut specs = Vec::new();
            let mut cdi_devices = Vec::new();
            for (id, ifindex) in devices {
                // Stop early for a caller that is gone: every further link
                // would be one more to delete (17 ms each) in the undo.
                if reply.is_closed() {
                    return Err(abandoned());
                }
                let node_path = self.state.device_node_path(id);
                if cfg.attach == Attach::Host {
                    if netlink.is_none() {
                        netlink = Some(
                            Netlink::open().map_err(|e| internal("netlink")(error_chain(&e)))?,
                        );
                    }
                    let nl = netlink.as_mut().expect("opened above");
                    self.host_link(nl, resource, id, *ifindex, undo)?;
                } else {
                    // No pod holds the device (the kubelet allocates only free
                    // ones) and its CNI ADD has not run: a node here is a late
                    // or missed DEL's, naming some other tap. The pod's ADD
                    // makes the right one.
                    self.state
                        .remove_node(NodeRef::Device(id), None)
                        .map_err(|e| Status::internal(error_chain(&e)))?;
                }
                // The grant: the pod's CNI ADD may use the device only with it.
                grants.push(AllocationRecord::new(
                    id,
                    &cfg.name,
                    *ifindex,
                    node_path.clone(),
                    cfg.attach,
                ));
                specs.push(DeviceSpec {
                    container_path: format!("/dev/tap{ifindex}"),
                    host_path: node_path.to_string_lossy().into_owned(),
                    permissions: "rw".into(),
                });
                // Next to the DeviceSpec, not instead: kubelets before 1.31
                // ignore cdi_devices; a runtime given both lets CDI's entry
                // for /dev/tapN replace the DeviceSpec's.
                if self.cdi.is_some() {
                    if let Some(name) = cdi::qualified_name(resource, id) {
                        cdi_devices.push(CdiDevice { name });
                    }
                }
            }
            container_responses.push(ContainerAllocateResponse {
                devices: specs,
                cdi_devices,
                ..Default::default()
            });
        }
        // Written at the end, all at once, so one sync (syncfs) covers them;
        // a failure part-way removes them all (missing ones are fine).
        undo.records = grants.iter().map(|r| r.device_id.clone()).collect();
        self.state
            .save_allocations(&grants)
            .map_err(|e| internal("allocation records")(error_chain(&e)))?;
        Ok(AllocateResponse {
            container_responses,
        })
    }

    /// `attach: host`: the macvtap exists in the host namespace from now on,
    /// with the promised ifindex, and so does its device node.
    fn host_link(
        &self,
        nl: &mut Netlink,
        resource: &Resource,
        device_id: &str,
        ifindex: u32,
        undo: &mut Undo,
    ) -> Result<(), Status> {
        let cfg = &resource.config;
        let name = host_link_name(ifindex);
        let nl_err = |e: macvtap_net::Error| Status::internal(error_chain(&e));
        let lower = nl
            .link_by_name(&cfg.lower_device)
            .map_err(nl_err)?
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "lower device {:?} does not exist",
                    cfg.lower_device
                ))
            })?;
        match nl.link_by_name(&name).map_err(nl_err)? {
            Some(link)
                if link.kind.as_deref() == Some("macvtap")
                    && link.lower_index == Some(lower.index) =>
            {
                // Left from an earlier Allocate of this device: reuse it.
            }
            Some(_) => {
                return Err(Status::failed_precondition(format!(
                    "a link named {name} exists and is not this device's macvtap"
                )))
            }
            None => {
                nl.create_macvtap(&MacvtapSpec {
                    name: &name,
                    lower_index: lower.index,
                    mode: cfg.mode,
                    source_macs: &[],
                    mac: None,
                    mtu: None,
                    promisc: false,
                    up: true,
                    ifindex: Some(ifindex),
                    netns_fd: None,
                })
                .map_err(|e| Status::internal(format!("create {name}: {}", error_chain(&e))))?;
                undo.links.push(ifindex);
            }
        }
        let dev = SysfsView::here()
            .map_err(|e| Status::internal(format!("sysfs: {}", error_chain(&e))))?
            .tap_device_number(&name, ifindex)
            .map_err(nl_err)?;
        undo.nodes.push(device_id.to_string());
        self.state
            .make_node(
                NodeRef::Device(device_id),
                dev.major,
                dev.minor,
                NODE_OWNER,
                NODE_OWNER,
            )
            .map_err(|e| Status::internal(error_chain(&e)))?;
        Ok(())
    }

    /// With `--cdi`: write the specs of `resources` (all the daemon offers)
    /// and remove those of resources it no longer offers.
    pub fn sync_cdi<'a>(
        &self,
        resources: impl IntoIterator<Item = &'a std::sync::Arc<Resource>>,
    ) -> Result<(), CdiError> {
        match &self.cdi {
            Some(dir) => dir.sync(resources, &self.state),
            None => Ok(()),
        }
    }

    fn undo(&self, undo: Undo) {
        for id in undo.records.iter().rev() {
            let _ = self.state.remove_allocation(id);
        }
        for id in undo.nodes.iter().rev() {
            let _ = self.state.remove_node(NodeRef::Device(id), None);
        }
        if !undo.links.is_empty() {
            if let Ok(mut nl) = Netlink::open() {
                for index in undo.links.iter().rev() {
                    let _ = nl.delete_link(*index);
                }
            }
        }
    }
}
