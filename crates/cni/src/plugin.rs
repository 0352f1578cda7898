//! The commands: ADD, DEL, CHECK, VERSION, STATUS, GC.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use macvtap_net::{
    make_device_node, tap_device_number, DeviceNumber, Link, MacAddr, MacvtapMode, MacvtapSpec,
    NetNs, Netlink, NodeInfo, RouteSpec, SysfsView,
};
use macvtap_state::{
    remove_file_if_exists, Attach, AttachmentRecord, NodeIdentity, ResolvedDevice,
};
use serde_json::{json, Value};

use crate::config::{peek_version, Config, Source};
use crate::error::{code, err, CniError, Result};
use crate::ipam::Ipam;
use crate::spec::{CniResult, Command, Env, Interface, Version, SUPPORTED_VERSIONS};

/// What one invocation printed: the version to print errors in, and the
/// result (a JSON document to print, nothing, or an error).
#[derive(Debug)]
pub struct Outcome {
    pub version: String,
    pub result: Result<Option<Value>>,
}

/// Run one plugin invocation.
pub fn run(env: &Env, stdin: &[u8]) -> Outcome {
    let mut version = Version::V110.as_str().to_string();
    let result = dispatch(env, stdin, &mut version);
    Outcome { version, result }
}

fn dispatch(env: &Env, stdin: &[u8], version: &mut String) -> Result<Option<Value>> {
    if let Some(k) = env.not_utf8.first() {
        return Err(err(
            code::INVALID_ENVIRONMENT,
            format!("{k} is not valid UTF-8"),
        ));
    }
    let command = Command::parse(&env.command)?;
    if command == Command::Version {
        let asked = if stdin.iter().all(u8::is_ascii_whitespace) {
            String::new()
        } else {
            peek_version(stdin)?.1
        };
        let shown = if SUPPORTED_VERSIONS.contains(&asked.as_str()) {
            asked
        } else {
            Version::V110.as_str().to_string()
        };
        return Ok(Some(
            json!({ "cniVersion": shown, "supportedVersions": SUPPORTED_VERSIONS }),
        ));
    }
    let (value, asked) = peek_version(stdin)?;
    let parsed = Version::parse(&asked)?;
    *version = asked;
    if parsed < command.since() {
        return Err(err(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{} needs cniVersion {} or later, the configuration says {}",
                env.command,
                command.since().as_str(),
                parsed.as_str()
            ),
        ));
    }
    let cfg = match Config::parse(value.clone(), env) {
        // DEL tears down what the record says; a value only ADD needs must
        // not stop it (a decode error or a bad version still does).
        Err(e)
            if command == Command::Del
                && matches!(e.code, code::INVALID_CONFIG | code::INVALID_ENVIRONMENT) =>
        {
            Config::parse_for_teardown(value)?
        }
        other => other?,
    };
    match command {
        Command::Add => add(&cfg, env, stdin).map(Some),
        Command::Del => del(&cfg, env, stdin).map(|()| None),
        Command::Check => check(&cfg, env, stdin).map(|()| None),
        Command::Status => status(&cfg, env).map(|()| None),
        Command::Gc => gc(&cfg, env, stdin).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

fn kernel(e: macvtap_net::Error) -> CniError {
    match e {
        macvtap_net::Error::NetnsMissing(_) => err(code::UNKNOWN_CONTAINER, e.to_string()),
        macvtap_net::Error::NotANetns(_) => {
            err(code::INVALID_ENVIRONMENT, format!("CNI_NETNS: {e}"))
        }
        macvtap_net::Error::TapDevice { .. } | macvtap_net::Error::DeviceNode { .. } => {
            err(code::DEVICE_NODE, e.to_string())
        }
        _ => err(code::KERNEL, e.to_string()),
    }
}

/// Open a netlink socket inside `ns`. The plugin is a single-threaded
/// process, so it enters namespaces on its own thread for a moment
/// ([`NetNs::run_here`]) instead of paying for a helper thread.
fn netlink_in(ns: &NetNs) -> Result<Netlink> {
    ns.run_here(Netlink::open).map_err(kernel)?.map_err(kernel)
}

/// A pod's namespace as ADD and CHECK use it: a netlink socket and a sysfs
/// view, both made inside it in one visit and usable from here after.
struct Pod {
    ns: NetNs,
    nl: Netlink,
    sysfs: Option<SysfsView>,
}

impl Pod {
    fn open(path: &str) -> Result<Pod> {
        let ns = NetNs::open(path).map_err(kernel)?;
        let (nl, sysfs) = ns
            .run_here(|| (Netlink::open(), SysfsView::here().ok()))
            .map_err(kernel)?;
        Ok(Pod {
            nl: nl.map_err(kernel)?,
            sysfs,
            ns,
        })
    }

    /// The tap device number of the pod's macvtap, from sysfs as the pod
    /// sees it.
    fn tap_device_number(&self, ifname: &str, ifindex: u32) -> Result<DeviceNumber> {
        match &self.sysfs {
            Some(view) => view.tap_device_number(ifname, ifindex).map_err(kernel),
            // Old kernels: a private mount namespace, on a disposable thread.
            None => self
                .ns
                .run(|| tap_device_number(ifname, ifindex))
                .map_err(kernel)?
                .map_err(kernel),
        }
    }
}

/// Where the macvtap comes from and where its node goes, fully resolved.
struct Target {
    lower: String,
    mode: MacvtapMode,
    source_macs: Vec<MacAddr>,
    ifindex: Option<u32>,
    node_path: PathBuf,
    device: Option<ResolvedDevice>,
}

impl Target {
    fn resolve(cfg: &Config, container_id: &str, ifname: &str) -> Result<Self> {
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
                node_path: cfg.state.standalone_node_path(container_id, ifname),
                device: None,
            }),
            Source::Device(id) => {
                let node = cfg.state.load_config()?;
                node.validate()?;
                let dev = node.resolve(&cfg.state, id)?;
                let mode = dev.resource.mode.parse().map_err(|e: String| {
                    err(
                        code::DEVICE_NOT_OFFERED,
                        format!("resource {:?}: {e}", dev.resource.name),
                    )
                })?;
                Ok(Target {
                    lower: dev.resource.lower_device.clone(),
                    mode,
                    source_macs: Vec::new(),
                    ifindex: Some(dev.ifindex),
                    node_path: dev.node_path.clone(),
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
}

/// What ADD has done so far, to undo in reverse on failure.
#[derive(Default)]
struct Undo {
    /// The link in the pod, and for `attach: host` the name to move it back to.
    link: Option<(u32, Option<String>)>,
    node: Option<PathBuf>,
    record: bool,
    ipam: bool,
    /// The deviceID this ADD claimed.
    claim: Option<String>,
}

fn add(cfg: &Config, env: &Env, stdin: &[u8]) -> Result<Value> {
    let container_id = env.require_container_id()?;
    let ifname = env.require_ifname()?;
    let netns_path = env.require_netns()?;
    let mut pod = Pod::open(netns_path)?;
    let ipam = cfg
        .ipam
        .as_ref()
        .map(|i| Ipam::new(&i.plugin, &env.path, stdin));
    if let Some(ipam) = &ipam {
        ipam.find()?; // fail before touching anything
    }
    let _lock = cfg.state.lock()?;
    let target = Target::resolve(cfg, container_id, ifname)?;
    if target.attach() == Attach::Host && pod.nl.link_by_name(ifname).map_err(kernel)?.is_some() {
        // (For attach: pod the kernel's EEXIST on create says the same.)
        return Err(err(
            code::INTERFACE_EXISTS,
            format!("interface {ifname:?} already exists in {netns_path}"),
        ));
    }
    let mut host_nl = Netlink::open().map_err(kernel)?;
    let mut undo = Undo::default();
    let attached = attach(
        cfg,
        env,
        &target,
        &mut pod,
        &mut host_nl,
        &mut undo,
        ipam.as_ref(),
    );
    match attached {
        Ok(result) => Ok(result),
        Err(e) => {
            rollback(cfg, env, &mut pod, undo, ipam.as_ref());
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn attach(
    cfg: &Config,
    env: &Env,
    target: &Target,
    pod: &mut Pod,
    host_nl: &mut Netlink,
    undo: &mut Undo,
    ipam: Option<&Ipam<'_>>,
) -> Result<Value> {
    let ifname = env.ifname.as_str();
    if let Some(dev) = &target.device {
        claim_device(cfg, env, &dev.device_id)?;
        undo.claim = Some(dev.device_id.clone());
    }
    // attach: host whose link is gone (a reboot, a re-created sandbox: the
    // kubelet reuses its checkpointed allocation without calling Allocate,
    // and the moved link died with the old pod) is served like attach: pod,
    // from resources.json alone, as DESIGN.md's reboot rule asks.
    let host_name = target.device.as_ref().map(ResolvedDevice::host_link_name);
    let host_link = match (target.attach(), &host_name) {
        (Attach::Host, Some(name)) => host_nl.link_by_name(name).map_err(kernel)?,
        _ => None,
    };
    match host_link {
        None => {
            let lower_nl = if cfg.link_in_container {
                &mut pod.nl
            } else {
                &mut *host_nl
            };
            let where_ = if cfg.link_in_container {
                "the pod's namespace"
            } else {
                "the host namespace"
            };
            let lower = lower_nl
                .link_by_name(&target.lower)
                .map_err(kernel)?
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
                mac: cfg.mac,
                mtu: cfg.mtu,
                promisc: cfg.promisc,
                up: true,
                ifindex: target.ifindex,
                netns_fd: (!cfg.link_in_container).then(|| pod.ns.raw_fd()),
            };
            let created = lower_nl.create_macvtap(&spec);
            if let Err(e) = created {
                // EEXIST is the name, or (when we asked for one) the ifindex.
                let name_taken = e.errno() == Some(libc::EEXIST)
                    && pod.nl.link_by_name(ifname).map_err(kernel)?.is_some();
                return Err(match (e.errno(), spec.ifindex) {
                    (Some(libc::EEXIST), _) if name_taken => err(
                        code::INTERFACE_EXISTS,
                        format!("interface {ifname:?} already exists in the pod"),
                    ),
                    (Some(libc::EEXIST | libc::EBUSY), Some(index)) => err(
                        code::KERNEL,
                        format!(
                            "ifindex {index} promised for this device is already taken in the pod"
                        ),
                    ),
                    _ => kernel(e),
                });
            }
        }
        Some(link) => {
            let name = host_name.unwrap_or_default();
            let lower = host_nl
                .link_by_name(&target.lower)
                .map_err(kernel)?
                .map(|l| l.index);
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
            host_nl
                .move_link(link.index, pod.ns.raw_fd(), ifname)
                .map_err(kernel)?;
            let moved = pod.nl.link_by_name(ifname).map_err(kernel)?;
            let moved = moved.ok_or_else(|| err(code::KERNEL, "the moved link vanished"))?;
            undo.link = Some((moved.index, Some(name)));
            pod.nl
                .configure_link(moved.index, cfg.mac, cfg.mtu, Some(cfg.promisc), Some(true))
                .map_err(kernel)?;
        }
    }
    let link = pod
        .nl
        .link_by_name(ifname)
        .map_err(kernel)?
        .ok_or_else(|| {
            err(
                code::KERNEL,
                format!("interface {ifname:?} vanished right after it was made"),
            )
        })?;
    if undo.link.is_none() {
        undo.link = Some((link.index, None));
    }

    let dev = pod.tap_device_number(ifname, link.index)?;
    if let Some(dir) = target.node_path.parent() {
        cfg.state.ensure_dir(dir)?;
    }
    make_device_node(&target.node_path, dev, cfg.owner, cfg.group).map_err(kernel)?;
    undo.node = Some(target.node_path.clone());

    let mac = link.mac.map(|m| m.to_string()).unwrap_or_default();
    let record = AttachmentRecord {
        network: cfg.name.clone(),
        container_id: env.container_id.clone(),
        ifname: ifname.to_string(),
        netns: env.netns.clone(),
        ifindex: link.index,
        device_id: target.device.as_ref().map(|d| d.device_id.clone()),
        node_path: target.node_path.clone(),
        node_identity: NodeIdentity::of(&target.node_path).ok(),
        mac: mac.clone(),
    };
    undo.record = true;
    cfg.state.save_record(&record)?;

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
    if let Some(ipam) = ipam {
        undo.ipam = true;
        let out = ipam
            .exec("ADD", &[])?
            .ok_or_else(|| err(code::IPAM_EXEC, "IPAM plugin printed no result"))?;
        let mut leased = CniResult::parse(&out)?;
        if leased.ips.is_empty() {
            return Err(err(code::IPAM_EXEC, "IPAM plugin returned no addresses"));
        }
        for ip in &mut leased.ips {
            ip.interface = Some(our_index);
        }
        configure_addresses(&mut pod.nl, &link, &leased)?;
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

/// Put the IPAM result on the interface: addresses, then routes (a route
/// without a gateway uses its family's gateway, as the reference plugins do).
fn configure_addresses(nl: &mut Netlink, link: &Link, leased: &CniResult) -> Result<()> {
    for ip in &leased.ips {
        nl.add_address(link.index, ip.address, ip.prefix_len)
            .map_err(kernel)?;
    }
    for route in &leased.routes {
        let dst = route.get("dst").and_then(Value::as_str).unwrap_or_default();
        let (dst_ip, len) = crate::spec::parse_cidr(dst)
            .ok_or_else(|| err(code::IPAM_EXEC, format!("IPAM route with bad dst {dst:?}")))?;
        let gw: Option<IpAddr> = match route.get("gw").and_then(Value::as_str) {
            Some(g) if !g.is_empty() => Some(
                g.parse()
                    .map_err(|_| err(code::IPAM_EXEC, format!("IPAM route with bad gw {g:?}")))?,
            ),
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
            other => other.map_err(kernel)?,
        }
    }
    Ok(())
}

/// A device-plugin device serves one pod at a time: refuse it while
/// another attachment whose namespace still exists holds it. (The kubelet
/// hands a device to one pod; a network configuration that names a deviceID
/// itself must not take it from the pod that was given it.)
fn claim_device(cfg: &Config, env: &Env, device_id: &str) -> Result<()> {
    if let Some(held) = cfg.state.load_claim(device_id) {
        let other = held.container_id != env.container_id || held.ifname != env.ifname;
        let alive = other
            && NetNs::open(&held.netns).is_ok()
            && cfg
                .state
                .load_record(&held.container_id, &held.ifname)
                .ok()
                .flatten()
                .is_some();
        if alive {
            return Err(err(
                code::DEVICE_NOT_OFFERED,
                format!(
                    "device {device_id:?} is attached to container {} ({}) in {}",
                    held.container_id, held.ifname, held.netns
                ),
            ));
        }
    }
    let claim = macvtap_state::Claim {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: env.netns.clone(),
    };
    cfg.state.save_claim(device_id, &claim)?;
    Ok(())
}

fn rollback(cfg: &Config, env: &Env, pod: &mut Pod, undo: Undo, ipam: Option<&Ipam<'_>>) {
    if undo.ipam {
        if let Some(ipam) = ipam {
            let _ = ipam.exec("DEL", &[]);
        }
    }
    if let Some(id) = &undo.claim {
        let _ = cfg.state.release_claim(id, &env.container_id, &env.ifname);
    }
    if undo.record {
        let _ = cfg.state.remove_record(&env.container_id, &env.ifname);
    }
    if let Some(node) = &undo.node {
        let _ = remove_file_if_exists(node);
        if let Some(dir) = node.parent() {
            let _ = std::fs::remove_dir(dir); // the pod's dir, if we made it empty
        }
    }
    match undo.link {
        Some((index, None)) => {
            let _ = pod.nl.delete_link(index);
        }
        Some((index, Some(host_name))) => {
            // The device plugin's link: give it back as it was.
            if let Ok(host) = NetNs::current() {
                let _ = pod.nl.configure_link(index, None, None, None, Some(false));
                let _ = pod.nl.move_link(index, host.raw_fd(), &host_name);
            }
        }
        None => {}
    }
}

fn del(cfg: &Config, env: &Env, stdin: &[u8]) -> Result<()> {
    let container_id = env.require_container_id()?;
    let ifname = env.require_ifname()?;
    let _lock = cfg.state.lock()?;
    let mut errors: Vec<CniError> = Vec::new();
    let record = match cfg.state.load_record(container_id, ifname) {
        Ok(record) => record,
        // Unreadable (a crash mid-write, a full disk): nothing in it can be
        // trusted to name a link, so it only goes; IPAM is still released.
        Err(macvtap_state::Error::Corrupt { path, source }) => {
            eprintln!(
                "macvtap: DEL: ignoring unreadable record {}: {source}",
                path.display()
            );
            let _ = remove_file_if_exists(&path);
            None
        }
        Err(e) => {
            errors.push(e.into());
            None
        }
    };
    if let Some(record) = &record {
        let netns = if env.netns.is_empty() {
            &record.netns
        } else {
            &env.netns
        };
        if let Err(e) = remove_link(netns, record) {
            errors.push(e);
        }
        if let Err(e) = record.remove_node() {
            errors.push(e.into());
        }
        if let Some(id) = &record.device_id {
            if let Err(e) = cfg.state.release_claim(id, container_id, ifname) {
                errors.push(e.into());
            }
        }
    }
    if let Some(i) = &cfg.ipam {
        let ipam = Ipam::new(&i.plugin, &env.path, stdin);
        if let Err(e) = ipam.exec("DEL", &[]) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        cfg.state.remove_record(container_id, ifname)?;
    }
    combine(errors)
}

/// Delete the attachment's link if it is still the one the record names.
/// A namespace that is gone took the link with it.
fn remove_link(netns: &str, record: &AttachmentRecord) -> Result<()> {
    let pod = match NetNs::open(netns) {
        Ok(pod) => pod,
        Err(macvtap_net::Error::NetnsMissing(_) | macvtap_net::Error::NotANetns(_)) => {
            return Ok(())
        }
        Err(e) => return Err(kernel(e)),
    };
    let mut nl = netlink_in(&pod)?;
    let Some(link) = nl.link_by_name(&record.ifname).map_err(kernel)? else {
        return Ok(());
    };
    if link.index != record.ifindex || link.kind.as_deref() != Some("macvtap") {
        return Ok(()); // not ours: never touch it
    }
    match nl.delete_link(link.index) {
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
        other => other.map_err(kernel),
    }
}

/// One error for many: the first one's code, every message.
fn combine(errors: Vec<CniError>) -> Result<()> {
    let mut iter = errors.into_iter();
    let Some(mut first) = iter.next() else {
        return Ok(());
    };
    for e in iter {
        first.msg = format!("{}; {}", first.msg, e.msg);
    }
    Err(first)
}

fn check(cfg: &Config, env: &Env, stdin: &[u8]) -> Result<()> {
    let container_id = env.require_container_id()?;
    let ifname = env.require_ifname()?;
    let mut pod = Pod::open(env.require_netns()?)?;
    let prev = cfg
        .prev_result
        .as_ref()
        .ok_or_else(|| err(code::INVALID_CONFIG, "CHECK needs prevResult"))?;
    let prev = CniResult::parse(prev)?;
    let differs = |m: String| err(code::CHECK_FAILED, m);

    let link = pod
        .nl
        .link_by_name(ifname)
        .map_err(kernel)?
        .ok_or_else(|| {
            differs(format!(
                "interface {ifname:?} does not exist in {}",
                env.netns
            ))
        })?;
    if link.kind.as_deref() != Some("macvtap") {
        return Err(differs(format!(
            "{ifname:?} is a {} link, not a macvtap",
            link.kind.as_deref().unwrap_or("physical")
        )));
    }
    let target = Target::resolve(cfg, container_id, ifname)?;
    if link.macvtap_mode != Some(target.mode) {
        return Err(differs(format!(
            "{ifname:?} is in mode {:?}, the configuration says {}",
            link.macvtap_mode, target.mode
        )));
    }
    let (index, iface) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == ifname && i.sandbox.as_deref().is_none_or(|s| s == env.netns))
        .ok_or_else(|| {
            differs(format!(
                "prevResult has no interface {ifname:?} in {}",
                env.netns
            ))
        })?;
    let link_mac = link.mac.map(|m| m.to_string()).unwrap_or_default();
    if let Some(mac) = &iface.mac {
        if !mac.eq_ignore_ascii_case(&link_mac) {
            return Err(differs(format!(
                "{ifname:?} has MAC {link_mac}, prevResult says {mac}"
            )));
        }
    }
    if let Some(mac) = cfg.mac {
        if mac != link.mac.unwrap_or(MacAddr([0; 6])) {
            return Err(differs(format!(
                "{ifname:?} has MAC {link_mac}, the configuration says {mac}"
            )));
        }
    }
    if let Some(mtu) = cfg.mtu {
        if link.mtu != mtu {
            return Err(differs(format!(
                "{ifname:?} has MTU {}, the configuration says {mtu}",
                link.mtu
            )));
        }
    }
    if !link.up {
        return Err(differs(format!("{ifname:?} is down")));
    }
    if link.promisc != cfg.promisc {
        return Err(differs(format!(
            "{ifname:?} promiscuous mode is {}, the configuration says {}",
            link.promisc, cfg.promisc
        )));
    }
    let have = pod.nl.addresses(link.index).map_err(kernel)?;
    for ip in prev.ips.iter().filter(|ip| ip.interface == Some(index)) {
        if !have.contains(&(ip.address, ip.prefix_len)) {
            return Err(differs(format!(
                "{ifname:?} lacks address {}/{}",
                ip.address, ip.prefix_len
            )));
        }
    }
    let record = cfg
        .state
        .load_record(container_id, ifname)?
        .ok_or_else(|| {
            differs(format!(
                "no record of attachment {container_id}/{ifname} in {}",
                cfg.state.root().display()
            ))
        })?;
    if record.ifindex != link.index {
        return Err(differs(format!(
            "{ifname:?} has ifindex {}, but this plugin made ifindex {}",
            link.index, record.ifindex
        )));
    }
    check_node(&pod, ifname, &link, &record.node_path, cfg)?;
    if let Some(i) = &cfg.ipam {
        Ipam::new(&i.plugin, &env.path, stdin).exec("CHECK", &[])?;
    }
    Ok(())
}

fn check_node(pod: &Pod, ifname: &str, link: &Link, node: &Path, cfg: &Config) -> Result<()> {
    let differs = |m: String| err(code::CHECK_FAILED, m);
    let want = pod.tap_device_number(ifname, link.index)?;
    let info = NodeInfo::stat(node)
        .map_err(|e| differs(format!("device node {}: {e}", node.display())))?;
    if !info.is_char_device || info.dev != want {
        return Err(differs(format!(
            "device node {} is not char device {want}",
            node.display()
        )));
    }
    if (info.uid, info.gid, info.mode) != (cfg.owner, cfg.group, 0o660) {
        return Err(differs(format!(
            "device node {} is {}:{} mode {:o}, want {}:{} mode 660",
            node.display(),
            info.uid,
            info.gid,
            info.mode,
            cfg.owner,
            cfg.group
        )));
    }
    Ok(())
}

fn status(cfg: &Config, env: &Env) -> Result<()> {
    let unavailable = |m: String| err(code::NOT_AVAILABLE, m);
    drop(
        cfg.state
            .lock()
            .map_err(|e| unavailable(format!("state directory: {e}")))?,
    );
    match &cfg.source {
        Source::Lower { device, .. } if !cfg.link_in_container => {
            let mut nl = Netlink::open().map_err(kernel)?;
            if nl.link_by_name(device).map_err(kernel)?.is_none() {
                return Err(unavailable(format!(
                    "lower device {device:?} does not exist"
                )));
            }
        }
        Source::Device(id) => {
            let node = cfg
                .state
                .load_config()
                .map_err(|e| unavailable(e.to_string()))?;
            node.validate().map_err(|e| unavailable(e.to_string()))?;
            node.resolve(&cfg.state, id)
                .map_err(|e| unavailable(e.to_string()))?;
        }
        Source::Lower { .. } => {}
    }
    if let Some(i) = &cfg.ipam {
        Ipam::new(&i.plugin, &env.path, &[])
            .find()
            .map_err(|e| unavailable(e.msg))?;
    }
    Ok(())
}

fn gc(cfg: &Config, env: &Env, stdin: &[u8]) -> Result<()> {
    // Without the list, "nothing is valid" would remove every attachment
    // of the network on the node: refuse instead.
    let valid = cfg.valid_attachments.clone().ok_or_else(|| {
        err(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments (an empty list removes all)",
        )
    })?;
    let _lock = cfg.state.lock()?;
    let mut errors = Vec::new();
    for record in cfg.state.records()? {
        let keep = record.network != cfg.name
            || valid
                .iter()
                .any(|v| v.container_id == record.container_id && v.ifname == record.ifname);
        if keep {
            continue;
        }
        let mut failed = false;
        if let Err(e) = remove_link(&record.netns, &record) {
            errors.push(e);
            failed = true;
        }
        if let Err(e) = record.remove_node() {
            errors.push(e.into());
            failed = true;
        }
        if let Some(id) = &record.device_id {
            let _ = cfg
                .state
                .release_claim(id, &record.container_id, &record.ifname);
        }
        if let Some(i) = &cfg.ipam {
            let ipam = Ipam::new(&i.plugin, &env.path, stdin);
            let overrides = [
                ("CNI_CONTAINERID", record.container_id.as_str()),
                ("CNI_IFNAME", record.ifname.as_str()),
                ("CNI_NETNS", record.netns.as_str()),
            ];
            if let Err(e) = ipam.exec("DEL", &overrides) {
                errors.push(e);
                failed = true;
            }
        }
        if !failed {
            if let Err(e) = cfg
                .state
                .remove_record(&record.container_id, &record.ifname)
            {
                errors.push(e.into());
            }
        }
    }
    combine(errors)
}
