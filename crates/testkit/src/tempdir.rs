//! A temporary directory guard.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::names::unique_name;

/// A unique directory, removed recursively (device nodes included) on
/// drop unless kept.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = Path::new("/tmp").join(unique_name(tag));
        fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir { path, keep: false }
    }

    /// A fresh directory `<prefix>XXXXXX` (mkdtemp), for callers that must
    /// not panic (the lab's `$TMPDIR/macvtapctl-lab-XXXXXX`).
    pub fn create(prefix: &Path) -> io::Result<TempDir> {
        let mut template = prefix.as_os_str().to_owned();
        template.push("XXXXXX");
        let path = nix::unistd::mkdtemp(Path::new(&template)).map_err(io::Error::from)?;
        Ok(TempDir { path, keep: false })
    }

    /// Leave the directory in place when this is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Removes the directory now (gone already is fine).
    pub fn remove(&mut self) -> io::Result<()> {
        match fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/rel`, with its parent directories created.
    pub fn subdir(&self, rel: &str) -> PathBuf {
        let dir = self.path.join(rel);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a failure here must not turn into a double panic.
        if self.keep {
            return;
        }
        if let Err(e) = self.remove() {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}
