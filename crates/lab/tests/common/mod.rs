//! Running `macvtap-lab`, and the binaries it looks for next to itself
//! (the CNI plugin, the device plugin, macvtapctl), built if needed: a
//! `cargo test -p macvtap-lab` builds only this package's binary.
#![allow(dead_code, unused_imports)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use macvtap_testkit::{alive, doctor_finding as finding, eventually, ChildGuard, Run};
use macvtap_testkit::{build_next_to, Netns};

pub fn lab_path() -> &'static str {
    env!("CARGO_BIN_EXE_macvtap-lab")
}

/// `macvtap-lab args...`
pub fn run(args: &[&str]) -> Run {
    Run::of(Path::new(lab_path()), args)
}

fn next_to_lab(cell: &'static OnceLock<PathBuf>, package: &str, bin: &str) -> PathBuf {
    cell.get_or_init(|| build_next_to(Path::new(lab_path()), package, bin))
        .clone()
}

/// The `macvtap` CNI plugin next to macvtap-lab.
pub fn cni_plugin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    next_to_lab(&BUILT, "macvtap-cni", "macvtap")
}

/// `macvtap-deviceplugin` next to macvtap-lab: where `--device-plugin
/// auto` looks for it.
pub fn device_plugin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    next_to_lab(&BUILT, "macvtap-deviceplugin", "macvtap-deviceplugin")
}

/// `macvtapctl`, for what the host tool does to the lab's guest.
pub fn ctl() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    next_to_lab(&BUILT, "macvtapctl", "macvtapctl")
}

/// `macvtapctl --netns NS args...`
pub fn ctl_in(ns: &Netns, args: &[&str]) -> Run {
    let mut all = vec!["--netns", ns.name()];
    all.extend_from_slice(args);
    Run::of(&ctl(), &all)
}
