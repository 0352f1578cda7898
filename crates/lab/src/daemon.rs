//! The lab's `macvtap-deviceplugin`: a child process that joins the node's
//! network namespace between fork and exec (so its PID is the daemon's,
//! and signals reach it directly), in its own process group (a terminal's
//! Ctrl-C reaches only macvtapctl, which then stops it in order), with
//! every path under the lab's directory. Stopped with SIGTERM by its PID:
//! it must exit 0 and remove its sockets.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use macvtap_net::NetNs;

use crate::kubelet::KUBELET_SOCKET;

/// The daemon's binary name, looked for next to macvtapctl.
pub const BINARY: &str = "macvtap-deviceplugin";
/// How long SIGTERM may take before the daemon is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where the daemon keeps everything (never the node's real paths).
#[derive(Debug, Clone)]
pub struct DaemonPaths {
    pub plugin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub pod_resources_socket: PathBuf,
    pub log: PathBuf,
}

/// `macvtap-deviceplugin` next to this executable.
pub fn find_next_to_me() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let candidate = me.parent()?.join(BINARY);
    candidate.is_file().then_some(candidate)
}

/// How the daemon ended when the lab stopped it.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// SIGTERM to exit.
    pub took: Duration,
    pub status: String,
}

#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pub pid: u32,
    pub started: Instant,
    paths: DaemonPaths,
    status: Option<ExitStatus>,
    keep: bool,
}

impl Daemon {
    /// Start `binary` inside `node` with `DP_MACVTAP_CONF=conf`. Unless
    /// `outlive_us` (`--keep`), the kernel sends it SIGTERM should
    /// macvtapctl die without cleaning up.
    pub fn spawn(
        binary: &Path,
        node: &NetNs,
        conf: &str,
        paths: &DaemonPaths,
        outlive_us: bool,
    ) -> io::Result<Daemon> {
        let log = fs::File::create(&paths.log)?;
        let log_err = log.try_clone()?;
        let ns_fd = node.raw_fd();
        let mut cmd = Command::new(binary);
        cmd.arg("--device-plugin-path")
            .arg(&paths.plugin_dir)
            .arg("--state-dir")
            .arg(&paths.state_dir)
            .arg("--pod-resources-socket")
            .arg(&paths.pod_resources_socket)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("DP_MACVTAP_CONF", conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        // SAFETY: between fork and exec the closure only makes system calls
        // (prctl, getppid, setns), which are async-signal-safe; `ns_fd`
        // belongs to `node`, which outlives this call.
        unsafe {
            cmd.pre_exec(move || {
                if !outlive_us {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // The parent may have died before prctl took effect.
                    if libc::getppid() == 1 {
                        return Err(io::Error::other("macvtapctl exited"));
                    }
                }
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd.spawn()?;
        Ok(Daemon {
            pid: child.id(),
            child,
            started,
            paths: paths.clone(),
            status: None,
            keep: false,
        })
    }

    /// `Some(status)` once the daemon has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// The last lines the daemon logged.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.paths.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            return format!("device plugin log ({}): (empty)", self.paths.log.display());
        }
        format!(
            "device plugin log ({}):\n    {}",
            self.paths.log.display(),
            lines[lines.len().saturating_sub(15)..].join("\n    ")
        )
    }

    /// Leave it running when the lab exits (`--keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// SIGTERM by PID; it must exit 0 within [`STOP_GRACE`] and leave no
    /// socket of its own in the plugin directory. Killed (SIGKILL) when it
    /// does not exit in time.
    pub fn stop(&mut self) -> Result<Stopped, String> {
        let started = Instant::now();
        if let Some(status) = self.exited() {
            return Err(format!(
                "the device plugin had already exited ({})\n{}",
                describe(&status),
                self.log_tail()
            ));
        }
        // SAFETY: kill(2) on the PID of our own child, not reaped yet.
        if unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) } != 0 {
            return Err(format!(
                "SIGTERM to the device plugin (pid {}): {}",
                self.pid,
                io::Error::last_os_error()
            ));
        }
        let deadline = started + STOP_GRACE;
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "the device plugin (pid {}) did not exit within {STOP_GRACE:?} of SIGTERM; killed it\n{}",
                    self.pid,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let took = started.elapsed();
        if status.code() != Some(0) {
            return Err(format!(
                "the device plugin exited with {} on SIGTERM, not 0\n{}",
                describe(&status),
                self.log_tail()
            ));
        }
        let left = plugin_sockets(&self.paths.plugin_dir);
        if !left.is_empty() {
            return Err(format!(
                "the device plugin exited but left its sockets: {}",
                left.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(Stopped {
            took,
            status: describe(&status),
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.keep && self.exited().is_none() {
            // Only reached when the lab's ordered cleanup did not run.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `exit N` or `signal N`.
fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// Every unix socket in `dir` except the kubelet's.
pub fn plugin_sockets(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
                .filter(|e| e.file_name() != KUBELET_SOCKET)
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}
