//! Capture, apply and undo.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use macvtap_net::inet::is_link_local_v6;
use macvtap_net::{
    DeviceNumber, Link, MacAddr, MacvtapMode, MacvtapSpec, NetNs, Netlink, SysfsView,
};

use crate::error::{Error, Result};
use crate::identity::{self, Dns, Identity};
use crate::store::{CniOwner, Made, Phase, Record, RecordKey, Store};

/// Which container: a namespace path (`/run/netns/X`, `/proc/PID/ns/net`),
/// a named namespace, or a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Path(PathBuf),
    Named(String),
    Pid(i32),
}

impl Target {
    /// Open the target's network namespace, with a clear error when it
    /// does not exist.
    pub fn open(&self) -> Result<NetNs> {
        match self {
            Target::Path(path) => NetNs::open(path).map_err(|source| Error::Netns { source }),
            Target::Named(name) => macvtap_net::named_netns_path(name)
                .and_then(NetNs::open)
                .map_err(|source| Error::Netns { source }),
            Target::Pid(pid) => {
                if *pid <= 0 {
                    return Err(Error::NoSuchProcess {
                        pid: *pid,
                        source: macvtap_net::Error::NetnsMissing(PathBuf::from(
                            "/proc/<pid>/ns/net",
                        )),
                    });
                }
                NetNs::open(format!("/proc/{pid}/ns/net")).map_err(|source| match source {
                    macvtap_net::Error::NetnsMissing(_) => {
                        Error::NoSuchProcess { pid: *pid, source }
                    }
                    source => Error::Netns { source },
                })
            }
        }
    }
}

/// Where DNS settings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvConf {
    /// No DNS settings are handed over.
    None,
    /// A resolv.conf path in the caller's view of the filesystem.
    Path(PathBuf),
    /// `path` resolved inside `root` (e.g. `/proc/<pid>/root`), as the
    /// container sees it: its symlinks cannot lead out of its root.
    InRoot { root: PathBuf, path: PathBuf },
    /// Settings the caller already has (a CNI `prevResult`'s `dns`).
    Given(Dns),
}

/// Steps of apply, for the test hook [`ApplyOptions::stop_after`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyStep {
    /// The record is durable; nothing else happened.
    Recorded,
    /// The macvtap exists; the interface still has its identity.
    MacvtapCreated,
    /// The routes are gone, the addresses still there.
    RoutesRemoved,
    /// The addresses are gone too; the record still says `intent`.
    AddressesRemoved,
}

impl ApplyStep {
    pub const ALL: [ApplyStep; 4] = [
        ApplyStep::Recorded,
        ApplyStep::MacvtapCreated,
        ApplyStep::RoutesRemoved,
        ApplyStep::AddressesRemoved,
    ];
}

/// What to hand over and how.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// The container interface (the macvtap's lower device).
    pub interface: String,
    pub resolv_conf: ResolvConf,
    /// The guest's MAC; generated (locally administered unicast) if None.
    pub mac: Option<MacAddr>,
    pub mode: MacvtapMode,
    /// The macvtap's name; `hvtap<ifindex of the interface>` if None.
    pub macvtap_name: Option<String>,
    /// Test hook: stop right after this step as if the process had been
    /// killed there (no rollback, the record stays), returning
    /// [`Error::StoppedByHook`].
    pub stop_after: Option<ApplyStep>,
    /// The CNI attachment making this handover (recorded; its DEL undoes).
    pub cni: Option<CniOwner>,
}

impl ApplyOptions {
    /// Bridge mode, generated MAC, no DNS.
    pub fn new(interface: impl Into<String>) -> Self {
        ApplyOptions {
            interface: interface.into(),
            resolv_conf: ResolvConf::None,
            mac: None,
            mode: MacvtapMode::Bridge,
            macvtap_name: None,
            stop_after: None,
            cni: None,
        }
    }
}

/// A finished apply.
#[derive(Debug, Clone)]
pub struct Applied {
    pub record: Record,
    pub record_path: PathBuf,
    /// Wall time from opening the namespace's sockets to the final record.
    pub took: Duration,
}

/// What undo found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UndoOutcome {
    /// The identity is back on the interface and what was made is gone.
    Restored,
    /// No record: nothing was handed over (or it was undone already).
    NothingRecorded,
    /// The interface itself is gone (so is everything made on it); the
    /// record was removed.
    InterfaceGone,
}

/// A locally administered unicast MAC from the kernel's random source.
pub fn generate_mac() -> MacAddr {
    MacAddr::random_local()
}

fn check_mac(mac: MacAddr) -> Result<()> {
    if mac.0[0] & 1 == 1 || mac.0 == [0; 6] {
        return Err(Error::UnusableMac {
            mac: mac.to_string(),
        });
    }
    Ok(())
}

fn check_ifname(name: &str) -> Result<()> {
    match macvtap_state::invalid_ifname(name) {
        Some(why) => Err(Error::BadInterfaceName {
            name: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// The record key of `interface` in `netns`.
pub fn record_key(netns: &NetNs, interface: &str) -> Result<RecordKey> {
    check_ifname(interface)?;
    let (dev, ino) = netns.identity().map_err(|source| Error::Netns { source })?;
    Ok(RecordKey {
        netns_dev: dev,
        netns_ino: ino,
        interface: interface.to_string(),
    })
}

fn open_netlink(netns: &NetNs) -> Result<Netlink> {
    netns
        .run(Netlink::open)
        .map_err(Error::net("enter the container's namespace"))?
        .map_err(Error::net("open netlink in the container's namespace"))
}

fn find_interface(nl: &mut Netlink, netns: &NetNs, interface: &str) -> Result<Link> {
    let link = nl
        .link_by_name(interface)?
        .ok_or_else(|| Error::NoSuchInterface {
            ifname: interface.to_string(),
            netns: netns.path().to_path_buf(),
        })?;
    if link.loopback {
        return Err(Error::Loopback {
            ifname: interface.to_string(),
        });
    }
    Ok(link)
}

fn read_dns(source: &ResolvConf) -> Result<Dns> {
    match source {
        ResolvConf::None => Ok(Dns::default()),
        ResolvConf::Path(path) => identity::read_resolv_conf(path, None),
        ResolvConf::InRoot { root, path } => identity::read_resolv_conf(path, Some(root)),
        ResolvConf::Given(dns) => Ok(dns.clone()),
    }
}

fn capture_with(nl: &mut Netlink, link: &Link, dns: Dns) -> Result<Identity> {
    let addresses: Vec<_> = nl
        .address_details(link.index)?
        .into_iter()
        .filter(|a| !is_link_local_v6(&a.address))
        .collect();
    if !addresses.iter().any(|a| a.address.is_ipv4()) {
        return Err(Error::NoIpv4 {
            ifname: link.name.clone(),
        });
    }
    let routes = nl.route_details(link.index)?;
    Ok(Identity {
        interface: link.name.clone(),
        ifindex: link.index,
        mac: link.mac.unwrap_or(MacAddr([0; 6])),
        mtu: link.mtu,
        up: link.up,
        addresses,
        routes,
        dns,
    })
}

/// Capture the identity of `interface` in `netns` without changing anything.
pub fn capture(netns: &NetNs, interface: &str, resolv_conf: &ResolvConf) -> Result<Identity> {
    check_ifname(interface)?;
    let dns = read_dns(resolv_conf)?;
    let mut nl = open_netlink(netns)?;
    let link = find_interface(&mut nl, netns, interface)?;
    capture_with(&mut nl, &link, dns)
}

/// Hand `opts.interface` of `netns` over to a guest: capture its identity,
/// write the record durably, then make the macvtap and take the addresses
/// and routes off the interface (which stays up as the lower device).
///
/// Applying to an interface that already has a record is refused with
/// [`Error::AlreadyHandedOver`] (not idempotent: a second apply would
/// capture an interface that no longer has its identity). Any failure after
/// the record was written is rolled back from the record; bad input fails
/// before anything is changed.
pub fn apply(store: &Store, netns: &NetNs, opts: &ApplyOptions) -> Result<Applied> {
    let start = Instant::now();
    if let Some(mac) = opts.mac {
        check_mac(mac)?;
    }
    if let Some(name) = &opts.macvtap_name {
        check_ifname(name)?;
    }
    if opts.mode == MacvtapMode::Source {
        return Err(Error::Delivery(
            "source mode needs an allowed-sender list; a handover uses bridge, vepa, private or passthru".into(),
        ));
    }
    let key = record_key(netns, &opts.interface)?;
    let dns = read_dns(&opts.resolv_conf)?;
    let lock = store.lock(&key)?;
    let result = apply_locked(store, netns, opts, key, dns, start);
    store.unlock(lock);
    result
}

fn apply_locked(
    store: &Store,
    netns: &NetNs,
    opts: &ApplyOptions,
    key: RecordKey,
    dns: Dns,
    start: Instant,
) -> Result<Applied> {
    let record_path = store.record_path(&key);
    if store.load(&key)?.is_some() {
        return Err(Error::AlreadyHandedOver {
            ifname: opts.interface.clone(),
            netns: netns.path().to_path_buf(),
            record: record_path,
        });
    }
    let mut nl = open_netlink(netns)?;
    let link = find_interface(&mut nl, netns, &opts.interface)?;
    let identity = capture_with(&mut nl, &link, dns)?;
    let macvtap = opts
        .macvtap_name
        .clone()
        .unwrap_or_else(|| format!("hvtap{}", link.index));
    let shim = format!("hvshim{}", link.index);
    for name in [&macvtap, &shim] {
        if nl.link_by_name(name)?.is_some() {
            return Err(Error::NameTaken { name: name.clone() });
        }
    }
    let mut record = Record {
        version: 1,
        key,
        netns_path: netns.path().to_path_buf(),
        phase: Phase::Intent,
        identity,
        made: Made {
            macvtap,
            mac: opts.mac.unwrap_or_else(generate_mac),
            mode: opts.mode.as_str().to_string(),
            macvtap_index: None,
            shim,
            shim_mac: generate_mac(),
        },
        cni: opts.cni.clone(),
    };
    store.save(&record)?;
    let stop = |step| opts.stop_after == Some(step);
    if stop(ApplyStep::Recorded) {
        return Err(Error::StoppedByHook(ApplyStep::Recorded));
    }
    match change(netns, &mut nl, &mut record, opts) {
        Ok(()) => {}
        Err(Error::StoppedByHook(step)) => return Err(Error::StoppedByHook(step)),
        Err(e) => {
            return match restore(store, netns, &record) {
                Ok(_) => Err(e),
                Err(rollback) => Err(Error::RollbackFailed {
                    source: Box::new(e),
                    rollback: Box::new(rollback),
                }),
            }
        }
    }
    record.phase = Phase::Applied;
    store.save(&record)?;
    Ok(Applied {
        record,
        record_path,
        took: start.elapsed(),
    })
}

fn change(netns: &NetNs, nl: &mut Netlink, record: &mut Record, opts: &ApplyOptions) -> Result<()> {
    let stop = |step| {
        if opts.stop_after == Some(step) {
            Err(Error::StoppedByHook(step))
        } else {
            Ok(())
        }
    };
    let lower = record.identity.ifindex;
    let spec = MacvtapSpec {
        mode: opts.mode,
        mac: Some(record.made.mac),
        ..MacvtapSpec::new(&record.made.macvtap, lower)
    };
    let mut netlink = open_netlink(netns)?;
    netlink.create_macvtap(&spec).map_err(Error::net(format!(
        "create macvtap {}",
        record.made.macvtap
    )))?;
    // Until a guest opens its tap the container's own stack owns the
    // macvtap: it must not claim a link-local address with the guest's MAC.
    let made = nl
        .link_by_name(&record.made.macvtap)?
        .ok_or_else(|| Error::NoSuchInterface {
            ifname: record.made.macvtap.clone(),
            netns: netns.path().to_path_buf(),
        })?;
    record.made.macvtap_index = Some(made.index);
    nl.disable_ipv6_addresses(made.index)?;
    nl.configure_link(made.index, None, None, None, Some(true))?;
    stop(ApplyStep::MacvtapCreated)?;
    // Routes through a gateway first: they depend on the others.
    let mut routes = record.identity.routes.clone();
    routes.sort_by_key(|r| r.gateway.is_none());
    for route in &routes {
        nl.remove_route(lower, route)?;
    }
    stop(ApplyStep::RoutesRemoved)?;
    // IPv6 first, then IPv4 secondaries before the primaries (deleting a
    // primary would take its secondaries along or promote them).
    let mut addresses = record.identity.addresses.clone();
    addresses.sort_by_key(|a| (a.address.is_ipv4(), !a.is_secondary()));
    for addr in &addresses {
        nl.remove_address(lower, addr)?;
    }
    stop(ApplyStep::AddressesRemoved)?;
    // What the kernel still holds of the identity (routes it made itself and
    // has not dropped with the addresses) must go too.
    let left: Vec<_> = nl
        .address_details(lower)?
        .into_iter()
        .filter(|a| !is_link_local_v6(&a.address))
        .collect();
    for addr in &left {
        nl.remove_address(lower, addr)?;
    }
    for route in nl.route_details(lower)? {
        nl.remove_route(lower, &route)?;
    }
    Ok(())
}

/// Undo the handover of `interface` in `netns` from its record alone:
/// put back the recorded MTU, up state, addresses and routes, remove the
/// macvtap and the shim this handover made (and nothing else), then remove
/// the record. Safe to repeat, and safe after a crash at any step of apply.
pub fn undo(store: &Store, netns: &NetNs, interface: &str) -> Result<UndoOutcome> {
    let key = record_key(netns, interface)?;
    let lock = store.lock(&key)?;
    let result = (|| match store.load(&key)? {
        None => Ok(UndoOutcome::NothingRecorded),
        Some(record) => {
            let outcome = restore(store, netns, &record)?;
            Ok(outcome)
        }
    })();
    store.unlock(lock);
    result
}

/// Forget the record of a namespace that no longer exists (a CNI DEL after
/// the sandbox is gone): everything the handover made went with it.
pub fn forget(store: &Store, key: &RecordKey) -> Result<()> {
    let lock = store.lock(key)?;
    let result = store.remove(key);
    store.unlock(lock);
    result
}

fn restore(store: &Store, netns: &NetNs, record: &Record) -> Result<UndoOutcome> {
    let id = &record.identity;
    let record_path = store.record_path(&record.key);
    let mut nl = open_netlink(netns)?;
    let Some(lower) = nl.link_by_index(id.ifindex)? else {
        store.remove(&record.key)?;
        return Ok(UndoOutcome::InterfaceGone);
    };
    if lower.mac != Some(id.mac) {
        return Err(Error::RecordMismatch {
            path: record_path,
            why: format!(
                "interface #{} is {} with MAC {:?}, the record says {} with MAC {}",
                id.ifindex, lower.name, lower.mac, id.interface, id.mac
            ),
        });
    }
    let mtu = (lower.mtu != id.mtu).then_some(id.mtu);
    let up = (id.up && !lower.up).then_some(true);
    if mtu.is_some() || up.is_some() {
        nl.configure_link(id.ifindex, None, mtu, None, up)?;
    }
    let mut addresses = id.addresses.clone();
    // Primaries before secondaries, as they were made.
    addresses.sort_by_key(|a| (!a.address.is_ipv4(), a.is_secondary()));
    for addr in &addresses {
        nl.restore_address(id.ifindex, addr)?;
    }
    let mut routes = id.routes.clone();
    routes.sort_by_key(|r| r.gateway.is_some());
    for route in &routes {
        nl.restore_route(id.ifindex, route)?;
    }
    // Remove only what this handover made: same name, kind, lower and MAC.
    for (name, kind, mac) in [
        (&record.made.shim, "macvlan", record.made.shim_mac),
        (&record.made.macvtap, "macvtap", record.made.mac),
    ] {
        if let Some(link) = nl.link_by_name(name)? {
            let ours = link.kind.as_deref() == Some(kind)
                && link.lower_index == Some(id.ifindex)
                && link.mac == Some(mac);
            if ours {
                nl.remove_link(link.index)?;
            }
        }
    }
    let missing = missing_identity(&mut nl, id)?;
    if !missing.is_empty() {
        return Err(Error::RestoreIncomplete {
            ifname: id.interface.clone(),
            missing: missing.join(", "),
        });
    }
    store.remove(&record.key)?;
    Ok(UndoOutcome::Restored)
}

/// What of the recorded identity is not on the interface now.
fn missing_identity(nl: &mut Netlink, id: &Identity) -> Result<Vec<String>> {
    let now_addrs = nl.address_details(id.ifindex)?;
    let now_routes = nl.route_details(id.ifindex)?;
    let mut missing = Vec::new();
    for a in &id.addresses {
        if !now_addrs
            .iter()
            .any(|n| n.address == a.address && n.prefix_len == a.prefix_len)
        {
            missing.push(format!("address {}/{}", a.address, a.prefix_len));
        }
    }
    for r in &id.routes {
        if !now_routes.iter().any(|n| n.same_as(r)) {
            missing.push(format!(
                "route {}/{}{}",
                r.destination,
                r.prefix_len,
                r.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
            ));
        }
    }
    Ok(missing)
}

/// The character device number of the handed-over macvtap, read from a
/// sysfs view of the container's own namespace (never from a `/dev/tapN`
/// name, which can belong to another namespace's link).
pub fn tap_device_number(netns: &NetNs, record: &Record) -> Result<DeviceNumber> {
    let name = record.made.macvtap.clone();
    netns
        .run(move || -> Result<DeviceNumber> {
            let mut nl = Netlink::open()?;
            let link = nl
                .link_by_name(&name)?
                .ok_or_else(|| Error::RecordMismatch {
                    path: PathBuf::from(&name),
                    why: format!("the macvtap {name} does not exist"),
                })?;
            let view = SysfsView::here().map_err(|e| Error::Net {
                op: "sysfs view of the container's namespace".into(),
                source: macvtap_net::Error::TapDevice {
                    ifname: name.clone(),
                    ifindex: link.index,
                    source: e,
                },
            })?;
            view.tap_device_number(&name, link.index)
                .map_err(Error::net(format!("device number of {name}")))
        })
        .map_err(Error::net("enter the container's namespace"))?
}

/// The guest's identity in one line, for messages: `172.17.0.2/16 via 172.17.0.1`.
pub fn summary(id: &Identity) -> String {
    let mut parts: Vec<String> = id
        .addresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.prefix_len))
        .collect();
    for gw in [
        id.ipv4_gateway().map(IpAddr::V4),
        id.ipv6_gateway().map(IpAddr::V6),
    ]
    .into_iter()
    .flatten()
    {
        parts.push(format!("via {gw}"));
    }
    parts.join(" ")
}
