//! Test worlds for the macvtap CNI plugin: private network namespaces, veth
//! lower devices, temporary state directories and a runner for the plugin
//! binary, plus helpers that read back real kernel state with `ip -j`.
//!
//! Everything a test creates is owned by a guard whose `Drop` removes it, so
//! a panicking test still cleans up. Names carry the pid, a per-process
//! counter and the test name, so parallel tests and concurrent processes
//! never collide.

mod build;
mod container;
#[cfg(feature = "kubelet")]
pub mod device_plugin;
pub mod guest;
mod inspect;
mod lab;
mod monitor;
mod mount;
mod names;
mod netns;
mod plugin;
mod procs;
mod resources;
mod spawn;
mod tempdir;
mod wire;

pub use build::cargo_build_bins;
pub use container::{ContainerNet, RESOLV_CONF};
pub use guest::dhcp::DhcpGuest;
pub use guest::GuestStandIn;
pub use inspect::{files_under, leases_in, DeviceNode, Link};
pub use lab::{Lab, LOWER, POD_IFNAME};
pub use monitor::LinkMonitor;
pub use mount::TmpfsMount;
pub use names::{require_root, unique_name};
pub use netns::{Netns, NsView};
pub use plugin::{Plugin, PluginOutput, NODE_CONFIG_ENV, NO_NODE_POLICY, STATE_DIR_ENV};
pub use procs::{alive, build_next_to, doctor_finding, eventually, ChildGuard, Run};
pub use resources::{
    grant, grant_to_pod, write_resources, write_resources_json, write_resources_ungranted, Resource,
};
pub use spawn::join_netns_at_exec;
pub use tempdir::TempDir;
pub use wire::{wire_uplink, Uplink};

/// Every CNI spec version the plugin promises to implement.
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Where Debian's containernetworking-plugins installs host-local, static, ...
pub const CNI_PLUGINS_DIR: &str = "/usr/lib/cni";
