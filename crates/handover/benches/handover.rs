//! Handover apply and undo latency, in-process, against the real kernel:
//! a container namespace whose `eth0` is a veth with an IPv4 and an IPv6
//! address and a default route, handed over and given back N times
//! (BENCH_ITERATIONS, default 200). Run by `./scripts/bench`; needs root.

use std::process::Command;
use std::time::{Duration, Instant};

use macvtap_handover::{apply, undo, ApplyOptions, Store, Target, UndoOutcome};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the namespaces and the state directory even when a step panics.
struct World {
    ctr: String,
    lan: String,
    state: std::path::PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ctr])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.lan])
            .status();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    ms(sorted[((sorted.len() - 1) as f64 * p).round() as usize])
}

fn main() {
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let tag = format!("mvhbench{}", std::process::id());
    let world = World {
        ctr: format!("{tag}-ctr"),
        lan: format!("{tag}-lan"),
        state: std::env::temp_dir().join(format!("{tag}-state")),
    };
    ip(&["netns", "add", &world.ctr]);
    ip(&["netns", "add", &world.lan]);
    ip(&[
        "-n", &world.ctr, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns",
        &world.lan,
    ]);
    ip(&["-n", &world.ctr, "link", "set", "eth0", "up"]);
    ip(&["-n", &world.lan, "link", "set", "lan0", "up"]);
    ip(&[
        "-n",
        &world.ctr,
        "addr",
        "add",
        "10.203.0.2/24",
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        &world.ctr,
        "-6",
        "addr",
        "add",
        "2001:db8:203::2/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    ip(&[
        "-n",
        &world.ctr,
        "route",
        "add",
        "default",
        "via",
        "10.203.0.1",
    ]);

    let store = Store::open(world.state.to_str().expect("utf-8 path")).expect("state dir");
    let ns = Target::Named(world.ctr.clone())
        .open()
        .expect("container netns");
    let opts = ApplyOptions::new("eth0");
    let (mut applies, mut undos) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        let t = Instant::now();
        apply(&store, &ns, &opts).expect("apply");
        applies.push(t.elapsed());
        let t = Instant::now();
        let outcome = undo(&store, &ns, "eth0").expect("undo");
        undos.push(t.elapsed());
        assert!(matches!(outcome, UndoOutcome::Restored), "{outcome:?}");
    }
    applies.sort();
    undos.sort();
    println!("handover latency, {iterations} apply/undo pairs, in-process; ms");
    println!("{:<28}{:>9}{:>9}", "", "p50", "p90");
    for (name, samples) in [("apply (record fsynced)", &applies), ("undo", &undos)] {
        println!(
            "{name:<28}{:>9.3}{:>9.3}",
            percentile(samples, 0.5),
            percentile(samples, 0.9)
        );
    }
}
