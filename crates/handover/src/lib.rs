//! Handover: a VM on a macvtap takes over the network identity of the
//! container it runs in.
//!
//! The core ([`apply`], [`undo`]) captures a container interface's
//! [`Identity`], writes it to a durable [`Record`] **before** changing
//! anything, then makes a macvtap on the interface and takes the addresses
//! and routes off it. [`undo`] puts back exactly what the record says. The
//! identity reaches the guest three ways: the [`dhcp`] server (on a shim
//! macvlan, answering only the guest's MAC), a cloud-init NoCloud seed
//! ([`nocloud`]), or the kernel's `ip=` argument ([`cmdline`]).
//!
//! The front ends (`macvtapctl handover`, the chained CNI plugin) are thin:
//! open a [`Store`], open the namespace with [`Target::open`], call
//! [`apply`], deliver, and [`undo`] (or [`forget`] when the namespace is gone).
//!
//! Everything is synchronous; namespace switches happen only on threads
//! `macvtap-net` spawns for the purpose.

pub mod cmdline;
pub mod dhcp;
mod error;
mod handover;
mod identity;
mod mac_serde;
pub mod nocloud;
mod store;

pub use error::{Error, Result};
pub use handover::{
    apply, capture, forget, generate_mac, record_key, summary, tap_device_number, undo, Applied,
    ApplyOptions, ApplyStep, ResolvConf, Target, UndoOutcome,
};
pub use identity::{
    netmask, network, parse_resolv_conf, read_resolv_conf, Address, Dns, Identity, Route,
};
pub use store::{CniOwner, Made, Phase, Record, RecordKey, Store};
