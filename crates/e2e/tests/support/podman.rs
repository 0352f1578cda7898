//! podman 4.3 with its CNI backend, private to one test: its own
//! containers.conf, storage (`--root`/`--runroot`), network config dir and
//! CNI plugin dir in a temp dir, run inside the lab's NODE namespace with
//! `nsenter --net` (so the uplink `up0` is the plugin's lower device and
//! the machine's own interfaces are never seen). Drop removes every
//! container, image and mount it made, then the temp dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::procs::unmount_under;
use super::{run, CniBin, TempDir};

#[derive(Debug)]
pub struct Podman {
    node_netns: PathBuf,
    conf: PathBuf,
    root: PathBuf,
    runroot: PathBuf,
    pub net_dir: PathBuf,
    pub cni: CniBin,
    // Last: removed after everything inside is unmounted.
    dir: TempDir,
}

impl Podman {
    /// A private podman whose CNI plugin dir holds `plugin` (behind the
    /// timing wrapper) and the reference host-local.
    pub fn new(tag: &str, node_netns: &Path, plugin: &Path, state_dir: &Path) -> Podman {
        let dir = TempDir::new(tag);
        let root = dir.subdir("root");
        let runroot = dir.subdir("runroot");
        let net_dir = dir.subdir("net.d");
        let tmp = dir.subdir("tmp");
        let cni = CniBin::new(dir.path(), plugin, state_dir);
        let conf = dir.path().join("containers.conf");
        fs::write(
            &conf,
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [network]\n\
                 network_backend = \"cni\"\n\
                 cni_plugin_dirs = [\"{bin}\"]\n\
                 network_config_dir = \"{net}\"\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 events_logfile_path = \"{tmp}/events.log\"\n\
                 tmp_dir = \"{tmp}\"\n\
                 runtime = \"runc\"\n",
                bin = cni.dir.display(),
                net = net_dir.display(),
                tmp = tmp.display(),
            ),
        )
        .expect("write containers.conf");
        Podman {
            node_netns: node_netns.to_path_buf(),
            conf,
            root,
            runroot,
            net_dir,
            cni,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `nsenter --net=NODE podman <global flags> ARGS`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node_netns.display()))
            .args(["--", "podman"])
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args([
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(args)
            .env("CONTAINERS_CONF", &self.conf);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run(&mut self.cmd(args))
    }

    /// Runs podman and returns its stdout, panicking with its output when
    /// it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a CNI network configuration list into the network config dir.
    pub fn add_network(&self, conflist: &Value) {
        let name = conflist["name"].as_str().expect("a conflist has a name");
        fs::write(
            self.net_dir.join(format!("{name}.conflist")),
            serde_json::to_string_pretty(conflist).expect("serialize"),
        )
        .expect("write the conflist");
    }

    /// `podman inspect NAME`, the one object.
    pub fn inspect(&self, name: &str) -> Value {
        let text = self.ok(&["inspect", name]);
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("podman inspect {name}: bad JSON ({e}): {text}"));
        v.as_array()
            .and_then(|a| a.first().cloned())
            .unwrap_or_else(|| panic!("podman inspect {name} returned no object: {text}"))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Best effort, in order: containers (their CNI DEL), images,
        // storage; then whatever is still mounted below the temp dir.
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.run(&["rmi", "--all", "--force"]);
        let _ = self.run(&["system", "reset", "--force"]);
        let left = unmount_under(self.dir.path());
        if !left.is_empty() {
            eprintln!("podman guard: unmounted {left:?}");
        }
    }
}
