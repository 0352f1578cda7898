//! CHECK and STATUS: compare what exists with what the configuration and
//! the record say; say whether ADD could work now.

use macvtap_net::{error_chain, Link, MacAddr, Netlink};
use macvtap_state::{NodeRef, StateDir};

use super::refuse_self_as_ipam;
use crate::config::{Config, Source};
use crate::error::{code, err, Result};
use crate::ipam::Ipam;
use crate::kernel::{kernel_error, Pod};
use crate::spec::{CniResult, Env};

pub(super) fn check(cfg: &Config, env: &Env, stdin: &[u8]) -> Result<()> {
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
        .map_err(kernel_error)?
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
    let mode = match &cfg.source {
        Source::Lower { mode, .. } => *mode,
        Source::Device(id) => super::resolve_device(&state, id)?.resource.mode,
        Source::Handover { mode, .. } => *mode,
    };
    if link.macvtap_mode != Some(mode) {
        return Err(differs(format!(
            "{ifname:?} is in mode {:?}, the configuration says {}",
            link.macvtap_mode, mode
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
    let have = pod.nl.addresses(link.index).map_err(kernel_error)?;
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

pub(super) fn check_node(
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
        .map_err(|e| {
            differs(format!(
                "device node {}: {}",
                node.display(),
                error_chain(&e)
            ))
        })?
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

pub(super) fn status(cfg: &Config, env: &Env) -> Result<()> {
    let unavailable = |m: String| err(code::NOT_AVAILABLE, m);
    let state = StateDir::open(&cfg.policy.state_dir)
        .map_err(|e| unavailable(format!("state directory: {}", error_chain(&e))))?;
    match &cfg.source {
        Source::Lower { device, .. } if !cfg.link_in_container => {
            let mut nl = Netlink::open().map_err(kernel_error)?;
            if nl.link_by_name(device).map_err(kernel_error)?.is_none() {
                return Err(unavailable(format!(
                    "lower device {device:?} does not exist"
                )));
            }
        }
        Source::Device(id) => {
            let node = state
                .load_config()
                .map_err(|e| unavailable(error_chain(&e)))?;
            node.validate().map_err(|e| unavailable(error_chain(&e)))?;
            node.resolve(state.root(), id)
                .map_err(|e| unavailable(error_chain(&e)))?;
        }
        // A handover needs the previous plugin's interface, which only
        // ADD's prevResult names: nothing to look at before it.
        Source::Lower { .. } | Source::Handover { .. } => {}
    }
    if let Some(i) = &cfg.ipam {
        Ipam::new(&i.plugin, &env.path, &[])
            .find()
            .map_err(|e| unavailable(e.msg))?;
    }
    Ok(())
}
