//! Running the `macvtap` CNI plugin exactly as Multus would: the network
//! configuration on stdin, CNI_* in an otherwise empty environment, from
//! the node's namespace.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use macvtap_net::NetNs;
use serde_json::Value;

/// Where Multus and the reference plugins usually live.
const CNI_BIN_DIRS: [&str; 2] = ["/opt/cni/bin", "/usr/lib/cni"];

#[derive(Debug, thiserror::Error)]
pub enum PluginCallError {
    #[error(
        "the macvtap CNI plugin was not found (looked at {0}); build it next to macvtap-lab \
         with ./scripts/build-release, or pass --cni-plugin PATH"
    )]
    NotFound(String),
    #[error("cannot run the CNI plugin {plugin}: {detail}")]
    Run { plugin: PathBuf, detail: String },
    #[error("CNI {command} failed: {detail}")]
    Failed {
        command: &'static str,
        detail: String,
    },
}

/// The plugin binary: `--cni-plugin`, else `macvtap` next to this
/// executable, else in the usual CNI directories.
pub fn find_plugin(given: Option<&Path>) -> Result<PathBuf, PluginCallError> {
    if let Some(path) = given {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(PluginCallError::NotFound(path.display().to_string()))
        };
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("macvtap"));
    }
    candidates.extend(CNI_BIN_DIRS.iter().map(|d| Path::new(d).join("macvtap")));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            PluginCallError::NotFound(
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
}

/// One pod attachment made with ADD; DEL runs when it is dropped, as the
/// runtime does when the pod goes away.
#[derive(Debug)]
pub struct Attachment {
    plugin: PathBuf,
    node: NetNs,
    env: Vec<(&'static str, String)>,
    config: String,
    active: bool,
    keep: bool,
}

impl Attachment {
    /// Run ADD; returns the attachment, the plugin's result and how long
    /// the plugin took (process start included).
    pub fn add(
        plugin: &Path,
        node_netns: &Path,
        env: Vec<(&'static str, String)>,
        config: &Value,
    ) -> Result<(Attachment, Value, Duration), PluginCallError> {
        let node = NetNs::open(node_netns).map_err(|e| PluginCallError::Run {
            plugin: plugin.to_path_buf(),
            detail: macvtap_net::error_chain(&e),
        })?;
        let mut attachment = Attachment {
            plugin: plugin.to_path_buf(),
            node,
            env,
            config: config.to_string(),
            active: false,
            keep: false,
        };
        let (result, took) = attachment.call("ADD")?;
        // The plugin rolls a failed ADD back itself; a successful one needs a DEL.
        attachment.active = true;
        Ok((attachment, result, took))
    }

    pub fn keep(&mut self) {
        self.keep = true;
    }

    pub fn del(&mut self) -> Result<(), PluginCallError> {
        if !self.active {
            return Ok(());
        }
        self.active = false;
        self.call("DEL").map(|_| ())
    }

    fn call(&self, command: &'static str) -> Result<(Value, Duration), PluginCallError> {
        let run_err = |detail: String| PluginCallError::Run {
            plugin: self.plugin.clone(),
            detail,
        };
        let plugin_dir = self
            .plugin
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut cni_path = vec![plugin_dir];
        cni_path.extend(CNI_BIN_DIRS.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(&self.plugin);
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", cni_path.join(":"))
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        // Born in the node's namespace: the plugin runs where Multus runs.
        let mut child = self
            .node
            .run(|| cmd.spawn())
            .map_err(|e| run_err(macvtap_net::error_chain(&e)))?
            .map_err(|e| run_err(macvtap_net::error_chain(&e)))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(self.config.as_bytes());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(500))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(run_err("did not finish within 30 s; killed it".into()));
                }
                Err(e) => return Err(run_err(macvtap_net::error_chain(&e))),
            }
        };
        let took = started.elapsed();
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        let json: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
        if !status.success() {
            let msg = json
                .get("msg")
                .and_then(Value::as_str)
                .map(|m| {
                    let details = json
                        .get("details")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let code = json.get("code").map(Value::to_string).unwrap_or_default();
                    format!("code {code}: {m} {details}").trim_end().to_string()
                })
                .unwrap_or_else(|| format!("{status}: {} {}", stdout.trim(), stderr.trim()));
            return Err(PluginCallError::Failed {
                command,
                detail: msg,
            });
        }
        Ok((json, took))
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = self.del() {
                eprintln!("macvtap-lab: cleanup: {}", macvtap_net::error_chain(&e));
            }
        }
    }
}
