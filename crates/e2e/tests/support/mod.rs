//! Shared by the runtime end-to-end tests: the binaries under test, the
//! runtimes (installed by `scripts/install-runtimes` when missing), a CNI
//! bin dir that times the plugin, the test image, namespace inspection by
//! path, and the podman and containerd guards.
#![allow(dead_code, unused_imports)] // each test file uses a different subset

pub mod containerd;
pub mod cri;
pub mod image;
pub mod podman;
pub mod procs;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

pub use macvtap_testkit::{
    files_under, leases_in, require_root, unique_name, DeviceNode, Lab, Link, TempDir, LOWER,
};

/// Where cargo puts the workspace's binaries for this build (set by
/// build.rs): `target/[<triple>/]<profile>`.
pub const BIN_DIR: &str = env!("MACVTAP_E2E_BIN_DIR");

/// Debian's reference CNI plugins (host-local, loopback).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The uid and gid of the tap device node (KubeVirt's qemu user).
pub const QEMU_ID: u32 = 107;

/// The workspace root (where `scripts/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `macvtap` CNI plugin.
    pub cni: PathBuf,
    /// `macvtap-deviceplugin`.
    pub daemon: PathBuf,
}

/// The CNI plugin and the device plugin daemon, brought up to date once per
/// test process with the cargo that runs the tests (a no-op when fresh).
/// When cargo cannot build them, existing binaries are used with a warning;
/// missing ones fail the test.
pub fn binaries() -> Binaries {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = Path::new(BIN_DIR);
    let bins = Binaries {
        cni: dir.join("macvtap"),
        daemon: dir.join("macvtap-deviceplugin"),
    };
    if let Err(e) = BUILT.get_or_init(|| cargo_build(dir)) {
        for b in [&bins.cni, &bins.daemon] {
            assert!(
                b.exists(),
                "{} is missing and could not be built ({e}): run `cargo build --workspace` first",
                b.display()
            );
        }
        eprintln!("warning: using the binaries in {BIN_DIR} as they are: {e}");
    }
    bins
}

fn cargo_build(profile_dir: &Path) -> Result<(), String> {
    macvtap_testkit::cargo_build_bins(
        &workspace_root(),
        profile_dir,
        &[
            ("macvtap-cni", "macvtap"),
            ("macvtap-deviceplugin", "macvtap-deviceplugin"),
        ],
    )
}

/// Whether `tool` is an executable on PATH (or, given as a path, exists).
fn on_path(tool: &str) -> bool {
    if tool.contains('/') {
        return Path::new(tool).exists();
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .any(|d| {
            fs::metadata(Path::new(d).join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
    found
}

/// What every runtime test needs besides the runtime itself.
pub const COMMON_TOOLS: [&str; 9] = [
    "nsenter",
    "unshare",
    "ip",
    "ping",
    "tar",
    "sha256sum",
    "/bin/busybox",
    "/usr/lib/cni/host-local",
    "/usr/lib/cni/loopback",
];

/// Makes sure every tool (a command, or a file given by path) is
/// installed: runs `scripts/install-runtimes` once
/// when one is missing, and fails (never skips) when that does not help.
pub fn require_tools(tools: &[&str]) {
    require_root();
    static INSTALL: OnceLock<String> = OnceLock::new();
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return;
    }
    let script = workspace_root().join("scripts/install-runtimes");
    let report = INSTALL.get_or_init(|| match Command::new(&script).output() {
        Ok(o) => format!(
            "{} exited {}: {}{}",
            script.display(),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("cannot run {}: {e}", script.display()),
    });
    let still: Vec<&str> = missing.iter().copied().filter(|t| !on_path(t)).collect();
    assert!(
        still.is_empty(),
        "the runtime end-to-end tests need {still:?}, which are not installed, and \
         scripts/install-runtimes could not install them.\nRun `./scripts/install-runtimes` \
         as root (it needs Debian's package registry).\n{report}"
    );
}

/// One measured number, printed so `--nocapture` runs (and CI logs) show it.
pub fn measured(what: &str, d: Duration) {
    println!("MEASURED {what}: {:.1} ms", d.as_secs_f64() * 1000.0);
}

/// The median of some durations.
pub fn median(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty(), "median of nothing");
    v.sort();
    v[v.len() / 2]
}

/// Runs a command, panicking when it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and returns its stdout, panicking with its output when it
/// fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CNI bin directory as the runtimes get it: `macvtap` (the plugin under
/// test behind a timing wrapper), and the reference `host-local` and
/// `loopback` (containerd adds a loopback network to every pod).
///
/// The wrapper is a bash script that sets the node's state directory (as the
/// node's administrator does) and runs the real binary with the same
/// stdin, stdout, stderr, environment and exit status, and appends
/// `COMMAND CONTAINERID IFNAME EXIT START END` (bash's `$EPOCHREALTIME`, no
/// fork) to `plugin-calls.log` beside the directory: the plugin's own time,
/// as the runtime calls it.
#[derive(Debug)]
pub struct CniBin {
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl CniBin {
    /// `state_dir` is the node's state directory, which the wrapper sets as
    /// the node's administrator would (`MACVTAP_STATE_DIR`), with the
    /// built-in node policy.
    pub fn new(parent: &Path, plugin: &Path, state_dir: &Path) -> CniBin {
        let dir = parent.join("cni-bin");
        fs::create_dir_all(&dir).expect("create the CNI bin dir");
        let log = parent.join("plugin-calls.log");
        let real = dir.join("macvtap.under-test");
        fs::copy(plugin, &real).unwrap_or_else(|e| panic!("cannot copy {}: {e}", plugin.display()));
        let wrapper = format!(
            "#!/bin/bash\n\
             # Times the macvtap plugin for the end-to-end tests; passes everything through.\n\
             export MACVTAP_STATE_DIR='{state}' MACVTAP_NODE_CONFIG=/nonexistent/macvtap-node.json\n\
             start=$EPOCHREALTIME\n\
             '{real}' \"$@\"\n\
             rc=$?\n\
             end=$EPOCHREALTIME\n\
             echo \"$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME $rc $start $end\" >> '{log}'\n\
             exit $rc\n",
            real = real.display(),
            log = log.display(),
            state = state_dir.display()
        );
        let path = dir.join("macvtap");
        fs::write(&path, wrapper).expect("write the timing wrapper");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        for p in ["host-local", "loopback"] {
            let src = Path::new(REFERENCE_PLUGINS).join(p);
            assert!(
                src.exists(),
                "{} is missing: install containernetworking-plugins (scripts/install-runtimes)",
                src.display()
            );
            std::os::unix::fs::symlink(&src, dir.join(p)).expect("link a reference plugin");
        }
        CniBin { dir, log }
    }

    /// Every call of the plugin so far.
    pub fn calls(&self) -> Vec<PluginCall> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(PluginCall::parse)
            .collect()
    }

    /// The calls of `command` for `container_id`.
    pub fn calls_of(&self, command: &str, container_id: &str) -> Vec<PluginCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.command == command && c.container_id == container_id)
            .collect()
    }

    /// The one successful ADD for `container_id`, panicking otherwise.
    pub fn add_of(&self, container_id: &str) -> PluginCall {
        let adds = self.calls_of("ADD", container_id);
        assert!(
            adds.len() == 1 && adds[0].exit == 0,
            "expected one successful ADD of the plugin for {container_id}, got {adds:?}\nall calls: {:#?}",
            self.calls()
        );
        adds[0].clone()
    }
}

/// One plugin call seen by the timing wrapper.
#[derive(Debug, Clone)]
pub struct PluginCall {
    pub command: String,
    pub container_id: String,
    pub ifname: String,
    pub exit: i32,
    pub elapsed: Duration,
}

impl PluginCall {
    fn parse(line: &str) -> Option<PluginCall> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [command, cid, ifname, exit, start, end] = f.as_slice() else {
            return None;
        };
        let secs = end.parse::<f64>().ok()? - start.parse::<f64>().ok()?;
        Some(PluginCall {
            command: command.to_string(),
            container_id: cid.to_string(),
            ifname: ifname.to_string(),
            exit: exit.parse().ok()?,
            elapsed: Duration::from_secs_f64(secs.max(0.0)),
        })
    }
}

/// The libcni result cache of every runtime here (`/var/lib/cni/results`):
/// the entries that mention `container_id`.
pub fn cni_cache_entries(container_id: &str) -> Vec<PathBuf> {
    files_under(Path::new("/var/lib/cni/results"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(container_id))
        })
        .collect()
}

/// `ping -c COUNT -W 1 ADDR` inside the lab namespace `ns` (by name):
/// whether every echo was answered, and what ping said.
pub fn ping_from(ns: &str, addr: &str, count: u32) -> (bool, String) {
    let out = run(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "ping",
        "-n",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        addr,
    ]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let all = text.contains(&format!("{count} received"));
    (out.status.success() && all, text)
}

/// The LAN side's neighbour entry for `addr` on `dev`: its lower-case MAC.
pub fn neighbour_mac(ns: &str, dev: &str, addr: &str) -> Option<String> {
    let out = run(Command::new("ip").args(["-n", ns, "-j", "neigh", "show", "dev", dev, addr]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?
        .iter()
        .find(|e| e["dst"] == addr)
        .and_then(|e| e["lladdr"].as_str())
        .map(str::to_ascii_lowercase)
}
