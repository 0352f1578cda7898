//! Processes a test starts and watches: a guard that kills and reaps by
//! PID, liveness by /proc, polling with a deadline, and the workspace's
//! binaries built next to the one under test.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::cargo_build_bins;

/// A child process killed (by its PID) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll `f` every 100 ms until it is true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a process with this PID is still alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// Build `bin` of `package` into the directory of `exe` (a binary of the
/// package under test, `CARGO_BIN_EXE_*`), with the profile and target
/// it was built with: a `cargo test -p X` builds only X's binaries, and
/// the tools look for their peers next to themselves.
pub fn build_next_to(exe: &Path, package: &str, bin: &str) -> PathBuf {
    let dir = exe.parent().expect("the binary's directory");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if let Err(e) = cargo_build_bins(&workspace, dir, &[(package, bin)]) {
        panic!("cargo build -p {package} --bin {bin}: {e}");
    }
    let path = dir.join(bin);
    assert!(path.is_file(), "{} missing after the build", path.display());
    path
}

/// What one run of a command-line tool did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub argv: String,
}

impl Run {
    /// Run `program args...` with stdin closed and capture its output.
    pub fn of(program: &Path, args: &[&str]) -> Run {
        let out = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            argv: args.join(" "),
        }
    }

    /// Asserts exit 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "`{}` failed:\n{}\n{}",
            self.argv,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts exit 0 and parses stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        let text = self.ok();
        serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("`{}` printed no JSON ({e}): {text}", self.argv))
    }

    /// Asserts exit `code`, no panic, and returns stderr.
    pub fn fails_with(&self, code: i32) -> &str {
        assert_eq!(
            self.code,
            Some(code),
            "`{}` should exit {code}:\n{}\n{}",
            self.argv,
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        &self.stderr
    }
}

/// The finding of `macvtapctl doctor --json` for (subject, check).
pub fn doctor_finding<'a>(
    report: &'a serde_json::Value,
    subject: &str,
    check: &str,
) -> &'a serde_json::Value {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["subject"] == subject && f["check"] == check)
        .unwrap_or_else(|| panic!("no {subject} {check} finding in {report:#}"))
}
