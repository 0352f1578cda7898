//! The node state shared by the device plugin and the CNI plugin.
//!
//! Everything lives under one state directory (default `/var/lib/macvtap`):
//!
//! ```text
//! resources.json                  the device plugin's resource configuration
//! allocations/<deviceID>.json     what the device plugin promised at Allocate
//! dev/<deviceID>                  device nodes for device-plugin devices
//! pods/<containerID>/<if>.json    what the CNI made for one attachment
//! pods/<containerID>/<if>.tap     device node of a standalone attachment
//! lock                            serialises ADD/DEL/GC on the node
//! ```
//!
//! A deviceID alone, with `resources.json`, tells the CNI everything it needs
//! ([`NodeConfig::resolve`]): the kubelet reuses checkpointed allocations after
//! a reboot without calling Allocate again, so no per-Allocate record may be
//! required for an attach.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/macvtap";

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state directory path is not absolute or contains `..`.
    #[error("state directory {0:?} must be an absolute path without '..'")]
    BadStateDir(String),
    /// A file or directory of the state could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The state directory could be changed by someone other than root.
    #[error("state directory {path}: {why}; it must be a directory that only root can change (and so must every directory above it)")]
    Untrusted { path: PathBuf, why: String },
    /// A state file is not valid JSON of the expected shape.
    #[error("{path}: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The deviceID has the wrong shape.
    #[error(
        "device ID {0:?} is malformed (want <resource>-<index>, letters, digits, '.', '_' and '-')"
    )]
    MalformedDeviceId(String),
    /// No configured resource offers this deviceID.
    #[error("device ID {id:?} is not offered by any resource of this node ({why})")]
    NotOffered { id: String, why: String },
    /// A resource in the configuration is invalid.
    #[error("resource {name:?}: {why}")]
    BadResource { name: String, why: String },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// Where a resource's macvtap is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    /// The CNI creates the macvtap directly in the pod (no namespace move).
    #[default]
    Pod,
    /// The device plugin creates it in the host namespace at Allocate
    /// (upstream's behaviour); the CNI moves it into the pod.
    Host,
}

/// One resource `macvtap.network.kubevirt.io/<name>` as the device plugin
/// offers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub name: String,
    #[serde(alias = "master")]
    pub lower_device: String,
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    #[serde(default)]
    pub attach: Attach,
    /// Device `<name>-<i>` is promised ifindex `ifindex_base + i`.
    pub ifindex_base: u32,
}

fn default_mode() -> String {
    "bridge".into()
}
fn default_capacity() -> u32 {
    100
}

/// The device plugin's resource configuration, as persisted for the CNI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub resources: Vec<Resource>,
}

/// Everything needed to attach one device, derived from its deviceID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDevice {
    pub device_id: String,
    pub resource: Resource,
    pub index: u32,
    /// The ifindex the VM will find its tap under (`/dev/tap<ifindex>`).
    pub ifindex: u32,
    /// Where the device node is made (the `host_path` given at Allocate).
    pub node_path: PathBuf,
}

impl ResolvedDevice {
    /// Name of the host-namespace link the device plugin creates at
    /// Allocate for `attach: host` resources.
    pub fn host_link_name(&self) -> String {
        host_link_name(self.ifindex)
    }
}

/// Name of the host-namespace link for a promised ifindex (`attach: host`).
pub fn host_link_name(ifindex: u32) -> String {
    format!("mvtap{ifindex}")
}

/// Names that are safe as one path component: letters, digits, `.`, `_`,
/// `-`, not starting with `.` or `-`, at most 253 bytes.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.starts_with(['.', '-'])
}

/// Split `<resource>-<index>`.
pub fn parse_device_id(id: &str) -> Result<(&str, u32)> {
    let bad = || Error::MalformedDeviceId(id.to_string());
    if !is_safe_name(id) {
        return Err(bad());
    }
    let (name, index) = id.rsplit_once('-').ok_or_else(bad)?;
    if name.is_empty() || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if index.len() > 1 && index.starts_with('0') {
        return Err(bad()); // one spelling per device
    }
    Ok((name, index.parse().map_err(|_| bad())?))
}

impl NodeConfig {
    /// Check the configuration as a whole: unique names, sane capacity and
    /// ifindex ranges that do not overlap.
    pub fn validate(&self) -> Result<()> {
        let mut ranges: Vec<(u64, u64, &str)> = Vec::new();
        for r in &self.resources {
            let bad = |why: &str| Error::BadResource {
                name: r.name.clone(),
                why: why.into(),
            };
            if !is_safe_name(&r.name) {
                return Err(bad("name must be letters, digits, '.', '_' or '-'"));
            }
            if r.capacity == 0 {
                return Err(bad("capacity must be at least 1"));
            }
            if r.ifindex_base < 2 {
                return Err(bad("ifindexBase must be at least 2 (1 is the loopback)"));
            }
            let end = r.ifindex_base as u64 + r.capacity as u64;
            if end > i32::MAX as u64 {
                return Err(bad(
                    "ifindexBase + capacity exceeds the kernel's ifindex range",
                ));
            }
            if self.resources.iter().filter(|o| o.name == r.name).count() > 1 {
                return Err(bad("defined twice"));
            }
            if let Some((_, _, other)) = ranges
                .iter()
                .find(|(s, e, _)| (r.ifindex_base as u64) < *e && *s < end)
            {
                return Err(bad(&format!(
                    "its ifindex range overlaps resource {other:?}"
                )));
            }
            ranges.push((r.ifindex_base as u64, end, &r.name));
        }
        Ok(())
    }

    /// Derive everything about `device_id`, or refuse it.
    pub fn resolve(&self, state: &StateDir, device_id: &str) -> Result<ResolvedDevice> {
        let (name, index) = parse_device_id(device_id)?;
        let not_offered = |why: String| Error::NotOffered {
            id: device_id.to_string(),
            why,
        };
        let resource = self
            .resources
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| not_offered(format!("no resource named {name:?}")))?;
        if index >= resource.capacity {
            return Err(not_offered(format!(
                "resource {name:?} has {} devices, indexes 0..{}",
                resource.capacity,
                resource.capacity - 1
            )));
        }
        Ok(ResolvedDevice {
            device_id: device_id.to_string(),
            resource: resource.clone(),
            index,
            ifindex: resource.ifindex_base + index,
            node_path: state.device_node_path(device_id),
        })
    }
}

/// An attachment the CNI made: enough to undo it without the network
/// configuration that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    /// The macvtap's ifindex inside the pod: DEL removes a link only if
    /// this still matches, so it never deletes a link it did not create.
    pub ifindex: u32,
    pub device_id: Option<String>,
    pub node_path: PathBuf,
    /// Which file the device node this attachment made is. Device-plugin
    /// nodes live at one path per deviceID, and a late DEL of a previous
    /// owner must not remove the node a new owner made there.
    #[serde(default, flatten)]
    pub node_identity: Option<NodeIdentity>,
    pub mac: String,
}

/// A file's identity: inode numbers are reused once freed, so the device
/// number and the change time (set by the rename that put the node in
/// place, to the nanosecond) come with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeIdentity {
    pub node_inode: u64,
    pub node_rdev: u64,
    pub node_ctime_ns: i64,
}

impl NodeIdentity {
    /// The identity of the file at `path` (not following a symlink).
    pub fn of(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::symlink_metadata(path)?;
        Ok(NodeIdentity {
            node_inode: meta.ino(),
            node_rdev: meta.rdev(),
            node_ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
        })
    }
}

impl AttachmentRecord {
    /// Remove this attachment's device node if the file at its path is
    /// still the one it made. Missing is fine.
    pub fn remove_node(&self) -> Result<()> {
        match NodeIdentity::of(&self.node_path) {
            // A standalone node's path is this attachment's alone.
            Ok(_) if self.device_id.is_none() => remove_file_if_exists(&self.node_path),
            Ok(found) if self.node_identity.is_none_or(|made| made == found) => {
                remove_file_if_exists(&self.node_path)
            }
            Ok(_) => Ok(()), // someone else's node now
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("stat", &self.node_path)(e)),
        }
    }
}

/// What the device plugin promised at Allocate. Not needed to attach (the
/// deviceID and `resources.json` suffice); it tells the start-up sweep and
/// an operator what was handed out, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationRecord {
    pub device_id: String,
    pub resource: String,
    pub ifindex: u32,
    pub node_path: PathBuf,
    pub attach: Attach,
    /// Seconds since the epoch.
    pub allocated_at: u64,
}

/// Which attachment holds a device-plugin device: one pod at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// An exclusive lock on the state directory, released on drop.
#[derive(Debug)]
pub struct StateLock {
    _file: fs::File,
}

impl StateDir {
    /// Check the path; touches nothing.
    pub fn new(root: &str) -> Result<Self> {
        let path = Path::new(root);
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(Error::BadStateDir(root.to_string()));
        }
        Ok(StateDir {
            root: path.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn resources_path(&self) -> PathBuf {
        self.root.join("resources.json")
    }
    pub fn device_node_path(&self, device_id: &str) -> PathBuf {
        self.root.join("dev").join(device_id)
    }
    pub fn allocation_path(&self, device_id: &str) -> PathBuf {
        self.root
            .join("allocations")
            .join(format!("{device_id}.json"))
    }
    pub fn pods_dir(&self) -> PathBuf {
        self.root.join("pods")
    }
    pub fn pod_dir(&self, container_id: &str) -> PathBuf {
        self.pods_dir().join(container_id)
    }
    pub fn record_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.pod_dir(container_id).join(format!("{ifname}.json"))
    }
    pub fn standalone_node_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.pod_dir(container_id).join(format!("{ifname}.tap"))
    }

    /// Create a directory of the state (and its parents), mode 0711: others
    /// may reach a device node whose path they know, not list the state.
    pub fn ensure_dir(&self, dir: &Path) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)
            .map_err(io_err("create directory", dir))
    }

    /// Refuse a state directory that anyone but root could change, or that
    /// sits below such a directory. The path can come from a network
    /// configuration a namespace admin wrote; files in it decide which node
    /// the plugin removes and which devices it hands out, so a writable one
    /// would let a tenant steer a root process. World-writable directories
    /// with the sticky bit (like /tmp) are accepted when root owns them.
    pub fn verify_trusted(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let real = fs::canonicalize(&self.root).map_err(io_err("resolve", &self.root))?;
        for dir in real.ancestors() {
            let meta = fs::metadata(dir).map_err(io_err("stat", dir))?;
            let untrusted = |why: String| Error::Untrusted {
                path: dir.to_path_buf(),
                why,
            };
            if !meta.is_dir() {
                return Err(untrusted("not a directory".into()));
            }
            if meta.uid() != 0 {
                return Err(untrusted(format!("owned by uid {}", meta.uid())));
            }
            let writable_by_others = meta.mode() & 0o022 != 0;
            let sticky = meta.mode() & 0o1000 != 0;
            if writable_by_others && !(sticky && dir != real) {
                return Err(untrusted(format!(
                    "mode {:o} lets others write",
                    meta.mode() & 0o7777
                )));
            }
        }
        Ok(())
    }

    /// Take the node-wide lock (blocking), creating the directory if needed
    /// and checking that only root can change it ([`StateDir::verify_trusted`]).
    pub fn lock(&self) -> Result<StateLock> {
        self.ensure_dir(&self.root)?;
        self.verify_trusted()?;
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err("open", &path))?;
        // SAFETY: flock on an fd we own; the lock goes with the file.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err("lock", &path)(io::Error::last_os_error()));
        }
        Ok(StateLock { _file: file })
    }

    /// Load `resources.json`; a missing file is an empty configuration.
    pub fn load_config(&self) -> Result<NodeConfig> {
        match read_json(&self.resources_path())? {
            Some(config) => Ok(config),
            None => Ok(NodeConfig::default()),
        }
    }

    /// Persist the resource configuration (atomically, durably).
    pub fn save_config(&self, config: &NodeConfig) -> Result<()> {
        config.validate()?;
        self.ensure_dir(&self.root)?;
        write_json(&self.resources_path(), config, true)
    }

    pub fn load_record(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<AttachmentRecord>> {
        read_json(&self.record_path(container_id, ifname))
    }

    pub fn save_record(&self, record: &AttachmentRecord) -> Result<()> {
        self.ensure_dir(&self.pod_dir(&record.container_id))?;
        // Attachments do not outlive a reboot (their namespaces do not), so
        // no fsync on the CNI's hot path.
        write_json(
            &self.record_path(&record.container_id, &record.ifname),
            record,
            false,
        )
    }

    /// Remove a record and its pod directory once empty. Missing is fine.
    pub fn remove_record(&self, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.record_path(container_id, ifname);
        remove_file_if_exists(&path)?;
        let _ = fs::remove_dir(self.pod_dir(container_id)); // only succeeds when empty
        Ok(())
    }

    /// Persist an allocation (durably: it must survive a reboot).
    pub fn save_allocation(&self, record: &AllocationRecord) -> Result<()> {
        self.ensure_dir(&self.root.join("allocations"))?;
        write_json(&self.allocation_path(&record.device_id), record, true)
    }

    /// Remove an allocation record; missing is fine.
    pub fn remove_allocation(&self, device_id: &str) -> Result<()> {
        remove_file_if_exists(&self.allocation_path(device_id))
    }

    /// Every allocation record.
    pub fn allocations(&self) -> Result<Vec<AllocationRecord>> {
        let dir = self.root.join("allocations");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                if let Some(record) = read_json(&path)? {
                    out.push(record);
                }
            }
        }
        Ok(out)
    }

    /// The file names under `dev/` (device nodes of device-plugin devices).
    pub fn device_nodes(&self) -> Result<Vec<String>> {
        let dir = self.root.join("dev");
        match fs::read_dir(&dir) {
            Ok(entries) => Ok(entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.'))
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err("read", &dir)(e)),
        }
    }

    pub fn claim_path(&self, device_id: &str) -> PathBuf {
        self.root.join("claims").join(format!("{device_id}.json"))
    }

    /// Who holds `device_id`, if anyone recorded it. Unreadable counts as
    /// nobody: a claim is re-checked against its attachment anyway.
    pub fn load_claim(&self, device_id: &str) -> Option<Claim> {
        read_json(&self.claim_path(device_id)).ok().flatten()
    }

    pub fn save_claim(&self, device_id: &str, claim: &Claim) -> Result<()> {
        self.ensure_dir(&self.root.join("claims"))?;
        write_json(&self.claim_path(device_id), claim, false)
    }

    /// Drop the claim on `device_id` if this attachment holds it.
    pub fn release_claim(&self, device_id: &str, container_id: &str, ifname: &str) -> Result<()> {
        match self.load_claim(device_id) {
            Some(c) if c.container_id != container_id || c.ifname != ifname => Ok(()),
            _ => remove_file_if_exists(&self.claim_path(device_id)),
        }
    }

    /// Every attachment record under `pods/`.
    pub fn records(&self) -> Result<Vec<AttachmentRecord>> {
        let mut out = Vec::new();
        let pods = self.pods_dir();
        let entries = match fs::read_dir(&pods) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("read", &pods)(e)),
        };
        for pod in entries.flatten() {
            let Ok(files) = fs::read_dir(pod.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                // An unreadable record must not stop GC for the whole node.
                if path.extension().is_some_and(|e| e == "json") {
                    if let Ok(Some(record)) = read_json(&path) {
                        out.push(record);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Remove a file; already gone is success.
pub fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Corrupt {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// Write JSON under a temporary name and rename it into place, so readers
/// see the old or the new file, never half of one. Files are 0600.
fn write_json<T: Serialize>(path: &Path, value: &T, durable: bool) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let _ = fs::remove_file(&tmp); // a leftover of a crashed writer
        let mut file = fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        let bytes = serde_json::to_vec_pretty(value).expect("state serialises");
        file.write_all(&bytes).map_err(io_err("write", &tmp))?;
        if durable {
            file.sync_all().map_err(io_err("sync", &tmp))?;
        }
        fs::rename(&tmp, path).map_err(io_err("rename", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        serde_json::from_str(
            r#"{"resources":[
                {"name":"dataplane","lowerDevice":"eth0","capacity":4,"ifindexBase":4096},
                {"name":"lan-b","master":"eth1","mode":"vepa","attach":"host","ifindexBase":5000}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn resolves_device_ids_from_configuration_alone() {
        let state = StateDir::new("/var/lib/macvtap").unwrap();
        let cfg = config();
        cfg.validate().unwrap();
        let dev = cfg.resolve(&state, "dataplane-3").unwrap();
        assert_eq!(dev.ifindex, 4099);
        assert_eq!(dev.resource.mode, "bridge");
        assert_eq!(dev.node_path, Path::new("/var/lib/macvtap/dev/dataplane-3"));
        let host = cfg.resolve(&state, "lan-b-99").unwrap();
        assert_eq!(host.resource.lower_device, "eth1");
        assert_eq!(host.resource.attach, Attach::Host);
        assert_eq!(host.host_link_name(), "mvtap5099");
    }

    #[test]
    fn refuses_device_ids_nobody_offers() {
        let state = StateDir::new("/s").unwrap();
        let cfg = config();
        for id in ["dataplane-4", "other-0", "lan-b-100"] {
            assert!(
                matches!(cfg.resolve(&state, id), Err(Error::NotOffered { .. })),
                "{id}"
            );
        }
        for id in [
            "../dataplane-0",
            "dataplane",
            "dataplane-",
            "-1",
            "dataplane-01",
            "a/b-1",
            "dataplane-x",
            "",
        ] {
            assert!(
                matches!(cfg.resolve(&state, id), Err(Error::MalformedDeviceId(_))),
                "{id}"
            );
        }
    }

    #[test]
    fn validates_configuration() {
        let mut cfg = config();
        cfg.resources[1].ifindex_base = 4098;
        assert!(matches!(cfg.validate(), Err(Error::BadResource { .. })));
        let mut cfg = config();
        cfg.resources[1].name = "dataplane".into();
        assert!(cfg.validate().is_err());
        let mut cfg = config();
        cfg.resources[0].capacity = 0;
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn records_keep_the_node_identity_and_read_older_ones() {
        let base = r#"{"network":"n","containerId":"c","ifname":"net1","netns":"/run/netns/p",
            "ifindex":5,"deviceId":"d-1","nodePath":"/s/dev/d-1","mac":"02:00:00:00:00:01""#;
        let old: AttachmentRecord =
            serde_json::from_str(&format!("{base},\"nodeInode\":7}}")).unwrap();
        assert_eq!(old.node_identity, None);
        let new: AttachmentRecord = serde_json::from_str(&format!(
            "{base},\"nodeInode\":7,\"nodeRdev\":63233,\"nodeCtimeNs\":1795000000123456789}}"
        ))
        .unwrap();
        let id = new.node_identity.expect("identity");
        assert_eq!(
            (id.node_inode, id.node_rdev, id.node_ctime_ns),
            (7, 63233, 1_795_000_000_123_456_789)
        );
        let again: AttachmentRecord =
            serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(again, new);
    }

    #[test]
    fn state_dir_must_be_absolute_and_plain() {
        assert!(StateDir::new("relative/dir").is_err());
        assert!(StateDir::new("/var/lib/../../etc").is_err());
        assert!(StateDir::new("/var/lib/macvtap").is_ok());
    }
}
