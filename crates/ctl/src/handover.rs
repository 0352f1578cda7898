//! `handover`: a VM takes over its container's network identity. The core
//! (capture, durable record, apply, undo, the three deliveries) is
//! `macvtap-handover`; this is the supervising front end: apply, start
//! QEMU on the macvtap, wait, undo.
//!
//! Next to each record the supervisor keeps a small "supervisor" file that
//! it holds an exclusive `flock` on while it lives. `doctor` takes the lock
//! to learn whether the supervisor is gone (a lock dies with its process,
//! whatever killed it; a pid could be reused).

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::time::{Duration, Instant};

use macvtap_handover::cmdline::{append_ip_argument, ip_argument, KernelIpOptions};
use macvtap_handover::dhcp::{DhcpConfig, DhcpServer};
use macvtap_handover::nocloud::{seed, SeedOptions};
use macvtap_handover::{
    apply, record_key, summary, undo, ApplyOptions, CniOwner, Phase, Record, RecordKey, ResolvConf,
    Store, Target, UndoOutcome,
};
use macvtap_net::NetNs;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cli::{Deliver, HandoverArgs, VhostChoice};
use crate::libvirt;
use crate::qemu::{self, NicOptions, QemuError};
use crate::scope::Scope;

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Handover(#[from] macvtap_handover::Error),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the handover failed and was undone, the container has its identity back")]
    UndoneAfter {
        #[source]
        error: Box<HandoverError>,
    },
    #[error(
        "the handover failed and undoing it failed too ({}): run `macvtapctl handover --undo` with the same --netns/--pid and --interface",
        macvtap_net::error_chain(undo)
    )]
    UndoFailed {
        #[source]
        error: Box<HandoverError>,
        undo: macvtap_handover::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> HandoverError {
    let what = what.into();
    move |source| HandoverError::Io { what, source }
}

/// What the supervisor file says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupervisorInfo {
    pub pid: u32,
    /// false for a `--libvirt` handover that is left applied on purpose.
    pub supervised: bool,
    /// The command that ends the handover.
    pub undo_command: String,
}

fn stem(key: &RecordKey) -> String {
    key.file_name().trim_end_matches(".json").to_string()
}

/// `<records>/<key>.supervisor`.
pub fn supervisor_path(store: &Store, key: &RecordKey) -> PathBuf {
    store.path().join(format!("{}.supervisor", stem(key)))
}

/// `<records>/<key>.seed.img`: the default NoCloud seed, removed by undo.
pub fn default_seed_path(store: &Store, key: &RecordKey) -> PathBuf {
    store.path().join(format!("{}.seed.img", stem(key)))
}

/// The supervisor file, locked for as long as this value lives.
struct SupervisorLock {
    _file: Flock<File>,
}

fn write_supervisor(path: &Path, info: &SupervisorInfo) -> Result<SupervisorLock, HandoverError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(format!("write {}", path.display())))?;
    let mut file = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| io_err(format!("lock {}", path.display()))(e.into()))?;
    let text = serde_json::to_string(info).map_err(|e| io_err("encode")(e.into()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(format!("write {}", path.display())))?;
    Ok(SupervisorLock { _file: file })
}

/// Whether a live process holds the supervisor file's lock, and what it says.
pub fn read_supervisor(path: &Path) -> Option<(SupervisorInfo, bool)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let info: SupervisorInfo = serde_json::from_reader(&file).ok()?;
    // Free if a shared lock can be taken (it dies with this call).
    let free = Flock::lock(file, FlockArg::LockSharedNonblock).is_ok();
    Some((info, !free))
}

fn remove_quietly(path: &Path) {
    let _ = fs::remove_file(path);
}

/// Which container, from the global --netns or --pid.
fn target(netns: Option<&str>, pid: Option<i32>) -> Result<(Target, String), HandoverError> {
    match (netns, pid) {
        (Some(_), Some(_)) => Err(HandoverError::Usage(
            "give either --netns or --pid, not both".into(),
        )),
        (None, None) => Err(HandoverError::Usage(
            "which container? give --netns NAME|PATH or --pid PID (nothing changed)".into(),
        )),
        (Some(n), None) if n.contains('/') => Ok((Target::Path(n.into()), format!("--netns {n}"))),
        (Some(n), None) => Ok((Target::Named(n.into()), format!("--netns {n}"))),
        (None, Some(p)) => Ok((Target::Pid(p), format!("--pid {p}"))),
    }
}

fn resolv_conf(args: &HandoverArgs, target: &Target) -> ResolvConf {
    if let Some(path) = &args.resolv_conf {
        return ResolvConf::Path(path.clone());
    }
    match target {
        Target::Pid(pid) => {
            let root = PathBuf::from(format!("/proc/{pid}/root"));
            if root.join("etc/resolv.conf").exists() {
                ResolvConf::InRoot {
                    root,
                    path: "/etc/resolv.conf".into(),
                }
            } else {
                ResolvConf::None
            }
        }
        Target::Named(name) => {
            let path = PathBuf::from(format!("/etc/netns/{name}/resolv.conf"));
            if path.exists() {
                ResolvConf::Path(path)
            } else {
                ResolvConf::None
            }
        }
        Target::Path(_) => ResolvConf::None,
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// The signals the supervisor handles itself.
fn supervisor_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    set
}

/// Block SIGINT/SIGTERM/SIGHUP in this thread (and the threads it starts
/// later), so that they are taken with `sigtimedwait` and never kill the
/// supervisor before it has undone the handover.
fn block_signals() {
    let _ = supervisor_signals().thread_block();
}

/// A pending handled signal, waiting at most `timeout`.
fn wait_signal(timeout: Duration) -> Option<i32> {
    let set = supervisor_signals();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the set is initialised, the info pointer may be null.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

fn emit(json_mode: bool, value: serde_json::Value, text: String) {
    if json_mode {
        println!("{value}");
    } else {
        eprintln!("macvtapctl: {text}");
    }
}

/// `macvtapctl handover ...`.
pub fn run(
    netns: Option<&str>,
    json_mode: bool,
    args: &HandoverArgs,
) -> Result<ExitCode, HandoverError> {
    let (target, which) = target(netns, args.pid)?;
    if args.undo {
        if !args.qemu_args.is_empty() {
            return Err(HandoverError::Usage(
                "--undo takes no QEMU arguments".into(),
            ));
        }
        return run_undo(&target, json_mode, args);
    }
    if args.libvirt && !args.qemu_args.is_empty() {
        return Err(HandoverError::Usage(
            "--libvirt prints libvirt XML instead of running QEMU: give no QEMU arguments".into(),
        ));
    }
    if !args.libvirt && args.qemu_args.is_empty() {
        return Err(HandoverError::Usage(
            "give QEMU's arguments after `--` (e.g. -- -m 512 -kernel vmlinux), or --libvirt (nothing changed)".into(),
        ));
    }
    if args.deliver == Deliver::Cmdline && !args.libvirt {
        // Refuse a conflicting ip= before anything changes.
        if let Some(append) = append_value(&args.qemu_args) {
            if append
                .split_whitespace()
                .any(|w| w.starts_with("ip=") || w.starts_with("nfsaddrs="))
            {
                return Err(HandoverError::Usage(format!(
                    "-append {append:?} already has an ip= argument; --deliver cmdline adds its own (nothing changed)"
                )));
            }
        }
    }
    block_signals();
    let store = Store::open(&args.state_dir)?;
    let ns = target.open()?;
    let key = record_key(&ns, &args.interface)?;
    let (record, took, adopted) = match store.load(&key)? {
        Some(record) if record.cni.is_some() => (adoptable(&store, record, args)?, Duration::ZERO, true),
        _ if args.adopt => {
            return Err(HandoverError::Usage(format!(
                "--adopt: no handover made by the CNI plugin for {} in this namespace (no record {}); nothing changed",
                args.interface,
                store.record_path(&key).display()
            )))
        }
        _ => {
            let mut opts = ApplyOptions::new(args.interface.clone());
            opts.mac = args.mac;
            opts.resolv_conf = resolv_conf(args, &target);
            let applied = apply(&store, &ns, &opts)?;
            (applied.record, applied.took, false)
        }
    };
    let undo_command = match &record.cni {
        Some(owner) => cni_undo_hint(owner),
        None => format!(
            "macvtapctl handover --undo {which} --interface {} --state-dir {}",
            args.interface, args.state_dir
        ),
    };
    let session = Session {
        store: &store,
        ns: &ns,
        record: &record,
        args,
        json_mode,
        adopted,
    };
    let result = if args.libvirt {
        session.libvirt(took, &undo_command)
    } else {
        session.supervise(took, &undo_command)
    };
    match result {
        Ok(code) => Ok(code),
        Err(error) if adopted => {
            // Not ours to undo: only what this run made goes.
            session.forget_run();
            Err(error)
        }
        Err(error) if args.libvirt => {
            // Nothing of ours runs any more: undo at once.
            match session.undo_all() {
                Ok(_) => Err(HandoverError::UndoneAfter {
                    error: Box::new(error),
                }),
                Err(undo) => Err(HandoverError::UndoFailed {
                    error: Box::new(error),
                    undo,
                }),
            }
        }
        Err(error) => Err(error),
    }
}

/// Who undoes a CNI-made handover.
pub(crate) fn cni_undo_hint(owner: &CniOwner) -> String {
    format!(
        "the runtime's CNI DEL of network {:?}, container {} ({}), e.g. `podman rm` or `podman network disconnect`",
        owner.network, owner.container_id, owner.ifname
    )
}

/// A handover the chained CNI plugin made, checked for a launcher: apply
/// finished, no other launcher serves it, and the MAC asked for is its own.
fn adoptable(store: &Store, record: Record, args: &HandoverArgs) -> Result<Record, HandoverError> {
    let path = store.record_path(&record.key);
    if record.phase != Phase::Applied {
        return Err(HandoverError::Usage(format!(
            "the CNI plugin's handover of {} never finished (record {} says intent); its CNI DEL undoes it; nothing changed",
            args.interface,
            path.display()
        )));
    }
    if let Some(mac) = args.mac.filter(|m| *m != record.made.mac) {
        return Err(HandoverError::Usage(format!(
            "--mac {mac}: the CNI plugin's handover gave the guest {} (record {}); give that MAC or none; nothing changed",
            record.made.mac,
            path.display()
        )));
    }
    if let Some((info, true)) = read_supervisor(&supervisor_path(store, &record.key)) {
        return Err(HandoverError::Usage(format!(
            "a launcher (pid {}) already serves this handover; nothing changed",
            info.pid
        )));
    }
    Ok(record)
}

fn append_value(args: &[String]) -> Option<&str> {
    let i = args
        .iter()
        .rposition(|a| a == "-append" || a == "--append")?;
    args.get(i + 1).map(String::as_str)
}

/// The user's QEMU arguments with `ip=` added to (or as) `-append`.
fn with_ip_argument(
    args: &[String],
    record: &Record,
    hostname: Option<&str>,
) -> Result<Vec<String>, HandoverError> {
    let opts = KernelIpOptions {
        hostname: hostname.map(str::to_string),
        device: None,
    };
    let mut out = args.to_vec();
    match out.iter().rposition(|a| a == "-append" || a == "--append") {
        Some(i) if i + 1 < out.len() => {
            out[i + 1] = append_ip_argument(&out[i + 1], &record.identity, &opts)?;
        }
        _ => {
            out.push("-append".into());
            out.push(ip_argument(&record.identity, &opts)?);
        }
    }
    Ok(out)
}

struct Session<'a> {
    store: &'a Store,
    ns: &'a NetNs,
    record: &'a Record,
    args: &'a HandoverArgs,
    json_mode: bool,
    /// The chained CNI plugin made this handover: its DEL undoes it.
    adopted: bool,
}

impl Session<'_> {
    fn seed_path(&self) -> PathBuf {
        self.args
            .seed
            .clone()
            .unwrap_or_else(|| default_seed_path(self.store, &self.record.key))
    }

    fn make_seed(&self) -> Result<PathBuf, HandoverError> {
        let path = self.seed_path();
        let opts = SeedOptions {
            hostname: self.args.hostname.clone(),
            ..SeedOptions::default()
        };
        seed(self.record, &opts)?.write_vfat(&path)?;
        Ok(path)
    }

    fn dhcp(&self) -> Result<DhcpServer, HandoverError> {
        let cfg = DhcpConfig {
            hostname: self.args.hostname.clone(),
            ..DhcpConfig::default()
        };
        Ok(DhcpServer::start(self.ns, self.record, cfg)?)
    }

    /// Undo from the record (not an adopted one: `None`); remove the
    /// default seed and the supervisor file.
    fn undo_all(&self) -> Result<(Option<UndoOutcome>, Duration), macvtap_handover::Error> {
        let t = Instant::now();
        let outcome = if self.adopted {
            None
        } else {
            Some(undo(self.store, self.ns, &self.record.identity.interface)?)
        };
        self.forget_run();
        Ok((outcome, t.elapsed()))
    }

    /// Remove what this run made next to the record: the default seed and
    /// the supervisor file.
    fn forget_run(&self) {
        remove_quietly(&default_seed_path(self.store, &self.record.key));
        remove_quietly(&supervisor_path(self.store, &self.record.key));
    }

    fn applied_event(&self, took: Duration) -> serde_json::Value {
        let r = self.record;
        json!({
            "event": "applied",
            "netns": r.netns_path,
            "interface": r.identity.interface,
            "identity": summary(&r.identity),
            "macvtap": r.made.macvtap,
            "macvtapIndex": r.made.macvtap_index,
            "mac": r.made.mac.to_string(),
            "deliver": format!("{:?}", self.args.deliver).to_lowercase(),
            "record": self.store.record_path(&r.key),
            "applyMs": ms(took),
            "adopted": self.adopted,
            "cni": r.cni,
        })
    }

    fn supervise(&self, took: Duration, undo_command: &str) -> Result<ExitCode, HandoverError> {
        let lock = write_supervisor(
            &supervisor_path(self.store, &self.record.key),
            &SupervisorInfo {
                pid: std::process::id(),
                supervised: true,
                undo_command: undo_command.into(),
            },
        );
        // A Ctrl-C during apply waited (blocked) until now: honour it
        // before QEMU starts.
        let started = lock.and_then(|lock| match wait_signal(Duration::ZERO) {
            Some(sig) => Err(HandoverError::Usage(format!(
                "signal {sig} arrived during the handover; QEMU was not started"
            ))),
            None => self.start(took).map(|s| (lock, s)),
        });
        let (lock, (mut child, server, start)) = match started {
            Ok(s) => s,
            Err(error) if self.adopted => {
                self.forget_run();
                return Err(error);
            }
            Err(error) => {
                return match self.undo_all() {
                    Ok(_) => Err(HandoverError::UndoneAfter {
                        error: Box::new(error),
                    }),
                    Err(undo) => Err(HandoverError::UndoFailed {
                        error: Box::new(error),
                        undo,
                    }),
                }
            }
        };
        let (status, signal) = wait_child(&mut child);
        let ran = start.elapsed();
        let stats = server.map(|s| s.stop());
        let undone = self.undo_all();
        drop(lock);
        let code = match status {
            Some(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
            None => 1,
        };
        let (outcome, undo_took) = match undone {
            Ok(u) => u,
            Err(undo) => {
                return Err(HandoverError::UndoFailed {
                    error: Box::new(HandoverError::Usage(format!("QEMU ended (status {code})"))),
                    undo,
                })
            }
        };
        let dhcp = match stats {
            Some(Ok(s)) => json!({
                "offers": s.offers,
                "acks": s.acks,
                "naks": s.naks,
                // QEMU start to the guest's lease.
                "firstAckMs": s.first_ack.map(|t| ms(t.saturating_duration_since(start))),
            }),
            _ => serde_json::Value::Null,
        };
        let Some(outcome) = outcome else {
            emit(
                self.json_mode,
                json!({
                    "event": "stopped",
                    "outcome": "LeftToCni",
                    "qemuStatus": code,
                    "signal": signal,
                    "ranMs": ms(ran),
                    "dhcp": dhcp,
                }),
                format!(
                    "QEMU ended (status {code}{}); the handover stays applied: {undo_command} undoes it",
                    signal
                        .map(|s| format!(", after signal {s} was forwarded"))
                        .unwrap_or_default(),
                ),
            );
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        };
        emit(
            self.json_mode,
            json!({
                "event": "undone",
                "outcome": format!("{outcome:?}"),
                "qemuStatus": code,
                "signal": signal,
                "ranMs": ms(ran),
                "undoMs": ms(undo_took),
                "dhcp": dhcp,
            }),
            format!(
                "QEMU ended (status {code}{}); {} has its identity back ({:?}, undo {:.1} ms)",
                signal
                    .map(|s| format!(", after signal {s} was forwarded"))
                    .unwrap_or_default(),
                self.record.identity.interface,
                outcome,
                ms(undo_took)
            ),
        );
        Ok(ExitCode::from(code.clamp(0, 255) as u8))
    }

    /// Deliver, open the tap, start QEMU.
    fn start(&self, took: Duration) -> Result<(Child, Option<DhcpServer>, Instant), HandoverError> {
        let args = self.args;
        let mut user_args = args.qemu_args.clone();
        let mut seed_path = None;
        let mut server = None;
        match args.deliver {
            Deliver::Dhcp => server = Some(self.dhcp()?),
            Deliver::Nocloud => {
                let path = self.make_seed()?;
                user_args.push("-drive".into());
                user_args.push(format!(
                    "file={},format=raw,if=virtio,readonly=on",
                    path.display()
                ));
                seed_path = Some(path);
            }
            Deliver::Cmdline => {
                user_args = with_ip_argument(&user_args, self.record, args.hostname.as_deref())?
            }
        }
        let scope = Scope::from_netns(
            NetNs::open(self.ns.path()).map_err(|source| {
                HandoverError::Handover(macvtap_handover::Error::Netns { source })
            })?,
            &self.record.netns_path.display().to_string(),
        );
        let nic = NicOptions {
            queues: 1,
            vhost: VhostChoice::Auto,
            device_opts: &args.device_opts,
            mac_override: None,
        };
        let plan = qemu::plan(
            &scope,
            &self.record.made.macvtap,
            &args.qemu_bin,
            &nic,
            &user_args,
        )?;
        for note in &plan.notes {
            eprintln!("macvtapctl: {note}");
        }
        let start = Instant::now();
        let child = qemu::spawn(&plan, |cmd| {
            // SAFETY: the closure only calls sigprocmask (async-signal-safe,
            // no allocation): QEMU starts with the signals this process
            // blocked for itself unblocked.
            unsafe {
                cmd.pre_exec(|| {
                    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
                    Ok(())
                });
            }
        })?;
        // QEMU has its copies; ours would make a second queue on the tap.
        drop(plan.fds);
        let mut event = self.applied_event(took);
        event["qemuPid"] = json!(child.id());
        event["qemu"] = json!(plan.program);
        event["qemuArgs"] = json!(plan.args);
        event["seed"] = json!(seed_path);
        emit(
            self.json_mode,
            event,
            format!(
                "{} {} over ({}) to macvtap {} with MAC {}{}; QEMU is pid {} ({}); Ctrl-C stops it{}",
                if self.adopted { "the CNI plugin handed" } else { "handed" },
                self.record.identity.interface,
                summary(&self.record.identity),
                self.record.made.macvtap,
                self.record.made.mac,
                if self.adopted { String::new() } else { format!(" in {:.1} ms", ms(took)) },
                child.id(),
                match args.deliver {
                    Deliver::Dhcp => "DHCP server running".to_string(),
                    Deliver::Nocloud => format!("NoCloud seed {}", self.seed_path().display()),
                    Deliver::Cmdline => "ip= added to -append".to_string(),
                },
                if self.adopted {
                    " (the handover stays: the CNI DEL undoes it)"
                } else {
                    " and undoes the handover"
                }
            ),
        );
        Ok((child, server, start))
    }

    fn libvirt(&self, took: Duration, undo_command: &str) -> Result<ExitCode, HandoverError> {
        let args = self.args;
        let r = self.record;
        let mut xml = String::from("<!-- the guest's NIC: add it to <devices> -->\n");
        xml.push_str(&libvirt::ethernet(&r.made.macvtap, r.made.mac, None));
        let mut seed_path = None;
        let mut server = None;
        match args.deliver {
            Deliver::Nocloud => {
                let path = self.make_seed()?;
                xml.push_str(&format!(
                    "<!-- the NoCloud seed: add it to <devices> -->\n\
                     <disk type='file' device='disk'>\n  \
                       <driver name='qemu' type='raw'/>\n  \
                       <source file='{}'/>\n  \
                       <target dev='vdb' bus='virtio'/>\n  \
                       <readonly/>\n\
                     </disk>\n",
                    xml_escape(&path.display().to_string())
                ));
                seed_path = Some(path);
            }
            Deliver::Cmdline => {
                let ip = ip_argument(
                    &r.identity,
                    &KernelIpOptions {
                        hostname: args.hostname.clone(),
                        device: None,
                    },
                )?;
                xml.push_str(&format!(
                    "<!-- direct kernel boot: add this word to <os><cmdline> -->\n<cmdline>{}</cmdline>\n",
                    xml_escape(&ip)
                ));
            }
            Deliver::Dhcp => server = Some(self.dhcp()?),
        }
        let _lock = write_supervisor(
            &supervisor_path(self.store, &r.key),
            &SupervisorInfo {
                pid: std::process::id(),
                supervised: false,
                undo_command: undo_command.into(),
            },
        )?;
        let mut event = self.applied_event(took);
        event["libvirt"] = json!(xml);
        event["seed"] = json!(seed_path);
        event["undo"] = json!(undo_command);
        if self.json_mode {
            println!("{event}");
        } else {
            print!("{xml}");
        }
        eprintln!(
            "macvtapctl: handed {} over ({}) to macvtap {} with MAC {} in {:.1} ms; the handover stays applied: end it with\n  {undo_command}",
            r.identity.interface,
            summary(&r.identity),
            r.made.macvtap,
            r.made.mac,
            ms(took)
        );
        if let Some(server) = server {
            eprintln!(
                "macvtapctl: serving DHCP to {} until Ctrl-C/SIGTERM (the lease is infinite; the handover stays after)",
                r.made.mac
            );
            let _ = io::stdout().flush();
            let sig = loop {
                if let Some(sig) = wait_signal(Duration::from_secs(1)) {
                    break sig;
                }
            };
            let stats = server.stop()?;
            emit(
                self.json_mode,
                json!({"event": "dhcpStopped", "signal": sig, "offers": stats.offers, "acks": stats.acks}),
                format!(
                    "DHCP server stopped ({} offers, {} acks); the handover stays: {undo_command}",
                    stats.offers, stats.acks
                ),
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// Wait for QEMU to exit; forward SIGINT/SIGTERM/SIGHUP to it, and kill it
/// if it has not exited 10 s after that.
fn wait_child(child: &mut Child) -> (Option<std::process::ExitStatus>, Option<i32>) {
    let mut forwarded: Option<(i32, Instant)> = None;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (Some(status), forwarded.map(|f| f.0)),
            Ok(None) => {}
            Err(_) => return (None, forwarded.map(|f| f.0)),
        }
        if let Some(sig) = wait_signal(Duration::from_millis(50)) {
            if let Ok(sig) = Signal::try_from(sig) {
                let _ = kill(Pid::from_raw(child.id() as i32), sig);
            }
            forwarded.get_or_insert((sig, Instant::now()));
        }
        if let Some((_, at)) = forwarded {
            if at.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
            }
        }
    }
}

fn run_undo(
    target: &Target,
    json_mode: bool,
    args: &HandoverArgs,
) -> Result<ExitCode, HandoverError> {
    let store = Store::open(&args.state_dir)?;
    let ns = target.open()?;
    let key = record_key(&ns, &args.interface)?;
    if let Some(owner) = store.load(&key)?.and_then(|r| r.cni) {
        return Err(HandoverError::Usage(format!(
            "this handover was made by the CNI plugin: {} undoes it, not --undo; nothing changed",
            cni_undo_hint(&owner)
        )));
    }
    if let Some((info, true)) = read_supervisor(&supervisor_path(&store, &key)) {
        if info.supervised {
            return Err(HandoverError::Usage(format!(
                "the handover's supervisor (pid {}) is running: stop it (kill -TERM {}) and it undoes the handover itself",
                info.pid, info.pid
            )));
        }
    }
    let t = Instant::now();
    let outcome = undo(&store, &ns, &args.interface)?;
    let took = t.elapsed();
    remove_quietly(&default_seed_path(&store, &key));
    remove_quietly(&supervisor_path(&store, &key));
    let text = match outcome {
        UndoOutcome::Restored => format!(
            "{} has its identity back; the macvtap and shim are gone ({:.1} ms)",
            args.interface,
            ms(took)
        ),
        UndoOutcome::NothingRecorded => format!(
            "nothing to undo: no handover record for {} in {}",
            args.interface,
            store.path().display()
        ),
        UndoOutcome::InterfaceGone => format!(
            "{} is gone (and all made on it); the record was removed",
            args.interface
        ),
    };
    emit(
        json_mode,
        json!({"event": "undone", "outcome": format!("{outcome:?}"), "undoMs": ms(took)}),
        text,
    );
    Ok(ExitCode::SUCCESS)
}

/// A handover half done, for `doctor`.
#[derive(Debug, Clone)]
pub struct HalfDone {
    pub record: PathBuf,
    pub interface: String,
    pub netns: PathBuf,
    pub phase: Phase,
    /// The supervisor file's story, if there is one.
    pub supervisor: Option<(SupervisorInfo, bool)>,
    /// Whether the record's namespace still exists (the same one).
    pub netns_alive: bool,
    /// The CNI attachment that made it (the chained plugin), if any.
    pub cni: Option<CniOwner>,
}

/// Every record under `state_dir` and its supervisor's state. Does not
/// create the state directory: none means no handovers.
pub fn records(state_dir: &str) -> Result<Vec<HalfDone>, macvtap_handover::Error> {
    let state = macvtap_state::StateDir::open(state_dir)
        .map_err(|source| macvtap_handover::Error::StateDir { source })?;
    let Some(store) = Store::existing_in(state)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for r in store.records()? {
        let netns_alive = NetNs::open(&r.netns_path)
            .and_then(|ns| ns.identity())
            .map(|(dev, ino)| dev == r.key.netns_dev && ino == r.key.netns_ino)
            .unwrap_or(false);
        out.push(HalfDone {
            record: store.record_path(&r.key),
            interface: r.identity.interface.clone(),
            netns: r.netns_path.clone(),
            phase: r.phase,
            supervisor: read_supervisor(&supervisor_path(&store, &r.key)),
            netns_alive,
            cni: r.cni,
        });
    }
    Ok(out)
}
