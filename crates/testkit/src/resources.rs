//! `<stateDir>/resources.json`, as the device plugin writes it.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

/// One resource of the device plugin's node configuration.
#[derive(Debug, Clone)]
pub struct Resource {
    pub name: String,
    pub lower_device: String,
    pub mode: String,
    pub capacity: u32,
    /// "pod" (default) or "host".
    pub attach: String,
    pub ifindex_base: u32,
}

impl Resource {
    /// A `bridge`, `attach: pod` resource.
    pub fn new(name: &str, lower_device: &str, capacity: u32, ifindex_base: u32) -> Resource {
        Resource {
            name: name.to_string(),
            lower_device: lower_device.to_string(),
            mode: "bridge".to_string(),
            capacity,
            attach: "pod".to_string(),
            ifindex_base,
        }
    }

    pub fn mode(mut self, mode: &str) -> Resource {
        self.mode = mode.to_string();
        self
    }

    pub fn attach(mut self, attach: &str) -> Resource {
        self.attach = attach.to_string();
        self
    }

    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "lowerDevice": self.lower_device,
            "mode": self.mode,
            "capacity": self.capacity,
            "attach": self.attach,
            "ifindexBase": self.ifindex_base,
        })
    }
}

/// Writes `{"resources": [...]}` to `<state_dir>/resources.json`, and a
/// grant for every device, as the device plugin leaves the node once the
/// kubelet has allocated each (the CNI refuses a deviceID without one).
/// Tests of the grant itself use [`write_resources_ungranted`] and [`grant`].
pub fn write_resources(state_dir: &Path, resources: &[Resource]) {
    write_resources_ungranted(state_dir, resources);
    for r in resources {
        let ids: Vec<String> = (0..r.capacity).map(|i| format!("{}-{i}", r.name)).collect();
        grant(state_dir, r, &ids);
    }
}

/// Writes `<state_dir>/resources.json` only: no device is allocated.
pub fn write_resources_ungranted(state_dir: &Path, resources: &[Resource]) {
    let list: Vec<Value> = resources.iter().map(Resource::to_json).collect();
    write_resources_json(state_dir, &json!({ "resources": list }));
}

/// Writes the device plugin's grant (`allocations/<id>.json`, what Allocate
/// records) for each of `ids`, devices of `resource`, with a fresh grant
/// value each time (as a new Allocate makes).
pub fn grant(state_dir: &Path, resource: &Resource, ids: &[String]) {
    grant_to_pod(state_dir, resource, ids, None);
}

/// [`grant`], naming the pod (`namespace`, `name`) the kubelet gave the
/// devices to, as the device plugin learns it from the PodResources API.
pub fn grant_to_pod(
    state_dir: &Path,
    resource: &Resource,
    ids: &[String],
    pod: Option<(&str, &str)>,
) {
    let dir = state_dir.join("allocations");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    for id in ids {
        let index: u32 = id
            .rsplit_once('-')
            .and_then(|(_, i)| i.parse().ok())
            .unwrap_or_else(|| panic!("{id} is not <resource>-<index>"));
        // The device plugin's own record type, as Allocate makes it (a fresh
        // random grant value each time).
        let attach = match resource.attach.as_str() {
            "host" => macvtap_state::Attach::Host,
            _ => macvtap_state::Attach::Pod,
        };
        let mut record = macvtap_state::AllocationRecord::new(
            id,
            &resource.name,
            resource.ifindex_base + index,
            state_dir.join("dev").join(id),
            attach,
        );
        record.pod = pod.map(|(namespace, name)| macvtap_state::PodRef {
            namespace: namespace.into(),
            name: name.into(),
        });
        let doc = serde_json::to_string(&record).expect("a record serializes");
        let path = dir.join(format!("{id}.json"));
        fs::write(&path, doc).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// Writes arbitrary JSON as `<state_dir>/resources.json`.
pub fn write_resources_json(state_dir: &Path, doc: &Value) {
    fs::create_dir_all(state_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", state_dir.display()));
    let path = state_dir.join("resources.json");
    let text = serde_json::to_string_pretty(doc).expect("a Value always serializes");
    fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
