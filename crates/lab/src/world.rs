//! The lab's world: its namespaces and its directory, each removed by a
//! guard when dropped (unless the user asked to keep them).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use macvtap_net::NetNs;

use macvtapctl::scope::Scope;

/// Named namespaces made by the lab, deleted on drop (last made, first gone).
#[derive(Debug, Default)]
pub struct Namespaces {
    made: Vec<String>,
    keep: bool,
}

impl Namespaces {
    pub fn create(&mut self, name: &str) -> macvtap_net::Result<Scope> {
        let ns = NetNs::create_named(name)?;
        self.made.push(name.to_string());
        Ok(Scope::from_netns(ns, name))
    }

    pub fn names(&self) -> &[String] {
        &self.made
    }

    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Delete them now; returns what could not be deleted.
    pub fn remove(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        while let Some(name) = self.made.pop() {
            if let Err(e) = NetNs::delete_named(&name) {
                failed.push(format!("namespace {name}: {e}"));
            }
        }
        failed
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        if !self.keep {
            for problem in self.remove() {
                eprintln!("macvtap-lab: cleanup: {problem}");
            }
        }
    }
}

/// A private directory for the lab's state (the CNI stateDir, the serial
/// log), removed on drop.
#[derive(Debug)]
pub struct LabDir {
    path: PathBuf,
    keep: bool,
}

impl LabDir {
    pub fn new() -> io::Result<LabDir> {
        let template = std::env::temp_dir().join("macvtapctl-lab-XXXXXX");
        let path = nix::unistd::mkdtemp(&template).map_err(io::Error::from)?;
        Ok(LabDir { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keep(&mut self) {
        self.keep = true;
    }

    pub fn remove(&mut self) -> io::Result<()> {
        match fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for LabDir {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = self.remove() {
                eprintln!("macvtap-lab: cleanup: {}: {e}", self.path.display());
            }
        }
    }
}
