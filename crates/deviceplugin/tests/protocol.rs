//! The kubelet protocol: serve then register, the plugin options,
//! GetPreferredAllocation and PreStartContainer, kubelet restarts, and
//! SIGTERM/SIGINT.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn two_resources() -> String {
    json!([
        {"name": "dataplane", "lowerDevice": LOWER, "capacity": 4},
        {"master": LOWER, "name": "hostnet", "mode": "vepa", "capacity": 2, "attach": "host"},
    ])
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_resource_is_served_then_registered_within_200ms() {
    let world = World::new("dp-register");
    let mut dp = world.spawn(&two_resources());
    let regs = world.kubelet.wait_registrations(2, SLOW).await;
    for r in &regs {
        let after = r.at.duration_since(dp.started);
        measured(
            &format!("registration of {} after start", r.request.resource_name),
            after,
        );
        assert!(
            after <= Duration::from_millis(200),
            "{} registered {after:?} after start (contract: promptly; test bound 200 ms)",
            r.request.resource_name
        );
    }
    // Nothing more arrives: one registration per resource.
    tokio::time::sleep(Duration::from_millis(300)).await;
    dp.assert_running("after registering");
    let regs = world.kubelet.registrations();
    let names: Vec<&str> = regs
        .iter()
        .map(|r| r.request.resource_name.as_str())
        .collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        unique,
        BTreeSet::from([
            "macvtap.network.kubevirt.io/dataplane",
            "macvtap.network.kubevirt.io/hostnet"
        ]),
        "registered resources: {regs:#?}"
    );
    assert_eq!(
        names.len(),
        2,
        "expected exactly one registration per resource: {regs:#?}"
    );
    for r in &regs {
        let name = r
            .request
            .resource_name
            .strip_prefix("macvtap.network.kubevirt.io/")
            .expect("checked above");
        assert_eq!(r.request.version, "v1beta1", "{r:?}");
        assert_eq!(r.request.endpoint, endpoint(name), "{r:?}");
        let opts = r.request.options.expect("RegisterRequest without options");
        assert!(
            opts.get_preferred_allocation_available,
            "options must announce GetPreferredAllocation: {r:?}"
        );
        assert!(!opts.pre_start_required, "{r:?}");
        assert!(
            r.socket_existed,
            "{} was not a socket when its RegisterRequest arrived (serve before register): {r:?}",
            r.request.endpoint
        );
        let served = r.dial_back.as_ref().unwrap_or_else(|e| {
            panic!(
                "the kubelet's dial-back during Register failed: {e}\n{}",
                dp.logs()
            )
        });
        assert_eq!(
            *served, opts,
            "GetDevicePluginOptions differs from the registered options"
        );
        assert!(world.socket(name).exists());
    }
    // `master` is an alias of lowerDevice; resources.json has the resources
    // as configured.
    let host = world.resource_entry("hostnet");
    assert_eq!(host["lowerDevice"], LOWER, "{host}");
    assert_eq!(host["mode"], "vepa", "{host}");
    assert_eq!(host["capacity"], 2, "{host}");
    assert_eq!(host["attach"], "host", "{host}");
    let data = world.resource_entry("dataplane");
    assert_eq!(data["mode"], "bridge", "default mode: {data}");
    assert_eq!(data["attach"], "pod", "default attach: {data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_preferred_allocation_and_prestart() {
    let world = World::new("dp-options");
    let mut dp = world.start(&conf1("dataplane", 8, "pod"), 1).await;
    let mut c = world.client("dataplane").await;

    let opts = within(
        "GetDevicePluginOptions",
        SLOW,
        c.get_device_plugin_options(Empty {}),
    )
    .await
    .expect("GetDevicePluginOptions")
    .into_inner();
    assert!(opts.get_preferred_allocation_available, "{opts:?}");
    assert!(!opts.pre_start_required, "{opts:?}");

    let all_ids = expected_ids("dataplane", 8);
    let small: Vec<String> = ["dataplane-1", "dataplane-2", "dataplane-7"]
        .map(String::from)
        .to_vec();
    let req = PreferredAllocationRequest {
        container_requests: vec![
            ContainerPreferredAllocationRequest {
                available_device_i_ds: all_ids.clone(),
                must_include_device_i_ds: vec!["dataplane-5".into()],
                allocation_size: 3,
            },
            ContainerPreferredAllocationRequest {
                available_device_i_ds: small.clone(),
                must_include_device_i_ds: vec![],
                allocation_size: 2,
            },
            ContainerPreferredAllocationRequest {
                available_device_i_ds: small.clone(),
                must_include_device_i_ds: small.clone(),
                allocation_size: 3,
            },
        ],
    };
    let resp = within(
        "GetPreferredAllocation",
        SLOW,
        c.get_preferred_allocation(req),
    )
    .await
    .expect("GetPreferredAllocation")
    .into_inner();
    assert_eq!(
        resp.container_responses.len(),
        3,
        "one answer per container: {resp:?}"
    );
    let cases: [(&[String], &[&str], usize); 3] = [
        (&all_ids, &["dataplane-5"], 3),
        (&small, &[], 2),
        (&small, &["dataplane-1", "dataplane-2", "dataplane-7"], 3),
    ];
    for (n, (available, must, size)) in cases.iter().enumerate() {
        let got = &resp.container_responses[n].device_i_ds;
        let set: BTreeSet<&String> = got.iter().collect();
        assert_eq!(
            got.len(),
            *size,
            "container {n}: allocation_size {size}, got {got:?}"
        );
        assert_eq!(set.len(), got.len(), "container {n}: duplicates in {got:?}");
        for id in got {
            assert!(
                available.contains(id),
                "container {n}: {id} is not available"
            );
        }
        for m in *must {
            assert!(
                got.iter().any(|g| g == m),
                "container {n}: must-include {m} missing from {got:?}"
            );
        }
    }

    let pre = within(
        "PreStartContainer",
        SLOW,
        c.pre_start_container(PreStartContainerRequest {
            devices_ids: vec!["dataplane-0".into()],
        }),
    )
    .await;
    assert!(pre.is_ok(), "PreStartContainer failed: {pre:?}");
    dp.assert_running("after the calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_restart_serves_and_registers_again_within_a_second() {
    let mut world = World::new("dp-restart");
    let mut dp = world.start(&two_resources(), 2).await;
    {
        // The kubelet holds a ListAndWatch stream, as the real one does.
        let w = world.watch("dataplane").await;
        w.first(SLOW).await;
    }
    for round in 1..=2 {
        world.kubelet.restart();
        let regs = world.kubelet.wait_registrations(2, SLOW).await;
        for r in &regs {
            let after = r.at.duration_since(world.kubelet.started_at);
            measured(
                &format!(
                    "re-registration #{round} of {} after kubelet.sock came back",
                    r.request.resource_name
                ),
                after,
            );
            assert!(
                after <= SECOND,
                "restart {round}: {} re-registered {after:?} after the kubelet came back",
                r.request.resource_name
            );
            assert!(
                r.socket_existed && r.dial_back.is_ok(),
                "restart {round}: registered before serving again: {r:?}"
            );
            assert_eq!(r.request.version, "v1beta1");
        }
        let names: BTreeSet<String> = regs
            .iter()
            .map(|r| r.request.resource_name.clone())
            .collect();
        assert_eq!(
            names,
            BTreeSet::from([resource_name("dataplane"), resource_name("hostnet")]),
            "restart {round}: {regs:#?}"
        );
        // A new client works on the re-created socket.
        for (name, cap) in [("dataplane", 4), ("hostnet", 2)] {
            let w = world.watch(name).await;
            let first = w.first(SLOW).await;
            assert_eq!(
                ids(&first.devices),
                expected_ids(name, cap),
                "restart {round}: {name}"
            );
        }
        dp.assert_running("after a kubelet restart");
    }
    // Still one registration per resource per kubelet generation.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let regs = world.kubelet.registrations();
    assert_eq!(
        regs.len(),
        6,
        "registrations over 3 kubelet generations: {regs:#?}"
    );
}

async fn signal_exits_cleanly(test: &str, signal: libc::c_int, signame: &str) {
    let world = World::new(test);
    let mut dp = world.start(&two_resources(), 2).await;
    // A kubelet keeps ListAndWatch streams open: shutdown must not wait
    // for them.
    let w = world.watch("dataplane").await;
    w.first(SLOW).await;
    let w2 = world.watch("hostnet").await;
    w2.first(SLOW).await;
    assert_eq!(
        sockets_in(&world.plugin_dir).len(),
        3,
        "kubelet.sock and two resource sockets expected"
    );

    let sent = Instant::now();
    dp.signal(signal);
    let status = dp.wait_exit(Duration::from_secs(3)).await;
    let took = sent.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running 3 s after {signame}"));
    measured(&format!("exit after {signame}"), took);
    assert_eq!(
        status.code(),
        Some(0),
        "{signame}: {}\n{}",
        status_text(&status),
        dp.logs()
    );
    assert!(
        took <= SECOND,
        "{signame}: exit took {took:?}\n{}",
        dp.logs()
    );
    for name in ["dataplane", "hostnet"] {
        assert!(
            !world.socket(name).exists(),
            "{signame}: {} left behind",
            world.socket(name).display()
        );
    }
    assert!(
        world.kubelet.socket().exists(),
        "{signame}: the daemon removed the kubelet's own socket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_removes_the_sockets_and_exits_0_within_a_second() {
    signal_exits_cleanly("dp-sigterm", libc::SIGTERM, "SIGTERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_removes_the_sockets_and_exits_0_within_a_second() {
    signal_exits_cleanly("dp-sigint", libc::SIGINT, "SIGINT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_restart_with_a_gap_before_kubelet_sock_returns() {
    let mut world = World::new("dp-restart-gap");
    let mut dp = world.start(&two_resources(), 2).await;
    // The new kubelet cleans the directory, then takes 400 ms to serve: a
    // registration attempted in the gap fails, the daemon must still
    // register once kubelet.sock is back.
    world.kubelet.restart_with_gap(Duration::from_millis(400));
    let regs = world.kubelet.wait_registrations(2, SLOW).await;
    for r in &regs {
        let after = r.at.duration_since(world.kubelet.started_at);
        measured(
            &format!(
                "re-registration of {} after a 400 ms gap, from kubelet.sock",
                r.request.resource_name
            ),
            after,
        );
        assert!(
            after <= SECOND,
            "{} after {after:?}",
            r.request.resource_name
        );
        assert!(r.socket_existed && r.dial_back.is_ok(), "{r:?}");
    }
    let w = world.watch("dataplane").await;
    assert_eq!(
        ids(&w.first(SLOW).await.devices),
        expected_ids("dataplane", 4)
    );
    dp.assert_running("after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_that_is_not_up_yet_is_registered_with_when_it_comes() {
    let mut world = World::new("dp-late-kubelet");
    world.kubelet.stop();
    world.kubelet.delete_sockets();
    let mut dp = world.spawn(&two_resources());
    tokio::time::sleep(Duration::from_millis(500)).await;
    dp.assert_running("without a kubelet");
    world.kubelet.come_up();
    let regs = world.kubelet.wait_registrations(2, SLOW).await;
    for r in &regs {
        let after = r.at.duration_since(world.kubelet.started_at);
        measured(
            &format!(
                "registration of {} after a late kubelet came up",
                r.request.resource_name
            ),
            after,
        );
        assert!(
            after <= SECOND,
            "{} after {after:?}",
            r.request.resource_name
        );
        assert!(r.socket_existed && r.dial_back.is_ok(), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restarted_after_a_crash_replaces_its_stale_sockets() {
    let world = World::new("dp-crash");
    let mut dp = world.start(&two_resources(), 2).await;
    dp.signal(libc::SIGKILL);
    dp.wait_exit(SLOW).await.expect("SIGKILL ends it");
    assert!(
        world.socket("dataplane").exists(),
        "a killed daemon cannot clean up; the stale socket should be there"
    );
    assert!(
        connect(&world.socket("dataplane")).await.is_err(),
        "the stale socket still answers"
    );
    let mut dp = world.spawn(&two_resources());
    let regs = world.kubelet.wait_registrations(4, SLOW).await;
    for r in &regs[2..] {
        let after = r.at.duration_since(dp.started);
        measured(
            &format!(
                "registration of {} after a crash restart",
                r.request.resource_name
            ),
            after,
        );
        assert!(after <= Duration::from_millis(200), "{after:?}");
        assert!(r.socket_existed && r.dial_back.is_ok(), "{r:?}");
    }
    let w = world.watch("hostnet").await;
    assert_eq!(
        ids(&w.first(SLOW).await.devices),
        expected_ids("hostnet", 2)
    );
    dp.assert_running("after replacing the stale sockets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_sock_that_refuses_at_first_is_retried_within_a_second() {
    // kubelet.sock appears at bind(2) and refuses connections until
    // listen(2). A real kubelet's window is microseconds, and a daemon that
    // reacts to the file's creation can hit it; here it is 100 ms wide so
    // the case is tested every time, not by chance.
    let mut world = World::new("dp-refusing");
    let mut dp = world.start(&two_resources(), 2).await;
    world
        .kubelet
        .restart_listen_delayed(Duration::from_millis(100));
    let regs = world.kubelet.wait_registrations(2, 3 * SECOND).await;
    for r in &regs {
        let after = r.at.duration_since(world.kubelet.started_at);
        measured(
            &format!(
                "re-registration of {} after kubelet.sock appeared refusing for 100 ms",
                r.request.resource_name
            ),
            after,
        );
        assert!(
            after <= SECOND,
            "{} re-registered {after:?} after kubelet.sock appeared (it accepted \
             connections 100 ms after that)\n{}",
            r.request.resource_name,
            dp.logs()
        );
    }
    dp.assert_running("after the restart");
}
