//! A resource `macvtap.network.kubevirt.io/<name>`: its devices, their
//! health, and where their ifindexes start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use macvtap_state::{host_link_name, Attach, NodeConfig, Resource as StateResource};
use tokio::sync::watch;

use crate::config::ResourceConfig;
use crate::links::{HostLink, LinkTable};
use crate::proto::deviceplugin::{Device, NumaNode, TopologyInfo};

/// The extended-resource domain, as upstream.
pub const RESOURCE_PREFIX: &str = "macvtap.network.kubevirt.io";
/// The kubelet's health strings.
pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";

/// Where resources' ifindex ranges start: clear of the host's own links.
const FIRST_IFINDEX: u32 = 4096;
/// Ranges are aligned so that a resource's devices are easy to spot.
const IFINDEX_ALIGN: u32 = 256;

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub allocations: AtomicU64,
    pub allocation_failures: AtomicU64,
    pub registrations: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One served resource.
#[derive(Debug)]
pub struct Resource {
    pub config: ResourceConfig,
    pub ifindex_base: u32,
    devices: watch::Sender<Arc<Vec<Device>>>,
    /// Set once the resource is withdrawn: its ListAndWatch streams end.
    retired: watch::Sender<bool>,
    pub counters: Counters,
    /// Registered with the kubelet now (cleared while it is served again
    /// after a kubelet restart, until the new registration succeeds).
    pub registered: std::sync::atomic::AtomicBool,
}

impl Resource {
    pub fn new(config: ResourceConfig, ifindex_base: u32, links: &LinkTable) -> Arc<Resource> {
        let devices = build_devices(&config, ifindex_base, links);
        Arc::new(Resource {
            config,
            ifindex_base,
            devices: watch::channel(Arc::new(devices)).0,
            retired: watch::channel(false).0,
            counters: Counters::default(),
            registered: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// This resource with new settings (capacity, mode, lower device,
    /// attach): it shares this one's ListAndWatch streams, which get its
    /// device list at its first [`Resource::update`], its registration and
    /// its counts.
    pub fn successor(&self, config: ResourceConfig, ifindex_base: u32) -> Arc<Resource> {
        let carried = |c: &AtomicU64| AtomicU64::new(c.load(Ordering::Relaxed));
        Arc::new(Resource {
            config,
            ifindex_base,
            devices: self.devices.clone(),
            retired: self.retired.clone(),
            counters: Counters {
                allocations: carried(&self.counters.allocations),
                allocation_failures: carried(&self.counters.allocation_failures),
                registrations: carried(&self.counters.registrations),
            },
            registered: std::sync::atomic::AtomicBool::new(self.registered.load(Ordering::Relaxed)),
        })
    }

    /// `macvtap.network.kubevirt.io/<name>`
    pub fn resource_name(&self) -> String {
        format!("{RESOURCE_PREFIX}/{}", self.config.name)
    }

    /// The socket's file name in the device-plugin directory.
    pub fn socket_name(&self) -> String {
        format!("{RESOURCE_PREFIX}_{}", self.config.name)
    }

    pub fn device_id(&self, index: u32) -> String {
        format!("{}-{index}", self.config.name)
    }

    /// The device list as ListAndWatch sends it, following changes.
    pub fn devices(&self) -> watch::Receiver<Arc<Vec<Device>>> {
        self.devices.subscribe()
    }

    /// Withdraw the resource: every ListAndWatch stream of it ends (its
    /// server may live on in connections the kubelet still holds).
    pub fn retire(&self) {
        self.retired.send_replace(true);
    }

    /// True from [`Resource::retire`] on, following changes.
    pub fn retired(&self) -> watch::Receiver<bool> {
        self.retired.subscribe()
    }

    pub fn healthy_count(&self) -> usize {
        self.devices
            .borrow()
            .iter()
            .filter(|d| d.health == HEALTHY)
            .count()
    }

    /// Recompute health from the links; tell watchers only on a change.
    pub fn update(&self, links: &LinkTable) {
        let fresh = build_devices(&self.config, self.ifindex_base, links);
        self.devices.send_if_modified(|current| {
            if **current == fresh {
                false
            } else {
                *current = Arc::new(fresh);
                true
            }
        });
    }

    pub fn to_state(&self) -> StateResource {
        StateResource {
            name: self.config.name.clone(),
            lower_device: self.config.lower_device.clone(),
            mode: self.config.mode,
            capacity: self.config.capacity,
            attach: self.config.attach,
            ifindex_base: self.ifindex_base,
        }
    }
}

/// Healthy while the lower device exists, is up and has carrier; for
/// `attach: host`, also only while no other host link holds the device's
/// promised ifindex (Allocate would fail with "File exists" otherwise).
fn build_devices(config: &ResourceConfig, ifindex_base: u32, links: &LinkTable) -> Vec<Device> {
    let lower = links.by_name(&config.lower_device);
    let lower_ok = lower.is_some_and(|l| l.carrier);
    let topology = lower.and_then(|l| l.numa_node).map(|id| TopologyInfo {
        nodes: vec![NumaNode { id }],
    });
    (0..config.capacity)
        .map(|i| {
            let ifindex = ifindex_base + i;
            let taken = config.attach == Attach::Host
                && links
                    .by_index(ifindex)
                    .is_some_and(|l| !is_our_host_link(l, ifindex, lower.map(|l| l.index)));
            Device {
                id: format!("{}-{i}", config.name),
                health: if lower_ok && !taken {
                    HEALTHY
                } else {
                    UNHEALTHY
                }
                .to_string(),
                topology: topology.clone(),
            }
        })
        .collect()
}

/// Whether `link` is the macvtap Allocate makes for the device promised
/// `ifindex`: that name, that kind, on the resource's lower device. Any
/// other link there blocks the device.
fn is_our_host_link(link: &HostLink, ifindex: u32, lower: Option<u32>) -> bool {
    link.info_kind.as_deref() == Some("macvtap")
        && link.name == host_link_name(ifindex)
        && lower.is_some()
        && link.lower_index == lower
}

/// Give every resource an ifindex range: the one it had (same name in the
/// persisted configuration, and still large enough), else the next free one.
/// The kubelet keeps deviceIDs across restarts, so a device must keep its
/// ifindex.
pub fn assign_bases(previous: &NodeConfig, wanted: &[ResourceConfig]) -> Vec<u32> {
    let mut taken: Vec<(u32, u32)> = Vec::new(); // [start, end)
    let mut bases = vec![None; wanted.len()];
    // Resources that did not grow keep their range first (those ranges were
    // disjoint already); a grown one keeps its start only if still free.
    for grown in [false, true] {
        for (i, w) in wanted.iter().enumerate() {
            let Some(p) = previous.resources.iter().find(|p| p.name == w.name) else {
                continue;
            };
            if (w.capacity > p.capacity) != grown {
                continue;
            }
            let range = (p.ifindex_base, p.ifindex_base.saturating_add(w.capacity));
            if p.ifindex_base >= 2 && !overlaps(&taken, range) && range.1 < i32::MAX as u32 {
                taken.push(range);
                bases[i] = Some(p.ifindex_base);
            }
        }
    }
    for (i, w) in wanted.iter().enumerate() {
        if bases[i].is_some() {
            continue;
        }
        let mut start = FIRST_IFINDEX;
        loop {
            let range = (start, start + w.capacity);
            match taken
                .iter()
                .filter(|t| range.0 < t.1 && t.0 < range.1)
                .map(|t| t.1)
                .max()
            {
                None => break,
                Some(end) => start = end.div_ceil(IFINDEX_ALIGN) * IFINDEX_ALIGN,
            }
        }
        taken.push((start, start + w.capacity));
        bases[i] = Some(start);
    }
    bases
        .into_iter()
        .map(|b| b.unwrap_or(FIRST_IFINDEX))
        .collect()
}

fn overlaps(taken: &[(u32, u32)], r: (u32, u32)) -> bool {
    taken.iter().any(|t| r.0 < t.1 && t.0 < r.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use macvtap_net::MacvtapMode;
    use macvtap_state::Attach;

    fn rc(name: &str, capacity: u32) -> ResourceConfig {
        ResourceConfig {
            name: name.into(),
            lower_device: "eth0".into(),
            mode: MacvtapMode::Bridge,
            capacity,
            attach: Attach::Pod,
        }
    }

    #[test]
    fn bases_are_stable_and_disjoint() {
        let first = assign_bases(&NodeConfig::default(), &[rc("a", 100), rc("b", 1000)]);
        assert_eq!(first, vec![4096, 4352]);
        let persisted = NodeConfig {
            resources: vec![
                StateResource {
                    name: "a".into(),
                    lower_device: "eth0".into(),
                    mode: MacvtapMode::Bridge,
                    capacity: 100,
                    attach: Attach::Pod,
                    ifindex_base: 4096,
                },
                StateResource {
                    name: "b".into(),
                    lower_device: "eth0".into(),
                    mode: MacvtapMode::Bridge,
                    capacity: 1000,
                    attach: Attach::Pod,
                    ifindex_base: 4352,
                },
            ],
        };
        // b keeps its range though a new resource comes first; a is gone
        // and c may take its place.
        let second = assign_bases(&persisted, &[rc("c", 10), rc("b", 1000)]);
        assert_eq!(second, vec![4096, 4352]);
        // A grown resource that would now overlap gets a fresh range.
        let grown = assign_bases(&persisted, &[rc("a", 300), rc("b", 1000)]);
        assert_eq!(grown[1], 4352);
        assert!(grown[0] >= 5352, "{grown:?}");
    }
}
