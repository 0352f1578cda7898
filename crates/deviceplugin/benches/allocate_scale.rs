//! Allocate latency against how many devices are already in use: one
//! resource on the lower device, the real daemon (optimised build) with the
//! tests' kubelet and PodResources stand-ins in private namespaces. "In
//! use" means what a node with that many VMs has: each device allocated by
//! Allocate (its grant on disk) and listed by PodResources as held by a pod
//! of its own. Then BENCH_ALLOCATES (default 50) single-device Allocate
//! calls on free devices are timed, as in the footprint bench. Run as root:
//! `cargo bench -p macvtap-deviceplugin --bench allocate_scale` (`MACVTAP_DP_BIN`
//! picks the binary; `BENCH_IN_USE` the counts, default `0,1000`).

use std::time::{Duration, Instant};

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
}
