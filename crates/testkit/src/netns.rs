//! A named network namespace guard, and the one namespace inspector
//! ([`NsView`]): `ip -j` helpers that read kernel state as JSON, for a
//! namespace the tests made (by name) or one a runtime made (by path).

use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use macvtap_net::NetNs;
use serde_json::Value;

use crate::inspect::Link;
use crate::names::require_root;

/// A named network namespace, `/run/netns/<name>`, made and deleted
/// through macvtap-net (as the lab makes its own); deleted on drop (which
/// also destroys every link inside it) unless kept.
#[derive(Debug)]
pub struct Netns {
    name: String,
    view: NsView,
    /// Deleted already, or kept: drop leaves it alone.
    done: bool,
}

/// A namespace is inspected like any other: `lab.pod.links()` reads
/// through its [`NsView`].
impl Deref for Netns {
    type Target = NsView;

    fn deref(&self) -> &NsView {
        &self.view
    }
}

impl Netns {
    /// Creates `/run/netns/<name>` with `lo` up, as a pod's; panics when it
    /// cannot.
    pub fn new(name: &str) -> Netns {
        require_root();
        let ns = Netns::create(name).unwrap_or_else(|e| panic!("cannot create netns {name}: {e}"));
        ns.ip_ok(&["link", "set", "lo", "up"]);
        ns
    }

    /// Creates `/run/netns/<name>` (nothing up), for callers that must not
    /// panic (the lab).
    pub fn create(name: &str) -> macvtap_net::Result<Netns> {
        NetNs::create_named(name)?;
        Ok(Netns {
            name: name.to_string(),
            view: NsView::named(name),
            done: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Leave the namespace in place when this is dropped.
    pub fn keep(&mut self) {
        self.done = true;
    }

    /// Deletes the namespace now; drop then does nothing.
    pub fn remove(&mut self) -> macvtap_net::Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        NetNs::delete_named(&self.name)
    }

    /// Deletes the namespace now (e.g. to test DEL after the sandbox is
    /// gone), panicking when it cannot; drop then does nothing.
    pub fn delete(&mut self) {
        if let Err(e) = self.remove() {
            panic!("cannot delete netns {}: {e}", self.name);
        }
    }
}

/// How a command gets into the namespace.
#[derive(Debug, Clone)]
enum Entry {
    /// `/run/netns/<name>`: `ip -n`, `ip netns exec`.
    Named(String),
    /// Any namespace file (podman's `/run/netns/netns-…`, containerd's
    /// under its state dir): `nsenter --net=PATH`.
    Path(PathBuf),
}

/// Read-only inspection of one network namespace with `ip -j` (panicking,
/// with what it ran, when a command fails: it is a test's view).
#[derive(Debug, Clone)]
pub struct NsView {
    entry: Entry,
}

impl NsView {
    /// The namespace `/run/netns/<name>`.
    pub fn named(name: &str) -> NsView {
        NsView {
            entry: Entry::Named(name.to_string()),
        }
    }

    /// A namespace known only by its path.
    pub fn at_path(path: impl AsRef<Path>) -> NsView {
        NsView {
            entry: Entry::Path(path.as_ref().to_path_buf()),
        }
    }

    /// The namespace file: what CNI_NETNS points at.
    pub fn path(&self) -> PathBuf {
        match &self.entry {
            Entry::Named(name) => PathBuf::from("/run/netns").join(name),
            Entry::Path(path) => path.clone(),
        }
    }

    /// Whether the namespace file is still there.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// `ip` with its arguments to come, run inside the namespace.
    fn ip_command(&self) -> Command {
        match &self.entry {
            Entry::Named(name) => {
                let mut c = Command::new("ip");
                c.arg("-n").arg(name);
                c
            }
            Entry::Path(path) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", path.display()))
                    .arg("--")
                    .arg("ip");
                c
            }
        }
    }

    /// `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Output {
        run(self.ip_command().args(args))
    }

    /// `ip <args>` inside the namespace, panicking with stderr when it
    /// fails.
    pub fn ip_ok(&self, args: &[&str]) -> String {
        let out = self.ip(args);
        assert!(
            out.status.success(),
            "`ip {}` in {self} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip <line>` inside the namespace, the line split on whitespace; panics on failure.
    pub fn ip_cmd(&self, line: &str) -> String {
        let args: Vec<&str> = line.split_whitespace().collect();
        self.ip_ok(&args)
    }

    /// `ip -j <args>` inside the namespace, parsed; an empty answer is an
    /// empty array.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let text = self.ip_ok(&full);
        if text.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "`ip -j {}` in {self} printed invalid JSON ({e}): {text}",
                args.join(" ")
            )
        })
    }

    /// Every link, with details (`ip -d -j link show`).
    pub fn links_json(&self) -> Vec<Value> {
        as_vec(self.ip_json(&["-d", "link", "show"]))
    }

    pub fn links(&self) -> Vec<Link> {
        self.links_json().iter().map(Link::from_json).collect()
    }

    /// One link with details, `None` if it does not exist.
    pub fn link(&self, name: &str) -> Option<Link> {
        self.links().into_iter().find(|l| l.name == name)
    }

    /// Like [`NsView::link`] but panics with the namespace's link list.
    pub fn expect_link(&self, name: &str) -> Link {
        self.link(name).unwrap_or_else(|| {
            panic!(
                "no link {name} in {self}; links: {:?}",
                self.links().iter().map(|l| &l.name).collect::<Vec<_>>()
            )
        })
    }

    pub fn macvtaps(&self) -> Vec<Link> {
        self.links()
            .into_iter()
            .filter(|l| l.kind.as_deref() == Some("macvtap"))
            .collect()
    }

    /// The `addr_info` entries of one device (`ip -j addr show dev X`).
    pub fn addrs(&self, dev: &str) -> Vec<Value> {
        let all = as_vec(self.ip_json(&["addr", "show", "dev", dev]));
        all.first()
            .and_then(|d| d.get("addr_info"))
            .map(|a| as_vec(a.clone()))
            .unwrap_or_default()
    }

    /// `local/prefixlen` of every address of `family` ("inet"/"inet6").
    pub fn addr_cidrs(&self, dev: &str, family: &str) -> Vec<String> {
        self.addrs(dev)
            .iter()
            .filter(|a| a["family"] == family)
            .map(|a| {
                format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or("?"),
                    a["prefixlen"].as_u64().unwrap_or(0)
                )
            })
            .collect()
    }

    /// IPv4 routes of the main table (`ip -j -4 route show`).
    pub fn routes(&self) -> Vec<Value> {
        as_vec(self.ip_json(&["-4", "route", "show"]))
    }

    /// The name a peer namespace id has from inside this namespace
    /// (`ip netns list-id`), used to tell which namespace a lower device
    /// lives in.
    pub fn peer_name(&self, nsid: i64) -> Option<String> {
        as_vec(self.ip_json(&["netns", "list-id"]))
            .iter()
            .find(|e| e["nsid"].as_i64() == Some(nsid))
            .and_then(|e| e["name"].as_str().map(str::to_string))
    }

    /// Reads a file with this namespace's own sysfs mounted (`ip netns
    /// exec` mounts it; by path, a private mount namespace does, so nothing
    /// leaks).
    pub fn read_sys(&self, path: &str) -> Option<String> {
        let out = match &self.entry {
            Entry::Named(name) => {
                run(Command::new("ip").args(["netns", "exec", name, "cat", path]))
            }
            Entry::Path(ns) => run(Command::new("nsenter")
                .arg(format!("--net={}", ns.display()))
                .args(["--", "unshare", "--mount", "sh", "-c"])
                .arg("mount -t sysfs sysfs /sys && exec cat \"$0\"")
                .arg(path)),
        };
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The (major, minor) of a macvtap's character device as its own
    /// namespace's sysfs reports it.
    pub fn tap_dev(&self, link: &Link) -> (u64, u64) {
        let path = format!(
            "/sys/class/net/{}/macvtap/tap{}/dev",
            link.name, link.ifindex
        );
        let text = self
            .read_sys(&path)
            .unwrap_or_else(|| panic!("cannot read {path} in {self}"));
        parse_major_minor(&text).unwrap_or_else(|| panic!("bad dev number {text:?} in {path}"))
    }
}

impl fmt::Display for NsView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entry {
            Entry::Named(name) => write!(f, "netns {name}"),
            Entry::Path(path) => write!(f, "netns {}", path.display()),
        }
    }
}

impl Netns {
    /// Runs a program inside the namespace with `ip netns exec` (which also
    /// mounts the namespace's own sysfs: what the test side wants).
    pub fn exec(&self, argv: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("warning: cannot delete netns {}: {e}", self.name);
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn as_vec(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Null => vec![],
        other => vec![other],
    }
}

/// Parses sysfs's `MAJOR:MINOR`.
pub(crate) fn parse_major_minor(text: &str) -> Option<(u64, u64)> {
    let (ma, mi) = text.trim().split_once(':')?;
    Some((ma.parse().ok()?, mi.parse().ok()?))
}
