//! Start-up: refused configurations, the sweep guided by PodResources,
//! ifindexBase stability across restarts, and the metrics endpoint.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// (label, DP_MACVTAP_CONF or None for unset, groups of words of which
/// stderr must contain at least one each, case-insensitively).
type BadCase = (&'static str, Option<String>, Vec<Vec<&'static str>>);

fn bad_cases() -> Vec<BadCase> {
    let r = |v: serde_json::Value| Some(v.to_string());
    vec![
        ("unset", None, vec![vec!["DP_MACVTAP_CONF"]]),
        (
            "not json",
            Some("not json".into()),
            vec![vec!["line 1"], vec!["column"]],
        ),
        (
            "syntax error on line 3",
            Some(
                "[\n  {\"name\": \"a\", \"lowerDevice\": \"up0\"},\n  {\"name\": \"b\" \"lowerDevice\": \"up0\"}\n]"
                    .into(),
            ),
            vec![vec!["line 3"], vec!["column"]],
        ),
        (
            "not an array",
            r(json!({"name": "dataplane", "lowerDevice": "up0"})),
            vec![vec!["array", "sequence", "list"]],
        ),
        (
            "unknown mode",
            r(json!([{"name": "dataplane", "lowerDevice": "up0", "mode": "bogus"}])),
            vec![vec!["dataplane"], vec!["bogus", "mode"]],
        ),
        (
            "unknown attach",
            r(json!([{"name": "dataplane", "lowerDevice": "up0", "attach": "sideways"}])),
            vec![vec!["dataplane"], vec!["sideways", "attach"]],
        ),
        (
            "capacity 0",
            r(json!([{"name": "dataplane", "lowerDevice": "up0", "capacity": 0}])),
            vec![vec!["dataplane"], vec!["capacity"]],
        ),
        (
            "capacity 4097",
            r(json!([{"name": "dataplane", "lowerDevice": "up0", "capacity": 4097}])),
            vec![vec!["dataplane"], vec!["capacity"]],
        ),
        (
            "capacity -1",
            r(json!([{"name": "dataplane", "lowerDevice": "up0", "capacity": -1}])),
            vec![vec!["dataplane"], vec!["capacity"]],
        ),
        (
            "capacity a string",
            r(json!([{"name": "dataplane", "lowerDevice": "up0", "capacity": "4"}])),
            vec![vec!["dataplane"], vec!["capacity"]],
        ),
        (
            "missing lowerDevice",
            r(json!([{"name": "dataplane", "capacity": 4}])),
            vec![vec!["dataplane"], vec!["lowerDevice", "master"]],
        ),
        (
            "missing name",
            r(json!([{"lowerDevice": "up0", "capacity": 4}])),
            vec![vec!["name"]],
        ),
        (
            "empty name",
            r(json!([{"name": "", "lowerDevice": "up0"}])),
            vec![vec!["name"]],
        ),
        (
            "name with a slash",
            r(json!([{"name": "a/b", "lowerDevice": "up0"}])),
            vec![vec!["a/b"], vec!["name"]],
        ),
        (
            "duplicate names",
            r(json!([
                {"name": "twin", "lowerDevice": "up0"},
                {"name": "other", "lowerDevice": "up0"},
                {"name": "twin", "lowerDevice": "up0", "mode": "vepa"},
            ])),
            vec![
                vec!["twin"],
                vec!["duplicate", "twice", "more than once", "already", "unique"],
            ],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_exit_1_naming_the_problem() {
    let world = World::new("dp-badconf");
    let mut failures = Vec::new();
    for (label, conf, words) in bad_cases() {
        let mut cmd = world.cmd("");
        cmd = match conf {
            Some(c) => cmd.conf(&c),
            None => cmd.no_conf(),
        };
        let mut dp = cmd.spawn();
        let status = dp.wait_exit(Duration::from_secs(3)).await;
        let took = dp.started.elapsed();
        let Some(status) = status else {
            failures.push(format!("{label}: still running after 3 s\n{}", dp.logs()));
            continue;
        };
        measured(&format!("exit on bad configuration ({label})"), took);
        let stderr = dp.stderr();
        let lower = stderr.to_lowercase();
        if status.code() != Some(1) {
            failures.push(format!(
                "{label}: {} (want exit 1)\n{}",
                status_text(&status),
                dp.logs()
            ));
        }
        if took > SECOND {
            failures.push(format!("{label}: took {took:?} to exit"));
        }
        for group in &words {
            if !group.iter().any(|w| lower.contains(&w.to_lowercase())) {
                failures.push(format!(
                    "{label}: stderr names none of {group:?}: {}",
                    stderr.trim()
                ));
            }
        }
        if stderr.contains("panicked") {
            failures.push(format!("{label}: panicked: {stderr}"));
        }
        let sockets = sockets_in(&world.plugin_dir);
        if sockets != vec![world.kubelet.socket()] {
            failures.push(format!("{label}: sockets left: {sockets:?}"));
        }
    }
    let regs = world.kubelet.registrations();
    assert!(
        regs.is_empty(),
        "a refused configuration registered: {regs:#?}"
    );
    assert!(
        failures.is_empty(),
        "{} problem(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn help_lists_the_flags() {
    let out = std::process::Command::new(daemon_path())
        .arg("--help")
        .env_clear()
        .output()
        .expect("run --help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "--help: {:?}\n{text}", out.status);
    for flag in [
        "--device-plugin-path",
        "--state-dir",
        "--pod-resources-socket",
        "--metrics-address",
        "--log-format",
    ] {
        assert!(text.contains(flag), "--help does not list {flag}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_prints_one_json_object_per_line() {
    let world = World::new("dp-logjson");
    let mut cmd = world.cmd(&conf1("dataplane", 2, "pod"));
    cmd.extra_args = vec!["--log-format".into(), "json".into()];
    let mut dp = cmd.spawn();
    world.kubelet.wait_registrations(1, SLOW).await;
    dp.signal(libc::SIGTERM);
    let st = dp.wait_exit(SLOW).await;
    assert!(st.is_some_and(|s| s.success()), "{}", dp.logs());
    let stderr = dp.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log at all\n{}", dp.logs());
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"));
        assert!(v.is_object(), "log line is not an object: {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_lower_device_is_not_a_configuration_error() {
    let world = World::new("dp-nolower");
    let lab = &world.lab;
    let conf = json!([{"name": "later", "lowerDevice": "up7", "capacity": 2}]).to_string();
    let mut dp = world.start(&conf, 1).await;
    let w = world.watch("later").await;
    w.wait_for("unhealthy while up7 does not exist", SLOW, |d| {
        all(d, UNHEALTHY)
    })
    .await;
    lab.node.ip_cmd(&format!(
        "link add up7 type veth peer name lan7 netns {}",
        lab.lan.name()
    ));
    lab.node.ip_cmd("link set up7 up");
    lab.lan.ip_cmd("link set lan7 up");
    w.wait_for("healthy once up7 exists with carrier", 2 * SECOND, |d| {
        all(d, HEALTHY)
    })
    .await;
    dp.assert_running("with a late lower device");
}

fn host_sweep_conf() -> String {
    json!([
        {"name": "hostnet", "lowerDevice": LOWER, "capacity": 4, "attach": "host"},
        {"name": "podnet", "lowerDevice": LOWER, "capacity": 4, "attach": "pod"},
    ])
    .to_string()
}

/// Run 1 of the sweep tests: allocates hostnet-0..2 (links, nodes,
/// records) and podnet-0..2 (records), attaches podnet-1 to POD and
/// podnet-0 to a pod that then vanishes without DEL, adds a macvtap
/// `mvtap<hostnet-3>` without a record and one not named mvtap; stops the
/// daemon with SIGTERM. Returns the ifindexBase of hostnet and podnet.
async fn populate(world: &World) -> (u64, u64) {
    let lab = &world.lab;
    let mut dp = world.start(&host_sweep_conf(), 2).await;
    let hb = world.ifindex_base("hostnet");
    let pb = world.ifindex_base("podnet");
    let mut host = world.client("hostnet").await;
    host.allocate(allocate_request(&[
        &["hostnet-0"],
        &["hostnet-1"],
        &["hostnet-2"],
    ]))
    .await
    .unwrap_or_else(|e| panic!("Allocate hostnet: {e}\n{}", dp.logs()));
    let mut pod = world.client("podnet").await;
    pod.allocate(allocate_request(&[&["podnet-0", "podnet-1", "podnet-2"]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate podnet: {e}\n{}", dp.logs()));
    world
        .cni_add("podnet-1", "net1", "02:00:00:cc:00:01")
        .result();
    {
        let mut gone = lab.netns("gone");
        world
            .lab
            .plugin("ADD", &world.cni_config("podnet-0"))
            .container_id(&lab.other_container_id("gone"))
            .netns(gone.path())
            .ifname("net1")
            .run()
            .result();
        gone.delete();
    }
    lab.node.ip_cmd(&format!(
        "link add link up0 name mvtap{} index {} type macvtap",
        hb + 3,
        hb + 3
    ));
    lab.node
        .ip_cmd("link add link up0 name keepme type macvtap");
    dp.signal(libc::SIGTERM);
    let st = dp.wait_exit(Duration::from_secs(3)).await;
    assert!(
        st.is_some_and(|s| s.code() == Some(0)),
        "run 1 did not stop cleanly: {st:?}\n{}",
        dp.logs()
    );
    // Stopping the daemon must not tear down what pods hold.
    for id in ["hostnet-0", "hostnet-1", "hostnet-2"] {
        assert!(
            world.allocation_record(id).exists(),
            "{id}'s record gone after SIGTERM"
        );
        assert!(
            world.dev_node(id).exists(),
            "{id}'s node gone after SIGTERM"
        );
    }
    for i in 0..4 {
        assert!(
            lab.node.link(&format!("mvtap{}", hb + i)).is_some(),
            "mvtap{} gone after SIGTERM",
            hb + i
        );
    }
    for id in ["podnet-0", "podnet-1", "podnet-2"] {
        assert!(
            world.allocation_record(id).exists(),
            "{id}'s record gone after SIGTERM"
        );
    }
    assert!(world.dev_node("podnet-0").exists());
    assert!(world.dev_node("podnet-1").exists());
    (hb, pb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_sweep_removes_what_no_pod_holds() {
    let world = World::new("dp-sweep");
    let lab = &world.lab;
    let (hb, pb) = populate(&world).await;
    let calls_before = world.podres.calls();
    world.podres.set_held(&[
        (&resource_name("hostnet"), &["hostnet-1"]),
        (&resource_name("podnet"), &["podnet-1"]),
    ]);

    // Run 2: the sweep.
    let mut dp = world.start(&host_sweep_conf(), 4).await;
    assert!(
        world.podres.calls() > calls_before,
        "the daemon never asked PodResources\n{}",
        dp.logs()
    );
    assert_eq!(
        world.ifindex_base("hostnet"),
        hb,
        "ifindexBase moved across a restart"
    );
    assert_eq!(
        world.ifindex_base("podnet"),
        pb,
        "ifindexBase moved across a restart"
    );

    let gone_files = [
        world.allocation_record("hostnet-0"),
        world.allocation_record("hostnet-2"),
        world.allocation_record("podnet-0"),
        world.allocation_record("podnet-2"),
        world.dev_node("hostnet-0"),
        world.dev_node("hostnet-2"),
        world.dev_node("podnet-0"),
    ];
    let gone_links = [hb, hb + 2, hb + 3].map(|i| format!("mvtap{i}"));
    let leftover = || {
        let mut v: Vec<String> = gone_files
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        v.extend(
            gone_links
                .iter()
                .filter(|l| lab.node.link(l).is_some())
                .cloned(),
        );
        v
    };
    // The sweep runs before the daemon serves: right after registration
    // nothing unheld may remain (else an Allocate racing the sweep could
    // lose its fresh record).
    let at_registration = leftover();
    assert!(
        at_registration.is_empty(),
        "still there when the daemon registered: {at_registration:#?}\n{}",
        dp.logs()
    );

    let kept_files = [
        world.allocation_record("hostnet-1"),
        world.allocation_record("podnet-1"),
        world.dev_node("hostnet-1"),
        world.dev_node("podnet-1"),
    ];
    for f in &kept_files {
        assert!(f.exists(), "{} (held by a pod) was removed", f.display());
    }
    let held = lab.node.link(&format!("mvtap{}", hb + 1));
    assert!(held.is_some(), "mvtap{} (held) was removed", hb + 1);
    assert!(
        lab.node.link("keepme").is_some(),
        "a link not named mvtap<N> was removed"
    );
    let pod_link = lab.pod.expect_link("net1");
    lab.assert_device_node(&world.dev_node("podnet-1"), &lab.pod, &pod_link, 107, 107);
    dp.assert_running("after the sweep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_pod_resources_socket_nothing_is_swept() {
    let world = World::new("dp-nosweep");
    let lab = &world.lab;
    let (hb, _) = populate(&world).await;
    let missing = world.lab.dir.path().join("no-such-dir/kubelet.sock");
    let mut dp = world
        .cmd(&host_sweep_conf())
        .pod_resources(&missing)
        .spawn();
    world.kubelet.wait_registrations(4, SLOW).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    dp.assert_running("without PodResources");
    for id in [
        "hostnet-0",
        "hostnet-1",
        "hostnet-2",
        "podnet-0",
        "podnet-1",
        "podnet-2",
    ] {
        assert!(
            world.allocation_record(id).exists(),
            "{id}'s record removed without PodResources"
        );
    }
    for id in [
        "hostnet-0",
        "hostnet-1",
        "hostnet-2",
        "podnet-0",
        "podnet-1",
    ] {
        assert!(
            world.dev_node(id).exists(),
            "{id}'s node removed without PodResources"
        );
    }
    for i in 0..4 {
        assert!(
            lab.node.link(&format!("mvtap{}", hb + i)).is_some(),
            "mvtap{} removed without PodResources",
            hb + i
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ifindex_ranges_are_stable_and_disjoint_across_restarts() {
    let world = World::new("dp-bases");
    let range = |w: &World, name: &str| {
        let r = w.resource_entry(name);
        let base = r["ifindexBase"].as_u64().expect("ifindexBase");
        let cap = r["capacity"].as_u64().expect("capacity");
        (base, base + cap)
    };
    let disjoint = |a: (u64, u64), b: (u64, u64)| a.1 <= b.0 || b.1 <= a.0;
    let stop = |mut dp: Daemon| async move {
        dp.signal(libc::SIGTERM);
        let st = dp.wait_exit(Duration::from_secs(3)).await;
        assert!(st.is_some_and(|s| s.success()), "{}", dp.logs());
    };

    let conf_a = json!([{"name": "a", "lowerDevice": LOWER, "capacity": 4}]).to_string();
    let dp = world.start(&conf_a, 1).await;
    let a1 = range(&world, "a");
    stop(dp).await;

    let conf_ba = json!([
        {"name": "b", "lowerDevice": LOWER, "capacity": 10},
        {"name": "a", "lowerDevice": LOWER, "capacity": 4},
    ])
    .to_string();
    let dp = world.start(&conf_ba, 3).await;
    let a2 = range(&world, "a");
    let b2 = range(&world, "b");
    assert_eq!(a2, a1, "a's ifindex range moved when b was added before it");
    assert!(disjoint(a2, b2), "a {a2:?} and b {b2:?} overlap");
    stop(dp).await;

    // a grows: its range may move but must not overlap b's, and b stays.
    let conf_grown = json!([
        {"name": "b", "lowerDevice": LOWER, "capacity": 10},
        {"name": "a", "lowerDevice": LOWER, "capacity": 40},
    ])
    .to_string();
    let mut dp = world.start(&conf_grown, 5).await;
    let a3 = range(&world, "a");
    let b3 = range(&world, "b");
    assert_eq!(b3, b2, "b's range moved although b did not change");
    assert!(disjoint(a3, b3), "a {a3:?} and b {b3:?} overlap");
    dp.assert_running("after growing a");
}

/// `(name, labels, value)` of every sample in Prometheus text.
fn samples(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n.to_string(), rest.trim_end_matches('}').to_string()),
                None => (series.to_string(), String::new()),
            };
            Some((name, labels, value))
        })
        .collect()
}

/// Sum of the samples of the first metric name `pick` accepts, over the
/// series that mention `resource` in their labels (or all, if unlabelled).
fn metric(text: &str, resource: &str, pick: impl Fn(&str) -> bool) -> Option<(String, f64)> {
    let all = samples(text);
    let name = all
        .iter()
        .map(|(n, _, _)| n.clone())
        .find(|n| n.starts_with("macvtap_") && pick(n))?;
    let sum = all
        .iter()
        .filter(|(n, l, _)| *n == name && (l.is_empty() || l.contains(resource)))
        .map(|(_, _, v)| v)
        .sum();
    Some((name, sum))
}

fn devices_metric(n: &str) -> bool {
    n.contains("device") && !n.contains("health")
}
fn healthy_metric(n: &str) -> bool {
    n.contains("health")
}
fn allocations_metric(n: &str) -> bool {
    n.contains("alloc")
        && !["fail", "error", "second", "bucket", "duration"]
            .iter()
            .any(|x| n.contains(x))
}
fn failures_metric(n: &str) -> bool {
    n.contains("fail") || n.contains("error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz() {
    let world = World::new("dp-metrics");
    let lab = &world.lab;
    let addr = "127.0.0.1:9808";
    let mut dp = world
        .cmd(&conf1("dataplane", 4, "pod"))
        .metrics(addr)
        .spawn();
    world.kubelet.wait_registrations(1, SLOW).await;
    let node = lab.node.path();
    let get = |path: &str| {
        let deadline = Instant::now() + SLOW;
        loop {
            match http_get(&node, addr, path) {
                Ok(r) => return r,
                Err(e) if Instant::now() > deadline => {
                    panic!("GET {path} on {addr} in NODE failed: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    };
    let (code, _) = get("/healthz");
    assert_eq!(code, 200, "/healthz");
    let (code, text) = get("/metrics");
    assert_eq!(code, 200, "/metrics: {text}");
    let m = |pick: fn(&str) -> bool, text: &str| {
        metric(text, "dataplane", pick)
            .unwrap_or_else(|| panic!("no matching macvtap_ series in:\n{text}"))
    };
    let (n, v) = m(devices_metric, &text);
    assert_eq!(v, 4.0, "{n} for dataplane:\n{text}");
    let (n, v) = m(healthy_metric, &text);
    assert_eq!(v, 4.0, "{n} for dataplane:\n{text}");

    let mut c = world.client("dataplane").await;
    // Two calls of one device: "allocations" counts 2 whether it counts
    // calls or devices.
    for id in ["dataplane-0", "dataplane-1"] {
        c.allocate(allocate_request(&[&[id]]))
            .await
            .expect("Allocate");
    }
    let bad = c.allocate(allocate_request(&[&["dataplane-99"]])).await;
    assert!(bad.is_err());
    let (_, text) = get("/metrics");
    let (n, v) = m(allocations_metric, &text);
    assert!(v >= 2.0, "{n} = {v} after allocating 2 devices:\n{text}");
    let (n, v) = m(failures_metric, &text);
    assert!(v >= 1.0, "{n} = {v} after a refused Allocate:\n{text}");

    lab.lan.ip_cmd("link set lan0 down");
    let mut last = String::new();
    let ok = poll_until(3 * SECOND, || {
        last = get("/metrics").1;
        metric(&last, "dataplane", healthy_metric).is_some_and(|(_, v)| v == 0.0)
    })
    .await;
    assert!(
        ok.is_ok(),
        "healthy devices not 0 after carrier loss:\n{last}"
    );
    dp.assert_running("after the metrics");
    println!("metrics exposition:\n{last}");
}
