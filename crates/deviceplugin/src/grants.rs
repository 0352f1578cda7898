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
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use macvtap_state::{AllocationRecord, PodRef, StateDir};

use crate::allocate::LOCK_TIMEOUT;
use crate::kubelet::device_holders;
use crate::resource::Resource;

/// When to ask the PodResources API after an Allocate: the kubelet usually
/// lists the pod within milliseconds; a busy one later. After the last,
/// the grant stays unbound.
const ASK_AFTER: [Duration; 7] = [
    Duration::from_millis(20),
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// Where Allocate hands the devices it granted to the one binder task.
pub type Binder = mpsc::UnboundedSender<Vec<String>>;

/// One grant waiting for its pod.
struct Pending {
    grant: String,
    allocated: Instant,
    /// How many of [`ASK_AFTER`] have passed.
    asked: usize,
}

impl Pending {
    fn next_ask(&self) -> Option<Instant> {
        ASK_AFTER.get(self.asked).map(|d| self.allocated + *d)
    }
}

/// Start the binder: one task for the daemon, which asks the PodResources
/// API (one query for every grant due, so at most one connection at a
/// time) and binds each grant to the pod the kubelet lists it under.
pub fn start_binder(state: StateDir, pod_resources: PathBuf) -> Binder {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<String>>();
    tokio::spawn(async move {
        let mut pending: HashMap<String, Pending> = HashMap::new();
        loop {
            let next = pending.values().filter_map(Pending::next_ask).min();
            let wait = next.map_or(Duration::from_secs(3600), |t| {
                t.saturating_duration_since(Instant::now())
            });
            tokio::select! {
                ids = rx.recv() => {
                    let Some(ids) = ids else { return };
                    let st = state.clone();
                    // The grants this Allocate wrote: a later Allocate of a
                    // device makes a new one, which replaces this entry.
                    let Ok(loaded) = tokio::task::spawn_blocking(move || {
                        ids.iter()
                            .filter_map(|id| st.load_allocation(id).ok().flatten())
                            .map(|r| (r.device_id, r.grant))
                            .collect::<Vec<_>>()
                    })
                    .await else { continue };
                    for (id, grant) in loaded {
                        pending.insert(id, Pending { grant, allocated: Instant::now(), asked: 0 });
                    }
                }
                _ = tokio::time::sleep(wait), if next.is_some() => {
                    let now = Instant::now();
                    for p in pending.values_mut() {
                        while p.next_ask().is_some_and(|t| t <= now) {
                            p.asked += 1;
                        }
                    }
                    if let Some(holders) = device_holders(&pod_resources).await {
                        let found: Vec<(String, String, PodRef)> = pending
                            .iter()
                            .filter_map(|(id, p)| {
                                holders.get(id).map(|pod| (id.clone(), p.grant.clone(), pod.clone()))
                            })
                            .collect();
                        if !found.is_empty() {
                            let st = state.clone();
                            if let Ok(done) = tokio::task::spawn_blocking(move || bind(&st, &found)).await {
                                for id in done {
                                    pending.remove(&id);
                                }
                            }
                        }
                    }
                    pending.retain(|id, p| {
                        let keep = p.next_ask().is_some();
                        if !keep {
                            tracing::info!(device = %id, "the kubelet lists no pod for this allocation; its grant stays unbound");
                        }
                        keep
                    });
                }
            }
        }
    });
    tx
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
        tracing::warn!("binding grants to pods: {}", macvtap_net::error_chain(&e));
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
            tracing::warn!(
                "re-deriving grants from the PodResources API: {}",
                macvtap_net::error_chain(&e)
            );
            0
        }
    }
}
