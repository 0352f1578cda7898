//! `macvtapctl handover` on a handover the chained CNI plugin made: the
//! record (with its CNI owner) is written by the same core the plugin
//! uses, then the launcher runs a stand-in QEMU from it and leaves the
//! handover applied when QEMU exits; only the owner's undo (the CNI DEL)
//! gives the container its identity back.

#![allow(clippy::unwrap_used)]

mod common;

use common::container::{wait_exit, Container};
use macvtap_handover::{apply, undo, ApplyOptions, CniOwner, Record, Store, UndoOutcome};
use macvtap_net::{MacAddr, NetNs};
use serde_json::Value;

const MAC: &str = "02:00:0a:ca:00:3b";

/// What the CNI plugin's ADD does to the container (minus the node).
fn cni_handover(c: &Container) -> Record {
    let store = Store::open(&c.state_dir()).unwrap();
    let ns = NetNs::open(c.ctr.path()).unwrap();
    let mut opts = ApplyOptions::new("eth0");
    opts.mac = Some(MacAddr::parse_unicast(MAC).unwrap());
    opts.cni = Some(CniOwner {
        network: "chainnet".into(),
        container_id: "ctr-1".into(),
        ifname: "eth0".into(),
    });
    apply(&store, &ns, &opts).unwrap().record
}

/// The CNI DEL's undo.
fn cni_del(c: &Container) -> UndoOutcome {
    let store = Store::open(&c.state_dir()).unwrap();
    undo(&store, &NetNs::open(c.ctr.path()).unwrap(), "eth0").unwrap()
}

fn events(c: &Container) -> Vec<Value> {
    c.supervisor_output()
        .0
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn an_adopted_handover_runs_qemu_from_the_record_and_stays_applied_when_qemu_exits() {
    let c = Container::new("ho-cni", 71);
    let before = c.snapshot();
    let record = cni_handover(&c);
    let during = c.snapshot();
    assert_ne!(during, before);
    let mut sup = c.supervise(
        &["--json", "--deliver", "cmdline"],
        &["-m", "64", "-append", "console=ttyS0"],
    );
    c.wait_for_qemu(&mut sup);
    let args = c.qemu_args();
    let device = args
        .iter()
        .find(|a| a.starts_with("virtio-net-pci"))
        .unwrap();
    assert!(device.contains(&format!("mac={MAC}")), "{args:?}");
    assert!(
        args.iter()
            .any(|a| a == "console=ttyS0 ip=10.71.0.2::10.71.0.1:255.255.255.0::eth0:off"),
        "{args:?}"
    );
    c.stop_qemu();
    assert_eq!(
        wait_exit(&mut sup, std::time::Duration::from_secs(10)),
        Some(0)
    );
    let ev = events(&c);
    assert_eq!(ev[0]["event"], "applied", "{ev:?}");
    assert_eq!(ev[0]["adopted"], true);
    assert_eq!(ev[0]["mac"], MAC);
    assert_eq!(ev[0]["macvtap"], record.made.macvtap.as_str());
    assert_eq!(ev[0]["cni"]["containerId"], "ctr-1");
    assert_eq!(ev[1]["event"], "stopped", "{ev:?}");
    assert_eq!(ev[1]["outcome"], "LeftToCni");
    // Still handed over, exactly as the CNI ADD left it; only the record
    // is left in the state dir (no supervisor file).
    assert_eq!(c.snapshot(), during);
    assert_eq!(c.state_files(), vec![record.key.file_name()]);

    // doctor: a CNI-owned handover with no launcher is no problem.
    let state = c.state_dir();
    let run = common::run_in(&c.ctr, &["doctor", "--state-dir", &state, "--json"]);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let f = common::finding(&report, "eth0", "handover");
    assert_eq!(f["status"], "ok", "{f:#}");
    assert!(
        f.to_string().contains("CNI plugin") && f.to_string().contains("ctr-1"),
        "{f:#}"
    );

    // --undo is the CNI DEL's job, not the launcher's.
    let refused = c.handover(&["--undo"]).fails_with(1).to_string();
    assert!(refused.contains("CNI DEL"), "{refused}");
    assert_eq!(c.snapshot(), during);

    assert_eq!(cni_del(&c), UndoOutcome::Restored);
    assert_eq!(c.snapshot(), before);
    assert!(c.state_files().is_empty());
}

#[test]
fn an_adopted_handover_serves_dhcp_on_a_shim_and_removes_only_the_shim() {
    let c = Container::new("ho-cnid", 72);
    let record = cni_handover(&c);
    let during = c.snapshot();
    let mut sup = c.supervise(&["--adopt", "--deliver", "dhcp"], &["-m", "64"]);
    c.wait_for_qemu(&mut sup);
    let shim = c.ctr.link(&record.made.shim).expect("the DHCP shim");
    assert_eq!(shim.kind.as_deref(), Some("macvlan"));
    assert_eq!(shim.link.as_deref(), Some("eth0"));
    c.stop_qemu();
    assert_eq!(
        wait_exit(&mut sup, std::time::Duration::from_secs(10)),
        Some(0)
    );
    let (_, err) = c.supervisor_output();
    assert!(err.contains("the handover stays applied"), "{err}");
    assert!(c.ctr.link(&record.made.shim).is_none());
    assert_eq!(c.snapshot(), during);
    assert_eq!(cni_del(&c), UndoOutcome::Restored);
}

#[test]
fn adopt_refuses_what_does_not_fit_and_changes_nothing() {
    let c = Container::new("ho-cnix", 73);
    let before = c.snapshot();
    // --adopt without a CNI record: no handover of its own.
    let err = c
        .handover(&["--adopt", "--qemu", "/bin/false", "--", "-m", "64"])
        .fails_with(1)
        .to_string();
    assert!(err.contains("no handover made by the CNI plugin"), "{err}");
    assert_eq!(c.snapshot(), before);
    assert!(c.state_files().is_empty());
    // Another MAC than the record's: the guest would get no frames.
    let record = cni_handover(&c);
    let during = c.snapshot();
    let err = c
        .handover(&[
            "--mac",
            "02:00:00:00:00:77",
            "--qemu",
            "/bin/false",
            "--",
            "-m",
            "64",
        ])
        .fails_with(1)
        .to_string();
    assert!(err.contains(&record.made.mac.to_string()), "{err}");
    assert_eq!(c.snapshot(), during);
    assert_eq!(c.state_files(), vec![record.key.file_name()]);
    assert_eq!(cni_del(&c), UndoOutcome::Restored);
    assert_eq!(c.snapshot(), before);
}
