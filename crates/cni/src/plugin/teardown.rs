//! DEL and GC: undo attachments as their records say, going on past every
//! failure and reporting all of them.

use macvtap_state::{AttachmentRecord, NodeRef, StateDir};

use super::{combine, load_record_or_drop, teardown_ipam};
use crate::config::Config;
use crate::error::{code, err, CniError, Result};
use crate::kernel::{Kernel, RealKernel};
use crate::spec::Env;

pub(super) fn del(cfg: &Config, env: &Env, stdin: &[u8]) -> Result<()> {
    let container_id = env.require_container_id()?;
    env.require_ifname()?;
    let ipam = teardown_ipam(cfg, env, stdin);
    let state = StateDir::open(&cfg.policy.state_dir)?;
    let container = state.lock_container(container_id, cfg.policy.lock_timeout)?;
    // The runtime's CNI_NETNS, if it still names a namespace, is tried
    // before the recorded path (the same namespace may be reachable by either).
    let mut kernel = RealKernel::for_teardown(Some(&env.netns), ipam);
    let result = del_with(cfg, env, &state, &mut kernel);
    if result.is_ok() {
        state.finish_container(container);
    }
    result
}

/// DEL with the container's lock held, against any [`Kernel`]: link, node,
/// claim, IPAM, then the record (kept when anything failed, so that a
/// retried DEL finds it).
pub(crate) fn del_with(
    cfg: &Config,
    env: &Env,
    state: &StateDir,
    kernel: &mut dyn Kernel,
) -> Result<()> {
    let ifname = env.ifname.as_str();
    let mut errors: Vec<CniError> = Vec::new();
    let record = match load_record_or_drop(state, &env.container_id, ifname) {
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
        errors.extend(teardown(state, record, kernel));
    }
    if let Err(e) = kernel.ipam("DEL", &[]) {
        errors.push(e);
    }
    if errors.is_empty() {
        state.remove_record(&env.container_id, ifname)?;
    }
    combine(errors)
}

/// Remove an attachment's link, node and claim (the node lock held for a
/// device), as its record says. Every failure is returned; teardown goes on.
pub(super) fn teardown(
    state: &StateDir,
    record: &AttachmentRecord,
    kernel: &mut dyn Kernel,
) -> Vec<CniError> {
    let mut errors = Vec::new();
    if let Err(e) = kernel.delete_recorded_link(record) {
        errors.push(e);
    }
    // A device node is removed only if it is still the one this attachment
    // made (another pod may have the device now). An interrupted ADD's
    // intent does not know its node's identity: while this attachment
    // still holds the device's claim nobody else made a node there since,
    // so whatever is there goes.
    let remove = match (record.node(), record.node_identity) {
        (NodeRef::Device(id), None) => match state.load_claim(id) {
            Some(c) if c.container_id == record.container_id && c.ifname == record.ifname => {
                kernel.remove_node(state, NodeRef::Device(id), None)
            }
            _ => Ok(()),
        },
        (node, made) => kernel.remove_node(state, node, made),
    };
    if let Err(e) = remove {
        errors.push(e);
    }
    if let Some(id) = &record.device_id {
        if let Err(e) = state.release_claim(id, &record.container_id, &record.ifname) {
            errors.push(e.into());
        }
    }
    errors
}

pub(super) fn gc(cfg: &Config, env: &Env, stdin: &[u8]) -> Result<()> {
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
    // Each record names its own namespace: no pod of the runtime's here.
    let mut kernel = RealKernel::for_teardown(None, ipam);
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
            failed.extend(teardown(&state, &record, &mut kernel));
        }
        let overrides = [
            ("CNI_CONTAINERID", record.container_id.as_str()),
            ("CNI_IFNAME", record.ifname.as_str()),
            ("CNI_NETNS", record.netns.as_str()),
        ];
        if let Err(e) = kernel.ipam("DEL", &overrides) {
            failed.push(e);
        }
        if failed.is_empty() {
            if let Err(e) = state.remove_record(&record.container_id, &record.ifname) {
                failed.push(e.into());
            }
            state.finish_container(container);
        }
        errors.extend(failed);
    }
    // Handovers this network made (chained `"handover": true`) are
    // recorded by the handover core, not under pods/.
    errors.extend(super::handover::gc(&state, cfg, &valid));
    combine(errors)
}
