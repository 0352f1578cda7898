//! A complete test world: NODE (the plugin's host namespace, with the lower
//! device `up0`), POD (the sandbox) and LAN (the far end of the veth), plus
//! a temp dir holding the plugin's stateDir, host-local's dataDir and fake
//! IPAM plugins.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::inspect::{files_under, leases_in, DeviceNode, Link};
use crate::names::{require_root, unique_name};
use crate::netns::Netns;
use crate::plugin::{Plugin, PluginOutput};
use crate::tempdir::TempDir;
use crate::wire::{wire_uplink, Uplink};
use crate::CNI_PLUGINS_DIR;

/// The lower device's name in NODE.
pub const LOWER: &str = "up0";
/// The CNI_IFNAME the lab's invocations use unless told otherwise.
pub const POD_IFNAME: &str = "net1";

#[derive(Debug)]
pub struct Lab {
    // Declaration order is drop order: namespaces (and every link in them)
    // go first, then the files.
    pub node: Netns,
    pub pod: Netns,
    pub lan: Netns,
    pub dir: TempDir,
    /// Unique prefix of every name this lab makes.
    pub prefix: String,
    /// The CNI_CONTAINERID of the lab's own invocations.
    pub container_id: String,
    binary: PathBuf,
}

impl Lab {
    /// Builds the world for one test. `binary` is the plugin under test.
    pub fn new(test: &str, binary: impl AsRef<Path>) -> Lab {
        require_root();
        let prefix = unique_name(test);
        let node = Netns::new(&format!("{prefix}-node"));
        let pod = Netns::new(&format!("{prefix}-pod"));
        let lan = Netns::new(&format!("{prefix}-lan"));
        let dir = TempDir::new(test);
        let open = |ns: &Netns| macvtap_net::NetNs::open(ns.path()).expect("open a lab namespace");
        let uplink = Uplink {
            uplink: LOWER,
            lan_if: "lan0",
            lan_addr: None,
            arp_retrans_ms: None,
        };
        wire_uplink(&open(&node), &open(&lan), &[], &uplink)
            .unwrap_or_else(|e| panic!("wire the lab: {}", macvtap_net::error_chain(&e)));
        let lab = Lab {
            node,
            pod,
            lan,
            dir,
            container_id: prefix.clone(),
            prefix,
            binary: binary.as_ref().to_path_buf(),
        };
        fs::create_dir_all(lab.state_dir()).expect("create stateDir");
        fs::create_dir_all(lab.bin_dir()).expect("create bin dir");
        lab
    }

    /// Another namespace owned by the caller (deleted when it is dropped).
    pub fn netns(&self, role: &str) -> Netns {
        Netns::new(&format!("{}-{role}", self.prefix))
    }

    /// A container ID unique to this lab, for a second attachment.
    pub fn other_container_id(&self, tag: &str) -> String {
        format!("{}-{tag}", self.prefix)
    }

    /// The plugin's `stateDir` (exists, empty at start).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// host-local's `dataDir`.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// Where fake IPAM plugins live; first on CNI_PATH.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    pub fn cni_path(&self) -> String {
        format!("{}:{CNI_PLUGINS_DIR}", self.bin_dir().display())
    }

    /// A standalone-mode config on `up0` with the lab's stateDir.
    pub fn config(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "testnet",
            "type": "macvtap",
            "master": LOWER,
            "stateDir": self.state_dir(),
        })
    }

    /// A real host-local IPAM section on `10.200.<net>.0/24`, gateway .1,
    /// a route to `10.200.<net+1>.0/24`, leases in the lab's dataDir.
    pub fn host_local(&self, net: u8) -> Value {
        json!({
            "type": "host-local",
            "ranges": [[{
                "subnet": format!("10.200.{net}.0/24"),
                "rangeStart": format!("10.200.{net}.10"),
                "rangeEnd": format!("10.200.{net}.50"),
                "gateway": format!("10.200.{net}.1"),
            }]],
            "routes": [{"dst": format!("10.200.{}.0/24", net.wrapping_add(1))}],
            "dataDir": self.ipam_dir(),
        })
    }

    /// Installs a fake IPAM plugin `name` in the lab's bin dir: it logs
    /// `COMMAND CONTAINERID IFNAME` per call to `<bin>/<name>.log`, prints
    /// `add_stdout` and exits `add_exit` on ADD, succeeds silently on
    /// DEL/CHECK/GC/STATUS. Returns the `ipam` section that selects it.
    pub fn fake_ipam(&self, name: &str, add_stdout: &Value, add_exit: i32) -> Value {
        let bin = self.bin_dir();
        let out_file = bin.join(format!("{name}.add.json"));
        fs::write(
            &out_file,
            serde_json::to_string(add_stdout).expect("serialize"),
        )
        .expect("write fake IPAM answer");
        let log = bin.join(format!("{name}.log"));
        let script = format!(
            "#!/bin/sh\n\
             cat >/dev/null\n\
             echo \"$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME\" >> '{log}'\n\
             case \"$CNI_COMMAND\" in\n\
             ADD) cat '{out}'; exit {add_exit} ;;\n\
             VERSION) echo '{{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]}}' ;;\n\
             esac\n\
             exit 0\n",
            log = log.display(),
            out = out_file.display(),
        );
        let path = bin.join(name);
        fs::write(&path, script).expect("write fake IPAM plugin");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        json!({ "type": name })
    }

    /// The calls a fake IPAM plugin received, one `COMMAND CID IFNAME` each.
    pub fn fake_ipam_calls(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.bin_dir().join(format!("{name}.log")))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// The node policy file the lab's invocations read (absent: the
    /// built-in policy).
    pub fn node_policy_path(&self) -> PathBuf {
        self.dir.path().join("node.json")
    }

    /// Write the node's policy (what an administrator puts in
    /// /etc/macvtap/node.json) for the lab's invocations.
    pub fn set_node_policy(&self, policy: &Value) {
        let path = self.node_policy_path();
        fs::write(&path, policy.to_string())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// A fully prepared invocation: the lab's container, POD as CNI_NETNS,
    /// `net1`, CNI_PATH with the lab's bin dir then /usr/lib/cni, the lab's
    /// node policy.
    pub fn plugin(&self, command: &str, config: &Value) -> Plugin {
        Plugin::new(&self.binary, self.node.path())
            .env(
                crate::plugin::NODE_CONFIG_ENV,
                self.node_policy_path().to_string_lossy(),
            )
            .command(command)
            .container_id(&self.container_id)
            .netns(self.pod.path())
            .ifname(POD_IFNAME)
            .cni_path(&self.cni_path())
            .config(config)
    }

    pub fn add(&self, config: &Value) -> PluginOutput {
        self.plugin("ADD", config).run()
    }

    pub fn del(&self, config: &Value) -> PluginOutput {
        self.plugin("DEL", config).run()
    }

    /// CHECK with `prev_result` put into the config, as a runtime does.
    pub fn check(&self, config: &Value, prev_result: &Value) -> PluginOutput {
        let mut config = config.clone();
        config["prevResult"] = prev_result.clone();
        self.plugin("CHECK", &config).run()
    }

    /// `<stateDir>/pods/<cid>/<ifname>.tap`.
    pub fn pod_tap_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.state_dir()
            .join("pods")
            .join(container_id)
            .join(format!("{ifname}.tap"))
    }

    /// `<stateDir>/pods/<cid>/<ifname>.json`.
    pub fn record_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.state_dir()
            .join("pods")
            .join(container_id)
            .join(format!("{ifname}.json"))
    }

    /// `up0` as NODE sees it.
    pub fn lower(&self) -> Link {
        self.node.expect_link(LOWER)
    }

    /// Asserts that `link` (living in `ns`) sits on NODE's `up0`.
    pub fn assert_lower_is_up0(&self, ns: &Netns, link: &Link) {
        let nsid = link.link_netnsid.unwrap_or_else(|| {
            panic!(
                "{} in {} has no link_netnsid: its lower device is not in NODE: {}",
                link.name,
                ns.name(),
                link.json
            )
        });
        assert_eq!(
            ns.peer_name(nsid).as_deref(),
            Some(self.node.name()),
            "{}'s lower device lives in netns id {nsid}, which is not NODE",
            link.name
        );
        assert_eq!(
            link.link_index,
            Some(self.lower().ifindex),
            "{}'s lower device is not up0: {}",
            link.name,
            link.json
        );
    }

    /// Asserts `path` is the device node of `link` (in `ns`): a char device,
    /// 0660, `uid:gid`, with the major:minor that `ns`'s own sysfs reports.
    pub fn assert_device_node(&self, path: &Path, ns: &Netns, link: &Link, uid: u32, gid: u32) {
        let node = DeviceNode::stat(path)
            .unwrap_or_else(|e| panic!("device node {} missing: {e}", path.display()));
        assert!(
            node.is_char_device,
            "{} is not a character device: {node:?}",
            path.display()
        );
        assert_eq!(
            node.mode,
            0o660,
            "{} has mode {:o}",
            path.display(),
            node.mode
        );
        assert_eq!(
            (node.uid, node.gid),
            (uid, gid),
            "{} has the wrong owner:group",
            path.display()
        );
        let want = ns.tap_dev(link);
        assert_eq!(
            (node.major, node.minor),
            want,
            "{} is not {}'s tap device (sysfs in {} says {}:{})",
            path.display(),
            link.name,
            ns.name(),
            want.0,
            want.1
        );
    }

    /// Everything an attachment could have left behind: macvtaps in NODE or
    /// POD, files under `<stateDir>/pods`, char devices anywhere under the
    /// stateDir, host-local leases. Empty means clean.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for ns in [&self.node, &self.pod] {
            if !ns.path().exists() {
                continue;
            }
            for l in ns.macvtaps() {
                found.push(format!("macvtap {} in {}", l.name, ns.name()));
            }
        }
        for f in files_under(&self.state_dir().join("pods")) {
            found.push(format!("file {}", f.display()));
        }
        for f in files_under(&self.state_dir()) {
            if DeviceNode::stat(&f).is_ok_and(|d| d.is_char_device) {
                found.push(format!("device node {}", f.display()));
            }
        }
        for f in leases_in(&self.ipam_dir()) {
            found.push(format!("IPAM lease {}", f.display()));
        }
        found.sort();
        found.dedup();
        found
    }

    /// Panics listing whatever [`Lab::leftovers`] finds; `what` says after
    /// which step.
    pub fn assert_clean(&self, what: &str) {
        let left = self.leftovers();
        assert!(left.is_empty(), "left behind after {what}: {left:#?}");
    }
}
