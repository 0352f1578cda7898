//! Churn: many ADD/DEL cycles (host-local IPAM, MAC from CNI_ARGS, device
//! node, record) end with nothing leaked: no link in the pod or node, no
//! record or device node under the state directory, no IPAM lease, and no
//! address exhausted (host-local's range is smaller than the cycle count,
//! so a leaked lease would make a later ADD fail).
//!
//! `churn_200_cycles` runs in the suite; the long one is ignored and run
//! with `cargo test --release -p macvtap-cni --test churn -- --ignored`.

mod common;

use common::*;

fn churn(test: &str, cycles: usize) {
    let lab = lab(test);
    let mut config = lab.config("1.0.0");
    // 41 addresses (.10 to .50), far fewer than the cycles.
    config["ipam"] = lab.host_local(9);
    for i in 0..cycles {
        let mac = format!("02:00:00:00:{:02x}:{:02x}", i / 256 % 256, i % 256);
        let add = lab
            .plugin("ADD", &config)
            .args(&format!("IgnoreUnknown=1;MAC={mac}"))
            .run();
        let result = add.result();
        assert_eq!(
            result["interfaces"][0]["mac"],
            mac.as_str(),
            "cycle {i}: {result}"
        );
        lab.del(&config).success();
        if i % 50 == 0 || i + 1 == cycles {
            lab.assert_clean(&format!("cycle {i}"));
        }
    }
}

#[test]
fn churn_200_cycles() {
    churn("churn-200", 200);
}

#[test]
#[ignore = "long: 10 000 ADD/DEL cycles, several minutes"]
fn churn_10000_cycles() {
    churn("churn-10000", 10_000);
}
