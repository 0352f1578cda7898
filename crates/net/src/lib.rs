//! `macvtap-net` is the only code in this project that speaks rtnetlink,
//! switches network namespaces and makes tap device nodes.
//!
//! Everything here is synchronous: the CNI plugin is a short-lived process
//! that must not pay for an async runtime, and namespace switches are
//! per-thread, so they happen only on threads this crate spawns
//! ([`NetNs::run`]) and never on a caller's (possibly pooled) thread.

mod devnode;
mod error;
pub mod inet;
mod mac;
mod monitor;
mod named_netns;
mod netlink;
mod netns;
mod veth;

pub use devnode::{make_device_node, tap_device_number, DeviceNumber, NodeInfo, SysfsView};
pub use error::{error_chain, Error, Result};
pub use mac::{MacAddr, MacError};
pub use monitor::{events_lost, LinkEvent, LinkMonitor};
pub use named_netns::{named_netns_path, NETNS_RUN_DIR};
pub use netlink::{Link, MacvtapMode, MacvtapSpec, Netlink, RouteSpec};
pub use netns::NetNs;
pub use veth::create_veth_pair;
