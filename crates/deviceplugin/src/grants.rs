//! Binding grants to pods.
//!
//! Allocate names devices, not pods (the kubelet's AllocateRequest has no
//! pod in it), so the grant it writes lets any pod's ADD claim the device
//! first. The kubelet records which pod got which device right after
//! Allocate returns, and its PodResources API lists that: this module asks
//! it and writes the pod into the grant, after which only that pod's ADD
//! (CNI_ARGS `K8S_POD_NAMESPACE`/`K8S_POD_NAME`) may claim the device.
//! At start-up the same answer re-derives grants a node lost (the kubelet
//! re-creates sandboxes with checkpointed devices and never calls Allocate
//! for them again).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use macvtap_state::{AllocationRecord, PodRef, StateDir};

use crate::allocate::LOCK_TIMEOUT;
use crate::kubelet::device_holders;
use crate::resource::Resource;

/// When to ask the PodResources API after an Allocate: the kubelet usually
/// lists the pod within milliseconds; a busy one later.
const ASK_AFTER: [Duration; 7] = [
    Duration::from_millis(20),
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// After a successful Allocate of `ids`: bind each one's grant (as written
/// now) to the pod the kubelet lists it under, asking a few times.
pub async fn bind_after_allocate(state: StateDir, pod_resources: PathBuf, ids: Vec<String>) {
    // The grants this Allocate wrote: a later Allocate of a device makes a
    // new one, which its own task binds.
    let loaded = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            ids.iter()
                .filter_map(|id| state.load_allocation(id).ok().flatten())
                .map(|r| (r.device_id, r.grant))
                .collect::<Vec<_>>()
        })
        .await
    };
    let Ok(mut pending) = loaded else {
        return;
    };
    for delay in ASK_AFTER {
        if pending.is_empty() {
            return;
        }
        tokio::time::sleep(delay).await;
        let Some(holders) = device_holders(&pod_resources).await else {
            continue;
        };
        let found: Vec<(String, String, PodRef)> = pending
            .iter()
            .filter_map(|(id, grant)| {
                holders
                    .get(id)
                    .map(|pod| (id.clone(), grant.clone(), pod.clone()))
            })
            .collect();
        if found.is_empty() {
            continue;
        }
        let state = state.clone();
        let Ok(bound) = tokio::task::spawn_blocking(move || bind(&state, &found)).await else {
            return;
        };
        pending.retain(|(id, _)| !bound.contains(id));
    }
    for (id, _) in &pending {
        tracing::info!(device = %id, "the kubelet lists no pod for this allocation yet; its grant stays unbound");
    }
}

/// Write each pod into its device's grant if that grant is still the one
/// named and unbound. Returns the devices handled.
fn bind(state: &StateDir, found: &[(String, String, PodRef)]) -> Vec<String> {
    let Ok(_lock) = state.lock(LOCK_TIMEOUT) else {
        return Vec::new();
    };
    let mut done = Vec::new();
    let mut updated = Vec::new();
    for (id, grant, pod) in found {
        match state.load_allocation(id) {
            Ok(Some(mut record)) if &record.grant == grant => {
                if record.pod.is_none() {
                    record.pod = Some(pod.clone());
                    tracing::info!(device = %id, pod = %format!("{}/{}", pod.namespace, pod.name), "grant bound to its pod");
                    updated.push(record);
                }
                done.push(id.clone());
            }
            // Gone or re-granted since: nothing of ours to bind.
            _ => done.push(id.clone()),
        }
    }
    if let Err(e) = state.save_allocations(&updated) {
        tracing::warn!("binding grants to pods: {e}");
        return Vec::new();
    }
    done
}

/// At start-up, for the devices pods hold: write the grant a node lost
/// (bound to its pod) and bind unbound ones. Returns how many grants were
/// written.
pub fn rederive(
    state: &StateDir,
    resources: &[Arc<Resource>],
    holders: &HashMap<String, PodRef>,
) -> usize {
    let Ok(_lock) = state.lock(LOCK_TIMEOUT) else {
        return 0;
    };
    let mut written = Vec::new();
    for (id, pod) in holders {
        let Ok((name, index)) = macvtap_state::parse_device_id(id) else {
            continue;
        };
        let Some(resource) = resources
            .iter()
            .find(|r| r.config.name == name && index < r.config.capacity)
        else {
            continue;
        };
        match state.load_allocation(id) {
            Ok(Some(record)) if record.pod.is_some() => {}
            Ok(Some(mut record)) => {
                record.pod = Some(pod.clone());
                written.push(record);
            }
            // Missing, or unreadable: the kubelet's word is the truth.
            _ => {
                let mut record = AllocationRecord::new(
                    id,
                    &resource.config.name,
                    resource.ifindex_base + index,
                    state.device_node_path(id),
                    resource.config.attach,
                );
                record.pod = Some(pod.clone());
                written.push(record);
            }
        }
    }
    match state.save_allocations(&written) {
        Ok(()) => written.len(),
        Err(e) => {
            tracing::warn!("re-deriving grants from the PodResources API: {e}");
            0
        }
    }
}
