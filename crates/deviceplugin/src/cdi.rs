//! CDI (Container Device Interface) specs for the devices (`--cdi`): one
//! spec file per resource in the spec directory (default `/var/run/cdi`),
//! kind `macvtap.network.kubevirt.io/<resource>`, one CDI device per device
//! the resource offers, so that Allocate can name them in `cdi_devices` and
//! a kubelet from 1.31 hands those names to the runtime.
//!
//! Why every offered device and no device numbers: a device's tap exists
//! only once the macvtap does (`attach: pod`: the pod's CNI ADD, which this
//! daemon never sees; `attach: host`: Allocate), and its minor number
//! changes whenever the link is made again. So each CDI device names the
//! node the CNI plugin (or Allocate) keeps at `<stateDir>/dev/<deviceID>` as
//! its `hostPath`, with type `c` and no major/minor: the runtime reads the
//! numbers from that node when it creates the container (CDI 0.5.0), which
//! is after the ADD. The spec itself depends only on the resource's
//! configuration; it changes when resources come and go (discovery,
//! retirement), never per allocation, and a runtime's spec cache knows every
//! name before any Allocate can hand one out.
//!
//! Own serde structs rather than the `container-device-interface` crate: that
//! crate is the consumer's side (spec cache, OCI injection, a CLI) and brings
//! oci-spec, jsonschema, regex, serde_yaml, clap and anyhow into a daemon
//! that only writes one small JSON document per resource.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use macvtap_state::StateDir;
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;
use serde::{Deserialize, Serialize};

use crate::allocate::NODE_OWNER;
use crate::resource::{Resource, RESOURCE_PREFIX};

/// The spec version written: the first with `hostPath`, and the newest
/// that podman 4.3's CDI library (v0.5) accepts; later libraries (containerd,
/// CRI-O) read it too.
pub const CDI_VERSION: &str = "0.5.0";

/// Where runtimes look for generated (non-static) specs.
pub const DEFAULT_SPEC_DIR: &str = "/var/run/cdi";

/// The device node mode in the container: the owner (qemu, 107) and its
/// group read and write, as the nodes the CNI plugin makes.
pub const NODE_MODE: u32 = 0o660;

/// What CDI's `deviceNodes[].permissions` grants in the device cgroup,
/// as the DeviceSpec's.
const CGROUP_PERMISSIONS: &str = "rw";

/// A spec is a few hundred bytes per device; capacity is at most 4096.
const MAX_SPEC: usize = 4 << 20;

/// A CDI spec file (the subset this daemon writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<Device>,
}

/// One CDI device: `<kind>=<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    pub name: String,
    pub container_edits: ContainerEdits,
}

/// What a device adds to the container: its tap's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEdits {
    pub device_nodes: Vec<DeviceNode>,
}

/// A device node in the container; its numbers come from `host_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceNode {
    /// In the container: `/dev/tap<ifindex>`, as the DeviceSpec's.
    pub path: String,
    /// On the node: `<stateDir>/dev/<deviceID>`.
    pub host_path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub permissions: String,
    /// A number, as Go's `os.FileMode` reads it.
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Why the spec directory or a spec cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// The spec directory (or a directory above it) is not safe to write.
    #[error("CDI spec directory {path}: {why}")]
    Untrusted { path: PathBuf, why: String },
    /// A file operation in the spec directory failed.
    #[error("CDI spec directory {path}: {what}")]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A spec did not serialize (not expected: plain strings and numbers).
    #[error("CDI spec of resource {resource}")]
    Encode {
        resource: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Is `class` a CDI class name: a letter first, a letter or digit last,
/// letters, digits, `_`, `-`, `.` between. A resource name may start with a
/// digit; such a resource gets no CDI devices. Nor does a one-character
/// name, which the spec allows but podman 4.3's CDI library (v0.5) panics
/// on (its class check slices `[1:len-1]`).
pub fn valid_class(class: &str) -> bool {
    let mut chars = class.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    class.len() >= 2
        && first.is_ascii_alphabetic()
        && class.ends_with(|c: char| c.is_ascii_alphanumeric())
        && class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The CDI kind of a resource, `macvtap.network.kubevirt.io/<name>`: the
/// same string as its extended resource name. None when `name` is no CDI
/// class.
pub fn kind(resource_name: &str) -> Option<String> {
    valid_class(resource_name).then(|| format!("{RESOURCE_PREFIX}/{resource_name}"))
}

/// The fully qualified CDI device name of `device_id`, as `cdi_devices`
/// carries it: `macvtap.network.kubevirt.io/<resource>=<deviceID>`.
pub fn qualified_name(resource: &Resource, device_id: &str) -> Option<String> {
    kind(&resource.config.name).map(|kind| format!("{kind}={device_id}"))
}

/// The spec file of a resource: `<vendor>-<class>.json`, CDI's convention.
pub fn spec_file_name(resource_name: &str) -> String {
    format!("{RESOURCE_PREFIX}-{resource_name}.json")
}

/// The spec of `resource`, its nodes under `state`. None when the
/// resource's name is no CDI class.
pub fn spec_for(resource: &Resource, state: &StateDir) -> Option<Spec> {
    let kind = kind(&resource.config.name)?;
    let devices = (0..resource.config.capacity)
        .map(|index| {
            let id = resource.device_id(index);
            let node = DeviceNode {
                path: format!("/dev/tap{}", resource.ifindex_base + index),
                host_path: state.device_node_path(&id).to_string_lossy().into_owned(),
                kind: "c".into(),
                permissions: CGROUP_PERMISSIONS.into(),
                file_mode: NODE_MODE,
                uid: NODE_OWNER,
                gid: NODE_OWNER,
            };
            Device {
                name: id,
                container_edits: ContainerEdits {
                    device_nodes: vec![node],
                },
            }
        })
        .collect();
    Some(Spec {
        cdi_version: CDI_VERSION.into(),
        kind,
        devices,
    })
}

/// The spec directory, opened once and checked; every file is written and
/// removed relative to its fd.
#[derive(Debug)]
pub struct SpecDir {
    path: PathBuf,
    fd: OwnedFd,
}

fn untrusted(stat: &FileStat, last: bool) -> Option<String> {
    if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFDIR {
        return Some("not a directory".into());
    }
    if stat.st_uid != 0 && stat.st_uid != nix::unistd::geteuid().as_raw() {
        return Some(format!("owned by uid {}", stat.st_uid));
    }
    let mode = stat.st_mode & 0o7777;
    // Above the spec directory a sticky world-writable directory (/tmp) is
    // fine: nobody but an entry's owner can rename or remove it.
    if mode & 0o022 != 0 && (last || mode & 0o1000 == 0) {
        return Some(format!("mode {mode:o} lets others write"));
    }
    None
}

fn no_links() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

fn open_dir_below(dir: &OwnedFd, name: &std::ffi::OsStr) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(no_links());
    openat2(dir.as_fd(), name, how)
}

impl SpecDir {
    /// Open the spec directory at `path`, creating its last component
    /// (mode 0755: runtimes read it) if missing. The path is resolved once
    /// (`/var/run` is a symlink to `/run` on most nodes), then walked from
    /// `/` without following anything, and every directory on the way must
    /// be root's and closed to others' writes (sticky ones above it
    /// excepted): then nobody else can swap a component between the two.
    pub fn open(path: &Path) -> Result<SpecDir, CdiError> {
        let io_err = |what: &str, source: std::io::Error| CdiError::Io {
            path: path.to_path_buf(),
            what: what.into(),
            source,
        };
        let untrusted_at = |at: &Path, why: String| CdiError::Untrusted {
            path: at.to_path_buf(),
            why,
        };
        if !path.is_absolute() {
            return Err(untrusted_at(path, "not an absolute path".into()));
        }
        let parent = path
            .parent()
            .ok_or_else(|| untrusted_at(path, "is the root directory".into()))?;
        let name = path
            .file_name()
            .ok_or_else(|| untrusted_at(path, "does not end in a name".into()))?;
        let parent = parent
            .canonicalize()
            .map_err(|e| io_err("resolving its parent", e))?;
        let mut fd: OwnedFd = std::fs::File::open("/")
            .map_err(|e| io_err("opening /", e))?
            .into();
        let mut at = PathBuf::from("/");
        let check = |fd: &OwnedFd, at: &Path, last: bool| -> Result<(), CdiError> {
            let stat = fstat(fd.as_fd()).map_err(|e| io_err("fstat", e.into()))?;
            match untrusted(&stat, last) {
                Some(why) => Err(untrusted_at(at, why)),
                None => Ok(()),
            }
        };
        check(&fd, &at, false)?;
        for component in parent.components() {
            let Component::Normal(part) = component else {
                continue;
            };
            at.push(part);
            fd = open_dir_below(&fd, part).map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => {
                    untrusted_at(&at, "a symlink or not a directory".into())
                }
                e => io_err(&format!("opening {}", at.display()), e.into()),
            })?;
            check(&fd, &at, false)?;
        }
        at.push(name);
        match nix::sys::stat::mkdirat(fd.as_fd(), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io_err("creating it", e.into())),
        }
        let dir = open_dir_below(&fd, name).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => {
                untrusted_at(&at, "a symlink or not a directory".into())
            }
            e => io_err("opening it", e.into()),
        })?;
        check(&dir, &at, true)?;
        Ok(SpecDir {
            path: path.to_path_buf(),
            fd: dir,
        })
    }

    /// The path given at open (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, what: String, source: std::io::Error) -> CdiError {
        CdiError::Io {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// Write every resource's spec and remove this daemon's specs of any
    /// other resource (a retired one, one configured away while the daemon
    /// was down). Files of other vendors are never touched. A resource
    /// whose name is no CDI class is left out, with a warning.
    pub fn sync<'a>(
        &self,
        resources: impl IntoIterator<Item = &'a Arc<Resource>>,
        state: &StateDir,
    ) -> Result<(), CdiError> {
        let mut keep = BTreeSet::new();
        for resource in resources {
            let name = &resource.config.name;
            let Some(spec) = spec_for(resource, state) else {
                tracing::warn!(
                    resource = %resource.resource_name(),
                    "no CDI spec: {name:?} is no CDI class name (a letter first, two characters at least); Allocate answers DeviceSpecs only"
                );
                continue;
            };
            let file = spec_file_name(name);
            let bytes = serde_json::to_vec_pretty(&spec).map_err(|source| CdiError::Encode {
                resource: name.clone(),
                source,
            })?;
            // Unchanged specs stay as they are: a rewrite would make every
            // runtime watching the directory read them all again.
            if self.read_bytes(&file)?.as_deref() != Some(bytes.as_slice()) {
                self.write(&file, &bytes)?;
            }
            keep.insert(file);
        }
        for entry in self.entries()? {
            let ours =
                entry.starts_with(&format!("{RESOURCE_PREFIX}-")) && entry.ends_with(".json");
            // A crashed write's leftover (see `write`).
            let ours_temp =
                entry.starts_with(&format!(".{RESOURCE_PREFIX}-")) && entry.ends_with(".tmp");
            if (ours && !keep.contains(&entry)) || ours_temp {
                self.remove(&entry)?;
                tracing::info!(file = %entry, dir = %self.path.display(), "removed a CDI spec of a resource no longer offered");
            }
        }
        Ok(())
    }

    /// The spec file `name` as it is now (tests, diagnostics); None when absent.
    pub fn read(&self, name: &str) -> Result<Option<Spec>, CdiError> {
        let Some(bytes) = self.read_bytes(name)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            self.io(
                format!("parsing {name}"),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    /// The bytes of regular file `name` (up to a little more than the
    /// largest spec); None when absent or not a regular file (then it is
    /// replaced by the rename).
    fn read_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, CdiError> {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK)
            .resolve(no_links());
        let fd = match openat2(self.fd.as_fd(), name, how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ELOOP) => return Ok(None),
            Err(e) => return Err(self.io(format!("opening {name}"), e.into())),
        };
        let stat = fstat(fd.as_fd()).map_err(|e| self.io(format!("fstat {name}"), e.into()))?;
        if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::fs::File::from(fd), MAX_SPEC as u64 + 1),
            &mut bytes,
        )
        .map_err(|e| self.io(format!("reading {name}"), e))?;
        Ok(Some(bytes))
    }

    /// Under a temporary name first (CDI readers take only `*.json` and
    /// `*.yaml`, and it starts with a dot), synced, then renamed: a runtime
    /// reads the old spec or the new one, never half of one.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), CdiError> {
        macvtap_state::write_atomic(self.fd.as_fd(), name, bytes, 0o644, true)
            .map_err(|e| self.io(format!("writing {name}"), e))
    }

    fn remove(&self, name: &str) -> Result<(), CdiError> {
        match nix::unistd::unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(self.io(format!("removing {name}"), e.into())),
        }
    }

    fn entries(&self) -> Result<Vec<String>, CdiError> {
        let listing = |e: Errno| self.io("listing it".into(), e.into());
        let dup = self.fd.try_clone().map_err(|e| self.io("dup".into(), e))?;
        let mut dir = nix::dir::Dir::from_fd(dup).map_err(listing)?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(listing)?;
            if let Ok(name) = entry.file_name().to_str() {
                if name != "." && name != ".." {
                    names.push(name.to_string());
                }
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_follow_cdi() {
        for good in ["dataplane", "eth0", "bond0.100", "ab", "up_link-2"] {
            assert!(valid_class(good), "{good}");
        }
        for bad in ["", "a", "0eth", "eth0-", "eth.", "a/b", "a=b", "_x"] {
            assert!(!valid_class(bad), "{bad}");
        }
        assert_eq!(
            kind("dataplane").as_deref(),
            Some("macvtap.network.kubevirt.io/dataplane")
        );
        assert_eq!(kind("10g"), None);
    }

    #[test]
    fn node_fields_have_cdi_spelling() {
        let node = DeviceNode {
            path: "/dev/tap7".into(),
            host_path: "/s/dev/x-0".into(),
            kind: "c".into(),
            permissions: "rw".into(),
            file_mode: NODE_MODE,
            uid: 107,
            gid: 107,
        };
        let v = serde_json::to_value(&node).expect("serializes");
        assert_eq!(
            v,
            serde_json::json!({"path": "/dev/tap7", "hostPath": "/s/dev/x-0", "type": "c",
                "permissions": "rw", "fileMode": 432, "uid": 107, "gid": 107})
        );
    }
}
