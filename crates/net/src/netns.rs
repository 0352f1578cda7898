use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::error::{Error, Result};

/// `NSFS_MAGIC` from linux/magic.h: the filesystem of `/proc/*/ns/*` and of
/// their bind mounts such as `/run/netns/X`.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// An open network namespace.
///
/// Holding the fd keeps the namespace alive and lets the kernel create links
/// directly inside it (`IFLA_NET_NS_FD`) without anyone entering it.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
}

impl NetNs {
    /// Open the namespace at `path` (e.g. `/run/netns/X`, `/proc/PID/ns/net`)
    /// and check that it really is a network namespace.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                Error::NetnsMissing(path.to_path_buf())
            } else {
                Error::Netns {
                    op: "open",
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let fd = OwnedFd::from(file);
        let statfs = nix::sys::statfs::fstatfs(fd.as_fd()).map_err(|e| Error::Netns {
            op: "statfs",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        #[allow(clippy::unnecessary_cast)]
        if statfs.filesystem_type().0 as i64 != NSFS_MAGIC || !is_net_namespace(fd.as_raw_fd()) {
            return Err(Error::NotANetns(path.to_path_buf()));
        }
        Ok(NetNs {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Self> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's identity: device and inode of its nsfs file. A path
    /// like /proc/<pid>/ns/net can name another namespace later; this
    /// cannot while the namespace lives.
    pub fn identity(&self) -> Result<(u64, u64)> {
        let stat = nix::sys::stat::fstat(self.fd.as_fd()).map_err(|e| Error::Netns {
            op: "stat",
            path: self.path.clone(),
            source: e.into(),
        })?;
        Ok((stat.st_dev, stat.st_ino))
    }

    /// Raw fd, for `IFLA_NET_NS_FD`.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Run `f` on a fresh thread that has entered this namespace.
    ///
    /// The thread exists only for `f`, so no pooled or caller thread is ever
    /// left in a foreign namespace. Sockets opened inside `f` stay bound to
    /// this namespace and may be returned and used from any thread.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let fd = self.fd.as_fd();
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(scope, move || -> Result<T> {
                    enter(fd, &self.path)?;
                    Ok(f())
                })
                .map_err(|e| Error::Thread(e.to_string()))?;
            worker
                .join()
                .map_err(|_| Error::Thread("worker panicked".into()))?
        })
    }
}

impl NetNs {
    /// Run `f` on the calling thread while it is inside this namespace, and
    /// put the thread back where it was before returning.
    ///
    /// Cheaper than [`NetNs::run`] (two `setns` instead of a thread), for
    /// short synchronous work on a thread nobody else borrows meanwhile: never
    /// an async executor's worker. Threads or processes started by `f` are
    /// born inside this namespace. If the thread cannot be put back the
    /// process aborts rather than go on in the wrong namespace.
    pub fn run_here<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let home = NetNs::current()?;
        enter(self.fd.as_fd(), &self.path)?;
        let out = f();
        if let Err(e) = enter(home.fd.as_fd(), &home.path) {
            eprintln!("fatal: cannot return to the original network namespace: {e}");
            std::process::abort();
        }
        Ok(out)
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn enter(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
        op: "setns",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// `NS_GET_NSTYPE` tells which kind of namespace an nsfs fd is.
fn is_net_namespace(fd: RawFd) -> bool {
    // _IO(0xb7, 0x3)
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: the ioctl takes no argument and only reads the fd's inode.
    let kind = unsafe { libc::ioctl(fd, NS_GET_NSTYPE as _) };
    kind == libc::CLONE_NEWNET
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_that_are_not_network_namespaces() {
        assert!(matches!(
            NetNs::open("/nonexistent/netns"),
            Err(Error::NetnsMissing(_))
        ));
        assert!(matches!(
            NetNs::open("/proc/self/status"),
            Err(Error::NotANetns(_))
        ));
        // A namespace, but a mount namespace.
        if Path::new("/proc/self/ns/mnt").exists() {
            assert!(matches!(
                NetNs::open("/proc/self/ns/mnt"),
                Err(Error::NotANetns(_)) | Err(Error::Netns { .. })
            ));
        }
    }

    #[test]
    fn opens_own_namespace() {
        let ns = NetNs::current().expect("own netns");
        assert!(ns.raw_fd() >= 0);
    }
}
