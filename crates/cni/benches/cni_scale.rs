//! How attach cost grows with the node: CNI ADD and DEL (p50, p90; the
//! plugin spawned from inside the node namespace as a runtime does, timed
//! from spawn to exit, as in cni_latency) of our `macvtap` on its pod-attach path, with 0, 1,000
//! and 4,000 macvtaps already on the same lower device, half of them in the
//! node namespace and half in other pods' namespaces (40 per pod), and
//! beside it the pieces of kernel work an ADD and a DEL contain, each timed
//! alone from this process (see [`STEPS`]), so that growth in the kernel and
//! growth in the plugin can be told apart. Run as root:
//! `cargo bench -p macvtap-cni --bench cni_scale [-- --json]`.
//!
//! `MACVTAP_BIN` picks the binary (scripts/bench passes the static release
//! build), `BENCH_SCALES` the link counts (default `0,1000,4000`, reached
//! in that order by adding links to the same node), `BENCH_ITERATIONS` the
//! ADD/DEL pairs per scale (default 50). The background macvtaps are made
//! through netlink directly (in the node, or directly inside their pod with
//! IFLA_NET_NS_FD), not through the plugin: no state records, only links;
//! without IPv6 (see [`without_ipv6`]; the measured pod keeps it).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use macvtap_net::{MacvtapSpec, NetNs, Netlink, SysfsView};
use macvtap_testkit::{
    Lab, Netns, LOWER, NODE_CONFIG_ENV, NO_NODE_POLICY, POD_IFNAME, STATE_DIR_ENV,
};
use serde_json::json;

/// Background macvtaps per other pod.
const PER_POD: usize = 40;

fn open(ns: &Netns) -> NetNs {
    NetNs::open(ns.path()).unwrap_or_else(|e| panic!("open {}: {e}", ns.path().display()))
}

fn netlink_in(ns: &NetNs) -> Netlink {
    ns.run(Netlink::open)
        .unwrap_or_else(|e| panic!("enter {}: {e}", ns.path().display()))
        .unwrap_or_else(|e| panic!("netlink in {}: {e}", ns.path().display()))
}

fn spec(name: &str, lower: u32, netns_fd: Option<i32>) -> MacvtapSpec<'_> {
    MacvtapSpec {
        up: true,
        netns_fd,
        ..MacvtapSpec::new(name, lower)
    }
}

/// Links made in `ns` from now on get no IPv6: thousands of links made in
/// a burst would otherwise keep the kernel's duplicate address detection
/// busy (under the rtnl lock) for seconds, which a node whose links came
/// one by one never sees.
fn without_ipv6(ns: &NetNs) {
    let knob = "/proc/sys/net/ipv6/conf/default/disable_ipv6";
    ns.run(|| std::fs::write(knob, "1"))
        .unwrap_or_else(|e| panic!("enter {}: {e}", ns.path().display()))
        .unwrap_or_else(|e| panic!("write {knob}: {e}"));
}

/// The node's other tenants: links `from..to`, even ones in the node
/// namespace, odd ones inside other pods.
struct Background<'a> {
    lab: &'a Lab,
    nl: Netlink,
    lower: u32,
    pods: Vec<(Netns, NetNs)>,
    made: usize,
}

impl Background<'_> {
    fn grow_to(&mut self, total: usize) {
        for i in self.made..total {
            let name = format!("bg{i}");
            let fd = if i % 2 == 0 {
                None
            } else {
                let pod = (i / 2) / PER_POD;
                if pod == self.pods.len() {
                    let ns = self.lab.netns(&format!("o{pod}"));
                    let opened = open(&ns);
                    without_ipv6(&opened);
                    self.pods.push((ns, opened));
                }
                Some(self.pods[pod].1.raw_fd())
            };
            self.nl
                .create_macvtap(&spec(&name, self.lower, fd))
                .unwrap_or_else(|e| {
                    panic!(
                        "background macvtap {i} of {total}: {}",
                        macvtap_net::error_chain(&e)
                    )
                });
        }
        self.made = self.made.max(total);
    }
}

/// One plugin run from this thread (inside the node namespace), spawn to
/// exit; panics with the plugin's output when it fails.
fn timed(lab: &Lab, bin: &str, command: &str, config: &[u8]) -> Duration {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &lab.container_id)
        .env("CNI_NETNS", lab.pod.path())
        .env("CNI_IFNAME", POD_IFNAME)
        .env("CNI_PATH", "/usr/lib/cni")
        .env(STATE_DIR_ENV, lab.state_dir())
        .env(NODE_CONFIG_ENV, NO_NODE_POLICY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(config);
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {bin}: {e}"));
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{bin} {command} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    p50: f64,
    p90: f64,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    Stats {
        p50: at(0.5),
        p90: at(0.9),
    }
}

/// What one scale measured: the plugin's ADD and DEL, and the pieces of
/// the kernel's work they contain, each timed on its own in this process.
struct Row {
    links: usize,
    /// name, samples' statistics; in [`STEPS`] order.
    steps: Vec<Stats>,
}

/// The plugin's ADD and DEL, spawning a plugin at all (our VERSION), then
/// the kernel's share of an ADD done from this process in the plugin's
/// order (a sysfs instance made inside the pod, the macvtap created inside
/// the pod, read back there by name, its tap device number read through
/// that sysfs, which is dropped), each step and the whole, and the delete.
const STEPS: [&str; 9] = [
    "ADD",
    "DEL",
    "spawn (VERSION)",
    "kernel: pod sysfs made",
    "kernel: create in pod",
    "kernel: read back in pod",
    "kernel: tap number, sysfs drop",
    "kernel: ADD's share, whole",
    "kernel: delete",
];

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let json_out = std::env::args().any(|a| a == "--json");
    let ours =
        std::env::var("MACVTAP_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_macvtap").to_string());
    let iterations: usize = env_or::<usize>("BENCH_ITERATIONS", 50).max(1);
    let mut scales: Vec<usize> = std::env::var("BENCH_SCALES")
        .unwrap_or_else(|_| "0,1000,4000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("BENCH_SCALES: {s:?} is not a link count"))
        })
        .collect();
    scales.sort_unstable();

    let lab = Lab::new("cni-scale", &ours);
    let config = serde_json::to_vec(&lab.config("1.0.0")).expect("a Value serializes");
    let node = open(&lab.node);
    // This (main) thread enters the node: the plugins it spawns start there,
    // as a runtime's do.
    nix::sched::setns(&node, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("enter the node namespace: {e}"));
    let mut nl = netlink_in(&node);
    without_ipv6(&node);
    let lower = nl
        .link_by_name(LOWER)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("the lab's {LOWER} is missing"))
        .index;
    let floor_pod = lab.netns("floor");
    let floor_ns = open(&floor_pod);
    let mut floor_nl = netlink_in(&floor_ns);
    let mut background = Background {
        lab: &lab,
        nl,
        lower,
        pods: Vec::new(),
        made: 0,
    };

    let mut rows = Vec::new();
    for &links in &scales {
        let t = Instant::now();
        background.grow_to(links);
        if !json_out {
            println!(
                "{links} macvtaps on {LOWER} ({} in {} other pods), made in {:.1} s",
                links / 2,
                background.pods.len(),
                t.elapsed().as_secs_f64()
            );
        }
        // Warm-up outside the measurement.
        for _ in 0..3 {
            timed(&lab, &ours, "ADD", &config);
            timed(&lab, &ours, "DEL", &config);
        }
        let mut samples: [Vec<Duration>; 9] = Default::default();
        for _ in 0..iterations {
            samples[0].push(timed(&lab, &ours, "ADD", &config));
            samples[1].push(timed(&lab, &ours, "DEL", &config));
            // The kernel's share of an ADD, in the plugin's order, on one
            // thread inside the pod as the plugin's is: a sysfs instance of
            // the pod, the create, the read-back, the tap's device number
            // read through that sysfs, which is then dropped.
            let nl = &mut background.nl;
            let pod_nl = &mut floor_nl;
            let pod_fd = floor_ns.raw_fd();
            let (steps, link) = floor_ns
                .run(move || {
                    let start = Instant::now();
                    let view = SysfsView::here()
                        .unwrap_or_else(|e| panic!("floor: sysfs of the pod: {e}"));
                    let made = start.elapsed();
                    nl.create_macvtap(&spec(POD_IFNAME, lower, Some(pod_fd)))
                        .unwrap_or_else(|e| {
                            panic!("floor create: {}", macvtap_net::error_chain(&e))
                        });
                    let created = start.elapsed();
                    let link = pod_nl
                        .link_by_name(POD_IFNAME)
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| panic!("floor: {POD_IFNAME} vanished"));
                    let read_back = start.elapsed();
                    view.tap_device_number(POD_IFNAME, link.index)
                        .unwrap_or_else(|e| panic!("floor: {}", macvtap_net::error_chain(&e)));
                    drop(view);
                    let done = start.elapsed();
                    (
                        [
                            made,
                            created - made,
                            read_back - created,
                            done - read_back,
                            done,
                        ],
                        link,
                    )
                })
                .unwrap_or_else(|e| panic!("enter the floor pod: {e}"));
            for (i, d) in steps.into_iter().enumerate() {
                samples[3 + i].push(d);
            }
            let t = Instant::now();
            floor_nl
                .delete_link(link.index)
                .unwrap_or_else(|e| panic!("floor delete: {}", macvtap_net::error_chain(&e)));
            samples[8].push(t.elapsed());
            samples[2].push(timed(&lab, &ours, "VERSION", &config));
        }
        rows.push(Row {
            links,
            steps: samples.into_iter().map(stats).collect(),
        });
    }
    let t = Instant::now();
    drop(background);
    drop(floor_pod);
    drop(lab);
    let teardown = t.elapsed();

    let base = &rows[0];
    // ADD less the kernel's and the spawn's share (p50s): what the plugin's
    // own work costs, which must not grow with the node.
    let own = |r: &Row| r.steps[0].p50 - r.steps[2].p50 - r.steps[7].p50;
    if json_out {
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                let steps: serde_json::Map<_, _> = STEPS
                    .iter()
                    .zip(&r.steps)
                    .map(|(n, s)| (n.to_string(), json!({"p50_ms": s.p50, "p90_ms": s.p90})))
                    .collect();
                json!({"links": r.links, "steps": steps, "add_own_p50_ms": own(r),
                    "add_p50_over_first": r.steps[0].p50 / base.steps[0].p50,
                    "del_p50_over_first": r.steps[1].p50 / base.steps[1].p50})
            })
            .collect();
        println!(
            "{}",
            json!({"iterations": iterations, "binary": ours, "scales": out,
                "teardown_ms": teardown.as_secs_f64() * 1e3})
        );
        return;
    }
    println!(
        "CNI ADD/DEL vs macvtaps already on the node, {iterations} rounds per scale; ms, p50 / p90"
    );
    println!("ours: {ours}");
    print!("{:<30}", "macvtaps on the lower device");
    for r in &rows {
        print!(" {:>17}", r.links);
    }
    println!();
    for (i, name) in STEPS.iter().enumerate() {
        print!("{name:<30}");
        for r in &rows {
            print!(" {:>8.3} /{:>7.3}", r.steps[i].p50, r.steps[i].p90);
        }
        println!();
    }
    print!("{:<30}", "ADD less spawn and kernel");
    for r in &rows {
        print!(" {:>8.3}         ", own(r));
    }
    println!();
    println!("p50 relative to {} links, same run:", base.links);
    for r in &rows[1..] {
        let x = |i: usize| r.steps[i].p50 / base.steps[i].p50;
        println!(
            "  {:>5} links: ADD {:.2}x, DEL {:.2}x, spawn {:.2}x, kernel's ADD share {:.2}x (create {:.2}x), delete {:.2}x",
            r.links, x(0), x(1), x(2), x(7), x(4), x(8)
        );
    }
    println!(
        "teardown (namespaces and every link deleted): {:.1} s",
        teardown.as_secs_f64()
    );
}
