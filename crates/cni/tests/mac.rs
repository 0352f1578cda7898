//! Where the macvtap's MAC comes from, in which order, and which MACs are
//! refused.

mod common;

use common::*;
use serde_json::{json, Value};

const KEY_MAC: &str = "02:00:00:aa:00:01";
const ARGS_MAC: &str = "02:00:00:bb:00:02";
const RUNTIME_MAC: &str = "02:00:00:cc:00:03";

/// ADDs `config` with `cni_args` and returns the link's MAC after checking
/// the result reports the same one.
fn added_mac(lab: &Lab, config: &Value, cni_args: Option<&str>) -> String {
    let mut plugin = lab.plugin("ADD", config);
    if let Some(args) = cni_args {
        plugin = plugin.args(args);
    }
    let result = plugin.run().result();
    assert_attached(lab, &lab.pod, &result, POD_IFNAME, "bridge").mac
}

fn with_runtime_mac(mut config: Value, mac: &str) -> Value {
    config["capabilities"] = json!({"mac": true});
    config["runtimeConfig"] = json!({"mac": mac});
    config
}

#[test]
fn without_any_mac_the_kernel_picks_a_unicast_one() {
    let lab = lab("mac-random");
    let mac = added_mac(&lab, &lab.config("1.0.0"), None);
    let first = u8::from_str_radix(&mac[..2], 16).expect("hex MAC");
    assert_eq!(first & 1, 0, "random MAC {mac} is multicast");
    assert_ne!(mac, "00:00:00:00:00:00");
}

#[test]
fn mac_key_is_used() {
    let lab = lab("mac-key");
    let mut config = lab.config("1.0.0");
    config["mac"] = json!(KEY_MAC);
    assert_eq!(added_mac(&lab, &config, None), KEY_MAC);
}

#[test]
fn upper_case_mac_is_accepted() {
    let lab = lab("mac-upper");
    let mut config = lab.config("1.0.0");
    config["mac"] = json!(KEY_MAC.to_ascii_uppercase());
    assert_eq!(added_mac(&lab, &config, None), KEY_MAC);
}

#[test]
fn cni_args_mac_beats_the_mac_key() {
    let lab = lab("mac-args");
    let mut config = lab.config("1.0.0");
    config["mac"] = json!(KEY_MAC);
    // As podman and Multus pass it: among other, unknown keys.
    let args = format!("IgnoreUnknown=1;K8S_POD_NAME=vm-a;MAC={ARGS_MAC};K8S_POD_NAMESPACE=ns");
    assert_eq!(added_mac(&lab, &config, Some(&args)), ARGS_MAC);
}

#[test]
fn runtime_config_mac_beats_cni_args_and_the_mac_key() {
    let lab = lab("mac-runtime");
    let mut config = with_runtime_mac(lab.config("1.0.0"), RUNTIME_MAC);
    config["mac"] = json!(KEY_MAC);
    let args = format!("IgnoreUnknown=1;MAC={ARGS_MAC}");
    assert_eq!(added_mac(&lab, &config, Some(&args)), RUNTIME_MAC);
}

#[test]
fn runtime_config_mac_beats_the_mac_key() {
    let lab = lab("mac-runtime-key");
    let mut config = with_runtime_mac(lab.config("1.0.0"), RUNTIME_MAC);
    config["mac"] = json!(KEY_MAC);
    assert_eq!(added_mac(&lab, &config, None), RUNTIME_MAC);
}

/// MACs no interface may have, with why.
const BAD_MACS: [(&str, &str); 8] = [
    ("01:00:5e:00:00:01", "multicast"),
    ("03:00:00:00:00:01", "multicast, locally administered"),
    ("00:00:00:00:00:00", "all zero"),
    ("ff:ff:ff:ff:ff:ff", "broadcast"),
    ("zz:00:00:00:00:01", "not hex"),
    ("02:00:00:00:01", "five octets"),
    ("02:00:00:00:00:01:02", "seven octets"),
    ("02:00:00:00:00:0100", "an octet too long"),
];

#[test]
fn bad_macs_in_the_mac_key_are_refused_with_7() {
    let lab = lab("mac-bad-key");
    let mut failures = Vec::new();
    for (mac, why) in BAD_MACS {
        let mut config = lab.config("1.0.0");
        config["mac"] = json!(mac);
        let plugin = lab.plugin("ADD", &config);
        expect_refused(
            &lab,
            &format!("mac {mac:?} ({why})"),
            &plugin,
            &[7],
            &mut failures,
        );
    }
    assert_no_failures(&failures);
}

#[test]
fn bad_macs_in_cni_args_are_refused_with_4() {
    let lab = lab("mac-bad-args");
    let mut failures = Vec::new();
    for (mac, why) in BAD_MACS {
        let plugin = lab
            .plugin("ADD", &lab.config("1.0.0"))
            .args(&format!("IgnoreUnknown=1;MAC={mac}"));
        expect_refused(
            &lab,
            &format!("CNI_ARGS MAC={mac} ({why})"),
            &plugin,
            &[4],
            &mut failures,
        );
    }
    assert_no_failures(&failures);
}

#[test]
fn bad_macs_in_runtime_config_are_refused_with_7() {
    let lab = lab("mac-bad-runtime");
    let mut failures = Vec::new();
    for (mac, why) in BAD_MACS {
        let config = with_runtime_mac(lab.config("1.0.0"), mac);
        let plugin = lab.plugin("ADD", &config);
        expect_refused(
            &lab,
            &format!("runtimeConfig.mac {mac:?} ({why})"),
            &plugin,
            &[7],
            &mut failures,
        );
    }
    assert_no_failures(&failures);
}
