//! Churn through the device plugin: Allocate, the real CNI ADD into the
//! pod, CNI DEL, over and over, in both attach modes. Nothing may pile up:
//! no link in the pod or node, no device node left by a DEL, and no file
//! descriptor or thread growth in the daemon.
//!
//! The long run is ignored: `cargo test -p macvtap-deviceplugin --test churn -- --ignored`.

mod common;

use std::time::Duration;

use common::*;

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn churn(test: &str, attach: &str, cycles: u32) {
    let world = World::new(test);
    let mut daemon = world.start(&conf1("dataplane", 4, attach), 1).await;
    let mut client = world.client("dataplane").await;
    // One cycle first: connections, the blocking pool and caches settle.
    let mut baseline = None;
    for i in 0..cycles {
        let id = format!("dataplane-{}", i % 4);
        within(
            "Allocate",
            SLOW,
            client.allocate(allocate_request(&[&[&id]])),
        )
        .await
        .unwrap_or_else(|e| panic!("cycle {i}: Allocate: {e}\n{}", daemon.logs()));
        let mac = format!("02:00:00:cc:{:02x}:{:02x}", i / 256 % 256, i % 256);
        let add = world.cni_add(&id, "net1", &mac);
        add.result();
        let del = world
            .lab
            .plugin("DEL", &world.cni_config(&id))
            .ifname("net1")
            .run();
        del.success();
        assert!(
            world.lab.pod.macvtaps().is_empty(),
            "cycle {i}: a macvtap is left in POD"
        );
        assert!(
            world.lab.node.macvtaps().is_empty(),
            "cycle {i}: a macvtap is left in NODE"
        );
        assert!(
            !world.dev_node(&id).exists(),
            "cycle {i}: DEL left {}",
            world.dev_node(&id).display()
        );
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            baseline = Some(open_fds(daemon.pid()));
        }
    }
    // A leak stays; a PodResources query in flight (each Allocate binds its
    // grant to its pod in the background, for a few seconds) goes within
    // milliseconds: wait for the count to settle before judging.
    let before = baseline.unwrap_or(0);
    let mut after = open_fds(daemon.pid());
    let settle = std::time::Instant::now();
    while after > before && settle.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = open_fds(daemon.pid());
    }
    assert!(
        after <= before,
        "the daemon's open fds grew from {before} to {after} over {cycles} cycles"
    );
    daemon.assert_running("after the churn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_attach_pod_100_cycles() {
    churn("dp-churn-pod", "pod", 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_attach_host_100_cycles() {
    churn("dp-churn-host", "host", 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 5 000 cycles per attach mode"]
async fn churn_5000_cycles() {
    churn("dp-churn-pod-long", "pod", 5000).await;
    churn("dp-churn-host-long", "host", 5000).await;
}
