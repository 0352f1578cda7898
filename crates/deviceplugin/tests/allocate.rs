//! Allocate in both attach modes, followed by the real CNI ADD, and
//! Allocate of IDs the resource does not offer.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The DeviceSpec the contract promises for device `id` with `ifindex`.
fn want_spec(world: &World, id: &str, ifindex: u64) -> DeviceSpec {
    DeviceSpec {
        container_path: format!("/dev/tap{ifindex}"),
        host_path: world.dev_node(id).display().to_string(),
        permissions: "rw".into(),
    }
}

/// Checks one container's answer: exactly one DeviceSpec per device (in
/// any order), nothing else the contract does not mention.
fn check_container(
    world: &World,
    resp: &AllocateResponse,
    n: usize,
    name: &str,
    base: u64,
    devices: &[u64],
) {
    let c = &resp.container_responses[n];
    let mut got: Vec<(String, String, String)> = c
        .devices
        .iter()
        .map(|d| {
            (
                d.container_path.clone(),
                d.host_path.clone(),
                d.permissions.clone(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String, String)> = devices
        .iter()
        .map(|i| {
            let s = want_spec(world, &format!("{name}-{i}"), base + i);
            (s.container_path, s.host_path, s.permissions)
        })
        .collect();
    want.sort();
    assert_eq!(got, want, "container {n}'s DeviceSpecs: {c:?}");
    assert!(
        c.mounts.is_empty(),
        "container {n}: unexpected mounts {:?}",
        c.mounts
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_attach_pod_then_cni_add_gives_the_promised_devices() {
    let world = World::new("dp-alloc-pod");
    let lab = &world.lab;
    let mut dp = world.start(&conf1("dataplane", 8, "pod"), 1).await;
    let entry = world.resource_entry("dataplane");
    assert_eq!(entry["lowerDevice"], LOWER, "{entry}");
    assert_eq!(entry["mode"], "bridge", "{entry}");
    assert_eq!(entry["capacity"], 8, "{entry}");
    assert_eq!(entry["attach"], "pod", "{entry}");
    let base = world.ifindex_base("dataplane");
    assert!(base > 0, "ifindexBase {base}");

    let mut c = world.client("dataplane").await;
    let req = allocate_request(&[
        &["dataplane-0", "dataplane-3"],
        &["dataplane-5", "dataplane-7"],
    ]);
    let t = Instant::now();
    let resp = within("Allocate", SLOW, c.allocate(req))
        .await
        .unwrap_or_else(|e| panic!("Allocate failed: {e}\n{}", dp.logs()))
        .into_inner();
    measured(
        "Allocate, attach pod, 2 containers x 2 devices",
        t.elapsed(),
    );
    assert_eq!(resp.container_responses.len(), 2, "{resp:?}");
    check_container(&world, &resp, 0, "dataplane", base, &[0, 3]);
    check_container(&world, &resp, 1, "dataplane", base, &[5, 7]);
    for id in ["dataplane-0", "dataplane-3", "dataplane-5", "dataplane-7"] {
        let rec = world.allocation_record(id);
        assert!(rec.exists(), "no allocation record {}", rec.display());
        assert!(
            !world.dev_node(id).exists(),
            "attach pod: {} exists before the CNI ran",
            world.dev_node(id).display()
        );
    }
    let in_node = lab.node.macvtaps();
    assert!(
        in_node.is_empty(),
        "attach pod: Allocate made links in NODE: {:?}",
        in_node.iter().map(|l| &l.name).collect::<Vec<_>>()
    );

    // Allocate latency, one device per call, as the kubelet mostly does;
    // the same device twice is fine (the kubelet re-allocates freed ones).
    let mut times = Vec::new();
    for id in [
        "dataplane-1",
        "dataplane-2",
        "dataplane-4",
        "dataplane-6",
        "dataplane-1",
    ] {
        let t = Instant::now();
        within("Allocate", SLOW, c.allocate(allocate_request(&[&[id]])))
            .await
            .unwrap_or_else(|e| panic!("Allocate {id} failed: {e}\n{}", dp.logs()));
        times.push(t.elapsed());
    }
    measured(
        "Allocate, attach pod, 1 device (median of 5)",
        median(times),
    );

    // The real CNI ADD of each device into the pod.
    for (n, (i, mac)) in [
        (0u64, "02:00:00:aa:00:01"),
        (3, "02:00:00:aa:00:02"),
        (5, "02:00:00:aa:00:03"),
        (7, "02:00:00:aa:00:04"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("dataplane-{i}");
        let ifname = format!("net{}", n + 1);
        let out = world.cni_add(&id, &ifname, mac);
        out.result();
        let link = lab.pod.expect_link(&ifname);
        assert_eq!(link.kind.as_deref(), Some("macvtap"), "{}", link.json);
        assert_eq!(
            link.ifindex,
            base + i,
            "{id}: the pod's link has ifindex {}, Allocate promised {}",
            link.ifindex,
            base + i
        );
        assert_eq!(link.mac, mac, "{}", link.json);
        assert_eq!(link.mtu, 1500, "{}", link.json);
        lab.assert_lower_is_up0(&lab.pod, &link);
        lab.assert_device_node(&world.dev_node(&id), &lab.pod, &link, 107, 107);
    }
    assert!(
        lab.node.macvtaps().is_empty(),
        "attach pod: a link passed through NODE"
    );
    dp.assert_running("after the attachments");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_attach_host_makes_the_link_and_node_then_cni_moves_it() {
    let world = World::new("dp-alloc-host");
    let lab = &world.lab;
    let mut dp = world.start(&conf1("hostnet", 4, "host"), 1).await;
    assert_eq!(world.resource_entry("hostnet")["attach"], "host");
    let base = world.ifindex_base("hostnet");
    let mut c = world.client("hostnet").await;

    let t = Instant::now();
    let resp = within(
        "Allocate",
        SLOW,
        c.allocate(allocate_request(&[&["hostnet-1", "hostnet-2"]])),
    )
    .await
    .unwrap_or_else(|e| panic!("Allocate failed: {e}\n{}", dp.logs()))
    .into_inner();
    measured(
        "Allocate, attach host, 1 container x 2 devices",
        t.elapsed(),
    );
    assert_eq!(resp.container_responses.len(), 1, "{resp:?}");
    check_container(&world, &resp, 0, "hostnet", base, &[1, 2]);

    let up0 = lab.lower();
    for i in [1u64, 2] {
        let id = format!("hostnet-{i}");
        let name = format!("mvtap{}", base + i);
        let link = lab.node.expect_link(&name);
        assert_eq!(link.kind.as_deref(), Some("macvtap"), "{}", link.json);
        assert_eq!(link.mode.as_deref(), Some("bridge"), "{}", link.json);
        assert_eq!(link.ifindex, base + i, "{}", link.json);
        // Same namespace: `ip` names the lower device instead of its index.
        assert!(
            link.link.as_deref() == Some(LOWER) || link.link_index == Some(up0.ifindex),
            "not on up0: {}",
            link.json
        );
        assert!(
            link.link_netnsid.is_none(),
            "lower not in NODE: {}",
            link.json
        );
        lab.assert_device_node(&world.dev_node(&id), &lab.node, &link, 107, 107);
        assert!(world.allocation_record(&id).exists(), "no record for {id}");
    }

    let mut times = Vec::new();
    for id in ["hostnet-0", "hostnet-3"] {
        let t = Instant::now();
        within("Allocate", SLOW, c.allocate(allocate_request(&[&[id]])))
            .await
            .unwrap_or_else(|e| panic!("Allocate {id} failed: {e}\n{}", dp.logs()));
        times.push(t.elapsed());
    }
    for t in &times {
        measured("Allocate, attach host, 1 device", *t);
    }

    // The CNI moves hostnet-2's link into the pod as net1.
    let out = world.cni_add("hostnet-2", "net1", "02:00:00:bb:00:02");
    out.result();
    let link = lab.pod.expect_link("net1");
    assert_eq!(link.ifindex, base + 2, "{}", link.json);
    assert_eq!(link.kind.as_deref(), Some("macvtap"), "{}", link.json);
    assert_eq!(link.mac, "02:00:00:bb:00:02", "{}", link.json);
    lab.assert_lower_is_up0(&lab.pod, &link);
    lab.assert_device_node(&world.dev_node("hostnet-2"), &lab.pod, &link, 107, 107);
    assert!(
        lab.node.link(&format!("mvtap{}", base + 2)).is_none(),
        "the link was not moved out of NODE"
    );
    assert!(lab.node.link(&format!("mvtap{}", base + 1)).is_some());
    dp.assert_running("after the attachment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_refuses_ids_not_offered_and_leaves_nothing() {
    let world = World::new("dp-alloc-bad");
    let lab = &world.lab;
    let conf = json!([
        {"name": "hostnet", "lowerDevice": LOWER, "capacity": 4, "attach": "host"},
        {"name": "podnet", "lowerDevice": LOWER, "capacity": 4, "attach": "pod"},
    ])
    .to_string();
    let mut dp = world.start(&conf, 2).await;
    let mut host = world.client("hostnet").await;
    let mut pod = world.client("podnet").await;

    let bad = [
        "podnet-0",
        "hostnet-4",
        "hostnet-100",
        "hostnet-4294967297",
        "garbage",
        "",
        "hostnet",
        "hostnet-",
        "hostnet--1",
        "hostnet-01",
        "hostnet-+1",
        "hostnet-1 ",
        "hostnet-1/../../x",
        "../hostnet-1",
        "HOSTNET-1",
    ];
    let mut failures = Vec::new();
    let mut cases: Vec<(String, Vec<Vec<String>>)> = bad
        .iter()
        .map(|b| (format!("alone {b:?}"), vec![vec![b.to_string()]]))
        .collect();
    cases.push((
        "good then bad in one container".into(),
        vec![vec!["hostnet-0".into(), "hostnet-4".into()]],
    ));
    cases.push((
        "good container, then a container with a bad ID".into(),
        vec![
            vec!["hostnet-0".into(), "hostnet-1".into()],
            vec!["hostnet-2".into(), "podnet-1".into()],
        ],
    ));
    for (label, containers) in &cases {
        let refs: Vec<Vec<&str>> = containers
            .iter()
            .map(|c| c.iter().map(String::as_str).collect())
            .collect();
        let slices: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
        let r = within("Allocate", SLOW, host.allocate(allocate_request(&slices))).await;
        match r {
            Ok(resp) => failures.push(format!(
                "hostnet {label}: accepted: {:?}",
                resp.into_inner()
            )),
            Err(s) if s.code() != tonic::Code::InvalidArgument => failures.push(format!(
                "hostnet {label}: code {:?} (want InvalidArgument): {}",
                s.code(),
                s.message()
            )),
            Err(_) => {}
        }
        let left = world.allocation_leftovers();
        assert!(
            left.is_empty(),
            "hostnet {label}: left behind {left:#?}\n{}",
            dp.logs()
        );
    }
    // A pod-mode resource refuses the other resource's IDs too.
    for ids in [
        vec!["hostnet-0"],
        vec!["podnet-0", "hostnet-1"],
        vec!["podnet-4"],
    ] {
        let r = within("Allocate", SLOW, pod.allocate(allocate_request(&[&ids]))).await;
        match r {
            Ok(resp) => failures.push(format!("podnet {ids:?}: accepted: {:?}", resp.into_inner())),
            Err(s) if s.code() != tonic::Code::InvalidArgument => failures.push(format!(
                "podnet {ids:?}: code {:?} (want InvalidArgument): {}",
                s.code(),
                s.message()
            )),
            Err(_) => {}
        }
        let left = world.allocation_leftovers();
        assert!(left.is_empty(), "podnet {ids:?}: left behind {left:#?}");
    }
    dp.assert_running("after the refused calls");
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The control: the same checks see what a good call makes.
    host.allocate(allocate_request(&[&["hostnet-0", "hostnet-1"]]))
        .await
        .unwrap_or_else(|e| panic!("good Allocate failed after the bad ones: {e}"));
    let left = world.allocation_leftovers();
    assert_eq!(
        left.len(),
        6,
        "two records, two nodes and two links expected: {left:#?}"
    );
    assert_eq!(lab.node.macvtaps().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_failure_for_one_device_undoes_the_whole_call() {
    let world = World::new("dp-alloc-undo");
    let lab = &world.lab;
    let mut dp = world.start(&conf1("hostnet", 4, "host"), 1).await;
    let base = world.ifindex_base("hostnet");
    // Something else already has hostnet-3's ifindex in NODE.
    lab.node.ip_cmd(&format!(
        "link add blocker index {} type veth peer name blockerp",
        base + 3
    ));
    let mut c = world.client("hostnet").await;
    let r = within(
        "Allocate",
        SLOW,
        c.allocate(allocate_request(&[
            &["hostnet-0"],
            &["hostnet-2", "hostnet-3"],
        ])),
    )
    .await;
    assert!(
        r.is_err(),
        "Allocate succeeded although ifindex {} is taken: {r:?}",
        base + 3
    );
    let left = world.allocation_leftovers();
    assert!(
        left.is_empty(),
        "the failed call left {left:#?}\n{}",
        dp.logs()
    );
    assert!(
        lab.node.link("blocker").is_some(),
        "the daemon touched a link it did not make"
    );
    // The devices that were undone can be allocated again.
    c.allocate(allocate_request(&[&["hostnet-0", "hostnet-2"]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate after the undo failed: {e}"));
    assert_eq!(lab.node.macvtaps().len(), 2);
    dp.assert_running("after the failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocates_of_distinct_devices_all_succeed() {
    let world = World::new("dp-alloc-conc");
    let lab = &world.lab;
    let mut dp = world.start(&conf1("hostnet", 16, "host"), 1).await;
    let base = world.ifindex_base("hostnet");
    let mut calls = Vec::new();
    let started = Instant::now();
    for i in 0..8u64 {
        let mut c = world.client("hostnet").await;
        calls.push(tokio::spawn(async move {
            let id = format!("hostnet-{i}");
            let t = Instant::now();
            let r = c.allocate(allocate_request(&[&[id.as_str()]])).await;
            (id, r.map(|r| r.into_inner()), t.elapsed())
        }));
    }
    let mut worst = Duration::ZERO;
    for call in calls {
        let (id, r, took) = call.await.expect("task");
        let resp =
            r.unwrap_or_else(|e| panic!("concurrent Allocate {id} failed: {e}\n{}", dp.logs()));
        assert_eq!(resp.container_responses.len(), 1);
        worst = worst.max(took);
    }
    measured(
        "8 concurrent Allocates, attach host, all done",
        started.elapsed(),
    );
    measured("8 concurrent Allocates, attach host, slowest call", worst);
    let links = lab.node.macvtaps();
    assert_eq!(
        links.len(),
        8,
        "{:?}",
        links.iter().map(|l| &l.name).collect::<Vec<_>>()
    );
    for i in 0..8u64 {
        let id = format!("hostnet-{i}");
        let link = lab.node.expect_link(&format!("mvtap{}", base + i));
        assert_eq!(link.ifindex, base + i);
        lab.assert_device_node(&world.dev_node(&id), &lab.node, &link, 107, 107);
    }
    dp.assert_running("after concurrent calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reallocating_a_host_device_gives_a_working_link_and_node() {
    // The kubelet allocates a device again when the pod it went to was
    // removed before its sandbox ever ran: the link is still in NODE.
    let world = World::new("dp-alloc-again");
    let lab = &world.lab;
    let mut dp = world.start(&conf1("hostnet", 4, "host"), 1).await;
    let base = world.ifindex_base("hostnet");
    let mut c = world.client("hostnet").await;
    for round in 1..=2 {
        c.allocate(allocate_request(&[&["hostnet-1"]]))
            .await
            .unwrap_or_else(|e| panic!("Allocate #{round} failed: {e}\n{}", dp.logs()));
        let links = lab.node.macvtaps();
        assert_eq!(links.len(), 1, "round {round}: {links:?}");
        let link = lab.node.expect_link(&format!("mvtap{}", base + 1));
        assert_eq!(link.ifindex, base + 1);
        lab.assert_device_node(&world.dev_node("hostnet-1"), &lab.node, &link, 107, 107);
    }
    world
        .cni_add("hostnet-1", "net1", "02:00:00:dd:00:01")
        .result();
    let link = lab.pod.expect_link("net1");
    assert_eq!(link.ifindex, base + 1);
    lab.assert_device_node(&world.dev_node("hostnet-1"), &lab.pod, &link, 107, 107);
    dp.assert_running("after the attachment");
}
