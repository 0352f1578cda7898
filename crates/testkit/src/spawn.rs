//! Starting a process inside a network namespace, so that its PID is the
//! process itself (signals reach it directly) and nothing allocates
//! between fork and exec: the callers have other threads running (a tokio
//! runtime, output readers), and a lock held by one of them at fork stays
//! held forever in the child.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes `cmd`'s child join the network namespace `netns` between fork and
/// exec; with `parent_death_signal`, the kernel sends it that signal should
/// this process die first. The namespace fd is duplicated (close-on-exec)
/// now, so the child never sees it and `netns` need not outlive the call.
pub fn join_netns_at_exec(
    cmd: &mut Command,
    netns: impl AsFd,
    parent_death_signal: Option<libc::c_int>,
) -> io::Result<()> {
    let netns = netns.as_fd().try_clone_to_owned()?;
    let parent = libc::pid_t::try_from(std::process::id()).map_err(io::Error::other)?;
    // Runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: system calls (prctl, getppid, setns) and errors
    // built from errno values (`last_os_error`, `from_raw_os_error`), none of
    // which allocates. `netns` is moved in, so its fd is open until the
    // Command is dropped.
    let join = move || {
        if let Some(signal) = parent_death_signal {
            // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if nix::unistd::getppid().as_raw() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(())
    };
    // SAFETY: the closure is async-signal-safe (see above).
    unsafe {
        cmd.pre_exec(join);
    }
    Ok(())
}
