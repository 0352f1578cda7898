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

/// Writes `{"resources": [...]}` to `<state_dir>/resources.json`.
pub fn write_resources(state_dir: &Path, resources: &[Resource]) {
    let list: Vec<Value> = resources.iter().map(Resource::to_json).collect();
    write_resources_json(state_dir, &json!({ "resources": list }));
}

/// Writes arbitrary JSON as `<state_dir>/resources.json`.
pub fn write_resources_json(state_dir: &Path, doc: &Value) {
    fs::create_dir_all(state_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", state_dir.display()));
    let path = state_dir.join("resources.json");
    let text = serde_json::to_string_pretty(doc).expect("a Value always serializes");
    fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
