//! Node policy: what only the node's administrator decides.
//!
//! A network configuration is tenant input (a NetworkAttachmentDefinition
//! may be written by whoever may create one in a namespace). Where state
//! lives, how long to wait for locks, which lower devices and modes a
//! standalone configuration may use and whether `source` mode is allowed at
//! all come from here instead: built-in defaults, then a root-owned file
//! (`/etc/macvtap/node.json`, or the file named by `MACVTAP_NODE_CONFIG`),
//! then `MACVTAP_STATE_DIR`. Environment variables of the plugin's process
//! are set by the container runtime or Multus, never by a tenant.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use macvtap_net::MacvtapMode as Mode;

use crate::{dir, Error, Result, TrustedPath, DEFAULT_STATE_DIR};

/// Where the node policy file is unless `MACVTAP_NODE_CONFIG` says.
pub const DEFAULT_NODE_CONFIG: &str = "/etc/macvtap/node.json";
/// The environment variable naming another node policy file.
pub const NODE_CONFIG_ENV: &str = "MACVTAP_NODE_CONFIG";
/// The environment variable that overrides the policy's `stateDir`.
pub const STATE_DIR_ENV: &str = "MACVTAP_STATE_DIR";
/// The default cap on `sourceMacs`.
pub const DEFAULT_MAX_SOURCE_MACS: usize = 256;

/// The node's policy, as the plugins apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePolicy {
    /// The state directory (absolute, trusted when opened).
    pub state_dir: String,
    /// The longest wait for the node lock or a container's lock.
    pub lock_timeout: Duration,
    /// Lower devices a standalone configuration (`master`) may use; `None`
    /// is any, an empty list turns standalone mode off.
    pub standalone_lower_devices: Option<Vec<String>>,
    /// Modes a standalone configuration may ask for.
    pub standalone_modes: Vec<Mode>,
    /// Whether a configuration may use `mode: source` (a pod then receives
    /// every frame sent from the listed MACs, whoever they are addressed to).
    pub allow_source_mode: bool,
    /// Most `sourceMacs` one attachment may list.
    pub max_source_macs: usize,
    /// Where this policy came from, for error messages.
    pub origin: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPolicy {
    state_dir: Option<String>,
    lock_timeout_seconds: Option<u64>,
    standalone_lower_devices: Option<Vec<String>>,
    standalone_modes: Option<Vec<String>>,
    allow_source_mode: Option<bool>,
    max_source_macs: Option<usize>,
}

impl Default for NodePolicy {
    fn default() -> Self {
        NodePolicy {
            state_dir: DEFAULT_STATE_DIR.to_string(),
            lock_timeout: Duration::from_secs(30),
            standalone_lower_devices: None,
            standalone_modes: vec![Mode::Bridge, Mode::Vepa, Mode::Private, Mode::Passthru],
            allow_source_mode: false,
            max_source_macs: DEFAULT_MAX_SOURCE_MACS,
            origin: "built-in defaults".into(),
        }
    }
}

impl NodePolicy {
    /// The policy of this node: defaults, the policy file if there is one,
    /// then the environment.
    pub fn load() -> Result<Self> {
        let file = std::env::var_os(NODE_CONFIG_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_NODE_CONFIG));
        let mut policy = Self::from_file(&file)?;
        if let Some(dir) = std::env::var_os(STATE_DIR_ENV) {
            policy.state_dir = dir
                .into_string()
                .map_err(|d| Error::BadStateDir(d.to_string_lossy().into_owned()))?;
            policy.origin = format!("{} and {STATE_DIR_ENV}", policy.origin);
        }
        Ok(policy)
    }

    /// Defaults overlaid with `file`, which must be a regular file only root
    /// can change, on a path only root can change. Missing is defaults.
    pub fn from_file(file: &Path) -> Result<Self> {
        let (parent, name) = match (file.parent(), file.file_name().and_then(|n| n.to_str())) {
            (Some(p), Some(n)) if file.is_absolute() => (p, n),
            _ => {
                return Err(Error::BadPolicy(
                    file.into(),
                    "must be an absolute file path".into(),
                ))
            }
        };
        let bytes = match TrustedPath::open_existing(parent)? {
            None => None,
            Some(dir) => dir::read_file(dir.fd.as_fd(), name).map_err(|source| Error::Io {
                op: "read",
                path: file.into(),
                source,
            })?,
        };
        let Some(bytes) = bytes else {
            return Ok(NodePolicy::default());
        };
        Self::from_json(&bytes, file)
    }

    /// Defaults overlaid with the policy document `bytes`; `file` names
    /// where it came from, in errors and in [`NodePolicy::origin`].
    pub fn from_json(bytes: &[u8], file: &Path) -> Result<Self> {
        let raw: RawPolicy = serde_json::from_slice(bytes)
            .map_err(|e| Error::BadPolicy(file.into(), e.to_string()))?;
        let mut policy = NodePolicy {
            origin: file.display().to_string(),
            ..NodePolicy::default()
        };
        if let Some(d) = raw.state_dir {
            crate::check_path(Path::new(&d)).map_err(|_| {
                Error::BadPolicy(
                    file.into(),
                    format!("stateDir {d:?} must be an absolute path without '..'"),
                )
            })?;
            policy.state_dir = d;
        }
        if let Some(s) = raw.lock_timeout_seconds {
            if !(1..=3600).contains(&s) {
                return Err(Error::BadPolicy(
                    file.into(),
                    "lockTimeoutSeconds must be 1..3600".into(),
                ));
            }
            policy.lock_timeout = Duration::from_secs(s);
        }
        if raw.standalone_lower_devices.is_some() {
            policy.standalone_lower_devices = raw.standalone_lower_devices;
        }
        if let Some(modes) = raw.standalone_modes {
            policy.standalone_modes = modes
                .iter()
                .map(|m| m.parse::<Mode>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::BadPolicy(file.into(), format!("standaloneModes: {e}")))?;
        }
        if let Some(a) = raw.allow_source_mode {
            policy.allow_source_mode = a;
        }
        if let Some(n) = raw.max_source_macs {
            if !(1..=4096).contains(&n) {
                return Err(Error::BadPolicy(
                    file.into(),
                    "maxSourceMacs must be 1..4096".into(),
                ));
            }
            policy.max_source_macs = n;
        }
        Ok(policy)
    }

    /// May a standalone configuration use `lower` in `mode`? `Err` says why not.
    pub fn allows_standalone(&self, lower: &str, mode: Mode) -> std::result::Result<(), String> {
        if let Some(allowed) = &self.standalone_lower_devices {
            if allowed.is_empty() {
                return Err(format!(
                    "standalone mode (master/lowerDevice) is off on this node ({}); use a deviceID",
                    self.origin
                ));
            }
            if !allowed.iter().any(|d| d == lower) {
                return Err(format!(
                    "lower device {lower:?} is not allowed for standalone attachments on this node ({}: {})",
                    self.origin,
                    allowed.join(", ")
                ));
            }
        }
        if mode == Mode::Source && !self.allow_source_mode {
            return Err(format!(
                "mode source is not allowed on this node ({}): it copies every frame from the listed MACs to the pod; an administrator can set allowSourceMode",
                self.origin
            ));
        }
        if mode != Mode::Source && !self.standalone_modes.contains(&mode) {
            return Err(format!(
                "mode {mode} is not allowed for standalone attachments on this node ({})",
                self.origin
            ));
        }
        Ok(())
    }
}
