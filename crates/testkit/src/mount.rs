//! A small tmpfs of the test's own, for state directories on a full or a
//! read-only filesystem.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::names::{require_root, unique_name};

/// A tmpfs mounted on a fresh directory under /tmp; unmounted (lazily if
/// it is busy) and the directory removed on drop, also when the test
/// panics. Only this mount point is ever mounted or unmounted.
#[derive(Debug)]
pub struct TmpfsMount {
    path: PathBuf,
    mounted: bool,
}

impl TmpfsMount {
    /// `mount -t tmpfs -o <options> tmpfs /tmp/<unique>`; `options` such
    /// as `size=64k,nr_inodes=64,mode=0755`.
    pub fn new(tag: &str, options: &str) -> TmpfsMount {
        require_root();
        let path = Path::new("/tmp").join(unique_name(tag));
        fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create mount point {}: {e}", path.display()));
        // From here the guard owns the directory (drop removes it).
        let mut guard = TmpfsMount {
            path,
            mounted: false,
        };
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&guard.path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            out.status.success(),
            "mount -t tmpfs -o {options} on {} failed: {}",
            guard.path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        guard.mounted = true;
        guard
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `mount -o remount,<options>` of this tmpfs (e.g. `ro` or `rw`).
    pub fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            out.status.success(),
            "remount,{options} of {} failed: {}",
            self.path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes `<path>/<name>` until the filesystem has no block left
    /// (ENOSPC); returns the bytes written. Panics on any other error.
    pub fn fill(&self, name: &str) -> u64 {
        let file_path = self.path.join(name);
        let mut file = fs::File::create(&file_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", file_path.display()));
        let chunk = vec![0xa5u8; 4096];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("filling {}: {e}", file_path.display()),
            }
        }
        // Byte-sized leftovers of the last page.
        while let Ok(1) = file.write(&chunk[..1]) {
            written += 1;
        }
        written
    }

    /// Creates empty files `<path>/<prefix>N` until the filesystem has no
    /// inode left; returns how many were made.
    pub fn exhaust_inodes(&self, prefix: &str) -> usize {
        let mut n = 0;
        loop {
            let p = self.path.join(format!("{prefix}{n}"));
            match fs::File::create(&p) {
                Ok(_) => n += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return n,
                Err(e) => panic!("creating {}: {e}", p.display()),
            }
            assert!(
                n < 1_000_000,
                "{} never ran out of inodes",
                self.path.display()
            );
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.path)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Busy (a process of the test still inside): detach it now,
                // the kernel frees it when the last user goes.
                let lazy = Command::new("umount")
                    .arg("-l")
                    .arg(&self.path)
                    .status()
                    .is_ok_and(|s| s.success());
                if !lazy {
                    eprintln!("warning: cannot unmount {}", self.path.display());
                    return; // never remove files below a live mount
                }
            }
        }
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}
