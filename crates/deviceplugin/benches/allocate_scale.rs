//! Allocate latency against how many devices are already in use: one
//! resource on the lower device, the real daemon (optimised build) with the
//! tests' kubelet and PodResources stand-ins in private namespaces. "In
//! use" means what a node with that many VMs has: each device allocated by
//! Allocate (its grant on disk) and listed by PodResources as held by a pod
//! of its own. Then BENCH_ALLOCATES (default 50) single-device Allocate
//! calls on free devices are timed, as in the footprint bench. Run as root:
//! `cargo bench -p macvtap-deviceplugin --bench allocate_scale` (`MACVTAP_DP_BIN`
//! picks the binary; `BENCH_IN_USE` the counts, default `0,1000`).
//!
//! Then what the daemon's link watcher costs as the node's link count
//! grows: macvtaps made in the daemon's (node) namespace through netlink,
//! from 0 to 1,000 and from 1,000 to `BENCH_LINKS` (default 4,000), down
//! (no IPv6 work), and the daemon's CPU time (utime + stime from
//! /proc/PID/stat) spent until it is idle again, per link made.

use std::time::{Duration, Instant};

use macvtap_net::{MacvtapSpec, NetNs, Netlink};

use macvtap_testkit::device_plugin::*;
use tonic::transport::Channel;

struct Row {
    in_use: u32,
    fill: Duration,
    p50: f64,
    p90: f64,
}

async fn allocate(client: &mut DevicePluginClient<Channel>, id: &str) {
    client
        .allocate(allocate_request(&[&[id]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate {id}: {e}"));
}

async fn measure(in_use: u32, sample: u32) -> Row {
    let name = "r0";
    let ids: Vec<String> = (0..in_use).map(|i| format!("{name}-{i}")).collect();
    let one_each: Vec<[&str; 1]> = ids.iter().map(|id| [id.as_str()]).collect();
    let resource = resource_name(name);
    // One pod per device, as PodResources lists a node's VMs.
    let held: Vec<(&str, &[&str])> = one_each
        .iter()
        .map(|id| (resource.as_str(), &id[..]))
        .collect();
    let world = World::with_held(&format!("dp-alloc-{in_use}"), &held);
    let daemon = world.start(&conf1(name, in_use + sample, "pod"), 1).await;
    let mut client = world.client(name).await;
    // The devices in use, allocated as the kubelet did when their pods came.
    let t = Instant::now();
    for i in 0..in_use {
        allocate(&mut client, &format!("{name}-{i}")).await;
    }
    let fill = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut times = Vec::new();
    for i in in_use..in_use + sample {
        let t = Instant::now();
        allocate(&mut client, &format!("{name}-{i}")).await;
        times.push(t.elapsed());
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    drop(daemon);
    Row {
        in_use,
        fill,
        p50: at(0.5),
        p90: at(0.9),
    }
}

/// The daemon's CPU time so far (all threads), in milliseconds.
fn cpu_ms(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12] // utime and stime: fields 14 and 15
        .iter()
        .map(|&i| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 * 1e3 / hz
}

/// Waits until the daemon used no CPU for 300 ms; returns its CPU time.
async fn idle_cpu_ms(pid: i32) -> f64 {
    let mut last = cpu_ms(pid);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = cpu_ms(pid);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// The daemon's CPU per link made in its namespace, for each step of
/// `steps` (link counts reached in turn).
async fn link_events(steps: &[usize]) -> Vec<(usize, usize, f64, Duration)> {
    let world = World::new("dp-link-events");
    let daemon = world.start(&conf1("r0", 10, "pod"), 1).await;
    let _watch = world.watch("r0").await;
    let node = NetNs::open(world.lab.node.path())
        .unwrap_or_else(|e| panic!("open the node namespace: {e}"));
    let mut nl = node
        .run(Netlink::open)
        .unwrap_or_else(|e| panic!("enter the node namespace: {e}"))
        .unwrap_or_else(|e| panic!("netlink in the node: {e}"));
    let lower = nl
        .link_by_name(LOWER)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no {LOWER} in the node"))
        .index;
    let mut out = Vec::new();
    let mut made = 0;
    let mut before = idle_cpu_ms(daemon.pid()).await;
    for &to in steps {
        let from = made;
        let t = Instant::now();
        for i in from..to {
            let name = format!("bg{i}");
            nl.create_macvtap(&MacvtapSpec::new(&name, lower))
                .unwrap_or_else(|e| panic!("macvtap {i}: {}", macvtap_net::error_chain(&e)));
        }
        made = to;
        let after = idle_cpu_ms(daemon.pid()).await;
        out.push((from, to, after - before, t.elapsed()));
        before = after;
    }
    drop(daemon);
    out
}

fn main() {
    let sample: u32 = std::env::var("BENCH_ALLOCATES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
        .max(1);
    let counts: Vec<u32> = std::env::var("BENCH_IN_USE")
        .unwrap_or_else(|_| "0,1000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("BENCH_IN_USE: {s:?} is not a device count"))
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "macvtap-deviceplugin Allocate vs devices in use ({}), {sample} single-device Allocates:",
        daemon_binary()
    );
    let rows: Vec<Row> = counts
        .iter()
        .map(|&n| runtime.block_on(measure(n, sample)))
        .collect();
    for r in &rows {
        println!(
            "{:>5} in use (filled in {:>6.0} ms)   Allocate p50 {:>6.2} ms  p90 {:>6.2} ms   p50 / first row {:.2}",
            r.in_use,
            r.fill.as_secs_f64() * 1e3,
            r.p50,
            r.p90,
            r.p50 / rows[0].p50
        );
    }
    let top: usize = std::env::var("BENCH_LINKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let steps: Vec<usize> = [1000.min(top), top]
        .into_iter()
        .filter(|&n| n > 0)
        .collect();
    println!("the daemon's link watcher, macvtaps made in its namespace:");
    for (from, to, cpu, took) in runtime.block_on(link_events(&steps)) {
        let n = (to - from).max(1) as f64;
        println!(
            "  links {from:>5} -> {to:<5} made in {:>6.0} ms   daemon CPU {:>7.0} ms = {:>6.1} us per link",
            took.as_secs_f64() * 1e3,
            cpu,
            cpu * 1e3 / n
        );
    }
}
