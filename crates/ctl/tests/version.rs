//! Every binary of the project says which build it is: the package version
//! and the git revision of the checkout it was built from.

use std::path::PathBuf;
use std::process::Command;

use macvtap_testkit::build_next_to;

fn expected_revision() -> String {
    if let Ok(rev) = std::env::var("MACVTAP_GIT_REV") {
        return rev;
    }
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run git");
    assert!(out.status.success(), "not in a git checkout: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn all_four_binaries_report_the_version_and_the_git_revision() {
    let ctl = PathBuf::from(env!("CARGO_BIN_EXE_macvtapctl"));
    let rev = expected_revision();
    let want = format!("{} (rev {rev})", env!("CARGO_PKG_VERSION"));
    for (package, bin) in [
        ("macvtapctl", "macvtapctl"),
        ("macvtap-cni", "macvtap"),
        ("macvtap-deviceplugin", "macvtap-deviceplugin"),
        ("macvtap-lab", "macvtap-lab"),
    ] {
        let path = if bin == "macvtapctl" {
            ctl.clone()
        } else {
            build_next_to(&ctl, package, bin)
        };
        let out = Command::new(&path)
            .arg("--version")
            .env_remove("CNI_COMMAND")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{bin} --version: {out:?}");
        let first = stdout.lines().next().unwrap_or_default();
        assert_eq!(first, format!("{bin} {want}"), "{bin} --version");
    }
}
