//! `--vmm libvirt`: the guest as KubeVirt's virt-launcher runs it. A
//! private `libvirtd` runs inside the pod's network namespace and a mount
//! namespace of its own whose `/dev` holds `/dev/tap<ifindex>` as the
//! runtime maps the device plugin's node (same device number, owner and
//! mode as the DeviceSpec's `host_path`); the domain's NIC is
//! `<interface type='ethernet'><target dev='net1' managed='no'/>`, so
//! libvirt itself opens the node. As root (`qemu:///system`) or as uid 107
//! (`qemu:///session`, as KubeVirt runs it).
//!
//! Nothing of the host's libvirt is used: in that mount namespace `/run`,
//! `/var/lib`, `/var/log`, `/var/cache` and `/etc/libvirt` are directories
//! of the lab's, and `/etc/passwd` and `/etc/group` copies that know
//! `libvirt-qemu` (Debian's libvirtd will not start without that user even
//! when QEMU runs as root). The namespace ends with the last of libvirtd
//! and QEMU, which the lab stops by PID.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use macvtap_net::MacAddr;

/// The user KubeVirt's virt-launcher (and its QEMU) runs as.
pub const LAUNCHER_UID: u32 = 107;
const SOCKET_WAIT: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("libvirtd exited ({status}) before its socket appeared; its log {log}:\n{tail}")]
    DaemonExited {
        status: String,
        log: String,
        tail: String,
    },
    #[error("libvirtd's socket {0} did not appear within {1:?}")]
    NoSocket(String, Duration),
    /// virsh's own words: what libvirt said about the domain.
    #[error("virsh create failed: {0}")]
    Create(String),
    #[error("libvirt started the domain but its QEMU pid file {0} is unreadable")]
    NoQemuPid(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LibvirtError {
    let what = what.into();
    move |source| LibvirtError::Io { what, source }
}

/// Which libvirt, as which user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibvirtMode {
    /// libvirtd as root, `qemu:///system`, QEMU as root.
    System,
    /// libvirtd and QEMU as uid 107, `qemu:///session` (KubeVirt's way).
    Session,
}

impl LibvirtMode {
    pub fn uri(self) -> &'static str {
        match self {
            LibvirtMode::System => "qemu:///system",
            LibvirtMode::Session => "qemu:///session",
        }
    }
}

/// What the launcher's mount namespace gets.
#[derive(Debug, Clone)]
pub struct LauncherSpec<'a> {
    /// The pod's network namespace, by its name under /run/netns.
    pub netns: &'a str,
    /// A new directory for libvirt's files (created here).
    pub dir: &'a Path,
    pub mode: LibvirtMode,
    /// `/dev/tap<ifindex>` made from this node as the runtime maps a
    /// DeviceSpec; `None` leaves it out (what a pod without the device
    /// plugin's resource gets).
    pub tap: Option<(u32, &'a Path)>,
    /// Whether `/dev/net/tun` is there (KubeVirt maps it into every
    /// virt-launcher).
    pub tun: bool,
    /// The guest image's directory, bound into `dir` (the launcher's
    /// `/var/cache` is the lab's, so the host's is out of sight).
    pub image_dir: &'a Path,
}

/// The launcher's shell half: runs as root inside `ip netns exec` (which
/// makes a mount namespace whose mounts do not reach the host), makes the
/// private /dev and libvirt's directories, then execs libvirtd (as uid 107
/// for the session).
const LAUNCHER_SH: &str = r#"set -eu
T=$1 MODE=$2 TUN=$3 IMAGE=$4 TAP_IFINDEX=$5 TAP_NODE=$6
mkdir -p "$T/dev" "$T/run" "$T/var/lib" "$T/var/log" "$T/var/cache" "$T/etc-libvirt" "$T/image"
mount -t tmpfs -o mode=755 launcher-dev "$T/dev"
for d in null zero full random urandom kvm; do
    [ -e "/dev/$d" ] || continue
    touch "$T/dev/$d"; mount --bind "/dev/$d" "$T/dev/$d"
done
if [ "$TUN" = yes ]; then
    mkdir "$T/dev/net"; touch "$T/dev/net/tun"; mount --bind /dev/net/tun "$T/dev/net/tun"
fi
if [ -n "$TAP_NODE" ]; then
    # As runc maps a device: a node with the host node's number, owner and mode.
    set -- $(stat -c '%t %T %u %g %a' "$TAP_NODE")
    mknod "$T/dev/tap$TAP_IFINDEX" c "$((0x$1))" "$((0x$2))"
    chown "$3:$4" "$T/dev/tap$TAP_IFINDEX"; chmod "$5" "$T/dev/tap$TAP_IFINDEX"
fi
mount --bind "$IMAGE" "$T/image"
mount --rbind "$T/dev" /dev
for d in run var/lib var/log var/cache; do mount --bind "$T/$d" "/$d"; done
mount --bind "$T/etc-libvirt" /etc/libvirt
cp /etc/passwd "$T/passwd"; cp /etc/group "$T/group"
grep -q '^libvirt-qemu:' "$T/passwd" || echo 'libvirt-qemu:x:107:107::/nonexistent:/usr/sbin/nologin' >> "$T/passwd"
grep -q '^libvirt-qemu:' "$T/group" || echo 'libvirt-qemu:x:107:' >> "$T/group"
mount --bind "$T/passwd" /etc/passwd; mount --bind "$T/group" /etc/group
# No virtlogd (stdio to files), no cgroups or namespaces of libvirt's own
# (the launcher's are the point), no security driver.
QEMU_CONF='namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"'
if [ "$MODE" = system ]; then
    printf 'auth_unix_ro = "none"\nauth_unix_rw = "none"\n' > /etc/libvirt/libvirtd.conf
    printf '%s\nuser = "root"\ngroup = "root"\nsecurity_driver = "none"\n' "$QEMU_CONF" > /etc/libvirt/qemu.conf
    exec libvirtd
fi
mkdir -p "$T/home/.config/libvirt" "$T/xdg-run"
printf '%s\n' "$QEMU_CONF" > "$T/home/.config/libvirt/qemu.conf"
chown -R 107:107 "$T/home" "$T/xdg-run"; chmod 700 "$T/xdg-run"
export HOME="$T/home" XDG_RUNTIME_DIR="$T/xdg-run" XDG_CONFIG_HOME="$T/home/.config" XDG_CACHE_HOME="$T/home/.cache"
exec setpriv --reuid 107 --regid 107 --clear-groups libvirtd
"#;

/// A running private libvirtd (its PID is the child's: the script execs
/// it). Dropping it stops it by PID.
#[derive(Debug)]
pub struct Launcher {
    child: Option<Child>,
    pid: u32,
    dir: PathBuf,
    mode: LibvirtMode,
    log: PathBuf,
    /// Start to the socket's appearance.
    pub start_took: Duration,
}

impl Launcher {
    pub fn start(spec: &LauncherSpec) -> Result<Launcher, LibvirtError> {
        let dir = spec.dir.to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        // uid 107 must reach its files below this directory.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("chmod {}", dir.display())))?;
        let script = dir.join("launcher.sh");
        fs::write(&script, LAUNCHER_SH).map_err(io_err(format!("write {}", script.display())))?;
        let log = dir.join("libvirtd.log");
        let out = fs::File::create(&log).map_err(io_err(format!("create {}", log.display())))?;
        let err = out.try_clone().map_err(io_err("libvirtd log"))?;
        let (ifindex, node) = match spec.tap {
            Some((i, n)) => (i.to_string(), n.display().to_string()),
            None => (String::new(), String::new()),
        };
        let started = Instant::now();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new("ip")
                .args(["netns", "exec", spec.netns, "sh"])
                .arg(&script)
                .arg(&dir)
                .arg(match spec.mode {
                    LibvirtMode::System => "system",
                    LibvirtMode::Session => "session",
                })
                .arg(if spec.tun { "yes" } else { "no" })
                .arg(spec.image_dir)
                .args([ifindex, node])
                .env_clear()
                .env(
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                )
                .env("LC_ALL", "C")
                // A terminal's Ctrl-C reaches the lab, which stops this.
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(io_err("start ip netns exec ... libvirtd"))?
        };
        let mut launcher = Launcher {
            pid: child.id(),
            child: Some(child),
            dir,
            mode: spec.mode,
            log,
            start_took: Duration::ZERO,
        };
        let socket = launcher.socket();
        while !socket.exists() {
            if let Some(child) = &mut launcher.child {
                if let Ok(Some(status)) = child.try_wait() {
                    launcher.child = None;
                    return Err(LibvirtError::DaemonExited {
                        status: status.to_string(),
                        log: launcher.log.display().to_string(),
                        tail: tail(&launcher.log),
                    });
                }
            }
            if started.elapsed() > SOCKET_WAIT {
                return Err(LibvirtError::NoSocket(
                    socket.display().to_string(),
                    SOCKET_WAIT,
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        launcher.start_took = started.elapsed();
        Ok(launcher)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn mode(&self) -> LibvirtMode {
        self.mode
    }

    /// The launcher's mount namespace (for `nsenter --mount`).
    pub fn mount_ns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/mnt", self.pid))
    }

    /// Where a file of the guest image is, as libvirt sees it.
    pub fn image_path(&self, file: &str) -> PathBuf {
        self.dir.join("image").join(file)
    }

    /// A directory the VM's user may write (the serial console's file).
    pub fn vm_dir(&self) -> PathBuf {
        match self.mode {
            LibvirtMode::System => self.dir.clone(),
            LibvirtMode::Session => self.dir.join("home"),
        }
    }

    /// libvirtd's socket; the host sees it through the lab's directories.
    pub fn socket(&self) -> PathBuf {
        match self.mode {
            LibvirtMode::System => self.dir.join("run/libvirt/libvirt-sock"),
            LibvirtMode::Session => self.dir.join("xdg-run/libvirt/libvirt-sock"),
        }
    }

    fn qemu_pid_file(&self, name: &str) -> PathBuf {
        match self.mode {
            LibvirtMode::System => self.dir.join(format!("run/libvirt/qemu/{name}.pid")),
            LibvirtMode::Session => self
                .dir
                .join(format!("xdg-run/libvirt/qemu/run/{name}.pid")),
        }
    }

    /// libvirt's log of the domain's QEMU (its command line and stderr).
    pub fn qemu_log(&self, name: &str) -> PathBuf {
        match self.mode {
            LibvirtMode::System => self.dir.join(format!("var/log/libvirt/qemu/{name}.log")),
            LibvirtMode::Session => self
                .dir
                .join(format!("home/.cache/libvirt/qemu/log/{name}.log")),
        }
    }

    /// `virsh create`: a transient domain; returns its QEMU's PID.
    pub fn create(&self, name: &str, xml: &str) -> Result<u32, LibvirtError> {
        let file = self.dir.join(format!("{name}.xml"));
        fs::write(&file, xml).map_err(io_err(format!("write {}", file.display())))?;
        let uri = format!("{}?socket={}", self.mode.uri(), self.socket().display());
        let out = Command::new("virsh")
            .args(["-q", "-c", &uri, "create"])
            .arg(&file)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("run virsh (apt-get install libvirt-clients)"))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let said: Vec<&str> = said
                .lines()
                .map(|l| l.trim_start_matches("error: ").trim())
                .filter(|l| !l.is_empty())
                .collect();
            return Err(LibvirtError::Create(said.join(": ")));
        }
        let pid_file = self.qemu_pid_file(name);
        let pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.ok_or_else(|| {
            // Without its PID the lab could not stop that QEMU: libvirt does.
            let _ = Command::new("virsh")
                .args(["-q", "-c", &uri, "destroy", name])
                .stdin(Stdio::null())
                .output();
            LibvirtError::NoQemuPid(pid_file.display().to_string())
        })
    }

    /// Stop libvirtd: SIGTERM by PID, SIGKILL after a grace period.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            signal(self.pid, libc::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Leave libvirtd running (`--keep`).
    pub fn keep(&mut self) {
        self.child = None;
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill has no memory preconditions; the PID is one we started.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether `pid` is still the QEMU of domain `name` (libvirt daemonizes
/// QEMU, so it is not our child: its command line identifies it).
pub fn is_domain_qemu(pid: u32, name: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let words: Vec<&[u8]> = c.split(|b| *b == 0).collect();
        let want = format!("guest={name},debug-threads=on");
        words.contains(&want.as_bytes())
    }) && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Kill domain `name`'s QEMU by PID and wait until it is gone.
pub fn kill_domain_qemu(pid: u32, name: &str) -> Duration {
    let started = Instant::now();
    if is_domain_qemu(pid, name) {
        signal(pid, libc::SIGKILL);
        while is_domain_qemu(pid, name) && started.elapsed() < STOP_GRACE {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    started.elapsed()
}

/// The last lines of a log.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "(empty)".into();
    }
    lines[lines.len().saturating_sub(15)..].join("\n    ")
}

/// What the domain boots.
#[derive(Debug, Clone)]
pub struct DomainSpec<'a> {
    pub name: &'a str,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    /// The pod's macvtap (`net1`) and the MAC the guest uses.
    pub interface: &'a str,
    pub mac: MacAddr,
    pub serial: &'a Path,
}

/// A transient TCG domain with direct kernel boot whose NIC is
/// `macvtapctl libvirt-xml`'s ethernet interface.
pub fn domain_xml(spec: &DomainSpec) -> String {
    let iface = macvtapctl::libvirt::ethernet(spec.interface, spec.mac, None);
    // The lab installs no iPXE ROM (the guest boots its kernel directly).
    let iface = iface.replace("</interface>", "  <rom enabled='no'/>\n</interface>");
    let iface: String = iface.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "<domain type='qemu'>\n  \
           <name>{name}</name>\n  \
           <memory unit='MiB'>256</memory>\n  \
           <vcpu>1</vcpu>\n  \
           <os>\n    \
             <type arch='x86_64' machine='q35'>hvm</type>\n    \
             <kernel>{kernel}</kernel>\n    \
             <initrd>{initrd}</initrd>\n    \
             <cmdline>{cmdline}</cmdline>\n  \
           </os>\n  \
           <on_reboot>destroy</on_reboot>\n  \
           <devices>\n    \
             <emulator>/usr/bin/qemu-system-x86_64</emulator>\n\
         {iface}    \
             <serial type='file'><source path='{serial}'/></serial>\n    \
             <memballoon model='none'/>\n  \
           </devices>\n\
         </domain>\n",
        name = text(spec.name),
        kernel = text(&spec.kernel.display().to_string()),
        initrd = text(&spec.initrd.display().to_string()),
        cmdline = text(spec.cmdline),
        serial = text(&spec.serial.display().to_string()),
    )
}

/// Escape XML text (and attribute values in single quotes).
fn text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_carries_kubevirts_interface_and_escapes_its_text() {
        let mac = MacAddr::parse_unicast("02:00:00:00:00:01").unwrap();
        let xml = domain_xml(&DomainSpec {
            name: "lab",
            kernel: Path::new("/k"),
            initrd: Path::new("/i"),
            cmdline: "console=ttyS0 a<b",
            interface: "net1",
            mac,
            serial: Path::new("/s'x"),
        });
        assert!(xml.contains("<target dev='net1' managed='no'/>"), "{xml}");
        assert!(xml.contains("<interface type='ethernet'>"), "{xml}");
        assert!(
            xml.contains("<rom enabled='no'/>\n    </interface>"),
            "{xml}"
        );
        assert!(
            xml.contains("<cmdline>console=ttyS0 a&lt;b</cmdline>"),
            "{xml}"
        );
        assert!(xml.contains("path='/s&apos;x'"), "{xml}");
    }
}
