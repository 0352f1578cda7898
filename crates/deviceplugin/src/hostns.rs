//! Where the daemon's files are: its own mount namespace, or the host's.
//!
//! The daemon shares its state directory with the CNI plugin, which runs
//! on the host and reads the host's `/var/lib/macvtap`; the kubelet maps
//! the device nodes Allocate names from the host's filesystem. Our own
//! manifest mounts the state directory, the PodResources socket and `/dev`
//! from the host. Upstream's manifest and the cluster-network-addons-
//! operator's template (which the operator reconciles: it cannot be edited)
//! mount only `/var/lib/kubelet/device-plugins`, but run the pod with
//! `hostPID` and `privileged` (upstream's own daemon reaches the host's
//! network namespace through `/proc/1/ns/net` the same way).
//!
//! So, with [`HostMounts::Auto`] (the default): when PID 1 lives in another
//! mount namespace (a container with `hostPID`) and the state directory is
//! not mounted at all (neither the same directory as
//! `/proc/1/root/<state dir>` nor a mount point), the daemon joins PID 1's mount namespace at start, and
//! every default path (state directory, device-plugin directory, PodResources
//! socket, `/dev`) is the host's, exactly as for a daemon run on the host.
//! When the state directory is mounted it stays where it is. When it can
//! neither (no `hostPID`, or joining is refused) it runs on, unshared, and
//! says so: the CNI on the host will not find its allocations.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Whether to join the host's (PID 1's) mount namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMounts {
    /// When PID 1's differs from ours and the state directory is not the host's.
    Auto,
    /// Always (an error when it cannot).
    Always,
    /// Never.
    Never,
}

/// What [`enter`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// On the host: the initial PID namespace, PID 1's mount namespace.
    SameAsPid1,
    /// In a container whose state directory is mounted: the host's (compared
    /// with PID 1's through hostPID) or, without hostPID, assumed so.
    Mounted { verified: bool },
    /// Joined PID 1's mount namespace.
    Host,
    /// With hostPID, the state directory is a mount, but not of the host's
    /// directory of that path: a deliberate layout, kept, with a warning.
    MountedElsewhere,
    /// Kept our own namespace though PID 1's differs (`--host-mounts never`).
    Kept,
    /// Could not join: runs unshared.
    Unshared { why: String },
}

impl Layout {
    /// One line for the log: the mode the daemon runs in.
    pub fn describe(&self, state_dir: &str) -> String {
        match self {
            Layout::SameAsPid1 => format!(
                "files: on the host (its PID namespace and PID 1's mount namespace); state directory {state_dir}"
            ),
            Layout::Mounted { verified: true } => format!(
                "files: in a container, state directory {state_dir} mounted from the host"
            ),
            Layout::Mounted { verified: false } => format!(
                "files: in a container without hostPID, state directory {state_dir} is a mount point, taken to be the host's (the CNI plugin on the host must see the same directory)"
            ),
            Layout::Host => format!(
                "files: joined the host's mount namespace (PID 1's, through hostPID): the state directory is not mounted from the host (the layout of upstream's manifest and CNAO's template); state directory, device-plugin directory, PodResources socket and /dev are the host's; state directory {state_dir}"
            ),
            Layout::MountedElsewhere => format!(
                "files: in a container, state directory {state_dir} is a mount point but not the host's {state_dir}: kept; the CNI plugin on the host and the kubelet (Allocate's device paths) must see it at that same path"
            ),
            Layout::Kept => format!(
                "files: in a container, its own mount namespace (--host-mounts never); state directory {state_dir} is shared with the CNI plugin on the host only if mounted"
            ),
            Layout::Unshared { why } => format!(
                "files: UNSHARED: the state directory {state_dir} is not mounted from the host and the host's mount namespace cannot be joined ({why}); the CNI plugin on the host will not see this daemon's allocations: mount {state_dir} from the host (hostPath) or run the pod with hostPID"
            ),
        }
    }

    /// Whether the CNI plugin on the host can share the state directory.
    pub fn shared(&self) -> bool {
        !matches!(self, Layout::Unshared { .. } | Layout::MountedElsewhere)
    }
}

/// Why the host's mount namespace could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum HostNsError {
    /// `/proc/1/ns/mnt` cannot be opened or compared.
    #[error("PID 1's mount namespace {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// setns was refused.
    #[error("joining PID 1's mount namespace")]
    Join(#[source] nix::Error),
}

const OURS: &str = "/proc/self/ns/mnt";
const PID1: &str = "/proc/1/ns/mnt";

fn inode(path: &str) -> Result<(u64, u64), HostNsError> {
    std::fs::metadata(path)
        .map(|m| (m.dev(), m.ino()))
        .map_err(|source| HostNsError::Open {
            path: path.into(),
            source,
        })
}

/// The inode of the initial PID namespace (the kernel's PROC_PID_INIT_INO).
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// Whether `dir` is a mount point, from `/proc/self/mountinfo` (whose
/// paths escape space, tab, newline and backslash as octal).
fn is_mount_point(mountinfo: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    let escaped = dir
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == escaped)
}

/// Whether `dir` here is the same directory as `dir` in PID 1's root
/// (a hostPath mount of it): device and inode compared.
fn same_as_pid1s(dir: &str) -> bool {
    let pid1 = Path::new("/proc/1/root").join(dir.trim_start_matches('/'));
    match (std::fs::metadata(dir), std::fs::metadata(pid1)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn join() -> Result<(), HostNsError> {
    let ns = std::fs::File::open(PID1).map_err(|source| HostNsError::Open {
        path: PID1.into(),
        source,
    })?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS).map_err(HostNsError::Join)
}

/// Decide, and join the host's mount namespace when that is the decision.
/// Must run while the process has one thread (the kernel refuses a
/// multi-threaded process a new mount namespace).
pub fn enter(mode: HostMounts, state_dir: &str) -> Result<Layout, HostNsError> {
    if mode == HostMounts::Always {
        join()?;
        return Ok(Layout::Host);
    }
    let differs = match (inode(OURS), inode(PID1)) {
        (Ok(a), Ok(b)) => a != b,
        (Err(e), _) | (_, Err(e)) => {
            if mode == HostMounts::Never {
                return Ok(Layout::Kept);
            }
            return Ok(Layout::Unshared {
                why: macvtap_net::error_chain(&e),
            });
        }
    };
    let mounted = || {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        is_mount_point(&mountinfo, state_dir)
    };
    if !differs {
        // PID 1 is ours: the host's, or (a PID namespace of our own: no
        // hostPID) this container's init, when only a mount can share.
        let initial = std::fs::metadata("/proc/self/ns/pid")
            .map(|m| m.ino() == PROC_PID_INIT_INO)
            .unwrap_or(true);
        if initial {
            return Ok(Layout::SameAsPid1);
        }
        if mounted() {
            return Ok(Layout::Mounted { verified: false });
        }
        return Ok(Layout::Unshared {
            why: "no hostPID: PID 1 is this container's own".into(),
        });
    }
    if same_as_pid1s(state_dir) {
        return Ok(Layout::Mounted { verified: true });
    }
    if mounted() {
        return Ok(Layout::MountedElsewhere);
    }
    if mode == HostMounts::Never {
        return Ok(Layout::Kept);
    }
    match join() {
        Ok(()) => Ok(Layout::Host),
        Err(e) => Ok(Layout::Unshared {
            why: macvtap_net::error_chain(&e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_from_mountinfo() {
        let info = "22 1 0:21 / / rw - overlay overlay rw\n\
                    26 22 8:1 /m /var/lib/macvtap rw - ext4 /dev/sda1 rw\n\
                    27 22 8:1 /s /srv/a\\040b rw - ext4 /dev/sda1 rw\n";
        assert!(is_mount_point(info, "/var/lib/macvtap"));
        assert!(is_mount_point(info, "/var/lib/macvtap/"));
        assert!(is_mount_point(info, "/srv/a b"));
        assert!(!is_mount_point(info, "/var/lib"));
        assert!(!is_mount_point(info, "/var/lib/macvtap/sub"));
    }

    #[test]
    fn a_directory_is_compared_with_pid1s_by_inode() {
        // The test runs where PID 1's root is ours (a host or a test VM).
        let ours = std::fs::metadata("/proc/self/root/").map(|m| m.ino());
        let pid1 = std::fs::metadata("/proc/1/root/").map(|m| m.ino());
        if ours.is_ok() && ours.ok() == pid1.ok() {
            assert!(same_as_pid1s("/tmp"));
            assert!(same_as_pid1s("/"));
        }
        assert!(!same_as_pid1s("/no/such/macvtap/state"));
    }
}
