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
//! claims/<deviceID>.json          which attachment holds a device-plugin device
//! locks/<containerID>             one attachment's lock, held through IPAM
//! lock                            the node lock, held only around short sections
//! ```
//!
//! Every file is reached from the directory fd [`StateDir::open`] opened and
//! checked (see `dir`): nothing is resolved by path again, and no path read
//! from a file decides what is removed (device-node paths are recomputed
//! from the deviceID or the container ID and interface name).
//!
//! A deviceID alone, with `resources.json`, tells the CNI everything it needs
//! ([`NodeConfig::resolve`]): the kubelet reuses checkpointed allocations after
//! a reboot without calling Allocate again, so no per-Allocate record may be
//! required for an attach.

mod dir;
mod lock;
mod node;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use macvtap_net::MacvtapMode;
use serde::{Deserialize, Serialize};

pub use dir::write_atomic;
pub use node::{
    NodePolicy, DEFAULT_MAX_SOURCE_MACS, DEFAULT_NODE_CONFIG, NODE_CONFIG_ENV, STATE_DIR_ENV,
};

/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/macvtap";

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state directory path is not absolute or contains `..`.
    #[error("state directory {0:?} must be an absolute path without '..'")]
    BadStateDir(String),
    /// A file or directory of the state could not be read or written.
    #[error("{op} {path}")]
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
    #[error("{path}")]
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
    /// The node policy file is unusable.
    #[error("node policy {0}: {1}")]
    BadPolicy(PathBuf, String),
    /// A lock was held by someone else for the whole wait.
    #[error("{what}: still held by another invocation after {}s; giving up", waited.as_secs())]
    LockTimeout { what: String, waited: Duration },
    /// A state file parses but says something no plugin would have written.
    #[error("{path}: {why}")]
    BadRecord { path: PathBuf, why: String },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
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
    #[serde(default, with = "mode_names")]
    pub mode: MacvtapMode,
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    #[serde(default)]
    pub attach: Attach,
    /// Device `<name>-<i>` is promised ifindex `ifindex_base + i`.
    pub ifindex_base: u32,
}

/// A mode in resources.json is its name (`bridge`, `vepa`, ...).
mod mode_names {
    use macvtap_net::MacvtapMode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &MacvtapMode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(mode.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MacvtapMode, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
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
    pub fn resolve(&self, state_root: &Path, device_id: &str) -> Result<ResolvedDevice> {
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
            node_path: state_root.join(DEV).join(device_id),
        })
    }
}

/// How far an ADD got: an intent is written before anything is made, so a
/// crash at any later step leaves a record DEL and a retried ADD act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// About to create the link (whose MAC, and for devices ifindex, are
    /// already chosen and recorded).
    Intent,
    /// Link and node made; this is the attachment.
    #[default]
    Attached,
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
    /// The namespace's identity (device and inode of its nsfs file): a
    /// path such as /proc/<pid>/ns/net can name another namespace later.
    #[serde(default)]
    pub netns_dev: Option<u64>,
    #[serde(default)]
    pub netns_ino: Option<u64>,
    #[serde(default)]
    pub phase: Phase,
    /// The macvtap's ifindex inside the pod: DEL removes a link only if
    /// this still matches, so it never deletes a link it did not create.
    /// 0 in an intent whose ifindex the kernel picks.
    pub ifindex: u32,
    pub device_id: Option<String>,
    /// Where the node is (informational: the path used is recomputed).
    pub node_path: PathBuf,
    /// Which file the device node this attachment made is. Device-plugin
    /// nodes live at one path per deviceID, and a late DEL of a previous
    /// owner must not remove the node a new owner made there.
    #[serde(default, flatten)]
    pub node_identity: Option<NodeIdentity>,
    /// The link's MAC, chosen before it is made: with the name and the
    /// namespace, it identifies the link an interrupted ADD made.
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
    fn of_stat(stat: &nix::sys::stat::FileStat) -> Self {
        NodeIdentity {
            node_inode: stat.st_ino,
            node_rdev: stat.st_rdev,
            node_ctime_ns: stat
                .st_ctime
                .saturating_mul(1_000_000_000)
                .saturating_add(stat.st_ctime_nsec),
        }
    }
}

/// What a device node in the state is, as `lstat` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStat {
    pub is_char_device: bool,
    pub major: u32,
    pub minor: u32,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Why an interface name is not one the kernel accepts, if it is not.
pub fn invalid_ifname(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is not a valid interface name")
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        Some("contains '/', ':', whitespace or NUL")
    } else {
        None
    }
}

impl AttachmentRecord {
    /// Check every field as strictly as a configuration: a record decides
    /// which link and which node are removed.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !is_safe_name(&self.container_id) {
            return Err(format!("containerId {:?} is malformed", self.container_id));
        }
        if let Some(why) = invalid_ifname(&self.ifname) {
            return Err(format!("ifname {:?} {why}", self.ifname));
        }
        if !self.netns.is_empty()
            && (!self.netns.starts_with('/')
                || self.netns.len() > 4096
                || self.netns.contains('\0'))
        {
            return Err(format!("netns {:?} is not an absolute path", self.netns));
        }
        if self.network.len() > 1024 {
            return Err("network name is too long".into());
        }
        if self.ifindex == 0 && self.phase == Phase::Attached {
            return Err("ifindex 0".into());
        }
        if self.ifindex > i32::MAX as u32 {
            return Err(format!("ifindex {} is out of range", self.ifindex));
        }
        if let Some(id) = &self.device_id {
            parse_device_id(id).map_err(|e| e.to_string())?;
        }
        if !self.mac.is_empty() {
            macvtap_net::MacAddr::parse_unicast(&self.mac)
                .map_err(|e| format!("mac {:?}: {e}", self.mac))?;
        }
        Ok(())
    }

    /// Where this attachment's device node is in the state.
    pub fn node(&self) -> NodeRef<'_> {
        match &self.device_id {
            Some(id) => NodeRef::Device(id),
            None => NodeRef::Standalone {
                container_id: &self.container_id,
                ifname: &self.ifname,
            },
        }
    }

    /// Does `ns` (device, inode) match the namespace this record names?
    /// Older records without an identity match any.
    pub fn same_netns(&self, dev: u64, ino: u64) -> bool {
        match (self.netns_dev, self.netns_ino) {
            (Some(d), Some(i)) => (d, i) == (dev, ino),
            _ => true,
        }
    }
}

/// A pod as the kubelet names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// What the device plugin promised at Allocate: the grant that lets one
/// pod's ADD use the device. A deviceID in a network configuration proves
/// nothing; this file, which only the device plugin writes, does. It is
/// durable: after a reboot the kubelet re-creates sandboxes with its
/// checkpointed devices without calling Allocate again.
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
    /// A fresh random value per Allocate: a claim made under an older grant
    /// is stale once the kubelet hands the device out again.
    #[serde(default)]
    pub grant: String,
    /// The pod the kubelet gave the device to, once known (from the
    /// PodResources API): then only that pod's ADD may claim it.
    #[serde(default)]
    pub pod: Option<PodRef>,
}

impl AllocationRecord {
    /// A new grant for `device_id`.
    pub fn new(
        device_id: &str,
        resource: &str,
        ifindex: u32,
        node_path: PathBuf,
        attach: Attach,
    ) -> Self {
        AllocationRecord {
            device_id: device_id.to_string(),
            resource: resource.to_string(),
            ifindex,
            node_path,
            attach,
            allocated_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            grant: random_hex(16),
            pod: None,
        }
    }
}

/// `n` random bytes as hex, from the kernel's generator (`/dev/urandom`,
/// never blocking once the system has booted).
pub fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    // A kernel without /dev/urandom is not one this runs on; zeros would
    // still be valid (only less unique) grant values and MACs.
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = urandom.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which attachment holds a device-plugin device: one pod at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    #[serde(default)]
    pub netns_dev: Option<u64>,
    #[serde(default)]
    pub netns_ino: Option<u64>,
    /// The grant this claim was made under.
    #[serde(default)]
    pub grant: String,
    /// The claiming pod as the runtime named it (CNI_ARGS), if it did.
    #[serde(default)]
    pub pod: Option<PodRef>,
}

/// A device node of the state, by what it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRef<'a> {
    /// `dev/<deviceID>`: a device-plugin device.
    Device(&'a str),
    /// `pods/<containerID>/<ifname>.tap`: a standalone attachment.
    Standalone {
        container_id: &'a str,
        ifname: &'a str,
    },
}

/// A directory on a path every component of which was opened and checked.
#[derive(Debug)]
pub(crate) struct TrustedPath {
    pub(crate) fd: OwnedFd,
}

pub(crate) fn check_path(path: &Path) -> Result<Vec<String>> {
    let bad = || Error::BadStateDir(path.display().to_string());
    if !path.is_absolute() {
        return Err(bad());
    }
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => parts.push(n.to_str().ok_or_else(bad)?.to_string()),
            Component::ParentDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    Ok(parts)
}

impl TrustedPath {
    fn walk(path: &Path, create: bool) -> Result<Option<Self>> {
        let parts = check_path(path)?;
        let root = std::fs::File::open("/").map_err(io_err("open", "/"))?;
        let mut fd = OwnedFd::from(root);
        let mut seen = PathBuf::from("/");
        let untrusted = |seen: &Path, why: String| Error::Untrusted {
            path: seen.to_path_buf(),
            why,
        };
        let stat = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| io_err("stat", "/")(e.into()))?;
        if let Some(why) = dir::untrusted(&stat, parts.is_empty()) {
            return Err(untrusted(&seen, why));
        }
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            seen.push(part);
            let next = if create {
                match nix::sys::stat::mkdirat(
                    fd.as_fd(),
                    part.as_str(),
                    nix::sys::stat::Mode::from_bits_truncate(0o711),
                ) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(io_err("create directory", &seen)(e.into())),
                }
                dir::open_dir(fd.as_fd(), part)
            } else {
                dir::open_dir(fd.as_fd(), part)
            };
            let next = match next {
                Ok(next) => next,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
                // ELOOP: a symlink or a magic link (/proc/<pid>/root) on the way.
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(untrusted(&seen, "is a symlink or a magic link".into()))
                }
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    return Err(untrusted(&seen, "leaves the path it names".into()))
                }
                // O_NOFOLLOW|O_DIRECTORY on a symlink is ENOTDIR too: say which.
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                    let why = match dir::stat(fd.as_fd(), part) {
                        Ok(Some(s)) if s.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                            "is a symlink or a magic link"
                        }
                        _ => "not a directory",
                    };
                    return Err(untrusted(&seen, why.into()));
                }
                Err(e) => return Err(io_err("open", &seen)(e)),
            };
            let stat =
                nix::sys::stat::fstat(next.as_fd()).map_err(|e| io_err("stat", &seen)(e.into()))?;
            if let Some(why) = dir::untrusted(&stat, last) {
                return Err(untrusted(&seen, why));
            }
            fd = next;
        }
        Ok(Some(TrustedPath { fd }))
    }

    /// Open the directory at `path` if it exists, checking every component.
    pub(crate) fn open_existing(path: &Path) -> Result<Option<Self>> {
        Self::walk(path, false)
    }
}

/// The state directory, opened once and checked: every operation works
/// relative to its fd. Cloning shares the fd.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    fd: Arc<OwnedFd>,
}

/// The node lock, released on drop.
#[derive(Debug)]
pub struct StateLock {
    _held: lock::Held,
}

/// One container's lock, released on drop; [`StateDir::finish_container`]
/// also removes its file once the container's attachments are gone.
#[derive(Debug)]
pub struct ContainerLock {
    held: lock::Held,
    container_id: String,
}

const LOCKS: &str = "locks";
const PODS: &str = "pods";
const DEV: &str = "dev";
const ALLOCATIONS: &str = "allocations";
const CLAIMS: &str = "claims";

impl StateDir {
    /// Open the state directory at `root`, creating what is missing (mode
    /// 0711), and refuse it unless it and every directory above it can be
    /// changed only by root (root-owned sticky directories like /tmp are
    /// fine above it). No symlink or magic link is followed anywhere.
    pub fn open(root: &str) -> Result<Self> {
        let path = Path::new(root);
        let trusted =
            TrustedPath::walk(path, true)?.ok_or_else(|| Error::BadStateDir(root.to_string()))?;
        Ok(StateDir {
            root: path.to_path_buf(),
            fd: Arc::new(trusted.fd),
        })
    }

    /// The state directory's path (for messages and the paths handed to
    /// others; never resolved again by this crate).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Another component's directory below this one (the handover keeps
    /// its records in `handover/`): created if missing, opened from this
    /// directory's checked fd without following links, and checked itself.
    /// A symlink, a non-directory or a directory others can change there
    /// is [`Error::Untrusted`].
    pub fn component_dir(&self, name: &str) -> Result<OwnedFd> {
        dir::ensure_dir(self.fd(), name).map_err(|e| self.component_err(name, e))
    }

    /// [`StateDir::component_dir`] without creating it: None when absent.
    pub fn existing_component_dir(&self, name: &str) -> Result<Option<OwnedFd>> {
        dir::existing_dir(self.fd(), name).map_err(|e| self.component_err(name, e))
    }

    fn component_err(&self, name: &str, e: std::io::Error) -> Error {
        let path = self.root.join(name);
        match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => Error::Untrusted {
                path,
                why: "a symlink or not a directory".into(),
            },
            None if e.kind() == std::io::ErrorKind::PermissionDenied => Error::Untrusted {
                path,
                why: e.to_string(),
            },
            _ => io_err("open", path)(e),
        }
    }

    fn sub(&self, name: &str) -> Result<OwnedFd> {
        dir::ensure_dir(self.fd(), name).map_err(io_err("open", self.root.join(name)))
    }

    fn sub_existing(&self, name: &str) -> Result<Option<OwnedFd>> {
        dir::existing_dir(self.fd(), name).map_err(io_err("open", self.root.join(name)))
    }

    fn pod_dir(&self, container_id: &str, create: bool) -> Result<Option<OwnedFd>> {
        let path = || self.root.join(PODS).join(container_id);
        if !is_safe_name(container_id) {
            return Err(Error::BadRecord {
                path: path(),
                why: "container ID is not a safe file name".into(),
            });
        }
        if create {
            let pods = self.sub(PODS)?;
            return dir::ensure_dir(pods.as_fd(), container_id)
                .map(Some)
                .map_err(io_err("open", path()));
        }
        let Some(pods) = self.sub_existing(PODS)? else {
            return Ok(None);
        };
        dir::existing_dir(pods.as_fd(), container_id).map_err(io_err("open", path()))
    }

    /// The path of a device-plugin device's node (the `host_path` of Allocate).
    pub fn device_node_path(&self, device_id: &str) -> PathBuf {
        self.root.join(DEV).join(device_id)
    }

    /// The path of a standalone attachment's node.
    pub fn standalone_node_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.root
            .join(PODS)
            .join(container_id)
            .join(format!("{ifname}.tap"))
    }

    /// The path of a node, for messages.
    pub fn node_path(&self, node: NodeRef<'_>) -> PathBuf {
        match node {
            NodeRef::Device(id) => self.device_node_path(id),
            NodeRef::Standalone {
                container_id,
                ifname,
            } => self.standalone_node_path(container_id, ifname),
        }
    }

    /// The node lock, waiting at most `timeout`. Held only around short
    /// sections (never across IPAM or another process).
    pub fn lock(&self, timeout: Duration) -> Result<StateLock> {
        let path = self.root.join("lock");
        match lock::lock(self.fd(), "lock", timeout) {
            Ok(held) => Ok(StateLock { _held: held }),
            Err(lock::LockError::TimedOut) => Err(Error::LockTimeout {
                what: format!("node lock {}", path.display()),
                waited: timeout,
            }),
            Err(lock::LockError::Io(e)) => Err(io_err("lock", path)(e)),
        }
    }

    /// The lock of one container's attachments, waiting at most `timeout`.
    pub fn lock_container(&self, container_id: &str, timeout: Duration) -> Result<ContainerLock> {
        let path = self.root.join(LOCKS).join(container_id);
        if !is_safe_name(container_id) {
            return Err(Error::BadStateDir(path.display().to_string()));
        }
        let locks = self.sub(LOCKS)?;
        match lock::lock(locks.as_fd(), container_id, timeout) {
            Ok(held) => Ok(ContainerLock {
                held,
                container_id: container_id.to_string(),
            }),
            Err(lock::LockError::TimedOut) => Err(Error::LockTimeout {
                what: format!("lock of container {container_id} ({})", path.display()),
                waited: timeout,
            }),
            Err(lock::LockError::Io(e)) => Err(io_err("lock", path)(e)),
        }
    }

    /// The lock of one container if nobody holds it now.
    pub fn try_lock_container(&self, container_id: &str) -> Result<Option<ContainerLock>> {
        let path = self.root.join(LOCKS).join(container_id);
        if !is_safe_name(container_id) {
            return Err(Error::BadStateDir(path.display().to_string()));
        }
        let locks = self.sub(LOCKS)?;
        match lock::try_lock(locks.as_fd(), container_id) {
            Ok(held) => Ok(held.map(|held| ContainerLock {
                held,
                container_id: container_id.to_string(),
            })),
            Err(lock::LockError::TimedOut) => Ok(None),
            Err(lock::LockError::Io(e)) => Err(io_err("lock", path)(e)),
        }
    }

    /// Release a container's lock and, if it has no attachment left,
    /// remove its lock file and its (empty) pod directory. Waiters on the
    /// old file notice and start over on a new one.
    pub fn finish_container(&self, lock: ContainerLock) {
        let has_records = self
            .pod_dir(&lock.container_id, false)
            .ok()
            .flatten()
            .and_then(|d| dir::list(d.as_fd()).ok())
            .is_some_and(|names| names.iter().any(|n| n.ends_with(".json")));
        if !has_records {
            if let Ok(Some(pods)) = self.sub_existing(PODS) {
                dir::remove_empty_dir(pods.as_fd(), &lock.container_id);
            }
            if let Ok(Some(locks)) = self.sub_existing(LOCKS) {
                let _ = dir::unlink(locks.as_fd(), &lock.container_id);
            }
        }
        drop(lock.held);
    }

    /// Load `resources.json`; a missing file is an empty configuration.
    pub fn load_config(&self) -> Result<NodeConfig> {
        Ok(self
            .read_json(self.fd(), "resources.json", &self.root)?
            .unwrap_or_default())
    }

    /// Persist the resource configuration (atomically, durably).
    pub fn save_config(&self, config: &NodeConfig) -> Result<()> {
        config.validate()?;
        self.write_json(self.fd(), "resources.json", &self.root, config, true)
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        dir_path: &Path,
    ) -> Result<Option<T>> {
        let path = dir_path.join(name);
        match dir::read_file(dir, name) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::Corrupt { path, source }),
            Ok(None) => Ok(None),
            Err(e) => Err(io_err("read", path)(e)),
        }
    }

    fn write_json<T: Serialize>(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        dir_path: &Path,
        value: &T,
        durable: bool,
    ) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value).expect("state serialises");
        dir::write_atomic(dir, name, &bytes, 0o600, durable)
            .map_err(io_err("write", dir_path.join(name)))
    }

    /// The attachment record of `container_id`/`ifname`, validated.
    pub fn load_record(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<AttachmentRecord>> {
        let Some(pod) = self.pod_dir(container_id, false)? else {
            return Ok(None);
        };
        let name = format!("{ifname}.json");
        let dir_path = self.root.join(PODS).join(container_id);
        let record: Option<AttachmentRecord> = self.read_json(pod.as_fd(), &name, &dir_path)?;
        if let Some(r) = &record {
            let why = if r.container_id != container_id || r.ifname != ifname {
                Some("names another attachment".to_string())
            } else {
                r.validate().err()
            };
            if let Some(why) = why {
                return Err(Error::BadRecord {
                    path: dir_path.join(name),
                    why,
                });
            }
        }
        Ok(record)
    }

    /// Write an attachment record. Attachments do not outlive a reboot
    /// (their namespaces do not), so no fsync on the CNI's hot path.
    pub fn save_record(&self, record: &AttachmentRecord) -> Result<()> {
        let dir_path = self.root.join(PODS).join(&record.container_id);
        record.validate().map_err(|why| Error::BadRecord {
            path: dir_path.clone(),
            why,
        })?;
        let pod = self
            .pod_dir(&record.container_id, true)?
            .expect("created above");
        self.write_json(
            pod.as_fd(),
            &format!("{}.json", record.ifname),
            &dir_path,
            record,
            false,
        )
    }

    /// Remove an attachment's record, its standalone node and any temporary
    /// file an interrupted writer left for them. Missing is fine.
    pub fn remove_record(&self, container_id: &str, ifname: &str) -> Result<()> {
        let Some(pod) = self.pod_dir(container_id, false)? else {
            return Ok(());
        };
        let dir_path = self.root.join(PODS).join(container_id);
        let record = format!("{ifname}.json");
        let node = format!("{ifname}.tap");
        for entry in dir::list(pod.as_fd()).unwrap_or_default() {
            if dir::is_temp_of(&entry, &record) || dir::is_temp_of(&entry, &node) {
                let _ = dir::unlink(pod.as_fd(), &entry);
            }
        }
        dir::unlink(pod.as_fd(), &record).map_err(io_err("remove", dir_path.join(&record)))
    }

    /// Every valid attachment record under `pods/`. An unreadable or
    /// invalid one is skipped: it must not stop GC for the whole node.
    pub fn records(&self) -> Result<Vec<AttachmentRecord>> {
        let mut out = Vec::new();
        let Some(pods) = self.sub_existing(PODS)? else {
            return Ok(out);
        };
        let containers = dir::list(pods.as_fd()).map_err(io_err("read", self.root.join(PODS)))?;
        for container_id in containers.iter().filter(|c| is_safe_name(c)) {
            let Ok(Some(pod)) = self.pod_dir(container_id, false) else {
                continue;
            };
            for name in dir::list(pod.as_fd()).unwrap_or_default() {
                let Some(ifname) = name.strip_suffix(".json") else {
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                if let Ok(Some(record)) = self.load_record(container_id, ifname) {
                    out.push(record);
                }
            }
        }
        Ok(out)
    }

    /// Persist one allocation (durably: it must survive a reboot).
    pub fn save_allocation(&self, record: &AllocationRecord) -> Result<()> {
        self.save_allocations(std::slice::from_ref(record))
    }

    /// Persist allocations, made durable with one sync of the directory
    /// after all are written (not one fsync per file).
    pub fn save_allocations(&self, records: &[AllocationRecord]) -> Result<()> {
        let dir_path = self.root.join(ALLOCATIONS);
        let dir = self.sub(ALLOCATIONS)?;
        for record in records {
            parse_device_id(&record.device_id)?;
            self.write_json(
                dir.as_fd(),
                &format!("{}.json", record.device_id),
                &dir_path,
                record,
                false,
            )?;
        }
        if !records.is_empty() {
            // syncfs: the files' data and the directory's new entries, in one call.
            nix::unistd::syncfs(dir.as_fd()).map_err(|e| io_err("sync", &dir_path)(e.into()))?;
        }
        Ok(())
    }

    /// The allocation (grant) of `device_id`, if the device plugin made one.
    pub fn load_allocation(&self, device_id: &str) -> Result<Option<AllocationRecord>> {
        parse_device_id(device_id)?;
        let Some(dir) = self.sub_existing(ALLOCATIONS)? else {
            return Ok(None);
        };
        let dir_path = self.root.join(ALLOCATIONS);
        let name = format!("{device_id}.json");
        let record: Option<AllocationRecord> = self.read_json(dir.as_fd(), &name, &dir_path)?;
        match record {
            Some(r) if r.device_id != device_id => Err(Error::BadRecord {
                path: dir_path.join(name),
                why: "names another device".into(),
            }),
            other => Ok(other),
        }
    }

    /// Remove an allocation record; missing is fine.
    pub fn remove_allocation(&self, device_id: &str) -> Result<()> {
        parse_device_id(device_id)?;
        self.remove_allocation_entry(&format!("{device_id}.json"))
    }

    /// The file names under `allocations/` (records and temporary files),
    /// for a sweep that must not depend on their contents.
    pub fn allocation_entries(&self) -> Result<Vec<String>> {
        match self.sub_existing(ALLOCATIONS)? {
            Some(dir) => {
                dir::list(dir.as_fd()).map_err(io_err("read", self.root.join(ALLOCATIONS)))
            }
            None => Ok(Vec::new()),
        }
    }

    /// Remove one entry of `allocations/` by name.
    pub fn remove_allocation_entry(&self, name: &str) -> Result<()> {
        let Some(dir) = self.sub_existing(ALLOCATIONS)? else {
            return Ok(());
        };
        dir::unlink(dir.as_fd(), name)
            .map_err(io_err("remove", self.root.join(ALLOCATIONS).join(name)))
    }

    /// Every readable allocation record.
    pub fn allocations(&self) -> Result<Vec<AllocationRecord>> {
        let mut out = Vec::new();
        for name in self.allocation_entries()? {
            if let Some(id) = name
                .strip_suffix(".json")
                .filter(|_| !name.starts_with('.'))
            {
                if let Ok(Some(record)) = self.load_allocation(id) {
                    out.push(record);
                }
            }
        }
        Ok(out)
    }

    fn node_dir(&self, node: NodeRef<'_>, create: bool) -> Result<Option<(OwnedFd, String)>> {
        match node {
            NodeRef::Device(id) => {
                parse_device_id(id)?;
                let dir = if create {
                    Some(self.sub(DEV)?)
                } else {
                    self.sub_existing(DEV)?
                };
                Ok(dir.map(|d| (d, id.to_string())))
            }
            NodeRef::Standalone {
                container_id,
                ifname,
            } => {
                if let Some(why) = invalid_ifname(ifname) {
                    return Err(Error::BadRecord {
                        path: self.node_path(node),
                        why: format!("ifname {why}"),
                    });
                }
                Ok(self
                    .pod_dir(container_id, create)?
                    .map(|d| (d, format!("{ifname}.tap"))))
            }
        }
    }

    /// Make (or replace) a device node for `major:minor`, owned by
    /// `uid:gid`, mode 0660, and return its identity.
    pub fn make_node(
        &self,
        node: NodeRef<'_>,
        major: u32,
        minor: u32,
        uid: u32,
        gid: u32,
    ) -> Result<NodeIdentity> {
        let path = self.node_path(node);
        let (dir, name) = self.node_dir(node, true)?.expect("created above");
        dir::make_node(dir.as_fd(), &name, libc::makedev(major, minor), uid, gid)
            .map_err(io_err("make device node", &path))?;
        let stat = dir::stat(dir.as_fd(), &name)
            .map_err(io_err("stat", &path))?
            .ok_or_else(|| io_err("stat", &path)(io::ErrorKind::NotFound.into()))?;
        Ok(NodeIdentity::of_stat(&stat))
    }

    /// `lstat` a node; `None` if missing.
    pub fn node_stat(&self, node: NodeRef<'_>) -> Result<Option<NodeStat>> {
        let path = self.node_path(node);
        let Some((dir, name)) = self.node_dir(node, false)? else {
            return Ok(None);
        };
        Ok(dir::stat(dir.as_fd(), &name)
            .map_err(io_err("stat", &path))?
            .map(|s| NodeStat {
                is_char_device: s.st_mode & libc::S_IFMT == libc::S_IFCHR,
                major: libc::major(s.st_rdev),
                minor: libc::minor(s.st_rdev),
                uid: s.st_uid,
                gid: s.st_gid,
                mode: s.st_mode & 0o7777,
            }))
    }

    /// Remove a node if it is still the file `made` (any file, for `None`:
    /// a standalone node's path is its attachment's alone), with the
    /// temporary files an interrupted maker left. Missing is fine.
    pub fn remove_node(&self, node: NodeRef<'_>, made: Option<NodeIdentity>) -> Result<()> {
        let path = self.node_path(node);
        let Some((dir, name)) = self.node_dir(node, false)? else {
            return Ok(());
        };
        for entry in dir::list(dir.as_fd()).unwrap_or_default() {
            if dir::is_temp_of(&entry, &name) {
                let _ = dir::unlink(dir.as_fd(), &entry);
            }
        }
        let Some(found) = dir::stat(dir.as_fd(), &name).map_err(io_err("stat", &path))? else {
            return Ok(());
        };
        let ours = match (node, made) {
            (NodeRef::Standalone { .. }, _) | (_, None) => true,
            (NodeRef::Device(_), Some(made)) => made == NodeIdentity::of_stat(&found),
        };
        if ours {
            dir::unlink(dir.as_fd(), &name).map_err(io_err("remove", &path))?;
        }
        Ok(())
    }

    /// The device-plugin nodes under `dev/`, by deviceID.
    pub fn device_nodes(&self) -> Result<Vec<String>> {
        match self.sub_existing(DEV)? {
            Some(dir) => Ok(dir::list(dir.as_fd())
                .map_err(io_err("read", self.root.join(DEV)))?
                .into_iter()
                .filter(|n| !n.starts_with('.'))
                .collect()),
            None => Ok(Vec::new()),
        }
    }

    /// Remove the temporary files an interrupted node maker left in `dev/`.
    pub fn remove_temp_nodes(&self) -> usize {
        let Ok(Some(dir)) = self.sub_existing(DEV) else {
            return 0;
        };
        let mut removed = 0;
        for entry in dir::list(dir.as_fd()).unwrap_or_default() {
            if entry.starts_with('.')
                && entry.ends_with(".tmp")
                && dir::unlink(dir.as_fd(), &entry).is_ok()
            {
                removed += 1;
            }
        }
        removed
    }

    /// Who holds `device_id`, if anyone recorded it. Unreadable counts as
    /// nobody: a claim is re-checked against its attachment anyway.
    pub fn load_claim(&self, device_id: &str) -> Option<Claim> {
        parse_device_id(device_id).ok()?;
        let dir = self.sub_existing(CLAIMS).ok()??;
        self.read_json(
            dir.as_fd(),
            &format!("{device_id}.json"),
            &self.root.join(CLAIMS),
        )
        .ok()
        .flatten()
    }

    pub fn save_claim(&self, device_id: &str, claim: &Claim) -> Result<()> {
        parse_device_id(device_id)?;
        let dir = self.sub(CLAIMS)?;
        self.write_json(
            dir.as_fd(),
            &format!("{device_id}.json"),
            &self.root.join(CLAIMS),
            claim,
            false,
        )
    }

    /// Drop the claim on `device_id` if this attachment holds it.
    pub fn release_claim(&self, device_id: &str, container_id: &str, ifname: &str) -> Result<()> {
        parse_device_id(device_id)?;
        match self.load_claim(device_id) {
            Some(c) if c.container_id != container_id || c.ifname != ifname => Ok(()),
            _ => {
                let Some(dir) = self.sub_existing(CLAIMS)? else {
                    return Ok(());
                };
                let name = format!("{device_id}.json");
                // What an interrupted writer of this claim left (claims are
                // written under the node lock, which the caller holds).
                for entry in dir::list(dir.as_fd()).unwrap_or_default() {
                    if dir::is_temp_of(&entry, &name) {
                        let _ = dir::unlink(dir.as_fd(), &entry);
                    }
                }
                dir::unlink(dir.as_fd(), &name)
                    .map_err(io_err("remove", self.root.join(CLAIMS).join(name)))
            }
        }
    }
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
        let state = Path::new("/var/lib/macvtap");
        let cfg = config();
        cfg.validate().unwrap();
        let dev = cfg.resolve(state, "dataplane-3").unwrap();
        assert_eq!(dev.ifindex, 4099);
        assert_eq!(dev.resource.mode, MacvtapMode::Bridge);
        assert_eq!(dev.node_path, Path::new("/var/lib/macvtap/dev/dataplane-3"));
        let host = cfg.resolve(state, "lan-b-99").unwrap();
        assert_eq!(host.resource.lower_device, "eth1");
        assert_eq!(host.resource.attach, Attach::Host);
        assert_eq!(host.host_link_name(), "mvtap5099");
    }

    #[test]
    fn refuses_device_ids_nobody_offers() {
        let state = Path::new("/s");
        let cfg = config();
        for id in ["dataplane-4", "other-0", "lan-b-100"] {
            assert!(
                matches!(cfg.resolve(state, id), Err(Error::NotOffered { .. })),
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
                matches!(cfg.resolve(state, id), Err(Error::MalformedDeviceId(_))),
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
        assert!(check_path(Path::new("relative/dir")).is_err());
        assert!(check_path(Path::new("/var/lib/../../etc")).is_err());
        assert_eq!(
            check_path(Path::new("/var/lib/macvtap")).unwrap(),
            ["var", "lib", "macvtap"]
        );
    }
}
