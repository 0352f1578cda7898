//! The metrics port as its clients see it: a real scrape of the running
//! daemon read by the Prometheus text and OpenMetrics parsers of PyPI's
//! `prometheus-client` (in the virtualenv `scripts/install-deps` creates,
//! `/opt/macvtap-test-venv`, or `MACVTAP_TEST_PYTHON`), readiness and the
//! registration gauge, and clients that are slow, many or malformed.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0";

/// Parses with PyPI prometheus-client and prints every family as JSON.
const PARSE: &str = r#"
import json, sys
if sys.argv[1] == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
families = [
    {"name": f.name, "type": f.type, "unit": f.unit,
     "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
    for f in text_string_to_metric_families(sys.stdin.read())
]
json.dump(families, sys.stdout)
"#;

/// One parsed family: type, unit, and its samples as (name, labels, value).
#[derive(Debug, Clone)]
struct Family {
    kind: String,
    unit: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// `text` parsed by the real parser of `format` ("openmetrics" or "text").
fn parse(format: &str, text: &str) -> BTreeMap<String, Family> {
    let mut child = Command::new(python())
        .args(["-c", PARSE, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to python");
    let out = child.wait_with_output().expect("python output");
    assert!(
        out.status.success(),
        "the {format} parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: Vec<Value> = serde_json::from_slice(&out.stdout).expect("parser's JSON");
    families
        .into_iter()
        .map(|f| {
            let samples = f["samples"]
                .as_array()
                .expect("samples")
                .iter()
                .map(|s| {
                    let labels = s["labels"]
                        .as_object()
                        .expect("labels")
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect();
                    (
                        s["name"].as_str().unwrap_or_default().to_string(),
                        labels,
                        s["value"].as_f64().expect("value"),
                    )
                })
                .collect();
            let family = Family {
                kind: f["type"].as_str().unwrap_or_default().to_string(),
                unit: f["unit"].as_str().unwrap_or_default().to_string(),
                samples,
            };
            (f["name"].as_str().unwrap_or_default().to_string(), family)
        })
        .collect()
}

fn family<'a>(families: &'a BTreeMap<String, Family>, name: &str) -> &'a Family {
    families
        .get(name)
        .unwrap_or_else(|| panic!("no family {name} in {:#?}", families.keys()))
}

/// The value of the sample `name` whose labels include `labels`.
fn value(
    families: &BTreeMap<String, Family>,
    family_name: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let f = family(families, family_name);
    let found: Vec<f64> = f
        .samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?} in {f:#?}");
    found[0]
}

/// The label sets the samples named `name` carry, sorted (a family's
/// series come in no particular order).
fn label_sets(f: &Family, name: &str) -> Vec<BTreeMap<String, String>> {
    let mut sets: Vec<_> = f
        .samples
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, l, _)| l.clone())
        .collect();
    sets.sort();
    sets
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One request written as is; the whole answer as (status, headers, body).
fn exchange(addr: &str, request: &[u8]) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_string(), body.to_string()))
}

fn get_request(path: &str, accept: Option<&str>) -> Vec<u8> {
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: node\r\n{accept}Connection: close\r\n\r\n").into_bytes()
}

/// GET from inside `netns`, retried until the port answers.
fn get(
    netns: &Path,
    addr: &'static str,
    path: &str,
    accept: Option<&str>,
) -> (u16, String, String) {
    let request = get_request(path, accept);
    in_netns(netns, move || {
        let deadline = Instant::now() + SLOW;
        loop {
            match exchange(addr, &request) {
                Ok(r) => return r,
                Err(e) if Instant::now() > deadline => panic!("GET on {addr}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })
}

/// Both expositions of one moment, parsed; asserts the content types.
fn scrape(netns: &Path, addr: &'static str) -> [BTreeMap<String, Family>; 2] {
    let (code, head, om) = get(netns, addr, "/metrics", Some(OPENMETRICS));
    assert_eq!(code, 200, "{head}\n{om}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let (code, head, text) = get(netns, addr, "/metrics", None);
    assert_eq!(code, 200, "{head}\n{text}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    [parse("openmetrics", &om), parse("text", &text)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_scrape_parses_with_the_prometheus_parsers() {
    let world = World::new("dp-mparse");
    let addr = "127.0.0.1:9471";
    let mut dp = world
        .cmd(&conf1("dataplane", 4, "pod"))
        .metrics(addr)
        .spawn();
    world.kubelet.wait_registrations(1, SLOW).await;
    let node = world.lab.node.path();
    let res = resource_name("dataplane");
    let by_resource = [("resource", res.as_str())];

    // Registration is recorded just after the kubelet's answer.
    let mut before = scrape(&node, addr);
    let deadline = Instant::now() + SLOW;
    while value(
        &before[0],
        "macvtap_deviceplugin_registered",
        "macvtap_deviceplugin_registered",
        &by_resource,
    ) != 1.0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        before = scrape(&node, addr);
    }
    for families in &before {
        for (name, kind) in [
            ("macvtap_devices", "gauge"),
            ("macvtap_devices_healthy", "gauge"),
            ("macvtap_allocations", "counter"),
            ("macvtap_allocation_failures", "counter"),
            ("macvtap_registrations", "counter"),
            ("macvtap_deviceplugin_registered", "gauge"),
            ("macvtap_deviceplugin_config_reloads", "counter"),
            ("macvtap_deviceplugin_config_last_reload_success", "gauge"),
            ("macvtap_deviceplugin_sweeps", "counter"),
            ("macvtap_deviceplugin_sweep_removed", "counter"),
            ("macvtap_deviceplugin_sweep_grants_rederived", "counter"),
        ] {
            assert_eq!(family(families, name).kind, kind, "{name}");
        }
        let one = |n: &str| value(families, n, n, &by_resource);
        assert_eq!(one("macvtap_devices"), 4.0);
        assert_eq!(one("macvtap_devices_healthy"), 4.0);
        assert_eq!(one("macvtap_deviceplugin_registered"), 1.0);
        let total = |f: &str| value(families, f, &format!("{f}_total"), &by_resource);
        assert_eq!(total("macvtap_registrations"), 1.0);
        assert_eq!(total("macvtap_allocations"), 0.0);
        // One label set per resource, nothing else.
        for name in ["macvtap_devices", "macvtap_deviceplugin_registered"] {
            assert_eq!(
                label_sets(family(families, name), name),
                vec![labels(&by_resource)]
            );
        }
        // The start-up load is the one load so far.
        let reloads = family(families, "macvtap_deviceplugin_config_reloads");
        assert_eq!(
            label_sets(reloads, "macvtap_deviceplugin_config_reloads_total"),
            vec![labels(&[("result", "error")]), labels(&[("result", "ok")])]
        );
        let reload = |result| {
            value(
                families,
                "macvtap_deviceplugin_config_reloads",
                "macvtap_deviceplugin_config_reloads_total",
                &[("result", result)],
            )
        };
        assert_eq!((reload("ok"), reload("error")), (1.0, 0.0));
        let n = "macvtap_deviceplugin_config_last_reload_success";
        assert_eq!(value(families, n, n, &[]), 1.0);
        // The sweep ran once (the PodResources stand-in answers), on a
        // fresh node: it found nothing to remove.
        let sweeps = |result| {
            value(
                families,
                "macvtap_deviceplugin_sweeps",
                "macvtap_deviceplugin_sweeps_total",
                &[("result", result)],
            )
        };
        assert_eq!(sweeps("done") + sweeps("skipped"), 1.0);
        let removed = family(families, "macvtap_deviceplugin_sweep_removed");
        assert_eq!(
            label_sets(removed, "macvtap_deviceplugin_sweep_removed_total"),
            ["links", "nodes", "records"].map(|k| labels(&[("kind", k)]))
        );
        assert!(
            removed.samples.iter().all(|(_, _, v)| *v == 0.0),
            "{removed:#?}"
        );
    }

    // Allocate: two granted, one refused; each is timed.
    let mut c = world.client("dataplane").await;
    for id in ["dataplane-0", "dataplane-1"] {
        c.allocate(allocate_request(&[&[id]]))
            .await
            .expect("Allocate");
    }
    assert!(c
        .allocate(allocate_request(&[&["dataplane-9"]]))
        .await
        .is_err());
    let after = scrape(&node, addr);
    let h = "macvtap_deviceplugin_allocate_duration_seconds";
    for (families, before) in after.iter().zip(&before) {
        // No Allocate yet: no series (and so no family) for the resource.
        assert!(
            before
                .get(h)
                .is_none_or(|f| label_sets(f, &format!("{h}_count")).is_empty()),
            "{:#?}",
            before.get(h)
        );
        assert_eq!(family(families, h).kind, "histogram");
        let count = value(families, h, &format!("{h}_count"), &by_resource);
        assert_eq!(count, 3.0, "{:#?}", family(families, h));
        let sum = value(families, h, &format!("{h}_sum"), &by_resource);
        assert!(sum > 0.0 && sum < 3.0 * 30.0, "sum {sum}");
        // Cumulative buckets from tens of µs to the lock's 30 s, +Inf = count.
        let buckets: Vec<(String, f64)> = family(families, h)
            .samples
            .iter()
            .filter(|(n, _, _)| *n == format!("{h}_bucket"))
            .map(|(_, l, v)| (l["le"].clone(), *v))
            .collect();
        let les: Vec<f64> = buckets
            .iter()
            .map(|(le, _)| {
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le")
                }
            })
            .collect();
        assert!(les.first().is_some_and(|l| *l <= 0.0001), "{les:?}");
        assert!(les.contains(&30.0), "{les:?}");
        assert!(les.windows(2).all(|w| w[0] < w[1]), "{les:?}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        assert_eq!(
            buckets.last().map(|b| (b.0.as_str(), b.1)),
            Some(("+Inf", 3.0))
        );
        let total = |f: &str| value(families, f, &format!("{f}_total"), &by_resource);
        assert_eq!(total("macvtap_allocations"), 2.0);
        assert_eq!(total("macvtap_allocation_failures"), 1.0);
    }
    assert_eq!(
        family(&after[0], h).unit,
        "seconds",
        "OpenMetrics carries the unit"
    );
    dp.assert_running("after the scrapes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_gauge_and_readiness_follow_the_kubelet() {
    let mut world = World::new("dp-mreg");
    world.kubelet.stop();
    let addr = "127.0.0.1:9472";
    let mut dp = world
        .cmd(&conf1("dataplane", 2, "pod"))
        .metrics(addr)
        .spawn();
    let node = world.lab.node.path();
    let res = resource_name("dataplane");
    let registered = |node: &Path| {
        let [om, _] = scrape(node, addr);
        let n = "macvtap_deviceplugin_registered";
        value(&om, n, n, &[("resource", res.as_str())])
    };
    assert_eq!(get(&node, addr, "/healthz", None).0, 503);
    assert_eq!(registered(&node), 0.0, "no kubelet yet");
    assert_eq!(get(&node, addr, "/livez", None).0, 200);

    world.kubelet.come_up();
    world.kubelet.wait_registrations(1, SLOW).await;
    let ok = poll_until(SLOW, || {
        get(&node, addr, "/healthz", None).0 == 200 && registered(&node) == 1.0
    })
    .await;
    assert!(ok.is_ok(), "not ready once registered\n{}", dp.logs());

    // A kubelet restart: registered again (the count says twice).
    world.kubelet.restart();
    world.kubelet.wait_registrations(1, SLOW).await;
    let ok = poll_until(SLOW, || {
        let [om, _] = scrape(&node, addr);
        let n = "macvtap_registrations";
        value(&om, n, &format!("{n}_total"), &[("resource", res.as_str())]) == 2.0
            && registered(&node) == 1.0
    })
    .await;
    assert!(
        ok.is_ok(),
        "not registered again after the restart\n{}",
        dp.logs()
    );
    dp.assert_running("after the kubelet restart");
}

/// Whether the server has closed `s` (EOF or reset); does not block.
fn closed_by_server(s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 16];
    let closed = match (&mut &*s).read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    s.set_nonblocking(false).expect("blocking");
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_requests_malformed_requests_and_200_parallel_scrapes_do_not_stall_the_daemon() {
    let world = World::new("dp-mslow");
    let addr = "127.0.0.1:9473";
    let mut dp = world
        .cmd(&conf1("dataplane", 4, "pod"))
        .metrics(addr)
        .spawn();
    world.kubelet.wait_registrations(1, SLOW).await;
    let node = world.lab.node.path();
    assert_eq!(get(&node, addr, "/healthz", None).0, 200);

    // Allocate answers before the storm, so the calls during it are the
    // daemon's answers under load, not the client's connection set-up.
    let mut c = world.client("dataplane").await;
    c.allocate(allocate_request(&[&["dataplane-0"]]))
        .await
        .expect("Allocate before the scrapes");

    // Half a request line, then nothing, on as many connections as the
    // server serves at once; old enough to be closed for new ones.
    let halves = in_netns(&node, move || {
        (0..64)
            .map(|_| {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(b"GET /metr").expect("half a request");
                s
            })
            .collect::<Vec<_>>()
    });
    let halves_since = Instant::now();
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Meanwhile 200 scrapes at once, and Allocate keeps answering.
    let scrapes = std::thread::spawn({
        let node = node.clone();
        move || {
            in_netns(&node, move || {
                let start = Instant::now();
                let threads: Vec<_> = (0..200)
                    .map(|_| {
                        std::thread::spawn(move || {
                            let t = Instant::now();
                            let r = exchange(addr, &get_request("/metrics", Some(OPENMETRICS)));
                            (r, t.elapsed())
                        })
                    })
                    .collect();
                let results: Vec<_> = threads
                    .into_iter()
                    .map(|t| t.join().expect("scrape thread"))
                    .collect();
                (results, start.elapsed())
            })
        }
    });
    let mut slowest_allocate = Duration::ZERO;
    let mut allocations = 0;
    while !scrapes.is_finished() {
        let id = format!("dataplane-{}", allocations % 4);
        let t = Instant::now();
        within(
            "Allocate during the scrapes",
            SECOND,
            c.allocate(allocate_request(&[&[&id]])),
        )
        .await
        .expect("Allocate during the scrapes");
        slowest_allocate = slowest_allocate.max(t.elapsed());
        allocations += 1;
    }
    let (results, all_took) = scrapes.join().expect("scrapes");
    let mut failed = Vec::new();
    let mut slowest = Duration::ZERO;
    for (r, took) in &results {
        slowest = slowest.max(*took);
        match r {
            Ok((200, _, body)) if body.ends_with("# EOF\n") => {}
            other => failed.push(format!("{other:?}")),
        }
    }
    measured("200 parallel scrapes, all answered", all_took);
    measured("slowest of the 200 scrapes", slowest);
    measured("slowest Allocate during the scrapes", slowest_allocate);
    println!("{allocations} Allocate calls answered during the scrapes");
    assert!(
        failed.is_empty(),
        "{} of 200 scrapes failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    // The listen backlog held every handshake (the kernel's counter of
    // this namespace): none was dropped and retried a second later.
    let overflows = in_netns(&node, || {
        let out = Command::new("nstat")
            .args(["-asz", "TcpExtListenOverflows"])
            .output()
            .expect("nstat");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("TcpExtListenOverflows"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    });
    assert_eq!(overflows, Some(0), "listen queue overflows");
    assert!(all_took < SLOW, "200 scrapes took {all_took:?}");
    assert!(allocations >= 1);
    // One of them, fully parsed: a complete exposition under load.
    let body = results[199]
        .0
        .as_ref()
        .map(|r| r.2.clone())
        .unwrap_or_default();
    let families = parse("openmetrics", &body);
    assert_eq!(family(&families, "macvtap_devices").kind, "gauge");

    // Malformed requests: 400 (hyper's parser), and the daemon lives on.
    for request in [
        &b"BLAH\r\n\r\n"[..],
        b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /metrics HTTP/9.9\r\n\r\n",
    ] {
        let (code, head, _) = in_netns(&node, move || exchange(addr, request).expect("exchange"));
        assert_eq!(code, 400, "{:?}: {head}", String::from_utf8_lossy(request));
    }
    // A head larger than the 8 KiB buffer.
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let (code, head, _) = in_netns(&node, move || {
        exchange(addr, huge.as_bytes()).expect("exchange")
    });
    assert!(code == 431 || code == 400, "oversized head: {head}");
    let (code, _, _) = get(&node, addr, "/nothing", None);
    assert_eq!(code, 404);
    let post = in_netns(&node, move || {
        exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("POST")
    });
    assert_eq!(post.0, 405, "{}", post.1);

    // Half requests that nothing pushes out are cut off by the read
    // timeout, not held forever; those the scrapes pushed out went at once.
    let evicted = halves.iter().filter(|s| closed_by_server(s)).count();
    println!("{evicted} of 64 half requests closed to make room for the scrapes");
    let half = in_netns(&node, move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /metr").expect("half a request");
        s
    });
    let held_since = Instant::now();
    wait_until(
        "every half request closed",
        Duration::from_secs(7),
        || closed_by_server(&half) && halves.iter().all(closed_by_server),
        || dp.logs(),
    )
    .await;
    let held = held_since.elapsed();
    measured("lone half request closed after", held);
    measured("all 64 half requests closed after", halves_since.elapsed());
    assert!(
        held >= Duration::from_millis(4500) && held < Duration::from_secs(6),
        "the lone half request closed after {held:?}, want the 5 s read timeout"
    );
    assert_eq!(get(&node, addr, "/healthz", None).0, 200);
    dp.assert_running("after the slow, many and malformed clients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_counts_say_what_the_start_up_sweep_removed_or_that_it_was_skipped() {
    let world = World::new("dp-msweep");
    let addr = "127.0.0.1:9474";
    let node = world.lab.node.path();
    let conf = conf1("dataplane", 4, "pod");

    // Run 1: two devices granted, then the daemon stops (grants stay).
    let mut dp = world.start(&conf, 1).await;
    let mut c = world.client("dataplane").await;
    for id in ["dataplane-0", "dataplane-1"] {
        c.allocate(allocate_request(&[&[id]]))
            .await
            .expect("Allocate");
        assert!(world.allocation_record(id).exists(), "no grant for {id}");
    }
    drop(c);
    dp.signal(libc::SIGTERM);
    assert!(dp.wait_exit(SLOW).await.is_some(), "no exit on SIGTERM");

    // Run 2: the kubelet says a pod holds dataplane-1 only.
    world
        .podres
        .set_held(&[(&resource_name("dataplane"), &["dataplane-1"])]);
    let mut dp = world.cmd(&conf).metrics(addr).spawn();
    world.kubelet.wait_registrations(2, SLOW).await;
    let [om, text] = scrape(&node, addr);
    for families in [&om, &text] {
        let removed = |kind| {
            value(
                families,
                "macvtap_deviceplugin_sweep_removed",
                "macvtap_deviceplugin_sweep_removed_total",
                &[("kind", kind)],
            )
        };
        assert_eq!(
            (removed("records"), removed("nodes"), removed("links")),
            (1.0, 0.0, 0.0),
            "dataplane-0's grant, which no pod holds"
        );
        let sweeps = |result| {
            value(
                families,
                "macvtap_deviceplugin_sweeps",
                "macvtap_deviceplugin_sweeps_total",
                &[("result", result)],
            )
        };
        assert_eq!((sweeps("done"), sweeps("skipped")), (1.0, 0.0));
    }
    assert!(!world.allocation_record("dataplane-0").exists());
    assert!(world.allocation_record("dataplane-1").exists());
    dp.signal(libc::SIGTERM);
    assert!(dp.wait_exit(SLOW).await.is_some(), "no exit on SIGTERM");

    // Run 3: no PodResources API to ask: nothing swept, and it says so.
    let missing = world.state_dir().with_file_name("no-pod-resources.sock");
    let mut dp = world
        .cmd(&conf)
        .metrics(addr)
        .pod_resources(&missing)
        .spawn();
    world.kubelet.wait_registrations(3, SLOW).await;
    let [om, _] = scrape(&node, addr);
    let sweeps = |result| {
        value(
            &om,
            "macvtap_deviceplugin_sweeps",
            "macvtap_deviceplugin_sweeps_total",
            &[("result", result)],
        )
    };
    assert_eq!((sweeps("done"), sweeps("skipped")), (0.0, 1.0));
    assert!(world.allocation_record("dataplane-1").exists());
    dp.assert_running("after the scrapes");
}
