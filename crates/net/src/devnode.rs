//! Tap character devices: find the real device number of a macvtap, and
//! make our own node for it.
//!
//! `/dev/tap<ifindex>` is a global name for a per-namespace number, so two
//! pods whose macvtaps share an ifindex share one name and devtmpfs keeps
//! only the first. The only trustworthy source is the device number in
//! sysfs, as seen from the link's own namespace.

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// A character device's major:minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceNumber {
    pub major: u32,
    pub minor: u32,
}

impl DeviceNumber {
    fn dev_t(self) -> libc::dev_t {
        libc::makedev(self.major, self.minor)
    }

    /// Parse sysfs' `MAJOR:MINOR\n`.
    pub fn parse(s: &str) -> Option<Self> {
        let (major, minor) = s.trim().split_once(':')?;
        Some(DeviceNumber {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

impl fmt::Display for DeviceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

fn tap_dev_path(ifname: &str, ifindex: u32) -> String {
    format!("class/net/{ifname}/macvtap/tap{ifindex}/dev")
}

fn parse_dev(text: &str, ifname: &str, ifindex: u32) -> Result<DeviceNumber> {
    DeviceNumber::parse(text).ok_or_else(|| Error::TapDevice {
        ifname: ifname.to_string(),
        ifindex,
        source: io::Error::new(io::ErrorKind::InvalidData, format!("bad dev {text:?}")),
    })
}

/// A private, detached sysfs instance showing one network namespace.
///
/// sysfs tags its view with the namespace of the thread that creates the
/// instance (`fsopen`/`fsmount`), so once made inside a namespace it can be
/// read from anywhere, needs no mount namespace of our own, is attached to
/// no path, and is gone when dropped. It is a live view: links created after
/// it was made show up in it.
#[derive(Debug)]
pub struct SysfsView(OwnedFd);

impl SysfsView {
    /// A view of the **calling thread's** network namespace. Fails with
    /// ENOSYS on kernels without the new mount API (before 5.2).
    pub fn here() -> io::Result<Self> {
        detached_sysfs().map(SysfsView)
    }

    /// Read a sysfs attribute, by its path below the sysfs root
    /// (e.g. `class/net/eth0/device/numa_node`).
    pub fn read(&self, rel: &str) -> io::Result<String> {
        read_at(&self.0, rel)
    }

    /// Whether a path exists below the sysfs root (a symlink counts).
    pub fn exists(&self, rel: &str) -> bool {
        nix::sys::stat::fstatat(&self.0, rel, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    }

    /// The tap device number of macvtap `ifname` (ifindex `ifindex`).
    pub fn tap_device_number(&self, ifname: &str, ifindex: u32) -> Result<DeviceNumber> {
        let text = read_at(&self.0, &tap_dev_path(ifname, ifindex)).map_err(|source| {
            Error::TapDevice {
                ifname: ifname.to_string(),
                ifindex,
                source,
            }
        })?;
        parse_dev(&text, ifname, ifindex)
    }
}

/// The tap device number of macvtap `ifname` (ifindex `ifindex`) in the
/// **calling thread's** network namespace. Call it inside [`crate::NetNs::run`]:
/// on kernels without [`SysfsView`] it falls back to a private mount
/// namespace for the calling thread, which must therefore be disposable.
pub fn tap_device_number(ifname: &str, ifindex: u32) -> Result<DeviceNumber> {
    let err = |source| Error::TapDevice {
        ifname: ifname.to_string(),
        ifindex,
        source,
    };
    match SysfsView::here() {
        Ok(view) => view.tap_device_number(ifname, ifindex),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            private_sysfs_on_this_thread().map_err(err)?;
            let text = fs::read_to_string(format!("/sys/{}", tap_dev_path(ifname, ifindex)))
                .map_err(err)?;
            parse_dev(&text, ifname, ifindex)
        }
        Err(e) => Err(err(e)),
    }
}

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn detached_sysfs() -> io::Result<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    const MOUNT_ATTR_RDONLY: libc::c_uint = 1;
    // SAFETY: fsopen with a C string literal; it makes a new fd or fails.
    let fs = cvt(unsafe { libc::syscall(libc::SYS_fsopen, c"sysfs".as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: fsopen just returned this fd and nothing else owns it.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as i32) };
    use std::os::fd::AsRawFd;
    // SAFETY: fsconfig on the fd we own, with null key and value as
    // FSCONFIG_CMD_CREATE takes them.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: fsmount on the fd we own; it makes a new fd or fails.
    let mnt = cvt(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_RDONLY,
        )
    })?;
    // SAFETY: fsmount just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as i32) })
}

fn read_at(root: &OwnedFd, rel: &str) -> io::Result<String> {
    use std::os::fd::AsRawFd;
    let rel = CString::new(rel).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: openat on an fd we own with a valid C string.
    let fd = cvt(unsafe {
        libc::openat(
            root.as_raw_fd(),
            rel.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        ) as libc::c_long
    })?;
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    let mut file = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

fn private_sysfs_on_this_thread() -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )?;
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )?;
    Ok(())
}

/// Create (or replace) a character device node at `path` for `dev`, owned
/// by `uid:gid` with mode 0660. The node appears atomically (made under a
/// temporary name, then renamed), so nobody sees it with the wrong owner.
pub fn make_device_node(path: &Path, dev: DeviceNumber, uid: u32, gid: u32) -> Result<()> {
    let err = |op, source| Error::DeviceNode {
        op,
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err("name", io::ErrorKind::InvalidInput.into()))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let made = (|| {
        nix::sys::stat::mknod(
            &tmp,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            dev.dev_t(),
        )
        .map_err(|e| err("mknod", e.into()))?;
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).map_err(|e| err("chown", e))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o660))
            .map_err(|e| err("chmod", e))?;
        fs::rename(&tmp, path).map_err(|e| err("rename", e))
    })();
    if made.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    made
}

/// What a device node on disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInfo {
    pub is_char_device: bool,
    pub dev: DeviceNumber,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl NodeInfo {
    /// `lstat` a node (never following a symlink someone may have planted).
    pub fn stat(path: &Path) -> io::Result<Self> {
        let meta = fs::symlink_metadata(path)?;
        let rdev = meta.rdev();
        Ok(NodeInfo {
            is_char_device: meta.file_type().is_char_device(),
            dev: DeviceNumber {
                major: libc::major(rdev),
                minor: libc::minor(rdev),
            },
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sysfs_dev() {
        assert_eq!(
            DeviceNumber::parse("243:5\n"),
            Some(DeviceNumber {
                major: 243,
                minor: 5
            })
        );
        assert_eq!(DeviceNumber::parse("243"), None);
        assert_eq!(DeviceNumber::parse("a:b"), None);
    }
}
