//! Named network namespaces, made and removed the way `ip netns add/del`
//! do: a namespace bind-mounted onto `/run/netns/NAME`, which keeps it
//! alive with no process inside and lets other tools find it by name.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::error::{Error, Result};
use crate::netns::NetNs;

/// Where named network namespaces live (iproute2's `NETNS_RUN_DIR`).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `/run/netns/<name>`, refusing names that would escape the directory.
pub fn named_netns_path(name: &str) -> Result<PathBuf> {
    let bad = name.is_empty() || name == "." || name == ".." || name.contains('/');
    if bad || name.contains('\0') {
        return Err(Error::Netns {
            op: "name",
            path: PathBuf::from(name),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "a namespace name is one path component",
            ),
        });
    }
    Ok(Path::new(NETNS_RUN_DIR).join(name))
}

impl NetNs {
    /// Create a new, empty network namespace named `name` (fails with
    /// `EEXIST` when the name is taken) and open it.
    pub fn create_named(name: &str) -> Result<NetNs> {
        let path = named_netns_path(name)?;
        let err = |op, source| Error::Netns {
            op,
            path: path.clone(),
            source,
        };
        make_run_dir_shared().map_err(|e| err("prepare /run/netns", e))?;
        // The mount point: a file made exclusively, so two creators of one
        // name cannot both succeed.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| err("create", e))?;
        // unshare() applies to the calling thread only: do it on a thread
        // that exists for nothing else and ends right after the mount.
        let mounted = std::thread::scope(|scope| {
            scope
                .spawn(|| -> io::Result<()> {
                    unshare(CloneFlags::CLONE_NEWNET)?;
                    mount(
                        Some("/proc/thread-self/ns/net"),
                        &path,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )?;
                    Ok(())
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
        });
        if let Err(e) = mounted {
            let _ = fs::remove_file(&path);
            return Err(err("unshare and bind-mount", e));
        }
        NetNs::open(&path)
    }

    /// Remove the named namespace `name`: unmount and delete its file. The
    /// namespace itself (and every link in it) goes away once nothing else
    /// holds it (processes, open handles).
    pub fn delete_named(name: &str) -> Result<()> {
        let path = named_netns_path(name)?;
        if !path.exists() {
            return Err(Error::NetnsMissing(path));
        }
        match umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (a half-made namespace): just remove.
            Ok(()) | Err(nix::Error::EINVAL) => {}
            Err(e) => {
                return Err(Error::Netns {
                    op: "unmount",
                    path,
                    source: e.into(),
                })
            }
        }
        fs::remove_file(&path).map_err(|source| Error::Netns {
            op: "remove",
            path,
            source,
        })
    }
}

/// Make `/run/netns` a shared mount point, as iproute2 does, so that
/// namespace mounts made here show up in other mount namespaces (and those
/// made there show up here).
fn make_run_dir_shared() -> io::Result<()> {
    fs::create_dir_all(NETNS_RUN_DIR)?;
    let share = || {
        mount(
            None::<&str>,
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match share() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself (recursively, so that
        // namespaces someone else mounted meanwhile stay visible), retry.
        Err(nix::Error::EINVAL) => {
            mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            Ok(share()?)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_names_that_are_not_one_component() {
        for bad in ["", ".", "..", "a/b", "/abs"] {
            assert!(named_netns_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            named_netns_path("lab-1").unwrap(),
            Path::new("/run/netns/lab-1")
        );
    }
}
