//! The macvtap CNI plugin: CNI protocol types, configuration, IPAM
//! delegation and the commands. The `macvtap` binary is a thin wrapper
//! around [`run`].

pub mod chain;
pub mod config;
pub mod error;
pub mod ipam;
mod kernel;
mod plugin;
pub mod spec;

pub use error::{CniError, Result};
pub use plugin::{run, Outcome};
