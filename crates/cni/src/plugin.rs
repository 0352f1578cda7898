//! The commands: ADD, DEL, CHECK, VERSION, STATUS, GC.

use std::net::IpAddr;

use macvtap_net::{
    tap_device_number, DeviceNumber, Link, MacAddr, MacvtapMode, MacvtapSpec, NetNs, Netlink,
    RouteSpec, SysfsView,
};
use macvtap_state::{
    Attach, AttachmentRecord, Claim, NodeIdentity, NodePolicy, NodeRef, Phase, PodRef,
    ResolvedDevice, StateDir,
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
    if std::env::var_os(crate::ipam::DELEGATED_ENV).is_some() {
        return Err(err(
            code::INVALID_CONFIG,
            "this plugin was run as an IPAM plugin by itself: its ipam type names macvtap, not an IPAM plugin",
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
    let policy = NodePolicy::load()?;
    let cfg = match Config::parse(value.clone(), env, &policy) {
        // DEL tears down what the record says; a value only ADD needs must
        // not stop it (a decode error or a bad version still does).
        Err(e)
            if command == Command::Del
                && matches!(e.code, code::INVALID_CONFIG | code::INVALID_ENVIRONMENT) =>
        {
            Config::parse_for_teardown(value, &policy)?
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
            Source::Device(id) => {
                let node = state.load_config()?;
                node.validate()?;
                let dev = node.resolve(state.root(), id)?;
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

/// What ADD has done so far, to undo in reverse on failure.
#[derive(Default)]
struct Undo {
    /// The link in the pod, and for `attach: host` the name to move it back to.
    link: Option<(u32, Option<String>)>,
    /// The device node this ADD made, by identity.
    node: Option<NodeIdentity>,
    /// The intent or the record of this attachment.
    record: bool,
    ipam: bool,
    /// The deviceID this ADD claimed.
    claim: Option<String>,
}

/// A random locally administered unicast MAC: chosen before the link is
/// made, so that the intent record names the link an interrupted ADD made.
fn random_mac() -> MacAddr {
    let hex = macvtap_state::random_hex(6);
    let mut bytes = [0u8; 6];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    bytes[0] = (bytes[0] & 0xfe) | 0x02;
    MacAddr(bytes)
}

/// The pod the runtime says this is (CNI_ARGS `K8S_POD_NAMESPACE`/`K8S_POD_NAME`).
fn pod_of(env: &Env) -> Option<PodRef> {
    let args = env.parsed_args().ok()?;
    let get = |k: &str| {
        args.iter()
            .rev()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
    };
    Some(PodRef {
        namespace: get("K8S_POD_NAMESPACE")?,
        name: get("K8S_POD_NAME")?,
    })
}

/// Refuse an IPAM binary that is this plugin under another name: it would
/// wait for the lock of the container this invocation holds.
fn refuse_self_as_ipam(ipam: &Ipam<'_>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let found = ipam.find()?;
    let (Ok(theirs), Ok(ours)) = (
        std::fs::metadata(&found),
        std::env::current_exe().and_then(std::fs::metadata),
    ) else {
        return Ok(());
    };
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Err(err(
            code::INVALID_CONFIG,
            format!(
                "IPAM plugin {} is this plugin itself, not an IPAM plugin",
                found.display()
            ),
        ));
    }
    Ok(())
}

fn add(cfg: &Config, env: &Env, stdin: &[u8]) -> Result<Value> {
    let container_id = env.require_container_id()?;
    env.require_ifname()?;
    let netns_path = env.require_netns()?;
    let mut pod = Pod::open(netns_path)?;
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
    let mut undo = Undo::default();
    let result = add_locked(cfg, env, &state, &mut pod, &mut undo, ipam.as_ref());
    match result {
        Ok(value) => {
            drop(container);
            Ok(value)
        }
        Err(e) => {
            let failures = rollback(cfg, env, &state, &mut pod, undo, ipam.as_ref());
            state.finish_container(container);
            Err(with_failures(e, "rolling back", failures))
        }
    }
}

/// Add what went wrong while undoing to `e`'s details, and say it on
/// stderr: a rollback that failed leaves something behind, and whoever
/// reads the error must know what.
fn with_failures(mut e: CniError, doing: &str, failures: Vec<CniError>) -> CniError {
    if failures.is_empty() {
        return e;
    }
    let list: Vec<String> = failures.iter().map(ToString::to_string).collect();
    let text = format!("while {doing}: {}", list.join("; "));
    eprintln!("macvtap: {}", crate::error::escape_controls(&text));
    e.details = if e.details.is_empty() {
        text
    } else {
        format!("{}; {text}", e.details)
    };
    e
}

fn add_locked(
    cfg: &Config,
    env: &Env,
    state: &StateDir,
    pod: &mut Pod,
    undo: &mut Undo,
    ipam: Option<&Ipam<'_>>,
) -> Result<Value> {
    let ifname = env.ifname.as_str();
    let netns_id = pod.ns.identity().map_err(kernel)?;
    // What an interrupted ADD of this attachment left (a kill -9 between
    // any two steps) goes first, so that a retried ADD succeeds.
    if let Some(old) = load_record_or_drop(state, &env.container_id, ifname)? {
        let link_there = record_link(&old, Some(&*pod)).map_err(|e| e.0)?.is_some();
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
        let failures = teardown(state, &old, Some(&*pod));
        if let Some(e) = failures.into_iter().next() {
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
    let mut host_nl = Netlink::open().map_err(kernel)?;
    // attach: host whose link is gone (a reboot, a re-created sandbox: the
    // kubelet reuses its checkpointed allocation without calling Allocate,
    // and the moved link died with the old pod) is served like attach: pod,
    // from resources.json alone, as DESIGN.md's reboot rule asks.
    let host_name = target.device.as_ref().map(ResolvedDevice::host_link_name);
    let host_link = match (target.attach(), &host_name) {
        (Attach::Host, Some(name)) => host_nl.link_by_name(name).map_err(kernel)?,
        _ => None,
    };
    let mac = match (cfg.mac, &host_link) {
        (Some(mac), _) => mac,
        (None, Some(link)) => link.mac.unwrap_or_else(random_mac),
        (None, None) => random_mac(),
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
    state.save_record(&record)?;
    if let Some(dev) = &target.device {
        undo.claim = Some(dev.device_id.clone());
        claim_device(state, env, netns_id, dev)?;
    }
    if target.attach() == Attach::Host && pod.nl.link_by_name(ifname).map_err(kernel)?.is_some() {
        // (For attach: pod the kernel's EEXIST on create says the same.)
        return Err(err(
            code::INTERFACE_EXISTS,
            format!("interface {ifname:?} already exists in {}", env.netns),
        ));
    }

    match host_link {
        None => create_link(cfg, &target, pod, &mut host_nl, mac, ifname)?,
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
                .configure_link(
                    moved.index,
                    Some(mac),
                    cfg.mtu,
                    Some(cfg.promisc),
                    Some(true),
                )
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
    let identity = state.make_node(target.node(env), dev.major, dev.minor, cfg.owner, cfg.group)?;
    undo.node = Some(identity);

    let mac = link.mac.map(|m| m.to_string()).unwrap_or_default();
    record.phase = Phase::Attached;
    record.ifindex = link.index;
    record.node_identity = Some(identity);
    record.mac = mac.clone();
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

/// Create the macvtap: in the pod directly, or in the pod's namespace on a
/// lower device that lives there (`linkInContainer`).
fn create_link(
    cfg: &Config,
    target: &Target,
    pod: &mut Pod,
    host_nl: &mut Netlink,
    mac: MacAddr,
    ifname: &str,
) -> Result<()> {
    let (lower_nl, where_) = if cfg.link_in_container {
        (&mut pod.nl, "the pod's namespace")
    } else {
        (&mut *host_nl, "the host namespace")
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
        mac: Some(mac),
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
                format!("ifindex {index} promised for this device is already taken in the pod"),
            ),
            _ => kernel(e),
        });
    }
    Ok(())
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
    pod: &mut Pod,
    undo: Undo,
    ipam: Option<&Ipam<'_>>,
) -> Vec<CniError> {
    let mut failures = Vec::new();
    if undo.ipam {
        if let Some(ipam) = ipam {
            if let Err(e) = ipam.exec("DEL", &[]) {
                failures.push(e);
            }
        }
    }
    let _node_lock = match undo.claim.is_some() {
        true => match state.lock(cfg.policy.lock_timeout) {
            Ok(lock) => Some(lock),
            Err(e) => {
                failures.push(e.into());
                None
            }
        },
        false => None,
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
        if let Err(e) = state.remove_node(node, Some(made)) {
            failures.push(e.into());
        }
    }
    match undo.link {
        Some((index, None)) => match pod.nl.delete_link(index) {
            Err(e) if e.errno() != Some(libc::ENODEV) => failures.push(kernel(e)),
            _ => {}
        },
        Some((index, Some(host_name))) => {
            // The device plugin's link: give it back as it was.
            let back = NetNs::current().and_then(|host| {
                pod.nl
                    .configure_link(index, None, None, None, Some(false))?;
                pod.nl.move_link(index, host.raw_fd(), &host_name)
            });
            if let Err(e) = back {
                failures.push(kernel(e));
            }
        }
        None => {}
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

/// The record of an attachment; an unreadable or invalid one names nothing
/// that can be trusted, so it only goes (IPAM is still released by DEL).
fn load_record_or_drop(
    state: &StateDir,
    container_id: &str,
    ifname: &str,
) -> Result<Option<AttachmentRecord>> {
    match state.load_record(container_id, ifname) {
        Ok(record) => Ok(record),
        Err(
            e @ (macvtap_state::Error::Corrupt { .. } | macvtap_state::Error::BadRecord { .. }),
        ) => {
            eprintln!(
                "macvtap: ignoring unreadable record: {}",
                crate::error::escape_controls(&e.to_string())
            );
            state.remove_record(container_id, ifname)?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The IPAM plugin of a teardown (DEL, GC), unless it is this plugin: ADD
/// refused that configuration, so nothing was leased, and running it would
/// wait for the lock this invocation holds.
fn teardown_ipam<'a>(cfg: &'a Config, env: &'a Env, stdin: &'a [u8]) -> Option<Ipam<'a>> {
    let ipam = Ipam::new(&cfg.ipam.as_ref()?.plugin, &env.path, stdin);
    match refuse_self_as_ipam(&ipam) {
        Err(e) if e.code == code::INVALID_CONFIG => {
            eprintln!(
                "macvtap: not running the IPAM plugin: {}",
                crate::error::escape_controls(&e.msg)
            );
            None
        }
        _ => Some(ipam),
    }
}

fn del(cfg: &Config, env: &Env, stdin: &[u8]) -> Result<()> {
    let container_id = env.require_container_id()?;
    let ifname = env.require_ifname()?;
    let ipam = teardown_ipam(cfg, env, stdin);
    let state = StateDir::open(&cfg.policy.state_dir)?;
    let container = state.lock_container(container_id, cfg.policy.lock_timeout)?;
    let mut errors: Vec<CniError> = Vec::new();
    let record = match load_record_or_drop(&state, container_id, ifname) {
        Ok(record) => record,
        Err(e) => {
            errors.push(e);
            None
        }
    };
    if let Some(record) = &record {
        let _node_lock = match record.device_id {
            Some(_) => Some(state.lock(cfg.policy.lock_timeout)?),
            None => None,
        };
        let pod = if env.netns.is_empty() || env.netns == record.netns {
            None
        } else {
            // The runtime's CNI_NETNS wins over the recorded path.
            Pod::open(&env.netns).ok()
        };
        errors.extend(teardown(&state, record, pod.as_ref()));
    }
    if let Some(ipam) = &ipam {
        if let Err(e) = ipam.exec("DEL", &[]) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        state.remove_record(container_id, ifname)?;
        state.finish_container(container);
    }
    combine(errors)
}

/// Remove an attachment's link, node and claim (the node lock held for a
/// device), as its record says. Every failure is returned; teardown goes on.
fn teardown(state: &StateDir, record: &AttachmentRecord, pod: Option<&Pod>) -> Vec<CniError> {
    let mut errors = Vec::new();
    match record_link(record, pod) {
        Ok(Some((mut nl, index))) => match nl.delete_link(index) {
            Err(e) if e.errno() != Some(libc::ENODEV) => errors.push(kernel(e)),
            _ => {}
        },
        Ok(None) => {}
        Err(e) => errors.push(e.0),
    }
    // A device node is removed only if it is still the one this attachment
    // made (another pod may have the device now). An interrupted ADD's
    // intent does not know its node's identity: while this attachment
    // still holds the device's claim nobody else made a node there since,
    // so whatever is there goes.
    let remove = match (record.node(), record.node_identity) {
        (NodeRef::Device(id), None) => match state.load_claim(id) {
            Some(c) if c.container_id == record.container_id && c.ifname == record.ifname => {
                state.remove_node(NodeRef::Device(id), None)
            }
            _ => Ok(()),
        },
        (node, made) => state.remove_node(node, made),
    };
    if let Err(e) = remove {
        errors.push(e.into());
    }
    if let Some(id) = &record.device_id {
        if let Err(e) = state.release_claim(id, &record.container_id, &record.ifname) {
            errors.push(e.into());
        }
    }
    errors
}

/// An error while looking for a record's link.
struct LinkLookup(CniError);

/// The link a record names, in its namespace, if it is still there and
/// still the one this plugin made: same namespace (device and inode), same
/// name, a macvtap, and the recorded ifindex (or, for an intent whose
/// ifindex the kernel was to pick, the MAC chosen for it). Returns a netlink
/// socket in that namespace and the link's index.
fn record_link(
    record: &AttachmentRecord,
    pod: Option<&Pod>,
) -> std::result::Result<Option<(Netlink, u32)>, LinkLookup> {
    let opened;
    let ns = match pod {
        Some(pod) => &pod.ns,
        None => {
            opened = match NetNs::open(&record.netns) {
                Ok(ns) => ns,
                Err(macvtap_net::Error::NetnsMissing(_) | macvtap_net::Error::NotANetns(_)) => {
                    return Ok(None); // a namespace that is gone took the link with it
                }
                Err(e) => return Err(LinkLookup(kernel(e))),
            };
            &opened
        }
    };
    let (dev, ino) = ns.identity().map_err(|e| LinkLookup(kernel(e)))?;
    if !record.same_netns(dev, ino) {
        return Ok(None); // the path names another namespace now
    }
    let mut nl = netlink_in(ns).map_err(LinkLookup)?;
    let Some(link) = nl
        .link_by_name(&record.ifname)
        .map_err(|e| LinkLookup(kernel(e)))?
    else {
        return Ok(None);
    };
    let same = if record.ifindex != 0 {
        link.index == record.ifindex
    } else {
        link.mac.map(|m| m.to_string()).as_deref() == Some(record.mac.as_str())
    };
    if !same || link.kind.as_deref() != Some("macvtap") {
        return Ok(None); // not ours: never touch it
    }
    Ok(Some((nl, link.index)))
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
    let state = StateDir::open(&cfg.policy.state_dir)?;
    let target = Target::resolve(cfg, &state)?;
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
    let record = state.load_record(container_id, ifname)?.ok_or_else(|| {
        differs(format!(
            "no record of attachment {container_id}/{ifname} in {}",
            state.root().display()
        ))
    })?;
    if record.ifindex != link.index {
        return Err(differs(format!(
            "{ifname:?} has ifindex {}, but this plugin made ifindex {}",
            link.index, record.ifindex
        )));
    }
    check_node(&pod, ifname, &link, &state, record.node(), cfg)?;
    if let Some(i) = &cfg.ipam {
        let ipam = Ipam::new(&i.plugin, &env.path, stdin);
        refuse_self_as_ipam(&ipam)?;
        ipam.exec("CHECK", &[])?;
    }
    Ok(())
}

fn check_node(
    pod: &Pod,
    ifname: &str,
    link: &Link,
    state: &StateDir,
    node_ref: NodeRef<'_>,
    cfg: &Config,
) -> Result<()> {
    let differs = |m: String| err(code::CHECK_FAILED, m);
    let want = pod.tap_device_number(ifname, link.index)?;
    let node = state.node_path(node_ref);
    let info = state
        .node_stat(node_ref)
        .map_err(|e| differs(format!("device node {}: {e}", node.display())))?
        .ok_or_else(|| differs(format!("device node {} is missing", node.display())))?;
    if !info.is_char_device || (info.major, info.minor) != (want.major, want.minor) {
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
    let state = StateDir::open(&cfg.policy.state_dir)
        .map_err(|e| unavailable(format!("state directory: {e}")))?;
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
            let node = state
                .load_config()
                .map_err(|e| unavailable(e.to_string()))?;
            node.validate().map_err(|e| unavailable(e.to_string()))?;
            node.resolve(state.root(), id)
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
    let ipam = teardown_ipam(cfg, env, stdin);
    let state = StateDir::open(&cfg.policy.state_dir)?;
    let mut errors = Vec::new();
    for record in state.records()? {
        let keep = record.network != cfg.name
            || valid
                .iter()
                .any(|v| v.container_id == record.container_id && v.ifname == record.ifname);
        if keep {
            continue;
        }
        // An ADD or DEL of this container is running: it owns the record.
        let Some(container) = state.try_lock_container(&record.container_id)? else {
            continue;
        };
        let mut failed = Vec::new();
        {
            let _node_lock = match record.device_id {
                Some(_) => Some(state.lock(cfg.policy.lock_timeout)?),
                None => None,
            };
            failed.extend(teardown(&state, &record, None));
        }
        if let Some(ipam) = &ipam {
            let overrides = [
                ("CNI_CONTAINERID", record.container_id.as_str()),
                ("CNI_IFNAME", record.ifname.as_str()),
                ("CNI_NETNS", record.netns.as_str()),
            ];
            if let Err(e) = ipam.exec("DEL", &overrides) {
                failed.push(e);
            }
        }
        if failed.is_empty() {
            if let Err(e) = state.remove_record(&record.container_id, &record.ifname) {
                failed.push(e.into());
            }
            state.finish_container(container);
        }
        errors.extend(failed);
    }
    combine(errors)
}
