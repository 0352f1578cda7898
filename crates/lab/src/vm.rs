//! The lab's QEMU process: started by us, in its own process group (so a
//! terminal's Ctrl-C reaches only macvtapctl, which then stops it), and
//! killed by its PID when dropped. With `--vmm libvirt` QEMU is libvirt's
//! (daemonized, not our child): killed by its PID, then libvirtd.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::guest::READY_BANNER;
use crate::libvirt::{self, Launcher};

#[derive(Debug)]
enum Backend {
    Qemu(Child),
    Libvirt { launcher: Launcher, domain: String },
}

#[derive(Debug)]
pub struct Vm {
    backend: Backend,
    pub pid: u32,
    pub serial: PathBuf,
    pub log: PathBuf,
    keep: bool,
}

impl Vm {
    pub fn new(child: Child, serial: &Path, log: &Path) -> Vm {
        Vm {
            pid: child.id(),
            backend: Backend::Qemu(child),
            serial: serial.to_path_buf(),
            log: log.to_path_buf(),
            keep: false,
        }
    }

    /// The domain `domain` whose QEMU (`qemu_pid`) libvirt started.
    pub fn libvirt(
        launcher: Launcher,
        domain: &str,
        qemu_pid: u32,
        serial: &Path,
        log: &Path,
    ) -> Vm {
        Vm {
            pid: qemu_pid,
            backend: Backend::Libvirt {
                launcher,
                domain: domain.to_string(),
            },
            serial: serial.to_path_buf(),
            log: log.to_path_buf(),
            keep: false,
        }
    }

    /// libvirtd's PID, when libvirt runs the VM.
    pub fn libvirtd_pid(&self) -> Option<u32> {
        match &self.backend {
            Backend::Libvirt { launcher, .. } => Some(launcher.pid()),
            Backend::Qemu(_) => None,
        }
    }

    /// `Some(status)` once QEMU has exited.
    pub fn exited(&mut self) -> Option<String> {
        match &mut self.backend {
            Backend::Qemu(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                _ => None,
            },
            Backend::Libvirt { domain, .. } => {
                (!libvirt::is_domain_qemu(self.pid, domain)).then(|| {
                    format!(
                        "QEMU (pid {}) of libvirt's domain {domain} is gone",
                        self.pid
                    )
                })
            }
        }
    }

    /// Whether the guest has printed its ready banner.
    pub fn guest_ready(&self) -> bool {
        fs::read_to_string(&self.serial).is_ok_and(|s| s.contains(READY_BANNER))
    }

    /// The last lines of the guest console and of QEMU's own output.
    pub fn tails(&self) -> String {
        let tail = |p: &Path| {
            let text = fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.is_empty() {
                return "(empty)".to_string();
            }
            lines[lines.len().saturating_sub(15)..].join("\n    ")
        };
        format!(
            "guest console ({}):\n    {}\nQEMU output ({}):\n    {}",
            self.serial.display(),
            tail(&self.serial),
            self.log.display(),
            tail(&self.log)
        )
    }

    /// Leave it running when the lab exits (`--keep`).
    pub fn keep(&mut self) {
        self.keep = true;
        if let Backend::Libvirt { launcher, .. } = &mut self.backend {
            launcher.keep();
        }
    }

    /// Stop QEMU (by its PID) and reap it; returns how long that took.
    pub fn stop(&mut self) -> Duration {
        let started = Instant::now();
        match &mut self.backend {
            Backend::Qemu(child) => {
                if let Ok(None) = child.try_wait() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            Backend::Libvirt { launcher, domain } => {
                libvirt::kill_domain_qemu(self.pid, domain);
                launcher.stop();
            }
        }
        started.elapsed()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.keep {
            self.stop();
        }
    }
}
