//! CNI errors: the spec's codes and ours, printed as the spec's error JSON.

use std::fmt;

/// Error codes: 1-99 are the spec's, 100+ are this plugin's.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const LOWER_DEVICE_MISSING: u32 = 100;
    pub const INTERFACE_EXISTS: u32 = 101;
    pub const DEVICE_NOT_OFFERED: u32 = 102;
    pub const KERNEL: u32 = 103;
    pub const DEVICE_NODE: u32 = 104;
    pub const IPAM_EXEC: u32 = 105;
    pub const STATE_DIR: u32 = 106;
    pub const CHECK_FAILED: u32 = 107;
    /// Handover: the previous plugin's container interface cannot be handed
    /// over (not in the container, no IPv4, a loopback).
    pub const NOT_HANDOVER_READY: u32 = 108;
    /// Handover: the interface is handed over already (a record exists).
    pub const ALREADY_HANDED_OVER: u32 = 109;
}

/// An error as the CNI spec prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error JSON for `version`. Control characters (a configuration
    /// may carry any) are escaped: runtimes log `msg` as text.
    pub fn to_json(&self, version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": version,
            "code": self.code,
            "msg": escape_controls(&self.msg),
        });
        if !self.details.is_empty() {
            v["details"] = escape_controls(&self.details).into();
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", escape_controls(&self.msg), self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", escape_controls(&self.details))?;
        }
        Ok(())
    }
}

/// `s` with every control character (C0, DEL, C1, and the Unicode line and
/// paragraph separators) written as `\u{..}`, so that input cannot forge
/// log lines or terminal escapes.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl std::error::Error for CniError {}

/// Shorthand constructors.
pub fn err(code: u32, msg: impl Into<String>) -> CniError {
    CniError::new(code, msg)
}

impl From<macvtap_state::Error> for CniError {
    fn from(e: macvtap_state::Error) -> Self {
        use macvtap_state::Error as E;
        let c = match &e {
            E::BadStateDir(_) | E::MalformedDeviceId(_) | E::BadResource { .. } => {
                code::INVALID_CONFIG
            }
            E::NotOffered { .. } => code::DEVICE_NOT_OFFERED,
            E::Io { .. }
            | E::Corrupt { .. }
            | E::Untrusted { .. }
            | E::BadRecord { .. }
            | E::BadPolicy(..) => code::STATE_DIR,
            E::LockTimeout { .. } => code::TRY_AGAIN_LATER,
        };
        CniError::new(c, macvtap_net::error_chain(&e))
    }
}

/// The crate's result type.
pub type Result<T, E = CniError> = std::result::Result<T, E>;
