//! `macvtapctl handover` for real: a container world in private
//! namespaces, a stand-in QEMU that records what it was given, and the
//! container's `ip -j addr`/`ip -j route` compared before and after.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::container::{wait_exit, Container};
use common::finding;
use dhcproto::v4::{self, DhcpOption, MessageType};
use macvtap_handover::{apply, ApplyOptions, ApplyStep, Store};
use macvtap_net::{MacAddr, NetNs};
use macvtap_testkit::DhcpGuest;
use serde_json::Value;

const MAC: &str = "02:00:0a:ca:00:2a";

fn value_after<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    &args[i + 1]
}

#[test]
fn cmdline_runs_qemu_on_the_macvtap_with_ip_and_gives_everything_back_when_it_exits() {
    let c = Container::new("ho-cmd", 61);
    let before = c.snapshot();
    let mut sup = c.supervise(
        &["--deliver", "cmdline", "--mac", MAC, "--hostname", "vm1"],
        &["-m", "64", "-kernel", "vmlinux", "-append", "console=ttyS0"],
    );
    // --json is global: the supervisor above prints text; one more with JSON below.
    c.wait_for_qemu(&mut sup);

    // While QEMU runs: eth0 has no IPv4 and no routes; the macvtap has the MAC.
    assert!(c.ipv4().is_empty(), "{:?}", c.ipv4());
    let mv = c
        .ctr
        .macvtaps()
        .into_iter()
        .next()
        .expect("a macvtap in the container");
    assert_eq!(mv.mac, MAC);
    assert_eq!(mv.link.as_deref(), Some("eth0"));
    let args = c.qemu_args();
    assert_eq!(
        value_after(&args, "-append"),
        "console=ttyS0 ip=10.61.0.2::10.61.0.1:255.255.255.0:vm1:eth0:off",
        "{args:?}"
    );
    let nic = value_after(&args, "-device");
    assert!(nic.contains(&format!("mac={MAC}")), "{nic}");
    // The tap fd is the macvtap's own character device (by number).
    let (major, minor) = c.ctr.tap_dev(&mv);
    let netdev = value_after(&args, "-netdev");
    let fd = netdev
        .split(',')
        .find_map(|o| o.strip_prefix("fd="))
        .unwrap_or_else(|| panic!("{netdev}"));
    let fds = c.qemu_fds();
    let dev = &fds.iter().find(|(n, _)| n == fd).unwrap().1;
    assert_eq!(dev, &format!("{major}:{minor} character special file"));
    // No netlink or packet socket, no directory of the supervisor leaks into QEMU.
    assert!(
        fds.iter()
            .all(|(_, what)| !what.contains("socket") && !what.contains("directory")),
        "{fds:?}"
    );

    c.stop_qemu();
    assert_eq!(wait_exit(&mut sup, Duration::from_secs(10)), Some(0));
    assert_eq!(c.snapshot(), before, "{:?}", c.supervisor_output());
    assert!(c.state_files().is_empty(), "{:?}", c.state_files());
    let err = c.supervisor_output().1;
    assert!(err.contains("has its identity back"), "{err}");
}

#[test]
fn json_events_and_the_qemu_exit_status_pass_through() {
    let c = Container::new("ho-json", 62);
    let before = c.snapshot();
    std::fs::write(c.path("exit"), "3").unwrap();
    let fake = c.fake_qemu();
    let state = c.state_dir();
    c.stop_qemu(); // QEMU exits at once
    let t = Instant::now();
    let run = common::run(&[
        "--netns",
        c.ctr.name(),
        "--json",
        "handover",
        "--state-dir",
        &state,
        "--qemu",
        fake.to_str().unwrap(),
        "--deliver",
        "cmdline",
        "--",
        "-kernel",
        "k",
    ]);
    let total = t.elapsed();
    assert_eq!(run.code, Some(3), "{run:?}");
    let events: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["event"], "applied");
    let identity = events[0]["identity"].as_str().unwrap();
    assert!(
        identity.contains("10.62.0.2/24") && identity.contains("via 10.62.0.1"),
        "{identity}"
    );
    // No -append given: one is added with ip=.
    let qargs: Vec<String> = serde_json::from_value(events[0]["qemuArgs"].clone()).unwrap();
    assert_eq!(
        value_after(&qargs, "-append"),
        "ip=10.62.0.2::10.62.0.1:255.255.255.0::eth0:off"
    );
    assert_eq!(events[1]["event"], "undone");
    assert_eq!(events[1]["outcome"], "Restored");
    assert_eq!(events[1]["qemuStatus"], 3);
    eprintln!(
        "measured: apply {} ms, undo {} ms, whole run {:.1} ms",
        events[0]["applyMs"],
        events[1]["undoMs"],
        total.as_secs_f64() * 1e3
    );
    assert_eq!(c.snapshot(), before);
}

#[test]
fn sigterm_to_the_supervisor_stops_qemu_and_undoes() {
    let c = Container::new("ho-term", 63);
    let before = c.snapshot();
    let mut sup = c.supervise(&["--deliver", "cmdline"], &["-kernel", "k"]);
    c.wait_for_qemu(&mut sup);
    let qemu = c.qemu_pid().unwrap();
    assert!(c.ipv4().is_empty());
    // SAFETY: kill on the supervisor we started.
    unsafe { libc::kill(sup.pid() as i32, libc::SIGTERM) };
    let code = wait_exit(&mut sup, Duration::from_secs(15));
    // The fake QEMU died of the forwarded SIGTERM: 128 + 15.
    assert_eq!(code, Some(143), "{:?}", c.supervisor_output());
    assert!(!macvtap_testkit::alive(qemu), "QEMU still runs");
    assert_eq!(c.snapshot(), before, "{:?}", c.supervisor_output());
    assert!(c.state_files().is_empty(), "{:?}", c.state_files());
    assert!(c.supervisor_output().1.contains("after signal 15"));
}

#[test]
fn sigkill_of_the_supervisor_is_reported_by_doctor_and_undo_restores_from_the_record() {
    let c = Container::new("ho-kill", 64);
    let before = c.snapshot();
    let mut sup = c.supervise(&["--deliver", "nocloud"], &["-m", "64"]);
    c.wait_for_qemu(&mut sup);
    let args = c.qemu_args();
    let drive = value_after(&args, "-drive");
    assert!(
        drive.ends_with(".seed.img,format=raw,if=virtio,readonly=on"),
        "{drive}"
    );
    let seed = drive.trim_start_matches("file=").split(',').next().unwrap();
    assert!(std::path::Path::new(seed).is_file());
    // While it runs, doctor says all is well with the handover.
    let state = c.state_dir();
    let doctor = || {
        let run = common::run_in(&c.ctr, &["doctor", "--state-dir", &state, "--json"]);
        serde_json::from_str::<Value>(&run.stdout).unwrap()
    };
    assert_eq!(finding(&doctor(), "eth0", "handover")["status"], "ok");

    // SAFETY: kill on the supervisor we started.
    unsafe { libc::kill(sup.pid() as i32, libc::SIGKILL) };
    let _ = wait_exit(&mut sup, Duration::from_secs(5));
    assert!(c.ipv4().is_empty(), "the handover stays after a SIGKILL");
    let report = doctor();
    let f = finding(&report, "eth0", "handover");
    assert_eq!(f["status"], "problem", "{f:#}");
    assert!(
        f["summary"].as_str().unwrap().contains("supervisor"),
        "{f:#}"
    );
    let fix = f["fix"].as_str().unwrap();
    assert!(fix.contains("macvtapctl handover --undo"), "{fix}");
    assert!(fix.contains(c.ctr.name()), "{fix}");

    let t = Instant::now();
    let undo = c.handover(&["--undo"]);
    let took = t.elapsed();
    assert!(undo.ok().is_empty());
    assert!(undo.stderr.contains("identity back"), "{undo:?}");
    eprintln!(
        "measured: undo after SIGKILL (whole process) {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(c.snapshot(), before);
    assert!(c.state_files().is_empty(), "{:?}", c.state_files());
    assert!(!std::path::Path::new(seed).exists(), "the seed stays");
    // Again: nothing to undo, still fine.
    let again = c.handover(&["--undo"]);
    again.ok();
    assert!(again.stderr.contains("nothing to undo"), "{again:?}");
    let report = doctor();
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["check"] != "handover"),
        "{report:#}"
    );
}

#[test]
fn doctor_reports_an_apply_that_stopped_half_way() {
    let c = Container::new("ho-intent", 65);
    let before = c.snapshot();
    let store = Store::open(&c.state_dir()).unwrap();
    let ns = NetNs::open(c.ctr.path()).unwrap();
    let mut opts = ApplyOptions::new("eth0");
    opts.stop_after = Some(ApplyStep::RoutesRemoved);
    assert!(apply(&store, &ns, &opts).is_err());
    let state = c.state_dir();
    let run = common::run_in(&c.ctr, &["doctor", "--state-dir", &state, "--json"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let f = finding(&report, "eth0", "handover");
    assert_eq!(f["status"], "problem");
    assert!(
        f["summary"].as_str().unwrap().contains("half done"),
        "{f:#}"
    );
    let text = common::run_in(&c.ctr, &["doctor", "--state-dir", &state]);
    assert!(text.stdout.contains("handover --undo"), "{}", text.stdout);
    c.handover(&["--undo"]).ok();
    assert_eq!(c.snapshot(), before);
}

#[test]
fn a_second_handover_of_the_same_container_is_refused_and_changes_nothing() {
    let c = Container::new("ho-twice", 66);
    let before = c.snapshot();
    let mut sup = c.supervise(&["--deliver", "cmdline"], &["-kernel", "k"]);
    c.wait_for_qemu(&mut sup);
    let during = c.snapshot();
    let fake = c.path("fake-qemu");
    let second = c.handover(&[
        "--deliver",
        "cmdline",
        "--qemu",
        fake.to_str().unwrap(),
        "--",
        "-kernel",
        "k",
    ]);
    let err = second.fails_with(1);
    assert!(err.contains("already handed over"), "{err}");
    assert_eq!(c.snapshot(), during);
    // --undo while the supervisor lives is refused too: it would pull the
    // identity from under a running VM.
    let undo = c.handover(&["--undo"]);
    assert!(undo.fails_with(1).contains("supervisor"), "{undo:?}");
    assert_eq!(c.snapshot(), during);
    c.stop_qemu();
    assert_eq!(wait_exit(&mut sup, Duration::from_secs(10)), Some(0));
    assert_eq!(c.snapshot(), before);
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let c = Container::new("ho-bad", 67);
    c.ctr.ip_cmd("link add eth1 type veth peer name eth2");
    c.ctr.ip_cmd("link set eth1 up");
    let before = c.snapshot();
    let state = c.state_dir();
    let fake = c.fake_qemu();
    let q = fake.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "handover",
                "--state-dir",
                &state,
                "--qemu",
                q,
                "--",
                "-m",
                "64",
            ],
            "--netns NAME|PATH or --pid PID",
        ),
        (
            vec![
                "--netns",
                "no-such-ns-hcli",
                "handover",
                "--state-dir",
                &state,
                "--",
                "-m",
                "64",
            ],
            "no-such-ns-hcli",
        ),
        (
            vec![
                "handover",
                "--pid",
                "999999999",
                "--state-dir",
                &state,
                "--",
                "-m",
                "64",
            ],
            "process 999999999 does not exist",
        ),
        (
            vec![
                "--netns",
                c.ctr.name(),
                "handover",
                "--interface",
                "lo",
                "--state-dir",
                &state,
                "--qemu",
                q,
                "--",
                "-m",
                "64",
            ],
            "loopback",
        ),
        (
            vec![
                "--netns",
                c.ctr.name(),
                "handover",
                "--interface",
                "eth1",
                "--state-dir",
                &state,
                "--qemu",
                q,
                "--",
                "-m",
                "64",
            ],
            "no IPv4 address",
        ),
        (
            vec![
                "--netns",
                c.ctr.name(),
                "handover",
                "--interface",
                "eth9",
                "--state-dir",
                &state,
                "--qemu",
                q,
                "--",
                "-m",
                "64",
            ],
            "eth9 does not exist",
        ),
        (
            vec![
                "--netns",
                c.ctr.name(),
                "handover",
                "--state-dir",
                &state,
                "--qemu",
                q,
            ],
            "give QEMU's arguments",
        ),
        (
            vec![
                "--netns",
                c.ctr.name(),
                "handover",
                "--deliver",
                "cmdline",
                "--state-dir",
                &state,
                "--qemu",
                q,
                "--",
                "-append",
                "ip=dhcp",
            ],
            "already has an ip=",
        ),
    ];
    for (args, want) in cases {
        let run = common::run(&args);
        let err = run.fails_with(1);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(c.snapshot(), before, "{args:?} changed something");
    }
    // A multicast MAC: refused by the parser (exit 2), nothing changed.
    let run = common::run(&[
        "--netns",
        c.ctr.name(),
        "handover",
        "--mac",
        "01:00:5e:00:00:01",
        "--state-dir",
        &state,
        "--",
        "-m",
        "64",
    ]);
    assert!(run.fails_with(2).contains("multicast"), "{run:?}");
    // A state dir others can write.
    let open_dir = c.path("open-state");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(
        &open_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let run = common::run(&[
        "--netns",
        c.ctr.name(),
        "handover",
        "--state-dir",
        open_dir.to_str().unwrap(),
        "--qemu",
        q,
        "--",
        "-m",
        "64",
    ]);
    let err = run.fails_with(1);
    assert!(err.contains("nothing changed"), "{err}");
    assert_eq!(c.snapshot(), before);
    assert!(c.state_files().is_empty(), "{:?}", c.state_files());
    assert!(!c.path("args").exists(), "QEMU ran");
}

#[test]
fn dhcp_the_guest_gets_its_lease_through_the_tap_while_the_supervisor_runs() {
    let c = Container::new("ho-dhcp", 68);
    let before = c.snapshot();
    // The fake QEMU closes its tap fd: this test is the guest on the tap.
    std::fs::write(c.path("close-tap"), "").unwrap();
    let mut sup = c.supervise(
        &[
            "--json",
            "--deliver",
            "dhcp",
            "--mac",
            MAC,
            "--resolv-conf",
            c.path("resolv.conf").to_str().unwrap(),
        ],
        &["-m", "64"],
    );
    c.wait_for_qemu(&mut sup);
    let mv = c.ctr.macvtaps().into_iter().next().expect("the macvtap");
    // The shim is there too, next to the macvtap, on eth0.
    let shim = c
        .ctr
        .links()
        .into_iter()
        .find(|l| l.kind.as_deref() == Some("macvlan"))
        .expect("the DHCP shim");
    assert_eq!(shim.link.as_deref(), Some("eth0"));
    let (major, minor) = c.ctr.tap_dev(&mv);
    let node = c.path("guest.tap");
    macvtap_net::make_device_node(
        &node,
        macvtap_net::DeviceNumber {
            major: major as u32,
            minor: minor as u32,
        },
        0,
        0,
    )
    .unwrap();
    let guest = MacAddr::parse_unicast(MAC).unwrap();
    let mut tap = DhcpGuest::open(&node, guest);
    let t = Instant::now();
    tap.send(MessageType::Discover, 0x51, vec![]);
    let (_, _, offer) = tap.reply(0x51, Duration::from_secs(5)).expect("no OFFER");
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 68, 0, 2));
    tap.send(
        MessageType::Request,
        0x52,
        vec![
            DhcpOption::ServerIdentifier(Ipv4Addr::new(169, 254, 1, 1)),
            DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 68, 0, 2)),
        ],
    );
    let (_, _, ack) = tap.reply(0x52, Duration::from_secs(5)).expect("no ACK");
    let lease = t.elapsed();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(
        ack.opts().get(v4::OptionCode::Router),
        Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 68, 0, 1)]))
    );
    assert_eq!(
        ack.opts().get(v4::OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            10, 0, 0, 53
        )]))
    );
    eprintln!(
        "measured: DISCOVER to ACK through the tap {:.1} ms",
        lease.as_secs_f64() * 1e3
    );
    drop(tap);
    c.stop_qemu();
    assert_eq!(wait_exit(&mut sup, Duration::from_secs(10)), Some(0));
    assert_eq!(c.snapshot(), before, "{:?}", c.supervisor_output());
    assert!(c.state_files().is_empty());
    // The last event reports the lease: one ACK, after QEMU started and
    // before it ended.
    let (out, _) = c.supervisor_output();
    let undone: Value = serde_json::from_str(out.lines().last().unwrap_or("")).unwrap();
    assert_eq!(undone["event"], "undone", "{out}");
    assert_eq!(undone["dhcp"]["acks"], 1, "{out}");
    let first_ack = undone["dhcp"]["firstAckMs"].as_f64().expect("firstAckMs");
    let ran = undone["ranMs"].as_f64().expect("ranMs");
    assert!(first_ack > 0.0 && first_ack < ran, "{out}");
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, tag: &str) -> roxmltree::Node<'a, 'i> {
    node.children()
        .find(|n| n.has_tag_name(tag))
        .unwrap_or_else(|| panic!("no <{tag}> in {node:?}"))
}

#[test]
fn libvirt_prints_the_pieces_and_leaves_the_handover_until_undo() {
    let c = Container::new("ho-virt", 69);
    let before = c.snapshot();
    let state = c.state_dir();
    let run = common::run(&[
        "--netns",
        c.ctr.name(),
        "handover",
        "--libvirt",
        "--deliver",
        "nocloud",
        "--mac",
        MAC,
        "--state-dir",
        &state,
    ]);
    let xml = format!("<pieces>{}</pieces>", run.ok());
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
    let iface = doc
        .descendants()
        .find(|n| n.has_tag_name("interface"))
        .expect("an <interface>");
    assert_eq!(iface.attribute("type"), Some("ethernet"));
    let mv = c
        .ctr
        .macvtaps()
        .into_iter()
        .next()
        .expect("the macvtap stays");
    assert_eq!(
        child(iface, "target").attribute("dev"),
        Some(mv.name.as_str())
    );
    assert_eq!(child(iface, "target").attribute("managed"), Some("no"));
    assert_eq!(child(iface, "mac").attribute("address"), Some(MAC));
    let disk = doc
        .descendants()
        .find(|n| n.has_tag_name("disk"))
        .expect("the seed <disk>");
    let seed = child(disk, "source").attribute("file").unwrap().to_string();
    assert!(child(disk, "readonly").is_element());
    let image = std::fs::read(&seed).unwrap();
    let (label, files) = macvtap_handover::nocloud::read_vfat(&image).unwrap();
    assert_eq!(label.trim(), "cidata");
    let net = &files.iter().find(|(n, _)| n == "network-config").unwrap().1;
    assert!(net.contains("10.69.0.2/24"), "{net}");
    assert!(net.contains(MAC), "{net}");
    // The handover stays applied; doctor says so as a note with the way out.
    assert!(c.ipv4().is_empty());
    let report: Value = serde_json::from_str(
        &common::run_in(&c.ctr, &["doctor", "--state-dir", &state, "--json"]).stdout,
    )
    .unwrap();
    let f = finding(&report, "eth0", "handover");
    assert_eq!(f["status"], "note", "{f:#}");
    assert!(f["fix"].as_str().unwrap().contains("--undo"));
    // --libvirt with QEMU arguments is a usage error.
    let both = c.handover(&["--libvirt", "--", "-m", "64"]);
    assert!(both.fails_with(1).contains("--libvirt"), "{both:?}");

    c.handover(&["--undo"]).ok();
    assert_eq!(c.snapshot(), before);
    assert!(!std::path::Path::new(&seed).exists());
    assert!(c.state_files().is_empty(), "{:?}", c.state_files());
}

#[test]
fn libvirt_json_with_cmdline_reports_the_ip_argument() {
    let c = Container::new("ho-virtj", 70);
    let before = c.snapshot();
    let state = c.state_dir();
    let run = common::run(&[
        "--netns",
        c.ctr.name(),
        "--json",
        "handover",
        "--libvirt",
        "--deliver",
        "cmdline",
        "--state-dir",
        &state,
    ]);
    let ev = run.json();
    assert_eq!(ev["event"], "applied");
    let xml = ev["libvirt"].as_str().unwrap();
    assert!(
        xml.contains("<cmdline>ip=10.70.0.2::10.70.0.1:255.255.255.0::eth0:off</cmdline>"),
        "{xml}"
    );
    assert!(ev["undo"].as_str().unwrap().contains("--undo"));
    let undo = common::run(&[
        "--netns",
        c.ctr.name(),
        "--json",
        "handover",
        "--undo",
        "--state-dir",
        &state,
    ]);
    assert_eq!(undo.json()["outcome"], "Restored");
    assert_eq!(c.snapshot(), before);
}

#[test]
fn libvirt_with_dhcp_serves_until_sigterm_and_leaves_the_handover_applied() {
    let c = Container::new("ho-virtd", 71);
    let before = c.snapshot();
    let out = std::fs::File::create(c.path("supervisor.out")).unwrap();
    let err = std::fs::File::create(c.path("supervisor.err")).unwrap();
    let mut sup = common::ChildGuard(
        std::process::Command::new(common::ctl_path())
            .args([
                "--netns",
                c.ctr.name(),
                "handover",
                "--libvirt",
                "--deliver",
                "dhcp",
                "--state-dir",
                &c.state_dir(),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap(),
    );
    let serving = common::eventually(Duration::from_secs(10), || {
        c.supervisor_output().1.contains("serving DHCP")
    });
    assert!(serving, "{:?}", c.supervisor_output());
    assert!(c
        .supervisor_output()
        .0
        .contains("<interface type='ethernet'>"));
    let has_shim = || {
        c.ctr
            .links()
            .iter()
            .any(|l| l.kind.as_deref() == Some("macvlan"))
    };
    assert!(has_shim(), "no DHCP shim while serving");
    // SAFETY: kill on the process we started.
    unsafe { libc::kill(sup.pid() as i32, libc::SIGTERM) };
    assert_eq!(wait_exit(&mut sup, Duration::from_secs(10)), Some(0));
    assert!(c.supervisor_output().1.contains("DHCP server stopped"));
    // The server and its shim are gone; the handover itself stays.
    assert!(!has_shim());
    assert!(c.ipv4().is_empty());
    assert_eq!(c.ctr.macvtaps().len(), 1);
    c.handover(&["--undo"]).ok();
    assert_eq!(c.snapshot(), before);
}
