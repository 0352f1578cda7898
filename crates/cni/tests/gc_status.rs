//! GC and STATUS (spec 1.1.0).

mod common;

use common::*;
use serde_json::json;

#[test]
fn gc_removes_only_attachments_that_are_not_valid() {
    let lab = lab("gc");
    let pod2 = lab.netns("pod2");
    let cid2 = lab.other_container_id("stale");
    let config = lab.config("1.1.0");
    let kept = lab.add(&config).result();
    lab.plugin("ADD", &config)
        .container_id(&cid2)
        .netns(pod2.path())
        .run()
        .result();

    let mut gc = config.clone();
    gc["cni.dev/valid-attachments"] =
        json!([{"containerID": lab.container_id, "ifname": POD_IFNAME}]);
    lab.plugin("GC", &gc)
        .unset("CNI_CONTAINERID")
        .unset("CNI_NETNS")
        .unset("CNI_IFNAME")
        .run()
        .success();

    assert!(
        pod2.macvtaps().is_empty(),
        "GC left the stale attachment's link"
    );
    let stale = files_under(&lab.state_dir().join("pods").join(&cid2));
    assert!(
        stale.is_empty(),
        "GC left the stale attachment's files: {stale:?}"
    );
    // The valid one is intact.
    let link = assert_attached(&lab, &lab.pod, &kept, POD_IFNAME, "bridge");
    let tap = lab.pod_tap_path(&lab.container_id, POD_IFNAME);
    lab.assert_device_node(&tap, &lab.pod, &link, 107, 107);
    lab.check(&config, &kept).success();
}

#[test]
fn status_succeeds_with_a_usable_state_dir() {
    let lab = lab("status-ok");
    lab.plugin("STATUS", &lab.config("1.1.0"))
        .unset("CNI_CONTAINERID")
        .unset("CNI_NETNS")
        .unset("CNI_IFNAME")
        .run()
        .success();
}

#[test]
fn status_fails_when_the_state_dir_is_not_usable() {
    let lab = lab("status-bad");
    let file = lab.dir.path().join("state-file");
    std::fs::write(&file, "").expect("write file");
    let mut config = lab.config("1.1.0");
    config["stateDir"] = json!(file);
    lab.plugin("STATUS", &config)
        .unset("CNI_CONTAINERID")
        .unset("CNI_NETNS")
        .unset("CNI_IFNAME")
        .run()
        .any_error();
}

#[test]
fn gc_calls_ipam_del_for_the_stale_attachment_only() {
    // Debian's host-local stops at spec 1.0.0 and GC is 1.1.0, so a
    // stand-in IPAM plugin records the calls.
    let lab = lab("gc-ipam");
    let pod2 = lab.netns("pod2");
    let cid2 = lab.other_container_id("stale");
    let answer = json!({
        "cniVersion": "1.1.0",
        "ips": [{"address": "10.200.1.40/24", "gateway": "10.200.1.1"}],
    });
    let mut config = lab.config("1.1.0");
    config["ipam"] = lab.fake_ipam("gc-ipam", &answer, 0);
    lab.add(&config).result();
    // A second pod may get the same stand-in address: it is a different netns.
    lab.plugin("ADD", &config)
        .container_id(&cid2)
        .netns(pod2.path())
        .run()
        .result();

    let mut gc = config.clone();
    gc["cni.dev/valid-attachments"] =
        json!([{"containerID": lab.container_id, "ifname": POD_IFNAME}]);
    lab.plugin("GC", &gc)
        .unset("CNI_CONTAINERID")
        .unset("CNI_NETNS")
        .unset("CNI_IFNAME")
        .run()
        .success();
    let dels: Vec<String> = lab
        .fake_ipam_calls("gc-ipam")
        .into_iter()
        .filter(|c| c.starts_with("DEL"))
        .collect();
    assert_eq!(dels, vec![format!("DEL {cid2} {POD_IFNAME}")]);
    assert!(pod2.macvtaps().is_empty());
    assert!(
        lab.pod.link(POD_IFNAME).is_some(),
        "GC removed the valid link"
    );
}

#[test]
fn gc_of_another_network_keeps_this_networks_attachments() {
    let lab = lab("gc-other-net");
    let config = lab.config("1.1.0");
    let kept = lab.add(&config).result();
    let mut gc = config.clone();
    gc["name"] = json!("othernet");
    gc["cni.dev/valid-attachments"] = json!([]);
    lab.plugin("GC", &gc)
        .unset("CNI_CONTAINERID")
        .unset("CNI_NETNS")
        .unset("CNI_IFNAME")
        .run()
        .success();
    assert_attached(&lab, &lab.pod, &kept, POD_IFNAME, "bridge");
    lab.check(&config, &kept).success();
}

/// GC without `cni.dev/valid-attachments` (or with null) must not read as
/// "nothing is valid": it is refused and every attachment stays.
#[test]
fn gc_without_the_valid_list_is_refused_and_removes_nothing() {
    let lab = lab("gc-no-list");
    let config = lab.config("1.1.0");
    let kept = lab.add(&config).result();
    for list in [None, Some(serde_json::Value::Null)] {
        let mut gc = config.clone();
        if let Some(v) = list {
            gc["cni.dev/valid-attachments"] = v;
        }
        let out = lab
            .plugin("GC", &gc)
            .unset("CNI_CONTAINERID")
            .unset("CNI_NETNS")
            .unset("CNI_IFNAME")
            .run();
        out.error(7);
        assert_attached(&lab, &lab.pod, &kept, POD_IFNAME, "bridge");
    }
    lab.check(&config, &kept).success();
}
