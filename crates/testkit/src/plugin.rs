//! Runs the plugin binary the way a runtime does: config on stdin, CNI_*
//! in the environment, inside the node namespace (via `nsenter --net`, which
//! unlike `ip netns exec` leaves /sys alone).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::names::require_root;

/// The node policy's environment variables (as `macvtap_state` reads them).
pub const STATE_DIR_ENV: &str = "MACVTAP_STATE_DIR";
pub const NODE_CONFIG_ENV: &str = "MACVTAP_NODE_CONFIG";
/// A node policy path that names no file: the built-in policy.
pub const NO_NODE_POLICY: &str = "/nonexistent/macvtap-node.json";

/// A prepared plugin invocation. Builder-style setters return a new value so
/// one base invocation can be varied per case.
#[derive(Debug, Clone)]
pub struct Plugin {
    binary: PathBuf,
    host_netns: PathBuf,
    env: BTreeMap<String, String>,
    /// Variables whose values are raw bytes (not UTF-8), set after `env`.
    env_bytes: BTreeMap<String, Vec<u8>>,
    stdin: Vec<u8>,
    timeout: Duration,
}

impl Plugin {
    /// `binary` run inside the namespace at `host_netns` (the node's).
    /// No CNI_* variable is set yet.
    pub fn new(binary: impl AsRef<Path>, host_netns: impl AsRef<Path>) -> Plugin {
        Plugin {
            binary: binary.as_ref().to_path_buf(),
            host_netns: host_netns.as_ref().to_path_buf(),
            env: BTreeMap::new(),
            env_bytes: BTreeMap::new(),
            stdin: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Plugin {
        self.env.insert(key.to_string(), value.into());
        self
    }

    pub fn unset(mut self, key: &str) -> Plugin {
        self.env.remove(key);
        self.env_bytes.remove(key);
        self
    }

    /// A variable whose value is raw bytes, e.g. not UTF-8 (replaces any
    /// value given with [`Plugin::env`]). A NUL byte cannot be passed.
    pub fn env_bytes(mut self, key: &str, value: &[u8]) -> Plugin {
        self.env.remove(key);
        self.env_bytes.insert(key.to_string(), value.to_vec());
        self
    }

    /// How long [`Plugin::run`] waits before it kills the plugin and
    /// panics (30 s unless set).
    pub fn timeout(mut self, timeout: Duration) -> Plugin {
        self.timeout = timeout;
        self
    }

    pub fn command(self, cmd: &str) -> Plugin {
        self.env("CNI_COMMAND", cmd)
    }

    pub fn container_id(self, id: &str) -> Plugin {
        self.env("CNI_CONTAINERID", id)
    }

    pub fn netns(self, path: impl AsRef<Path>) -> Plugin {
        let p = path.as_ref().to_string_lossy().into_owned();
        self.env("CNI_NETNS", p)
    }

    pub fn ifname(self, name: &str) -> Plugin {
        self.env("CNI_IFNAME", name)
    }

    pub fn args(self, args: &str) -> Plugin {
        self.env("CNI_ARGS", args)
    }

    pub fn cni_path(self, path: &str) -> Plugin {
        self.env("CNI_PATH", path)
    }

    /// The network configuration, serialized as stdin.
    pub fn config(mut self, config: &Value) -> Plugin {
        self.stdin = serde_json::to_vec(config).expect("a Value always serializes");
        self
    }

    /// Raw stdin bytes (for broken JSON).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Plugin {
        self.stdin = bytes.into();
        self
    }

    pub fn get_env(&self, key: &str) -> Option<&str> {
        self.env.get(key).map(String::as_str)
    }

    /// Runs the plugin to completion (killing it, by pid, if it outlives
    /// the timeout) and captures everything it said.
    ///
    /// The harness plays the node's administrator too: unless the test set
    /// them, `MACVTAP_STATE_DIR` is the configuration's `stateDir` (so the
    /// configuration restates the node's, which the plugin accepts) and
    /// `MACVTAP_NODE_CONFIG` names no file (built-in policy, whatever this
    /// machine's /etc holds).
    pub fn run(&self) -> PluginOutput {
        require_root();
        let mut plugin = self.clone();
        if !plugin.env.contains_key(STATE_DIR_ENV) {
            let dir = serde_json::from_slice::<Value>(&plugin.stdin)
                .ok()
                .and_then(|v| {
                    v.get("stateDir")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                });
            if let Some(dir) = dir {
                plugin.env.insert(STATE_DIR_ENV.into(), dir);
            }
        }
        plugin
            .env
            .entry(NODE_CONFIG_ENV.into())
            .or_insert_with(|| NO_NODE_POLICY.into());
        plugin.run_as_given()
    }

    fn run_as_given(&self) -> PluginOutput {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.host_netns.display()))
            .arg("--")
            .arg(&self.binary)
            // Only what a runtime would pass: no stray CNI_* from our env.
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(&self.env)
            .envs(
                self.env_bytes
                    .iter()
                    .map(|(k, v)| (k.as_str(), OsStr::from_bytes(v))),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));

        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = self.stdin.clone();
        // A plugin that exits without reading stdin gives EPIPE: not our error.
        let writer = thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let stdout = reader(child.stdout.take().expect("stdout is piped"));
        let stderr = reader(child.stderr.take().expect("stderr is piped"));

        let status = wait_with_timeout(&mut child, self.timeout);
        let elapsed = started.elapsed();
        let _ = writer.join();
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        let json = serde_json::from_str(stdout.trim()).ok();
        PluginOutput {
            exit_code: status,
            stdout,
            stderr,
            json,
            elapsed,
            invocation: self.describe(),
        }
    }

    fn describe(&self) -> String {
        let mut env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.extend(
            self.env_bytes
                .iter()
                .map(|(k, v)| format!("{k}={:?}", String::from_utf8_lossy(v))),
        );
        format!(
            "{} {} <<< {}",
            env.join(" "),
            self.binary.display(),
            String::from_utf8_lossy(&self.stdin)
        )
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// `Some(code)`, or `None` when a signal ended it. Panics after killing the
/// child if it hangs.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.code(),
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Ok(None) => {
                let pid = child.id();
                let _ = child.kill();
                let _ = child.wait();
                panic!("plugin (pid {pid}) did not finish within {timeout:?}; killed it");
            }
            Err(e) => panic!("waiting for the plugin failed: {e}"),
        }
    }
}

/// What one plugin run did.
#[derive(Debug, Clone)]
pub struct PluginOutput {
    /// `None` when the process was killed by a signal.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    pub elapsed: Duration,
    invocation: String,
}

impl PluginOutput {
    pub fn panicked(&self) -> bool {
        self.stderr.contains("panicked")
    }

    /// Asserts success (exit 0, no panic) and returns the parsed stdout
    /// (`Value::Null` when stdout is empty, as for DEL).
    pub fn success(&self) -> Value {
        assert!(
            self.exit_code == Some(0) && !self.panicked(),
            "plugin was expected to succeed\n{self}"
        );
        if self.stdout.trim().is_empty() {
            return Value::Null;
        }
        self.json
            .clone()
            .unwrap_or_else(|| panic!("plugin succeeded but stdout is not JSON\n{self}"))
    }

    /// Asserts success and a non-empty JSON object on stdout (ADD, VERSION).
    pub fn result(&self) -> Value {
        let v = self.success();
        assert!(v.is_object(), "plugin printed no result object\n{self}");
        v
    }

    /// Checks the error contract: exit status 1, no panic, stdout a JSON
    /// object with a `cniVersion`, an integer `code` and a non-empty `msg`.
    /// Returns the code.
    pub fn error_code(&self) -> Result<i64, String> {
        if self.panicked() {
            return Err(format!("plugin panicked\n{self}"));
        }
        if self.exit_code != Some(1) {
            return Err(format!(
                "expected exit status 1, got {:?}\n{self}",
                self.exit_code
            ));
        }
        let Some(json) = &self.json else {
            return Err(format!("error output is not JSON\n{self}"));
        };
        let Some(code) = json.get("code").and_then(Value::as_i64) else {
            return Err(format!("error JSON has no integer `code`\n{self}"));
        };
        // docs/cni-plugin.md: errors are {"cniVersion", "code", "msg", "details"}.
        if !json.get("cniVersion").is_some_and(Value::is_string) {
            return Err(format!("error JSON has no `cniVersion` string\n{self}"));
        }
        let msg_ok = json
            .get("msg")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.trim().is_empty());
        if !msg_ok {
            return Err(format!("error JSON has no non-empty `msg`\n{self}"));
        }
        Ok(code)
    }

    /// Asserts a well-formed error with one of `codes`; returns the JSON.
    pub fn error_in(&self, codes: &[i64]) -> Value {
        match self.error_code() {
            Ok(code) if codes.contains(&code) => self.json.clone().unwrap_or_default(),
            Ok(code) => panic!("expected error code in {codes:?}, got {code}\n{self}"),
            Err(e) => panic!("{e}"),
        }
    }

    /// Asserts a well-formed error with exactly `code`; returns the JSON.
    pub fn error(&self, code: i64) -> Value {
        self.error_in(&[code])
    }

    /// Asserts a well-formed error with any code; returns the JSON.
    pub fn any_error(&self) -> Value {
        match self.error_code() {
            Ok(_) => self.json.clone().unwrap_or_default(),
            Err(e) => panic!("{e}"),
        }
    }
}

impl fmt::Display for PluginOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  invocation: {}", self.invocation)?;
        writeln!(f, "  exit: {:?} after {:?}", self.exit_code, self.elapsed)?;
        writeln!(f, "  stdout: {}", self.stdout.trim())?;
        write!(f, "  stderr: {}", self.stderr.trim())
    }
}
