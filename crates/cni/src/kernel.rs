//! The kernel, the device nodes and the IPAM plugin, as ADD and DEL use
//! them: one narrow trait, so that the attach logic (what is made in which
//! order, and what a failure undoes) is testable without root against a
//! recording fake, while the integration tests cover the real kernel.

use std::net::IpAddr;

use macvtap_net::{
    tap_device_number, DeviceNumber, Link, MacAddr, MacvtapSpec, NetNs, Netlink, RouteSpec,
    SysfsView,
};
use macvtap_state::{AttachmentRecord, NodeIdentity, NodeRef, StateDir};
use serde_json::Value;

use crate::error::{code, err, CniError, Result};
use crate::ipam::Ipam;
use crate::spec::CniResult;

/// Map a kernel-side error to the CNI error a runtime should see.
pub(crate) fn kernel_error(e: macvtap_net::Error) -> CniError {
    let msg = macvtap_net::error_chain(&e);
    match e {
        macvtap_net::Error::NetnsMissing(_) => err(code::UNKNOWN_CONTAINER, msg),
        macvtap_net::Error::NotANetns(_) => {
            err(code::INVALID_ENVIRONMENT, format!("CNI_NETNS: {msg}"))
        }
        macvtap_net::Error::TapDevice { .. } | macvtap_net::Error::DeviceNode { .. } => {
            err(code::DEVICE_NODE, msg)
        }
        _ => err(code::KERNEL, msg),
    }
}

/// Why a macvtap could not be created: the kernel's errno decides the CNI
/// error (a name or an ifindex already taken).
#[derive(Debug)]
pub(crate) struct CreateError {
    pub errno: Option<i32>,
    pub error: CniError,
}

/// What ADD and DEL ask of the node. Every method is one step that either
/// changes something (and so may need undoing) or only looks.
pub(crate) trait Kernel {
    /// The pod namespace's identity (device, inode).
    fn pod_netns(&self) -> Result<(u64, u64)>;
    /// A link of the pod's namespace, by name.
    fn pod_link(&mut self, name: &str) -> Result<Option<Link>>;
    /// A link of the node's (host) namespace, by name.
    fn host_link(&mut self, name: &str) -> Result<Option<Link>>;
    /// A lower device: in the pod's namespace (`linkInContainer`) or the host's.
    fn lower_link(&mut self, in_pod: bool, name: &str) -> Result<Option<Link>>;
    /// Create the macvtap inside the pod, on a lower device in the pod
    /// (`lower_in_pod`) or on the host (then straight into the pod).
    fn create_macvtap(
        &mut self,
        lower_in_pod: bool,
        spec: &MacvtapSpec<'_>,
    ) -> std::result::Result<(), CreateError>;
    /// Move a host link into the pod, renamed `name`.
    fn move_to_pod(&mut self, index: u32, name: &str) -> Result<()>;
    /// Set MAC, MTU, promiscuous mode and up state of a pod link.
    fn configure_pod_link(
        &mut self,
        index: u32,
        mac: Option<MacAddr>,
        mtu: Option<u32>,
        promisc: Option<bool>,
        up: Option<bool>,
    ) -> Result<()>;
    /// Give a link that came from the host back to it, down, as `name`.
    fn return_to_host(&mut self, index: u32, name: &str) -> Result<()>;
    /// The tap device number of a pod macvtap, as the pod's sysfs shows it.
    fn tap_device_number(&mut self, ifname: &str, index: u32) -> Result<DeviceNumber>;
    /// Make the device node `node` for `dev`.
    fn make_node(
        &mut self,
        state: &StateDir,
        node: NodeRef<'_>,
        dev: DeviceNumber,
        uid: u32,
        gid: u32,
    ) -> Result<NodeIdentity>;
    /// Remove the device node `node` if it is still `made` (any, for `None`).
    fn remove_node(
        &mut self,
        state: &StateDir,
        node: NodeRef<'_>,
        made: Option<NodeIdentity>,
    ) -> Result<()>;
    /// Put an IPAM result's addresses and routes on a pod link.
    fn configure_addresses(&mut self, link: &Link, leased: &CniResult) -> Result<()>;
    /// Delete the link `record` names, if it is still the one this plugin
    /// made (see [`RealKernel`]); `Ok(false)` when there is none to delete.
    fn delete_recorded_link(&mut self, record: &AttachmentRecord) -> Result<bool>;
    /// Run the IPAM plugin (`None` when the configuration has none).
    fn ipam(&mut self, command: &str, overrides: &[(&str, &str)]) -> Result<Option<Value>>;
    /// Whether an IPAM plugin is configured.
    fn has_ipam(&self) -> bool;
}

/// Open a netlink socket inside `ns`. The plugin is a single-threaded
/// process, so it enters namespaces on its own thread for a moment
/// ([`NetNs::run_here`]) instead of paying for a helper thread.
pub(crate) fn netlink_in(ns: &NetNs) -> Result<Netlink> {
    ns.run_here(Netlink::open)
        .map_err(kernel_error)?
        .map_err(kernel_error)
}

/// A pod's namespace as ADD and CHECK use it: a netlink socket and a sysfs
/// view, both made inside it in one visit and usable from here after.
#[derive(Debug)]
pub(crate) struct Pod {
    pub ns: NetNs,
    pub nl: Netlink,
    sysfs: Option<SysfsView>,
}

impl Pod {
    pub fn open(path: &str) -> Result<Pod> {
        let ns = NetNs::open(path).map_err(kernel_error)?;
        let (nl, sysfs) = ns
            .run_here(|| (Netlink::open(), SysfsView::here().ok()))
            .map_err(kernel_error)?;
        Ok(Pod {
            nl: nl.map_err(kernel_error)?,
            sysfs,
            ns,
        })
    }

    /// The tap device number of the pod's macvtap, from sysfs as the pod
    /// sees it.
    pub fn tap_device_number(&self, ifname: &str, ifindex: u32) -> Result<DeviceNumber> {
        match &self.sysfs {
            Some(view) => view
                .tap_device_number(ifname, ifindex)
                .map_err(kernel_error),
            // Old kernels: a private mount namespace, on a disposable thread.
            None => self
                .ns
                .run(|| tap_device_number(ifname, ifindex))
                .map_err(kernel_error)?
                .map_err(kernel_error),
        }
    }
}

/// The real node: the pod's namespace (if the runtime gave one that still
/// exists), the host's netlink, and the IPAM plugin.
#[derive(Debug)]
pub(crate) struct RealKernel<'a> {
    pub pod: Option<Pod>,
    /// Teardown: where to look for a record's namespace first (the
    /// runtime's CNI_NETNS), before the recorded path.
    netns_path: Option<String>,
    host: Option<Netlink>,
    ipam: Option<Ipam<'a>>,
}

impl<'a> RealKernel<'a> {
    /// For ADD and CHECK: the pod's namespace, opened.
    pub fn new(pod: Option<Pod>, ipam: Option<Ipam<'a>>) -> Self {
        RealKernel {
            pod,
            netns_path: None,
            host: None,
            ipam,
        }
    }

    /// For DEL and GC: records name their namespaces; `netns_path` (the
    /// runtime's CNI_NETNS) is tried first.
    pub fn for_teardown(netns_path: Option<&str>, ipam: Option<Ipam<'a>>) -> Self {
        RealKernel {
            pod: None,
            netns_path: netns_path.filter(|p| !p.is_empty()).map(str::to_string),
            host: None,
            ipam,
        }
    }

    fn pod(&mut self) -> Result<&mut Pod> {
        self.pod
            .as_mut()
            .ok_or_else(|| err(code::INVALID_ENVIRONMENT, "CNI_NETNS is not set"))
    }

    fn host(&mut self) -> Result<&mut Netlink> {
        if self.host.is_none() {
            self.host = Some(Netlink::open().map_err(kernel_error)?);
        }
        Ok(self.host.as_mut().expect("opened above"))
    }
}

impl Kernel for RealKernel<'_> {
    fn pod_netns(&self) -> Result<(u64, u64)> {
        let pod = self
            .pod
            .as_ref()
            .ok_or_else(|| err(code::INVALID_ENVIRONMENT, "CNI_NETNS is not set"))?;
        pod.ns.identity().map_err(kernel_error)
    }

    fn pod_link(&mut self, name: &str) -> Result<Option<Link>> {
        self.pod()?.nl.link_by_name(name).map_err(kernel_error)
    }

    fn host_link(&mut self, name: &str) -> Result<Option<Link>> {
        self.host()?.link_by_name(name).map_err(kernel_error)
    }

    fn lower_link(&mut self, in_pod: bool, name: &str) -> Result<Option<Link>> {
        if in_pod {
            self.pod_link(name)
        } else {
            self.host_link(name)
        }
    }

    fn create_macvtap(
        &mut self,
        lower_in_pod: bool,
        spec: &MacvtapSpec<'_>,
    ) -> std::result::Result<(), CreateError> {
        let fail = |e: macvtap_net::Error| CreateError {
            errno: e.errno(),
            error: kernel_error(e),
        };
        let no_pod = || CreateError {
            errno: None,
            error: err(code::INVALID_ENVIRONMENT, "CNI_NETNS is not set"),
        };
        if lower_in_pod {
            let pod = self.pod.as_mut().ok_or_else(no_pod)?;
            return pod.nl.create_macvtap(spec).map_err(fail);
        }
        let pod_fd = self.pod.as_ref().ok_or_else(no_pod)?.ns.raw_fd();
        let host = self
            .host()
            .map_err(|error| CreateError { errno: None, error })?;
        let spec = MacvtapSpec {
            netns_fd: Some(pod_fd),
            ..spec.clone()
        };
        host.create_macvtap(&spec).map_err(fail)
    }

    fn move_to_pod(&mut self, index: u32, name: &str) -> Result<()> {
        let pod_fd = self.pod()?.ns.raw_fd();
        self.host()?
            .move_link(index, pod_fd, name)
            .map_err(kernel_error)
    }

    fn configure_pod_link(
        &mut self,
        index: u32,
        mac: Option<MacAddr>,
        mtu: Option<u32>,
        promisc: Option<bool>,
        up: Option<bool>,
    ) -> Result<()> {
        self.pod()?
            .nl
            .configure_link(index, mac, mtu, promisc, up)
            .map_err(kernel_error)
    }

    fn return_to_host(&mut self, index: u32, name: &str) -> Result<()> {
        let host = NetNs::current().map_err(kernel_error)?;
        let pod = self.pod()?;
        pod.nl
            .configure_link(index, None, None, None, Some(false))
            .map_err(kernel_error)?;
        pod.nl
            .move_link(index, host.raw_fd(), name)
            .map_err(kernel_error)
    }

    fn tap_device_number(&mut self, ifname: &str, index: u32) -> Result<DeviceNumber> {
        self.pod()?.tap_device_number(ifname, index)
    }

    fn make_node(
        &mut self,
        state: &StateDir,
        node: NodeRef<'_>,
        dev: DeviceNumber,
        uid: u32,
        gid: u32,
    ) -> Result<NodeIdentity> {
        Ok(state.make_node(node, dev.major, dev.minor, uid, gid)?)
    }

    fn remove_node(
        &mut self,
        state: &StateDir,
        node: NodeRef<'_>,
        made: Option<NodeIdentity>,
    ) -> Result<()> {
        Ok(state.remove_node(node, made)?)
    }

    /// Addresses, then routes (a route without a gateway uses its family's
    /// gateway, as the reference plugins do).
    fn configure_addresses(&mut self, link: &Link, leased: &CniResult) -> Result<()> {
        let nl = &mut self.pod()?.nl;
        for ip in &leased.ips {
            nl.add_address(link.index, ip.address, ip.prefix_len)
                .map_err(kernel_error)?;
        }
        for route in &leased.routes {
            let dst = route.get("dst").and_then(Value::as_str).unwrap_or_default();
            let (dst_ip, len) = crate::spec::parse_cidr(dst)
                .ok_or_else(|| err(code::IPAM_EXEC, format!("IPAM route with bad dst {dst:?}")))?;
            let gw: Option<IpAddr> =
                match route.get("gw").and_then(Value::as_str) {
                    Some(g) if !g.is_empty() => Some(g.parse().map_err(|_| {
                        err(code::IPAM_EXEC, format!("IPAM route with bad gw {g:?}"))
                    })?),
                    _ => leased
                        .ips
                        .iter()
                        .find(|ip| ip.address.is_ipv4() == dst_ip.is_ipv4())
                        .and_then(|ip| ip.gateway),
                };
            let spec = RouteSpec {
                dst: (len != 0).then_some((dst_ip, len)),
                gateway: gw,
                oif: link.index,
                family_v6: dst_ip.is_ipv6(),
            };
            match nl.add_route(&spec) {
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                other => other.map_err(kernel_error)?,
            }
        }
        Ok(())
    }

    /// Only a link that is still the one the record names: same namespace
    /// (device and inode), same name, a macvtap, and the recorded ifindex
    /// (or, for an intent whose ifindex the kernel was to pick, the MAC
    /// chosen for it). A namespace that is gone took the link with it.
    fn delete_recorded_link(&mut self, record: &AttachmentRecord) -> Result<bool> {
        let opened;
        let ns = match &self.pod {
            Some(pod) => &pod.ns,
            None => {
                // The runtime's path if it still names a namespace, else the
                // recorded one: the identity check below decides either way.
                let from_runtime = self.netns_path.as_deref().and_then(|p| NetNs::open(p).ok());
                opened = match from_runtime.map_or_else(|| NetNs::open(&record.netns), Ok) {
                    Ok(ns) => ns,
                    Err(macvtap_net::Error::NetnsMissing(_) | macvtap_net::Error::NotANetns(_)) => {
                        return Ok(false)
                    }
                    Err(e) => return Err(kernel_error(e)),
                };
                &opened
            }
        };
        let (dev, ino) = ns.identity().map_err(kernel_error)?;
        if !record.same_netns(dev, ino) {
            return Ok(false); // the path names another namespace now
        }
        let mut nl = netlink_in(ns)?;
        let Some(link) = nl.link_by_name(&record.ifname).map_err(kernel_error)? else {
            return Ok(false);
        };
        let same = if record.ifindex != 0 {
            link.index == record.ifindex
        } else {
            link.mac.map(|m| m.to_string()).as_deref() == Some(record.mac.as_str())
        };
        if !same || link.kind.as_deref() != Some("macvtap") {
            return Ok(false); // not ours: never touch it
        }
        match nl.delete_link(link.index) {
            Err(e) if e.errno() != Some(libc::ENODEV) => Err(kernel_error(e)),
            _ => Ok(true),
        }
    }

    fn ipam(&mut self, command: &str, overrides: &[(&str, &str)]) -> Result<Option<Value>> {
        match &self.ipam {
            Some(ipam) => ipam.exec(command, overrides),
            None => Ok(None),
        }
    }

    fn has_ipam(&self) -> bool {
        self.ipam.is_some()
    }
}
