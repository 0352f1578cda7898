//! File locks with a deadline.
//!
//! Two kinds: the node lock (`lock`), held only around short state
//! sections, and one lock per container (`locks/<containerID>`), held for a
//! whole ADD or DEL, IPAM included, so that a slow or stuck IPAM plugin
//! blocks its own container and nobody else.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{openat2, Flock, FlockArg, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode};

use crate::dir;

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct Held {
    _lock: Flock<OwnedFd>,
}

/// Why a lock was not taken.
#[derive(Debug)]
pub(crate) enum LockError {
    /// Someone else held it for the whole wait.
    TimedOut,
    Io(io::Error),
}

impl From<io::Error> for LockError {
    fn from(e: io::Error) -> Self {
        LockError::Io(e)
    }
}

impl From<Errno> for LockError {
    fn from(e: Errno) -> Self {
        LockError::Io(e.into())
    }
}

fn open_lock_file(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(Mode::from_bits_truncate(0o600))
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    Ok(openat2(dir, dir::component(name)?, how)?)
}

/// Lock `fd` if nobody holds it: `Ok(Err(fd))` gives it back when someone does.
fn try_flock(fd: OwnedFd) -> Result<std::result::Result<Flock<OwnedFd>, OwnedFd>, LockError> {
    match Flock::lock(fd, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Ok(lock)),
        Err((fd, Errno::EWOULDBLOCK | Errno::EINTR)) => Ok(Err(fd)),
        Err((_, e)) => Err(e.into()),
    }
}

/// Take `name` below `dir` exclusively, waiting at most `timeout`.
///
/// Lock files that get unlinked (per-container locks, removed by the DEL
/// that ends the container) are re-checked after the lock is won: if the
/// name now names another file, or none, the wait starts over on the new
/// one, so two processes never both think they hold "the" lock.
pub(crate) fn lock(dir: BorrowedFd<'_>, name: &str, timeout: Duration) -> Result<Held, LockError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        let mut fd = open_lock_file(dir, name)?;
        let lock = loop {
            match try_flock(fd)? {
                Ok(lock) => break lock,
                Err(back) => fd = back,
            }
            if Instant::now() >= deadline {
                return Err(LockError::TimedOut);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        };
        let held = fstat(lock.as_fd())?;
        match dir::stat(dir, name)? {
            Some(now) if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino) => {
                return Ok(Held { _lock: lock });
            }
            _ => {} // unlinked (or replaced) while we waited: take the new one
        }
        if Instant::now() >= deadline {
            return Err(LockError::TimedOut);
        }
    }
}

/// Try `name` below `dir` once, without waiting. `None`: someone holds it.
pub(crate) fn try_lock(dir: BorrowedFd<'_>, name: &str) -> Result<Option<Held>, LockError> {
    let fd = open_lock_file(dir, name)?;
    let Ok(lock) = try_flock(fd)? else {
        return Ok(None);
    };
    let held = fstat(lock.as_fd())?;
    Ok(match dir::stat(dir, name)? {
        Some(now) if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino) => {
            Some(Held { _lock: lock })
        }
        _ => None,
    })
}
