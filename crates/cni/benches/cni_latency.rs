//! ADD and DEL latency of our `macvtap` against the reference `macvlan`
//! plugin, measured in one run on the same lower device.
//!
//! Run as root: `cargo bench -p macvtap-cni --bench cni_latency`
//! (`MACVTAP_BIN` picks the binary, e.g. the static release build;
//! `BENCH_ITERATIONS` the number of ADD/DEL pairs per plugin, default 200;
//! `REFERENCE_MACVLAN` the reference plugin, default /usr/lib/cni/macvlan).
//!
//! Each plugin is spawned the way a runtime does (fork+exec, config on
//! stdin) from inside a private "node" namespace whose veth is the lower
//! device; the timed span is spawn to exit. The two plugins alternate
//! iteration by iteration so that drift on the machine hits both alike.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Netns(String);

impl Netns {
    fn add(name: String) -> Netns {
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip");
        assert!(
            ok.success(),
            "ip netns add {name}: this benchmark needs root"
        );
        Netns(name)
    }
    fn ip(&self, args: &[&str]) {
        let ok = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .status()
            .expect("run ip");
        assert!(ok.success(), "ip -n {} {args:?}", self.0);
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn invoke(bin: &str, command: &str, pod: &Netns, config: &str) -> Duration {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "bench")
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(config.as_bytes())
        .expect("write config");
    let out = child.wait_with_output().expect("wait");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{bin} {command} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

struct Stats {
    p50: f64,
    p90: f64,
    mean: f64,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| ms(samples[((samples.len() - 1) as f64 * q).round() as usize]);
    Stats {
        p50: at(0.5),
        p90: at(0.9),
        mean: samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64,
    }
}

fn main() {
    let ours =
        std::env::var("MACVTAP_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_macvtap").to_string());
    let reference =
        std::env::var("REFERENCE_MACVLAN").unwrap_or_else(|_| "/usr/lib/cni/macvlan".into());
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    assert!(
        std::path::Path::new(&reference).exists(),
        "{reference} missing: apt-get install containernetworking-plugins"
    );

    let tag = format!("mvbench{}", std::process::id());
    let node = Netns::add(format!("{tag}-node"));
    let pod_ours = Netns::add(format!("{tag}-a"));
    let pod_ref = Netns::add(format!("{tag}-b"));
    node.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    node.ip(&["link", "set", "up0", "up"]);
    let state = format!("/tmp/{tag}-state");

    // Enter the node namespace on this (main, only) thread: the plugins we
    // spawn inherit it as their host namespace.
    let node_fd = std::fs::File::open(node.path()).expect("open node netns");
    nix::sched::setns(&node_fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns node");

    let ours_conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench","type":"macvtap","master":"up0","mode":"bridge","stateDir":"{state}"}}"#
    );
    let ref_conf =
        r#"{"cniVersion":"1.0.0","name":"bench","type":"macvlan","master":"up0","mode":"bridge"}"#;

    // Warm up caches (binaries, page cache) outside the measurement.
    for _ in 0..5 {
        invoke(&ours, "ADD", &pod_ours, &ours_conf);
        invoke(&ours, "DEL", &pod_ours, &ours_conf);
        invoke(&reference, "ADD", &pod_ref, ref_conf);
        invoke(&reference, "DEL", &pod_ref, ref_conf);
    }
    let (mut add_o, mut del_o, mut add_r, mut del_r) = (vec![], vec![], vec![], vec![]);
    let mut version_o = vec![];
    for _ in 0..iterations {
        version_o.push(invoke(&ours, "VERSION", &pod_ours, &ours_conf));
        add_o.push(invoke(&ours, "ADD", &pod_ours, &ours_conf));
        add_r.push(invoke(&reference, "ADD", &pod_ref, ref_conf));
        del_o.push(invoke(&ours, "DEL", &pod_ours, &ours_conf));
        del_r.push(invoke(&reference, "DEL", &pod_ref, ref_conf));
    }
    let _ = std::fs::remove_dir_all(&state);

    let (ao, ar, d_o, dr) = (stats(add_o), stats(add_r), stats(del_o), stats(del_r));
    println!("CNI latency, {iterations} ADD/DEL pairs each, alternating; times in ms");
    println!("ours:      {ours}");
    println!("reference: {reference}");
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "op", "ours p50", "ours p90", "ours mean", "ref p50", "ref p90", "ref mean", "p50 ratio"
    );
    let v = stats(version_o);
    println!(
        "{:<6} {:>10.3} {:>10.3} {:>10.3}   (ours, VERSION: the cost of spawning a plugin at all)",
        "spawn", v.p50, v.p90, v.mean
    );
    for (op, o, r) in [("ADD", &ao, &ar), ("DEL", &d_o, &dr)] {
        println!(
            "{op:<6} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>8.3}",
            o.p50,
            o.p90,
            o.mean,
            r.p50,
            r.p90,
            r.mean,
            o.p50 / r.p50
        );
    }
}
