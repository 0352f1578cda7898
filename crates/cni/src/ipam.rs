//! Delegation to an IPAM plugin found on `CNI_PATH`, as the reference
//! plugins do: same configuration on stdin, same environment but the command.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{code, err, CniError, Result};

/// Set for every IPAM plugin this plugin runs: if it is this plugin again
/// (a copy, a link, any name), the child refuses at once instead of waiting
/// for the lock of the container its parent holds.
pub const DELEGATED_ENV: &str = "MACVTAP_RUN_AS_IPAM";

/// One IPAM plugin invocation's context.
#[derive(Debug, Clone)]
pub struct Ipam<'a> {
    plugin: &'a str,
    cni_path: &'a str,
    /// The network configuration exactly as this plugin received it.
    config: &'a [u8],
    /// What the IPAM plugin gets on stdin (see [`Ipam::negotiated_config`]).
    negotiated: std::cell::OnceCell<Vec<u8>>,
    /// Where the plugin is, once found: ADD, a rollback's DEL and the
    /// VERSION query all run it; CNI_PATH is searched once.
    binary: std::cell::OnceCell<PathBuf>,
}

impl<'a> Ipam<'a> {
    pub fn new(plugin: &'a str, cni_path: &'a str, config: &'a [u8]) -> Self {
        Ipam {
            plugin,
            cni_path,
            config,
            negotiated: std::cell::OnceCell::new(),
            binary: std::cell::OnceCell::new(),
        }
    }

    /// The configuration as the IPAM plugin can take it. Spec 1.1.0 only
    /// added commands and result fields, so when the plugin does not speak
    /// 1.1.0 (Debian 12's host-local stops at 1.0.0) it gets the same
    /// configuration as 1.0.0; its result is read version-independently.
    fn negotiated_config(&self) -> &[u8] {
        self.negotiated.get_or_init(|| {
            let Ok(mut value) = serde_json::from_slice::<Value>(self.config) else {
                return self.config.to_vec();
            };
            if value.get("cniVersion").and_then(Value::as_str) != Some("1.1.0") {
                return self.config.to_vec();
            }
            let speaks_110 = self
                .exec_raw("VERSION", &[], br#"{"cniVersion":"1.1.0"}"#)
                .ok()
                .flatten()
                .and_then(|v| v.get("supportedVersions").cloned())
                .and_then(|v| v.as_array().map(|a| a.iter().any(|x| x == "1.1.0")));
            if speaks_110 == Some(false) {
                value["cniVersion"] = "1.0.0".into();
                serde_json::to_vec(&value).unwrap_or_else(|_| self.config.to_vec())
            } else {
                self.config.to_vec()
            }
        })
    }

    /// Where the plugin binary is, searching `CNI_PATH` in order.
    pub fn find(&self) -> Result<PathBuf> {
        if let Some(found) = self.binary.get() {
            return Ok(found.clone());
        }
        if self.cni_path.is_empty() {
            return Err(err(
                code::INVALID_ENVIRONMENT,
                "CNI_PATH is not set (needed to find the IPAM plugin)",
            ));
        }
        let found = self
            .cni_path
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join(self.plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                err(
                    code::IPAM_EXEC,
                    format!(
                        "IPAM plugin {:?} not found in CNI_PATH {:?}",
                        self.plugin, self.cni_path
                    ),
                )
            })?;
        Ok(self.binary.get_or_init(|| found).clone())
    }

    /// Run `command` (ADD, DEL, CHECK, ...). `overrides` replace CNI_*
    /// variables (GC releases other attachments than the current one).
    /// Returns the parsed stdout, if any.
    pub fn exec(&self, command: &str, overrides: &[(&str, &str)]) -> Result<Option<Value>> {
        let config = self.negotiated_config().to_vec();
        self.exec_raw(command, overrides, &config)
    }

    fn exec_raw(
        &self,
        command: &str,
        overrides: &[(&str, &str)],
        config: &[u8],
    ) -> Result<Option<Value>> {
        let binary = self.find()?;
        let mut cmd = Command::new(&binary);
        cmd.env("CNI_COMMAND", command)
            .env(DELEGATED_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // The reference IPAM plugins refuse CNI_ARGS keys they do not know
        // (such as our MAC=) unless told to ignore them; runtimes that are
        // not Multus often omit that.
        let args = std::env::var("CNI_ARGS").unwrap_or_default();
        if !args.is_empty() && !args.split(';').any(|p| p.starts_with("IgnoreUnknown=")) {
            cmd.env("CNI_ARGS", format!("IgnoreUnknown=1;{args}"));
        }
        for (k, v) in overrides {
            cmd.env(k, v);
        }
        let fail = |why: String| {
            err(
                code::IPAM_EXEC,
                format!("IPAM plugin {} {command}: {why}", binary.display()),
            )
        };
        let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that exits without reading gives EPIPE: its exit tells.
            let _ = stdin.write_all(config);
        }
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success() {
            // Pass the plugin's own error on as it is.
            if let Some(e) = parsed.as_ref().and_then(plugin_error) {
                return Err(e);
            }
            return Err(fail(format!(
                "{} with output {:?}",
                out.status,
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        if parsed.is_none() && !out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Err(fail(format!(
                "unreadable output {:?}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        Ok(parsed)
    }
}

fn plugin_error(v: &Value) -> Option<CniError> {
    let code = v.get("code")?.as_u64()?;
    Some(CniError {
        code: code as u32,
        msg: v
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or("IPAM plugin failed")
            .to_string(),
        details: v
            .get("details")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}
