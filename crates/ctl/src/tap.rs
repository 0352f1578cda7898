//! Opening a macvtap's tap device safely: by the device number the kernel
//! reports for the interface in its own namespace, through a private node
//! that exists only while it is opened. Never by the `/dev/tap<ifindex>`
//! name, which belongs to whichever namespace's macvtap took it first.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use macvtap_net::{make_device_node, DeviceNumber, Link};

use crate::scope::{Scope, ScopeError};

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error("cannot read the tap device number of {name}")]
    DeviceNumber {
        name: String,
        #[source]
        source: macvtap_net::Error,
    },
    #[error("cannot make a private device node")]
    Node(#[source] io::Error),
    #[error("cannot make a private device node")]
    NodeKernel(#[source] macvtap_net::Error),
    #[error("cannot open the tap device {dev} of {name} (queue {queue})")]
    Open {
        name: String,
        dev: DeviceNumber,
        queue: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the device node {path} as uid {uid}, gid {gid}")]
    OpenAs {
        path: PathBuf,
        uid: u32,
        gid: u32,
        #[source]
        source: io::Error,
    },
    #[error("the device opened for {want} belongs to {got:?}; refusing to use it")]
    WrongInterface { want: String, got: String },
    #[error("TUNGETIFF on the tap device of {name} failed")]
    GetIff {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Open tap queues of one macvtap.
#[derive(Debug)]
pub struct TapQueues {
    pub fds: Vec<OwnedFd>,
}

/// Open `queues` queues of the macvtap `link`, which lives in `scope`.
pub fn open_queues(scope: &Scope, link: &Link, queues: u32) -> Result<TapQueues, TapError> {
    let dev = scope
        .sysfs()?
        .tap_device_number(&link.name, link.index)
        .map_err(|source| TapError::DeviceNumber {
            name: link.name.clone(),
            source,
        })?;
    // A temp dir on a `nodev` mount (a hardened /tmp) can hold the node but
    // not open it: then try /dev, which always allows device nodes.
    let mut fds = Vec::new();
    for base in [std::env::temp_dir(), PathBuf::from("/dev")] {
        match open_through_private_node(&base, dev, &link.name, queues) {
            Ok(opened) => {
                fds = opened;
                break;
            }
            Err(TapError::Open { ref source, .. })
                if source.raw_os_error() == Some(libc::EACCES) && base != Path::new("/dev") => {}
            Err(e) => return Err(e),
        }
    }
    // Belt and braces: the kernel itself says which interface this is.
    if let Some(first) = fds.first() {
        let got = tap_interface_name(first).map_err(|source| TapError::GetIff {
            name: link.name.clone(),
            source,
        })?;
        if got != link.name {
            return Err(TapError::WrongInterface {
                want: link.name.clone(),
                got,
            });
        }
    }
    Ok(TapQueues { fds })
}

/// Open the device node at `path` read-write the way the VM's user
/// `uid:gid` would: the node's owner and mode decide, not root's override.
/// Then check with `TUNGETIFF` that it is the interface `name`.
///
/// The path is resolved as root (a container runtime hands the node to the
/// container itself, so the directories above it are not the VM's to
/// walk); only the open of the node is done with the filesystem identity
/// `uid:gid` (`setfsuid`, per thread, on a thread of its own, which drops
/// the file capabilities such as CAP_DAC_OVERRIDE).
pub fn open_node_as(path: &Path, uid: u32, gid: u32, name: &str) -> Result<OwnedFd, TapError> {
    let open_err = |source: io::Error| TapError::OpenAs {
        path: path.to_path_buf(),
        uid,
        gid,
        source,
    };
    let located = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map(OwnedFd::from)
        .map_err(open_err)?;
    let reopen = format!("/proc/self/fd/{}", located.as_raw_fd());
    let opened = std::thread::scope(|s| {
        s.spawn(|| {
            // This thread's filesystem identity only; the thread ends right
            // after. They return the previous value: asking again tells
            // whether the change took.
            use nix::unistd::{setfsgid, setfsuid, Gid, Uid};
            setfsgid(Gid::from_raw(gid));
            setfsuid(Uid::from_raw(uid));
            if setfsuid(Uid::from_raw(uid)).as_raw() != uid
                || setfsgid(Gid::from_raw(gid)).as_raw() != gid
            {
                return Err(io::Error::other("setfsuid/setfsgid did not take"));
            }
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&reopen)
                .map(OwnedFd::from)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the opening thread panicked")))
    })
    .map_err(open_err)?;
    let got = tap_interface_name(&opened).map_err(|source| TapError::GetIff {
        name: name.to_string(),
        source,
    })?;
    if got != name {
        return Err(TapError::WrongInterface {
            want: name.to_string(),
            got,
        });
    }
    Ok(opened)
}

/// Make a node for `dev` in a fresh private directory under `base`, open
/// it `queues` times, and remove node and directory.
fn open_through_private_node(
    base: &Path,
    dev: DeviceNumber,
    name: &str,
    queues: u32,
) -> Result<Vec<OwnedFd>, TapError> {
    let dir = PrivateDir::new(base).map_err(TapError::Node)?;
    let node = dir.path().join("tap");
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    make_device_node(&node, dev, uid, gid).map_err(TapError::NodeKernel)?;
    (0..queues)
        .map(|queue| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&node)
                .map(OwnedFd::from)
                .map_err(|source| TapError::Open {
                    name: name.to_string(),
                    dev,
                    queue,
                    source,
                })
        })
        .collect()
}

// TUNGETIFF is declared `_IOR('T', 210, unsigned int)` but fills a whole
// `struct ifreq`: the request number from the declaration, the pointer type
// from what the kernel writes.
nix::ioctl_read_bad!(
    tun_get_iff,
    nix::request_code_read!(b'T', 210, std::mem::size_of::<libc::c_uint>()),
    libc::ifreq
);

/// The interface name behind an open tap fd (`TUNGETIFF`).
pub fn tap_interface_name(fd: &impl AsRawFd) -> io::Result<String> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes one struct ifreq into the one we pass.
    unsafe { tun_get_iff(fd.as_raw_fd(), &mut ifreq) }?;
    let name: Vec<u8> = ifreq
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&name).into_owned())
}

/// A directory only root can enter, removed with whatever is in it.
#[derive(Debug)]
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new(base: &Path) -> io::Result<PrivateDir> {
        let path =
            nix::unistd::mkdtemp(&base.join("macvtapctl-XXXXXX")).map_err(io::Error::from)?;
        Ok(PrivateDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Whether a path can be opened read-write (a device we would hand QEMU).
pub fn can_open_rw(path: &str) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}
