//! Issue 12, part 7: the device plugin under abuse. Allocate with duplicate
//! and excess IDs, one sync per Allocate, cancelled Allocates, devices whose
//! promised ifindex a host link holds, the metrics port under idle and
//! slow connections, and discovered resources whose link is gone.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Every file under the state directory with its size and change time:
/// equal snapshots mean nothing was written, created or removed.
fn state_snapshot(world: &World) -> BTreeMap<PathBuf, (u64, i64, i64)> {
    files_under(&world.state_dir())
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::symlink_metadata(&p).ok()?;
            Some((p, (m.size(), m.ctime(), m.ctime_nsec())))
        })
        .collect()
}

/// The refusal's code and message, or a description of the success.
fn refusal(r: Result<tonic::Response<AllocateResponse>, tonic::Status>) -> (tonic::Code, String) {
    match r {
        Ok(resp) => panic!("accepted: {:?}", resp.into_inner()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_refuses_duplicate_and_excess_ids_at_once_and_writes_nothing() {
    let world = World::new("dp-dup");
    let conf = json!([
        {"name": "hostnet", "lowerDevice": LOWER, "capacity": 100, "attach": "host"},
        {"name": "podnet", "lowerDevice": LOWER, "capacity": 100, "attach": "pod"},
    ])
    .to_string();
    let mut dp = world.start(&conf, 2).await;
    let mut host = world.client("hostnet").await;
    let mut pod = world.client("podnet").await;
    let before = state_snapshot(&world);

    // One ID 20,000 times in one container: before the fix this held the
    // node lock for about 17 s (one fsync per copy).
    let dup: Vec<&str> = vec!["hostnet-0"; 20_000];
    let t = Instant::now();
    let r = within("Allocate", SLOW, host.allocate(allocate_request(&[&dup]))).await;
    let took = t.elapsed();
    measured("Allocate of one ID 20,000 times, refused", took);
    let (code, msg) = refusal(r);
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    assert!(msg.contains("20000") && msg.contains("100"), "{msg}");
    assert!(took < Duration::from_millis(300), "took {took:?}");

    // The same spread over 20,000 containers.
    let one: &[&str] = &["podnet-1"];
    let many: Vec<&[&str]> = vec![one; 20_000];
    let t = Instant::now();
    let r = within("Allocate", SLOW, pod.allocate(allocate_request(&many))).await;
    let took = t.elapsed();
    measured("Allocate of one ID in 20,000 containers, refused", took);
    let (code, msg) = refusal(r);
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    assert!(took < Duration::from_millis(300), "took {took:?}");

    // Duplicates within the cap: in one container, and across two.
    for containers in [
        vec![vec!["podnet-0", "podnet-1", "podnet-0"]],
        vec![vec!["podnet-2"], vec!["podnet-3", "podnet-2"]],
        vec![vec!["hostnet-5", "hostnet-5"]],
    ] {
        let slices: Vec<&[&str]> = containers.iter().map(Vec::as_slice).collect();
        let c = if containers[0][0].starts_with("host") {
            &mut host
        } else {
            &mut pod
        };
        let r = within("Allocate", SLOW, c.allocate(allocate_request(&slices))).await;
        let (code, msg) = refusal(r);
        assert_eq!(code, tonic::Code::InvalidArgument, "{containers:?}: {msg}");
        assert!(msg.contains("more than once"), "{containers:?}: {msg}");
    }
    // All 100 distinct devices and one more: over the cap.
    let ids: Vec<String> = (0..100)
        .map(|i| format!("podnet-{i}"))
        .chain(["podnet-7".to_string()])
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let r = within("Allocate", SLOW, pod.allocate(allocate_request(&[&refs]))).await;
    assert_eq!(refusal(r).0, tonic::Code::InvalidArgument);

    let after = state_snapshot(&world);
    assert_eq!(
        before, after,
        "the refused calls changed the state directory"
    );
    assert!(world.allocation_leftovers().is_empty());
    assert!(world.lab.node.macvtaps().is_empty());

    // The control: the cap is not too tight, all 100 devices in one call.
    let t = Instant::now();
    let resp = within(
        "Allocate",
        SLOW,
        pod.allocate(allocate_request(&[&refs[..100]])),
    )
    .await
    .unwrap_or_else(|e| panic!("Allocate of all 100 devices failed: {e}\n{}", dp.logs()))
    .into_inner();
    measured("Allocate of 100 distinct devices, attach pod", t.elapsed());
    assert_eq!(resp.container_responses[0].devices.len(), 100);
    assert_eq!(
        files_under(&world.state_dir().join("allocations")).len(),
        100
    );
    dp.assert_running("after the refused calls");
}

/// strace following every thread of `pid` for sync system calls, into `out`.
struct Strace {
    child: Child,
    out: PathBuf,
}

impl Strace {
    fn attach(pid: i32, out: &Path) -> Strace {
        let child = Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-e",
                "trace=fsync,fdatasync,syncfs,sync,sync_file_range,msync",
            ])
            .arg("-o")
            .arg(out)
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("strace (apt-get install strace)");
        let s = Strace {
            child,
            out: out.to_path_buf(),
        };
        // Attached once every thread of the daemon has a tracer.
        let deadline = Instant::now() + SLOW;
        loop {
            let threads: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .expect("daemon threads")
                .flatten()
                .collect();
            let traced = threads.iter().all(|t| {
                std::fs::read_to_string(t.path().join("status"))
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
            });
            if traced {
                break;
            }
            assert!(Instant::now() < deadline, "strace did not attach to {pid}");
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    /// The sync calls seen so far, by name.
    fn calls(&self) -> BTreeMap<String, usize> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let mut calls = BTreeMap::new();
        for line in text.lines() {
            // "<tid> syncfs(12)          = 0"
            let Some(call) = line
                .split_whitespace()
                .nth(1)
                .and_then(|w| w.split('(').next())
            else {
                continue;
            };
            if !call.is_empty() && !call.starts_with('<') && !call.starts_with("---") {
                *calls.entry(call.to_string()).or_insert(0) += 1;
            }
        }
        calls
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        // SIGINT makes strace detach cleanly from the daemon.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::SIGINT,
        );
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_syncs_once_per_call() {
    let world = World::new("dp-sync");
    let conf = json!([
        {"name": "hostnet", "lowerDevice": LOWER, "capacity": 16, "attach": "host"},
        {"name": "podnet", "lowerDevice": LOWER, "capacity": 16, "attach": "pod"},
    ])
    .to_string();
    let mut dp = world.start(&conf, 2).await;
    let mut host = world.client("hostnet").await;
    let mut pod = world.client("podnet").await;
    let trace = Strace::attach(dp.pid(), &world.lab.dir.path().join("strace.out"));

    let settle = |calls: &Strace| {
        // strace writes each call as it returns: wait until the count is
        // still for 100 ms.
        let mut last = calls.calls();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = calls.calls();
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let ids: Vec<String> = (0..12).map(|i| format!("podnet-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let t = Instant::now();
    pod.allocate(allocate_request(&[&refs[..6], &refs[6..]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate failed: {e}\n{}", dp.logs()));
    measured("Allocate of 12 devices (attach pod), traced", t.elapsed());
    let calls = settle(&trace);
    assert_eq!(
        calls,
        BTreeMap::from([("syncfs".to_string(), 1)]),
        "sync calls for one Allocate of 12 devices"
    );
    assert_eq!(
        files_under(&world.state_dir().join("allocations")).len(),
        12
    );

    let ids: Vec<String> = (0..8).map(|i| format!("hostnet-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    host.allocate(allocate_request(&[&refs]))
        .await
        .unwrap_or_else(|e| panic!("Allocate failed: {e}\n{}", dp.logs()));
    let calls = settle(&trace);
    assert_eq!(
        calls,
        BTreeMap::from([("syncfs".to_string(), 2)]),
        "sync calls after a second Allocate, of 8 attach: host devices"
    );
    // The records are complete JSON, as the state crate reads them.
    for id in &ids {
        let text = std::fs::read_to_string(world.allocation_record(id)).expect("record");
        let v: serde_json::Value = serde_json::from_str(&text).expect("record is JSON");
        assert_eq!(v["deviceId"], id.as_str(), "{text}");
        assert_eq!(
            std::fs::metadata(world.allocation_record(id))
                .unwrap()
                .mode()
                & 0o777,
            0o600
        );
    }
    let tmp: Vec<_> = files_under(&world.state_dir())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
    drop(trace);
    dp.assert_running("after the traced calls");
}

/// Holds the state directory's node lock (as a CNI ADD in a slow IPAM
/// would) until dropped.
struct NodeLock {
    _file: nix::fcntl::Flock<File>,
}

impl NodeLock {
    fn take(state_dir: &Path) -> NodeLock {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state_dir.join("lock"))
            .expect("open the lock file");
        let f = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("lock the node lock");
        NodeLock { _file: f }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocate_whose_deadline_passes_while_waiting_for_the_lock_does_nothing() {
    let world = World::new("dp-cancel-lock");
    let mut dp = world.start(&conf1("hostnet", 8, "host"), 1).await;
    let mut c = world.client("hostnet").await;
    let before = state_snapshot(&world);
    let lock = NodeLock::take(&world.state_dir());

    // The kubelet's deadline travels as grpc-timeout: the server drops the
    // call when it passes.
    let mut req = tonic::Request::new(allocate_request(&[&["hostnet-0", "hostnet-1"]]));
    req.set_timeout(Duration::from_millis(200));
    let t = Instant::now();
    let r = within("Allocate with a deadline", SLOW, c.allocate(req)).await;
    let took = t.elapsed();
    let status = r.expect_err("Allocate succeeded while the node lock was held");
    assert!(
        matches!(
            status.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
        "{status:?}"
    );
    assert!(took < SECOND, "the deadline was not kept: {took:?}");
    // Now the lock frees and the blocking side takes it. (The server
    // answers the deadline a moment before it drops the call; the pause
    // keeps this test on the lock-wait path. A call dropped in that moment
    // is undone like the one below.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(lock);
    wait_until(
        "the daemon noticed the cancelled call",
        SLOW,
        || {
            dp.stderr()
                .contains("cancelled while waiting for the node lock")
        },
        || dp.logs(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        before,
        state_snapshot(&world),
        "a cancelled Allocate changed the state directory"
    );
    let left = world.allocation_leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");

    // The devices are free for the next call.
    c.allocate(allocate_request(&[&["hostnet-0", "hostnet-1"]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate after the cancelled one failed: {e}"));
    assert_eq!(world.lab.node.macvtaps().len(), 2);
    dp.assert_running("after the cancelled call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocate_cancelled_midway_undoes_its_links_nodes_and_records() {
    let world = World::new("dp-cancel-mid");
    let lab = &world.lab;
    let n = 400u32;
    let mut dp = world.start(&conf1("hostnet", n, "host"), 1).await;
    let mut c = world.client("hostnet").await;
    let ids: Vec<String> = (0..n).map(|i| format!("hostnet-{i}")).collect();

    // 400 host links take long enough to cancel in the middle: the call
    // is dropped (RST_STREAM, as a kubelet whose context ends) once a few
    // links exist.
    let call = tokio::spawn(async move {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        c.allocate(allocate_request(&[&refs])).await
    });
    let t = Instant::now();
    wait_until(
        "the Allocate made its first links",
        SLOW,
        || lab.node.macvtaps().len() >= 5,
        || dp.logs(),
    )
    .await;
    call.abort();
    let made = lab.node.macvtaps().len();
    measured("cancelled after", t.elapsed());
    assert!(
        made < n as usize,
        "all {made} links were made before the cancel"
    );
    let _ = call.await;

    let undone = wait_until(
        "everything the cancelled Allocate made is gone",
        Duration::from_secs(30),
        || {
            dp.stderr().contains("Allocate cancelled by the caller")
                && world.allocation_leftovers().is_empty()
        },
        || format!("{:#?}\n{}", world.allocation_leftovers(), dp.logs()),
    )
    .await;
    measured("undo of the cancelled Allocate", undone);
    let log = dp.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("Allocate cancelled by the caller"))
        .unwrap_or_default();
    let links: usize = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("links="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no links= in {line:?}"));
    println!("the cancelled call had made {links} links; {made} seen at the cancel");
    assert!(
        links >= 5 && links < n as usize,
        "the cancel did not land mid-way: {line}"
    );
    assert!(lab.lower().is_up(), "the lower device was touched");
    // The kubelet may hand the same devices out again.
    allocate_the_same_devices_again(&world, &mut dp).await;
    dp.assert_running("after the cancelled call");
}

async fn allocate_the_same_devices_again(world: &World, dp: &mut Daemon) {
    let mut c = world.client("hostnet").await;
    c.allocate(allocate_request(&[&[
        "hostnet-0",
        "hostnet-1",
        "hostnet-2",
    ]]))
    .await
    .unwrap_or_else(|e| panic!("Allocate after the undo failed: {e}\n{}", dp.logs()));
    assert_eq!(world.lab.node.macvtaps().len(), 3);
}

/// The health of device `id` in `devices`.
fn health_of<'a>(devices: &'a [Device], id: &str) -> &'a str {
    devices
        .iter()
        .find(|d| d.id == id)
        .map_or("(missing)", |d| d.health.as_str())
}

/// Exactly the devices in `sick` are Unhealthy, all others Healthy.
fn only_unhealthy(devices: &[Device], sick: &[&str]) -> bool {
    !devices.is_empty()
        && devices.iter().all(|d| {
            let want = if sick.contains(&d.id.as_str()) {
                UNHEALTHY
            } else {
                HEALTHY
            };
            d.health == want
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_link_holding_a_promised_ifindex_makes_that_device_unhealthy() {
    let world = World::new("dp-taken");
    let lab = &world.lab;
    let conf = json!([
        {"name": "hostnet", "lowerDevice": LOWER, "capacity": 4, "attach": "host"},
        {"name": "podnet", "lowerDevice": LOWER, "capacity": 4, "attach": "pod"},
    ])
    .to_string();
    let mut dp = world.start(&conf, 2).await;
    let base = world.ifindex_base("hostnet");
    let pbase = world.ifindex_base("podnet");
    let w = world.watch("hostnet").await;
    let wp = world.watch("podnet").await;
    assert!(all(&w.first(SLOW).await.devices, HEALTHY));
    assert!(all(&wp.first(SLOW).await.devices, HEALTHY));

    // The daemon's own link on a promised ifindex is no obstacle.
    let mut c = world.client("hostnet").await;
    c.allocate(allocate_request(&[&["hostnet-1"]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate failed: {e}\n{}", dp.logs()));
    lab.node.expect_link(&format!("mvtap{}", base + 1));

    // A veth takes hostnet-2's ifindex (its peer lives in LAN).
    let t = Instant::now();
    lab.node.ip_cmd(&format!(
        "link add blk index {} type veth peer name blkp netns {}",
        base + 2,
        lab.lan.name()
    ));
    let u = w
        .wait_for("only hostnet-2 unhealthy", SECOND, |d| {
            only_unhealthy(d, &["hostnet-2"])
        })
        .await;
    measured(
        "device unhealthy after a veth took its ifindex",
        u.at.duration_since(t),
    );
    // A macvtap on the right lower device but not named as ours.
    lab.node.ip_cmd(&format!(
        "link add link {LOWER} name impostor index {} type macvtap mode bridge",
        base + 3
    ));
    w.wait_for("hostnet-2 and hostnet-3 unhealthy", SECOND, |d| {
        only_unhealthy(d, &["hostnet-2", "hostnet-3"])
    })
    .await;

    // Never preferred, not even when that leaves fewer than asked for.
    let all_ids = expected_ids("hostnet", 4);
    let resp = c
        .get_preferred_allocation(PreferredAllocationRequest {
            container_requests: vec![
                ContainerPreferredAllocationRequest {
                    available_device_i_ds: all_ids.clone(),
                    must_include_device_i_ds: vec![],
                    allocation_size: 2,
                },
                ContainerPreferredAllocationRequest {
                    available_device_i_ds: all_ids.clone(),
                    must_include_device_i_ds: vec![],
                    allocation_size: 4,
                },
            ],
        })
        .await
        .expect("GetPreferredAllocation")
        .into_inner();
    let mut first = resp.container_responses[0].device_i_ds.clone();
    first.sort();
    assert_eq!(first, ["hostnet-0", "hostnet-1"], "{resp:?}");
    let mut second = resp.container_responses[1].device_i_ds.clone();
    second.sort();
    assert_eq!(second, ["hostnet-0", "hostnet-1"], "{resp:?}");
    // A host link on a pod-mode device's ifindex is no obstacle: that
    // promise is kept inside the pod's namespace.
    lab.node.ip_cmd(&format!(
        "link add blk2 index {pbase} type veth peer name blk2p netns {}",
        lab.lan.name()
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = wp.updates().last().cloned().expect("podnet list");
    assert!(all(&last.devices, HEALTHY), "{}", describe(&last.devices));

    // Healthy again once the links go.
    let t = Instant::now();
    lab.node.ip_cmd("link del blk");
    lab.node.ip_cmd("link del impostor");
    let u = w
        .wait_for("all healthy again", SECOND, |d| all(d, HEALTHY))
        .await;
    measured(
        "devices healthy again after the links went",
        u.at.duration_since(t),
    );
    assert_eq!(health_of(&u.devices, "hostnet-2"), HEALTHY);
    dp.assert_running("after the blocked ifindexes");
}

/// GET `path` on a fresh connection: (status code, time to the answer).
fn http_get(s: &mut TcpStream, path: &str) -> std::io::Result<u16> {
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// Whether the server has closed `s` (EOF or reset); does not block.
fn closed_by_server(s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 16];
    let mut reader = s;
    let closed = match reader.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    s.set_nonblocking(false).expect("blocking");
    closed
}

/// Sockets the process holds open.
fn socket_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_cannot_starve_the_metrics_port() {
    let world = World::new("dp-loris");
    let addr = "127.0.0.1:9465";
    let mut dp = world
        .cmd(&conf1("dataplane", 4, "pod"))
        .metrics(addr)
        .spawn();
    world.kubelet.wait_registrations(1, SLOW).await;
    // A node's DaemonSet has a file limit; 200 here, so connections that
    // are never closed would exhaust it (accept fails, /healthz with it).
    let limit = libc::rlimit {
        rlim_cur: 200,
        rlim_max: 200,
    };
    // SAFETY: prlimit on our own child's pid with a valid struct.
    let r = unsafe { libc::prlimit(dp.pid(), libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let node = world.lab.node.path();
    // The metrics port opens right after the registrations.
    let up = in_netns(&node, move || {
        let deadline = Instant::now() + SLOW;
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(addr) {
                return http_get(&mut s, "/healthz").ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    });
    assert_eq!(up, Some(200), "/healthz before the attack\n{}", dp.logs());
    let sockets_before = socket_fds(dp.pid());

    // 200 connections that never send a byte.
    let t0 = Instant::now();
    let idle: Vec<TcpStream> = in_netns(&node, move || {
        (0..200)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, took) = in_netns(&node, move || {
        let t = Instant::now();
        let mut s = TcpStream::connect(addr).expect("connect");
        (http_get(&mut s, "/healthz"), t.elapsed())
    });
    measured("/healthz with 200 idle connections open", took);
    assert_eq!(code.expect("GET /healthz"), 200);
    assert!(took < SECOND, "/healthz took {took:?}");
    let held = socket_fds(dp.pid()) - sockets_before.min(socket_fds(dp.pid()));
    let closed = idle.iter().filter(|s| closed_by_server(s)).count();
    println!("idle connections: {closed} of 200 closed at once, {held} sockets held");
    assert!(
        held <= 64 + 1,
        "the daemon holds {held} more sockets than before the idle connections"
    );
    assert!(
        closed >= 200 - 64,
        "only {closed} of 200 idle connections closed"
    );

    // The rest are closed when the read timeout (5 s) passes.
    wait_until(
        "every idle connection closed by the read timeout",
        Duration::from_secs(7),
        || idle.iter().all(closed_by_server),
        || dp.logs(),
    )
    .await;
    let all_closed = t0.elapsed();
    measured("every idle connection closed", all_closed);
    assert!(all_closed >= Duration::from_millis(4500), "{all_closed:?}");
    drop(idle);

    // A slow-loris: a request one byte at a time, never finished.
    let (loris_closed, healthz) = in_netns(&node, move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let t = Instant::now();
        let mut healthz = None;
        for b in b"GET /healthz HTTP/1.1\r\nX-Slow: ".iter().cycle() {
            if s.write_all(&[*b]).is_err() || closed_by_server(&s) {
                break;
            }
            if healthz.is_none() && t.elapsed() > Duration::from_secs(2) {
                let mut other = TcpStream::connect(addr).expect("connect");
                healthz = Some(http_get(&mut other, "/healthz").unwrap_or(0));
            }
            if t.elapsed() > Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        (t.elapsed(), healthz)
    });
    measured("slow-loris connection closed after", loris_closed);
    assert_eq!(healthz, Some(200), "/healthz during the slow-loris");
    assert!(
        loris_closed >= Duration::from_millis(4500) && loris_closed < Duration::from_secs(7),
        "the slow-loris connection was closed after {loris_closed:?}, want the 5 s read timeout"
    );
    dp.assert_running("after the connection attacks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_address_takes_the_node_address_of_either_family() {
    // The DaemonSet passes `$(HOST_IP):9465`; status.hostIP is a bare IPv6
    // address on an IPv6 node.
    let world = World::new("dp-hostip");
    for (flag, connect) in [
        ("::1:9467", "[::1]:9467"),
        ("127.0.0.1:9468", "127.0.0.1:9468"),
    ] {
        let mut dp = world
            .cmd(&conf1("dataplane", 4, "pod"))
            .metrics(flag)
            .spawn();
        let node = world.lab.node.path();
        let got = in_netns(&node, move || {
            let deadline = Instant::now() + SLOW;
            while Instant::now() < deadline {
                if let Ok(mut s) = TcpStream::connect(connect) {
                    return http_get(&mut s, "/healthz").ok();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        });
        assert_eq!(got, Some(200), "--metrics-address {flag}\n{}", dp.logs());
        dp.signal(libc::SIGTERM);
        assert!(dp.wait_exit(SLOW).await.is_some(), "no exit on SIGTERM");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_retires_a_resource_whose_link_is_gone_for_the_grace_period() {
    let world = World::new("dp-retire");
    let lab = &world.lab;
    let grace = Duration::from_secs(1);
    let mut dp = world
        .cmd("[]")
        .env("DP_MACVTAP_DISCOVER_KINDS", "veth")
        .env("DP_MACVTAP_RETIRE_AFTER", "1")
        .spawn();
    world.kubelet.wait_registrations(1, SLOW).await;
    let veth = |name: &str, peer: &str| {
        lab.node.ip_cmd(&format!(
            "link add {name} type veth peer name {peer} netns {}",
            lab.lan.name()
        ))
    };
    let in_json = |name: &str| {
        world.resources_json()["resources"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["name"] == name))
    };

    // A short-lived link: discovered, then deleted for good.
    veth("up7", "lan7");
    world.kubelet.wait_registrations(2, SLOW).await;
    let w7 = world.watch("up7").await;
    w7.first(SLOW).await;
    // One that flaps: deleted and back within the grace period.
    veth("up8", "lan8");
    world.kubelet.wait_registrations(3, SLOW).await;
    let base8 = world.ifindex_base("up8");
    let w8 = world.watch("up8").await;
    w8.first(SLOW).await;

    let gone = Instant::now();
    lab.node.ip_cmd("link del up7");
    lab.node.ip_cmd("link del up8");
    w7.wait_for("up7 unhealthy", SECOND, |d| all(d, UNHEALTHY))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    veth("up8", "lan8");
    // Within the grace period nothing is retired yet.
    assert!(
        world.socket("up7").exists(),
        "up7 retired before its grace period"
    );
    assert!(in_json("up7"));

    let took = wait_until(
        "up7's socket removed",
        SLOW,
        || !world.socket("up7").exists(),
        || dp.logs(),
    )
    .await;
    let retired = gone.elapsed();
    measured("resource retired after its link went", retired);
    assert!(
        retired >= grace,
        "retired {retired:?} after the link went, before the {grace:?} grace ({took:?})"
    );
    assert!(retired < grace + SECOND, "retired only after {retired:?}");
    wait_until(
        "up7's ListAndWatch ended",
        SECOND,
        || w7.ended().is_some(),
        || dp.logs(),
    )
    .await;
    assert_eq!(w7.ended().as_deref(), Some("stream ended"));
    assert!(!in_json("up7"), "up7 still in {}", world.resources_json());

    // The flapping link kept its resource, its range and its stream.
    tokio::time::sleep(grace).await;
    assert!(
        world.socket("up8").exists(),
        "up8 was retired though it came back"
    );
    assert_eq!(world.ifindex_base("up8"), base8);
    assert!(w8.ended().is_none(), "{:?}", w8.ended());
    w8.wait_for("up8 listed again", SECOND, |d| !d.is_empty())
        .await;
    // up0 never went.
    assert!(world.socket("up0").exists() && in_json("up0"));

    // A link of the same name later is a new resource, registered again.
    let n = world.kubelet.current_registrations().len();
    veth("up7", "lan7");
    let regs = world.kubelet.wait_registrations(n + 1, SLOW).await;
    assert_eq!(
        regs.last().map(|r| r.request.resource_name.clone()),
        Some(resource_name("up7"))
    );
    assert!(in_json("up7"));
    dp.assert_running("after the retirement");
}

/// GET `path` on the daemon's metrics address from inside `netns`, retried
/// until the port answers: the status code.
fn get_when_up(netns: &Path, addr: &'static str, path: &'static str) -> Option<u16> {
    in_netns(netns, move || {
        let deadline = Instant::now() + SLOW;
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(addr) {
                return http_get(&mut s, path).ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_ready_only_when_every_resource_is_registered() {
    let mut world = World::new("dp-healthz");
    world.kubelet.stop(); // no kubelet yet: nothing can register
    let addr = "127.0.0.1:9466";
    let dp = world
        .cmd(&conf1("dataplane", 4, "pod"))
        .metrics(addr)
        .spawn();
    let node = world.lab.node.path();
    assert_eq!(
        get_when_up(&node, addr, "/healthz"),
        Some(503),
        "/healthz without the kubelet\n{}",
        dp.logs()
    );
    // Alive all the same: a liveness probe must not restart the daemon
    // while the kubelet is away.
    assert_eq!(get_when_up(&node, addr, "/livez"), Some(200));
    world.kubelet.come_up();
    world.kubelet.wait_registrations(1, SLOW).await;
    let ready = Instant::now();
    let mut code = None;
    while ready.elapsed() < SLOW {
        code = get_when_up(&node, addr, "/healthz");
        if code == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(code, Some(200), "/healthz once registered\n{}", dp.logs());
}
