//! The chained handover against the real kernel: the reference `bridge`
//! (or `ptp`) plugin with `host-local` makes the container's `eth0`, then
//! `macvtap` with `"handover": true` hands its identity over, as a runtime
//! runs a conflist (ADD in order with each result as the next prevResult,
//! DEL in reverse). Every namespace is the test's own (the lab's NODE plays
//! the host, POD is container A); everything goes on drop, also on failure.

#![allow(clippy::unwrap_used)] // tests: a failed step is a failed test

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;
use macvtap_net::MacAddr;
use serde_json::{json, Value};

const NETWORK: &str = "chainnet";
const IFNAME: &str = "eth0";

/// The first plugin of the chain: `bridge` (a bridge `cbr0` in NODE with
/// the gateway address) or `ptp`, with host-local on `10.<net>.0.0/24` and
/// a default route.
fn first_plugin(lab: &Lab, kind: &str, net: u8) -> Value {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": kind,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": format!("10.{net}.0.0/24"), "gateway": format!("10.{net}.0.1")}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": lab.ipam_dir(),
        },
        "dns": {"nameservers": [format!("10.{net}.0.53")], "search": ["corp.example"]},
    });
    if kind == "bridge" {
        conf["bridge"] = "cbr0".into();
        conf["isGateway"] = true.into();
    }
    conf
}

/// Our entry of the conflist.
fn handover_conf(lab: &Lab) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "macvtap",
        "handover": true,
        "stateDir": lab.state_dir(),
    })
}

/// One attachment of the conflist: which container, in which namespace.
struct Attachment<'a> {
    lab: &'a Lab,
    ns: PathBuf,
    container_id: String,
    first: Value,
}

impl Attachment<'_> {
    fn reference(&self, command: &str) -> Plugin {
        let kind = self.first["type"].as_str().unwrap();
        Plugin::new(Path::new(CNI_PLUGINS_DIR).join(kind), self.lab.node.path())
            .command(command)
            .container_id(&self.container_id)
            .netns(&self.ns)
            .ifname(IFNAME)
            .cni_path(&self.lab.cni_path())
            .config(&self.first)
    }

    fn ours(&self, command: &str, conf: &Value) -> Plugin {
        self.lab
            .plugin(command, conf)
            .container_id(&self.container_id)
            .netns(&self.ns)
            .ifname(IFNAME)
    }

    /// ADD of the first plugin: its result.
    fn add_first(&self) -> Value {
        self.reference("ADD").run().result()
    }

    /// ADD of ours with `prev` as prevResult.
    fn add_ours(&self, conf: &Value, prev: &Value) -> PluginOutput {
        let mut conf = conf.clone();
        conf["prevResult"] = prev.clone();
        self.ours("ADD", &conf).run()
    }

    /// DEL of the chain, in reverse: ours, then the first plugin.
    fn del_chain(&self, conf: &Value) {
        self.ours("DEL", conf).run().success();
        self.reference("DEL").run().success();
    }
}

impl Drop for Attachment<'_> {
    /// Best effort, for a test that failed half way: the chain's DEL.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.ours("DEL", &handover_conf(self.lab)).run();
            let _ = self.reference("DEL").run();
        }
    }
}

/// `ip -j addr` of eth0 and every route (both families, main and local
/// tables) and the link names of `ns`, order-free.
/// Wait until IPv6 duplicate address detection is over in `ns`: a
/// tentative address carries a flag, and its local route appears, only
/// when it ends, which would make two snapshots differ by timing alone.
fn settle(ns: &Netns) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ns.ip_json(&["-6", "addr", "show", "tentative"]) != json!([]) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}: IPv6 addresses still tentative after 10 s",
            ns.path().display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn snapshot(ns: &Netns) -> Value {
    let mut addr = ns.ip_json(&["addr", "show", "dev", IFNAME]);
    if let Some(info) = addr[0]["addr_info"].as_array_mut() {
        info.sort_by_key(|v| v.to_string());
    }
    let mut routes = Vec::new();
    for fam in ["-4", "-6"] {
        for table in ["main", "local"] {
            if let Value::Array(r) = ns.ip_json(&[fam, "route", "show", "table", table]) {
                routes.extend(r);
            }
        }
    }
    routes.sort_by_key(|v| v.to_string());
    let mut links: Vec<String> = ns.links().into_iter().map(|l| l.name).collect();
    links.sort();
    json!({"addr": addr, "routes": routes, "links": links})
}

/// Handover records (and anything else) under `<state>/handover`.
fn handover_files(lab: &Lab) -> Vec<String> {
    files_under(&lab.state_dir().join("handover"))
        .into_iter()
        .map(|p| p.display().to_string())
        .collect()
}

/// The container address the first plugin gave (IPv4, without prefix).
fn address_of(result: &Value) -> Ipv4Addr {
    let cidr = result["ips"][0]["address"].as_str().unwrap();
    cidr.split('/').next().unwrap().parse().unwrap()
}

fn quiet_dad(ns: &Netns) {
    // The container's eth0 comes and goes in seconds; DAD only slows it.
    let _ = ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]);
}

/// The attachment `tag` of container namespace `ns` on the lab's node,
/// with `kind` (bridge, ptp) first on `10.<net>.0.0/24`.
fn attachment<'a>(lab: &'a Lab, ns: &Netns, tag: &str, kind: &str, net: u8) -> Attachment<'a> {
    quiet_dad(ns);
    quiet_dad(&lab.node);
    Attachment {
        lab,
        ns: ns.path(),
        container_id: lab.other_container_id(tag),
        first: first_plugin(lab, kind, net),
    }
}

/// After our DEL: no node, no handover file; a second DEL is fine too.
fn assert_undone_and_del_again(a: &Attachment, conf: &Value, node: &Path) {
    assert!(!node.exists(), "{} left", node.display());
    let left = handover_files(a.lab);
    assert!(left.is_empty(), "{left:?}");
    a.ours("DEL", conf).run().success();
}

#[test]
fn bridge_then_handover_gives_the_guest_the_containers_address_and_del_gives_it_back() {
    let lab = lab("hochain");
    let b_ns = lab.netns("b");
    let a = attachment(&lab, &lab.pod, "a", "bridge", 91);
    let b = attachment(&lab, &b_ns, "b", "bridge", 91);
    let conf = handover_conf(&lab);
    let prev = a.add_first();
    let ip_a = address_of(&prev);
    let before = snapshot(&lab.pod);
    assert!(
        lab.pod.addr_cidrs(IFNAME, "inet") == vec![format!("{ip_a}/24")],
        "bridge gave eth0 {:?}",
        lab.pod.addr_cidrs(IFNAME, "inet")
    );

    let t = Instant::now();
    let out = a.add_ours(&conf, &prev);
    let add_took = t.elapsed();
    let result = out.result();

    // The result: the macvtap as a container interface with its MAC, the
    // address pointing at it, routes and DNS as bridge reported them.
    let ifaces = result["interfaces"].as_array().unwrap();
    let prev_ifaces = prev["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), prev_ifaces.len() + 1, "{result}");
    assert_eq!(&ifaces[..prev_ifaces.len()], &prev_ifaces[..]);
    let ours = &ifaces[prev_ifaces.len()];
    let name = ours["name"].as_str().unwrap();
    assert_eq!(ours["sandbox"], sandbox(&lab));
    let link = lab.pod.expect_link(name);
    assert_eq!(link.kind.as_deref(), Some("macvtap"), "{}", link.json);
    assert_eq!(link.mode.as_deref(), Some("bridge"), "{}", link.json);
    assert_eq!(link.link.as_deref(), Some(IFNAME), "{}", link.json);
    assert_eq!(ours["mac"].as_str().unwrap(), link.mac);
    assert!(link.is_up(), "{}", link.json);
    assert_eq!(result["ips"][0]["address"], prev["ips"][0]["address"]);
    assert_eq!(result["ips"][0]["gateway"], prev["ips"][0]["gateway"]);
    assert_eq!(result["ips"][0]["interface"], prev_ifaces.len());
    assert_eq!(result["routes"], prev["routes"]);
    assert_eq!(result["dns"], prev["dns"]);
    assert_eq!(result["dns"]["search"], json!(["corp.example"]));

    // eth0 lost its addresses and routes, stays up as the lower device;
    // nothing in the namespace holds the address now.
    assert!(lab.pod.addr_cidrs(IFNAME, "inet").is_empty());
    assert!(lab.pod.addr_cidrs(name, "inet").is_empty());
    let v4_routes = lab.pod.ip_json(&["-4", "route", "show", "table", "main"]);
    assert_eq!(v4_routes, json!([]), "routes left: {v4_routes}");
    assert!(lab.pod.expect_link(IFNAME).is_up());

    // The tap node as the standalone mode makes it, and the record where a
    // launcher finds it, naming its CNI owner.
    let node = lab.pod_tap_path(&a.container_id, IFNAME);
    lab.assert_device_node(&node, &lab.pod, &link, 107, 107);
    let records = handover_files(&lab);
    assert_eq!(records.len(), 1, "{records:?}");
    let record: Value = serde_json::from_slice(&std::fs::read(&records[0]).unwrap()).unwrap();
    assert_eq!(record["phase"], "applied");
    assert_eq!(
        record["cni"],
        json!({"network": NETWORK, "containerId": a.container_id, "ifname": IFNAME})
    );
    assert_eq!(record["made"]["mac"].as_str().unwrap(), link.mac);
    assert_eq!(record["identity"]["dns"]["search"], json!(["corp.example"]));

    // CHECK with our result passes.
    let mut check = conf.clone();
    check["prevResult"] = result.clone();
    a.ours("CHECK", &check).run().success();
    // ... and notices the container's stack holding the address again.
    let cidr = format!("{ip_a}/24");
    lab.pod
        .ip_ok(&["addr", "add", &cidr, "dev", IFNAME, "noprefixroute"]);
    let differs = a.ours("CHECK", &check).run().error(107);
    assert!(
        differs["msg"].as_str().unwrap().contains(&cidr),
        "{differs}"
    );
    lab.pod.ip_ok(&["addr", "del", &cidr, "dev", IFNAME]);
    a.ours("CHECK", &check).run().success();

    // Container B on the bridge, and the host (NODE, the bridge's gateway
    // address), reach the guest stand-in on the tap at A's address.
    b.add_first();
    let mac = MacAddr::parse_unicast(&link.mac).unwrap();
    let guest = GuestStandIn::open(&node, mac, ip_a, true).unwrap();
    let ping = b_ns.exec(&["ping", "-c", "2", "-W", "2", &ip_a.to_string()]);
    assert!(ping.status.success(), "B cannot reach the guest: {ping:?}");
    let ping = lab
        .node
        .exec(&["ping", "-c", "1", "-W", "2", &ip_a.to_string()]);
    assert!(
        ping.status.success(),
        "the host cannot reach the guest: {ping:?}"
    );
    let seen = guest.seen();
    assert!(seen.echo_requests >= 3 && seen.replies >= 3, "{seen:?}");
    let neigh = b_ns.ip_json(&["neigh", "show", &ip_a.to_string()]);
    assert_eq!(
        neigh[0]["lladdr"].as_str(),
        Some(link.mac.as_str()),
        "B learnt another MAC for A's address: {neigh}"
    );
    drop(guest);

    // A second ADD of the same attachment is refused and changes nothing.
    let during = snapshot(&lab.pod);
    a.add_ours(&conf, &prev).error(109);
    assert_eq!(snapshot(&lab.pod), during);
    assert_eq!(handover_files(&lab), records);

    // DEL gives eth0 exactly its addresses and routes back, removes the
    // macvtap, the node and the record; a second DEL is fine too.
    let t = Instant::now();
    a.ours("DEL", &conf).run().success();
    let del_took = t.elapsed();
    assert_eq!(snapshot(&lab.pod), before);
    assert_undone_and_del_again(&a, &conf, &node);
    a.ours("CHECK", &check).run().error(107);
    eprintln!(
        "measured: chained handover ADD {:.1} ms, DEL {:.1} ms (whole plugin processes)",
        add_took.as_secs_f64() * 1e3,
        del_took.as_secs_f64() * 1e3
    );

    a.reference("DEL").run().success();
    b.del_chain(&conf);
    lab.assert_clean("the chain's DEL");
}

#[test]
fn del_after_the_namespace_is_gone_succeeds_and_forgets_the_record() {
    let lab = lab("hogone");
    // ptp this time: any plugin that returns a container interface will do.
    let mut gone = lab.netns("gone");
    let a = attachment(&lab, &gone, "g", "ptp", 92);
    let conf = handover_conf(&lab);
    let prev = a.add_first();
    let result = a.add_ours(&conf, &prev).result();
    assert_eq!(result["ips"][0]["interface"], 2, "{result}");
    let node = lab.pod_tap_path(&a.container_id, IFNAME);
    assert!(node.exists());
    assert_eq!(handover_files(&lab).len(), 1);
    gone.delete();
    a.ours("DEL", &conf).run().success();
    assert_undone_and_del_again(&a, &conf, &node);
    a.reference("DEL").run().success();
    lab.assert_clean("DEL after the namespace was removed");
}

#[test]
fn bad_chains_are_refused_clearly_and_change_nothing() {
    let lab = lab("hobad");
    // Another namespace with an eth0 that has IPv4, the way the tenant would
    // want one to be taken over: were the sandbox check missing, it would be.
    let other = lab.netns("other");
    other.ip_cmd(&format!("link add {IFNAME} type veth peer name peer0"));
    other.ip_cmd(&format!("addr add 10.250.0.2/24 dev {IFNAME}"));
    other.ip_cmd(&format!("link set {IFNAME} up"));
    let a = attachment(&lab, &lab.pod, "a", "bridge", 93);
    let conf = handover_conf(&lab);
    let prev = a.add_first();
    for ns in [&lab.pod, &other, &lab.node] {
        settle(ns);
    }
    let before = snapshot(&lab.pod);
    let other_before = snapshot(&other);
    let node_view = || {
        let mut links: Vec<String> = lab.node.links().into_iter().map(|l| l.name).collect();
        links.sort();
        json!({"addr": lab.node.ip_json(&["addr"]), "links": links})
    };
    let node_before = node_view();
    let fifo = lab.dir.path().join("sandbox.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let with = |key: &str, value: Value| {
        let mut c = conf.clone();
        c[key] = value;
        c
    };
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut p = prev.clone();
        f(&mut p);
        p
    };
    let cases: Vec<(&str, Value, Option<Value>, i64)> = vec![
        ("no prevResult", conf.clone(), None, 7),
        (
            "no container interface",
            conf.clone(),
            Some(edit(&|p| {
                for i in p["interfaces"].as_array_mut().unwrap() {
                    i.as_object_mut().unwrap().remove("sandbox");
                }
            })),
            7,
        ),
        (
            "handoverInterface not in prevResult",
            with("handoverInterface", "eth9".into()),
            Some(prev.clone()),
            7,
        ),
        (
            "an interface that is not in the container",
            conf.clone(),
            Some(edit(&|p| p["interfaces"][2]["name"] = "eth7".into())),
            108,
        ),
        (
            "a sandbox that is another namespace",
            conf.clone(),
            Some(edit(&|p| {
                p["interfaces"][2]["sandbox"] = other.path().to_string_lossy().into()
            })),
            108,
        ),
        (
            "a sandbox that is the node's (the plugin's own) namespace",
            conf.clone(),
            Some(edit(&|p| {
                p["interfaces"][2]["sandbox"] = lab.node.path().to_string_lossy().into()
            })),
            108,
        ),
        (
            "a sandbox that is a FIFO (never opened)",
            conf.clone(),
            Some(edit(&|p| {
                p["interfaces"][2]["sandbox"] = fifo.to_string_lossy().into()
            })),
            108,
        ),
        (
            "a MAC that is not the interface's",
            conf.clone(),
            Some(edit(&|p| {
                p["interfaces"][2]["mac"] = "02:00:00:00:00:99".into()
            })),
            108,
        ),
        (
            "no IPv4",
            conf.clone(),
            Some(edit(&|p| {
                p.as_object_mut().unwrap().remove("ips");
            })),
            108,
        ),
        (
            "handover with master",
            with("master", "up0".into()),
            Some(prev.clone()),
            7,
        ),
        (
            "handover with deviceID",
            with("deviceID", "dataplane-0".into()),
            Some(prev.clone()),
            7,
        ),
        (
            "handover with ipam",
            with("ipam", lab.host_local(94)),
            Some(prev.clone()),
            7,
        ),
        (
            "a multicast guest MAC",
            with("mac", "01:00:5e:00:00:01".into()),
            Some(prev.clone()),
            7,
        ),
    ];
    let mut failures = Vec::new();
    for (label, conf, prev, want) in cases {
        let out = a.add_ours(&conf, &prev.unwrap_or(Value::Null)).clone();
        // A null prevResult is no prevResult.
        match out.error_code() {
            Ok(code) if code == want => {
                eprintln!(
                    "{label}: code {code}: {}",
                    out.json.as_ref().unwrap()["msg"]
                );
            }
            Ok(code) => failures.push(format!("{label}: expected {want}, got {code}\n{out}")),
            Err(e) => failures.push(format!("{label}: {e}")),
        }
        assert_eq!(snapshot(&lab.pod), before, "{label} changed the container");
        assert_eq!(
            snapshot(&other),
            other_before,
            "{label} changed another namespace"
        );
        assert_eq!(node_view(), node_before, "{label} changed the node");
        assert!(
            handover_files(&lab).is_empty(),
            "{label}: {:?}",
            handover_files(&lab)
        );
        assert!(
            !lab.pod_tap_path(&a.container_id, IFNAME).exists(),
            "{label} made a node"
        );
    }
    assert_no_failures(&failures);
    // prevResult says IPv4, the kernel says none: the core refuses.
    lab.pod.ip_ok(&["-4", "addr", "flush", "dev", IFNAME]);
    let flushed = snapshot(&lab.pod);
    a.add_ours(&conf, &prev).error(108);
    assert_eq!(snapshot(&lab.pod), flushed);
    assert!(handover_files(&lab).is_empty());
    // DEL of an attachment that never was: fine.
    a.del_chain(&conf);
    lab.assert_clean("bad chains");
}

#[test]
fn gc_tears_down_a_handover_that_is_no_longer_valid() {
    let lab = lab("hogc");
    let a = attachment(&lab, &lab.pod, "a", "bridge", 95);
    let conf = handover_conf(&lab);
    let prev = a.add_first();
    let before = snapshot(&lab.pod);
    a.add_ours(&conf, &prev).result();
    let node = lab.pod_tap_path(&a.container_id, IFNAME);
    let mut gc = conf.clone();
    gc["cniVersion"] = "1.1.0".into();
    // Still valid: kept.
    gc["cni.dev/valid-attachments"] = json!([{"containerID": a.container_id, "ifname": IFNAME}]);
    a.ours("GC", &gc).run().success();
    assert!(node.exists());
    assert_eq!(handover_files(&lab).len(), 1);
    // Another network's GC does not touch it.
    let mut other = gc.clone();
    other["name"] = "othernet".into();
    other["cni.dev/valid-attachments"] = json!([]);
    a.ours("GC", &other).run().success();
    assert_eq!(handover_files(&lab).len(), 1);
    // Not valid any more: undone as DEL would.
    gc["cni.dev/valid-attachments"] = json!([]);
    a.ours("GC", &gc).run().success();
    assert_eq!(snapshot(&lab.pod), before);
    assert_undone_and_del_again(&a, &conf, &node);
    a.reference("DEL").run().success();
    lab.assert_clean("GC");
}

/// The plugin's ADD killed after each step of the core's apply (the
/// core's test hook stops there as if killed, record kept): the runtime's
/// DEL restores the container, and so does a retried ADD before it hands
/// over again.
#[test]
fn an_add_interrupted_at_each_step_is_undone_by_del_or_by_a_retried_add() {
    use macvtap_handover::{apply, ApplyOptions, ApplyStep, CniOwner, Error, Store};
    let lab = lab("hokill");
    let a = attachment(&lab, &lab.pod, "a", "bridge", 96);
    let conf = handover_conf(&lab);
    let prev = a.add_first();
    let before = snapshot(&lab.pod);
    let store = Store::open(lab.state_dir().to_str().unwrap()).unwrap();
    let ns = macvtap_net::NetNs::open(lab.pod.path()).unwrap();
    let interrupted = |step: ApplyStep| {
        let mut opts = ApplyOptions::new(IFNAME);
        opts.cni = Some(CniOwner {
            network: NETWORK.into(),
            container_id: a.container_id.clone(),
            ifname: IFNAME.into(),
        });
        opts.stop_after = Some(step);
        let stopped = apply(&store, &ns, &opts);
        assert!(matches!(stopped, Err(Error::StoppedByHook(s)) if s == step));
        assert_eq!(handover_files(&lab).len(), 1);
    };
    for step in ApplyStep::ALL {
        interrupted(step);
        a.ours("DEL", &conf).run().success();
        assert_eq!(snapshot(&lab.pod), before, "DEL after {step:?}");
        assert!(handover_files(&lab).is_empty(), "DEL after {step:?}");

        interrupted(step);
        let result = a.add_ours(&conf, &prev).result();
        let mv = result["interfaces"][3]["name"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(lab.pod.expect_link(&mv).kind.as_deref(), Some("macvtap"));
        assert!(lab.pod.addr_cidrs(IFNAME, "inet").is_empty());
        assert_eq!(handover_files(&lab).len(), 1, "retry after {step:?}");
        a.ours("DEL", &conf).run().success();
        assert_eq!(snapshot(&lab.pod), before, "retry after {step:?}, DEL");
    }
    a.reference("DEL").run().success();
    lab.assert_clean("interrupted ADDs");
}
