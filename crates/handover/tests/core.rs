//! The handover core against the real kernel: capture, durable record,
//! apply, undo, crashes at every step, and bad input.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Instant;

use common::{HandoverWorld, World};
use macvtap_handover::{
    apply, capture, record_key, undo, ApplyStep, Error, Phase, ResolvConf, Store, Target,
    UndoOutcome,
};
use macvtap_net::MacAddr;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn capture_reads_addresses_routes_mtu_mac_and_dns() {
    let w = World::new("capture", 201);
    let ns = w.netns();
    let before = w.snapshot();
    let id = capture(&ns, "eth0", &ResolvConf::Path(w.resolv_conf())).unwrap();
    assert_eq!(w.snapshot(), before, "capture changed something");

    assert_eq!(id.interface, "eth0");
    assert_eq!(id.mtu, 1400);
    assert!(id.up);
    let link = w.ctr.expect_link("eth0");
    assert_eq!(id.mac.to_string(), link.mac);
    assert_eq!(u64::from(id.ifindex), link.ifindex);
    let mut addrs: Vec<String> = id
        .addresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.prefix_len))
        .collect();
    addrs.sort();
    assert_eq!(
        addrs,
        ["10.201.0.2/24", "10.201.0.3/24", "2001:db8:201::2/64"]
    );
    assert!(id
        .addresses
        .iter()
        .any(|a| a.address == ip("10.201.0.3") && a.is_secondary()));
    assert_eq!(id.ipv4(), Some(("10.201.0.2".parse().unwrap(), 24)));
    assert_eq!(id.ipv4_gateway(), Some("10.201.0.1".parse().unwrap()));
    assert_eq!(id.ipv6_gateway(), Some("2001:db8:201::1".parse().unwrap()));
    let extra = id
        .routes
        .iter()
        .find(|r| r.destination == ip("10.202.0.0"))
        .expect("the extra IPv4 route");
    assert_eq!(
        (extra.prefix_len, extra.gateway, extra.metric),
        (16, Some(ip("10.201.0.1")), Some(50))
    );
    // The prefix routes the kernel made for the addresses are captured too,
    // but the link-local IPv6 one is not.
    assert!(id
        .routes
        .iter()
        .any(|r| r.destination == ip("10.201.0.0") && r.gateway.is_none()));
    assert!(id
        .routes
        .iter()
        .any(|r| r.destination == ip("2001:db8:201::") && r.prefix_len == 64));
    assert!(!id
        .routes
        .iter()
        .any(|r| r.destination.to_string().starts_with("fe80")));
    // Only the explicit ones are for the guest to be told.
    let explicit: Vec<_> = id.explicit_routes().map(|r| r.destination).collect();
    assert_eq!(explicit.len(), 3, "{explicit:?}");
    assert_eq!(
        id.dns.nameservers,
        vec![ip("10.0.0.53"), ip("2001:db8:53::53")]
    );
    assert_eq!(id.dns.search, vec!["corp.example", "lab.example"]);
    // And it serialises.
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(
        serde_json::from_str::<macvtap_handover::Identity>(&json).unwrap(),
        id
    );
}

#[test]
fn apply_moves_the_identity_and_undo_restores_it_exactly() {
    let w = World::new("apply", 202);
    let ns = w.netns();
    let store = w.store();
    let before = w.snapshot();

    let mut opts = w.options();
    let mac = MacAddr::parse_unicast("02:aa:bb:cc:dd:01").unwrap();
    opts.mac = Some(mac);
    let t = Instant::now();
    let applied = apply(&store, &ns, &opts).unwrap();
    let apply_ms = t.elapsed().as_secs_f64() * 1e3;

    // The record is on disk, durable, root's only, and says it all.
    let rec = &applied.record;
    assert_eq!(rec.phase, Phase::Applied);
    let meta = std::fs::symlink_metadata(&applied.record_path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let on_disk: macvtap_handover::Record =
        serde_json::from_slice(&std::fs::read(&applied.record_path).unwrap()).unwrap();
    assert_eq!(&on_disk, rec);
    assert_eq!(rec.identity.addresses.len(), 3);
    assert_eq!(rec.made.mac, mac);
    assert_eq!(rec.made.mode, "bridge");

    // The macvtap is there, on eth0, bridge mode, with the guest's MAC, up.
    let tap = w.ctr.expect_link(&rec.made.macvtap);
    assert_eq!(tap.kind.as_deref(), Some("macvtap"));
    assert_eq!(tap.mode.as_deref(), Some("bridge"));
    assert_eq!(tap.mac, mac.to_string());
    assert_eq!(tap.link.as_deref(), Some("eth0"));
    assert!(tap.is_up());
    assert_eq!(Some(tap.ifindex), rec.made.macvtap_index.map(u64::from));
    // eth0 is up, keeps its link-local address, and has nothing else.
    let eth0 = w.ctr.expect_link("eth0");
    assert!(eth0.is_up());
    assert_eq!(w.global_addrs(), Vec::<String>::new());
    assert_eq!(w.eth0_routes(), Vec::<serde_json::Value>::new());
    assert!(
        !w.ctr.addr_cidrs("eth0", "inet6").is_empty(),
        "link-local stays"
    );

    let t = Instant::now();
    assert_eq!(undo(&store, &ns, "eth0").unwrap(), UndoOutcome::Restored);
    let undo_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(w.snapshot(), before, "undo did not restore exactly");
    assert!(!applied.record_path.exists());
    eprintln!("TIMING apply {apply_ms:.2} ms, undo {undo_ms:.2} ms");
}

#[test]
fn apply_twice_is_refused_and_undo_twice_is_safe() {
    let w = World::new("twice", 203);
    let ns = w.netns();
    let store = w.store();
    let before = w.snapshot();
    let applied = apply(&store, &ns, &w.options()).unwrap();
    let during = w.snapshot();
    let err = apply(&store, &ns, &w.options()).unwrap_err();
    assert!(matches!(err, Error::AlreadyHandedOver { .. }), "{err}");
    assert!(err.to_string().contains("already handed over"), "{err}");
    assert_eq!(w.snapshot(), during, "the refused apply changed something");
    // Generated MACs are locally administered unicast.
    let mac = applied.record.made.mac.0;
    assert_eq!(mac[0] & 0x03, 0x02, "{}", applied.record.made.mac);

    assert_eq!(undo(&store, &ns, "eth0").unwrap(), UndoOutcome::Restored);
    assert_eq!(
        undo(&store, &ns, "eth0").unwrap(),
        UndoOutcome::NothingRecorded
    );
    assert_eq!(w.snapshot(), before);
    // And it can be handed over again afterwards.
    apply(&store, &ns, &w.options()).unwrap();
    assert_eq!(undo(&store, &ns, "eth0").unwrap(), UndoOutcome::Restored);
    assert_eq!(w.snapshot(), before);
}

#[test]
fn undo_after_a_crash_at_every_step_restores() {
    let w = World::new("crash", 204);
    let ns = w.netns();
    let store = w.store();
    let before = w.snapshot();
    let key = record_key(&ns, "eth0").unwrap();
    for step in ApplyStep::ALL {
        let mut opts = w.options();
        opts.stop_after = Some(step);
        let err = apply(&store, &ns, &opts).unwrap_err();
        assert!(matches!(err, Error::StoppedByHook(s) if s == step), "{err}");
        let rec = store
            .load(&key)
            .unwrap()
            .expect("the record survives the crash");
        assert_eq!(rec.phase, Phase::Intent, "{step:?}");
        let made = w.ctr.link(&rec.made.macvtap).is_some();
        assert_eq!(made, step != ApplyStep::Recorded, "{step:?}: macvtap made?");
        if step == ApplyStep::AddressesRemoved {
            assert!(w.global_addrs().is_empty(), "{step:?}");
        }
        // A second apply after the crash is refused, not stacked.
        assert!(matches!(
            apply(&store, &ns, &w.options()),
            Err(Error::AlreadyHandedOver { .. })
        ));
        assert_eq!(
            undo(&store, &ns, "eth0").unwrap(),
            UndoOutcome::Restored,
            "{step:?}"
        );
        assert_eq!(w.snapshot(), before, "after a crash at {step:?}");
        assert!(store.load(&key).unwrap().is_none());
        assert_eq!(
            undo(&store, &ns, "eth0").unwrap(),
            UndoOutcome::NothingRecorded
        );
    }
}

#[test]
fn undo_puts_back_what_was_changed_after_apply() {
    // Someone lowered the MTU and took eth0 down while it was handed over.
    let w = World::new("drift", 205);
    let ns = w.netns();
    let store = w.store();
    let before = w.snapshot();
    apply(&store, &ns, &w.options()).unwrap();
    w.ctr.ip_cmd("link set eth0 mtu 1300");
    w.ctr.ip_cmd("link set eth0 down");
    w.ctr.ip_cmd("link set eth0 up");
    assert_eq!(undo(&store, &ns, "eth0").unwrap(), UndoOutcome::Restored);
    assert_eq!(w.ctr.expect_link("eth0").mtu, 1400);
    assert_eq!(w.snapshot(), before);
}

#[test]
fn undo_leaves_a_link_it_did_not_make() {
    // Apply stopped before the macvtap was made, and someone else made a
    // link with the recorded name meanwhile: undo must not delete it.
    let w = World::new("notours", 206);
    let ns = w.netns();
    let store = w.store();
    let mut opts = w.options();
    opts.stop_after = Some(ApplyStep::Recorded);
    let _ = apply(&store, &ns, &opts).unwrap_err();
    let rec = store
        .load(&record_key(&ns, "eth0").unwrap())
        .unwrap()
        .unwrap();
    w.ctr.ip_cmd(&format!(
        "link add link eth0 name {} type macvtap mode bridge",
        rec.made.macvtap
    ));
    assert_eq!(undo(&store, &ns, "eth0").unwrap(), UndoOutcome::Restored);
    assert!(
        w.ctr.link(&rec.made.macvtap).is_some(),
        "undo deleted a link it did not make"
    );
}

#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let w = World::new("bad", 207);
    let ns = w.netns();
    let store = w.store();
    let before = w.snapshot();
    let records = || std::fs::read_dir(store.path()).unwrap().count();

    // A namespace path and a process that do not exist.
    let err = Target::Path(PathBuf::from("/run/netns/does-not-exist-handover"))
        .open()
        .unwrap_err();
    let chain = macvtap_net::error_chain(&err);
    assert!(chain.contains("does not exist"), "{chain}");
    let mut pid = 4_000_000;
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        pid += 1;
    }
    let err = Target::Pid(pid).open().unwrap_err();
    assert!(matches!(err, Error::NoSuchProcess { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("process {pid} does not exist")),
        "{err}"
    );
    assert!(matches!(
        Target::Pid(-1).open(),
        Err(Error::NoSuchProcess { .. })
    ));
    // A pid that does exist opens.
    Target::Pid(std::process::id() as i32).open().unwrap();

    // Interface missing, loopback, no IPv4.
    let mut o = w.options();
    o.interface = "eth9".into();
    let err = apply(&store, &ns, &o).unwrap_err();
    assert!(matches!(err, Error::NoSuchInterface { .. }), "{err}");
    o.interface = "lo".into();
    let err = apply(&store, &ns, &o).unwrap_err();
    assert!(matches!(err, Error::Loopback { .. }), "{err}");
    w.ctr.ip_cmd("link add eth1 type veth peer name eth1p");
    w.ctr.ip_cmd("link set eth1 up");
    w.ctr.ip_cmd("addr add 2001:db8:99::2/64 dev eth1 nodad");
    let before_eth1 = w.ctr.ip_json(&["addr", "show", "dev", "eth1"]);
    o.interface = "eth1".into();
    let err = apply(&store, &ns, &o).unwrap_err();
    assert!(matches!(err, Error::NoIpv4 { .. }), "{err}");
    assert!(err.to_string().contains("no IPv4 address"), "{err}");
    assert_eq!(w.ctr.ip_json(&["addr", "show", "dev", "eth1"]), before_eth1);
    w.ctr.ip_cmd("link del eth1");
    o.interface = "bad/name".into();
    assert!(matches!(
        apply(&store, &ns, &o),
        Err(Error::BadInterfaceName { .. })
    ));

    // A multicast (or zero) guest MAC.
    let mut o = w.options();
    o.mac = Some(MacAddr([0x01, 0, 0x5e, 0, 0, 1]));
    let err = apply(&store, &ns, &o).unwrap_err();
    assert!(matches!(err, Error::UnusableMac { .. }), "{err}");
    assert!(err.to_string().contains("multicast"), "{err}");
    o.mac = Some(MacAddr([0; 6]));
    assert!(matches!(
        apply(&store, &ns, &o),
        Err(Error::UnusableMac { .. })
    ));

    // A name that is taken.
    w.ctr.ip_cmd("link add hvtapx type veth peer name hvtapxp");
    let mut o = w.options();
    o.macvtap_name = Some("hvtapx".into());
    let err = apply(&store, &ns, &o).unwrap_err();
    assert!(matches!(err, Error::NameTaken { .. }), "{err}");
    w.ctr.ip_cmd("link del hvtapx");

    // A resolv.conf that is not a regular file.
    let mut o = w.options();
    o.resolv_conf = ResolvConf::Path("/dev/zero".into());
    let err = apply(&store, &ns, &o).unwrap_err();
    assert!(matches!(err, Error::ResolvConf { .. }), "{err}");

    // A state directory others can write.
    let open_dir = w.tmp.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Store::open(open_dir.to_str().unwrap()).unwrap_err();
    let chain = macvtap_net::error_chain(&err);
    assert!(chain.contains("lets others write"), "{chain}");
    // And one whose handover directory was swapped for a symlink.
    let swapped = w.tmp.path().join("swapped");
    std::fs::create_dir(&swapped).unwrap();
    std::os::unix::fs::symlink("/tmp", swapped.join("handover")).unwrap();
    let err = Store::open(swapped.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, Error::Untrusted { .. }), "{err}");

    assert_eq!(records(), 0, "a refused apply left a record");
    assert_eq!(
        w.snapshot(),
        before,
        "a refused apply changed the namespace"
    );
}

#[test]
fn a_failed_apply_rolls_back_from_the_record() {
    // The macvtap cannot be made (passthru mode needs a lower without
    // other macvlans; a macvlan is already there), so apply fails after
    // the record was written: it must roll back and remove the record.
    let w = World::new("rollback", 208);
    let ns = w.netns();
    let store = w.store();
    w.ctr
        .ip_cmd("link add link eth0 name other0 type macvlan mode bridge");
    let before = w.snapshot();
    let mut o = w.options();
    o.mode = macvtap_net::MacvtapMode::Passthru;
    let err = apply(&store, &ns, &o).unwrap_err();
    assert!(matches!(err, Error::Net { .. }), "{err}");
    assert_eq!(w.snapshot(), before);
    assert!(store
        .load(&record_key(&ns, "eth0").unwrap())
        .unwrap()
        .is_none());
}

#[test]
fn resolv_conf_in_a_container_root_cannot_escape_it() {
    let w = World::new("resolv", 209);
    let root = w.tmp.subdir("rootfs/etc");
    // The container's /etc/resolv.conf is an absolute symlink: inside the
    // root it names the container's own file, not the host's.
    std::fs::write(root.join("real.conf"), "nameserver 10.9.9.9\n").unwrap();
    std::os::unix::fs::symlink("/etc/real.conf", root.join("resolv.conf")).unwrap();
    let dns = macvtap_handover::read_resolv_conf(
        std::path::Path::new("/etc/resolv.conf"),
        Some(&w.tmp.path().join("rootfs")),
    )
    .unwrap();
    assert_eq!(dns.nameservers, vec![ip("10.9.9.9")]);
    // And `..` cannot climb out either.
    std::fs::remove_file(root.join("resolv.conf")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/hostname", root.join("resolv.conf")).unwrap();
    assert!(macvtap_handover::read_resolv_conf(
        std::path::Path::new("/etc/resolv.conf"),
        Some(&w.tmp.path().join("rootfs")),
    )
    .is_err());
}

/// Run by `undo_after_sigkill_at_every_step` in a child process: apply up
/// to the step it is told, then SIGKILL itself (locks held, no rollback,
/// no destructors).
#[test]
#[ignore = "a helper the SIGKILL test runs in a child process"]
fn sigkill_child() {
    let netns = std::env::var("HANDOVER_CHILD_NETNS").expect("run by the SIGKILL test");
    let state = std::env::var("HANDOVER_CHILD_STATE").unwrap();
    let resolv = std::env::var("HANDOVER_CHILD_RESOLV").unwrap();
    let step: usize = std::env::var("HANDOVER_CHILD_STEP")
        .unwrap()
        .parse()
        .unwrap();
    let ns = macvtap_net::NetNs::open(&netns).unwrap();
    let store = Store::open(&state).unwrap();
    let mut opts = macvtap_handover::ApplyOptions::new("eth0");
    opts.resolv_conf = ResolvConf::Path(resolv.into());
    opts.stop_after = ApplyStep::ALL.get(step).copied();
    let result = apply(&store, &ns, &opts);
    assert!(step >= ApplyStep::ALL.len() || result.is_err());
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
}

#[test]
fn undo_after_sigkill_at_every_step() {
    let w = World::new("sigkill", 210);
    let ns = w.netns();
    let before = w.snapshot();
    // One more "step": killed after a complete apply (a supervisor killed
    // while the VM runs).
    for step in 0..=ApplyStep::ALL.len() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "sigkill_child", "--nocapture"])
            .env("HANDOVER_CHILD_NETNS", w.ctr.path())
            .env("HANDOVER_CHILD_STATE", w.state_dir())
            .env("HANDOVER_CHILD_RESOLV", w.resolv_conf())
            .env("HANDOVER_CHILD_STEP", step.to_string())
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.status.signal(),
            Some(libc::SIGKILL),
            "step {step}: the child was not killed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        // Killed right after the record: nothing changed yet; later: something did.
        assert_eq!(w.snapshot() == before, step == 0, "step {step}");
        // A new process (the store opened afresh) undoes from the record.
        let store = w.store();
        let key = record_key(&ns, "eth0").unwrap();
        assert!(
            store.load(&key).unwrap().is_some(),
            "step {step}: no record after the kill"
        );
        assert_eq!(
            undo(&store, &ns, "eth0").unwrap(),
            UndoOutcome::Restored,
            "step {step}"
        );
        assert_eq!(w.snapshot(), before, "after SIGKILL at step {step}");
    }
}
