//! Root-free tests of ADD's rollback and DEL's partial failures, against a
//! recording fake of the kernel ([`Kernel`]) and a real state directory in
//! a temporary directory of the test's own user.
//!
//! For each kind of attachment, a successful ADD is run once to count the
//! calls it makes of the kernel; then ADD is run again failing each one of
//! those calls in turn. Every run must fail with that call's error, undo in
//! reverse order exactly the effects that had happened (nothing more,
//! nothing twice), leave no record, claim or lease, and, when the undoing
//! fails too, name every undo failure in the error's details.

use std::collections::BTreeMap;
use std::path::PathBuf;

use macvtap_net::{DeviceNumber, Link, MacAddr, MacvtapMode, MacvtapSpec};
use macvtap_state::{
    AllocationRecord, Attach, AttachmentRecord, NodeConfig, NodeIdentity, NodePolicy, NodeRef,
    Resource, StateDir,
};
use serde_json::{json, Value};

use super::add::add_with;
use super::teardown::del_with;
use crate::config::Config;
use crate::error::{code, err, Result};
use crate::kernel::{CreateError, Kernel};
use crate::spec::{CniResult, Env};

const LOWER_INDEX: u32 = 2;
const BASE: u32 = 4096;

/// An effect on the node, and what undoes it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    Link(u32),
    HostLinkMoved(u32),
    Node,
    Lease,
}

/// A kernel that records every call and fails the one it is told to.
#[derive(Debug)]
struct Fake {
    pod: BTreeMap<String, Link>,
    host: BTreeMap<String, Link>,
    node: Option<NodeIdentity>,
    leases: u32,
    ipam: bool,
    next_index: u32,
    /// Every call, in order.
    calls: Vec<String>,
    /// Fail the call with this number (0-based over all calls).
    fail_at: Option<usize>,
    /// Once a call has failed, fail every undoing call too.
    fail_undo: bool,
    failed: bool,
    /// Effects in the order they happened, and undone.
    done: Vec<Effect>,
    undone: Vec<Effect>,
}

fn link(index: u32, name: &str, kind: &str, mac: Option<MacAddr>) -> Link {
    Link {
        index,
        name: name.to_string(),
        kind: Some(kind.to_string()),
        macvtap_mode: (kind == "macvtap").then_some(MacvtapMode::Bridge),
        mac,
        mtu: 1500,
        up: true,
        promisc: false,
        carrier: true,
        lower_index: (kind == "macvtap").then_some(LOWER_INDEX),
        link_netnsid: None,
        controller: None,
        loopback: false,
    }
}

impl Fake {
    fn new(ipam: bool) -> Fake {
        let mut host = BTreeMap::new();
        host.insert("up0".into(), link(LOWER_INDEX, "up0", "veth", None));
        Fake {
            pod: BTreeMap::new(),
            host,
            node: None,
            leases: 0,
            ipam,
            next_index: 10,
            calls: Vec::new(),
            fail_at: None,
            fail_undo: false,
            failed: false,
            done: Vec::new(),
            undone: Vec::new(),
        }
    }

    /// The device plugin's `attach: host` link for device index 0.
    fn with_host_link(mut self) -> Fake {
        let name = macvtap_state::host_link_name(BASE);
        let mac = MacAddr([0x02, 0, 0, 0, 0x10, 0x01]);
        self.host
            .insert(name.clone(), link(BASE, &name, "macvtap", Some(mac)));
        self
    }

    /// Record a call; `Err` if this is the one to fail.
    fn step(&mut self, call: String, undoing: bool) -> Result<()> {
        let n = self.calls.len();
        self.calls.push(call.clone());
        if self.fail_at == Some(n) || (undoing && self.fail_undo && self.failed) {
            self.failed = true;
            return Err(err(code::KERNEL, format!("injected failure of {call}")));
        }
        Ok(())
    }
}

impl Kernel for Fake {
    fn pod_netns(&self) -> Result<(u64, u64)> {
        Ok((7, 4026532000))
    }

    fn pod_link(&mut self, name: &str) -> Result<Option<Link>> {
        self.step(format!("pod_link {name}"), false)?;
        Ok(self.pod.get(name).cloned())
    }

    fn host_link(&mut self, name: &str) -> Result<Option<Link>> {
        self.step(format!("host_link {name}"), false)?;
        Ok(self.host.get(name).cloned())
    }

    fn lower_link(&mut self, in_pod: bool, name: &str) -> Result<Option<Link>> {
        self.step(format!("lower_link {name}"), false)?;
        Ok(if in_pod { &self.pod } else { &self.host }
            .get(name)
            .cloned())
    }

    fn create_macvtap(
        &mut self,
        _lower_in_pod: bool,
        spec: &MacvtapSpec<'_>,
    ) -> std::result::Result<(), CreateError> {
        self.step(format!("create_macvtap {}", spec.name), false)
            .map_err(|error| CreateError { errno: None, error })?;
        let index = spec.ifindex.unwrap_or_else(|| {
            self.next_index += 1;
            self.next_index
        });
        self.pod.insert(
            spec.name.into(),
            link(index, spec.name, "macvtap", spec.mac),
        );
        self.done.push(Effect::Link(index));
        Ok(())
    }

    fn move_to_pod(&mut self, index: u32, name: &str) -> Result<()> {
        self.step(format!("move_to_pod {index} {name}"), false)?;
        let (old, mut l) = self
            .host
            .iter()
            .find(|(_, l)| l.index == index)
            .map(|(n, l)| (n.clone(), l.clone()))
            .ok_or_else(|| err(code::KERNEL, "no such host link"))?;
        self.host.remove(&old);
        l.name = name.into();
        self.pod.insert(name.into(), l);
        self.done.push(Effect::HostLinkMoved(index));
        Ok(())
    }

    fn configure_pod_link(
        &mut self,
        index: u32,
        mac: Option<MacAddr>,
        _mtu: Option<u32>,
        _promisc: Option<bool>,
        _up: Option<bool>,
    ) -> Result<()> {
        self.step(format!("configure_pod_link {index}"), false)?;
        if let Some(l) = self.pod.values_mut().find(|l| l.index == index) {
            l.mac = mac.or(l.mac);
        }
        Ok(())
    }

    fn return_to_host(&mut self, index: u32, name: &str) -> Result<()> {
        self.step(format!("return_to_host {index} {name}"), true)?;
        let l = self
            .pod
            .values()
            .find(|l| l.index == index)
            .cloned()
            .ok_or_else(|| err(code::KERNEL, "no such pod link"))?;
        self.pod.retain(|_, l| l.index != index);
        self.host.insert(
            name.into(),
            Link {
                name: name.into(),
                ..l
            },
        );
        self.undone.push(Effect::HostLinkMoved(index));
        Ok(())
    }

    fn tap_device_number(&mut self, ifname: &str, index: u32) -> Result<DeviceNumber> {
        self.step(format!("tap_device_number {ifname} {index}"), false)?;
        Ok(DeviceNumber {
            major: 240,
            minor: index,
        })
    }

    fn make_node(
        &mut self,
        _state: &StateDir,
        _node: NodeRef<'_>,
        dev: DeviceNumber,
        _uid: u32,
        _gid: u32,
    ) -> Result<NodeIdentity> {
        self.step("make_node".into(), false)?;
        let identity = NodeIdentity {
            node_inode: 99,
            node_rdev: u64::from(dev.minor),
            node_ctime_ns: 1,
        };
        self.node = Some(identity);
        self.done.push(Effect::Node);
        Ok(identity)
    }

    fn remove_node(
        &mut self,
        _state: &StateDir,
        _node: NodeRef<'_>,
        made: Option<NodeIdentity>,
    ) -> Result<()> {
        self.step("remove_node".into(), true)?;
        if (made.is_none() || made == self.node) && self.node.take().is_some() {
            self.undone.push(Effect::Node);
        }
        Ok(())
    }

    fn configure_addresses(&mut self, _link: &Link, _leased: &CniResult) -> Result<()> {
        self.step("configure_addresses".into(), false)
    }

    fn delete_recorded_link(&mut self, record: &AttachmentRecord) -> Result<bool> {
        self.step(format!("delete_recorded_link {}", record.ifname), true)?;
        let ours = self.pod.get(&record.ifname).is_some_and(|l| {
            l.kind.as_deref() == Some("macvtap")
                && (l.index == record.ifindex
                    || (record.ifindex == 0
                        && l.mac.map(|m| m.to_string()) == Some(record.mac.clone())))
        });
        if ours {
            let index = self
                .pod
                .remove(&record.ifname)
                .map(|l| l.index)
                .unwrap_or(0);
            self.undone.push(Effect::Link(index));
        }
        Ok(ours)
    }

    fn ipam(&mut self, command: &str, _overrides: &[(&str, &str)]) -> Result<Option<Value>> {
        if !self.ipam {
            return Ok(None);
        }
        let undoing = command == "DEL";
        self.step(format!("ipam {command}"), undoing)?;
        match command {
            "ADD" => {
                self.leases += 1;
                self.done.push(Effect::Lease);
                Ok(Some(json!({"cniVersion": "1.0.0",
                    "ips": [{"address": "10.200.1.10/24", "gateway": "10.200.1.1"}],
                    "routes": [{"dst": "0.0.0.0/0"}]})))
            }
            "DEL" => {
                if self.leases > 0 {
                    self.leases -= 1;
                    self.undone.push(Effect::Lease);
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    fn has_ipam(&self) -> bool {
        self.ipam
    }
}

/// A state directory of the test's own, removed on drop.
struct TestState {
    dir: PathBuf,
    state: StateDir,
}

impl TestState {
    fn new(tag: &str) -> TestState {
        let dir = std::env::temp_dir().join(format!(
            "macvtap-unit-{tag}-{}-{}",
            std::process::id(),
            macvtap_state::random_hex(4)
        ));
        let state = StateDir::open(dir.to_str().expect("utf-8 temp dir")).expect("state dir");
        TestState { dir, state }
    }

    /// A resource `dataplane` (4 devices at BASE) and a grant for device 0.
    fn with_device(self, attach: Attach) -> TestState {
        self.state
            .save_config(&NodeConfig {
                resources: vec![Resource {
                    name: "dataplane".into(),
                    lower_device: "up0".into(),
                    mode: MacvtapMode::Bridge,
                    capacity: 4,
                    attach,
                    ifindex_base: BASE,
                }],
            })
            .expect("resources.json");
        self.state
            .save_allocation(&AllocationRecord::new(
                "dataplane-0",
                "dataplane",
                BASE,
                self.state.device_node_path("dataplane-0"),
                attach,
            ))
            .expect("grant");
        self
    }

    fn config(&self, extra: Value) -> Config {
        let mut conf = json!({"cniVersion": "1.0.0", "name": "unit", "type": "macvtap"});
        for (k, v) in extra.as_object().expect("object") {
            conf[k] = v.clone();
        }
        let policy = NodePolicy {
            state_dir: self.dir.display().to_string(),
            ..NodePolicy::default()
        };
        Config::parse(conf, &env(), &policy).expect("config")
    }

    fn record(&self) -> Option<AttachmentRecord> {
        self.state
            .load_record("c1", "net1")
            .expect("readable record")
    }
}

impl Drop for TestState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn env() -> Env {
    Env {
        command: "ADD".into(),
        container_id: "c1".into(),
        netns: "/run/netns/unit-pod".into(),
        ifname: "net1".into(),
        args: "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=vm".into(),
        path: "/usr/lib/cni".into(),
        not_utf8: Vec::new(),
    }
}

/// One kind of attachment to run ADD for.
struct Case {
    name: &'static str,
    attach: Option<Attach>,
    ipam: bool,
}

const CASES: [Case; 4] = [
    Case {
        name: "standalone",
        attach: None,
        ipam: false,
    },
    Case {
        name: "standalone with IPAM",
        attach: None,
        ipam: true,
    },
    Case {
        name: "device, attach pod, with IPAM",
        attach: Some(Attach::Pod),
        ipam: true,
    },
    Case {
        name: "device, attach host",
        attach: Some(Attach::Host),
        ipam: false,
    },
];

impl Case {
    fn world(&self, tag: &str) -> (TestState, Config, Fake) {
        let state = TestState::new(tag);
        let (state, extra) = match self.attach {
            None => (state, json!({"master": "up0"})),
            Some(a) => (state.with_device(a), json!({"deviceID": "dataplane-0"})),
        };
        let cfg = state.config(extra);
        let mut fake = Fake::new(self.ipam);
        if self.attach == Some(Attach::Host) {
            fake = fake.with_host_link();
        }
        (state, cfg, fake)
    }
}

/// The undo of each effect, in the order rollback must run them: the
/// reverse of the order they happened.
fn expected_undo(done: &[Effect]) -> Vec<Effect> {
    done.iter().rev().cloned().collect()
}

#[test]
fn every_failure_point_of_add_is_rolled_back_exactly_in_reverse() {
    for case in &CASES {
        let (state, cfg, mut fake) = case.world("count");
        add_with(&cfg, &env(), &state.state, &mut fake)
            .unwrap_or_else(|e| panic!("{}: ADD without failures: {e}", case.name));
        let calls = fake.calls.len();
        println!("{}: {calls} failure points", case.name);
        assert!(state.record().is_some(), "{}: no record", case.name);
        assert!(calls >= 5, "{}: only {calls} calls", case.name);

        for fail_at in 0..calls {
            let (state, cfg, mut fake) = case.world("fail");
            fake.fail_at = Some(fail_at);
            let failing = fake_call_at(case, fail_at);
            let e = add_with(&cfg, &env(), &state.state, &mut fake)
                .expect_err("ADD with a failing call must fail");
            let what = format!("{}: failing call {fail_at} ({failing})", case.name);
            assert!(
                e.msg.contains("injected failure"),
                "{what}: the error is not the injected one: {e}"
            );
            assert_eq!(
                fake.undone,
                expected_undo(&fake.done),
                "{what}: undo order\ncalls: {:#?}",
                fake.calls
            );
            assert!(fake.pod.is_empty(), "{what}: pod links left {:?}", fake.pod);
            if case.attach == Some(Attach::Host) {
                let name = macvtap_state::host_link_name(BASE);
                assert!(
                    fake.host.contains_key(&name),
                    "{what}: the device plugin's link was not given back"
                );
            }
            assert_eq!(fake.node, None, "{what}: device node left");
            assert_eq!(fake.leases, 0, "{what}: IPAM lease left");
            assert!(state.record().is_none(), "{what}: record left");
            assert!(
                state.state.load_claim("dataplane-0").is_none(),
                "{what}: claim left"
            );
            assert!(
                e.details.is_empty(),
                "{what}: a clean rollback reported {e}"
            );
        }
    }
}

/// The name of call `n` in a successful run of `case` (for messages).
fn fake_call_at(case: &Case, n: usize) -> String {
    let (state, cfg, mut fake) = case.world("name");
    let _ = add_with(&cfg, &env(), &state.state, &mut fake);
    fake.calls.get(n).cloned().unwrap_or_default()
}

#[test]
fn rollback_failures_are_reported_in_the_details_never_dropped() {
    // IPAM fails after the link and node exist; then every undo fails too.
    let case = &CASES[2];
    let (state, cfg, mut fake) = case.world("undo-fails");
    let calls = {
        let (state, cfg, mut counting) = case.world("undo-count");
        add_with(&cfg, &env(), &state.state, &mut counting).expect("ADD");
        counting.calls
    };
    let ipam_add = calls
        .iter()
        .position(|c| c == "configure_addresses")
        .expect("the ADD configures addresses");
    fake.fail_at = Some(ipam_add);
    fake.fail_undo = true;
    let e = add_with(&cfg, &env(), &state.state, &mut fake).expect_err("ADD fails");
    for undo in ["ipam DEL", "remove_node", "delete_recorded_link"] {
        assert!(
            e.details.contains(&format!("injected failure of {undo}")),
            "the details do not name the failed {undo:?}: {e}"
        );
    }
    assert!(e.details.starts_with("while rolling back:"), "{e}");
}

#[test]
fn del_goes_on_past_each_failure_reports_it_and_keeps_the_record_for_a_retry() {
    for case in &CASES {
        let (state, cfg, mut fake) = case.world("del");
        add_with(&cfg, &env(), &state.state, &mut fake).expect("ADD");
        let before = fake.calls.len();
        // DEL with the link deletion failing: the node and the lease still go.
        fake.fail_at = Some(before); // the first call of DEL: the link
        let e = del_with(&cfg, &env(), &state.state, &mut fake).expect_err("DEL fails");
        assert!(e.msg.contains("delete_recorded_link"), "{}: {e}", case.name);
        assert_eq!(fake.node, None, "{}: the node was not removed", case.name);
        assert_eq!(fake.leases, 0, "{}: the lease was not released", case.name);
        assert!(state.record().is_some(), "{}: the record went", case.name);
        // A retried DEL finishes the job.
        fake.fail_at = None;
        fake.failed = false;
        del_with(&cfg, &env(), &state.state, &mut fake).expect("retried DEL");
        assert!(fake.pod.is_empty(), "{}: {:?}", case.name, fake.pod);
        assert!(state.record().is_none(), "{}: record left", case.name);
        assert!(state.state.load_claim("dataplane-0").is_none());
        // And once more: nothing left to do is success.
        del_with(&cfg, &env(), &state.state, &mut fake).expect("DEL of nothing");
    }
}
