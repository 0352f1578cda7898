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
