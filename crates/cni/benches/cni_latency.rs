//! CNI latency, measured in one run on one lower device:
//!
//! - ADD and DEL (p50, p90, mean; process spawn included) of our `macvtap`
//!   on its pod-attach path (created directly inside the pod) and on its
//!   host-attach path (the device plugin's link moved into the pod), of the
//!   reference `macvlan` plugin, and the kernel floor: the same netlink
//!   requests issued from this process, no spawn;
//! - the cost of spawning a plugin at all (our VERSION);
//! - 100 concurrent ADDs into 100 pod namespaces, ours vs macvlan: wall time
//!   and failures.
//!
//! Run as root: `cargo bench -p macvtap-cni --bench cni_latency [-- --json]`.
//! `MACVTAP_BIN` picks the binary (scripts/bench passes the static release
//! build), `BENCH_ITERATIONS` the pairs per path (default 200),
//! `BENCH_CONCURRENT` the concurrent ADDs (default 100), `REFERENCE_MACVLAN`
//! the reference plugin (default /usr/lib/cni/macvlan).
//!
//! Plugins are spawned as a runtime does (fork+exec, config on stdin) from
//! inside a private "node" namespace whose veth is the lower device; the
//! timed span is spawn to exit. Paths alternate iteration by iteration so
//! that drift on the machine hits all of them alike.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use macvtap_net::{MacvtapMode, MacvtapSpec, NetNs, Netlink};
use serde_json::json;

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

struct Call<'a> {
    bin: &'a str,
    command: &'a str,
    pod: &'a str,
    container: &'a str,
    config: &'a str,
}

fn invoke(c: &Call<'_>) -> Result<Duration, String> {
    let start = Instant::now();
    let mut child = Command::new(c.bin)
        .env("CNI_COMMAND", c.command)
        .env("CNI_CONTAINERID", c.container)
        .env("CNI_NETNS", c.pod)
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", c.bin))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(c.config.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{} {} failed: {}{}",
            c.bin,
            c.command,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(took)
}

fn must(c: &Call<'_>) -> Duration {
    invoke(c).unwrap_or_else(|e| panic!("{e}"))
}

#[derive(Debug, Clone, Copy)]
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

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Our plugin's ADD in device-plugin mode with `attach: host` needs the
/// device plugin's link in the node namespace first, as Allocate leaves it.
fn make_host_link(nl: &mut Netlink, lower: u32, ifindex: u32) {
    nl.create_macvtap(&MacvtapSpec {
        up: true,
        ifindex: Some(ifindex),
        ..MacvtapSpec::new(&macvtap_state::host_link_name(ifindex), lower)
    })
    .expect("create the device plugin's host link");
}

/// The kernel floor: the same requests as our pod-attach ADD (create the
/// macvtap inside the pod, read it back) and DEL, issued from this process.
fn floor_round(
    nl: &mut Netlink,
    pod_nl: &mut Netlink,
    pod: &NetNs,
    lower: u32,
) -> (Duration, Duration) {
    let t = Instant::now();
    nl.create_macvtap(&MacvtapSpec {
        up: true,
        netns_fd: Some(pod.raw_fd()),
        ..MacvtapSpec::new("net1", lower)
    })
    .expect("floor create");
    let link = pod_nl.link_by_name("net1").expect("get").expect("exists");
    let added = t.elapsed();
    let t = Instant::now();
    pod_nl.delete_link(link.index).expect("floor delete");
    (added, t.elapsed())
}

/// Runs `n` plugin calls at once, each into its own pod; wall time and failures.
fn concurrent(bin: &str, command: &str, pods: &[Netns], config: &str) -> (Duration, usize) {
    let start = Instant::now();
    let failures = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let container = format!("c{i}");
                let path = pod.path();
                scope.spawn(move || {
                    invoke(&Call {
                        bin,
                        command,
                        pod: &path,
                        container: &container,
                        config,
                    })
                    .is_err()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(true))
            .filter(|failed| *failed)
            .count()
    });
    (start.elapsed(), failures)
}

fn main() {
    let json_out = std::env::args().any(|a| a == "--json");
    let ours =
        std::env::var("MACVTAP_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_macvtap").to_string());
    let reference =
        std::env::var("REFERENCE_MACVLAN").unwrap_or_else(|_| "/usr/lib/cni/macvlan".into());
    let iterations: usize = env_or("BENCH_ITERATIONS", 200);
    let n_concurrent: usize = env_or("BENCH_CONCURRENT", 100);
    assert!(
        std::path::Path::new(&reference).exists(),
        "{reference} missing: apt-get install containernetworking-plugins"
    );

    let tag = format!("mvbench{}", std::process::id());
    let node = Netns::add(format!("{tag}-node"));
    let pod_pod = Netns::add(format!("{tag}-a"));
    let pod_host = Netns::add(format!("{tag}-h"));
    let pod_ref = Netns::add(format!("{tag}-b"));
    let pod_floor = Netns::add(format!("{tag}-f"));
    node.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    node.ip(&["link", "set", "up0", "up"]);
    let state = format!("/tmp/{tag}-state");
    // The node's policy names the state directory; the plugins inherit it.
    std::env::set_var(macvtap_state::STATE_DIR_ENV, &state);
    let state_dir = macvtap_state::StateDir::open(&state).expect("state dir");
    const BASE: u32 = 4096;
    state_dir
        .save_config(&macvtap_state::NodeConfig {
            resources: vec![macvtap_state::Resource {
                name: "bench".into(),
                lower_device: "up0".into(),
                mode: MacvtapMode::Bridge,
                capacity: 1,
                attach: macvtap_state::Attach::Host,
                ifindex_base: BASE,
            }],
        })
        .expect("resources.json");
    // The device plugin's grant, as Allocate writes it.
    state_dir
        .save_allocation(&macvtap_state::AllocationRecord::new(
            "bench-0",
            "bench",
            BASE,
            state_dir.device_node_path("bench-0"),
            macvtap_state::Attach::Host,
        ))
        .expect("grant");

    // Enter the node namespace on this (main) thread: the plugins we spawn,
    // and the kernel-floor socket, live there.
    let node_fd = std::fs::File::open(node.path()).expect("open node netns");
    nix::sched::setns(&node_fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns node");
    let mut nl = Netlink::open().expect("netlink");
    let lower = nl
        .link_by_name("up0")
        .expect("up0")
        .expect("up0 exists")
        .index;
    let floor_ns = NetNs::open(pod_floor.path()).expect("floor pod");
    let mut floor_nl = floor_ns
        .run(Netlink::open)
        .expect("thread")
        .expect("netlink in pod");

    let pod_conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench","type":"macvtap","master":"up0","mode":"bridge","stateDir":"{state}"}}"#
    );
    let host_conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench","type":"macvtap","deviceID":"bench-0","stateDir":"{state}"}}"#
    );
    let ref_conf =
        r#"{"cniVersion":"1.0.0","name":"bench","type":"macvlan","master":"up0","mode":"bridge"}"#;
    let (pp, ph, pr) = (pod_pod.path(), pod_host.path(), pod_ref.path());
    // Each path has its own container ID: the plugin keys its records by it.
    let call = |bin, command, pod, config| {
        let container = if pod == ph.as_str() { "host" } else { "pod" };
        Call {
            bin,
            command,
            pod,
            container,
            config,
        }
    };

    let mut floor_add = Vec::new();
    let mut floor_del = Vec::new();

    // Warm up caches (binaries, page cache) outside the measurement.
    for _ in 0..5 {
        must(&call(&ours, "ADD", &pp, &pod_conf));
        must(&call(&ours, "DEL", &pp, &pod_conf));
        must(&call(&reference, "ADD", &pr, ref_conf));
        must(&call(&reference, "DEL", &pr, ref_conf));
        floor_round(&mut nl, &mut floor_nl, &floor_ns, lower);
    }
    let mut samples: [Vec<Duration>; 7] = Default::default();
    for _ in 0..iterations {
        samples[0].push(must(&call(&ours, "VERSION", &pp, &pod_conf)));
        samples[1].push(must(&call(&ours, "ADD", &pp, &pod_conf)));
        samples[2].push(must(&call(&reference, "ADD", &pr, ref_conf)));
        make_host_link(&mut nl, lower, BASE);
        samples[3].push(must(&call(&ours, "ADD", &ph, &host_conf)));
        let (added, deleted) = floor_round(&mut nl, &mut floor_nl, &floor_ns, lower);
        floor_add.push(added);
        floor_del.push(deleted);
        samples[4].push(must(&call(&ours, "DEL", &pp, &pod_conf)));
        samples[5].push(must(&call(&reference, "DEL", &pr, ref_conf)));
        samples[6].push(must(&call(&ours, "DEL", &ph, &host_conf)));
    }

    // Concurrency: n pods, all ADDs at once, then all DELs at once.
    let pods: Vec<Netns> = (0..n_concurrent)
        .map(|i| Netns::add(format!("{tag}-c{i}")))
        .collect();
    let (ours_wall, ours_fail) = concurrent(&ours, "ADD", &pods, &pod_conf);
    let _ = concurrent(&ours, "DEL", &pods, &pod_conf);
    let (ref_wall, ref_fail) = concurrent(&reference, "ADD", &pods, ref_conf);
    let _ = concurrent(&reference, "DEL", &pods, ref_conf);
    drop(pods);
    let _ = std::fs::remove_dir_all(&state);

    let [spawn, add_pod, add_ref, add_host, del_pod, del_ref, del_host] = samples.map(stats);
    let (floor_add, floor_del) = (stats(floor_add), stats(floor_del));
    let rows = [
        ("spawn (our VERSION)", spawn),
        ("ADD kernel floor (in-process)", floor_add),
        ("ADD ours, pod attach", add_pod),
        ("ADD ours, host attach (move)", add_host),
        ("ADD reference macvlan", add_ref),
        ("DEL kernel floor (in-process)", floor_del),
        ("DEL ours, pod attach", del_pod),
        ("DEL ours, host attach", del_host),
        ("DEL reference macvlan", del_ref),
    ];
    let ratios = [
        ("ADD pod attach / macvlan", add_pod.p50 / add_ref.p50),
        ("ADD host attach / macvlan", add_host.p50 / add_ref.p50),
        ("DEL pod attach / macvlan", del_pod.p50 / del_ref.p50),
        (
            "concurrent ADD wall / macvlan",
            ours_wall.as_secs_f64() / ref_wall.as_secs_f64(),
        ),
    ];
    if json_out {
        let rows: Vec<_> = rows
            .iter()
            .map(|(n, s)| json!({"what": n, "p50_ms": s.p50, "p90_ms": s.p90, "mean_ms": s.mean}))
            .collect();
        let ratios: serde_json::Map<_, _> = ratios
            .iter()
            .map(|(n, r)| (n.to_string(), json!(r)))
            .collect();
        println!(
            "{}",
            json!({
                "iterations": iterations,
                "latency": rows,
                "concurrent": {"adds": n_concurrent,
                    "ours": {"wall_ms": ours_wall.as_secs_f64() * 1e3, "failures": ours_fail},
                    "macvlan": {"wall_ms": ref_wall.as_secs_f64() * 1e3, "failures": ref_fail}},
                "ratios_p50": ratios,
            })
        );
        return;
    }
    println!("CNI latency, {iterations} iterations per path, alternating; ms");
    println!("ours: {ours}\nreference: {reference}");
    println!("{:<32} {:>9} {:>9} {:>9}", "", "p50", "p90", "mean");
    for (name, s) in rows {
        println!("{name:<32} {:>9.3} {:>9.3} {:>9.3}", s.p50, s.p90, s.mean);
    }
    println!(
        "{n_concurrent} concurrent ADDs into {n_concurrent} pods: ours {:.1} ms ({ours_fail} failed), macvlan {:.1} ms ({ref_fail} failed)",
        ours_wall.as_secs_f64() * 1e3,
        ref_wall.as_secs_f64() * 1e3
    );
    println!("ratios (p50):");
    for (name, r) in ratios {
        println!("  {name:<32} {r:.3}");
    }
}
