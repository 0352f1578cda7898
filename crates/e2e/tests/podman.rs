//! podman 4.3 with the CNI backend and a `type: macvtap` network
//! (standalone `master`, host-local IPAM): `podman run --mac-address`
//! gets a macvtap with that MAC and an address on the LAN (`--ip` a static
//! one), the LAN reaches it, and `podman rm` leaves nothing behind.
//!
//! What "reachable" means for a macvtap, as the kernel really does it
//! (drivers/net/tap.c): while no process has the tap device open, the
//! macvtap has no queue and passes received frames to its namespace's IP
//! stack, so the container answers ping like on a macvlan. Once a process
//! opens the device (as QEMU does), every received frame goes to that
//! reader instead and the container's own stack hears nothing: the reader
//! must answer (a VM would). The test shows all three states.

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use macvtap_net::MacAddr;
use macvtap_testkit::GuestStandIn;
use macvtap_testkit::NsView;
use serde_json::{json, Value};
use support::podman::Podman;
use support::*;

const IMAGE: &str = "localhost/macvtap-e2e-busybox:latest";
const SUBNET: &str = "10.202.1";

fn conflist(name: &str, lab: &Lab) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": "macvtap",
            "master": LOWER,
            "mode": "bridge",
            "stateDir": lab.state_dir(),
            "ipam": {
                "type": "host-local",
                "ranges": [[{
                    "subnet": format!("{SUBNET}.0/24"),
                    "rangeStart": format!("{SUBNET}.10"),
                    "rangeEnd": format!("{SUBNET}.50"),
                    "gateway": format!("{SUBNET}.1"),
                }]],
                "dataDir": lab.ipam_dir(),
            },
        }],
    })
}

/// One container as podman and the kernel describe it.
struct Attached {
    name: String,
    id: String,
    mac: String,
    ip: String,
    netns: NsView,
}

#[test]
fn podman_run_gets_a_macvtap_with_its_mac_and_address_and_rm_leaves_nothing() {
    require_tools(&COMMON_TOOLS);
    require_tools(&["podman", "runc"]);
    let bins = binaries();
    let lab = Lab::new("e2e-podman", &bins.cni);
    lab.lan
        .ip_ok(&["addr", "add", &format!("{SUBNET}.1/24"), "dev", "lan0"]);
    let podman = Podman::new(
        "e2e-podman-rt",
        lab.node.path().as_path(),
        &bins.cni,
        &lab.state_dir(),
    );
    let net = "macvtap-e2e";
    podman.add_network(&conflist(net, &lab));
    let image_dir = TempDir::new("e2e-podman-image");
    let rootfs = support::image::rootfs_tar(image_dir.path());
    podman.ok(&["import", "--quiet", &rootfs.display().to_string(), IMAGE]);

    // Three containers, each with its own MAC: per-container attach times,
    // and several macvtaps side by side on up0.
    let mut attached = Vec::new();
    let mut run_times = Vec::new();
    let mut add_times = Vec::new();
    for i in 0..3u8 {
        let name = format!("{}-c{i}", lab.prefix);
        let mac = format!("02:00:0a:ca:01:{:02x}", 0x20 + i);
        // The last one also asks for a static address (podman passes it,
        // like the MAC, only as CNI_ARGS: IP=...).
        let static_ip = (i == 2).then(|| format!("{SUBNET}.40"));
        let mut args = vec!["run", "-d", "--name", &name, "--network", net];
        args.extend(["--mac-address", &mac]);
        if let Some(ip) = &static_ip {
            args.extend(["--ip", ip.as_str()]);
        }
        args.extend([IMAGE, "sleep", "600"]);
        let t = Instant::now();
        podman.ok(&args);
        let run_time = t.elapsed();
        let info = podman.inspect(&name);
        let id = info["Id"].as_str().expect("inspect has an Id").to_string();
        let add = podman.cni.add_of(&id);
        measured(&format!("podman run -d, container {i} (wall)"), run_time);
        measured(
            &format!("plugin ADD inside podman run, container {i}"),
            add.elapsed,
        );
        run_times.push(run_time);
        add_times.push(add.elapsed);
        let netinfo = &info["NetworkSettings"]["Networks"][net];
        let ip = netinfo["IPAddress"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            netinfo["MacAddress"].as_str(),
            Some(mac.as_str()),
            "podman reports another MAC: {netinfo}"
        );
        assert!(
            ip.starts_with(&format!("{SUBNET}.")),
            "podman reports no address from host-local: {netinfo}"
        );
        if let Some(want) = &static_ip {
            assert_eq!(&ip, want, "--ip was not honoured: {netinfo}");
        }
        let sandbox = info["NetworkSettings"]["SandboxKey"]
            .as_str()
            .expect("inspect has a SandboxKey");
        attached.push(Attached {
            name,
            id,
            mac,
            ip,
            netns: NsView::at_path(sandbox),
        });
    }
    measured("podman run -d, median of 3 (wall)", median(run_times));
    measured(
        "plugin ADD inside podman run, median of 3",
        median(add_times),
    );

    for c in &attached {
        check_attachment(&lab, c);
    }

    check_reachability(&lab, &podman, &attached[0]);

    // podman rm: CNI DEL for each; nothing of them may stay.
    for c in &attached {
        let t = Instant::now();
        podman.ok(&["rm", "--force", "--time", "0", &c.name]);
        measured("podman rm -f (wall)", t.elapsed());
        let dels = podman.cni.calls_of("DEL", &c.id);
        assert!(
            !dels.is_empty() && dels.iter().all(|d| d.exit == 0),
            "podman rm did not call the plugin's DEL successfully for {}: {dels:?}",
            c.name
        );
        assert!(
            !c.netns.exists(),
            "{} survived podman rm",
            c.netns.path().display()
        );
        let cached = cni_cache_entries(&c.id);
        assert!(cached.is_empty(), "libcni cache entries left: {cached:?}");
    }
    lab.assert_clean("podman rm of every container");
    let pods_dir = lab.state_dir().join("pods");
    let dirs: Vec<_> = std::fs::read_dir(&pods_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        dirs.is_empty(),
        "container dirs left in the stateDir: {dirs:?}"
    );
}

/// The macvtap in the container's namespace and its device node.
fn check_attachment(lab: &Lab, c: &Attached) {
    let link = c.netns.expect_link("eth0");
    assert_eq!(
        link.kind.as_deref(),
        Some("macvtap"),
        "{}: eth0 is not a macvtap: {}",
        c.name,
        link.json
    );
    assert_eq!(link.mode.as_deref(), Some("bridge"), "{}", link.json);
    assert_eq!(link.mac, c.mac, "{}: eth0 has another MAC", c.name);
    assert!(link.is_up(), "{}: eth0 is down: {}", c.name, link.json);
    assert_eq!(
        c.netns.addr_cidrs("eth0", "inet"),
        vec![format!("{}/24", c.ip)],
        "{}: eth0's addresses",
        c.name
    );
    // Its lower device is NODE's up0, nothing else.
    let nsid = link.link_netnsid.unwrap_or_else(|| {
        panic!(
            "{}: eth0's lower device is not in another netns: {}",
            c.name, link.json
        )
    });
    assert_eq!(
        c.netns.peer_name(nsid).as_deref(),
        Some(lab.node.name()),
        "{}: eth0's lower device is not in NODE",
        c.name
    );
    assert_eq!(link.link_index, Some(lab.lower().ifindex), "{}", link.json);

    // The plugin's own device node, with the number the container's sysfs
    // reports, for the qemu user.
    let node = lab.pod_tap_path(&c.id, "eth0");
    let st = DeviceNode::stat(&node)
        .unwrap_or_else(|e| panic!("{}: device node {} missing: {e}", c.name, node.display()));
    assert!(st.is_char_device, "{} is not a char device", node.display());
    assert_eq!((st.uid, st.gid), (QEMU_ID, QEMU_ID), "{}", node.display());
    assert_eq!(st.mode, 0o660, "{} has mode {:o}", node.display(), st.mode);
    assert_eq!(
        (st.major, st.minor),
        c.netns.tap_dev(&link),
        "{} is not eth0's tap device",
        node.display()
    );
    assert!(
        lab.record_path(&c.id, "eth0").exists(),
        "no attachment record for {}",
        c.name
    );
}

/// LAN <-> container while nothing reads the tap; then a reader takes the
/// frames (silence); then the reader answers for the container, as a VM on
/// the device would; then the queue goes and the container answers again.
fn check_reachability(lab: &Lab, podman: &Podman, c: &Attached) {
    let lan = lab.lan.name();
    let (ok, out) = ping_from(lan, &c.ip, 3);
    assert!(
        ok,
        "LAN -> {} ({}) failed with no tap reader:\n{out}",
        c.name, c.ip
    );

    lab.lan.ip_ok(&["neigh", "flush", "dev", "lan0"]);
    let out = podman.run(&[
        "exec",
        &c.name,
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        &format!("{SUBNET}.1"),
    ]);
    assert!(
        out.status.success(),
        "{} -> LAN failed:\n{}{}",
        c.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        neighbour_mac(lan, "lan0", &c.ip).as_deref(),
        Some(c.mac.as_str()),
        "the LAN did not learn {} at the requested MAC",
        c.ip
    );

    let ip: Ipv4Addr = c.ip.parse().expect("an IPv4 address");
    let node = lab.pod_tap_path(&c.id, "eth0");
    let mac = MacAddr::parse_unicast(&c.mac).expect("the container's MAC");
    let reader = GuestStandIn::open(&node, mac, ip, false)
        .unwrap_or_else(|e| panic!("cannot open the tap device {}: {e}", node.display()));
    let (ok, out) = ping_from(lan, &c.ip, 1);
    assert!(
        !ok,
        "with a reader on the tap device the container's stack still answered:\n{out}"
    );
    let seen = reader.seen();
    // Echo requests, or ARP probes first if the LAN's entry had aged.
    assert!(
        seen.echo_requests + seen.arp_requests >= 1,
        "the LAN's frames for {} did not reach the tap reader: {seen:?}",
        c.ip
    );

    reader.set_answering(true);
    let (ok, out) = ping_from(lan, &c.ip, 3);
    let seen = reader.seen();
    assert!(
        ok,
        "the tap reader answering for {} was not heard:\n{out}\n{seen:?}",
        c.ip
    );
    assert!(seen.replies >= 3, "fewer replies than echoes: {seen:?}");
    drop(reader);

    // No queue again: the container's stack answers once more.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (ok, out) = ping_from(lan, &c.ip, 1);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container did not answer again after the reader closed the device:\n{out}"
        );
    }
}
