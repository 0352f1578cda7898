//! The lab's guest: a Debian kernel and a busybox initramfs, built from
//! Debian packages on first use and cached.
//!
//! The kernel comes from `apt-get download linux-image-<ver>-amd64` (never
//! installed): its vmlinuz, decompressed to the ELF vmlinux when it carries
//! the PVH entry note (QEMU then boots it directly, seconds faster than
//! through the BIOS), and the virtio-net modules. Debian builds virtio as
//! modules and leaves `ip=` autoconfiguration out, so the initramfs `/init`
//! loads them and sets the address itself from a `guestip=` word on the
//! kernel command line.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::cpio::Cpio;
use crate::elf;

/// The modules virtio-net needs, in load order.
pub const MODULES: [&str; 8] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// The guest prints this on its console once it answers.
pub const READY_BANNER: &str = "macvtapctl-guest-ready";

/// Where a static busybox lives once busybox-static is installed.
const BUSYBOX: &str = "/bin/busybox";

/// Start of an XZ stream (inside a bzImage: the compressed kernel).
const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("cannot find Debian's kernel package ({0}); the lab guest needs apt (Debian/Ubuntu) with package lists: apt-get update")]
    NoKernelPackage(String),
    #[error("{program} failed: {detail}")]
    Tool { program: String, detail: String },
    #[error("cannot download the kernel package: {0}")]
    Download(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{0} is not a static busybox: apt-get install busybox-static (the guest has no libraries)"
    )]
    BusyboxNotStatic(PathBuf),
    #[error("the kernel package lacks {0} (looked for the virtio-net modules)")]
    MissingFile(String),
    #[error("invalid --ip {0:?}: want an IPv4 address with prefix length, like 10.201.0.10/24")]
    BadIp(String),
    #[error("invalid guest tag {0:?}: letters, digits, '-', '_' and '.' only")]
    BadTag(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> GuestError {
    let what = what.into();
    move |source| GuestError::Io { what, source }
}

/// A cached guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestImage {
    /// e.g. linux-image-6.1.0-56-amd64
    pub package: String,
    pub kernel: PathBuf,
    /// "pvh-elf" (decompressed vmlinux) or "bzimage".
    pub kernel_format: String,
    pub initramfs: PathBuf,
}

/// The cached guest, and how long it took to get it (building when absent).
#[derive(Debug, Clone)]
pub struct Ensured {
    pub image: GuestImage,
    pub built: bool,
    pub took: Duration,
}

/// The cached guest, built from Debian's current kernel when there is
/// none (any cached kernel will do: asking apt alone costs half a second;
/// remove the cache directory to rebuild). Concurrent callers wait for one
/// builder (a lock file in the cache).
pub fn ensure(cache_dir: &Path) -> Result<Ensured, GuestError> {
    let started = Instant::now();
    if let Some(image) = newest_cached(cache_dir) {
        return Ok(Ensured {
            image,
            built: false,
            took: started.elapsed(),
        });
    }
    fs::create_dir_all(cache_dir).map_err(io_err(format!("create {}", cache_dir.display())))?;
    let lock_path = cache_dir.join(".lock");
    let lock_file =
        File::create(&lock_path).map_err(io_err(format!("create {}", lock_path.display())))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| io_err(format!("lock {}", lock_path.display()))(e.into()))?;
    // Someone else may have built one while we waited for the lock.
    if let Some(image) = newest_cached(cache_dir) {
        return Ok(Ensured {
            image,
            built: false,
            took: started.elapsed(),
        });
    }
    let image = match build_current(cache_dir) {
        // Package lists older than the mirror name a kernel it no longer
        // has: refresh them once and ask again.
        Err(GuestError::Download(_)) => {
            tool(
                Command::new("apt-get")
                    .args(["update", "-qq"])
                    .stdin(Stdio::null()),
            )?;
            build_current(cache_dir)?
        }
        other => other?,
    };
    Ok(Ensured {
        image,
        built: true,
        took: started.elapsed(),
    })
}

/// Build the guest from the kernel package apt names now.
fn build_current(cache_dir: &Path) -> Result<GuestImage, GuestError> {
    let package = kernel_package()?;
    let work = cache_dir.join(format!(".build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(io_err(format!("create {}", work.display())))?;
    let built = build(&package, &work, &cache_dir.join(format!("guest-{package}")));
    let _ = fs::remove_dir_all(&work);
    built
}

fn load(dir: &Path) -> Option<GuestImage> {
    let text = fs::read_to_string(dir.join("guest.json")).ok()?;
    let image: GuestImage = serde_json::from_str(&text).ok()?;
    (image.kernel.is_file() && image.initramfs.is_file()).then_some(image)
}

fn newest_cached(cache_dir: &Path) -> Option<GuestImage> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(cache_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("guest-"))
        })
        .collect();
    dirs.sort();
    dirs.iter().rev().find_map(|d| load(d))
}

/// Output of a tool, or the end of its stderr as the error.
fn tool(cmd: &mut Command) -> Result<Vec<u8>, GuestError> {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(
        cmd.get_args()
            .take(2)
            .map(|a| a.to_string_lossy().into_owned()),
    );
    let program = words.join(" ");
    let out = cmd.output().map_err(|e| GuestError::Tool {
        program: program.clone(),
        detail: macvtap_net::error_chain(&e),
    })?;
    if !out.status.success() {
        return Err(GuestError::Tool {
            program,
            detail: format!("{}: {}", out.status, last_lines(&out.stderr, 3)),
        });
    }
    Ok(out.stdout)
}

fn last_lines(text: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// `linux-image-<ver>-amd64`, the package `linux-image-amd64` depends on.
fn kernel_package() -> Result<String, GuestError> {
    let ask = || -> Result<Option<String>, GuestError> {
        let out = tool(
            Command::new("apt-cache")
                .args(["depends", "linux-image-amd64"])
                .stdin(Stdio::null()),
        )?;
        Ok(String::from_utf8_lossy(&out).lines().find_map(|l| {
            let dep = l.trim().strip_prefix("Depends:")?.trim();
            dep.starts_with("linux-image-").then(|| dep.to_string())
        }))
    };
    match ask() {
        Ok(Some(p)) => return Ok(p),
        Err(GuestError::Tool { detail, .. }) if detail.contains("No such file") => {
            return Err(GuestError::NoKernelPackage(detail))
        }
        _ => {}
    }
    // Empty package lists on a fresh machine: fetch them once.
    tool(
        Command::new("apt-get")
            .args(["update", "-qq"])
            .stdin(Stdio::null()),
    )
    .map_err(|e| GuestError::NoKernelPackage(macvtap_net::error_chain(&e)))?;
    ask()?.ok_or_else(|| {
        GuestError::NoKernelPackage("apt-cache depends linux-image-amd64 names no kernel".into())
    })
}

fn build(package: &str, work: &Path, dest: &Path) -> Result<GuestImage, GuestError> {
    // The busybox check comes first: it needs no download.
    let busybox = fs::read(BUSYBOX).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => GuestError::BusyboxNotStatic(BUSYBOX.into()),
        _ => io_err(format!("read {BUSYBOX}"))(e),
    })?;
    if !elf::is_static(&busybox) {
        return Err(GuestError::BusyboxNotStatic(BUSYBOX.into()));
    }
    // apt drops to its _apt user for downloads, which cannot write here.
    tool(
        Command::new("apt-get")
            .args(["download", "-qq", "-o", "APT::Sandbox::User=root", package])
            .stdin(Stdio::null())
            .current_dir(work),
    )
    .map_err(|e| GuestError::Download(macvtap_net::error_chain(&e)))?;
    let deb = fs::read_dir(work)
        .map_err(io_err(format!("read {}", work.display())))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| GuestError::MissingFile(format!("{package}.deb after apt-get download")))?;
    let tree = work.join("tree");
    fs::create_dir_all(&tree).map_err(io_err(format!("create {}", tree.display())))?;
    extract(&deb, &tree)?;

    let vmlinuz = find_file(&tree.join("boot"), |n| n.starts_with("vmlinuz-"))
        .ok_or_else(|| GuestError::MissingFile("boot/vmlinuz-*".into()))?;
    let out = work.join("out");
    fs::create_dir_all(&out).map_err(io_err(format!("create {}", out.display())))?;
    let bzimage = fs::read(&vmlinuz).map_err(io_err(format!("read {}", vmlinuz.display())))?;
    let (kernel_bytes, kernel_format) = match pvh_vmlinux(&bzimage) {
        Some(vmlinux) => (vmlinux, "pvh-elf"),
        None => (bzimage, "bzimage"),
    };
    write(&out.join("kernel"), &kernel_bytes)?;

    let mut modules = Vec::new();
    for name in MODULES {
        let path = find_module(&tree.join("lib/modules"), name)
            .ok_or_else(|| GuestError::MissingFile(format!("{name}.ko")))?;
        modules.push((name, module_bytes(&path)?));
    }
    write(&out.join("initramfs.cpio"), &initramfs(&busybox, &modules))?;

    fs::create_dir_all(dest.parent().unwrap_or(Path::new("/")))
        .map_err(io_err("create the cache directory"))?;
    let image = GuestImage {
        package: package.to_string(),
        kernel: dest.join("kernel"),
        kernel_format: kernel_format.to_string(),
        initramfs: dest.join("initramfs.cpio"),
    };
    let meta =
        serde_json::to_vec_pretty(&image).map_err(|e| io_err("encode guest.json")(e.into()))?;
    write(&out.join("guest.json"), &meta)?;
    // Appear whole or not at all.
    let _ = fs::remove_dir_all(dest);
    fs::rename(&out, dest).map_err(io_err(format!("rename to {}", dest.display())))?;
    Ok(image)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), GuestError> {
    fs::write(path, bytes).map_err(io_err(format!("write {}", path.display())))
}

/// `dpkg-deb --fsys-tarfile DEB | tar -x` of the kernel and the modules.
fn extract(deb: &Path, into: &Path) -> Result<(), GuestError> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| GuestError::Tool {
            program: "dpkg-deb".into(),
            detail: macvtap_net::error_chain(&e),
        })?;
    let Some(tar_input) = dpkg.stdout.take() else {
        return Err(GuestError::Tool {
            program: "dpkg-deb".into(),
            detail: "no stdout".into(),
        });
    };
    let mut patterns = vec!["./boot/vmlinuz-*".to_string()];
    patterns.extend(MODULES.iter().map(|m| format!("*/{m}.ko*")));
    let tar = tool(
        Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(into)
            .arg("--wildcards")
            .args(&patterns)
            .stdin(tar_input),
    );
    let dpkg_status = dpkg.wait();
    tar?;
    match dpkg_status {
        Ok(s) if s.success() => Ok(()),
        other => Err(GuestError::Tool {
            program: "dpkg-deb --fsys-tarfile".into(),
            detail: format!("{other:?}"),
        }),
    }
}

fn find_file(dir: &Path, want: impl Fn(&str) -> bool + Copy) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, want) {
                return Some(found);
            }
        } else if entry.file_name().to_str().is_some_and(want) {
            return Some(path);
        }
    }
    None
}

fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    let plain = format!("{name}.ko");
    find_file(dir, |n| {
        n == plain
            || n.strip_prefix(plain.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// A module's bytes, decompressed when Debian ships it compressed
/// (busybox insmod loads only plain .ko files).
fn module_bytes(path: &Path) -> Result<Vec<u8>, GuestError> {
    let name = path.to_string_lossy();
    let decompressor = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match decompressor {
        Some(tool_name) => tool(Command::new(tool_name).arg("-dc").arg(path)),
        None => fs::read(path).map_err(io_err(format!("read {}", path.display()))),
    }
}

/// The ELF kernel inside a bzImage, when it is XZ-compressed and carries
/// the PVH entry note; `None` means "boot the bzImage".
fn pvh_vmlinux(bzimage: &[u8]) -> Option<Vec<u8>> {
    let start = bzimage
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)?;
    // --single-stream: the bzImage goes on after the XZ stream.
    let mut xz = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = xz.stdin.take()?;
    let payload = bzimage[start..].to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&payload);
    });
    let mut vmlinux = Vec::new();
    let read = xz.stdout.take()?.read_to_end(&mut vmlinux);
    let _ = writer.join();
    let status = xz.wait().ok()?;
    (read.is_ok() && status.success() && elf::has_pvh_note(&vmlinux)).then_some(vmlinux)
}

/// The guest's /init: modules, then the services, then the address (so
/// that whatever answers ping also answers TCP and HTTP).
const INIT: &str = r#"#!/bin/busybox sh
# macvtapctl lab guest: virtio-net, the address from guestip= on the kernel
# command line, ping, TCP echo on port 7 and HTTP on port 80.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
for m in MODULES; do
    insmod /lib/modules/$m.ko || echo "guest: insmod $m failed"
done
word() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p"; }
ip=$(word guestip)
tag=$(word guesttag)
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n + 1)); done
mac=$(cat /sys/class/net/eth0/address)
printf 'macvtapctl lab guest %s mac %s\n' "$tag" "$mac" >/www/index.html
httpd -p 80 -h /www
nc -ll -p 7 -e cat &
ip link set lo up
ip link set eth0 up
ip addr add "$ip" dev eth0
echo "BANNER ip=$ip mac=$mac tag=$tag"
while :; do sleep 3600; done
"#;

fn initramfs(busybox: &[u8], modules: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let init = INIT
        .replace("MODULES", &MODULES.join(" "))
        .replace("BANNER", READY_BANNER);
    let mut c = Cpio::new();
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "www",
        "lib",
        "lib/modules",
    ] {
        c.dir(dir, 0o755);
    }
    // The kernel opens /dev/console for init before anything is mounted.
    c.char_device("dev/console", 0o600, 5, 1);
    c.file("bin/busybox", 0o755, busybox);
    c.file("init", 0o755, init.as_bytes());
    for (name, bytes) in modules {
        c.file(&format!("lib/modules/{name}.ko"), 0o644, bytes);
    }
    c.finish()
}

/// QEMU arguments that boot `image` with address `ip` (CIDR), console on
/// `serial`, and `tag` in its banner and web page.
pub fn qemu_args(
    image: &GuestImage,
    ip: &str,
    serial: &str,
    tag: &str,
) -> Result<Vec<String>, GuestError> {
    let valid_ip = ip.split_once('/').is_some_and(|(a, p)| {
        a.parse::<std::net::Ipv4Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 32)
    });
    if !valid_ip {
        return Err(GuestError::BadIp(ip.into()));
    }
    let valid_tag = !tag.is_empty()
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid_tag {
        return Err(GuestError::BadTag(tag.into()));
    }
    let mut args: Vec<String> = [
        "-M",
        "q35",
        "-m",
        "256",
        "-smp",
        "1",
        "-display",
        "none",
        "-nodefaults",
        "-no-reboot",
        "-serial",
        serial,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "-kernel".to_string(),
        image.kernel.display().to_string(),
        "-initrd".to_string(),
        image.initramfs.display().to_string(),
        "-append".to_string(),
        format!("console=ttyS0 quiet panic=-1 guestip={ip} guesttag={tag}"),
    ]);
    Ok(args)
}

/// Make a file executable by everyone (for scripts the lab leaves behind).
pub fn make_executable(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> GuestImage {
        GuestImage {
            package: "linux-image-x".into(),
            kernel: "/c/kernel".into(),
            kernel_format: "pvh-elf".into(),
            initramfs: "/c/initramfs.cpio".into(),
        }
    }

    #[test]
    fn qemu_args_carry_the_address_and_tag_on_the_command_line() {
        let args = qemu_args(&image(), "10.201.0.10/24", "file:/tmp/s.log", "abc-1").unwrap();
        let append = args.last().unwrap();
        assert!(
            append.contains("guestip=10.201.0.10/24 guesttag=abc-1"),
            "{append}"
        );
        assert!(args.windows(2).any(|w| w == ["-serial", "file:/tmp/s.log"]));
        assert!(args.windows(2).any(|w| w == ["-kernel", "/c/kernel"]));
    }

    #[test]
    fn refuses_addresses_and_tags_the_init_script_cannot_take() {
        for bad in ["10.201.0.10", "10.201.0.10/33", "fe80::1/64", "x/24"] {
            assert!(
                matches!(
                    qemu_args(&image(), bad, "null", "t"),
                    Err(GuestError::BadIp(_))
                ),
                "{bad}"
            );
        }
        for bad in ["", "a b", "a;reboot", "$(x)"] {
            assert!(
                matches!(
                    qemu_args(&image(), "10.0.0.1/8", "null", bad),
                    Err(GuestError::BadTag(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_init_script_loads_every_module_and_announces_itself() {
        let cpio = initramfs(b"busybox", &[("virtio", b"ko".to_vec())]);
        let text = String::from_utf8_lossy(&cpio);
        assert!(text.contains(&MODULES.join(" ")));
        assert!(text.contains(&format!("echo \"{READY_BANNER} ip=")));
        assert!(text.contains("lib/modules/virtio.ko"));
    }
}
