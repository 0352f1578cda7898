//! The device plugin's world (feature `kubelet`): a kubelet stand-in
//! (Registration server, DevicePlugin client, ListAndWatch reader,
//! restarts), a PodResources stand-in, the daemon as a child process inside
//! a lab's NODE namespace, and the real CNI plugin binary. The device
//! plugin's tests and benchmark, the runtime tests and the lab use it.

pub mod daemon;
pub mod kubelet;
pub mod monitor;
pub mod podres;
pub mod server;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use crate::*;
pub use daemon::{bin_dir, daemon_binary, daemon_path, status_text, Daemon, DaemonCmd, Stopped};
pub use kubelet::{
    all, client, connect, describe, ids, sockets_in, DeviceWatch, Kubelet, Registered,
    RegistrationPolicy, Update, API_VERSION, HEALTHY, KUBELET_SOCKET, UNHEALTHY,
};
pub use monitor::TimedMonitor;
pub use podres::PodResources;
use serde_json::{json, Value};
use tonic::transport::Channel;

pub use macvtap_deviceplugin::proto::deviceplugin::device_plugin_client::DevicePluginClient;
pub use macvtap_deviceplugin::proto::deviceplugin::{
    AllocateRequest, AllocateResponse, ContainerAllocateRequest,
    ContainerPreferredAllocationRequest, Device, DeviceSpec, Empty, PreStartContainerRequest,
    PreferredAllocationRequest,
};

/// The resource-name domain of every resource.
pub const DOMAIN: &str = "macvtap.network.kubevirt.io";

/// `macvtap.network.kubevirt.io/<name>`.
pub fn resource_name(name: &str) -> String {
    format!("{DOMAIN}/{name}")
}

/// `macvtap.network.kubevirt.io_<name>`: the socket file name.
pub fn endpoint(name: &str) -> String {
    format!("{DOMAIN}_{name}")
}

/// The real CNI plugin, built by the workspace next to the daemon
/// (`target/<profile>/macvtap`).
pub fn cni_binary() -> PathBuf {
    bin_dir().join("macvtap")
}

/// The CNI plugin, brought up to date once per test process with the
/// cargo that runs the tests (a no-op when it is fresh; cargo holds no lock
/// while tests run). When that is impossible the binary must exist.
fn require_cni_binary() -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let bin = cni_binary();
    let built = BUILT.get_or_init(|| build_cni(&bin));
    if let Err(e) = built {
        assert!(
            bin.exists(),
            "the CNI plugin {} is missing and could not be built ({e}): build the \
             workspace first (`cargo build -p macvtap-cni`)",
            bin.display()
        );
        eprintln!("warning: using {} as it is: {e}", bin.display());
    }
    bin
}

fn build_cni(bin: &Path) -> Result<(), String> {
    let profile_dir = bin.parent().ok_or("no profile dir")?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    cargo_build_bins(&root, profile_dir, &[("macvtap-cni", "macvtap")])?;
    if bin.exists() {
        Ok(())
    } else {
        Err(format!(
            "{} is still missing after the build",
            bin.display()
        ))
    }
}

/// Generous bound for things the contract gives no number for.
pub const SLOW: Duration = Duration::from_secs(5);
/// The contract's "within a second".
pub const SECOND: Duration = Duration::from_secs(1);

/// Polls `check` every 2 ms until it returns true; the elapsed time, or
/// `Err(elapsed)` after `timeout`.
pub async fn poll_until(
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<Duration, Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Like [`poll_until`], panicking with `desc` and `detail()` on timeout.
pub async fn wait_until(
    desc: &str,
    timeout: Duration,
    check: impl FnMut() -> bool,
    detail: impl FnOnce() -> String,
) -> Duration {
    match poll_until(timeout, check).await {
        Ok(d) => d,
        Err(d) => panic!("{desc}: not true after {d:?}\n{}", detail()),
    }
}

/// Awaits `fut`, panicking with `desc` after `timeout`.
pub async fn within<T>(desc: &str, timeout: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| panic!("{desc}: no answer within {timeout:?}"))
}

/// One measured number, printed so `--nocapture` runs show it.
pub fn measured(what: &str, d: Duration) {
    println!("MEASURED {what}: {:.3} ms", d.as_secs_f64() * 1000.0);
}

/// A test's world: the lab (NODE with `up0`, POD, LAN, temp dir), the
/// kubelet stand-in serving `<dir>/device-plugins/kubelet.sock` and a
/// PodResources stand-in holding nothing. Field order is drop order:
/// servers first, then namespaces and files. Keep the [`Daemon`] in a
/// local declared after the world so it is killed before all this goes.
#[derive(Debug)]
pub struct World {
    pub kubelet: Kubelet,
    pub podres: PodResources,
    pub plugin_dir: PathBuf,
    pub lab: Lab,
}

impl World {
    pub fn new(test: &str) -> World {
        Self::with_held(test, &[])
    }

    /// A world whose PodResources stand-in says pods hold `held`.
    pub fn with_held(test: &str, held: &[(&str, &[&str])]) -> World {
        let lab = Lab::new(test, cni_binary());
        let plugin_dir = lab.dir.subdir("device-plugins");
        let kubelet = Kubelet::start(&plugin_dir);
        let podres = PodResources::start(
            &lab.dir.path().join("pod-resources").join("kubelet.sock"),
            held,
        );
        World {
            kubelet,
            podres,
            plugin_dir,
            lab,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.lab.state_dir()
    }

    /// The daemon's command line for this world, with `conf`.
    pub fn cmd(&self, conf: &str) -> DaemonCmd {
        DaemonCmd {
            binary: daemon_binary().into(),
            netns: self.lab.node.path(),
            conf: Some(conf.to_string()),
            env: Default::default(),
            plugin_dir: self.plugin_dir.clone(),
            state_dir: self.state_dir(),
            pod_resources: self.podres.path(),
            metrics: None,
            extra_args: vec![],
            log: None,
            own_process_group: false,
            dies_with_us: false,
        }
    }

    pub fn spawn(&self, conf: &str) -> Daemon {
        self.cmd(conf).spawn()
    }

    /// Starts the daemon and waits for `n` registrations (of the current
    /// kubelet generation).
    pub async fn start(&self, conf: &str, n: usize) -> Daemon {
        let mut d = self.spawn(conf);
        let got = tokio::time::timeout(SLOW, async {
            loop {
                if self.kubelet.current_registrations().len() >= n {
                    return;
                }
                if !d.is_running() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        d.assert_running("while starting");
        assert!(
            got.is_ok(),
            "expected {n} registration(s) within {SLOW:?}, got {:#?}\n{}",
            self.kubelet.current_registrations(),
            d.logs()
        );
        d
    }

    /// The socket a resource is served on.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.plugin_dir.join(endpoint(name))
    }

    pub async fn client(&self, name: &str) -> DevicePluginClient<Channel> {
        client(&self.socket(name)).await
    }

    /// ListAndWatch on a resource.
    pub async fn watch(&self, name: &str) -> DeviceWatch {
        let mut c = self.client(name).await;
        DeviceWatch::start(&mut c, name).await
    }

    /// `<stateDir>/resources.json`, parsed.
    pub fn resources_json(&self) -> Value {
        let path = self.state_dir().join("resources.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text}", path.display()))
    }

    /// The entry of resource `name` in resources.json.
    pub fn resource_entry(&self, name: &str) -> Value {
        let doc = self.resources_json();
        doc["resources"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == name).cloned())
            .unwrap_or_else(|| panic!("resources.json has no resource {name:?}: {doc}"))
    }

    /// The `ifindexBase` of resource `name` in resources.json.
    pub fn ifindex_base(&self, name: &str) -> u64 {
        let r = self.resource_entry(name);
        r["ifindexBase"]
            .as_u64()
            .unwrap_or_else(|| panic!("resource {name} has no numeric ifindexBase: {r}"))
    }

    /// `<stateDir>/allocations/<id>.json`.
    pub fn allocation_record(&self, id: &str) -> PathBuf {
        self.state_dir()
            .join("allocations")
            .join(format!("{id}.json"))
    }

    /// `<stateDir>/dev/<id>`.
    pub fn dev_node(&self, id: &str) -> PathBuf {
        self.state_dir().join("dev").join(id)
    }

    /// Every file under `<stateDir>/allocations` and `<stateDir>/dev`, and
    /// every macvtap in NODE and POD: what an Allocate can leave behind.
    pub fn allocation_leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for sub in ["allocations", "dev"] {
            for f in files_under(&self.state_dir().join(sub)) {
                found.push(format!("file {}", f.display()));
            }
        }
        for ns in [&self.lab.node, &self.lab.pod] {
            for l in ns.macvtaps() {
                found.push(format!(
                    "macvtap {} (ifindex {}) in {}",
                    l.name,
                    l.ifindex,
                    ns.name()
                ));
            }
        }
        found
    }

    /// A device-plugin-mode CNI configuration for `device_id`.
    pub fn cni_config(&self, device_id: &str) -> Value {
        json!({
            "cniVersion": "0.3.1",
            "name": "dataplane",
            "type": "macvtap",
            "mtu": 1500,
            "deviceID": device_id,
            "stateDir": self.state_dir(),
        })
    }

    /// The real CNI ADD of `device_id` as `ifname` in POD with MAC `mac`.
    pub fn cni_add(&self, device_id: &str, ifname: &str, mac: &str) -> PluginOutput {
        require_cni_binary();
        self.lab
            .plugin("ADD", &self.cni_config(device_id))
            .ifname(ifname)
            .args(&format!("IgnoreUnknown=1;MAC={mac}"))
            .run()
    }
}

/// A one-resource DP_MACVTAP_CONF.
pub fn conf1(name: &str, capacity: u32, attach: &str) -> String {
    json!([{"name": name, "lowerDevice": LOWER, "mode": "bridge", "capacity": capacity, "attach": attach}])
        .to_string()
}

/// `<name>-0` .. `<name>-<capacity-1>`, sorted as [`ids`] sorts.
pub fn expected_ids(name: &str, capacity: u32) -> Vec<String> {
    let mut v: Vec<String> = (0..capacity).map(|i| format!("{name}-{i}")).collect();
    v.sort();
    v
}

/// An Allocate request with one container per entry.
pub fn allocate_request(containers: &[&[&str]]) -> AllocateRequest {
    AllocateRequest {
        container_requests: containers
            .iter()
            .map(|ids| ContainerAllocateRequest {
                devices_ids: ids.iter().map(|s| s.to_string()).collect(),
            })
            .collect(),
    }
}
