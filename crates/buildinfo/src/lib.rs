//! What `--version` says, the same for every binary of the project.

/// The git revision the binary was built from ("unknown" outside a git
/// checkout unless the builder set `MACVTAP_GIT_REV`).
pub const REVISION: &str = env!("MACVTAP_GIT_REV");

/// `0.1.0 (rev 0123456789ab)`: for clap's `version`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("MACVTAP_GIT_REV"),
    ")"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_the_package_version_and_a_revision() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(VERSION.ends_with(&format!("(rev {REVISION})")));
        assert!(!REVISION.is_empty());
    }
}
