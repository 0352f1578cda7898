//! The device plugin's footprint and latencies, on the optimised build:
//! time to register, RSS and threads with the kubelet's ListAndWatch
//! streams open, and Allocate latency, at 1 resource x 50 devices and at
//! 16 resources x 1000 devices. Drives the real daemon with the tests'
//! kubelet stand-in, in private namespaces. Run as root:
//! `cargo bench -p macvtap-deviceplugin --bench footprint` (`MACVTAP_DP_BIN`
//! picks the binary: `scripts/bench` passes the static release build).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn status_field(pid: i32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        .unwrap_or_else(|| "?".into())
}

async fn measure(resources: usize, capacity: u32) {
    let world = World::new(&format!("dp-footprint-{resources}"));
    let conf: Vec<_> = (0..resources)
        .map(|i| json!({"name": format!("r{i}"), "lowerDevice": LOWER, "capacity": capacity}))
        .collect();
    let started = Instant::now();
    let daemon = world.start(&json!(conf).to_string(), resources).await;
    let registered = started.elapsed();
    // The kubelet keeps one ListAndWatch stream per resource open.
    let mut watches = Vec::new();
    for i in 0..resources {
        let mut client = world.client(&format!("r{i}")).await;
        let watch = DeviceWatch::start(&mut client, &format!("r{i}")).await;
        watch.first(SLOW).await;
        watches.push((client, watch));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss, threads) = (
        status_field(daemon.pid(), "VmRSS:"),
        status_field(daemon.pid(), "Threads:"),
    );
    let mut client = world.client("r0").await;
    let mut times = Vec::new();
    for i in 0..50u32.min(capacity) {
        let t = Instant::now();
        client
            .allocate(allocate_request(&[&[&format!("r0-{i}")]]))
            .await
            .expect("Allocate");
        times.push(t.elapsed());
    }
    times.sort();
    let rss_after = status_field(daemon.pid(), "VmRSS:");
    println!(
        "{resources:>2} x {capacity:<5} register {:>7.1} ms   RSS {:>6} KiB ({:>6} KiB after 50 Allocates)   threads {:>2}   Allocate p50 {:>6.2} ms  p90 {:>6.2} ms",
        registered.as_secs_f64() * 1e3,
        rss,
        rss_after,
        threads,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() * 9 / 10].as_secs_f64() * 1e3,
    );
    drop(watches);
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("macvtap-deviceplugin footprint ({}):", daemon_binary());
    runtime.block_on(measure(1, 50));
    runtime.block_on(measure(16, 1000));
}
