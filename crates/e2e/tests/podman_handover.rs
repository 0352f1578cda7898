//! The handover experiment with podman and a real guest: container A, on a
//! podman `bridge` network (CNI backend), is handed over by `macvtapctl
//! handover --pid <A> --deliver dhcp|nocloud|cmdline` to the lab's guest
//! (Debian kernel, busybox initramfs, QEMU/TCG). Container B on the same
//! network and podman's host side (the bridge's gateway address, in the
//! namespace podman runs in) then reach the **guest** at A's address: ping,
//! TCP echo and an HTTP page the guest signs with its name and its NIC's
//! MAC (the macvtap's, from the `applied` event). When the VM stops, A's
//! `eth0` has exactly its addresses and routes again and B reaches A's own
//! stack. During the DHCP run a capture on the host end of A's veth sees
//! the guest's DISCOVER and REQUEST and no DHCP reply leaving A.
//!
//! The world is private: podman runs inside a namespace this test makes
//! (`nsenter --net`), so its bridge, veths and addresses (10.203.7.0/24)
//! exist only there; the machine's own interfaces are never touched.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhcproto::v4::MessageType;
use macvtap_handover::dhcp::{parse_request_frame, PacketSocket};
use macvtap_handover::nocloud::read_vfat;
use macvtap_lab::guest::{self, GuestNet};
use macvtap_net::NetNs;
use macvtap_testkit::{Netns, NsView};
use serde_json::{json, Value};
use support::podman::Podman;
use support::*;

const IMAGE: &str = "localhost/macvtap-e2e-busybox:latest";
const SUBNET: &str = "10.203.7";
/// Where the lab keeps its guest (built on first use).
const GUEST_CACHE: &str = macvtap_lab::cli::DEFAULT_CACHE_DIR;
const ETH_P_ALL: u16 = 0x0003;
/// A's name server and search domain (podman --dns, --dns-search).
const DNS: &str = "10.203.7.53";
const SEARCH: &str = "hv.example";

/// `macvtapctl`, brought up to date by the cargo that runs the tests.
fn macvtapctl() -> PathBuf {
    let dir = Path::new(BIN_DIR);
    if let Err(e) =
        macvtap_testkit::cargo_build_bins(&workspace_root(), dir, &[("macvtapctl", "macvtapctl")])
    {
        eprintln!("warning: using {BIN_DIR}/macvtapctl as it is: {e}");
    }
    let bin = dir.join("macvtapctl");
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

/// A default-like podman network: `bridge` (gateway on the bridge) with
/// host-local IPAM; podman's default list also has `portmap`, `firewall`
/// and `tuning`, left out here (no iptables in the test's namespace).
fn bridge_network(name: &str, bridge: &str, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "0.4.0",
        "name": name,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "routes": [{"dst": "0.0.0.0/0"}],
                "ranges": [[{"subnet": format!("{SUBNET}.0/24"), "gateway": format!("{SUBNET}.1")}]],
                "dataDir": ipam_dir,
            },
        }],
    })
}

/// A running container: its name, PID, address and namespace.
struct Ctr {
    name: String,
    pid: u32,
    ip: String,
    ns: NsView,
}

impl Ctr {
    fn start(podman: &Podman, name: &str, net: &str, extra: &[&str]) -> Ctr {
        let mut args = vec!["run", "-d", "--name", name, "--network", net];
        args.extend(extra);
        args.extend([IMAGE, "sleep", "900"]);
        podman.ok(&args);
        let info = podman.inspect(name);
        let pid = info["State"]["Pid"]
            .as_u64()
            .expect("a running container has a Pid") as u32;
        let ip = info["NetworkSettings"]["Networks"][net]["IPAddress"]
            .as_str()
            .expect("an address on the network")
            .to_string();
        Ctr {
            name: name.to_string(),
            pid,
            ip,
            ns: NsView::at_path(format!("/proc/{pid}/ns/net")),
        }
    }

    /// A command run inside this container's network namespace with the
    /// host's tools (for timing: no `podman exec` in the loop).
    fn in_netns(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", self.pid))
            .arg("--")
            .args(args);
        c
    }

    /// `eth0`'s addresses and the routes of both families, normalized
    /// (sorted; only what identifies an address or a route).
    fn identity(&self) -> Value {
        let link = self.ns.ip_json(&["link", "show", "dev", "eth0"]);
        let mut addrs: Vec<Value> = self
            .ns
            .addrs("eth0")
            .iter()
            .map(|a| {
                json!({
                    "family": a["family"], "local": a["local"], "prefixlen": a["prefixlen"],
                    "broadcast": a["broadcast"], "scope": a["scope"], "label": a["label"],
                })
            })
            .collect();
        addrs.sort_by_key(|v| v.to_string());
        let mut routes = Vec::new();
        for family in ["-4", "-6"] {
            let v = self.ns.ip_json(&[family, "route", "show", "table", "main"]);
            routes.extend(v.as_array().cloned().unwrap_or_default());
        }
        routes.sort_by_key(|v| v.to_string());
        json!({
            "mtu": link[0]["mtu"],
            "mac": link[0]["address"],
            "operstate": link[0]["operstate"],
            "addresses": addrs,
            "routes": routes,
        })
    }

    fn mac(&self) -> String {
        self.ns.ip_json(&["link", "show", "dev", "eth0"])[0]["address"]
            .as_str()
            .expect("eth0 has a MAC")
            .to_string()
    }
}

/// `macvtapctl --json handover ...` as a supervised child; dropped, it is
/// stopped with SIGTERM (it forwards it to QEMU and undoes), killed after
/// 20 s, and then QEMU (by the PID the `applied` event gave) and the
/// handover (`--undo`) are cleaned up too.
struct Supervisor {
    child: Child,
    events: mpsc::Receiver<(Instant, Value)>,
    qemu_pid: Option<u32>,
    undo: Command,
}

impl Supervisor {
    fn next_event(&mut self, within: Duration) -> (Instant, Value) {
        let (at, event) = self
            .events
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("no event from macvtapctl within {within:?}: {e}"));
        if let Some(pid) = event["qemuPid"].as_u64() {
            self.qemu_pid = Some(pid as u32);
        }
        (at, event)
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on the PID of our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if self.terminate().is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = self.qemu_pid {
            if support::procs::alive(pid as i32) {
                // SAFETY: kill(2) on the QEMU our supervisor started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let _ = self.undo.output();
    }
}

/// What a capture on the host end of A's veth saw leaving A (and, with
/// the bridge's hairpin mode, coming back to it).
#[derive(Debug, Default, Clone)]
struct Seen {
    /// DHCPDISCOVERs and DHCPREQUESTs leaving A.
    discovers: u32,
    requests: u32,
    /// UDP datagrams from port 67 (a DHCP server's replies) leaving A,
    /// and entering A.
    replies_out: u32,
    replies_in: u32,
    frames: u32,
}

/// An AF_PACKET capture of every frame on one interface of the podman
/// namespace, on a thread until stopped.
struct Capture {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn udp_src_port(frame: &[u8]) -> Option<u16> {
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 17 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let udp = frame.get(14 + ihl..14 + ihl + 2)?;
    Some(u16::from_be_bytes([udp[0], udp[1]]))
}

impl Capture {
    fn start(node: &Netns, ifname: &str) -> Capture {
        let ns = NetNs::open(node.path()).expect("open the podman namespace");
        let name = ifname.to_string();
        let socket = ns
            .run(move || PacketSocket::open_by_name(&name, ETH_P_ALL))
            .expect("a thread in the podman namespace")
            .expect("an AF_PACKET socket on A's host veth");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                let Ok(Some((n, to_a))) = socket.recv(&mut buf, Duration::from_millis(50)) else {
                    continue;
                };
                let frame = &buf[..n];
                let mut s = seen2.lock().expect("the capture's tally");
                s.frames += 1;
                if udp_src_port(frame) == Some(67) {
                    if to_a {
                        s.replies_in += 1;
                    } else {
                        s.replies_out += 1;
                    }
                }
                if to_a {
                    continue;
                }
                if let Some((_, msg)) = parse_request_frame(frame) {
                    match msg.opts().msg_type() {
                        Some(MessageType::Discover) => s.discovers += 1,
                        Some(MessageType::Request) => s.requests += 1,
                        _ => {}
                    }
                }
            }
        });
        Capture {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen.lock().expect("the capture's tally").clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The shared world: a namespace for podman, its bridge network, A and B.
struct World {
    // Drop order: podman (containers, their CNI DEL) before the namespace.
    podman: Podman,
    node: Netns,
    tmp: TempDir,
    a: Ctr,
    b: Ctr,
    ctl: PathBuf,
    image: guest::GuestImage,
}

impl World {
    fn new() -> World {
        require_tools(&COMMON_TOOLS);
        require_tools(&[
            "podman",
            "runc",
            "qemu-system-x86_64",
            "/usr/lib/cni/bridge",
        ]);
        let bins = binaries();
        let ctl = macvtapctl();
        let image = guest::ensure(Path::new(GUEST_CACHE))
            .expect("the lab's guest (kernel and initramfs)")
            .image;
        let node = Netns::new(&unique_name("hv-podman"));
        let tmp = TempDir::new("e2e-hv");
        let state = tmp.subdir("cni-state");
        let podman = Podman::new("hv-rt", &node.path(), &bins.cni, &state);
        std::os::unix::fs::symlink("/usr/lib/cni/bridge", podman.cni.dir.join("bridge"))
            .expect("link the reference bridge plugin");
        let net = unique_name("hv");
        let bridge = format!("cni-hv{:x}", std::process::id() & 0xff_ffff);
        podman.add_network(&bridge_network(&net, &bridge, &tmp.subdir("ipam")));
        let rootfs = support::image::rootfs_tar(&tmp.subdir("image"));
        podman.ok(&["import", "--quiet", &rootfs.display().to_string(), IMAGE]);
        let a = Ctr::start(
            &podman,
            &format!("{net}-a"),
            &net,
            &["--dns", DNS, "--dns-search", SEARCH],
        );
        let b = Ctr::start(
            &podman,
            &format!("{net}-b"),
            &net,
            &["--cap-add", "NET_RAW"],
        );
        // ARP retries every 50 ms from B and the host side, so the first
        // reply shows when the guest answers, not when a timer fires.
        let fast_arp = "echo 50 > /proc/sys/net/ipv4/neigh/eth0/retrans_time_ms";
        run_ok(&mut b.in_netns(&["sh", "-c", fast_arp]));
        World {
            podman,
            node,
            tmp,
            a,
            b,
            ctl,
            image,
        }
    }

    fn bridge(&self) -> String {
        let links = self.node.links_json();
        links
            .iter()
            .find(|l| l["linkinfo"]["info_kind"] == "bridge")
            .and_then(|l| l["ifname"].as_str())
            .expect("podman's bridge in its namespace")
            .to_string()
    }

    /// The host end of A's veth (in podman's namespace): its peer's index.
    fn a_host_veth(&self) -> String {
        let peer = self.a.ns.ip_json(&["link", "show", "dev", "eth0"])[0]["link_index"]
            .as_u64()
            .expect("A's eth0 is a veth with a peer");
        self.node
            .links_json()
            .iter()
            .find(|l| l["ifindex"].as_u64() == Some(peer))
            .and_then(|l| l["ifname"].as_str())
            .expect("A's veth peer in podman's namespace")
            .to_string()
    }

    /// `podman exec B ...`: stdout, panicking with the output on failure.
    fn exec_in_b(&self, args: &[&str]) -> String {
        let mut all = vec!["exec", self.b.name.as_str()];
        all.extend(args);
        self.podman.ok(&all)
    }

    /// Forget what B and the host side know of A's address's MAC.
    fn forget_neighbours(&self) {
        run_ok(&mut self.b.in_netns(&["ip", "neigh", "flush", "dev", "eth0"]));
        self.node.ip_ok(&["neigh", "flush", "dev", &self.bridge()]);
    }

    /// One TCP exchange with A's address from the host side (podman's
    /// namespace): send `request`, close our side, read until the peer
    /// closes (the guest's HTTP/1.0 server; its `nc -e cat` echo).
    fn tcp_from_host(&self, port: u16, request: &str) -> String {
        let addr: SocketAddr = format!("{}:{port}", self.a.ip)
            .parse()
            .expect("an IPv4 address");
        let request = request.to_string();
        NetNs::open(self.node.path())
            .expect("open the podman namespace")
            .run(move || {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(request.as_bytes())?;
                s.shutdown(std::net::Shutdown::Write)?;
                let mut response = String::new();
                s.read_to_string(&mut response)?;
                Ok::<_, std::io::Error>(response)
            })
            .expect("a thread in the podman namespace")
            .unwrap_or_else(|e| panic!("TCP to {addr} from the host side: {e}"))
    }

    fn start(&self, deliver: &str, hostname: &str, tag: &str, serial: &Path) -> Supervisor {
        let state = self.tmp.subdir(&format!("state-{deliver}"));
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700))
            .expect("chmod the state dir");
        let qemu_args = guest::qemu_args(
            &self.image,
            GuestNet::Delivered,
            &format!("file:{}", serial.display()),
            tag,
        )
        .expect("the guest's QEMU arguments");
        let pid = self.a.pid.to_string();
        let state = state.display().to_string();
        let stderr = fs::File::create(self.tmp.path().join(format!("ctl-{deliver}.log")))
            .expect("create the macvtapctl log");
        let mut child = Command::new(&self.ctl)
            .args(["--json", "handover", "--pid", &pid, "--deliver", deliver])
            .args(["--hostname", hostname, "--state-dir", &state])
            .args(["--device-opt", "romfile=", "--"])
            .args(&qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start macvtapctl handover");
        let stdout = child.stdout.take().expect("a piped stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send((Instant::now(), v)).is_err() {
                        break;
                    }
                }
            }
        });
        let mut undo = Command::new(&self.ctl);
        undo.args(["handover", "--undo", "--pid", &pid, "--state-dir", &state]);
        Supervisor {
            child,
            events,
            qemu_pid: None,
            undo,
        }
    }
}

/// What one delivery method measured.
#[derive(Debug)]
struct Measured {
    apply: Duration,
    first_reply: Duration,
    lease: Option<Duration>,
    undo: Duration,
}

/// Runs `ping` (without a count, under `timeout`) until its first reply,
/// then stops it with SIGTERM by its PID (`timeout` passes that on to
/// ping); `Err(what it said)` when it ended without one.
fn first_reply(ping: &mut Command) -> Result<(), String> {
    let mut child = ping
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ping");
    let stdout = child.stdout.take().expect("a piped stdout");
    let mut said = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.contains("bytes from") {
            // SAFETY: kill(2) on the PID of our own child, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
            return Ok(());
        }
        said.push(line);
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = child.wait();
    Err(format!("{}\n{err}", said.join("\n")))
}

/// Polls the guest's console (every 10 ms, on a thread) for a line: how
/// long after `since` it appeared.
fn watch_console(
    serial: &Path,
    needle: &'static str,
    since: Instant,
) -> std::thread::JoinHandle<Option<Duration>> {
    let serial = serial.to_path_buf();
    std::thread::spawn(move || {
        let deadline = since + Duration::from_secs(120);
        while Instant::now() < deadline {
            if fs::read_to_string(&serial).is_ok_and(|s| s.contains(needle)) {
                return Some(since.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    })
}

fn handover_once(w: &World, deliver: &str, via: &str) -> Measured {
    let before = w.a.identity();
    assert!(
        before["addresses"].to_string().contains(&w.a.ip),
        "A's eth0 has its address before: {before:#}"
    );
    // A's own stack answers B before the handover.
    w.exec_in_b(&["ping", "-c", "1", "-W", "2", &w.a.ip]);
    w.forget_neighbours();

    let tag = format!("{deliver}{}", std::process::id());
    let hostname = format!("hv-{deliver}-{:x}", std::process::id());
    let serial = w.tmp.path().join(format!("serial-{deliver}.log"));
    let capture = (deliver == "dhcp").then(|| Capture::start(&w.node, &w.a_host_veth()));
    let mut sup = w.start(deliver, &hostname, &tag, &serial);
    let (qemu_started, applied) = sup.next_event(Duration::from_secs(60));
    assert_eq!(applied["event"], "applied", "{applied:#}");
    let mac = applied["mac"]
        .as_str()
        .expect("the macvtap's MAC")
        .to_string();
    let apply = Duration::from_secs_f64(applied["applyMs"].as_f64().expect("applyMs") / 1000.0);

    // While handed over, A's eth0 has no IPv4 address: only the guest can answer.
    let during = w.a.identity();
    assert!(
        !during["addresses"].to_string().contains(&w.a.ip),
        "A's eth0 kept its address during the handover: {during:#}"
    );

    let lease_watch =
        (deliver == "dhcp").then(|| watch_console(&serial, "guest: dhcp lease", qemu_started));
    // The first reply at A's address, from B's namespace (ping every 50 ms).
    let ip = w.a.ip.clone();
    // (No -w: with a deadline iputils' ping quits at the first ARP failure.)
    let answered = first_reply(
        &mut w
            .b
            .in_netns(&["timeout", "120", "ping", "-n", "-i", "0.05", &ip]),
    );
    let first_reply = qemu_started.elapsed();
    if let Err(said) = answered {
        panic!(
            "the guest never answered at {ip} ({deliver}): {said}\nconsole:\n{}\nmacvtapctl:\n{}",
            fs::read_to_string(&serial).unwrap_or_default(),
            fs::read_to_string(w.tmp.path().join(format!("ctl-{deliver}.log"))).unwrap_or_default()
        );
    }
    let lease = lease_watch.map(|t| {
        t.join()
            .expect("the console watcher")
            .expect("the guest printed its lease on its console")
    });

    // B reaches the guest: the neighbour it learnt is the macvtap's MAC.
    let pings = w.exec_in_b(&["ping", "-c", "3", "-i", "0.2", "-W", "2", &ip]);
    assert!(pings.contains("3 packets received"), "{pings}");
    let neigh = run_ok(&mut w.b.in_netns(&["ip", "-j", "neigh", "show", &ip]));
    assert!(
        neigh.to_ascii_lowercase().contains(&mac),
        "B's neighbour for {ip} is not the guest's MAC {mac}: {neigh}"
    );
    let line = format!("hello guest {tag}");
    let echoed = w.exec_in_b(&["sh", "-c", &format!("echo '{line}' | nc -w 3 {ip} 7")]);
    assert_eq!(echoed.trim_end(), line, "TCP echo from B");
    let page = w.exec_in_b(&["wget", "-q", "-O", "-", &format!("http://{ip}/")]);
    assert_eq!(page, guest::page(&tag, &mac, &hostname, via), "HTTP from B");

    // And from the host side: ping, TCP, HTTP.
    let host_ping = w
        .node
        .exec(&["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", &ip]);
    assert!(host_ping.status.success(), "{host_ping:?}");
    assert_eq!(
        w.tcp_from_host(7, &format!("{line}\n")).trim_end(),
        line,
        "TCP echo from the host side"
    );
    let response = w.tcp_from_host(80, "GET / HTTP/1.0\r\n\r\n");
    assert!(
        response.starts_with("HTTP/1.") && response.contains(" 200 "),
        "{response}"
    );
    assert!(
        response.ends_with(&guest::page(&tag, &mac, &hostname, via)),
        "{response}"
    );

    // What the guest applied: A's prefix, gateway, MTU and name servers.
    let net = w.exec_in_b(&["wget", "-q", "-O", "-", &format!("http://{ip}/net.txt")]);
    let prefix = before["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .find(|a| a["local"] == ip.as_str())
        .and_then(|a| a["prefixlen"].as_u64())
        .expect("A's address has a prefix length");
    for want in [
        format!("via {via}"),
        format!("hostname {hostname}"),
        format!("mtu {}", before["mtu"]),
        format!("inet {ip}/{prefix}"),
        format!("default via {SUBNET}.1"),
    ] {
        assert!(
            net.contains(&want),
            "the guest's /net.txt lacks {want:?}:\n{net}"
        );
    }
    // The guest's own clock when it had applied its identity: boot and
    // delivery inside the guest, without QEMU's start.
    if let Some(up) = net
        .lines()
        .find_map(|l| l.strip_prefix("uptime "))
        .and_then(|u| u.trim().parse::<f64>().ok())
    {
        measured(
            &format!("guest uptime when its identity was applied ({deliver})"),
            Duration::from_secs_f64(up),
        );
    }
    // A's resolv.conf (podman --dns/--dns-search) went along; ip= has no
    // field for search domains.
    let resolv = w.podman.ok(&["exec", &w.a.name, "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains(&format!("nameserver {DNS}")), "{resolv}");
    let mut dns = vec![format!("nameserver {DNS}")];
    if deliver != "cmdline" {
        dns.push(format!("search {SEARCH}"));
    }
    for want in dns {
        assert!(
            net.contains(&want),
            "the guest's /net.txt lacks {want:?}:\n{net}"
        );
    }

    // The NoCloud seed, read back: label, the entry for the guest's MAC
    // with A's address, and the host name.
    if deliver == "nocloud" {
        let path = applied["seed"].as_str().expect("the seed's path");
        let image = fs::read(path).expect("the seed image, while the VM runs");
        let (label, files) = read_vfat(&image).expect("a vfat seed");
        assert_eq!(label.trim(), "cidata");
        let file = |name: &str| {
            files
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, text)| text.clone())
                .unwrap_or_else(|| panic!("no {name} in the seed: {files:?}"))
        };
        let config = file("network-config");
        assert!(
            config.contains(&format!("macaddress: \"{mac}\""))
                && config.contains(&format!("{ip}/{prefix}")),
            "{config}"
        );
        assert!(file("meta-data").contains(&format!("local-hostname: {hostname}")));
    }

    // Stop the VM: macvtapctl forwards SIGTERM to QEMU, then undoes.
    let status = sup.terminate().expect("macvtapctl ends after SIGTERM");
    let (_, undone) = sup.next_event(Duration::from_secs(5));
    assert_eq!(undone["event"], "undone", "{undone:#}");
    assert_eq!(undone["outcome"], "Restored", "{undone:#}");
    assert!(status.code().is_some(), "macvtapctl was killed: {status}");
    let undo = Duration::from_secs_f64(undone["undoMs"].as_f64().expect("undoMs") / 1000.0);
    if deliver == "dhcp" {
        let dhcp = &undone["dhcp"];
        assert!(
            dhcp["offers"].as_u64() >= Some(1) && dhcp["acks"].as_u64() >= Some(1),
            "{undone:#}"
        );
    }

    // A has exactly its identity again, and B reaches A's own stack.
    let after = w.a.identity();
    assert_eq!(before, after, "A's eth0 after the VM stopped");
    w.forget_neighbours();
    w.exec_in_b(&["ping", "-c", "2", "-i", "0.2", "-W", "2", &ip]);
    let neigh = run_ok(&mut w.b.in_netns(&["ip", "-j", "neigh", "show", &ip]));
    assert!(
        neigh.contains(&w.a.mac()),
        "B reached {ip} at another MAC than A's eth0: {neigh}"
    );

    if let Some(capture) = capture {
        let seen = capture.finish();
        println!("capture on A's host veth ({deliver}): {seen:?}");
        assert!(seen.discovers >= 1 && seen.requests >= 1, "{seen:?}");
        assert_eq!(
            (seen.replies_out, seen.replies_in),
            (0, 0),
            "a DHCP reply crossed A's veth: {seen:?}"
        );
    }
    Measured {
        apply,
        first_reply,
        lease,
        undo,
    }
}

#[test]
fn a_podman_container_is_handed_over_to_a_real_guest_by_dhcp_nocloud_and_ip() {
    let w = World::new();
    for (deliver, via) in [("dhcp", "dhcp"), ("nocloud", "nocloud"), ("cmdline", "ip=")] {
        let m = handover_once(&w, deliver, via);
        measured(&format!("handover apply ({deliver})"), m.apply);
        measured(
            &format!("QEMU start to first reply at A's address ({deliver})"),
            m.first_reply,
        );
        if let Some(lease) = m.lease {
            measured(
                &format!("QEMU start to the guest's DHCP lease ({deliver})"),
                lease,
            );
        }
        measured(&format!("undo ({deliver})"), m.undo);
    }
}
