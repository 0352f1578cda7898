//! The lab's world: its namespaces, made in order and removed in reverse
//! (unless the user asked to keep them), on the harness's namespace guard,
//! so the lab and the tests make and delete namespaces the same way. Its
//! directory is the harness's `TempDir`.

use macvtap_net::NetNs;
use macvtap_testkit::Netns;

use macvtapctl::scope::Scope;

/// Named namespaces made by the lab, deleted on drop (last made, first gone).
#[derive(Debug, Default)]
pub struct Namespaces {
    made: Vec<Netns>,
    keep: bool,
}

impl Namespaces {
    pub fn create(&mut self, name: &str) -> macvtap_net::Result<Scope> {
        let ns = Netns::create(name)?;
        let path = ns.path();
        self.made.push(ns);
        Ok(Scope::from_netns(NetNs::open(&path)?, name))
    }

    pub fn names(&self) -> Vec<String> {
        self.made.iter().map(|ns| ns.name().to_string()).collect()
    }

    pub fn keep(&mut self) {
        self.keep = true;
        for ns in &mut self.made {
            ns.keep();
        }
    }

    /// Delete them now; returns what could not be deleted.
    pub fn remove(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        while let Some(mut ns) = self.made.pop() {
            if let Err(e) = ns.remove() {
                failed.push(format!(
                    "namespace {}: {}",
                    ns.name(),
                    macvtap_net::error_chain(&e)
                ));
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
