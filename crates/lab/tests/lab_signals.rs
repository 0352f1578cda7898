//! Ctrl-C in the middle of the lab (while the VM boots) removes everything
//! the lab made: QEMU (by its PID), the CNI attachment, the device plugin
//! (by its PID), the namespaces and the lab directory; the exit status
//! says which signal ended it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{alive, cni_plugin, device_plugin, eventually, ChildGuard};

#[test]
fn sigint_while_the_vm_boots_removes_everything() {
    cni_plugin();
    device_plugin();
    let mut lab = ChildGuard(
        Command::new(common::lab_path())
            .args(["--vm", "always", "--device-plugin", "always"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = lab.0.stdout.take().unwrap();
    let mut namespaces = Vec::new();
    let mut lab_dir = None;
    let mut daemon_pid = None;
    let mut qemu_pid = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("== namespaces ") {
            // "== namespaces A (...) --veth-- B (...), and an empty pod C"
            namespaces = rest
                .split_whitespace()
                .filter(|w| w.starts_with("mvlab-"))
                .map(str::to_string)
                .collect();
        }
        if let Some(dir) = line.strip_prefix("== lab directory ") {
            lab_dir = Some(dir.trim().to_string());
        }
        if let Some((_, rest)) = line
            .split_once("(pid ")
            .filter(|_| line.starts_with("== device plugin "))
        {
            daemon_pid = rest.split(')').next().and_then(|p| p.parse::<u32>().ok());
        }
        if let Some(rest) = line.strip_prefix("== QEMU (pid ") {
            qemu_pid = rest.split(')').next().and_then(|p| p.parse::<u32>().ok());
            break;
        }
    }
    let qemu_pid = qemu_pid.expect("the lab started QEMU");
    assert!(alive(qemu_pid));
    let daemon_pid = daemon_pid.expect("the lab started the device plugin");
    assert!(alive(daemon_pid));
    assert_eq!(namespaces.len(), 3, "{namespaces:?}");
    // SAFETY: kill(2) on the PID of our own child.
    assert_eq!(unsafe { libc::kill(lab.pid() as i32, libc::SIGINT) }, 0);
    let status = lab.0.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut lab.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted by signal 2"), "{stderr}");

    assert!(
        eventually(Duration::from_secs(5), || !alive(qemu_pid)),
        "QEMU (pid {qemu_pid}) survived Ctrl-C"
    );
    assert!(
        !alive(daemon_pid),
        "the device plugin (pid {daemon_pid}) survived Ctrl-C"
    );
    for ns in &namespaces {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "{ns} survived Ctrl-C"
        );
    }
    let dir = lab_dir.expect("the lab named its directory");
    assert!(!Path::new(&dir).exists(), "{dir} survived Ctrl-C");
}
