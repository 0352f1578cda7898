//! A network namespace a runtime made, known only by its path (podman's
//! `/run/netns/netns-…`, containerd's under its state dir): read-only
//! inspection with `nsenter --net=PATH ip -j …`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::{run, run_ok, Link};

#[derive(Debug, Clone)]
pub struct NsPath(pub PathBuf);

impl NsPath {
    pub fn new(path: impl AsRef<Path>) -> NsPath {
        NsPath(path.as_ref().to_path_buf())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn exists(&self) -> bool {
        self.0.exists()
    }

    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.0.display())).arg("--");
        c
    }

    /// `ip ARGS` inside the namespace (e.g. to flush its neighbours);
    /// panics when it fails.
    pub fn ip_ok(&self, args: &[&str]) -> String {
        run_ok(self.nsenter().arg("ip").args(args))
    }

    /// `ip -j ARGS` inside the namespace, parsed (an empty answer is `[]`).
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let text = run_ok(self.nsenter().arg("ip").arg("-j").args(args));
        if text.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("ip -j {args:?} in {}: bad JSON ({e}): {text}", self))
    }

    pub fn links(&self) -> Vec<Link> {
        self.ip_json(&["-d", "link", "show"])
            .as_array()
            .map(|a| a.iter().map(Link::from_json).collect())
            .unwrap_or_default()
    }

    pub fn link(&self, name: &str) -> Option<Link> {
        self.links().into_iter().find(|l| l.name == name)
    }

    pub fn expect_link(&self, name: &str) -> Link {
        self.link(name).unwrap_or_else(|| {
            panic!(
                "no link {name} in {self}; links: {:?}",
                self.links().iter().map(|l| &l.name).collect::<Vec<_>>()
            )
        })
    }

    /// `addr/prefixlen` of every IPv4 address of `dev`.
    pub fn ipv4_cidrs(&self, dev: &str) -> Vec<String> {
        let v = self.ip_json(&["-4", "addr", "show", "dev", dev]);
        v.as_array()
            .and_then(|a| a.first())
            .and_then(|d| d["addr_info"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|a| {
                format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or("?"),
                    a["prefixlen"].as_u64().unwrap_or(0)
                )
            })
            .collect()
    }

    /// The name (in /run/netns) of the namespace that `nsid` means here.
    pub fn peer_name(&self, nsid: i64) -> Option<String> {
        self.ip_json(&["netns", "list-id"])
            .as_array()?
            .iter()
            .find(|e| e["nsid"].as_i64() == Some(nsid))
            .and_then(|e| e["name"].as_str().map(str::to_string))
    }

    /// The (major, minor) of a macvtap's tap device, read from a sysfs
    /// mounted inside this namespace (in a private mount namespace, so
    /// nothing leaks): the number the device node must carry.
    pub fn tap_dev(&self, link: &Link) -> (u64, u64) {
        let file = format!(
            "/sys/class/net/{}/macvtap/tap{}/dev",
            link.name, link.ifindex
        );
        let out = run(self.nsenter().args([
            "unshare",
            "--mount",
            "sh",
            "-c",
            &format!("mount -t sysfs sysfs /sys && cat {file}"),
        ]));
        let text = String::from_utf8_lossy(&out.stdout);
        let (ma, mi) = text.trim().split_once(':').unwrap_or_else(|| {
            panic!(
                "cannot read {file} in {self}: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (
            ma.parse().expect("major number"),
            mi.parse().expect("minor number"),
        )
    }
}

impl std::fmt::Display for NsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "netns {}", self.0.display())
    }
}
