//! The start-up sweep: remove what an earlier run left for devices no pod
//! holds, and nothing the kubelet still counts as allocated.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use macvtap_net::Netlink;
use macvtap_state::{host_link_name, Attach, NodeRef, StateDir};

use crate::kubelet::device_holders;
use crate::resource::Resource;

/// What the sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Grants the node had lost, re-derived (or bound) from the kubelet's word.
    pub grants: usize,
    pub records: usize,
    pub nodes: usize,
    pub links: usize,
}

pub async fn sweep(
    state: &StateDir,
    resources: &[Arc<Resource>],
    pod_resources: &Path,
) -> Option<Swept> {
    let Some(holders) = device_holders(pod_resources).await else {
        tracing::info!(
            "no answer from the PodResources API at {}: nothing swept",
            pod_resources.display()
        );
        return None;
    };
    let state = state.clone();
    let host_ranges: Vec<(String, u32, u32)> = resources
        .iter()
        .filter(|r| r.config.attach == Attach::Host)
        .map(|r| (r.config.name.clone(), r.ifindex_base, r.config.capacity))
        .collect();
    let resources = resources.to_vec();
    tokio::task::spawn_blocking(move || {
        let in_use: HashSet<String> = holders.keys().cloned().collect();
        let mut swept = sweep_blocking(&state, &in_use, &host_ranges);
        swept.grants = crate::grants::rederive(&state, &resources, &holders);
        if swept.grants > 0 {
            tracing::info!(
                grants = swept.grants,
                "grants re-derived from the PodResources API"
            );
        }
        swept
    })
    .await
    .ok()
}

fn sweep_blocking(
    state: &StateDir,
    in_use: &HashSet<String>,
    host_ranges: &[(String, u32, u32)],
) -> Swept {
    let mut swept = Swept::default();
    let Ok(_lock) = state.lock(crate::allocate::LOCK_TIMEOUT) else {
        return swept;
    };
    // By file name, not by content: a record that cannot be read must not
    // stop the sweep, and a temporary file a crash left is litter.
    for name in state.allocation_entries().unwrap_or_default() {
        // Records are `<id>.json`; a crashed writer's are `.<id>.json.<pid>.tmp`.
        let id = name
            .trim_start_matches('.')
            .split(".json")
            .next()
            .unwrap_or(&name);
        if !in_use.contains(id) && state.remove_allocation_entry(&name).is_ok() {
            swept.records += 1;
        }
    }
    // Temporary device nodes (`.<id>.<pid>.tmp`) a crash left.
    state.remove_temp_nodes();
    for name in state.device_nodes().unwrap_or_default() {
        if !in_use.contains(&name) && state.remove_node(NodeRef::Device(&name), None).is_ok() {
            swept.nodes += 1;
        }
    }
    if !host_ranges.is_empty() {
        if let Ok(mut nl) = Netlink::open() {
            for link in nl.links().unwrap_or_default() {
                if link.kind.as_deref() != Some("macvtap") {
                    continue;
                }
                // Only links named exactly as this daemon names them, in a
                // host-attach resource's range, are ours to remove.
                let owner = host_ranges.iter().find(|(_, base, cap)| {
                    link.index >= *base
                        && link.index < base + cap
                        && link.name == host_link_name(link.index)
                });
                if let Some((name, base, _)) = owner {
                    let id = format!("{name}-{}", link.index - base);
                    if !in_use.contains(&id) && nl.delete_link(link.index).is_ok() {
                        swept.links += 1;
                    }
                }
            }
        }
    }
    tracing::info!(
        records = swept.records,
        nodes = swept.nodes,
        links = swept.links,
        "start-up sweep"
    );
    swept
}
