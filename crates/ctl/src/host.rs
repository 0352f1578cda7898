//! Facts about this host that decide how QEMU can run: KVM, vhost-net and
//! the /dev mount.

use std::fs;
use std::io;

use crate::tap::can_open_rw;

/// Whether QEMU can use KVM here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kvm {
    Usable,
    /// No /dev/kvm: the kvm modules are not loaded (or virtualization is
    /// off in the firmware).
    NoDevice,
    /// /dev/kvm exists but the CPU shows no vmx/svm: hardware
    /// virtualization is not exposed (a VM without nested virtualization).
    /// QEMU with -accel kvm then fails or hangs.
    NoHardware,
    /// /dev/kvm cannot be opened by this user.
    Denied(String),
}

impl std::fmt::Display for Kvm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kvm::Usable => f.write_str("KVM is usable"),
            Kvm::NoDevice => f.write_str("no /dev/kvm"),
            Kvm::NoHardware => f.write_str("the CPU shows no vmx/svm"),
            Kvm::Denied(e) => write!(f, "/dev/kvm: {e}"),
        }
    }
}

pub fn kvm() -> Kvm {
    let cpu_flags = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hardware = cpu_flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    match can_open_rw("/dev/kvm") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Kvm::NoDevice,
        Err(e) => Kvm::Denied(e.to_string()),
        Ok(_) if !hardware => Kvm::NoHardware,
        Ok(_) => Kvm::Usable,
    }
}

/// Whether vhost-net can be used (`/dev/vhost-net` opens read-write).
pub fn vhost_net() -> Result<(), String> {
    can_open_rw("/dev/vhost-net")
        .map(|_| ())
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                "/dev/vhost-net does not exist (this kernel has no vhost_net; `modprobe vhost_net` where it is a module)".into()
            }
            _ => format!("/dev/vhost-net cannot be opened: {e}"),
        })
}

/// The filesystem type mounted on /dev, if any (from /proc/self/mountinfo).
pub fn dev_mount() -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mountpoint opts [optional...] - fstype source superopts
    // The last mount on /dev is the visible one.
    info.lines()
        .rev()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let mount_point = fields.nth(4)?;
            let fstype = line.split(" - ").nth(1)?.split_whitespace().next()?;
            Some((mount_point.to_string(), fstype.to_string()))
        })
        .find(|(mp, _)| mp == "/dev")
        .map(|(_, fstype)| fstype)
}
