//! Find the git revision the binaries are built from: `MACVTAP_GIT_REV`
//! when the builder sets it (an image built from a source tarball has no
//! `.git`), else `git rev-parse`, else "unknown". Rebuilt when HEAD moves.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=MACVTAP_GIT_REV");
    let rev = std::env::var("MACVTAP_GIT_REV")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // HEAD names the branch; the branch's ref (or packed-refs) names the
    // commit: a commit or a checkout changes one of them.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let dir = PathBuf::from(dir);
        println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
                let common = PathBuf::from(common);
                // Only files that exist: cargo reruns on every build for a
                // missing one.
                for file in [common.join(&head_ref), common.join("packed-refs")] {
                    if file.exists() {
                        println!("cargo:rerun-if-changed={}", file.display());
                    }
                }
            }
        }
    }
    println!("cargo:rustc-env=MACVTAP_GIT_REV={rev}");
}
