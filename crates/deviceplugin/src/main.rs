//! `macvtap-deviceplugin`: a kubelet device plugin offering macvtap devices.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use macvtap_deviceplugin::config::Config;
use macvtap_deviceplugin::daemon::{self, Paths, Tuning};
use macvtap_deviceplugin::hostns::{self, HostMounts};
use macvtap_deviceplugin::reload::ConfigFile;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HostMountsArg {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Offers macvtap devices on this node's uplinks to the kubelet as
/// `macvtap.network.kubevirt.io/<name>` resources.
///
/// The resources come from DP_MACVTAP_CONF, a JSON array such as
///   [{"name":"dataplane","lowerDevice":"eth0","mode":"bridge","capacity":50}]
/// ("master" is accepted for "lowerDevice"; mode bridge|vepa|private|passthru|source,
/// default bridge; capacity default 100; "attach": "pod" (default, the CNI creates the
/// macvtap inside the pod) or "host" (created on the host at Allocate)).
/// An empty array [] offers one resource per suitable uplink, following link
/// events: by default upstream's set, every physical device and bond, enslaved
/// or not. DP_MACVTAP_DISCOVER_KINDS (e.g. "physical,bond,team,vlan") says
/// which kinds of links are suitable (physical, bond, team, vlan, bridge,
/// vxlan, veth, macvlan); DP_MACVTAP_DISCOVER_SKIP_ENSLAVED=true leaves out
/// links enslaved to a bond, bridge or team.
///
/// With --config-file the same JSON comes from a file instead (the ConfigMap
/// mounted as a volume): it is followed, and a change is applied without a
/// restart; a broken edit is logged and the last good configuration stays.
/// The file wins: DP_MACVTAP_CONF in the environment is then ignored.
/// The discovery variables are read from the environment at start.
///
/// Upstream's glog flags are accepted too, as its manifests pass them:
/// -v N (0-3 info, 4-5 debug, 6+ trace; RUST_LOG wins), -logtostderr,
/// -alsologtostderr, and -stderrthreshold, -log_dir, -log_backtrace_at,
/// -vmodule, -log_link (no effect: logs always go to stderr).
#[derive(Debug, Parser)]
#[command(version = macvtap_buildinfo::VERSION, verbatim_doc_comment)]
struct Args {
    /// The kubelet's device-plugin directory (kubelet.sock and plugin sockets).
    #[arg(long, default_value = "/var/lib/kubelet/device-plugins")]
    device_plugin_path: PathBuf,
    /// State shared with the macvtap CNI plugin; must survive reboots.
    #[arg(long, default_value = macvtap_state::DEFAULT_STATE_DIR)]
    state_dir: String,
    /// The kubelet's PodResources socket, asked at start which devices pods hold.
    #[arg(long, default_value = "/var/lib/kubelet/pod-resources/kubelet.sock")]
    pod_resources_socket: PathBuf,
    /// Serve Prometheus metrics on http://ADDR/metrics (and /healthz), e.g.
    /// 127.0.0.1:9465, [fd00::1]:9465 or fd00::1:9465 (a bare IPv6 address, as
    /// the downward API's status.hostIP gives it, followed by :PORT).
    #[arg(long, value_name = "ADDR", value_parser = parse_socket_addr)]
    metrics_address: Option<SocketAddr>,
    /// Read the resources' JSON from this file, not DP_MACVTAP_CONF, and
    /// apply its changes while running: for a ConfigMap mounted as a volume
    /// (not with subPath, which the kubelet never updates), give the key's
    /// path, e.g. /etc/macvtap-deviceplugin/DP_MACVTAP_CONF.
    #[arg(long, value_name = "PATH")]
    config_file: Option<PathBuf>,
    /// Only check DP_MACVTAP_CONF or --config-file (and
    /// DP_MACVTAP_DISCOVER_KINDS), print the resources it defines, and
    /// exit: 0 when valid, 1 when not.
    #[arg(long)]
    check_config: bool,
    /// Discovery (DP_MACVTAP_CONF=[]): retire a resource whose link has been
    /// gone this many seconds (its socket is removed, it leaves resources.json).
    #[arg(long, env = "DP_MACVTAP_RETIRE_AFTER", value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    retire_after: std::time::Duration,
    /// Only install the CNI plugin's node policy and exit: validate the JSON
    /// in MACVTAP_NODE_POLICY (default {}: the built-in policy) and write it
    /// to PATH (the host's /etc/macvtap/node.json, as the DaemonSet's init
    /// container mounts it). Its stateDir must equal --state-dir.
    #[arg(long, value_name = "PATH")]
    install_node_policy: Option<PathBuf>,
    /// Join the host's (PID 1's) mount namespace at start: auto does when
    /// PID 1 is in another one (a container with hostPID) and nothing is
    /// mounted at --state-dir (upstream's manifest and CNAO's template
    /// mount only the device-plugin directory); then state directory,
    /// PodResources socket and /dev are the host's, shared with the CNI plugin.
    #[arg(long, value_enum, default_value = "auto")]
    host_mounts: HostMountsArg,
    /// Write a CDI spec per resource (kind macvtap.network.kubevirt.io/<name>)
    /// into --cdi-spec-dir and name the devices in Allocate's cdi_devices too,
    /// next to the DeviceSpecs (kubelets from 1.31 pass them to the runtime).
    #[arg(long, env = "DP_MACVTAP_CDI")]
    cdi: bool,
    /// Where --cdi writes its specs: a directory the runtime reads.
    #[arg(long, env = "DP_MACVTAP_CDI_SPEC_DIR", value_name = "DIR", default_value = macvtap_deviceplugin::cdi::DEFAULT_SPEC_DIR)]
    cdi_spec_dir: PathBuf,
    /// Log format (logs go to stderr; RUST_LOG=error|warn|info|debug|trace sets the level, default info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// `IP:PORT`, with an IPv6 address in brackets or bare: a manifest can only
/// append `:PORT` to the node's address, whichever family it is.
fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().or_else(|_| {
        let (ip, port) = s.rsplit_once(':').ok_or("want IP:PORT")?;
        let ip: std::net::IpAddr = ip.parse().map_err(|e| format!("{ip:?}: {e}"))?;
        let port: u16 = port.parse().map_err(|e| format!("port {port:?}: {e}"))?;
        Ok(SocketAddr::new(ip, port))
    })
}

/// Validate MACVTAP_NODE_POLICY and write it, atomically and mode 0644
/// (root's, as the CNI plugin requires), to `path`.
fn install_node_policy(path: &std::path::Path, state_dir: &str) -> Result<String, String> {
    use std::io::Write;
    let text = std::env::var("MACVTAP_NODE_POLICY").unwrap_or_else(|_| "{}".into());
    let policy = macvtap_state::NodePolicy::from_json(text.as_bytes(), path)
        .map_err(|e| macvtap_net::error_chain(&e))?;
    if std::path::Path::new(&policy.state_dir) != std::path::Path::new(state_dir) {
        return Err(format!(
            "stateDir {:?} differs from the device plugin's --state-dir {state_dir:?}: both plugins must share one state directory",
            policy.state_dir
        ));
    }
    let dir = path.parent().ok_or("the policy path has no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".node.json.{}.tmp", std::process::id()));
    let written = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{}: {e}", path.display()));
    }
    Ok(format!(
        "wrote {}: stateDir {}, lock timeout {}s, standalone lower devices {}, source mode {}, at most {} sourceMacs",
        path.display(),
        policy.state_dir,
        policy.lock_timeout.as_secs(),
        policy
            .standalone_lower_devices
            .as_ref()
            .map_or("any".to_string(), |d| if d.is_empty() { "none (off)".into() } else { d.join(",") }),
        if policy.allow_source_mode { "allowed" } else { "off" },
        policy.max_source_macs
    ))
}

/// A non-negative number of seconds, fractions allowed.
fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> ExitCode {
    // One malloc arena: the daemon's few threads allocate little, and every
    // extra arena is resident memory on every node.
    // SAFETY: mallopt only tunes the allocator; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let glog = match macvtap_deviceplugin::glog::split(std::env::args_os()) {
        Ok(split) => split,
        Err(e) => {
            eprintln!("macvtap-deviceplugin: {}", macvtap_net::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    let args = Args::parse_from(&glog.rest);
    // A plain level (error, warn, info, debug, trace): a full EnvFilter
    // would pull in a regex engine and a megabyte of resident memory.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .or(glog.verbosity.map(macvtap_deviceplugin::glog::level))
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Some(v) = glog.verbosity {
        tracing::info!("glog -v {v}: log level {filter}");
    }
    if !glog.ignored.is_empty() {
        tracing::info!(
            "glog flags accepted without effect (logs always go to stderr): {}",
            glog.ignored.join(" ")
        );
    }
    if let Some(path) = &args.install_node_policy {
        return match install_node_policy(path, &args.state_dir) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("macvtap-deviceplugin: node policy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let discover_kinds = std::env::var("DP_MACVTAP_DISCOVER_KINDS").ok();
    let discover_skip_enslaved = std::env::var("DP_MACVTAP_DISCOVER_SKIP_ENSLAVED").ok();
    let mut live = args
        .config_file
        .clone()
        .map(|path| ConfigFile::new(path, discover_kinds.clone(), discover_skip_enslaved.clone()));
    let parsed = match &mut live {
        Some(file) => {
            if std::env::var_os("DP_MACVTAP_CONF").is_some() {
                tracing::info!(
                    file = %file.path.display(),
                    "DP_MACVTAP_CONF is set but ignored: --config-file wins"
                );
            }
            file.pin_directory()
                .and_then(|()| file.load())
                .map_err(|e| macvtap_net::error_chain(&e))
        }
        None => Config::parse_all(
            std::env::var("DP_MACVTAP_CONF").ok().as_deref(),
            discover_kinds.as_deref(),
            discover_skip_enslaved.as_deref(),
        )
        .map_err(|e| e.to_string()),
    };
    let config = match parsed {
        Ok(config) => config,
        Err(e) => {
            eprintln!("macvtap-deviceplugin: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.check_config {
        match &config {
            Config::Static(resources) => {
                for r in resources {
                    println!(
                        "macvtap.network.kubevirt.io/{}: lowerDevice {}, mode {}, capacity {}, attach {}",
                        r.name,
                        r.lower_device,
                        r.mode,
                        r.capacity,
                        match r.attach {
                            macvtap_state::Attach::Pod => "pod",
                            macvtap_state::Attach::Host => "host",
                        }
                    );
                }
            }
            Config::Discover(discovery) => println!("{discovery}"),
        }
        return ExitCode::SUCCESS;
    }
    let mode = match args.host_mounts {
        HostMountsArg::Auto => HostMounts::Auto,
        HostMountsArg::Always => HostMounts::Always,
        HostMountsArg::Never => HostMounts::Never,
    };
    // Before any thread starts: the kernel refuses a multi-threaded
    // process another mount namespace.
    match hostns::enter(mode, &args.state_dir) {
        Ok(layout) if layout.shared() => tracing::info!("{}", layout.describe(&args.state_dir)),
        Ok(layout) => tracing::warn!("{}", layout.describe(&args.state_dir)),
        Err(e) => {
            eprintln!("macvtap-deviceplugin: {}", macvtap_net::error_chain(&e));
            return ExitCode::FAILURE;
        }
    }
    let paths = Paths {
        device_plugin_dir: args.device_plugin_path,
        state_dir: args.state_dir,
        pod_resources_socket: args.pod_resources_socket,
        metrics_address: args.metrics_address,
        cdi_spec_dir: args.cdi.then_some(args.cdi_spec_dir),
    };
    // One thread for the async work keeps the footprint small; blocking
    // work (netlink, files) goes to tokio's blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("macvtap-deviceplugin: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tuning = Tuning {
        retire_after: args.retire_after,
        live,
    };
    match runtime.block_on(daemon::run(config, paths, tuning)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("macvtap-deviceplugin: {}", macvtap_net::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
