//! Bringing the workspace's binaries up to date from inside a test process,
//! with the cargo that runs the tests (a no-op when they are fresh).

use std::path::Path;
use std::process::Command;

/// Build `bins` (`(package, binary)` pairs) of the workspace at
/// `workspace_root` into `profile_dir` (`target/<profile>` or
/// `target/<triple>/<profile>`, where the test binaries themselves live).
pub fn cargo_build_bins(
    workspace_root: &Path,
    profile_dir: &Path,
    bins: &[(&str, &str)],
) -> Result<(), String> {
    let cargo = std::env::var("CARGO").map_err(|_| "not run by cargo".to_string())?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(p) => p.to_string(),
        None => return Err("no profile directory name".into()),
    };
    let above = profile_dir.parent().ok_or("no target directory")?;
    let above_name = above.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet"]);
    for (package, bin) in bins {
        cmd.args(["-p", package, "--bin", bin]);
    }
    cmd.args(["--profile", &profile])
        .arg("--manifest-path")
        .arg(workspace_root.join("Cargo.toml"));
    // A --target build puts binaries under target/<triple>/<profile>.
    if above_name.contains("-linux-") || above_name.contains("-unknown-") {
        let target_dir = above.parent().ok_or("no target directory")?;
        cmd.args(["--target", above_name])
            .arg("--target-dir")
            .arg(target_dir);
    } else {
        cmd.arg("--target-dir").arg(above);
    }
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cargo build failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
