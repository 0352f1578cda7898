//! The chained handover (`"handover": true`): ADD hands the container
//! interface the previous plugin made over to a guest on a macvtap (the
//! core in `macvtap-handover` records the identity under the node's state
//! directory before it changes anything), makes the tap device node as the
//! standalone mode does, and reports the addresses on the macvtap. DEL
//! undoes from the record (or forgets it when the namespace is gone);
//! CHECK verifies the handover is in place.

use macvtap_handover::{
    apply, forget, undo, ApplyOptions, CniOwner, Dns, Phase, Record, ResolvConf, Store,
};
use macvtap_net::{error_chain, MacvtapMode, NetNs};
use macvtap_state::{NodeRef, StateDir};
use serde_json::Value;

use super::{combine, with_failures};
use crate::chain::{choose, dns_of, handed_over, Chosen};
use crate::config::Config;
use crate::error::{code, err, CniError, Result};
use crate::kernel::{kernel_error, Pod};
use crate::spec::{CniResult, Env, Interface};

/// The CNI error for a handover core error.
fn core_error(e: macvtap_handover::Error) -> CniError {
    use macvtap_handover::Error as E;
    let c = match &e {
        E::NoSuchProcess { .. } => code::UNKNOWN_CONTAINER,
        E::Netns { source } => match source {
            macvtap_net::Error::NetnsMissing(_) => code::UNKNOWN_CONTAINER,
            _ => code::INVALID_ENVIRONMENT,
        },
        E::NoSuchInterface { .. } | E::Loopback { .. } | E::NoIpv4 { .. } => {
            code::NOT_HANDOVER_READY
        }
        E::BadInterfaceName { .. } | E::UnusableMac { .. } => code::INVALID_CONFIG,
        E::NameTaken { .. } => code::INTERFACE_EXISTS,
        E::AlreadyHandedOver { .. } => code::ALREADY_HANDED_OVER,
        E::StateDir { .. }
        | E::Untrusted { .. }
        | E::Record { .. }
        | E::CorruptRecord { .. }
        | E::RecordMismatch { .. } => code::STATE_DIR,
        _ => code::KERNEL,
    };
    err(c, error_chain(&e))
}

fn owner_of(cfg: &Config, env: &Env) -> CniOwner {
    CniOwner {
        network: cfg.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

/// The handover records this attachment (network, container, CNI_IFNAME) made.
fn records_of(store: &Store, owner: &CniOwner) -> Result<Vec<Record>> {
    Ok(store
        .records()
        .map_err(core_error)?
        .into_iter()
        .filter(|r| r.cni.as_ref() == Some(owner))
        .collect())
}

fn node_of(env: &Env) -> NodeRef<'_> {
    NodeRef::Standalone {
        container_id: &env.container_id,
        ifname: &env.ifname,
    }
}

/// Is the chosen interface really the container's: the namespace its
/// `sandbox` names is CNI_NETNS's, and the interface is there (with the
/// MAC the previous plugin reported)?
fn verify_in_container(pod: &mut Pod, env: &Env, chosen: &Chosen) -> Result<()> {
    let not_ready = |m: String| err(code::NOT_HANDOVER_READY, m);
    if chosen.sandbox != env.netns {
        // prevResult is tenant input: the path is only stat-ed (opening it
        // could block on a FIFO), and must be this very namespace file.
        use std::os::unix::fs::MetadataExt;
        let ours = pod.ns.identity().map_err(kernel_error)?;
        let theirs = std::fs::metadata(&chosen.sandbox).map(|m| (m.dev(), m.ino()));
        if theirs.ok() != Some(ours) {
            return Err(not_ready(format!(
                "prevResult puts {:?} in {:?}, which is not this container's namespace {:?}; nothing changed",
                chosen.name, chosen.sandbox, env.netns
            )));
        }
    }
    let link = pod
        .nl
        .link_by_name(&chosen.name)
        .map_err(kernel_error)?
        .ok_or_else(|| {
            not_ready(format!(
                "prevResult names {:?}, but there is no such interface in the container ({}); nothing changed",
                chosen.name, env.netns
            ))
        })?;
    if let (Some(said), Some(mac)) = (&chosen.mac, link.mac) {
        if !said.eq_ignore_ascii_case(&mac.to_string()) {
            return Err(not_ready(format!(
                "{:?} in the container has MAC {mac}, prevResult says {said}: not the interface the previous plugin made; nothing changed",
                chosen.name
            )));
        }
    }
    Ok(())
}

pub(super) fn add(
    cfg: &Config,
    env: &Env,
    interface: Option<&str>,
    mode: MacvtapMode,
) -> Result<Value> {
    let container_id = env.require_container_id()?;
    env.require_ifname()?;
    let netns = env.require_netns()?;
    let prev = cfg.prev_result.as_ref().ok_or_else(|| {
        err(
            code::INVALID_CONFIG,
            "\"handover\": true needs prevResult: chain this plugin after one that makes the container interface (bridge, ptp, ...)",
        )
    })?;
    let prev = CniResult::parse(prev)?;
    let chosen = choose(&prev, interface)?;
    let dns = dns_of(&prev)?;
    let mut pod = Pod::open(netns)?;
    verify_in_container(&mut pod, env, &chosen)?;

    let state = StateDir::open(&cfg.policy.state_dir)?;
    let container = state.lock_container(container_id, cfg.policy.lock_timeout)?;
    let at = Attaching {
        cfg,
        env,
        state: &state,
        prev: &prev,
        chosen: &chosen,
    };
    let result = at.add_locked(&mut pod, dns, mode);
    match result {
        Ok(_) => drop(container),
        Err(_) => state.finish_container(container),
    }
    result
}

/// One ADD of a handover, its input checked.
struct Attaching<'a> {
    cfg: &'a Config,
    env: &'a Env,
    state: &'a StateDir,
    prev: &'a CniResult,
    chosen: &'a Chosen,
}

impl Attaching<'_> {
    /// With the container's lock held.
    fn add_locked(&self, pod: &mut Pod, dns: Dns, mode: MacvtapMode) -> Result<Value> {
        let Attaching {
            cfg,
            env,
            state,
            chosen,
            ..
        } = *self;
        let store = Store::in_state(state.clone()).map_err(core_error)?;
        let owner = owner_of(cfg, env);
        for old in records_of(&store, &owner)? {
            if old.phase == Phase::Intent {
                // An ADD of this attachment interrupted (kill -9) half way:
                // undone first, so that the retry succeeds.
                let ns = namespace_of(&old, &env.netns);
                match ns {
                    Some(ns) => undo(&store, &ns, &old.key.interface).map(|_| ()),
                    None => forget(&store, &old.key),
                }
                .map_err(core_error)?;
                continue;
            }
            // The spec forbids a second ADD without DEL; say so rather than
            // hand over an interface that has no identity left.
            return Err(err(
                code::ALREADY_HANDED_OVER,
                format!(
                    "container {} ({}) is already handed over on network {:?} (record {}); DEL it first; nothing changed",
                    owner.container_id,
                    owner.ifname,
                    owner.network,
                    store.record_path(&old.key).display()
                ),
            ));
        }
        let mut opts = ApplyOptions::new(chosen.name.clone());
        opts.mac = cfg.mac;
        opts.mode = mode;
        opts.resolv_conf = ResolvConf::Given(dns);
        opts.cni = Some(owner);
        // The record (with its owner) is durable before anything changes.
        let applied = apply(&store, &pod.ns, &opts).map_err(core_error)?;
        let record = &applied.record;
        match self.finish(pod, record) {
            Ok(v) => Ok(v),
            Err(e) => {
                let mut failures = Vec::new();
                if let Err(u) = state.remove_node(node_of(env), None) {
                    failures.push(u.into());
                }
                if let Err(u) = undo(&store, &pod.ns, &chosen.name) {
                    failures.push(core_error(u));
                }
                Err(with_failures(e, "undoing the handover", failures))
            }
        }
    }

    /// After apply: the device node, and the result.
    fn finish(&self, pod: &mut Pod, record: &Record) -> Result<Value> {
        let Attaching {
            cfg,
            env,
            state,
            prev,
            chosen,
        } = *self;
        let name = &record.made.macvtap;
        let link = pod
            .nl
            .link_by_name(name)
            .map_err(kernel_error)?
            .ok_or_else(|| {
                err(
                    code::KERNEL,
                    format!("macvtap {name} vanished right after it was made"),
                )
            })?;
        let dev = pod.tap_device_number(name, link.index)?;
        state.make_node(node_of(env), dev.major, dev.minor, cfg.owner, cfg.group)?;
        let macvtap = Interface {
            name: name.clone(),
            mac: Some(record.made.mac.to_string()),
            mtu: Some(link.mtu),
            sandbox: Some(env.netns.clone()),
        };
        Ok(handed_over(prev, chosen, macvtap).to_json(cfg.version))
    }
}

/// DEL: undo every handover this attachment made (the namespace gone:
/// forget the record), then remove its device node. Missing is fine.
pub(super) fn del(cfg: &Config, env: &Env) -> Result<()> {
    let container_id = env.require_container_id()?;
    env.require_ifname()?;
    let state = StateDir::open(&cfg.policy.state_dir)?;
    let container = state.lock_container(container_id, cfg.policy.lock_timeout)?;
    let errors = teardown(&state, cfg, env);
    let result = combine(errors);
    if result.is_ok() {
        state.finish_container(container);
    }
    result
}

/// The namespace a record is about, if it still exists: the runtime's
/// CNI_NETNS or the recorded path, whichever is the same namespace.
fn namespace_of(record: &Record, netns: &str) -> Option<NetNs> {
    [netns.to_string(), record.netns_path.display().to_string()]
        .iter()
        .filter(|p| !p.is_empty())
        .filter_map(|p| NetNs::open(p).ok())
        .find(|ns| ns.identity().ok() == Some((record.key.netns_dev, record.key.netns_ino)))
}

fn teardown(state: &StateDir, cfg: &Config, env: &Env) -> Vec<CniError> {
    let mut errors = Vec::new();
    // No handover directory: nothing was handed over (do not create one).
    match Store::existing_in(state.clone()).map_err(core_error) {
        Ok(None) => {}
        Ok(Some(store)) => match records_of(&store, &owner_of(cfg, env)) {
            Ok(records) => {
                for record in records {
                    let done = match namespace_of(&record, &env.netns) {
                        Some(ns) => undo(&store, &ns, &record.key.interface).map(|_| ()),
                        // Gone with its namespace: so is all it made.
                        None => forget(&store, &record.key),
                    };
                    // What a launcher (`macvtapctl handover`) keeps
                    // next to the record, if it was killed.
                    let done = done.and_then(|()| {
                        ["supervisor", "seed.img"]
                            .iter()
                            .try_for_each(|s| store.remove_beside(&record.key, s))
                    });
                    if let Err(e) = done {
                        errors.push(core_error(e));
                    }
                }
            }
            Err(e) => errors.push(e),
        },
        Err(e) => errors.push(e),
    }
    if let Err(e) = state.remove_node(node_of(env), None) {
        errors.push(e.into());
    }
    errors
}

/// GC: tear down the handovers of network `cfg.name` whose attachment is
/// not in `valid`.
pub(super) fn gc(
    state: &StateDir,
    cfg: &Config,
    valid: &[crate::config::ValidAttachment],
) -> Vec<CniError> {
    let store = match Store::existing_in(state.clone()) {
        Ok(Some(s)) => s,
        Ok(None) => return Vec::new(),
        Err(e) => return vec![core_error(e)],
    };
    let records = match store.records() {
        Ok(r) => r,
        Err(e) => return vec![core_error(e)],
    };
    let mut errors = Vec::new();
    for owner in records.into_iter().filter_map(|r| r.cni) {
        let keep = owner.network != cfg.name
            || valid
                .iter()
                .any(|v| v.container_id == owner.container_id && v.ifname == owner.ifname);
        if keep {
            continue;
        }
        let Ok(Some(container)) = state.try_lock_container(&owner.container_id) else {
            continue; // its ADD or DEL runs: it owns the record
        };
        let env = Env {
            container_id: owner.container_id.clone(),
            ifname: owner.ifname.clone(),
            ..Env::default()
        };
        let failed = teardown(state, cfg, &env);
        if failed.is_empty() {
            state.finish_container(container);
        }
        errors.extend(failed);
    }
    errors
}

/// CHECK: the record is there and applied, the macvtap exists with the
/// recorded MAC on the recorded lower device, the identity is off that
/// device, the result lists the macvtap, and the device node is right.
pub(super) fn check(cfg: &Config, env: &Env) -> Result<()> {
    let container_id = env.require_container_id()?;
    env.require_ifname()?;
    let differs = |m: String| err(code::CHECK_FAILED, m);
    let prev = cfg
        .prev_result
        .as_ref()
        .ok_or_else(|| err(code::INVALID_CONFIG, "CHECK needs prevResult"))?;
    let prev = CniResult::parse(prev)?;
    let mut pod = Pod::open(env.require_netns()?)?;
    let state = StateDir::open(&cfg.policy.state_dir)?;
    let owner = owner_of(cfg, env);
    // CHECK creates nothing: no handover directory is no record.
    let no_record = || {
        differs(format!(
            "no handover record of container {container_id} ({}) on network {:?} in {}/handover",
            owner.ifname,
            owner.network,
            state.root().display()
        ))
    };
    let Some(store) = Store::existing_in(state.clone()).map_err(core_error)? else {
        return Err(no_record());
    };
    let record = records_of(&store, &owner)?
        .into_iter()
        .next()
        .ok_or_else(no_record)?;
    let here = pod.ns.identity().map_err(kernel_error)?;
    if here != (record.key.netns_dev, record.key.netns_ino) {
        return Err(differs(format!(
            "the handover record is about another namespace than {}",
            env.netns
        )));
    }
    if record.phase != Phase::Applied {
        return Err(differs(format!(
            "the handover of {} never finished (record {} says intent)",
            record.identity.interface,
            store.record_path(&record.key).display()
        )));
    }
    let made = &record.made;
    let link = pod
        .nl
        .link_by_name(&made.macvtap)
        .map_err(kernel_error)?
        .ok_or_else(|| differs(format!("macvtap {} does not exist", made.macvtap)))?;
    if link.kind.as_deref() != Some("macvtap")
        || link.mac != Some(made.mac)
        || link.lower_index != Some(record.identity.ifindex)
    {
        return Err(differs(format!(
            "{} is not the recorded macvtap (want a macvtap with MAC {} on {}, found kind {:?}, MAC {:?}, lower #{:?})",
            made.macvtap, made.mac, record.identity.interface, link.kind, link.mac, link.lower_index
        )));
    }
    if !link.up {
        return Err(differs(format!("{} is down", made.macvtap)));
    }
    let lower = pod
        .nl
        .link_by_name(&record.identity.interface)
        .map_err(kernel_error)?
        .filter(|l| l.index == record.identity.ifindex && l.mac == Some(record.identity.mac))
        .ok_or_else(|| {
            differs(format!(
                "the lower device {} (#{}) is not the recorded one",
                record.identity.interface, record.identity.ifindex
            ))
        })?;
    let on_lower = pod.nl.addresses(lower.index).map_err(kernel_error)?;
    for a in &record.identity.addresses {
        if on_lower.contains(&(a.address, a.prefix_len)) {
            return Err(differs(format!(
                "{} still has {}/{}: the container and the guest would both answer for it",
                lower.name, a.address, a.prefix_len
            )));
        }
    }
    let listed = prev.interfaces.iter().any(|i| {
        i.name == made.macvtap
            && i.mac
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(&made.mac.to_string()))
    });
    if !listed {
        return Err(differs(format!(
            "prevResult does not list {} with MAC {}",
            made.macvtap, made.mac
        )));
    }
    super::check::check_node(&pod, &made.macvtap, &link, &state, node_of(env), cfg)
}
