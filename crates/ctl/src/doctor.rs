//! `doctor`: find the classic macvtap failures and say how to fix each.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use macvtap_net::{DeviceNumber, Link, MacAddr, MacvtapMode, Netlink};
use serde::Serialize;

use crate::cli::DoctorArgs;
use crate::host::{self, Kvm};
use crate::iface::{check_tap_node, TapNodeState};
use crate::scope::{Scope, ScopeError};

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error("--guest-mac and --guest-ip need --interface when {label} has {count} macvtaps")]
    WhichInterface { label: String, count: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Worth knowing, not a failure.
    Note,
    Problem,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `host` or the interface's name.
    pub subject: String,
    pub check: &'static str,
    pub status: Status,
    pub summary: String,
    pub why: Option<String>,
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub netns: Option<String>,
    pub problems: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn text(&self) -> String {
        let notes = self
            .findings
            .iter()
            .filter(|f| f.status == Status::Note)
            .count();
        let mut out = format!(
            "doctor: {} problem{}, {} note{}{}\n",
            self.problems,
            plural(self.problems),
            notes,
            plural(notes),
            self.netns
                .as_ref()
                .map(|n| format!(" (namespace {n:?})"))
                .unwrap_or_default()
        );
        for f in &self.findings {
            let tag = match f.status {
                Status::Ok => "ok",
                Status::Note => "note",
                Status::Problem => "PROBLEM",
            };
            out.push_str(&format!(
                "  {tag:<8} {:<18} {}\n",
                format!("{} {}", f.subject, f.check),
                f.summary
            ));
            if let Some(why) = &f.why {
                out.push_str(&format!("  {:<27} why: {why}\n", ""));
            }
            if let Some(fix) = &f.fix {
                for (i, line) in fix.lines().enumerate() {
                    let label = if i == 0 { "fix:" } else { "    " };
                    out.push_str(&format!("  {:<27} {label} {line}\n", ""));
                }
            }
        }
        out
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

struct Findings {
    list: Vec<Finding>,
}

impl Findings {
    fn add(
        &mut self,
        subject: &str,
        check: &'static str,
        status: Status,
        summary: String,
        why: Option<String>,
        fix: Option<String>,
    ) {
        self.list.push(Finding {
            subject: subject.into(),
            check,
            status,
            summary,
            why,
            fix,
        });
    }

    fn ok(&mut self, subject: &str, check: &'static str, summary: String) {
        self.add(subject, check, Status::Ok, summary, None, None);
    }
}

const TUNGETIFF_WHY: &str = "QEMU's `-netdev tap,fd=N` with `N<>/dev/tapX` then opens (or a shell \
     creates) a regular file and fails with \"TUNGETIFF ioctl() failed: Inappropriate ioctl for device\"";

/// libvirt 9's error when the named ethernet target is a macvtap whose
/// /dev/tap<ifindex> is missing: it falls back to creating a tap by that
/// name, which the kernel refuses (EINVAL).
pub fn libvirt_no_node(ifname: &str) -> String {
    format!("Unable to create tap device {ifname}")
}

/// libvirt's error on the same path when /dev/net/tun is missing as well.
pub const LIBVIRT_NO_TUN: &str = "Unable to open /dev/net/tun";

pub fn run(scope: &Scope, args: &DoctorArgs) -> Result<Report, DoctorError> {
    let mut f = Findings { list: Vec::new() };
    check_dev_mount(&mut f);
    check_kvm(&mut f);
    check_vhost(&mut f);

    let mut nl = scope.netlink()?;
    let sysfs = scope.sysfs()?;
    let targets: Vec<Link> = match &args.interface {
        Some(name) => vec![scope.macvtap(&mut nl, name)?],
        None => {
            let mut all: Vec<Link> = nl
                .links()
                .map_err(ScopeError::from)?
                .into_iter()
                .filter(|l| l.kind.as_deref() == Some("macvtap"))
                .collect();
            all.sort_by_key(|l| l.index);
            all
        }
    };
    if targets.len() != 1 && (args.guest_mac.is_some() || args.guest_ip.is_some()) {
        return Err(DoctorError::WhichInterface {
            label: scope.label().into(),
            count: targets.len(),
        });
    }
    if targets.is_empty() {
        f.add(
            "host",
            "macvtaps",
            Status::Note,
            format!("no macvtaps in {}", scope.label()),
            None,
            Some("macvtapctl create --lower DEV --name NAME".into()),
        );
    }
    for link in &targets {
        check_link_state(&mut f, link);
        check_lower(&mut f, &mut nl, link);
        match sysfs.tap_device_number(&link.name, link.index) {
            Ok(dev) => {
                check_tap_name(&mut f, link, dev);
                check_guest_mac(&mut f, link, dev, args.guest_mac);
            }
            Err(e) => f.add(
                &link.name,
                "device",
                Status::Problem,
                format!(
                    "cannot read the tap device number: {}",
                    macvtap_net::error_chain(&e)
                ),
                None,
                None,
            ),
        }
        if let Some(ip) = args.guest_ip {
            check_guest_ip(&mut f, &mut nl, link, ip);
        }
        check_host_reach(&mut f, &mut nl, link, args.guest_ip);
    }
    check_handovers(&mut f, &args.state_dir);
    let problems = f
        .list
        .iter()
        .filter(|x| x.status == Status::Problem)
        .count();
    Ok(Report {
        netns: scope.name().map(str::to_string),
        problems,
        findings: f.list,
    })
}

/// A `macvtapctl handover` half done: a record whose apply never finished,
/// or an applied one whose supervisor is gone (QEMU may run on, but nobody
/// will give the container its identity back).
fn check_handovers(f: &mut Findings, state_dir: &str) {
    let records = match crate::handover::records(state_dir) {
        Ok(r) => r,
        Err(e) => {
            f.add(
                "host",
                "handover",
                Status::Note,
                format!(
                    "cannot read the handover records under {state_dir}: {}",
                    macvtap_net::error_chain(&e)
                ),
                None,
                None,
            );
            return;
        }
    };
    for r in records {
        let subject = r.interface.clone();
        let netns = r.netns.display().to_string();
        let undo = r
            .supervisor
            .as_ref()
            .map(|(info, _)| info.undo_command.clone())
            .unwrap_or_else(|| {
                format!(
                    "macvtapctl --netns {netns} handover --undo --interface {} --state-dir {state_dir}",
                    r.interface
                )
            });
        if !r.netns_alive {
            f.add(
                &subject,
                "handover",
                Status::Problem,
                format!("record {} names a network namespace that is gone ({netns})", r.record.display()),
                Some("everything the handover made went with the namespace; only the record is left, and it blocks nothing but itself".into()),
                Some(format!("rm {}", r.record.display())),
            );
            continue;
        }
        let running = r.supervisor.as_ref().is_some_and(|(_, held)| *held);
        if let Some(owner) = &r.cni {
            // The chained CNI plugin's: its DEL undoes it; a launcher only uses it.
            let del = crate::handover::cni_undo_hint(owner);
            match r.phase {
                macvtap_handover::Phase::Intent => f.add(
                    &subject,
                    "handover",
                    Status::Problem,
                    format!("the CNI plugin's handover of {} in {netns} half done: its ADD stopped before it finished", r.interface),
                    Some("the container may have lost its address and routes; the record has them".into()),
                    Some(del),
                ),
                macvtap_handover::Phase::Applied => f.ok(
                    &subject,
                    "handover",
                    format!(
                        "{} in {netns} is handed over by the CNI plugin ({}); {del} undoes it",
                        r.interface,
                        match r.supervisor.as_ref() {
                            Some((info, true)) => format!("a launcher, pid {}, runs", info.pid),
                            _ => "no launcher runs".to_string(),
                        }
                    ),
                ),
            }
            continue;
        }
        let supervised = r
            .supervisor
            .as_ref()
            .is_none_or(|(info, _)| info.supervised);
        match r.phase {
            macvtap_handover::Phase::Intent if !running => f.add(
                &subject,
                "handover",
                Status::Problem,
                format!("handover of {} in {netns} half done: the apply stopped before it finished", r.interface),
                Some("the container may have lost its address and routes; the record has them".into()),
                Some(undo),
            ),
            macvtap_handover::Phase::Applied if supervised && !running => f.add(
                &subject,
                "handover",
                Status::Problem,
                format!(
                    "{} in {netns} is handed over but its supervisor{} is gone",
                    r.interface,
                    r.supervisor.as_ref().map(|(i, _)| format!(" (pid {})", i.pid)).unwrap_or_default()
                ),
                Some("nobody will give the container its identity back when the VM stops (a QEMU it started may still run: stop it first)".into()),
                Some(undo),
            ),
            macvtap_handover::Phase::Applied if !supervised => f.add(
                &subject,
                "handover",
                Status::Note,
                format!("{} in {netns} is handed over for libvirt", r.interface),
                None,
                Some(format!("when the VM is gone: {undo}")),
            ),
            _ => f.ok(
                &subject,
                "handover",
                format!(
                    "{} in {netns} is handed over; its supervisor (pid {}) runs",
                    r.interface,
                    r.supervisor.as_ref().map(|(i, _)| i.pid).unwrap_or(0)
                ),
            ),
        }
    }
}

fn check_dev_mount(f: &mut Findings) {
    match host::dev_mount().as_deref() {
        Some("devtmpfs") => f.ok("host", "/dev", "devtmpfs is mounted on /dev".into()),
        Some(other) => f.add(
            "host",
            "/dev",
            Status::Note,
            format!("/dev is a {other}, not devtmpfs (a container?): /dev/tapN nodes do not appear by themselves"),
            Some(TUNGETIFF_WHY.into()),
            Some("open tap devices by number (`macvtapctl qemu`), or have the runtime map the node in".into()),
        ),
        None => f.add(
            "host",
            "/dev",
            Status::Problem,
            "nothing is mounted on /dev: no /dev/tapN node will exist".into(),
            Some(TUNGETIFF_WHY.into()),
            Some("mount -t devtmpfs devtmpfs /dev   (or open by number: `macvtapctl qemu`)".into()),
        ),
    }
}

fn check_kvm(f: &mut Findings) {
    let tcg = "QEMU falls back to -accel tcg: it works, many times slower";
    match host::kvm() {
        Kvm::Usable => f.ok("host", "kvm", "/dev/kvm is usable and the CPU has vmx/svm".into()),
        Kvm::NoDevice => f.add(
            "host",
            "kvm",
            Status::Note,
            "KVM missing: /dev/kvm does not exist".into(),
            Some(format!("QEMU with -accel kvm fails: \"Could not access KVM kernel module\"; {tcg}")),
            Some("modprobe kvm_intel (or kvm_amd); enable VT-x/AMD-V in the firmware; or use -accel tcg".into()),
        ),
        Kvm::NoHardware => f.add(
            "host",
            "kvm",
            Status::Note,
            "KVM disabled: /dev/kvm exists but the CPU shows no vmx/svm flag".into(),
            Some(format!("hardware virtualization is not exposed (a VM without nested virtualization); a KVM guest fails or hangs; {tcg}")),
            Some("enable nested virtualization for this machine, or run QEMU with -accel tcg (`macvtapctl qemu` picks it)".into()),
        ),
        Kvm::Denied(e) => f.add(
            "host",
            "kvm",
            Status::Problem,
            format!("KVM permission denied: /dev/kvm: {e}"),
            Some("QEMU with -accel kvm fails: \"Could not access KVM kernel module: Permission denied\"".into()),
            Some("add the user that runs QEMU to the kvm group (usermod -aG kvm USER), or fix the node's mode (0660 root:kvm)".into()),
        ),
    }
}

fn check_vhost(f: &mut Findings) {
    match host::vhost_net() {
        Ok(()) => f.ok("host", "vhost-net", "/dev/vhost-net is usable".into()),
        Err(why) => f.add(
            "host",
            "vhost-net",
            Status::Note,
            format!("vhost-net unavailable: {why}"),
            Some("QEMU must move packets in userspace (slower); `macvtapctl qemu --vhost auto` falls back by itself".into()),
            None,
        ),
    }
}

fn check_link_state(f: &mut Findings, link: &Link) {
    if link.up {
        f.ok(&link.name, "state", "the macvtap is up".into());
    } else {
        f.add(
            &link.name,
            "state",
            Status::Problem,
            "the macvtap is down".into(),
            Some("a down macvtap drops every frame in both directions".into()),
            Some(format!("ip link set {} up", link.name)),
        );
    }
}

fn check_lower(f: &mut Findings, nl: &mut Netlink, link: &Link) {
    let lower = match (link.lower_index, link.link_netnsid) {
        (Some(index), None) => nl.link_by_index(index).ok().flatten(),
        _ => None,
    };
    let Some(lower) = lower else {
        // The lower device lives in another namespace: the macvtap's
        // carrier mirrors the lower device's.
        if link.carrier || !link.up {
            f.ok(
                &link.name,
                "lower",
                "the lower device (in another namespace) has carrier".into(),
            );
        } else {
            f.add(
                &link.name,
                "lower",
                Status::Problem,
                "no carrier: the lower device (in another namespace) is down or has no link".into(),
                Some("a macvtap only passes frames while its lower device is up with carrier".into()),
                Some("bring the uplink up in its namespace (ip link set DEV up) and check its cable/peer".into()),
            );
        }
        return;
    };
    if !lower.up {
        f.add(
            &link.name,
            "lower",
            Status::Problem,
            format!("lower device {} is down", lower.name),
            Some("a macvtap only passes frames while its lower device is up".into()),
            Some(format!("ip link set {} up", lower.name)),
        );
    } else if !lower.carrier {
        f.add(
            &link.name,
            "lower",
            Status::Problem,
            format!("lower device {} has no carrier", lower.name),
            Some("no link on the uplink (cable, switch port, or the veth peer is down)".into()),
            Some(format!("check {}'s cable/switch port (or bring its peer up); `ip link show {}` shows NO-CARRIER", lower.name, lower.name)),
        );
    } else {
        f.ok(
            &link.name,
            "lower",
            format!("lower device {} is up with carrier", lower.name),
        );
    }
}

fn check_tap_name(f: &mut Findings, link: &Link, dev: DeviceNumber) {
    let (path, state) = check_tap_node(link.index, dev);
    let p = path.display();
    let by_number = format!(
        "open the device by number: `macvtapctl qemu --interface {}` (or mknod a private node: mknod PATH c {} {})",
        link.name, dev.major, dev.minor
    );
    match state {
        TapNodeState::Matches => f.ok(&link.name, "tap node", format!("{p} is this macvtap's device {dev}")),
        TapNodeState::Missing => f.add(
            &link.name,
            "tap node",
            Status::Problem,
            format!("{p} does not exist (the device is {dev})"),
            Some(format!(
                "libvirt and `3<>{p}` open the node by name. libvirt (`<interface type='ethernet'>` \
                 with `<target dev='{name}' managed='no'/>`) does not say the node is missing: it takes \
                 {name} for a plain tap and fails with \"{LIBVIRT_NO_NODE}: Invalid argument\", or, \
                 without /dev/net/tun, \"{LIBVIRT_NO_TUN}\"; {TUNGETIFF_WHY}",
                name = link.name,
                LIBVIRT_NO_NODE = libvirt_no_node(&link.name),
            )),
            Some(format!(
                "in a pod (virt-launcher): request the device plugin's resource, so the runtime maps \
                 {p} from Allocate's answer (the CNI plugin's standalone mode cannot give a pod \
                 its device node); by hand: {by_number}; or mount devtmpfs on /dev"
            )),
        ),
        TapNodeState::NotCharDevice(kind) => f.add(
            &link.name,
            "tap node",
            Status::Problem,
            format!("{p} is {kind}, not a character device"),
            Some(TUNGETIFF_WHY.into()),
            Some(format!("rm {p}; {by_number}")),
        ),
        TapNodeState::OtherDevice(other) => f.add(
            &link.name,
            "tap node",
            Status::Problem,
            format!("{p} is device {other}, but this macvtap's is {dev}: it points at another namespace's macvtap"),
            Some("/dev/tapN names are global while ifindexes are per namespace: the first macvtap with ifindex N got the name; opening it attaches the guest to someone else's network".into()),
            Some(format!("{by_number}; or recreate the macvtap with an unused ifindex (macvtapctl create --ifindex N)")),
        ),
        TapNodeState::Unreadable(e) => f.add(
            &link.name,
            "tap node",
            Status::Note,
            format!("cannot check {p}: {e}"),
            None,
            Some(by_number),
        ),
    }
}

fn check_guest_mac(f: &mut Findings, link: &Link, dev: DeviceNumber, given: Option<MacAddr>) {
    let Some(mac) = link.mac else { return };
    let mut guests: Vec<(String, Option<MacAddr>)> = Vec::new();
    let mut others = Vec::new();
    if let Some(g) = given {
        guests.push(("--guest-mac".into(), Some(g)));
    } else {
        for holder in tap_holders(dev) {
            let who = format!("{} (pid {})", holder.program(), holder.pid);
            match guest_nic(&holder.cmdline, holder.fd) {
                GuestNic::Mac(m) => guests.push((who, Some(m))),
                GuestNic::DefaultMac => guests.push((who, None)),
                GuestNic::NotFound => others.push(who),
            }
        }
    }
    if guests.is_empty() && !others.is_empty() {
        f.add(
            &link.name,
            "guest mac",
            Status::Note,
            format!(
                "the tap device is held by {}, whose command line shows no NIC on it; pass --guest-mac to compare",
                others.join(", ")
            ),
            None,
            None,
        );
    } else if guests.is_empty() {
        f.add(
            &link.name,
            "guest mac",
            Status::Note,
            "no process holds this tap device; pass --guest-mac to compare the guest's MAC".into(),
            None,
            None,
        );
    }
    for (who, guest) in guests {
        match guest {
            Some(g) if g == mac => f.ok(
                &link.name,
                "guest mac",
                format!("{who} gives the guest {g}, the macvtap's MAC"),
            ),
            other => {
                let guest = other.map(|g| g.to_string()).unwrap_or_else(|| {
                    "QEMU's default 52:54:00:12:34:5x (no mac= on its NIC)".into()
                });
                f.add(
                    &link.name,
                    "guest mac",
                    Status::Problem,
                    format!("guest MAC {guest} ({who}) differs from {}'s MAC {mac}", link.name),
                    Some("a macvtap delivers unicast frames only to its own MAC: the guest sends fine but never receives a reply (silent 100% loss, no error anywhere)".into()),
                    Some(format!(
                        "give the guest NIC mac={mac} (`macvtapctl qemu` always does), or set the macvtap to the guest's: ip link set {} address GUEST_MAC",
                        link.name
                    )),
                );
            }
        }
    }
}

fn check_guest_ip(f: &mut Findings, nl: &mut Netlink, link: &Link, ip: IpAddr) {
    let links = nl.links().unwrap_or_default();
    let clash = links.iter().find(|l| {
        nl.addresses(l.index)
            .map(|addrs| addrs.iter().any(|(a, _)| *a == ip))
            .unwrap_or(false)
    });
    match clash {
        Some(other) => f.add(
            &link.name,
            "guest ip",
            Status::Problem,
            format!("the guest's IP {ip} is also on {} in this namespace", other.name),
            Some(format!(
                "two stacks answer ARP for {ip}: peers reach whichever answered last, so connections break at random (the pod's eth0 address is not the guest's)"
            )),
            Some(format!(
                "give the guest its own address (DHCP on the LAN or a free static one), or remove it from {}: ip addr del {ip}/PREFIX dev {}",
                other.name, other.name
            )),
        ),
        None => f.ok(&link.name, "guest ip", format!("no interface in this namespace has the guest's IP {ip}")),
    }
}

fn check_host_reach(f: &mut Findings, nl: &mut Netlink, link: &Link, guest_ip: Option<IpAddr>) {
    let shares_lower = matches!(
        link.macvtap_mode,
        Some(MacvtapMode::Bridge | MacvtapMode::Vepa | MacvtapMode::Private | MacvtapMode::Source)
    );
    let (Some(lower_index), None, true) = (link.lower_index, link.link_netnsid, shares_lower)
    else {
        return;
    };
    let Ok(Some(lower)) = nl.link_by_index(lower_index) else {
        return;
    };
    let host_addrs: Vec<(IpAddr, u8)> = nl
        .addresses(lower_index)
        .unwrap_or_default()
        .into_iter()
        .filter(|(a, _)| a.is_ipv4())
        .collect();
    let Some((host_ip, prefix)) = host_addrs.first().copied() else {
        return;
    };
    let links = nl.links().unwrap_or_default();
    let shim = links.iter().find(|l| {
        l.kind.as_deref() == Some("macvlan")
            && l.lower_index == Some(lower_index)
            && l.link_netnsid.is_none()
            && nl
                .addresses(l.index)
                .map(|a| !a.is_empty())
                .unwrap_or(false)
    });
    if let Some(shim) = shim {
        f.ok(
            &link.name,
            "host reach",
            format!(
                "macvlan {} on {} lets this host reach the guests",
                shim.name, lower.name
            ),
        );
        return;
    }
    let dest = guest_ip
        .map(|ip| format!("{ip}/32"))
        .unwrap_or_else(|| format!("GUEST_IP/32   # or the LAN prefix {host_ip}/{prefix}"));
    f.add(
        &link.name,
        "host reach",
        Status::Note,
        format!("this host ({host_ip} on {}) cannot reach guests on {}", lower.name, link.name),
        Some(format!(
            "frames from {} never loop back to its own macvtaps/macvlans in {} mode; only other machines (and other macvtaps) reach the guest",
            lower.name,
            link.macvtap_mode.map(|m| m.to_string()).unwrap_or_default()
        )),
        Some(format!(
            "a host-side macvlan shim in bridge mode on the same lower device:\n\
             ip link add mvshim0 link {lower} type macvlan mode bridge\n\
             ip addr add {host_ip}/32 dev mvshim0\n\
             ip link set mvshim0 up\n\
             ip route add {dest} dev mvshim0",
            lower = lower.name
        )),
    );
}

/// A process that holds a tap device open.
#[derive(Debug, Clone)]
pub struct Holder {
    pub pid: u32,
    pub fd: i32,
    pub cmdline: Vec<String>,
}

impl Holder {
    fn program(&self) -> String {
        self.cmdline
            .first()
            .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
            .unwrap_or_else(|| "process".into())
    }
}

/// Every process (and fd) holding the character device `dev`.
pub fn tap_holders(dev: DeviceNumber) -> Vec<Holder> {
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(num) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let is_dev = fs::metadata(fd.path()).is_ok_and(|m| {
                m.file_type().is_char_device()
                    && libc::major(m.rdev()) == dev.major
                    && libc::minor(m.rdev()) == dev.minor
            });
            if is_dev {
                let cmdline = fs::read(entry.path().join("cmdline"))
                    .map(|raw| {
                        raw.split(|&b| b == 0)
                            .filter(|a| !a.is_empty())
                            .map(|a| String::from_utf8_lossy(a).into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                found.push(Holder {
                    pid,
                    fd: num,
                    cmdline,
                });
            }
        }
    }
    found
}

/// `key=value` options of a QEMU option string (`tap,id=n0,fd=3`), or of
/// its JSON form (`{"type":"tap","id":"n0","fd":"3"}`, as libvirt writes).
fn qemu_opts(arg: &str) -> Vec<(String, String)> {
    if arg.trim_start().starts_with('{') {
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str(arg) else {
            return Vec::new();
        };
        return map
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect();
    }
    arg.split(',')
        .enumerate()
        .map(|(i, part)| match part.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            // The first bare word is the type/driver.
            None if i == 0 => ("type".to_string(), part.to_string()),
            None => (part.to_string(), String::new()),
        })
        .collect()
}

fn opt<'a>(opts: &'a [(String, String)], key: &str) -> Option<&'a str> {
    opts.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// What a QEMU command line says about the NIC on tap fd `fd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestNic {
    Mac(MacAddr),
    /// A NIC without `mac=`: QEMU gives it 52:54:00:12:34:5x.
    DefaultMac,
    /// No NIC uses that fd (not QEMU, or a form we do not read).
    NotFound,
}

pub fn guest_nic(cmdline: &[String], fd: i32) -> GuestNic {
    let values = |flag: &str| -> Vec<Vec<(String, String)>> {
        cmdline
            .windows(2)
            .filter(|w| w[0] == flag || w[0] == format!("-{flag}"))
            .map(|w| qemu_opts(&w[1]))
            .collect()
    };
    let uses_fd = |o: &[(String, String)]| {
        let fd = fd.to_string();
        opt(o, "fd") == Some(fd.as_str())
            || opt(o, "fds").is_some_and(|list| list.split(':').any(|x| x == fd))
    };
    let mac = |o: &[(String, String)]| match opt(o, "mac").map(MacAddr::parse_unicast) {
        Some(Ok(m)) => GuestNic::Mac(m),
        _ => GuestNic::DefaultMac,
    };
    // -nic tap,fd=N,mac=... carries both halves.
    if let Some(nic) = values("-nic").into_iter().find(|o| uses_fd(o)) {
        return mac(&nic);
    }
    let Some(id) = values("-netdev")
        .into_iter()
        .find(|o| uses_fd(o))
        .and_then(|o| opt(&o, "id").map(str::to_string))
    else {
        return GuestNic::NotFound;
    };
    values("-device")
        .into_iter()
        .find(|o| opt(o, "netdev") == Some(id.as_str()))
        .map_or(GuestNic::NotFound, |o| mac(&o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> MacAddr {
        MacAddr::parse_unicast(s).unwrap()
    }

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn finds_the_mac_of_the_nic_on_our_fd() {
        let cmd = words(
            "qemu -netdev tap,id=a,fd=3 -device e1000,netdev=a,mac=02:00:00:00:00:01 \
             -netdev tap,id=b,fds=5:6 -device virtio-net-pci,netdev=b,mac=02:00:00:00:00:02,mq=on",
        );
        assert_eq!(guest_nic(&cmd, 3), GuestNic::Mac(mac("02:00:00:00:00:01")));
        assert_eq!(guest_nic(&cmd, 6), GuestNic::Mac(mac("02:00:00:00:00:02")));
        assert_eq!(guest_nic(&cmd, 9), GuestNic::NotFound);
    }

    #[test]
    fn reads_nic_shorthand_and_libvirt_json() {
        let nic = words("qemu -nic tap,fd=4,model=virtio-net-pci,mac=02:00:00:00:00:04");
        assert_eq!(guest_nic(&nic, 4), GuestNic::Mac(mac("02:00:00:00:00:04")));
        let json = vec![
            "qemu".to_string(),
            "-netdev".to_string(),
            r#"{"type":"tap","fd":"27","id":"hostnet0"}"#.to_string(),
            "-device".to_string(),
            r#"{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"02:00:00:00:00:27"}"#.to_string(),
        ];
        assert_eq!(
            guest_nic(&json, 27),
            GuestNic::Mac(mac("02:00:00:00:00:27"))
        );
    }

    #[test]
    fn a_nic_without_mac_is_reported_as_the_default() {
        let cmd = words("qemu -netdev tap,id=a,fd=3 -device virtio-net-pci,netdev=a");
        assert_eq!(guest_nic(&cmd, 3), GuestNic::DefaultMac);
        let not_qemu = words("sleep 30");
        assert_eq!(guest_nic(&not_qemu, 3), GuestNic::NotFound);
    }

    #[test]
    fn the_report_counts_and_explains() {
        let report = Report {
            netns: Some("pod".into()),
            problems: 1,
            findings: vec![Finding {
                subject: "net1".into(),
                check: "guest mac",
                status: Status::Problem,
                summary: "differs".into(),
                why: Some("silent loss".into()),
                fix: Some("line one\nline two".into()),
            }],
        };
        let text = report.text();
        assert!(
            text.starts_with("doctor: 1 problem, 0 notes (namespace \"pod\")"),
            "{text}"
        );
        assert!(text.contains("PROBLEM  net1 guest mac"), "{text}");
        assert!(text.contains("why: silent loss"), "{text}");
        assert!(
            text.contains("fix: line one") && text.contains("line two"),
            "{text}"
        );
    }
}
