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
/// (the binaries' last word on a failure). No message repeats its cause
/// (`#[error(transparent)]` forwards `source()` too), so every line is new.
pub fn print_error(program: &str, error: &dyn std::error::Error) {
    eprint!("{}", render_error(program, error));
}

/// What [`print_error`] prints: `program: error: TOP` and a
/// `  caused by: CAUSE` line per cause, each ending in a newline.
pub fn render_error(program: &str, error: &dyn std::error::Error) -> String {
    let mut out = format!("{program}: error: {error}\n");
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(&format!("  caused by: {cause}\n"));
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once_on_its_own_line() {
        let kernel = macvtap_net::Error::Netlink {
            op: "create link x".into(),
            source: std::io::Error::from_raw_os_error(libc::EEXIST),
        };
        // Transparent: the top line is the kernel error's, its cause follows once.
        let e = scope::ScopeError::Kernel(kernel);
        let text = render_error("macvtapctl", &e);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], "macvtapctl: error: create link x");
        assert!(lines[1].starts_with("  caused by: File exists"), "{text}");
    }
}
