use std::io;
use std::path::PathBuf;

/// Errors of the netlink, namespace and device-node layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink request was answered with an error by the kernel.
    #[error("{op}: {source}")]
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
    #[error("{op} {path}: {source}")]
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
    #[error("cannot read the tap device number of {ifname} (ifindex {ifindex}): {source}")]
    TapDevice {
        ifname: String,
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    /// Creating or owning a device node failed.
    #[error("device node {path}: {op}: {source}")]
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

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
