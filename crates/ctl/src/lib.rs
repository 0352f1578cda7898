//! `macvtapctl`'s pieces as a library: the binary is a thin command line
//! over them, and `macvtap-lab` reuses them (scopes, links, tap devices,
//! QEMU arguments, doctor) instead of copying them.

pub mod cli;
pub mod doctor;
pub mod handover;
mod host;
pub mod iface;
pub mod libvirt;
pub mod links;
pub mod qemu;
pub mod scope;
pub mod tap;

/// Prints `program: error: ...` and each cause on its own line to stderr
/// (the binaries' last word on a failure).
pub fn print_error(program: &str, error: &dyn std::error::Error) {
    eprintln!("{program}: error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        // thiserror's transparent variants repeat their source's text.
        if !error.to_string().contains(&cause.to_string()) {
            eprintln!("  caused by: {cause}");
        }
        source = cause.source();
    }
}
