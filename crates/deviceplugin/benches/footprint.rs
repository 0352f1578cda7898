//! The device plugin's footprint and latencies, on the optimised build:
//! time to register, RSS and threads with the kubelet's ListAndWatch
//! streams open, Allocate latency, and how fast ListAndWatch reports a lost
//! carrier and a deleted uplink, at 1 resource x 50 devices and at
//! 16 resources x 1000 devices. Drives the real daemon with the tests'
//! kubelet stand-in, in private namespaces. Run as root:
//! `cargo bench -p macvtap-deviceplugin --bench footprint` (`MACVTAP_DP_BIN`
//! picks the binary: `scripts/bench` passes the static release build).

use std::time::{Duration, Instant};

use macvtap_testkit::device_plugin::*;
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
    // ListAndWatch reaction: the uplink's peer goes down (carrier loss,
    // which the kernel itself reports up to a second later), then the
    // uplink is deleted (reported at once). Timed from the command.
    let (_, watch) = &watches[0];
    let unhealthy = |d: &[Device]| d.iter().all(|d| d.health == "Unhealthy");
    let healthy = |d: &[Device]| d.iter().all(|d| d.health == "Healthy");
    let t = Instant::now();
    world.lab.lan.ip_ok(&["link", "set", "lan0", "down"]);
    watch
        .wait_for("Unhealthy after carrier loss", SLOW, unhealthy)
        .await;
    let carrier_lost = t.elapsed();
    world.lab.lan.ip_ok(&["link", "set", "lan0", "up"]);
    watch.wait_for("Healthy again", SLOW, healthy).await;
    let t = Instant::now();
    world.lab.node.ip_ok(&["link", "del", LOWER]);
    watch
        .wait_for("Unhealthy after the uplink is deleted", SLOW, unhealthy)
        .await;
    let deleted = t.elapsed();
    println!(
        "{resources:>2} x {capacity:<5} register {:>7.1} ms   RSS {:>6} KiB ({:>6} KiB after 50 Allocates)   threads {:>2}   Allocate p50 {:>6.2} ms  p90 {:>6.2} ms   ListAndWatch Unhealthy after carrier loss {:>6.1} ms, after uplink deleted {:>5.1} ms",
        registered.as_secs_f64() * 1e3,
        rss,
        rss_after,
        threads,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() * 9 / 10].as_secs_f64() * 1e3,
        carrier_lost.as_secs_f64() * 1e3,
        deleted.as_secs_f64() * 1e3,
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
