//! Running `macvtapctl` (and the CNI plugin next to it) in namespaces the
//! tests make with macvtap-testkit.
#![allow(dead_code)] // each test file uses its own part

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use macvtap_testkit::Netns;
use serde_json::Value;

pub fn ctl_path() -> &'static str {
    env!("CARGO_BIN_EXE_macvtapctl")
}

/// What one `macvtapctl` run did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub argv: String,
}

impl Run {
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
    pub fn json(&self) -> Value {
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

pub fn run(args: &[&str]) -> Run {
    let out: Output = Command::new(ctl_path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run macvtapctl");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        argv: args.join(" "),
    }
}

/// `macvtapctl --netns NS args...`
pub fn run_in(ns: &Netns, args: &[&str]) -> Run {
    let mut all = vec!["--netns", ns.name()];
    all.extend_from_slice(args);
    run(&all)
}

/// A veth pair inside `ns`, both ends up: `lower` carries macvtaps.
pub fn veth_pair(ns: &Netns, lower: &str, peer: &str) {
    ns.ip_cmd(&format!("link add {lower} type veth peer name {peer}"));
    ns.ip_cmd(&format!("link set {lower} up"));
    ns.ip_cmd(&format!("link set {peer} up"));
}

/// An ifindex no other test process asks for: /dev/tap<ifindex> is one
/// name for the whole machine.
pub fn unique_ifindex() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 32, "raise the ifindex stride");
    100_000 + (std::process::id() % 60_000) * 32 + n
}

/// The `macvtap` CNI plugin next to macvtapctl, built if needed (a
/// `cargo test -p macvtapctl` builds only this package's binary).
pub fn cni_plugin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build_next_to_ctl("macvtap-cni", "macvtap"))
        .clone()
}

/// `macvtap-deviceplugin` next to macvtapctl, built if needed: where
/// `lab --device-plugin auto` looks for it.
pub fn device_plugin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build_next_to_ctl("macvtap-deviceplugin", "macvtap-deviceplugin"))
        .clone()
}

/// Build `bin` of `package` with the profile and target macvtapctl was
/// built with, so it lands in macvtapctl's directory.
fn build_next_to_ctl(package: &str, bin: &str) -> PathBuf {
    let dir = PathBuf::from(ctl_path())
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(p) => p.to_string(),
        None => panic!("no profile directory above {}", ctl_path()),
    };
    let above = dir.parent().expect("target dir");
    let above_name = above.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut build = Command::new(cargo);
    build
        .args(["build", "-q", "-p", package, "--bin", bin])
        .args(["--profile", &profile])
        .arg("--manifest-path")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"));
    if above_name.contains("-linux-") || above_name.contains("-unknown-") {
        // target/<triple>/<profile>
        build
            .args(["--target", above_name])
            .arg("--target-dir")
            .arg(above.parent().expect("target dir"));
    } else {
        build.arg("--target-dir").arg(above);
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo build for {bin}: {e}"));
    assert!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    let path = dir.join(bin);
    assert!(path.is_file(), "{} missing after the build", path.display());
    path
}

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

/// The finding of `doctor --json` for (subject, check).
pub fn finding<'a>(report: &'a Value, subject: &str, check: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["subject"] == subject && f["check"] == check)
        .unwrap_or_else(|| panic!("no {subject} {check} finding in {report:#}"))
}

/// Whether a process with this PID is still alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// A namespace with up0 (peer up1, both up) carrying the macvtap `mv0`
/// (with `mac` if given) at an ifindex no other test uses, so
/// /dev/tap<ifindex> is its own.
pub fn macvtap_world(tag: &str, mac: Option<&str>) -> Netns {
    let ns = Netns::new(&macvtap_testkit::unique_name(tag));
    veth_pair(&ns, "up0", "up1");
    let index = unique_ifindex().to_string();
    let mut args = vec![
        "create",
        "--lower",
        "up0",
        "--name",
        "mv0",
        "--ifindex",
        &index,
    ];
    if let Some(mac) = mac {
        args.extend(["--mac", mac]);
    }
    run_in(&ns, &args).ok();
    ns
}

/// `MAJOR:MINOR` of a macvtap's tap device, as `show` reports it.
pub fn device_of(ns: &Netns, name: &str) -> String {
    run_in(ns, &["show", name, "--json"]).json()["device"]
        .as_str()
        .expect("show reports the device number")
        .to_string()
}

/// Two namespaces, each with up0 carrying `mv0` at the same ifindex: the
/// first one made owns /dev/tap<ifindex>.
pub fn same_ifindex_pair(tag: &str) -> (Netns, Netns) {
    let index = unique_ifindex().to_string();
    let make = |role: &str| {
        let ns = Netns::new(&macvtap_testkit::unique_name(&format!("{tag}-{role}")));
        veth_pair(&ns, "up0", "up1");
        run_in(
            &ns,
            &[
                "create",
                "--lower",
                "up0",
                "--name",
                "mv0",
                "--ifindex",
                &index,
            ],
        )
        .ok();
        ns
    };
    let first = make("a");
    (first, make("b"))
}
