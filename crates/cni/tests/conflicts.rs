//! ADD when CNI_IFNAME is already taken in the pod: code 101, and the
//! existing link is left exactly as it was (also by the runtime's DEL that
//! follows a failed ADD).

mod common;

use common::*;
use serde_json::json;

/// What must not change about a link someone else owns.
fn fingerprint(ns: &Netns, name: &str) -> (u64, Option<String>, String, u64, bool, Vec<String>) {
    let l = ns.expect_link(name);
    let addrs = ns.addr_cidrs(name, "inet");
    let up = l.is_up();
    (l.ifindex, l.kind, l.mac, l.mtu, up, addrs)
}

fn assert_add_refused_and_link_untouched(lab: &Lab) {
    let before = fingerprint(&lab.pod, POD_IFNAME);
    let mut config = lab.config("1.0.0");
    // Settings that would change the link if the plugin touched it.
    config["mtu"] = json!(1280);
    config["mac"] = json!("02:00:00:00:dd:01");
    config["ipam"] = lab.host_local(1);
    lab.add(&config).error(101);
    assert_eq!(
        fingerprint(&lab.pod, POD_IFNAME),
        before,
        "ADD touched the existing link"
    );
    assert!(
        lab.pod.macvtaps().iter().all(|l| l.name == POD_IFNAME),
        "ADD left a macvtap under another name"
    );
    let files = files_under(&lab.state_dir().join("pods"));
    assert!(files.is_empty(), "ADD left files: {files:?}");
    assert!(
        leases_in(&lab.ipam_dir()).is_empty(),
        "ADD left an IPAM lease"
    );
    assert!(lab.node.macvtaps().is_empty(), "ADD left a macvtap in NODE");

    // Runtimes call DEL after a failed ADD: it must not delete the link.
    lab.del(&config).success();
    assert_eq!(
        fingerprint(&lab.pod, POD_IFNAME),
        before,
        "DEL touched the existing link"
    );
}

#[test]
fn existing_veth_with_the_ifname_is_refused_with_101() {
    let lab = lab("exists-veth");
    lab.pod
        .ip_cmd(&format!("link add {POD_IFNAME} type veth peer name peer1"));
    lab.pod
        .ip_ok(&["addr", "add", "10.200.5.5/24", "dev", POD_IFNAME]);
    lab.pod.ip_ok(&["link", "set", POD_IFNAME, "up"]);
    assert_add_refused_and_link_untouched(&lab);
}

#[test]
fn existing_foreign_macvtap_with_the_ifname_is_refused_with_101() {
    let lab = lab("exists-macvtap");
    lab.node.ip_cmd(&format!(
        "link add link {LOWER} name {POD_IFNAME} netns {} type macvtap mode vepa",
        lab.pod.name()
    ));
    assert_add_refused_and_link_untouched(&lab);
}
