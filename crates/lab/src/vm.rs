//! The lab's QEMU process: started by us, in its own process group (so a
//! terminal's Ctrl-C reaches only macvtapctl, which then stops it), and
//! killed by its PID when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::guest::READY_BANNER;

#[derive(Debug)]
pub struct Vm {
    child: Child,
    pub pid: u32,
    pub serial: PathBuf,
    pub log: PathBuf,
    keep: bool,
}

impl Vm {
    pub fn new(child: Child, serial: &Path, log: &Path) -> Vm {
        Vm {
            pid: child.id(),
            child,
            serial: serial.to_path_buf(),
            log: log.to_path_buf(),
            keep: false,
        }
    }

    /// `Some(status)` once QEMU has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
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
    }

    /// Stop QEMU (by its PID) and reap it; returns how long that took.
    pub fn stop(&mut self) -> Duration {
        let started = Instant::now();
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
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
