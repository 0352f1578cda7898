//! The one launcher of `macvtap-deviceplugin`: a child process that joins
//! a NODE namespace between fork and exec (through
//! [`join_netns_at_exec`](crate::join_netns_at_exec), which does not
//! allocate after fork), with every path explicit. The device plugin's
//! tests, the runtime tests and the lab use it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;

use super::kubelet::{sockets_in, KUBELET_SOCKET};
use crate::join_netns_at_exec;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where the workspace's binaries are built: the profile directory above
/// the running test (or benchmark) binary, which lives in its `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(2)
        .expect("a test binary lives in <profile>/deps")
        .to_path_buf()
}

/// The binary under test, as the workspace builds it.
pub fn daemon_path() -> PathBuf {
    bin_dir().join("macvtap-deviceplugin")
}

/// The binary to run: `MACVTAP_DP_BIN` (the footprint benchmark measures
/// the static release build with it), else [`daemon_path`].
pub fn daemon_binary() -> String {
    std::env::var("MACVTAP_DP_BIN").unwrap_or_else(|_| daemon_path().display().to_string())
}

/// How the daemon is started. Every flag is explicit so no default path of
/// the real node (`/var/lib/kubelet`, `/var/lib/macvtap`) is ever touched.
#[derive(Debug, Clone)]
pub struct DaemonCmd {
    pub binary: PathBuf,
    pub netns: PathBuf,
    /// `DP_MACVTAP_CONF`; `None` leaves it unset.
    pub conf: Option<String>,
    pub env: BTreeMap<String, String>,
    pub plugin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub pod_resources: PathBuf,
    pub metrics: Option<String>,
    pub extra_args: Vec<String>,
    /// Where stdout and stderr go; `None` captures them (see [`Daemon::logs`]).
    pub log: Option<PathBuf>,
    /// Its own process group, so a terminal's Ctrl-C reaches only us and we
    /// stop it in order.
    pub own_process_group: bool,
    /// The kernel sends it SIGTERM should this process die first.
    pub dies_with_us: bool,
}

impl DaemonCmd {
    pub fn conf(mut self, conf: &str) -> DaemonCmd {
        self.conf = Some(conf.to_string());
        self
    }

    pub fn no_conf(mut self) -> DaemonCmd {
        self.conf = None;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> DaemonCmd {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn metrics(mut self, addr: &str) -> DaemonCmd {
        self.metrics = Some(addr.into());
        self
    }

    pub fn pod_resources(mut self, path: &Path) -> DaemonCmd {
        self.pod_resources = path.to_path_buf();
        self
    }

    pub fn plugin_dir(mut self, path: &Path) -> DaemonCmd {
        self.plugin_dir = path.to_path_buf();
        self
    }

    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--device-plugin-path".to_string(),
            self.plugin_dir.display().to_string(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--pod-resources-socket".into(),
            self.pod_resources.display().to_string(),
        ];
        if let Some(m) = &self.metrics {
            a.push("--metrics-address".into());
            a.push(m.clone());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// Starts the daemon; its process is the daemon itself (it joins the
    /// namespace between fork and exec), so signals reach it directly.
    pub fn spawn(&self) -> Daemon {
        self.try_spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()))
    }

    /// [`DaemonCmd::spawn`], with the error instead of a panic.
    pub fn try_spawn(&self) -> io::Result<Daemon> {
        let ns = File::open(&self.netns)?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.args())
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(&self.env)
            .stdin(Stdio::null());
        match &self.log {
            Some(path) => {
                let log = File::create(path)?;
                cmd.stderr(log.try_clone()?).stdout(log);
            }
            None => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        if let Ok(v) = std::env::var("RUST_LOG") {
            cmd.env("RUST_LOG", v);
        }
        if let Some(c) = &self.conf {
            cmd.env("DP_MACVTAP_CONF", c);
        }
        if self.own_process_group {
            cmd.process_group(0);
        }
        join_netns_at_exec(&mut cmd, &ns, self.dies_with_us.then_some(libc::SIGTERM))?;
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) {
            readers.push(collect(out, Arc::clone(&stdout)));
            readers.push(collect(err, Arc::clone(&stderr)));
        }
        Ok(Daemon {
            pid: child.id() as i32,
            child,
            status: None,
            started,
            stdout,
            stderr,
            readers,
            log: self.log.clone(),
            keep: false,
            describe: format!(
                "DP_MACVTAP_CONF={:?} {:?} {} {}",
                self.conf,
                self.env,
                self.binary.display(),
                self.args().join(" ")
            ),
        })
    }
}

fn collect(mut pipe: impl Read + Send + 'static, sink: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .expect("log sink")
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    })
}

/// A running daemon; killed (SIGKILL, by its own pid) on drop if it is
/// still running, its output printed when the test is panicking.
#[derive(Debug)]
pub struct Daemon {
    pid: i32,
    child: Child,
    status: Option<ExitStatus>,
    pub started: Instant,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// The log file, when its output goes to one.
    log: Option<PathBuf>,
    /// Left running when dropped.
    keep: bool,
    describe: String,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("log sink").clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("log sink").clone()
    }

    /// Leave it running when dropped (the lab's `--keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// The last lines of its log file (for a daemon started with one).
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return self.logs();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            return format!("device plugin log ({}): (empty)", path.display());
        }
        format!(
            "device plugin log ({}):\n    {}",
            path.display(),
            lines[lines.len().saturating_sub(15)..].join("\n    ")
        )
    }

    /// SIGTERM by PID, as a node stops it: it must exit 0 within `grace`
    /// and leave no socket of its own in `plugin_dir`. Killed (SIGKILL)
    /// when it does not exit in time.
    pub fn stop(&mut self, grace: Duration, plugin_dir: &Path) -> Result<Stopped, String> {
        let started = Instant::now();
        if let Some(status) = self.try_status() {
            return Err(format!(
                "the device plugin had already exited ({})\n{}",
                status_text(&status),
                self.log_tail()
            ));
        }
        // SAFETY: kill(2) on the PID of our own child, not reaped yet.
        if unsafe { libc::kill(self.pid, libc::SIGTERM) } != 0 {
            return Err(format!(
                "SIGTERM to the device plugin (pid {}): {}",
                self.pid,
                io::Error::last_os_error()
            ));
        }
        let deadline = started + grace;
        let status = loop {
            if let Some(status) = self.try_status() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "the device plugin (pid {}) did not exit within {grace:?} of SIGTERM; killed it\n{}",
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
                status_text(&status),
                self.log_tail()
            ));
        }
        let left: Vec<PathBuf> = sockets_in(plugin_dir)
            .into_iter()
            .filter(|p| !p.ends_with(KUBELET_SOCKET))
            .collect();
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
            status: status_text(&status),
        })
    }

    /// Command line and everything it printed so far, for messages.
    pub fn logs(&self) -> String {
        format!(
            "daemon: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.describe,
            self.stdout().trim_end(),
            self.stderr().trim_end()
        )
    }

    /// `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the daemon to exit; then waits for its
    /// output pipes to drain (so stderr is complete).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                self.drain_output().await;
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Lets the output readers finish (bounded: a grandchild could hold
    /// the pipes open).
    async fn drain_output(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline && self.readers.iter().any(|r| !r.is_finished()) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.readers.retain(|r| !r.is_finished());
    }

    /// Sends `signal` to the daemon (our own child, by pid).
    pub fn signal(&mut self, signal: libc::c_int) {
        assert!(self.is_running(), "daemon already exited\n{}", self.logs());
        // SAFETY: kill(2) on the pid of our own unreaped child.
        let r = unsafe { libc::kill(self.pid, signal) };
        assert_eq!(r, 0, "kill({}, {signal}) failed", self.pid);
    }

    /// Panics (with the logs) if the daemon has exited.
    pub fn assert_running(&mut self, when: &str) {
        if let Some(s) = self.try_status() {
            panic!("the daemon exited ({s}) {when}\n{}", self.logs());
        }
    }
}

/// `exit N` or `signal N`, for messages.
pub fn status_text(s: &ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(sig)) => format!("signal {sig}"),
        _ => format!("{s}"),
    }
}

/// How the daemon ended when it was stopped with SIGTERM.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// SIGTERM to exit.
    pub took: Duration,
    pub status: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.keep && self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline && self.readers.iter().any(|r| !r.is_finished()) {
            std::thread::sleep(Duration::from_millis(2));
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}
