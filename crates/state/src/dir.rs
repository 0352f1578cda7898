//! Directory-fd file operations: every file of the state is reached from a
//! directory fd this process opened and checked itself, never by a path
//! resolved again later.
//!
//! Each component is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` and `fstat`ed: a symlink, a
//! magic link (`/proc/<pid>/root`), or a directory someone other than root
//! could change anywhere on the way is refused. What was checked is what is
//! used, because it is the same open file.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

/// Largest state file read: records and configurations are a few KiB; a
/// bigger file is not ours.
const MAX_FILE: u64 = 4 << 20;

fn resolve() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// Is `uid` one whose files this process may trust: root's, or its own.
/// For the plugins, which run as root, that is root alone; an unprivileged
/// caller (the root-free unit tests, a user's own tools) may use a state it
/// owns itself, which nobody else can change either.
pub(crate) fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Why a directory on the way to the state is not trusted, or `None`.
/// `last` is the state directory itself: only ancestors may be sticky
/// world-writable directories (like /tmp), where nobody but an entry's
/// owner can rename or remove it.
pub(crate) fn untrusted(stat: &nix::sys::stat::FileStat, last: bool) -> Option<String> {
    if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFDIR {
        return Some("not a directory".into());
    }
    if !trusted_owner(stat.st_uid) {
        return Some(format!("owned by uid {}", stat.st_uid));
    }
    let mode = stat.st_mode & 0o7777;
    let writable_by_others = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    if writable_by_others && (last || !sticky) {
        return Some(format!("mode {mode:o} lets others write"));
    }
    None
}

/// One path component, checked to be a plain name.
pub(crate) fn component(name: &str) -> io::Result<&str> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) if !name.contains('/') => Ok(name),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a single file name"),
        )),
    }
}

/// Open a directory below `dir` (one component), not following anything.
pub(crate) fn open_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(resolve());
    Ok(openat2(dir, component(name)?, how)?)
}

/// Open or create the directory `name` below `dir` (mode 0711: others may
/// reach a device node whose path they know, not list the state), and
/// check it: root's, and nobody else may write.
pub(crate) fn ensure_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    match nix::sys::stat::mkdirat(dir, component(name)?, Mode::from_bits_truncate(0o711)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = open_dir(dir, name)?;
    let stat = fstat(fd.as_fd())?;
    if let Some(why) = untrusted(&stat, true) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    }
    Ok(fd)
}

/// Open a directory below `dir` if it exists (and is checked).
pub(crate) fn existing_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<OwnedFd>> {
    match open_dir(dir, name) {
        Ok(fd) => {
            let stat = fstat(fd.as_fd())?;
            if let Some(why) = untrusted(&stat, true) {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
            }
            Ok(Some(fd))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Read a root-owned regular file below `dir`; missing is `None`.
pub(crate) fn read_file(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<Vec<u8>>> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK)
        .resolve(resolve());
    let fd = match openat2(dir, component(name)?, how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let stat = fstat(fd.as_fd())?;
    let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
    if kind != SFlag::S_IFREG || !trusted_owner(stat.st_uid) || stat.st_mode & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not a regular file that only root can change",
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "file too large"));
    }
    Ok(Some(bytes))
}

/// Write `bytes` as `name` below `dir`: under a temporary name first, then
/// renamed, so readers see the old or the new file, never half of one.
/// The file gets `mode` whatever the umask. `durable` fsyncs the file
/// before the rename. Nothing is followed: `name` is one component and a
/// symlink in its place is replaced, never written through.
pub fn write_atomic(
    dir: BorrowedFd<'_>,
    name: &str,
    bytes: &[u8],
    mode: u32,
    durable: bool,
) -> io::Result<()> {
    let name = component(name)?;
    let tmp = temp_name(name);
    let _ = nix::unistd::unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir); // a crashed writer's
    let mode = Mode::from_bits_truncate(mode);
    let how = OpenHow::new()
        .flags(
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        )
        .mode(mode)
        .resolve(resolve());
    let result = (|| {
        let mut file = std::fs::File::from(openat2(dir, tmp.as_str(), how)?);
        // The umask cut openat2's mode; readers may need more than 0600.
        nix::sys::stat::fchmod(file.as_fd(), mode)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        nix::fcntl::renameat(dir, tmp.as_str(), dir, name)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = nix::unistd::unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// The temporary name `write_atomic` and `make_node` use for `name`: one per
/// process, so that a crash's leftover is found by its prefix.
pub(crate) fn temp_name(name: &str) -> String {
    format!(".{name}.{}.tmp", std::process::id())
}

/// Is `entry` a temporary file made for `name` (by any process)?
pub(crate) fn is_temp_of(entry: &str, name: &str) -> bool {
    entry
        .strip_prefix('.')
        .and_then(|e| e.strip_prefix(name))
        .and_then(|e| e.strip_prefix('.'))
        .and_then(|e| e.strip_suffix(".tmp"))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Remove `name` below `dir`; already gone is success.
pub(crate) fn unlink(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    match nix::unistd::unlinkat(dir, component(name)?, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Remove the directory `name` below `dir` if it is empty.
pub(crate) fn remove_empty_dir(dir: BorrowedFd<'_>, name: &str) {
    if let Ok(name) = component(name) {
        let _ = nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir);
    }
}

/// The names in a directory (not `.` and `..`).
pub(crate) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
    // A second open file of the same directory: reading it moves an offset.
    let fd = nix::fcntl::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut listing = nix::dir::Dir::from_fd(fd)?;
    Ok(listing
        .iter()
        .flatten()
        .filter_map(|e| {
            let name = OsStr::from_bytes(e.file_name().to_bytes());
            name.to_str().map(str::to_string)
        })
        .filter(|n| n != "." && n != "..")
        .collect())
}

/// `lstat` of `name` below `dir`, or `None` if missing.
pub(crate) fn stat(
    dir: BorrowedFd<'_>,
    name: &str,
) -> io::Result<Option<nix::sys::stat::FileStat>> {
    match fstatat(dir, component(name)?, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Make a character device node `name` below `dir` for `dev`, owned by
/// `uid:gid`, mode 0660. Made under a temporary name (which `mknodat`
/// refuses to follow or reuse), then renamed into place, so nobody sees it
/// with the wrong owner and nothing planted at `name` is followed.
pub(crate) fn make_node(
    dir: BorrowedFd<'_>,
    name: &str,
    dev: libc::dev_t,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let name = component(name)?;
    let tmp = temp_name(name);
    let _ = nix::unistd::unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    let result = (|| {
        nix::sys::stat::mknodat(
            dir,
            tmp.as_str(),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            dev,
        )?;
        nix::unistd::fchownat(
            dir,
            tmp.as_str(),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        // fchmodat cannot refuse symlinks on every kernel, but the temporary
        // name was just made by mknodat in a directory only root can write.
        nix::sys::stat::fchmodat(
            dir,
            tmp.as_str(),
            Mode::from_bits_truncate(0o660),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )?;
        nix::fcntl::renameat(dir, tmp.as_str(), dir, name)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = nix::unistd::unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}
