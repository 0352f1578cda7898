//! `qemu`: start QEMU on a macvtap with the tap fds inherited and the
//! guest NIC's MAC equal to the macvtap's.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use macvtap_net::MacAddr;

use crate::cli::{QemuArgs, VhostChoice};
use crate::host::{self, Kvm};
use crate::scope::{Scope, ScopeError};
use crate::tap::{self, TapError};

/// The `-netdev` id macvtapctl gives the tap backend.
pub const NETDEV_ID: &str = "mvtnet0";

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("--vhost on, but vhost-net is not available: {0}; use --vhost auto or off")]
    VhostUnavailable(String),
    #[error("{name} has no MAC address")]
    NoMac { name: String },
    #[error("cannot run {program}{hint}")]
    Start {
        program: PathBuf,
        #[source]
        source: std::io::Error,
        hint: &'static str,
    },
}

/// The QEMU command for one macvtap, with its open tap queues.
#[derive(Debug)]
pub struct QemuPlan {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Why macvtapctl chose what it chose (vhost, accelerator), for stderr.
    pub notes: Vec<String>,
    /// Kept open until QEMU has them.
    pub fds: Vec<OwnedFd>,
}

/// How the NIC should look, beyond the interface itself.
#[derive(Debug, Clone)]
pub struct NicOptions<'a> {
    pub queues: u32,
    pub vhost: VhostChoice,
    /// Extra `-device` properties (KEY=VALUE).
    pub device_opts: &'a [String],
    /// Use this guest MAC instead of the macvtap's (the lab's deliberate
    /// mismatch); `None` for the right one.
    pub mac_override: Option<MacAddr>,
}

/// Open the interface's tap queues and build QEMU's command line around
/// `user_args`.
pub fn plan(
    scope: &Scope,
    interface: &str,
    program: &Path,
    nic: &NicOptions<'_>,
    user_args: &[String],
) -> Result<QemuPlan, QemuError> {
    plan_inner(scope, interface, program, nic, user_args, |link| {
        Ok(tap::open_queues(scope, link, nic.queues)?.fds)
    })
}

/// Like [`plan`], on tap fds opened already (the lab's, from the device
/// node the device plugin promised); one queue per fd.
pub fn plan_with_fds(
    scope: &Scope,
    interface: &str,
    program: &Path,
    nic: &NicOptions<'_>,
    user_args: &[String],
    fds: Vec<OwnedFd>,
) -> Result<QemuPlan, QemuError> {
    plan_inner(scope, interface, program, nic, user_args, |_| Ok(fds))
}

fn plan_inner(
    scope: &Scope,
    interface: &str,
    program: &Path,
    nic: &NicOptions<'_>,
    user_args: &[String],
    open: impl FnOnce(&macvtap_net::Link) -> Result<Vec<OwnedFd>, QemuError>,
) -> Result<QemuPlan, QemuError> {
    let mut nl = scope.netlink()?;
    let link = scope.macvtap(&mut nl, interface)?;
    let link_mac = link.mac.ok_or_else(|| QemuError::NoMac {
        name: link.name.clone(),
    })?;
    let mut notes = Vec::new();
    let vhost = match (nic.vhost, host::vhost_net()) {
        (VhostChoice::Off, _) => false,
        (VhostChoice::On, Ok(())) | (VhostChoice::Auto, Ok(())) => true,
        (VhostChoice::On, Err(why)) => return Err(QemuError::VhostUnavailable(why)),
        (VhostChoice::Auto, Err(why)) => {
            notes.push(format!("vhost-net not used: {why}"));
            false
        }
    };
    let accel = if has_accelerator(user_args) {
        None
    } else {
        Some(match host::kvm() {
            Kvm::Usable => "kvm",
            other => {
                notes.push(format!(
                    "KVM is not usable here ({other}): using TCG, which is slow"
                ));
                "tcg"
            }
        })
    };
    let fds = open(&link)?;
    let mac = nic.mac_override.unwrap_or(link_mac);
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let args = build_args(&Nic {
        user_args,
        fds: &raw,
        mac,
        vhost,
        accel,
        device_opts: nic.device_opts,
    });
    Ok(QemuPlan {
        program: program.to_path_buf(),
        args,
        notes,
        fds,
    })
}

/// Everything QEMU's command line is made of.
#[derive(Debug)]
pub struct Nic<'a> {
    pub user_args: &'a [String],
    pub fds: &'a [RawFd],
    pub mac: MacAddr,
    pub vhost: bool,
    pub accel: Option<&'a str>,
    pub device_opts: &'a [String],
}

pub fn build_args(nic: &Nic<'_>) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(accel) = nic.accel {
        args.extend(["-accel".to_string(), accel.to_string()]);
    }
    args.extend(nic.user_args.iter().cloned());
    let fds: Vec<String> = nic.fds.iter().map(|fd| fd.to_string()).collect();
    let fd_opt = match fds.as_slice() {
        [one] => format!("fd={one}"),
        many => format!("fds={}", many.join(":")),
    };
    let vhost = if nic.vhost { "on" } else { "off" };
    args.push("-netdev".into());
    args.push(format!("tap,id={NETDEV_ID},{fd_opt},vhost={vhost}"));
    let mut device = format!("virtio-net-pci,netdev={NETDEV_ID},mac={}", nic.mac);
    if nic.fds.len() > 1 {
        // One MSI-X vector per rx and tx queue, plus config and control.
        device.push_str(&format!(",mq=on,vectors={}", 2 * nic.fds.len() + 2));
    }
    for opt in nic.device_opts {
        device.push(',');
        device.push_str(opt);
    }
    args.push("-device".into());
    args.push(device);
    args
}

/// Whether the user already chose an accelerator.
fn has_accelerator(args: &[String]) -> bool {
    args.iter()
        .any(|a| a == "-accel" || a == "--accel" || a == "-enable-kvm" || a.contains("accel="))
}

/// A `Command` for the plan whose child inherits the tap fds.
pub fn command(plan: &QemuPlan) -> Command {
    let mut cmd = Command::new(&plan.program);
    cmd.args(&plan.args);
    let fds: Vec<RawFd> = plan.fds.iter().map(AsRawFd::as_raw_fd).collect();
    // Runs in the child between fork and exec: fcntl only (async-signal-safe,
    // no allocation).
    let keep_fds_across_exec = move || {
        for &fd in &fds {
            // SAFETY: fcntl on an fd the parent keeps open until the child
            // has exec'd; no memory is involved.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure is async-signal-safe (see above).
    unsafe {
        cmd.pre_exec(keep_fds_across_exec);
    }
    cmd
}

fn start_error(program: &Path, source: std::io::Error) -> QemuError {
    let hint = if source.kind() == std::io::ErrorKind::NotFound {
        " (install QEMU: apt-get install qemu-system-x86, or pass --qemu PATH)"
    } else {
        ""
    };
    QemuError::Start {
        program: program.to_path_buf(),
        source,
        hint,
    }
}

/// Start QEMU as a child (the lab's way).
pub fn spawn(plan: &QemuPlan, tweak: impl FnOnce(&mut Command)) -> Result<Child, QemuError> {
    let mut cmd = command(plan);
    tweak(&mut cmd);
    cmd.spawn().map_err(|e| start_error(&plan.program, e))
}

/// `qemu`: replace this process with QEMU (or print the command).
pub fn run(scope: &Scope, args: &QemuArgs) -> Result<(), QemuError> {
    let nic = NicOptions {
        queues: args.queues,
        vhost: args.vhost,
        device_opts: &args.device_opts,
        mac_override: None,
    };
    let plan = plan(
        scope,
        &args.interface,
        &args.qemu_bin,
        &nic,
        &args.qemu_args,
    )?;
    for note in &plan.notes {
        eprintln!("macvtapctl: {note}");
    }
    if args.dry_run {
        let mut words = vec![shell_quote(&plan.program.to_string_lossy())];
        words.extend(plan.args.iter().map(|a| shell_quote(a)));
        println!("{}", words.join(" "));
        eprintln!(
            "macvtapctl: (dry run: the fds above are open only in this process, which now exits)"
        );
        return Ok(());
    }
    let err = command(&plan).exec();
    Err(start_error(&plan.program, err))
}

/// Quote a word for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=,.:/@%+".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> MacAddr {
        MacAddr::parse_unicast("02:00:00:00:00:2a").unwrap()
    }

    #[test]
    fn one_queue_uses_fd_and_the_macvtap_mac() {
        let user = vec!["-m".to_string(), "512".to_string()];
        let args = build_args(&Nic {
            user_args: &user,
            fds: &[7],
            mac: mac(),
            vhost: false,
            accel: Some("tcg"),
            device_opts: &[],
        });
        assert_eq!(
            args,
            [
                "-accel",
                "tcg",
                "-m",
                "512",
                "-netdev",
                "tap,id=mvtnet0,fd=7,vhost=off",
                "-device",
                "virtio-net-pci,netdev=mvtnet0,mac=02:00:00:00:00:2a"
            ]
        );
    }

    #[test]
    fn several_queues_use_fds_and_multiqueue() {
        let opts = vec!["romfile=".to_string()];
        let args = build_args(&Nic {
            user_args: &[],
            fds: &[5, 6, 9],
            mac: mac(),
            vhost: true,
            accel: None,
            device_opts: &opts,
        });
        assert_eq!(args[1], "tap,id=mvtnet0,fds=5:6:9,vhost=on");
        assert_eq!(
            args[3],
            "virtio-net-pci,netdev=mvtnet0,mac=02:00:00:00:00:2a,mq=on,vectors=8,romfile="
        );
    }

    #[test]
    fn an_accelerator_the_user_chose_is_kept() {
        for given in [
            &["-accel", "kvm"][..],
            &["-enable-kvm"],
            &["-machine", "q35,accel=tcg"],
        ] {
            let user: Vec<String> = given.iter().map(|s| s.to_string()).collect();
            assert!(has_accelerator(&user), "{given:?}");
        }
        assert!(!has_accelerator(&["-m".into(), "1G".into()]));
    }

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(shell_quote("-m"), "-m");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
