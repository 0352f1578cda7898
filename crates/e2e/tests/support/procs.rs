//! Clean-up helpers for what a runtime leaves when a test fails half-way:
//! its helper processes (found by the test's own unique temp path in their
//! command line, ended by PID) and mounts below the test's temp dir.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// PIDs of processes whose command line mentions `needle` (a path unique to
/// one test), never this process.
pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .is_ok_and(|c| c.contains(needle))
        })
        .collect()
}

/// SIGKILL to one process by PID.
pub fn kill(pid: i32) {
    // SAFETY: kill(2) with a PID and a signal number; no memory involved.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Whether a process with this PID is still there (and not a zombie).
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            // "pid (comm) S ...": the state follows the last ')'.
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Kills every process mentioning `needle`, by PID, and waits (bounded)
/// until they are gone. Returns what it killed.
pub fn kill_mentioning(needle: &str) -> Vec<i32> {
    let pids = pids_mentioning(needle);
    for &p in &pids {
        kill(p);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    pids
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    let mut found: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let octal = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(octal, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount at or below `dir` (lazy unmount, deepest first),
/// so the directory can be removed. Returns what it unmounted.
pub fn unmount_under(dir: &Path) -> Vec<String> {
    let mounts = mounts_under(dir);
    for m in &mounts {
        if let Ok(c) = CString::new(m.as_str()) {
            // SAFETY: umount2 with a valid NUL-terminated path.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
    mounts
}

/// Removes the cgroup `name` (a path relative to each hierarchy's root,
/// unique to one test) and its empty children from every mounted
/// hierarchy (cgroup v1 controllers, the unified one, or a pure v2 root).
/// Cgroups still holding processes stay. Returns what it removed.
pub fn remove_cgroup(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut bases = vec![root.to_path_buf()];
    if let Ok(entries) = fs::read_dir(root) {
        bases.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    let mut removed = Vec::new();
    for base in bases {
        let top = base.join(name.trim_start_matches('/'));
        if !top.is_dir() {
            continue;
        }
        // Children first (deepest paths are longest).
        let mut dirs = vec![top.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(entries) = fs::read_dir(&dirs[i]) {
                dirs.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            i += 1;
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
        for d in dirs {
            if fs::remove_dir(&d).is_ok() {
                removed.push(d);
            }
        }
    }
    removed
}
