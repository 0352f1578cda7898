//! A Multus-style delegation: the NetworkAttachmentDefinition config from
//! the seeds, `{"cniVersion":"0.3.1","name":"dataplane","type":"macvtap",
//! "mtu":1500}`, with the `deviceID` Multus injects (allocated by the real
//! device plugin through the kubelet stand-in) and CNI_ARGS exactly as
//! Multus builds them, attaches the promised device (0.3.1 result shape,
//! MAC, MTU, ifindex, device node), and DEL with the same input removes it.

mod support;

use macvtap_testkit::device_plugin as common;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};
use support::*;

const RESOURCE: &str = "dataplane";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multus_delegation_of_the_seed_nad_attaches_the_allocated_device_and_del_removes_it() {
    require_tools(&["nsenter", "ip", "/usr/lib/cni/host-local"]);
    let bins = binaries();
    let world = common::World::new("e2e-multus");
    assert_eq!(
        common::cni_binary(),
        bins.cni,
        "the world runs another plugin binary"
    );
    let lab = &world.lab;
    let mut dp = world.start(&common::conf1(RESOURCE, 8, "pod"), 1).await;
    let base = world.ifindex_base(RESOURCE);

    // Kubelet admission picks a device and calls Allocate.
    let device_id = format!("{RESOURCE}-5");
    let mut client = world.client(RESOURCE).await;
    let resp = client
        .allocate(common::allocate_request(&[&[device_id.as_str()]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate failed: {e}\n{}", dp.logs()))
        .into_inner();
    let spec = resp.container_responses[0].devices[0].clone();
    let ifindex = base + 5;
    assert_eq!(
        spec.container_path,
        format!("/dev/tap{ifindex}"),
        "{resp:?}"
    );

    // Multus: the NAD's config, plus the deviceID of the pod's resource.
    // The stateDir is the test's own (the NAD's default, /var/lib/macvtap,
    // is the real node's and must not be touched by a test).
    let nad = json!({"cniVersion": "0.3.1", "name": "dataplane", "type": "macvtap", "mtu": 1500});
    let mut delegate = nad.clone();
    delegate["deviceID"] = json!(device_id);
    delegate["stateDir"] = json!(world.state_dir());
    let mac = "02:00:0a:ca:03:05";
    let sandbox = &lab.container_id;
    let cni_args = format!(
        "IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME=vm-dataplane;\
         K8S_POD_INFRA_CONTAINER_ID={sandbox};MAC={mac}"
    );
    let ifname = "net1";

    let out = lab
        .plugin("ADD", &delegate)
        .ifname(ifname)
        .args(&cni_args)
        .run();
    let result = out.result();
    measured("plugin ADD via Multus-style delegation", out.elapsed);

    // The 0.3.1 result shape: only the keys 0.3.1 defines, the interface
    // with name, mac and sandbox (no 1.x fields), no IPs without IPAM.
    assert_eq!(result["cniVersion"], "0.3.1", "{result}");
    let allowed: BTreeSet<&str> = ["cniVersion", "interfaces", "ips", "routes", "dns"].into();
    for k in result.as_object().expect("an object").keys() {
        assert!(
            allowed.contains(k.as_str()),
            "{k:?} is not a 0.3.1 result key: {result}"
        );
    }
    let ifaces = result["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifaces.len(), 1, "{result}");
    let iface = &ifaces[0];
    assert_eq!(iface["name"], ifname, "{result}");
    assert_eq!(iface["mac"], mac, "{result}");
    assert_eq!(
        iface["sandbox"].as_str().map(Path::new),
        Some(lab.pod.path().as_path()),
        "{result}"
    );
    for k in iface.as_object().expect("an object").keys() {
        assert!(
            ["name", "mac", "sandbox"].contains(&k.as_str()),
            "{k:?} is not a 0.3.1 interface key: {result}"
        );
    }
    let no_ips = result
        .get("ips")
        .is_none_or(|v| v.as_array().is_some_and(Vec::is_empty));
    assert!(no_ips, "IPs without IPAM: {result}");

    // The kernel's view: the promised ifindex, MAC, MTU, on NODE's up0.
    let link = lab.pod.expect_link(ifname);
    assert_eq!(link.kind.as_deref(), Some("macvtap"), "{}", link.json);
    assert_eq!(link.ifindex, ifindex, "not the ifindex Allocate promised");
    assert_eq!(link.mac, mac);
    assert_eq!(link.mtu, 1500);
    assert!(link.is_up(), "{}", link.json);
    lab.assert_lower_is_up0(&lab.pod, &link);
    lab.assert_device_node(
        Path::new(&spec.host_path),
        &lab.pod,
        &link,
        QEMU_ID,
        QEMU_ID,
    );

    // Multus's DEL: the same delegate and CNI_ARGS.
    let del = lab
        .plugin("DEL", &delegate)
        .ifname(ifname)
        .args(&cni_args)
        .run();
    assert_eq!(del.success(), Value::Null, "DEL prints nothing");
    measured("plugin DEL via Multus-style delegation", del.elapsed);
    assert!(lab.pod.link(ifname).is_none(), "{ifname} survived DEL");
    assert!(
        !Path::new(&spec.host_path).exists(),
        "{} survived DEL",
        spec.host_path
    );
    lab.assert_clean("DEL");
    // Multus retries DEL; a second one is fine and changes nothing.
    lab.plugin("DEL", &delegate)
        .ifname(ifname)
        .args(&cni_args)
        .run()
        .success();
    lab.assert_clean("a second DEL");
    dp.assert_running("after ADD and DEL");
}
