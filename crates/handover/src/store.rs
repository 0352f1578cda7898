//! Durable handover records under `<state dir>/handover/`.
//!
//! The state directory is opened and checked by `macvtap_state::StateDir`
//! (every component root-owned and not writable by others, no symlinks);
//! the records are then written relative to a directory fd this module
//! opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` and checked itself. A record is written under a
//! temporary name, fsynced, renamed into place and its directory fsynced:
//! after a crash it is there whole or not at all, and it is there before
//! anything in the container is changed.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use macvtap_net::MacAddr;
use macvtap_state::{ContainerLock, StateDir};
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::identity::Identity;

const DIR: &str = "handover";
const MAX_RECORD: u64 = 1 << 20;
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Which interface of which namespace a record is about. The namespace is
/// named by its identity (device and inode of its nsfs file), never by a
/// path such as `/proc/<pid>/ns/net` that can name another one later.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordKey {
    pub netns_dev: u64,
    pub netns_ino: u64,
    pub interface: String,
}

impl RecordKey {
    /// The record's file name.
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}-{}.json",
            self.netns_dev, self.netns_ino, self.interface
        )
    }

    fn lock_name(&self) -> String {
        let hex: String = self.interface.bytes().map(|b| format!("{b:02x}")).collect();
        format!("handover-{}-{}-{hex}", self.netns_dev, self.netns_ino)
    }
}

/// How far an apply got. Undo does not need it (every step of undo is
/// safe whatever was done), it tells people and `doctor` what they see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Written before anything was changed; apply may have stopped anywhere.
    Intent,
    /// Everything made and removed: the guest owns the identity.
    Applied,
}

/// What the handover makes in the container's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Made {
    /// The guest's macvtap.
    pub macvtap: String,
    /// The macvtap's MAC, which the guest must use.
    #[serde(with = "crate::mac_serde")]
    pub mac: MacAddr,
    /// `bridge`, `vepa`, `private` or `passthru`.
    pub mode: String,
    /// The macvtap's ifindex once made (informational).
    #[serde(default)]
    pub macvtap_index: Option<u32>,
    /// The DHCP server's shim macvlan (made only while a server runs).
    pub shim: String,
    #[serde(with = "crate::mac_serde")]
    pub shim_mac: MacAddr,
}

/// The CNI attachment that made a handover (the chained `macvtap` plugin
/// with `"handover": true`): its DEL undoes the handover; a launcher
/// (`macvtapctl handover`) only uses it and leaves it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniOwner {
    /// The network configuration's `name`.
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

/// A handover record: the identity taken from the interface and what was
/// made instead. Undo needs nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub version: u32,
    pub key: RecordKey,
    /// The path the namespace was opened from (informational).
    pub netns_path: PathBuf,
    pub phase: Phase,
    pub identity: Identity,
    pub made: Made,
    /// Set when a CNI plugin made the handover (and so owns its undo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniOwner>,
}

/// The handover records of one state directory.
#[derive(Debug, Clone)]
pub struct Store {
    state: StateDir,
    dir: std::sync::Arc<OwnedFd>,
    path: PathBuf,
}

fn resolve() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// The handover directory refused as unsafe is this crate's `Untrusted`.
fn untrusted_or_state(source: macvtap_state::Error) -> Error {
    match source {
        macvtap_state::Error::Untrusted { path, why } => Error::Untrusted { path, why },
        source => Error::StateDir { source },
    }
}

impl Store {
    /// Open (and create) the handover records under the state directory
    /// `root`. Refuses a state directory anyone but root could change.
    pub fn open(root: &str) -> Result<Store> {
        let state = StateDir::open(root).map_err(|source| Error::StateDir { source })?;
        Store::in_state(state)
    }

    /// The handover records of a state directory already opened (and
    /// checked): `handover/` below its fd, created if missing.
    pub fn in_state(state: StateDir) -> Result<Store> {
        let dir = state.component_dir(DIR).map_err(untrusted_or_state)?;
        Ok(Store::with_dir(state, dir))
    }

    /// Like [`Store::in_state`], but None when no handover ever wrote a
    /// record there (nothing is created).
    pub fn existing_in(state: StateDir) -> Result<Option<Store>> {
        let dir = state
            .existing_component_dir(DIR)
            .map_err(untrusted_or_state)?;
        Ok(dir.map(|dir| Store::with_dir(state, dir)))
    }

    fn with_dir(state: StateDir, dir: OwnedFd) -> Store {
        let path = state.root().join(DIR);
        Store {
            state,
            dir: std::sync::Arc::new(dir),
            path,
        }
    }

    /// Where the records are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the record of `key` is (for messages).
    pub fn record_path(&self, key: &RecordKey) -> PathBuf {
        self.path.join(key.file_name())
    }

    /// The lock of one interface's handover, held across apply and undo.
    pub(crate) fn lock(&self, key: &RecordKey) -> Result<ContainerLock> {
        self.state
            .lock_container(&key.lock_name(), LOCK_WAIT)
            .map_err(|source| Error::StateDir { source })
    }

    pub(crate) fn unlock(&self, lock: ContainerLock) {
        self.state.finish_container(lock);
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The record of `key`, if there is one.
    pub fn load(&self, key: &RecordKey) -> Result<Option<Record>> {
        let name = key.file_name();
        let path = self.path.join(&name);
        let Some(bytes) = self.read(&name)? else {
            return Ok(None);
        };
        let record: Record =
            serde_json::from_slice(&bytes).map_err(|source| Error::CorruptRecord {
                path: path.clone(),
                source,
            })?;
        if &record.key != key {
            return Err(Error::RecordMismatch {
                path,
                why: "it names another namespace or interface".into(),
            });
        }
        Ok(Some(record))
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path.join(name);
        let err = |op, e: Errno| Error::Record {
            op,
            path: path.clone(),
            source: e.into(),
        };
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK)
            .resolve(resolve());
        let fd = match openat2(self.fd(), name, how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(err("open", e)),
        };
        let st = fstat(fd.as_fd()).map_err(|e| err("stat", e))?;
        let regular =
            SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG;
        if !regular || !trusted_owner(st.st_uid) || st.st_mode & 0o022 != 0 {
            return Err(Error::Untrusted {
                path,
                why: "not a regular file that only root can change".into(),
            });
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(MAX_RECORD + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| Error::Record {
                op: "read",
                path: path.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_RECORD {
            return Err(Error::Untrusted {
                path,
                why: "too large to be a record".into(),
            });
        }
        Ok(Some(bytes))
    }

    /// Write a record durably: temporary file, fsync, rename, fsync of the
    /// directory.
    pub fn save(&self, record: &Record) -> Result<()> {
        let name = record.key.file_name();
        let path = self.path.join(&name);
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| Error::CorruptRecord {
            path: path.clone(),
            source,
        })?;
        let err = |op| {
            let path = path.clone();
            move |e: Errno| Error::Record {
                op,
                path,
                source: e.into(),
            }
        };
        macvtap_state::write_atomic(self.fd(), &name, &bytes, 0o600, true).map_err(|source| {
            Error::Record {
                op: "write",
                path: path.clone(),
                source,
            }
        })?;
        nix::unistd::fsync(self.fd()).map_err(err("fsync directory of"))
    }

    /// Remove the record of `key` durably; missing is fine.
    pub fn remove(&self, key: &RecordKey) -> Result<()> {
        let name = key.file_name();
        let path = self.path.join(&name);
        let err = |op| {
            let path = path.clone();
            move |e: Errno| Error::Record {
                op,
                path,
                source: e.into(),
            }
        };
        match nix::unistd::unlinkat(self.fd(), name.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(err("remove")(e)),
        }
        nix::unistd::fsync(self.fd()).map_err(err("fsync directory of"))
    }

    /// Remove `<record stem>.<suffix>` next to the record of `key` (a
    /// front end's companion file, e.g. `supervisor` or `seed.img`); the
    /// name comes from the key, never from a file. Missing is fine.
    pub fn remove_beside(&self, key: &RecordKey, suffix: &str) -> Result<()> {
        let name = format!("{}.{suffix}", key.file_name().trim_end_matches(".json"));
        match nix::unistd::unlinkat(self.fd(), name.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(Error::Record {
                op: "remove",
                path: self.path.join(name),
                source: e.into(),
            }),
        }
    }

    /// Every readable record (for `doctor` and for listing handovers).
    pub fn records(&self) -> Result<Vec<Record>> {
        let fd = nix::fcntl::openat(
            self.fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Record {
            op: "list",
            path: self.path.clone(),
            source: e.into(),
        })?;
        let mut listing = nix::dir::Dir::from_fd(fd).map_err(|e| Error::Record {
            op: "list",
            path: self.path.clone(),
            source: e.into(),
        })?;
        let names: Vec<String> = listing
            .iter()
            .flatten()
            .filter_map(|e| e.file_name().to_str().ok().map(str::to_string))
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        let mut out = Vec::new();
        for name in names {
            if let Ok(Some(bytes)) = self.read(&name) {
                if let Ok(record) = serde_json::from_slice::<Record>(&bytes) {
                    if record.key.file_name() == name {
                        out.push(record);
                    }
                }
            }
        }
        Ok(out)
    }
}
