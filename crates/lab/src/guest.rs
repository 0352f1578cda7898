//! The lab's guest: a Debian kernel and a busybox initramfs, built from
//! Debian packages on first use and cached.
//!
//! The kernel comes from `apt-get download linux-image-<ver>-amd64` (never
//! installed): its vmlinuz, decompressed to the ELF vmlinux when it carries
//! the PVH entry note (QEMU then boots it directly, seconds faster than
//! through the BIOS), the virtio-net modules and, for NoCloud seeds, the
//! virtio-blk and vfat ones. Debian builds them as modules and leaves `ip=`
//! autoconfiguration out, so the initramfs `/init` loads them and sets the
//! address itself: from the lab's `guestip=` word, the kernel's `ip=`
//! argument, a NoCloud seed or DHCP (see [`INIT`]).

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

/// The modules a NoCloud seed needs (a virtio disk with a vfat file
/// system), loaded only when the guest has a virtio disk.
pub const SEED_MODULES: [&str; 6] = [
    "virtio_blk",
    "fat",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
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
    #[error(
        "the kernel package lacks {0} (looked for the virtio-net, virtio-blk and vfat modules)"
    )]
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
    // Building takes a download and tens of seconds: say so on stderr (the
    // lab's stdout carries QEMU arguments for scripts).
    eprintln!(
        "guest: none cached in {}: building one (waits if another build holds {})",
        cache_dir.display(),
        lock_path.display()
    );
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
            eprintln!("guest: the kernel package lists are stale: apt-get update, then again");
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
    let dest = cache_dir.join(format!("guest-{}-{package}", content_key()));
    eprintln!("guest: downloading {package} (apt-get download) and unpacking its kernel");
    let built = build(&package, &work, &dest);
    if let Ok(image) = &built {
        eprintln!("guest: built {}", image.initramfs.display());
    }
    let _ = fs::remove_dir_all(&work);
    built
}

fn load(dir: &Path) -> Option<GuestImage> {
    let text = fs::read_to_string(dir.join("guest.json")).ok()?;
    let image: GuestImage = serde_json::from_str(&text).ok()?;
    (image.kernel.is_file() && image.initramfs.is_file()).then_some(image)
}

/// The newest cached guest whose initramfs has this build's scripts
/// (`guest-<content key>-<package>`; the key's hex digits sort before the
/// `guest-linux-…` of labs without one, which therefore keep their own).
fn newest_cached(cache_dir: &Path) -> Option<GuestImage> {
    let prefix = format!("guest-{}-", content_key());
    let mut dirs: Vec<PathBuf> = fs::read_dir(cache_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
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
    eprintln!("guest: apt has no package lists: apt-get update");
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
    for name in MODULES.into_iter().chain(SEED_MODULES) {
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
    patterns.extend(
        MODULES
            .iter()
            .chain(&SEED_MODULES)
            .map(|m| format!("*/{m}.ko*")),
    );
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

/// The guest's /init: modules, the services, then its identity (so that
/// whatever answers ping also answers TCP and HTTP), taken the way a real
/// guest takes it, first match wins:
///
/// 1. `guestip=CIDR`: the lab's own word, a static address, no gateway;
/// 2. `ip=<client>::<gw>:<netmask>:<host>:<dev>:off[:<dns0>[:<dns1>]]`:
///    the kernel's own form, applied by this script as Debian's
///    initramfs-tools does (the kernel has no `CONFIG_IP_PNP`; `ip=dhcp`
///    runs the DHCP client);
/// 3. a NoCloud seed: a virtio disk labelled `cidata` (vfat), whose v2
///    `network-config` entry matching eth0's MAC gives addresses, routes,
///    MTU and DNS, and whose `meta-data` gives `local-hostname` (a small awk
///    reader of the YAML macvtap-handover writes, not cloud-init);
/// 4. DHCPv4: busybox `udhcpc` with [`UDHCPC_SCRIPT`].
///
/// It signs its web page (`/`) with its name and eth0's MAC ([`page`]) and
/// describes what it applied in `/net.txt`.
const INIT: &str = r#"#!/bin/busybox sh
# macvtapctl lab guest: virtio-net, its identity from guestip=, ip=, a NoCloud
# seed or DHCP; ping, TCP echo on port 7 and HTTP on port 80.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
. /etc/guest.sh
load NET_MODULES
word() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | tail -n 1; }
export tag=$(word guesttag)
hostname DEFAULT_HOSTNAME
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n + 1)); done
export mac=$(cat /sys/class/net/eth0/address)
httpd -p 80 -h /www
nc -ll -p 7 -e cat &
ip link set lo up
ip link set eth0 up
static=$(word guestip)
kernel_ip=$(word ip)
if [ -n "$static" ]; then
    sign guestip
    ip addr add "$static" dev eth0
    show guestip
elif [ -n "$kernel_ip" ]; then
    kernel_ip "$kernel_ip"
elif ! nocloud; then
    dhcp
fi
while :; do sleep 3600; done
"#;

/// Shell functions /init and the DHCP client's script share.
const GUEST_LIB: &str = r#"# sourced by /init and /etc/udhcpc.script
load() { for m in "$@"; do insmod /lib/modules/$m.ko || echo "guest: insmod $m failed"; done; }

# sign VIA: the web page, written before the address is (so the first
# reply already has it): the guest's name, eth0's MAC, how it got its address.
sign() {
    echo "macvtapctl lab guest $tag mac $mac name $(hostname) via $1" >/www/index.html
}

# show VIA: the guest is ready; what it applied, on the console and in /net.txt.
show() {
    echo "BANNER ip=$(ip -4 -o addr show dev eth0 | awk '{print $4}') mac=$mac tag=$tag"
    {
        echo "via $1"
        echo "uptime $(cut -d' ' -f1 /proc/uptime)"
        echo "hostname $(hostname)"
        echo "mtu $(cat /sys/class/net/eth0/mtu)"
        ip -o addr show dev eth0
        ip route show
        ip -6 route show dev eth0
        cat /etc/resolv.conf 2>/dev/null
    } >/www/net.txt 2>&1
    sed 's/^/guest: /' /www/net.txt
}

# resolv "NAMESERVERS" "SEARCH DOMAINS"
resolv() {
    {
        [ -n "$2" ] && echo search $2
        for s in $1; do echo "nameserver $s"; done
    } >/etc/resolv.conf
}

# ip=<client>:<server>:<gw>:<netmask>:<host>:<dev>:<autoconf>:<dns0>:<dns1>
kernel_ip() {
    local IFS=:
    set -f
    set -- $1
    set +f
    local client=$1 gw=$3 netmask=$4 host=$5 dev=${6:-eth0} auto=$7 dns="$8 $9"
    IFS=' '
    case "$client:$auto" in
    dhcp:* | on:* | any:* | *:dhcp | *:on | *:any) dhcp; return ;;
    esac
    local prefix=$(ipcalc -p "$client" "${netmask:-255.255.255.255}" | sed 's/^PREFIX=//')
    [ -n "$host" ] && hostname "$host"
    resolv "$dns" ""
    sign ip=
    ip addr add "$client/$prefix" dev "$dev"
    [ -n "$gw" ] && ip route add default via "$gw" dev "$dev"
    show ip=
}

dhcp() {
    udhcpc -i eth0 -s /etc/udhcpc.script -f -q -T 1 -t 60 -O mtu -O staticroutes -O search
}

# yflat FILE: a block-style YAML file as path=value lines (list items get
# their index when they are maps; scalar items repeat the path). Enough for
# the network-config and meta-data macvtap-handover writes.
yflat() {
    awk '
    function unq(v) {
        sub(/^[ \t]+/, "", v); sub(/[ \t\r]+$/, "", v)
        if (v ~ /^".*"$/ || v ~ /^\047.*\047$/) v = substr(v, 2, length(v) - 2)
        return v
    }
    function path(   i, p) { p = ""; for (i = 1; i <= n; i++) p = p key[i] "."; return p }
    function keyval(rest, ind,   i, k, v) {
        i = index(rest, ": ")
        if (i) { k = substr(rest, 1, i - 1); v = unq(substr(rest, i + 2)) }
        else { k = substr(rest, 1, length(rest) - 1); v = "" }
        while (n > 0 && lvl[n] >= ind) n--
        if (v == "") { n++; key[n] = unq(k); lvl[n] = ind }
        else print path() unq(k) "=" v
    }
    /^[ \t]*(#|$)/ || /^(---|\.\.\.)/ { next }
    {
        match($0, /^ */); ind = RLENGTH; rest = substr($0, ind + 1); sub(/[ \t\r]+$/, "", rest)
        if (rest ~ /^-( |$)/) {
            while (n > 0 && lvl[n] > ind) n--
            p = path(); i = cnt[p]++
            rest = substr(rest, 3)
            if (index(rest, ": ") || rest ~ /:$/) { n++; key[n] = i; lvl[n] = ind + 1; keyval(rest, ind + 2) }
            else print substr(p, 1, length(p) - 1) "=" unq(rest)
        } else if (index(rest, ": ") || rest ~ /:$/) keyval(rest, ind)
    }' "$1"
}

# nocloud: apply the seed on the cidata disk; fails when there is none.
nocloud() {
    grep -qx 0x0002 /sys/bus/virtio/devices/*/device 2>/dev/null || return 1
    load SEED_MODULES
    local disk=$(findfs LABEL=cidata 2>/dev/null)
    [ -n "$disk" ] || { echo "guest: a virtio disk but no cidata label"; return 1; }
    mkdir -p /seed
    mount -t vfat -o ro "$disk" /seed || return 1
    yflat /seed/network-config >/run/network-config
    yflat /seed/meta-data >/run/meta-data
    local id= m
    for e in $(sed -n 's/^ethernets\.\([^.]*\)\.match\.macaddress=.*/\1/p' /run/network-config); do
        m=$(sed -n "s/^ethernets\.$e\.match\.macaddress=//p" /run/network-config | tr A-F a-f)
        [ "$m" = "$mac" ] && id=$e && break
    done
    [ -n "$id" ] || { echo "guest: no network-config entry for $mac"; return 1; }
    get() { sed -n "s/^ethernets\.$id\.$1=//p" /run/network-config; }
    local host=$(sed -n 's/^local-hostname=//p' /run/meta-data)
    [ -n "$host" ] && hostname "$host"
    local mtu=$(get mtu)
    [ -n "$mtu" ] && ip link set eth0 mtu "$mtu"
    resolv "$(get nameservers.addresses)" "$(get nameservers.search)"
    sign nocloud
    for a in $(get addresses); do ip addr add "$a" dev eth0; done
    local i=0 to via metric
    while to=$(get routes.$i.to) && [ -n "$to" ]; do
        via=$(get routes.$i.via)
        metric=$(get routes.$i.metric)
        ip route add "$to" ${via:+via "$via"} dev eth0 ${metric:+metric "$metric"}
        i=$((i + 1))
    done
    show nocloud
}
"#;

/// What udhcpc runs at each DHCP event (busybox's environment: `$ip`,
/// `$mask` as a prefix length, `$router`, `$staticroutes` (option 121),
/// `$mtu`, `$dns`, `$search`, `$domain`, `$hostname`, `$lease`).
pub const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
. /etc/guest.sh
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound | renew)
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    [ -n "$hostname" ] && hostname "$hostname"
    resolv "$dns" "${search:-$domain}"
    sign dhcp
    ip addr add "$ip/$mask" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    if [ -n "$staticroutes" ]; then
        # RFC 3442: with option 121 the client ignores option 3.
        set -- $staticroutes
        while [ $# -ge 2 ]; do
            if [ "$2" = 0.0.0.0 ]; then
                ip route add "$1" dev "$interface"
            else
                ip route add "$1" via "$2" dev "$interface"
            fi
            shift 2
        done
    else
        for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    fi
    echo "guest: dhcp lease $ip/$mask for ${lease}s"
    show dhcp
    ;;
esac
"#;

/// The name the guest has until its identity brings one.
pub const DEFAULT_HOSTNAME: &str = "macvtap-guest";

/// The guest's web page (`GET /`): `via` is `guestip`, `ip=`, `nocloud`
/// or `dhcp`.
pub fn page(tag: &str, mac: &str, name: &str, via: &str) -> String {
    format!("macvtapctl lab guest {tag} mac {mac} name {name} via {via}\n")
}

/// The scripts as they go into the initramfs.
fn scripts() -> [(&'static str, String); 3] {
    [
        (
            "init",
            INIT.replace("NET_MODULES", &MODULES.join(" "))
                .replace("DEFAULT_HOSTNAME", DEFAULT_HOSTNAME),
        ),
        (
            "etc/guest.sh",
            GUEST_LIB
                .replace("SEED_MODULES", &SEED_MODULES.join(" "))
                .replace("BANNER", READY_BANNER),
        ),
        ("etc/udhcpc.script", UDHCPC_SCRIPT.to_string()),
    ]
}

/// The cache key of the initramfs's own content (scripts and module
/// lists; the kernel package is the other half of the key): FNV-1a, 64
/// bits, stable across builds of the lab.
pub fn content_key() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, text) in scripts() {
        for b in name.bytes().chain(text.bytes()).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn initramfs(busybox: &[u8], modules: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut c = Cpio::new();
    for dir in [
        "bin",
        "dev",
        "etc",
        "proc",
        "run",
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
    for (path, text) in scripts() {
        c.file(path, 0o755, text.as_bytes());
    }
    for (name, bytes) in modules {
        c.file(&format!("lib/modules/{name}.ko"), 0o644, bytes);
    }
    c.finish()
}

/// How the guest gets its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestNet<'a> {
    /// `guestip=CIDR`: this address on eth0, no gateway.
    Static(&'a str),
    /// No word: the guest takes its identity from an `ip=` argument, a
    /// NoCloud seed disk or DHCP, as `macvtapctl handover` delivers it.
    Delivered,
}

/// The guest kernel's command line: its address from `net` and `tag` in
/// its banner and web page (what QEMU's `-append` and libvirt's
/// `<cmdline>` carry).
pub fn kernel_cmdline(net: GuestNet, tag: &str) -> Result<String, GuestError> {
    if let GuestNet::Static(ip) = net {
        let valid_ip = ip.split_once('/').is_some_and(|(a, p)| {
            a.parse::<std::net::Ipv4Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 32)
        });
        if !valid_ip {
            return Err(GuestError::BadIp(ip.into()));
        }
    }
    let valid_tag = !tag.is_empty()
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid_tag {
        return Err(GuestError::BadTag(tag.into()));
    }
    Ok(match net {
        GuestNet::Static(ip) => format!("console=ttyS0 quiet panic=-1 guestip={ip} guesttag={tag}"),
        GuestNet::Delivered => format!("console=ttyS0 quiet panic=-1 guesttag={tag}"),
    })
}

/// QEMU arguments that boot `image` with its address from `net`, console
/// on `serial`, and `tag` in its banner and web page.
pub fn qemu_args(
    image: &GuestImage,
    net: GuestNet,
    serial: &str,
    tag: &str,
) -> Result<Vec<String>, GuestError> {
    let cmdline = kernel_cmdline(net, tag)?;
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
        cmdline,
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
        let args = qemu_args(
            &image(),
            GuestNet::Static("10.201.0.10/24"),
            "file:/tmp/s.log",
            "abc-1",
        )
        .unwrap();
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
                    qemu_args(&image(), GuestNet::Static(bad), "null", "t"),
                    Err(GuestError::BadIp(_))
                ),
                "{bad}"
            );
        }
        for bad in ["", "a b", "a;reboot", "$(x)"] {
            assert!(
                matches!(
                    qemu_args(&image(), GuestNet::Static("10.0.0.1/8"), "null", bad),
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
        assert!(text.contains(&format!("load {}", SEED_MODULES.join(" "))));
        assert!(text.contains(&format!("echo \"{READY_BANNER} ip=")));
        assert!(text.contains("lib/modules/virtio.ko"));
        assert!(text.contains("etc/udhcpc.script"));
    }

    #[test]
    fn a_delivered_guest_gets_no_address_word() {
        let args = qemu_args(&image(), GuestNet::Delivered, "null", "t1").unwrap();
        let append = args.last().unwrap();
        assert_eq!(append, "console=ttyS0 quiet panic=-1 guesttag=t1");
    }

    #[test]
    fn the_cache_key_follows_the_scripts() {
        assert_eq!(content_key(), content_key());
        assert_eq!(content_key().len(), 16);
        assert!(content_key().as_str() < "linux");
    }

    /// The guest's YAML reader, run by the system's sh and awk on the form
    /// macvtap-handover's emitter writes (yaml-rust2: indented sequences,
    /// quoted MACs and IPv6 addresses) and on unindented sequences.
    #[test]
    fn the_guest_reads_a_network_config_as_path_value_lines() {
        let dir = std::env::temp_dir().join(format!("guest-yflat-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let lib = dir.join("guest.sh");
        fs::write(&lib, GUEST_LIB).unwrap();
        let yaml = dir.join("network-config");
        fs::write(
            &yaml,
            "---\nversion: 2\nethernets:\n  guest:\n    match:\n      macaddress: \"02:00:0A:00:00:05\"\n    \
             dhcp4: false\n    mtu: 1400\n    addresses:\n      - 10.88.0.5/16\n      - \"fd00::5/64\"\n    \
             routes:\n      - to: 0.0.0.0/0\n        via: 10.88.0.1\n      - to: 10.9.0.0/16\n        \
             via: 10.88.0.254\n        metric: 7\n    nameservers:\n      addresses:\n      - 10.0.0.53\n      \
             search:\n      - example.test\n",
        )
        .unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(". {}; yflat {}", lib.display(), yaml.display()))
            .output()
            .unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            text,
            "version=2\n\
             ethernets.guest.match.macaddress=02:00:0A:00:00:05\n\
             ethernets.guest.dhcp4=false\n\
             ethernets.guest.mtu=1400\n\
             ethernets.guest.addresses=10.88.0.5/16\n\
             ethernets.guest.addresses=fd00::5/64\n\
             ethernets.guest.routes.0.to=0.0.0.0/0\n\
             ethernets.guest.routes.0.via=10.88.0.1\n\
             ethernets.guest.routes.1.to=10.9.0.0/16\n\
             ethernets.guest.routes.1.via=10.88.0.254\n\
             ethernets.guest.routes.1.metric=7\n\
             ethernets.guest.nameservers.addresses=10.0.0.53\n\
             ethernets.guest.nameservers.search=example.test\n"
        );
    }
}
