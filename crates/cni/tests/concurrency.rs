//! Many pods at once on one node (one stateDir), as a runtime starting a
//! batch of VMs does.

mod common;

use std::thread;

use common::*;

const PODS: usize = 6;

#[test]
fn parallel_adds_and_dels_on_one_state_dir_all_succeed() {
    let lab = lab("parallel");
    let mut config = lab.config("1.0.0");
    config["ipam"] = lab.host_local(1);
    let pods: Vec<(Netns, String)> = (0..PODS)
        .map(|i| {
            (
                lab.netns(&format!("p{i}")),
                lab.other_container_id(&format!("c{i}")),
            )
        })
        .collect();
    let run_all = |command: &str| -> Vec<PluginOutput> {
        thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .map(|(ns, cid)| {
                    let plugin = lab
                        .plugin(command, &config)
                        .container_id(cid)
                        .netns(ns.path());
                    s.spawn(move || plugin.run())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("runner thread"))
                .collect()
        })
    };

    let results = run_all("ADD");
    let mut devs = Vec::new();
    let mut addrs = Vec::new();
    for ((ns, cid), out) in pods.iter().zip(&results) {
        let result = out.result();
        let link = assert_attached(&lab, ns, &result, POD_IFNAME, "bridge");
        lab.assert_device_node(&lab.pod_tap_path(cid, POD_IFNAME), ns, &link, 107, 107);
        devs.push(ns.tap_dev(&link));
        addrs.push(result["ips"][0]["address"].clone());
    }
    devs.sort();
    devs.dedup();
    assert_eq!(devs.len(), PODS, "device numbers are not distinct");
    addrs.sort_by_key(|a| a.to_string());
    addrs.dedup();
    assert_eq!(addrs.len(), PODS, "addresses are not distinct");
    assert_eq!(leases_in(&lab.ipam_dir()).len(), PODS);

    for out in run_all("DEL") {
        out.success();
    }
    for (ns, _) in &pods {
        assert!(
            ns.macvtaps().is_empty(),
            "DEL left a macvtap in {}",
            ns.name()
        );
    }
    lab.assert_clean("parallel DELs");
}
