//! Running `macvtapctl` in namespaces the
//! tests make with macvtap-testkit.
#![allow(dead_code, unused_imports)] // each test file uses its own part

pub mod container;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use macvtap_testkit::Netns;
pub use macvtap_testkit::{doctor_finding as finding, eventually, ChildGuard, Run};

pub fn ctl_path() -> &'static str {
    env!("CARGO_BIN_EXE_macvtapctl")
}

pub fn run(args: &[&str]) -> Run {
    Run::of(Path::new(ctl_path()), args)
}

/// `macvtapctl --netns NS args...`
pub fn run_in(ns: &Netns, args: &[&str]) -> Run {
    let mut all = vec!["--netns", ns.name()];
    all.extend_from_slice(args);
    run(&all)
}

/// A veth pair inside `ns`, both ends up: `lower` carries macvtaps.
pub fn veth_pair(ns: &Netns, lower: &str, peer: &str) {
    ns.ip_cmd(&format!("link add {lower} type veth peer name {peer}"));
    ns.ip_cmd(&format!("link set {lower} up"));
    ns.ip_cmd(&format!("link set {peer} up"));
}

/// An ifindex no other test process asks for: /dev/tap<ifindex> is one
/// name for the whole machine.
pub fn unique_ifindex() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 32, "raise the ifindex stride");
    100_000 + (std::process::id() % 60_000) * 32 + n
}

/// A namespace with up0 (peer up1, both up) carrying the macvtap `mv0`
/// (with `mac` if given) at an ifindex no other test uses, so
/// /dev/tap<ifindex> is its own.
pub fn macvtap_world(tag: &str, mac: Option<&str>) -> Netns {
    let ns = Netns::new(&macvtap_testkit::unique_name(tag));
    veth_pair(&ns, "up0", "up1");
    let index = unique_ifindex().to_string();
    let mut args = vec![
        "create",
        "--lower",
        "up0",
        "--name",
        "mv0",
        "--ifindex",
        &index,
    ];
    if let Some(mac) = mac {
        args.extend(["--mac", mac]);
    }
    run_in(&ns, &args).ok();
    ns
}

/// `MAJOR:MINOR` of a macvtap's tap device, as `show` reports it.
pub fn device_of(ns: &Netns, name: &str) -> String {
    run_in(ns, &["show", name, "--json"]).json()["device"]
        .as_str()
        .expect("show reports the device number")
        .to_string()
}

/// Two namespaces, each with up0 carrying `mv0` at the same ifindex: the
/// first one made owns /dev/tap<ifindex>.
pub fn same_ifindex_pair(tag: &str) -> (Netns, Netns) {
    let index = unique_ifindex().to_string();
    let make = |role: &str| {
        let ns = Netns::new(&macvtap_testkit::unique_name(&format!("{tag}-{role}")));
        veth_pair(&ns, "up0", "up1");
        run_in(
            &ns,
            &[
                "create",
                "--lower",
                "up0",
                "--name",
                "mv0",
                "--ifindex",
                &index,
            ],
        )
        .ok();
        ns
    };
    let first = make("a");
    (first, make("b"))
}
