use std::io;
use std::path::PathBuf;

/// Errors of the netlink, namespace and device-node layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink request was answered with an error by the kernel.
    #[error("{op}")]
    Netlink {
        op: String,
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be decoded.
    #[error("{op}: cannot decode the kernel's answer: {detail}")]
    Decode { op: String, detail: String },
    /// The network namespace path does not exist.
    #[error("network namespace {0} does not exist")]
    NetnsMissing(PathBuf),
    /// The path exists but is not a network namespace.
    #[error("{0} is not a network namespace")]
    NotANetns(PathBuf),
    /// Opening or entering a namespace failed.
    #[error("{op} {path}")]
    Netns {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A helper thread panicked or could not be started.
    #[error("namespace worker thread failed: {0}")]
    Thread(String),
    /// Reading the tap device number from sysfs failed.
    #[error("cannot read the tap device number of {ifname} (ifindex {ifindex})")]
    TapDevice {
        ifname: String,
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    /// Creating or owning a device node failed.
    #[error("device node {path}: {op}")]
    DeviceNode {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The errno behind this error, when the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. }
            | Error::Netns { source, .. }
            | Error::TapDevice { source, .. }
            | Error::DeviceNode { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// `e`'s message and those of its causes, joined with ": ", as one line.
///
/// The workspace's convention: an error's own message never repeats its
/// `#[source]`, so anything shown to a person or a runtime renders the
/// chain with this (or a `caused by:` line per cause), never `to_string()`
/// alone. A cause whose message is empty (a transparent wrapper would
/// repeat it, not leave it empty) is skipped.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_joins_every_cause_once() {
        let e = Error::Netns {
            op: "open",
            path: PathBuf::from("/run/netns/x"),
            source: io::Error::from_raw_os_error(2),
        };
        assert_eq!(e.to_string(), "open /run/netns/x");
        let chain = error_chain(&e);
        assert!(chain.starts_with("open /run/netns/x: "), "{chain}");
        assert_eq!(chain.matches("No such file").count(), 1, "{chain}");
    }
}
