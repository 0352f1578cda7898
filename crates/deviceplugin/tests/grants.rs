//! Grants bound to pods: Allocate's grant learns its pod from the kubelet's
//! PodResources API, after which only that pod's CNI ADD may use the
//! device; and a node that lost its grants (the kubelet re-creates pods
//! with checkpointed devices without calling Allocate again) re-derives
//! them, bound, at start-up.

mod common;

use std::fs;

use common::*;
use serde_json::Value;

const RESOURCE: &str = "dataplane";
/// The pod the PodResources stand-in names for the first held resource.
const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=virt-launcher-vm0";
const OTHER_POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=tenant-b;K8S_POD_NAME=sniffer";

fn grant(world: &World, id: &str) -> Value {
    let path = world.allocation_record(id);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// CNI ADD of `id` as `net1` with `args`.
fn add_as(world: &World, id: &str, args: &str) -> macvtap_testkit::PluginOutput {
    call_as(world, "ADD", id, args)
}

/// CNI `command` of `id` as `net1` with `args`.
fn call_as(world: &World, command: &str, id: &str, args: &str) -> macvtap_testkit::PluginOutput {
    world
        .lab
        .plugin(command, &world.cni_config(id))
        .args(args)
        .run()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_is_bound_to_the_pod_the_kubelet_lists_and_only_that_pod_may_attach_it() {
    let id = format!("{RESOURCE}-1");
    let world = World::new("dp-grant-bind");
    let dp = world.start(&conf1(RESOURCE, 4, "pod"), 1).await;
    // The kubelet records the pod's devices as Allocate returns; its
    // PodResources API then lists them.
    world
        .podres
        .set_held(&[(&resource_name(RESOURCE), &[id.as_str()])]);
    let mut client = world.client(RESOURCE).await;
    client
        .allocate(allocate_request(&[&[id.as_str()]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate: {e}\n{}", dp.logs()));
    wait_until(
        "the grant names its pod",
        SLOW,
        || grant(&world, &id)["pod"]["name"] == "virt-launcher-vm0",
        || format!("{}\n{}", grant(&world, &id), dp.logs()),
    )
    .await;
    let bound = grant(&world, &id);
    assert_eq!(bound["pod"]["namespace"], "default", "{bound}");

    // Another pod's configuration naming the device: refused, nothing made.
    let refused = add_as(&world, &id, OTHER_POD_ARGS);
    let e = refused.error(102);
    let msg = e["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("default/virt-launcher-vm0") && msg.contains("tenant-b/sniffer"),
        "the refusal names both pods: {e}"
    );
    assert!(world.lab.pod.macvtaps().is_empty(), "a link was made");
    assert!(!world.dev_node(&id).exists(), "a node was made");
    // A runtime that names no pod is refused too once the grant is bound.
    add_as(&world, &id, "IgnoreUnknown=1").error(102);

    // The pod itself attaches it.
    add_as(&world, &id, POD_ARGS).result();
    assert_eq!(world.lab.pod.macvtaps().len(), 1);
    call_as(&world, "DEL", &id, POD_ARGS).success();
    assert!(world.lab.pod.macvtaps().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_grants_re_derives_them_bound_from_the_kubelet_at_start() {
    let id = format!("{RESOURCE}-2");
    let free = format!("{RESOURCE}-3");
    let world = World::new("dp-grant-reboot");
    let conf = conf1(RESOURCE, 4, "pod");
    let mut dp = world.start(&conf, 1).await;
    let mut client = world.client(RESOURCE).await;
    client
        .allocate(allocate_request(&[&[id.as_str()]]))
        .await
        .unwrap_or_else(|e| panic!("Allocate: {e}\n{}", dp.logs()));
    assert!(world.allocation_record(&id).exists());

    // "Reboot": the daemon goes, the node's grants are lost; the kubelet
    // keeps its checkpoint and lists the pod with the device.
    dp.signal(libc::SIGTERM);
    dp.wait_exit(SLOW).await.expect("SIGTERM ends it");
    fs::remove_dir_all(world.state_dir().join("allocations")).expect("remove allocations/");
    add_as(&world, &id, POD_ARGS).error(102); // no grant: nothing to go on
    world
        .podres
        .set_held(&[(&resource_name(RESOURCE), &[id.as_str()])]);
    let regs = world.kubelet.registrations().len();
    let dp = world.spawn(&conf);
    world.kubelet.wait_registrations(regs + 1, SLOW).await;

    // Re-derived before the daemon registered, bound to the listed pod; the
    // kubelet does not call Allocate again, and the pod's ADD works.
    let derived = grant(&world, &id);
    assert_eq!(derived["pod"]["name"], "virt-launcher-vm0", "{derived}");
    assert!(
        !world.allocation_record(&free).exists(),
        "a grant was made for a device no pod holds"
    );
    add_as(&world, &id, OTHER_POD_ARGS).error(102);
    add_as(&world, &id, POD_ARGS).result();
    call_as(&world, "DEL", &id, POD_ARGS).success();
    drop(dp);
}
