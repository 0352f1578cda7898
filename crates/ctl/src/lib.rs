//! `macvtapctl`'s pieces as a library: the binary is a thin command line
//! over them, and `macvtap-lab` reuses them (scopes, links, tap devices,
//! QEMU arguments, doctor) instead of copying them.

pub mod cli;
pub mod doctor;
mod host;
pub mod iface;
pub mod libvirt;
pub mod links;
pub mod qemu;
pub mod scope;
pub mod tap;
