use std::io;
use std::path::PathBuf;

/// Everything a handover can fail with. Each message says what was wrong
/// and, where it matters, that nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--pid` names no process (or one whose namespace cannot be opened).
    #[error("process {pid} does not exist (no /proc/{pid}/ns/net); nothing changed")]
    NoSuchProcess {
        pid: i32,
        #[source]
        source: macvtap_net::Error,
    },
    /// The namespace path is missing or is not a network namespace.
    #[error("cannot open the network namespace; nothing changed")]
    Netns {
        #[source]
        source: macvtap_net::Error,
    },
    /// The interface name is not one the kernel could have.
    #[error("interface name {name:?} {why}")]
    BadInterfaceName { name: String, why: &'static str },
    /// No such interface in the container's namespace.
    #[error("interface {ifname} does not exist in network namespace {netns}; nothing changed")]
    NoSuchInterface { ifname: String, netns: PathBuf },
    /// Loopback cannot be the lower device of a macvtap.
    #[error("interface {ifname} is a loopback device: it has no link layer to hand over; nothing changed")]
    Loopback { ifname: String },
    /// The interface has no IPv4 address: nothing a guest could take over.
    #[error("interface {ifname} has no IPv4 address: there is no identity to hand over; nothing changed")]
    NoIpv4 { ifname: String },
    /// A MAC with the group bit set (or all zeros) cannot be the guest's.
    #[error("{mac} is a multicast or zero MAC and cannot be the guest's address; nothing changed")]
    UnusableMac { mac: String },
    /// The macvtap's (or shim's) name is already taken in the namespace.
    #[error("a link named {name} already exists in the container's namespace; nothing changed")]
    NameTaken { name: String },
    /// The interface is already handed over (a record exists).
    #[error("{ifname} in network namespace {netns} is already handed over (record {record}); undo it first; nothing changed")]
    AlreadyHandedOver {
        ifname: String,
        netns: PathBuf,
        record: PathBuf,
    },
    /// The state directory could not be opened or is not trusted.
    #[error("state directory; nothing changed")]
    StateDir {
        #[source]
        source: macvtap_state::Error,
    },
    /// A record or the handover directory is unsafe (owner, mode, type).
    #[error("{path}: {why}")]
    Untrusted { path: PathBuf, why: String },
    /// Reading or writing a record failed.
    #[error("{op} {path}")]
    Record {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A record is not what this crate writes.
    #[error("record {path} cannot be read")]
    CorruptRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A record names an interface that is no longer the one it describes.
    #[error("record {path} does not match the namespace now: {why}")]
    RecordMismatch { path: PathBuf, why: String },
    /// resolv.conf could not be read.
    #[error("cannot read resolv.conf {path}")]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A link, namespace or device-node operation of macvtap-net failed.
    #[error("{op}")]
    Net {
        op: String,
        #[source]
        source: macvtap_net::Error,
    },
    /// An rtnetlink request failed.
    #[error(transparent)]
    Netlink(#[from] macvtap_net::Error),
    /// Applying failed and the rollback failed too: the record stays for `undo`.
    #[error(
        "rolling back also failed ({}), the record is kept for undo; what failed",
        macvtap_net::error_chain(rollback.as_ref())
    )]
    RollbackFailed {
        #[source]
        source: Box<Error>,
        rollback: Box<Error>,
    },
    /// After an undo, some of the recorded identity is still missing.
    #[error("undo restored {ifname} only partly: {missing}; the record is kept")]
    RestoreIncomplete { ifname: String, missing: String },
    /// The identity cannot be said in this delivery form.
    #[error("{0}")]
    Delivery(String),
    /// DHCP server socket or thread failure.
    #[error("DHCP server: {op}")]
    Dhcp {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// Test hook: apply stopped after this step as if killed (no rollback).
    #[error("apply stopped after step {0:?} by the test hook; the record stays for undo")]
    StoppedByHook(crate::ApplyStep),
    /// Building the NoCloud image failed.
    #[error("NoCloud seed: {op}")]
    Seed {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn net(op: impl Into<String>) -> impl FnOnce(macvtap_net::Error) -> Error {
        let op = op.into();
        move |source| Error::Net { op, source }
    }

    /// The errno behind this error, when the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink(source) => source.errno(),
            Error::Net { source, .. } => source.errno(),
            _ => None,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
