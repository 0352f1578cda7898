//! A temporary directory guard (no external crates allowed here).

use std::fs;
use std::path::{Path, PathBuf};

use crate::names::unique_name;

/// A unique directory under /tmp, removed recursively (device nodes
/// included) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = Path::new("/tmp").join(unique_name(tag));
        fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir { path }
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
        if let Err(e) = fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("warning: cannot remove {}: {e}", self.path.display());
            }
        }
    }
}
