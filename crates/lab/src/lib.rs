//! `macvtap-lab`: the whole story end to end, in namespaces the lab makes and
//! removes. A LAN namespace, a node namespace with the uplink veth, an
//! empty pod; the device plugin (when found) runs in the node against a
//! kubelet stand-in that Allocates a device; the CNI plugin attaches the
//! pod as Multus would (with that deviceID, or standalone on the uplink);
//! a real guest boots on the pod's macvtap (or a stand-in answers), and
//! the LAN proves ping, TCP and HTTP.

mod admission;
pub mod cli;
pub mod cni;
mod cpio;
mod daemon;
mod dp;
mod elf;
pub mod guest;
mod handover;
pub mod libvirt;
mod probe;
mod signals;
mod vm;
mod world;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use macvtap_net::{MacAddr, NodeInfo};
use serde::Serialize;
use serde_json::json;

use self::admission::KubeletSide;
use self::cni::{Attachment, PluginCallError};
use self::dp::DevicePluginReport;
use self::guest::{Ensured, GuestError};
use self::probe::{Pinger, ProbeError};
use self::vm::Vm;
use self::world::Namespaces;
use macvtap_testkit::device_plugin::{Daemon, Stopped};
use macvtap_testkit::{wire_uplink, GuestStandIn, TempDir, Uplink};
use macvtapctl::cli::{DoctorArgs, VhostChoice};
use macvtapctl::doctor::{self, Status};
use macvtapctl::iface::InterfaceInfo;
use macvtapctl::links::{self, LinkError};
use macvtapctl::qemu::{self, NicOptions, QemuError};
use macvtapctl::scope::{Scope, ScopeError};
use macvtapctl::tap::{self, TapError};

use crate::cli::{DevicePluginChoice, LabArgs, VmChoice, VmmChoice};

const LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 10);
const PREFIX: u8 = 24;
const UPLINK: &str = "up0";
const LAN_IF: &str = "lan0";
const POD_IF: &str = "net1";
/// After the guest says it is up, how long ARP and the first reply may
/// take (the stand-in is up the moment it starts).
const REPLY_GRACE_VM: Duration = Duration::from_secs(8);
const REPLY_GRACE_STAND_IN: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab must run as root: it creates network namespaces, links and device nodes")]
    NotRoot,
    #[error("cannot install the SIGINT/SIGTERM handlers")]
    Signals(#[source] nix::Error),
    #[error("--vm always, but no VM can be booted: {0}")]
    NoVm(String),
    #[error("--device-plugin always, but {0}")]
    NoDevicePlugin(String),
    #[error("device plugin: {0}")]
    DevicePlugin(String),
    #[error(transparent)]
    Cni(#[from] PluginCallError),
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("cannot set up the lab: {what}: {detail}")]
    Setup { what: String, detail: String },
    #[error("interrupted by signal {0}")]
    Interrupted(i32),
    #[error("{0}")]
    NoReply(String),
    #[error("{what}: {detail}")]
    Check { what: &'static str, detail: String },
    #[error(transparent)]
    Handover(#[from] macvtap_handover::Error),
    #[error("--vmm libvirt: {0}")]
    Libvirt(String),
    #[error("--vmm libvirt: {0}")]
    LibvirtRun(#[from] libvirt::LibvirtError),
}

impl LabError {
    /// The exit status: 128+signal when interrupted, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            LabError::Interrupted(sig) => 128u8.saturating_add(*sig as u8),
            _ => 1,
        }
    }
}

fn setup_err(what: impl Into<String>) -> impl FnOnce(String) -> LabError {
    let what = what.into();
    move |detail| LabError::Setup { what, detail }
}

fn check_signal() -> Result<(), LabError> {
    match signals::received() {
        Some(sig) => Err(LabError::Interrupted(sig)),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Names {
    pub lan: String,
    pub node: String,
    pub pod: String,
}

/// What answered on the pod's macvtap (in the report: "vm", "stand-in").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestKind {
    Vm,
    StandIn,
}

/// How the pod got its macvtap (in the report: "device-plugin",
/// "standalone").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// The CNI attached the deviceID the device plugin allocated.
    DevicePlugin,
    /// The CNI alone, on the uplink.
    Standalone,
}

#[derive(Debug, Clone, Serialize)]
pub struct GuestInfo {
    pub kind: GuestKind,
    /// Why a stand-in answered instead of a VM.
    pub why_not_vm: Option<String>,
    pub ip: String,
    pub mac: String,
    pub qemu_pid: Option<u32>,
    pub kernel: Option<String>,
    /// With `--vmm libvirt`: libvirt's side.
    pub libvirt: Option<LibvirtInfo>,
}

/// The guest's libvirt, as `--vmm libvirt` ran it.
#[derive(Debug, Clone, Serialize)]
pub struct LibvirtInfo {
    pub uri: String,
    pub libvirtd_pid: u32,
    pub uid: u32,
    /// The node in the launcher's mount namespace, mapped from the
    /// DeviceSpec's host_path.
    pub tap_node: String,
    /// What QEMU's tap fd is, as /proc shows it: libvirt opened the node.
    pub qemu_tap_fd: Option<String>,
    pub start_to_socket_ms: f64,
    /// `virsh create`, round trip.
    pub create_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub guest_image_ms: Option<f64>,
    pub guest_image_built: bool,
    pub setup_ms: f64,
    /// Device plugin start to its RegisterRequest at the kubelet stand-in.
    pub registration_ms: Option<f64>,
    /// Registration to the first ListAndWatch list with every device Healthy.
    pub devices_healthy_ms: Option<f64>,
    pub preferred_allocation_ms: Option<f64>,
    /// The Allocate call, round trip.
    pub allocate_ms: Option<f64>,
    pub cni_add_ms: f64,
    /// QEMU start (or stand-in start) to the guest's ready banner.
    pub start_to_guest_ready_ms: Option<f64>,
    /// QEMU start (or stand-in start) to the first ping reply at the LAN.
    pub start_to_first_ping_ms: f64,
    pub tcp_echo_ms: Option<f64>,
    pub http_ms: Option<f64>,
    pub cleanup_ms: Option<f64>,
    /// SIGTERM to the device plugin's exit, at cleanup.
    pub device_plugin_stop_ms: Option<f64>,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabReport {
    pub tag: String,
    pub namespaces: Names,
    pub lab_dir: String,
    pub attach_mode: AttachMode,
    /// Why the device plugin was not used.
    pub why_standalone: Option<String>,
    pub device_plugin: Option<DevicePluginReport>,
    pub interface: InterfaceInfo,
    /// The node the CNI plugin made, and whether it is the interface's device.
    pub cni_device_node: String,
    pub cni_device_node_matches: bool,
    pub guest: GuestInfo,
    pub ping_rtt_ms: Vec<f64>,
    pub tcp_echo: Option<String>,
    pub http_status: Option<String>,
    pub http_body: Option<String>,
    pub timings: Timings,
    /// The handover path, after the Kubernetes one (a VM, without --keep).
    pub handover: Option<handover::HandoverReport>,
    /// With --keep: the script that removes what was kept.
    pub cleanup_script: Option<String>,
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Narration: stdout, or stderr when stdout carries the JSON report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Say {
    json: bool,
}

impl Say {
    /// A closed pipe (`| head`) must not end the lab before its cleanup
    /// (println! would panic, and the release build aborts on panic).
    fn line(&self, text: impl AsRef<str>) {
        use std::io::Write;
        let line = format!("{}\n", text.as_ref());
        let _ = if self.json {
            std::io::stderr().write_all(line.as_bytes())
        } else {
            std::io::stdout().write_all(line.as_bytes())
        };
    }
}

/// What answers on the pod's macvtap.
enum GuestChoice {
    Vm(Ensured),
    StandIn(Option<String>),
}

/// Everything the lab made, in drop order: the guest first, then the CNI
/// attachment (DEL), the device plugin (SIGTERM), the kubelet stand-in,
/// the namespaces, the directory.
#[derive(Default)]
pub(crate) struct Made {
    vm: Option<Vm>,
    standin: Option<GuestStandIn>,
    attachment: Option<Attachment>,
    daemon: Option<Daemon>,
    kubelet: Option<KubeletSide>,
    namespaces: Namespaces,
    dir: Option<TempDir>,
}

/// What the ordered removal met.
struct Teardown {
    problems: Vec<String>,
    /// How the device plugin stopped, when one ran.
    daemon: Option<Result<Stopped, String>>,
}

impl Made {
    fn keep(&mut self) {
        if let Some(vm) = &mut self.vm {
            vm.keep();
        }
        if let Some(a) = &mut self.attachment {
            a.keep();
        }
        if let Some(d) = &mut self.daemon {
            d.keep();
        }
        self.namespaces.keep();
        if let Some(d) = &mut self.dir {
            d.keep();
        }
    }

    /// Remove everything now, in order.
    fn teardown(&mut self) -> Teardown {
        let mut problems = Vec::new();
        if let Some(mut vm) = self.vm.take() {
            vm.stop();
        }
        self.standin = None;
        if let Some(mut a) = self.attachment.take() {
            if let Err(e) = a.del() {
                problems.push(macvtap_net::error_chain(&e));
            }
        }
        // As on a node: the pod is gone, then the plugin stops (SIGTERM:
        // it removes its sockets and exits 0), the kubelet last.
        // The plugin directory is the kubelet stand-in's.
        let plugin_dir = self.kubelet.as_ref().map(|k| k.dir().to_path_buf());
        let daemon = self.daemon.take().map(|mut d| {
            d.stop(
                daemon::STOP_GRACE,
                plugin_dir.as_deref().unwrap_or(Path::new("")),
            )
        });
        if let Some(mut k) = self.kubelet.take() {
            k.stop();
        }
        problems.extend(self.namespaces.remove());
        if let Some(mut d) = self.dir.take() {
            if let Err(e) = d.remove() {
                problems.push(format!(
                    "{}: {}",
                    d.path().display(),
                    macvtap_net::error_chain(&e)
                ));
            }
        }
        Teardown { problems, daemon }
    }
}

/// Run the lab. The report comes back on success; on failure or a signal
/// everything made is removed before the error returns (unless `--keep`
/// and not interrupted).
pub fn run(args: &LabArgs, json: bool) -> Result<LabReport, LabError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    signals::install().map_err(LabError::Signals)?;
    let say = Say { json };
    let started = Instant::now();
    let mut made = Made::default();
    let mut outcome = drive(args, say, &mut made);
    // A Ctrl-C from a terminal also reaches the tools the lab runs, which
    // then fail first: it is still the signal that ended the lab.
    if let (Err(_), Some(sig)) = (&outcome, signals::received()) {
        outcome = Err(LabError::Interrupted(sig));
    }
    let interrupted = matches!(outcome, Err(LabError::Interrupted(_)));
    if args.keep && !interrupted {
        made.keep();
        let script = write_cleanup_script(&made);
        match &script {
            Ok(path) => say.line(format!(
                "\n== kept: namespaces {}; remove everything with: sh {}",
                made.namespaces.names().join(" "),
                path.display()
            )),
            Err(e) => say.line(format!(
                "\n== kept, but no cleanup script: {}",
                macvtap_net::error_chain(&e)
            )),
        }
        return outcome.map(|mut report| {
            report.cleanup_script = script.ok().map(|p| p.display().to_string());
            report.timings.total_ms = ms(started.elapsed());
            report
        });
    }
    let cleanup = Instant::now();
    let Teardown { problems, daemon } = made.teardown();
    let cleanup = cleanup.elapsed();
    for p in &problems {
        eprintln!("macvtap-lab: cleanup: {p}");
    }
    // The device plugin must stop cleanly: exit 0, its sockets removed.
    let stopped = match daemon {
        Some(Err(e)) => {
            if outcome.is_ok() {
                outcome = Err(LabError::DevicePlugin(e));
            } else {
                eprintln!("macvtap-lab: cleanup: {e}");
            }
            None
        }
        Some(Ok(s)) => Some(s),
        None => None,
    };
    let mut report = outcome?;
    let stopped_text = stopped.as_ref().map(|s| {
        format!(
            "SIGTERM -> {} in {:.1} ms, its sockets removed",
            s.status,
            ms(s.took)
        )
    });
    say.line(format!(
        "\n== removed everything the lab made in {:.0} ms{}",
        ms(cleanup),
        stopped_text
            .as_ref()
            .map(|t| format!(" (device plugin: {t})"))
            .unwrap_or_default()
    ));
    report.timings.cleanup_ms = Some(ms(cleanup));
    report.timings.device_plugin_stop_ms = stopped.as_ref().map(|s| ms(s.took));
    if let Some(dp) = &mut report.device_plugin {
        dp.stopped = stopped_text;
    }
    report.timings.total_ms = ms(started.elapsed());
    Ok(report)
}

/// `sh cleanup.sh` removes what `--keep` left: the QEMU process (by PID),
/// the namespaces (and so the macvtap), the lab directory.
fn write_cleanup_script(made: &Made) -> std::io::Result<PathBuf> {
    let dir = made
        .dir
        .as_ref()
        .map(|d| d.path().to_path_buf())
        .ok_or_else(|| std::io::Error::other("no lab directory"))?;
    let mut script = String::from("#!/bin/sh\n# Removes what `macvtap-lab --keep` left behind.\n");
    if let Some(vm) = &made.vm {
        script.push_str(&format!("kill {} 2>/dev/null\n", vm.pid));
        if let Some(pid) = vm.libvirtd_pid() {
            script.push_str(&format!("kill {pid} 2>/dev/null\n"));
        }
    }
    if let Some(d) = &made.daemon {
        // SIGTERM: the device plugin removes its sockets and exits; wait
        // (up to 5 s) until it is gone or a zombie, before its namespace.
        script.push_str(&format!(
            "kill {pid} 2>/dev/null && for _ in $(seq 50); do \
             [ \"$(cut -d' ' -f3 /proc/{pid}/stat 2>/dev/null || echo Z)\" = Z ] && break; \
             sleep 0.1; done\n",
            pid = d.pid()
        ));
    }
    for ns in made.namespaces.names().iter().rev() {
        script.push_str(&format!("ip netns del {ns}\n"));
    }
    script.push_str(&format!("rm -rf {}\n", dir.display()));
    let path = dir.join("cleanup.sh");
    fs::write(&path, script)?;
    guest::make_executable(&path)?;
    Ok(path)
}

/// The device plugin binary to run, or (`Err`) why the CNI plugin runs in
/// standalone mode.
fn choose_device_plugin(args: &LabArgs) -> Result<Result<PathBuf, String>, LabError> {
    if args.device_plugin == DevicePluginChoice::Never {
        return Ok(Err("--device-plugin never".into()));
    }
    let found = match &args.device_plugin_bin {
        Some(path) if path.is_file() => Ok(path.clone()),
        // A path given by hand that is wrong is a mistake, not a fallback.
        Some(path) => {
            return Err(LabError::DevicePlugin(format!(
                "--device-plugin-bin {}: no such file",
                path.display()
            )))
        }
        None => daemon::find_next_to_me().ok_or_else(|| {
            let dir = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.display().to_string()))
                .unwrap_or_else(|| "macvtap-lab's directory".into());
            format!(
                "{} is not in {dir}; ./scripts/build-release puts it next to macvtap-lab, \
                 or pass --device-plugin-bin PATH",
                daemon::BINARY
            )
        }),
    };
    match (found, args.device_plugin) {
        (Ok(path), _) => Ok(Ok(path)),
        (Err(why), DevicePluginChoice::Always) => Err(LabError::NoDevicePlugin(why)),
        (Err(why), _) => Ok(Err(why)),
    }
}

/// A sandbox ID as a runtime makes them: 64 hex digits.
pub(crate) fn sandbox_id(nonce: u32) -> String {
    format!("{nonce:08x}{:08x}", std::process::id()).repeat(4)
}

fn choose_guest(args: &LabArgs, say: Say) -> Result<GuestChoice, LabError> {
    if args.vm == VmChoice::Never {
        return Ok(GuestChoice::StandIn(Some("--vm never".into())));
    }
    let no_vm = |why: String| -> Result<GuestChoice, LabError> {
        if args.vm == VmChoice::Always {
            Err(LabError::NoVm(why))
        } else {
            say.line(format!(
                "== no VM ({why}): a stand-in will answer ARP and ping instead"
            ));
            Ok(GuestChoice::StandIn(Some(why)))
        }
    };
    if let Err(e) = std::process::Command::new(&args.qemu_bin)
        .arg("--version")
        .output()
    {
        return no_vm(format!(
            "{} cannot run: {e}; apt-get install qemu-system-x86",
            args.qemu_bin.display()
        ));
    }
    say.line("== guest image (a Debian kernel and a busybox initramfs, cached)");
    match guest::ensure(&args.cache_dir) {
        Ok(ensured) => Ok(GuestChoice::Vm(ensured)),
        Err(e @ GuestError::BadIp(_)) | Err(e @ GuestError::BadTag(_)) => {
            Err(LabError::NoVm(macvtap_net::error_chain(&e)))
        }
        Err(e) => no_vm(macvtap_net::error_chain(&e)),
    }
}

/// What every phase of one run shares: the user's arguments, the
/// narration, what was made so far (for cleanup) and the timings.
pub(crate) struct Ctx<'a> {
    pub(crate) args: &'a LabArgs,
    pub(crate) say: Say,
    pub(crate) made: &'a mut Made,
    pub(crate) timings: Timings,
    /// The handover phase's report, once it ran.
    pub(crate) handover: Option<handover::HandoverReport>,
}

/// What the lab will use, decided before anything is made.
struct Plan {
    /// The CNI plugin binary.
    cni_plugin: PathBuf,
    /// The device plugin binary, or why the CNI runs standalone.
    device_plugin: Result<PathBuf, String>,
    guest: GuestChoice,
}

/// The lab's namespaces, wired, and its names.
pub(crate) struct World {
    pub(crate) nonce: u32,
    pub(crate) tag: String,
    pub(crate) dir: PathBuf,
    pub(crate) names: Names,
    pub(crate) lan: Scope,
    pub(crate) node: Scope,
    pub(crate) pod: Scope,
    /// The MAC the pod's interface gets (CNI_ARGS `MAC=`).
    pub(crate) mac: MacAddr,
}

/// The pod's interface as the CNI ADD left it.
struct PodAttachment {
    info: InterfaceInfo,
    /// The device node the CNI plugin made, and whether it is the
    /// interface's device.
    device_node: PathBuf,
    device_node_matches: bool,
    /// On the device plugin's path: the tap opened through the DeviceSpec.
    tap_fd: Option<OwnedFd>,
    device_plugin: Option<DevicePluginReport>,
}

/// What the LAN got from the guest's TCP echo and web server.
#[derive(Default)]
struct Services {
    tcp_echo: Option<String>,
    http_status: Option<String>,
    http_body: Option<String>,
}

fn drive(args: &LabArgs, say: Say, made: &mut Made) -> Result<LabReport, LabError> {
    let mut ctx = Ctx {
        args,
        say,
        made,
        timings: Timings::default(),
        handover: None,
    };
    let plan = ctx.plan()?;
    check_signal()?;
    let world = ctx.build_world()?;
    check_signal()?;
    let mut attached = ctx.attach_pod(&plan, &world)?;
    check_signal()?;
    let (guest, start) = ctx.start_guest(&plan.guest, &world, &mut attached)?;
    let rtts = ctx.ping(&world, &guest, start)?;
    let services = if guest.kind == GuestKind::Vm {
        ctx.probe_services(&world, guest.mac.as_str())?
    } else {
        Services::default()
    };
    if let GuestChoice::Vm(ensured) = &plan.guest {
        // The handover path boots its own QEMU; it is not libvirt's story.
        if guest.kind == GuestKind::Vm && !args.keep && args.vmm == VmmChoice::Qemu {
            check_signal()?;
            ctx.handover = Some(handover::run(&mut ctx, &world, ensured)?);
        }
    }
    Ok(ctx.report(plan, world, attached, guest, rtts, services))
}

impl Ctx<'_> {
    /// The binaries and the guest, and what the lab does without them.
    fn plan(&mut self) -> Result<Plan, LabError> {
        let (args, say) = (self.args, self.say);
        let cni_plugin = cni::find_plugin(args.cni_plugin.as_deref())?;
        let device_plugin = choose_device_plugin(args)?;
        if let (Err(why), DevicePluginChoice::Auto) = (&device_plugin, args.device_plugin) {
            say.line(format!(
                "== no device plugin ({why}): the CNI plugin runs in standalone mode on {UPLINK}"
            ));
        }
        if args.vmm != VmmChoice::Qemu {
            if let Err(why) = &device_plugin {
                return Err(LabError::Libvirt(format!(
                    "no device plugin ({why}); standalone mode cannot give a virt-launcher its \
                     device: the kubelet maps devices from Allocate's answer only"
                )));
            }
            for tool in ["libvirtd", "virsh"] {
                if let Err(e) = std::process::Command::new(tool)
                    .arg("--version")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                {
                    return Err(LabError::Libvirt(format!(
                        "{tool} cannot run: {e}; apt-get install --no-install-recommends \
                         libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
                    )));
                }
            }
            if args.vm == VmChoice::Never {
                return Err(LabError::Libvirt("--vm never boots no VM".into()));
            }
        }
        let guest = choose_guest(args, say)?;
        if let (GuestChoice::StandIn(why), true) = (&guest, args.vmm != VmmChoice::Qemu) {
            return Err(LabError::NoVm(why.clone().unwrap_or_default()));
        }
        if let GuestChoice::Vm(e) = &guest {
            self.timings.guest_image_ms = Some(ms(e.took));
            self.timings.guest_image_built = e.built;
            say.line(format!(
                "   {} {} ({}, {}) in {:.0} ms",
                if e.built { "built" } else { "cached:" },
                e.image.package,
                e.image.kernel_format,
                e.image
                    .kernel
                    .parent()
                    .map(Path::display)
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                ms(e.took)
            ));
        }
        Ok(Plan {
            cni_plugin,
            device_plugin,
            guest,
        })
    }

    /// The lab directory and the LAN, node and pod namespaces, wired.
    fn build_world(&mut self) -> Result<World, LabError> {
        let say = self.say;
        let nonce = nonce();
        let tag = format!("mvlab-{}-{:04x}", std::process::id(), nonce & 0xffff);
        let dir = TempDir::create(&std::env::temp_dir().join("macvtapctl-lab-"))
            .map_err(|e| setup_err("lab directory")(macvtap_net::error_chain(&e)))?;
        let dir_path = dir.path().to_path_buf();
        self.made.dir = Some(dir);
        say.line(format!("== lab directory {}", dir_path.display()));
        let names = Names {
            lan: format!("{tag}-lan"),
            node: format!("{tag}-node"),
            pod: format!("{tag}-pod"),
        };
        say.line(format!(
            "== namespaces {} ({LAN_IP}/{PREFIX} on {LAN_IF}) --veth-- {} (uplink {UPLINK}), and an empty pod {}",
            names.lan, names.node, names.pod
        ));
        let setup_started = Instant::now();
        let mut create = |name: &str| {
            self.made
                .namespaces
                .create(name)
                .map_err(|e| setup_err(format!("namespace {name}"))(macvtap_net::error_chain(&e)))
        };
        let lan = create(&names.lan)?;
        let node = create(&names.node)?;
        let pod = create(&names.pod)?;
        let uplink = Uplink {
            uplink: UPLINK,
            lan_if: LAN_IF,
            lan_addr: Some((LAN_IP, PREFIX)),
            arp_retrans_ms: Some(100),
        };
        wire_uplink(
            node.netns(),
            lan.netns(),
            &[lan.netns(), node.netns(), pod.netns()],
            &uplink,
        )
        .map_err(|e| setup_err("wire the LAN")(macvtap_net::error_chain(&e)))?;
        self.timings.setup_ms = ms(setup_started.elapsed());
        Ok(World {
            nonce,
            tag,
            dir: dir_path,
            names,
            lan,
            node,
            pod,
            mac: lab_mac(nonce),
        })
    }

    /// The pod's attachment, exactly as Multus would make it: with the
    /// device plugin's deviceID, or standalone on the uplink.
    fn attach_pod(&mut self, plan: &Plan, world: &World) -> Result<PodAttachment, LabError> {
        match &plan.device_plugin {
            Ok(binary) => {
                let a = dp::attach(self, world, binary, &plan.cni_plugin)?;
                Ok(PodAttachment {
                    info: a.info,
                    device_node: a.node,
                    device_node_matches: a.node_matches,
                    tap_fd: Some(a.fd),
                    device_plugin: Some(a.report),
                })
            }
            Err(_) => {
                let (info, device_node, device_node_matches) =
                    self.attach_standalone(world, &plan.cni_plugin)?;
                Ok(PodAttachment {
                    info,
                    device_node,
                    device_node_matches,
                    tap_fd: None,
                    device_plugin: None,
                })
            }
        }
    }

    /// Boot the VM on the pod's macvtap, or start the stand-in; returns
    /// the guest and when it started.
    fn start_guest(
        &mut self,
        choice: &GuestChoice,
        world: &World,
        attached: &mut PodAttachment,
    ) -> Result<(GuestInfo, Instant), LabError> {
        let guest_mac = self.args.guest_mac.unwrap_or(world.mac);
        let mut guest = GuestInfo {
            kind: GuestKind::StandIn,
            why_not_vm: None,
            ip: format!("{GUEST_IP}/{PREFIX}"),
            mac: guest_mac.to_string(),
            qemu_pid: None,
            kernel: None,
            libvirt: None,
        };
        let started = match choice {
            GuestChoice::Vm(ensured) if self.args.vmm != VmmChoice::Qemu => {
                let (vm, started, info) =
                    self.boot_libvirt(ensured, world, attached, &guest.ip, guest_mac)?;
                guest.kind = GuestKind::Vm;
                guest.qemu_pid = Some(vm.pid);
                guest.kernel = Some(ensured.image.package.clone());
                guest.libvirt = Some(info);
                self.made.vm = Some(vm);
                started
            }
            GuestChoice::Vm(ensured) => {
                let (vm, started) = self.boot_vm(ensured, world, attached, &guest.ip, guest_mac)?;
                guest.kind = GuestKind::Vm;
                guest.qemu_pid = Some(vm.pid);
                guest.kernel = Some(ensured.image.package.clone());
                self.made.vm = Some(vm);
                started
            }
            GuestChoice::StandIn(why) => {
                guest.why_not_vm = why.clone();
                self.start_stand_in(world, attached, guest_mac)?
            }
        };
        Ok((guest, started))
    }

    /// Start QEMU in the pod's namespace on the pod's tap; returns it and
    /// when it started.
    fn boot_vm(
        &mut self,
        ensured: &Ensured,
        world: &World,
        attached: &mut PodAttachment,
        guest_ip: &str,
        guest_mac: MacAddr,
    ) -> Result<(Vm, Instant), LabError> {
        let (args, say, pod) = (self.args, self.say, &world.pod);
        let serial = world.dir.join("serial.log");
        let log = world.dir.join("qemu.log");
        let guest_args = guest::qemu_args(
            &ensured.image,
            guest::GuestNet::Static(guest_ip),
            &format!("file:{}", serial.display()),
            &format!("{:08x}", world.nonce),
        )
        .map_err(|e| LabError::NoVm(macvtap_net::error_chain(&e)))?;
        let romless = vec!["romfile=".to_string()];
        let nic = guest_nic(&romless, args.guest_mac);
        // On the device plugin's path QEMU gets the node the DeviceSpec
        // promised, opened as the VM's user; otherwise macvtapctl opens
        // the tap by its device number.
        let (plan, opened) = match attached.tap_fd.take() {
            Some(fd) => (
                qemu::plan_with_fds(pod, POD_IF, &args.qemu_bin, &nic, &guest_args, vec![fd])?,
                format!(
                    "{} opened as uid {} gid {}",
                    attached.device_node.display(),
                    dp::QEMU_UID,
                    dp::QEMU_GID
                ),
            ),
            None => (
                qemu::plan(pod, POD_IF, &args.qemu_bin, &nic, &guest_args)?,
                format!(
                    "tap opened by device number {}",
                    attached.info.device.as_deref().unwrap_or("?")
                ),
            ),
        };
        for note in &plan.notes {
            say.line(format!("   note: {note}"));
        }
        // Born in the pod's namespace, like virt-launcher's QEMU.
        let (vm, started) = spawn_vm(pod, plan, &serial, &log)?;
        say.line(format!(
            "== QEMU (pid {}) boots the guest on {POD_IF} ({opened}), guest MAC {guest_mac}",
            vm.pid,
        ));
        Ok((vm, started))
    }

    /// virt-launcher's way: a private libvirtd in the pod's network
    /// namespace and a mount namespace whose /dev/tap<ifindex> is the
    /// DeviceSpec's node, mapped as the runtime maps it; libvirt opens it
    /// for `<target dev='net1' managed='no'/>`.
    fn boot_libvirt(
        &mut self,
        ensured: &Ensured,
        world: &World,
        attached: &mut PodAttachment,
        guest_ip: &str,
        guest_mac: MacAddr,
    ) -> Result<(Vm, Instant, LibvirtInfo), LabError> {
        let say = self.say;
        let mode = match self.args.vmm {
            VmmChoice::LibvirtSession => libvirt::LibvirtMode::Session,
            _ => libvirt::LibvirtMode::System,
        };
        // libvirt opens the node itself; the lab's own check opened it already.
        attached.tap_fd = None;
        let image_dir = ensured.image.kernel.parent().unwrap_or(Path::new("/"));
        if mode == libvirt::LibvirtMode::Session {
            // uid 107 must reach its directory inside the lab's.
            fs::set_permissions(&world.dir, fs::Permissions::from_mode(0o711))
                .map_err(|e| setup_err("lab directory")(macvtap_net::error_chain(&e)))?;
        }
        let launcher = libvirt::Launcher::start(&libvirt::LauncherSpec {
            netns: &world.names.pod,
            dir: &world.dir.join("libvirt"),
            mode,
            tap: Some((attached.info.ifindex, &attached.device_node)),
            tun: true,
            image_dir,
        })?;
        let uid = if mode == libvirt::LibvirtMode::Session {
            libvirt::LAUNCHER_UID
        } else {
            0
        };
        say.line(format!(
            "== libvirtd (pid {}, uid {uid}, {}) in {} and a mount namespace of its own, \
             /dev/tap{} mapped from {}: socket after {:.0} ms",
            launcher.pid(),
            mode.uri(),
            world.names.pod,
            attached.info.ifindex,
            attached.device_node.display(),
            ms(launcher.start_took)
        ));
        let serial = launcher.vm_dir().join("serial.log");
        let cmdline = guest::kernel_cmdline(
            guest::GuestNet::Static(guest_ip),
            &format!("{:08x}", world.nonce),
        )
        .map_err(|e| LabError::NoVm(macvtap_net::error_chain(&e)))?;
        let kernel = launcher.image_path(&file_name(&ensured.image.kernel));
        let initrd = launcher.image_path(&file_name(&ensured.image.initramfs));
        let domain = format!("mvlab-{:08x}", world.nonce);
        let xml = libvirt::domain_xml(&libvirt::DomainSpec {
            name: &domain,
            kernel: &kernel,
            initrd: &initrd,
            cmdline: &cmdline,
            interface: POD_IF,
            mac: guest_mac,
            serial: &serial,
        });
        let started = Instant::now();
        let created = launcher.create(&domain, &xml);
        let create_took = started.elapsed();
        let qemu_pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                let log = launcher.qemu_log(&domain);
                return Err(LabError::Libvirt(format!(
                    "{}\nlibvirtd's log:\n    {}\nQEMU's log ({}):\n    {}",
                    macvtap_net::error_chain(&e),
                    launcher.log_tail(),
                    log.display(),
                    fs::read_to_string(&log).unwrap_or_default().trim()
                )));
            }
        };
        let qemu_tap_fd = tap_fd_of(qemu_pid);
        let info = LibvirtInfo {
            uri: mode.uri().into(),
            libvirtd_pid: launcher.pid(),
            uid,
            tap_node: format!("/dev/tap{}", attached.info.ifindex),
            qemu_tap_fd: qemu_tap_fd.clone(),
            start_to_socket_ms: ms(launcher.start_took),
            create_ms: ms(create_took),
        };
        say.line(format!(
            "== virsh create {domain} in {:.0} ms: QEMU (pid {qemu_pid}) holds {}, guest MAC {guest_mac}",
            ms(create_took),
            qemu_tap_fd.as_deref().unwrap_or("no tap fd")
        ));
        let log = launcher.qemu_log(&domain);
        let vm = Vm::libvirt(launcher, &domain, qemu_pid, &serial, &log);
        Ok((vm, started, info))
    }

    /// The stand-in answers ARP and ping on the pod's tap; returns when it
    /// started.
    fn start_stand_in(
        &mut self,
        world: &World,
        attached: &mut PodAttachment,
        guest_mac: MacAddr,
    ) -> Result<Instant, LabError> {
        let pod = &world.pod;
        let fd = match attached.tap_fd.take() {
            Some(fd) => fd,
            None => {
                let mut nl = pod.netlink()?;
                let link = pod.macvtap(&mut nl, POD_IF)?;
                let mut queues = tap::open_queues(pod, &link, 1)?;
                queues
                    .fds
                    .pop()
                    .ok_or_else(|| setup_err("stand-in")("no tap queue".into()))?
            }
        };
        let started = Instant::now();
        self.made.standin = Some(
            GuestStandIn::start(std::fs::File::from(fd), guest_mac, GUEST_IP, true)
                .map_err(|e| setup_err("stand-in")(macvtap_net::error_chain(&e)))?,
        );
        self.say.line(format!(
            "== a stand-in answers ARP and ping as {GUEST_IP} on {POD_IF}'s tap device, MAC {guest_mac}"
        ));
        Ok(started)
    }

    /// The LAN's view: the first ping reply, then three pings; returns
    /// their round trips.
    fn ping(
        &mut self,
        world: &World,
        guest: &GuestInfo,
        start: Instant,
    ) -> Result<Vec<f64>, LabError> {
        let guest_mac = self.args.guest_mac.unwrap_or(world.mac);
        let mut pinger = Pinger::new(&world.lan, GUEST_IP)?;
        let (first_reply, ready_at) = wait_first_reply(
            self.args,
            self.made,
            &mut pinger,
            start,
            &world.pod,
            guest_mac,
        )?;
        self.timings.start_to_first_ping_ms = ms(first_reply);
        self.timings.start_to_guest_ready_ms = ready_at.map(ms);
        self.say.line(format!(
            "== first ping reply from {GUEST_IP} at the LAN {:.2} s after {} started{}",
            first_reply.as_secs_f64(),
            if guest.kind == GuestKind::Vm {
                "QEMU"
            } else {
                "the stand-in"
            },
            ready_at
                .map(|r| format!(" (guest ready at {:.2} s)", r.as_secs_f64()))
                .unwrap_or_default()
        ));
        let mut rtts = Vec::new();
        for _ in 0..3 {
            check_signal()?;
            if let Some(rtt) = pinger
                .ping(Duration::from_secs(1))
                .map_err(|e| setup_err("ping")(macvtap_net::error_chain(&e)))?
            {
                rtts.push(ms(rtt));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.say.line(format!(
            "   ping: {}/3 replies, RTT {:?} ms",
            rtts.len(),
            rtts
        ));
        if rtts.is_empty() {
            return Err(LabError::Check {
                what: "ping",
                detail: "the guest answered once, then stopped answering".into(),
            });
        }
        Ok(rtts)
    }

    /// The VM's TCP echo and web server, from the LAN.
    fn probe_services(&mut self, world: &World, guest_mac: &str) -> Result<Services, LabError> {
        let (say, tag) = (self.say, &world.tag);
        check_signal()?;
        let line = format!("macvtapctl lab {tag}");
        let took = probe::tcp_echo(&world.lan, SocketAddr::from((GUEST_IP, 7)), &line)?;
        self.timings.tcp_echo_ms = Some(ms(took));
        say.line(format!(
            "== TCP echo (port 7): sent and got back {line:?} in {:.1} ms",
            ms(took)
        ));
        check_signal()?;
        let (status, body, took) = probe::http_get(&world.lan, SocketAddr::from((GUEST_IP, 80)))?;
        self.timings.http_ms = Some(ms(took));
        let want = guest::page(
            &format!("{:08x}", world.nonce),
            guest_mac,
            guest::DEFAULT_HOSTNAME,
            "guestip",
        );
        if !status.contains(" 200") || body.trim() != want.trim() {
            return Err(LabError::Check {
                what: "HTTP GET /",
                detail: format!("got {status:?} {body:?}, wanted 200 and {want:?}"),
            });
        }
        say.line(format!(
            "== HTTP GET / (port 80): {status}: {:?} in {:.1} ms",
            body.trim(),
            ms(took)
        ));
        say.line(format!(
            "   the guest itself reports MAC {guest_mac}, the macvtap's"
        ));
        Ok(Services {
            tcp_echo: Some(line),
            http_status: Some(status),
            http_body: Some(body.trim().to_string()),
        })
    }

    /// The report, shown and returned.
    fn report(
        self,
        plan: Plan,
        world: World,
        attached: PodAttachment,
        guest: GuestInfo,
        ping_rtt_ms: Vec<f64>,
        services: Services,
    ) -> LabReport {
        let mut device_plugin = attached.device_plugin;
        if let (Some(r), Some(k)) = (&mut device_plugin, &self.made.kubelet) {
            // The kubelet never stops watching: every list until now.
            r.list_updates = k.lists_received();
        }
        let report = LabReport {
            tag: world.tag,
            namespaces: world.names,
            lab_dir: world.dir.display().to_string(),
            attach_mode: if device_plugin.is_some() {
                AttachMode::DevicePlugin
            } else {
                AttachMode::Standalone
            },
            why_standalone: plan.device_plugin.err(),
            device_plugin,
            interface: attached.info,
            cni_device_node: attached.device_node.display().to_string(),
            cni_device_node_matches: attached.device_node_matches,
            guest,
            ping_rtt_ms,
            tcp_echo: services.tcp_echo,
            http_status: services.http_status,
            http_body: services.http_body,
            timings: self.timings,
            handover: self.handover,
            cleanup_script: None,
        };
        self.say.line(report_text(&report));
        report
    }

    /// The CNI plugin alone (standalone mode on the uplink), as Multus
    /// would run it for a NAD with `master`; returns the pod's interface,
    /// the plugin's device node and whether it is the interface's device.
    fn attach_standalone(
        &mut self,
        world: &World,
        plugin: &Path,
    ) -> Result<(InterfaceInfo, PathBuf, bool), LabError> {
        let (say, pod, tag, mac) = (self.say, &world.pod, &world.tag, world.mac);
        let state_dir = world.dir.join("state");
        let config = json!({
            "cniVersion": "1.0.0",
            "name": "macvtapctl-lab",
            "type": "macvtap",
            "master": UPLINK,
            "mode": "bridge",
            "mtu": 1500,
        });
        say.line(format!(
            "== CNI ADD: {} (CNI_IFNAME={POD_IF}, CNI_ARGS MAC={mac}), from {}",
            plugin.display(),
            world.names.node
        ));
        let cni = CniCall {
            plugin,
            node: &world.node,
            pod,
            container_id: tag,
            args: format!("IgnoreUnknown=1;MAC={mac}"),
            state_dir: &state_dir,
        };
        cni.add(&config, self)?;
        let info = links::show(pod, POD_IF)?;
        if info.mac.as_deref() != Some(&mac.to_string()) {
            return Err(LabError::Check {
                what: "CNI ADD",
                detail: format!("{POD_IF} has MAC {:?}, not {mac} from CNI_ARGS", info.mac),
            });
        }
        for line in info.text().lines() {
            say.line(format!("   {line}"));
        }
        let cni_node = state_dir
            .join("pods")
            .join(tag)
            .join(format!("{POD_IF}.tap"));
        let cni_node_dev = NodeInfo::stat(&cni_node).ok().map(|n| n.dev.to_string());
        let cni_node_matches = cni_node_dev.is_some() && cni_node_dev == info.device;
        say.line(format!(
            "   the plugin's device node {} is {}: {}",
            cni_node.display(),
            cni_node_dev.as_deref().unwrap_or("missing"),
            if cni_node_matches {
                "the device sysfs shows inside the pod"
            } else {
                "NOT the interface's device"
            }
        ));
        if !cni_node_matches {
            return Err(LabError::Check {
                what: "CNI device node",
                detail: format!(
                    "{} is {cni_node_dev:?}, the interface's device is {:?}",
                    cni_node.display(),
                    info.device
                ),
            });
        }
        Ok((info, cni_node, cni_node_matches))
    }
}

/// One CNI ADD of the lab's pod, from the node namespace.
pub(crate) struct CniCall<'a> {
    pub(crate) plugin: &'a Path,
    pub(crate) node: &'a Scope,
    pub(crate) pod: &'a Scope,
    pub(crate) container_id: &'a str,
    pub(crate) args: String,
    /// The node's state directory: node policy, given to the plugin as the
    /// node's administrator does (`MACVTAP_STATE_DIR`), not in the config.
    pub(crate) state_dir: &'a Path,
}

impl CniCall<'_> {
    /// Run the ADD, keep the attachment for cleanup (CNI DEL), and record
    /// and show its time.
    pub(crate) fn add(&self, config: &serde_json::Value, ctx: &mut Ctx) -> Result<(), LabError> {
        let env = vec![
            ("CNI_CONTAINERID", self.container_id.to_string()),
            ("CNI_NETNS", self.pod.path().display().to_string()),
            ("CNI_IFNAME", POD_IF.to_string()),
            ("CNI_ARGS", self.args.clone()),
            (
                macvtap_state::STATE_DIR_ENV,
                self.state_dir.display().to_string(),
            ),
            (
                macvtap_state::NODE_CONFIG_ENV,
                "/nonexistent/macvtap-node.json".to_string(),
            ),
        ];
        let (attachment, result, took) =
            Attachment::add(self.plugin, self.node.path(), env, config)?;
        ctx.made.attachment = Some(attachment);
        ctx.timings.cni_add_ms = ms(took);
        let interfaces = result
            .get("interfaces")
            .map(|i| i.to_string())
            .unwrap_or_default();
        ctx.say.line(format!(
            "   took {:.1} ms (process start included); result: {interfaces}",
            ms(took)
        ));
        Ok(())
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// "fd N -> /dev/tapM": the tap QEMU holds, from /proc.
fn tap_fd_of(pid: u32) -> Option<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find_map(|e| {
            let target = fs::read_link(e.path()).ok()?;
            target.to_string_lossy().starts_with("/dev/tap").then(|| {
                format!(
                    "fd {} -> {}",
                    e.file_name().to_string_lossy(),
                    target.display()
                )
            })
        })
}

/// The guest's NIC as the lab gives it: one queue, vhost when usable.
fn guest_nic(device_opts: &[String], mac_override: Option<MacAddr>) -> NicOptions<'_> {
    NicOptions {
        queues: 1,
        vhost: VhostChoice::Auto,
        device_opts,
        mac_override,
    }
}

/// Start QEMU inside `scope`, in its own process group, console on
/// `serial`, its output in `log`; returns it and when it started. The
/// plan's tap fds are closed here: QEMU has its copies.
fn spawn_vm(
    scope: &Scope,
    plan: qemu::QemuPlan,
    serial: &Path,
    log: &Path,
) -> Result<(Vm, Instant), LabError> {
    let log_file =
        fs::File::create(log).map_err(|e| setup_err("QEMU log")(macvtap_net::error_chain(&e)))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| setup_err("QEMU log")(macvtap_net::error_chain(&e)))?;
    let started = Instant::now();
    let child = scope.run(|| {
        qemu::spawn(&plan, |cmd| {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0)
                .stdin(std::process::Stdio::null())
                .stdout(log_file)
                .stderr(log_err);
        })
    })??;
    drop(plan);
    Ok((Vm::new(child, serial, log), started))
}

/// Ping until the first reply; (start→reply, start→guest ready banner).
fn wait_first_reply(
    args: &LabArgs,
    made: &mut Made,
    pinger: &mut Pinger,
    start: Instant,
    pod: &Scope,
    guest_mac: MacAddr,
) -> Result<(Duration, Option<Duration>), LabError> {
    let deadline = start + Duration::from_secs(args.timeout);
    let grace = if made.vm.is_some() {
        REPLY_GRACE_VM
    } else {
        REPLY_GRACE_STAND_IN
    };
    let mut ready_at = None;
    loop {
        check_signal()?;
        if let Some(vm) = &mut made.vm {
            if let Some(status) = vm.exited() {
                return Err(LabError::NoReply(format!(
                    "QEMU exited ({status}) before the guest answered\n{}",
                    vm.tails()
                )));
            }
            if ready_at.is_none() && vm.guest_ready() {
                ready_at = Some(start.elapsed());
            }
        } else if ready_at.is_none() {
            ready_at = Some(start.elapsed());
        }
        let reply = pinger
            .ping(Duration::from_millis(100))
            .map_err(|e| setup_err("ping")(macvtap_net::error_chain(&e)))?;
        if reply.is_some() {
            return Ok((start.elapsed(), ready_at));
        }
        let gave_up = match ready_at {
            Some(r) => start.elapsed() > r + grace,
            None => Instant::now() > deadline,
        };
        if gave_up {
            return Err(LabError::NoReply(no_reply_story(
                made, pod, guest_mac, ready_at, grace, start,
            )));
        }
    }
}

/// Why nothing answered: the guest's state and doctor's problems.
fn no_reply_story(
    made: &Made,
    pod: &Scope,
    guest_mac: MacAddr,
    ready_at: Option<Duration>,
    grace: Duration,
    start: Instant,
) -> String {
    let mut story = match ready_at {
        Some(r) => format!(
            "the guest is up ({:.1} s after start) but {GUEST_IP} did not answer ping within {} s",
            r.as_secs_f64(),
            grace.as_secs()
        ),
        None => format!(
            "no reply from {GUEST_IP} and no sign of the guest after {:.0} s",
            start.elapsed().as_secs_f64()
        ),
    };
    let doctor_args = DoctorArgs {
        interface: Some(POD_IF.into()),
        // A QEMU guest's MAC is read from its command line; the stand-in has none.
        guest_mac: made.vm.is_none().then_some(guest_mac),
        guest_ip: None,
        // The lab's own state, not the host's: no handover of the lab's is
        // in it, and none of the host's belongs in the lab's story.
        state_dir: made
            .dir
            .as_ref()
            .map(|d| d.path().join("state").display().to_string())
            .unwrap_or_default(),
    };
    match doctor::run(pod, &doctor_args) {
        Ok(report) => {
            let problems: Vec<_> = report
                .findings
                .iter()
                .filter(|f| f.status == Status::Problem)
                .collect();
            if problems.is_empty() {
                story.push_str("\ndoctor found no problem on the macvtap");
            }
            for p in problems {
                story.push_str(&format!(
                    "\ndoctor: {} {}: {}",
                    p.subject, p.check, p.summary
                ));
                if let Some(why) = &p.why {
                    story.push_str(&format!("\n  why: {why}"));
                }
                if let Some(fix) = &p.fix {
                    story.push_str(&format!("\n  fix: {fix}"));
                }
            }
        }
        Err(e) => story.push_str(&format!(
            "\n(doctor could not run: {})",
            macvtap_net::error_chain(&e)
        )),
    }
    if let Some(vm) = &made.vm {
        story.push('\n');
        story.push_str(&vm.tails());
    }
    story
}

fn report_text(r: &LabReport) -> String {
    let t = &r.timings;
    let opt = |v: Option<f64>, unit: &str| {
        v.map(|v| format!("{v:.1} {unit}"))
            .unwrap_or_else(|| "-".into())
    };
    let mut out = String::from("\n== report");
    let mut row = |k: &str, v: String| out.push_str(&format!("\n  {k:<34} {v}"));
    row(
        "guest",
        match r.guest.kind {
            GuestKind::Vm => format!(
                "QEMU pid {} ({}), {} {}",
                r.guest.qemu_pid.unwrap_or_default(),
                r.guest.kernel.as_deref().unwrap_or("?"),
                r.guest.ip,
                r.guest.mac
            ),
            GuestKind::StandIn => format!(
                "stand-in ({}), {} {}",
                r.guest.why_not_vm.as_deref().unwrap_or("no VM"),
                r.guest.ip,
                r.guest.mac
            ),
        },
    );
    if let Some(l) = &r.guest.libvirt {
        row(
            "libvirt",
            format!(
                "{} as uid {} (libvirtd pid {}): socket {:.0} ms, virsh create {:.0} ms, QEMU's {}",
                l.uri,
                l.uid,
                l.libvirtd_pid,
                l.start_to_socket_ms,
                l.create_ms,
                l.qemu_tap_fd.as_deref().unwrap_or("tap: none")
            ),
        );
    }
    row(
        "guest image",
        match t.guest_image_ms {
            Some(v) if t.guest_image_built => format!("built in {:.1} s", v / 1000.0),
            Some(v) => format!("cached ({v:.0} ms)"),
            None => "-".into(),
        },
    );
    row("namespaces + uplink", format!("{:.1} ms", t.setup_ms));
    match &r.device_plugin {
        Some(dp) => {
            row(
                "attach",
                format!(
                    "device plugin (pid {}) {} -> {} -> CNI ADD",
                    dp.pid, dp.resource_name, dp.device_id
                ),
            );
            row(
                "device plugin start -> Register",
                opt(t.registration_ms, "ms"),
            );
            row(
                "Register -> all devices Healthy",
                format!(
                    "{}, {} devices",
                    opt(t.devices_healthy_ms, "ms"),
                    dp.healthy_devices
                ),
            );
            row(
                "GetPreferredAllocation",
                opt(t.preferred_allocation_ms, "ms"),
            );
            row("Allocate", opt(t.allocate_ms, "ms"));
            row(
                "DeviceSpec",
                format!("{} <- {}", dp.container_path, dp.host_path),
            );
            row(
                "pod's tap",
                format!(
                    "ifindex {}, {} {} {}, opened as {}",
                    dp.pod_ifindex, dp.node_device, dp.node_owner, dp.node_mode, dp.opened_as
                ),
            );
        }
        None => row(
            "attach",
            format!(
                "CNI standalone ({})",
                r.why_standalone.as_deref().unwrap_or("no device plugin")
            ),
        ),
    }
    row(
        "CNI ADD (process included)",
        format!("{:.1} ms", t.cni_add_ms),
    );
    let start = if r.guest.kind == GuestKind::Vm {
        "QEMU start"
    } else {
        "stand-in start"
    };
    row(
        &format!("{start} -> guest ready"),
        opt(t.start_to_guest_ready_ms.map(|v| v / 1000.0), "s"),
    );
    row(
        &format!("{start} -> first ping reply"),
        format!("{:.2} s", t.start_to_first_ping_ms / 1000.0),
    );
    row("ping RTT", format!("{:?} ms", r.ping_rtt_ms));
    row("TCP echo (connect + echo)", opt(t.tcp_echo_ms, "ms"));
    row("HTTP GET /", opt(t.http_ms, "ms"));
    if let Some(h) = &r.handover {
        row(
            "handover",
            format!("{UPLINK} {} to the guest {} by DHCP", h.address, h.mac),
        );
        row("handover apply", format!("{:.1} ms", h.apply_ms));
        row(
            "QEMU start -> guest lease",
            opt(h.lease_ms.map(|v| v / 1000.0), "s"),
        );
        row(
            "QEMU start -> reply at its address",
            format!("{:.2} s", h.first_reply_ms / 1000.0),
        );
        row("handover undo", format!("{:.1} ms", h.undo_ms));
    }
    out
}

/// A per-run number for names, MAC and the guest's tag.
fn nonce() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// A locally administered unicast MAC, 02:6d:76 ("mv") + the nonce.
fn lab_mac(nonce: u32) -> MacAddr {
    let n = nonce.to_be_bytes();
    MacAddr([0x02, 0x6d, 0x76, n[1], n[2], n[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reports_kinds_and_modes_keep_their_json_words() {
        let word =
            |v: serde_json::Result<serde_json::Value>| v.unwrap().as_str().map(str::to_string);
        assert_eq!(
            word(serde_json::to_value(GuestKind::Vm)).as_deref(),
            Some("vm")
        );
        assert_eq!(
            word(serde_json::to_value(GuestKind::StandIn)).as_deref(),
            Some("stand-in")
        );
        assert_eq!(
            word(serde_json::to_value(AttachMode::DevicePlugin)).as_deref(),
            Some("device-plugin")
        );
        assert_eq!(
            word(serde_json::to_value(AttachMode::Standalone)).as_deref(),
            Some("standalone")
        );
    }

    #[test]
    fn lab_macs_are_unicast_and_local() {
        for n in [0, 1, 0xffff_ffff, 0x1234_5678] {
            let mac = lab_mac(n);
            assert_eq!(mac.0[0] & 1, 0, "unicast");
            assert_eq!(mac.0[0] & 2, 2, "locally administered");
            assert!(MacAddr::parse_unicast(&mac.to_string()).is_ok());
        }
    }
}
