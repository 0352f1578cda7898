//! Shared by every integration test file: the binary under test and small
//! assertions on CNI results.
#![allow(dead_code)] // each test file uses a different subset

pub use macvtap_testkit::*;
use serde_json::Value;

/// The plugin under test, built by Cargo for these tests.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_macvtap");

/// A fresh lab for the named test.
pub fn lab(test: &str) -> Lab {
    Lab::new(test, PLUGIN)
}

/// The result's interface entry for the pod's CNI_IFNAME, checked to be
/// there exactly once with the lab's sandbox path; returns its index.
pub fn pod_interface(result: &Value, ifname: &str, sandbox: &str) -> usize {
    let ifaces = result["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("result has no interfaces array: {result}"));
    let matching: Vec<usize> = ifaces
        .iter()
        .enumerate()
        .filter(|(_, i)| i["name"] == ifname)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "result must list interface {ifname} exactly once: {result}"
    );
    let idx = matching[0];
    assert_eq!(
        ifaces[idx]["sandbox"], sandbox,
        "interface {ifname} has the wrong sandbox: {result}"
    );
    idx
}

/// The MAC the result reports for `ifname`, lower-case.
pub fn result_mac(result: &Value, ifname: &str, sandbox: &str) -> String {
    let idx = pod_interface(result, ifname, sandbox);
    result["interfaces"][idx]["mac"]
        .as_str()
        .unwrap_or_else(|| panic!("interface {ifname} has no mac: {result}"))
        .to_ascii_lowercase()
}

/// The lab's pod path as the result's `sandbox` must spell it.
pub fn sandbox(lab: &Lab) -> String {
    lab.pod.path().to_string_lossy().into_owned()
}

/// Asserts a successful ADD made a macvtap `ifname` in `ns`, on up0, in
/// `mode`, up, with the result's MAC, and no macvtap in NODE. Returns it.
pub fn assert_attached(lab: &Lab, ns: &Netns, result: &Value, ifname: &str, mode: &str) -> Link {
    let link = ns.expect_link(ifname);
    assert_eq!(link.kind.as_deref(), Some("macvtap"), "{}", link.json);
    assert_eq!(link.mode.as_deref(), Some(mode), "{}", link.json);
    assert!(link.is_up(), "{ifname} is not up: {}", link.json);
    lab.assert_lower_is_up0(ns, &link);
    let sandbox = ns.path().to_string_lossy().into_owned();
    assert_eq!(
        result_mac(result, ifname, &sandbox),
        link.mac,
        "result MAC differs from the link's"
    );
    let in_node: Vec<String> = lab.node.macvtaps().into_iter().map(|l| l.name).collect();
    assert!(in_node.is_empty(), "macvtaps appeared in NODE: {in_node:?}");
    link
}

/// Runs `plugin`, which must be refused with a code in `codes` and leave
/// nothing behind in `lab`. Problems are appended to `failures` (so a table
/// reports every bad row at once); leftovers panic at once because they
/// would spoil the following rows.
pub fn expect_refused(
    lab: &Lab,
    label: &str,
    plugin: &Plugin,
    codes: &[i64],
    failures: &mut Vec<String>,
) {
    let out = plugin.run();
    match out.error_code() {
        Ok(code) if codes.contains(&code) => {}
        Ok(code) => failures.push(format!(
            "{label}: expected code {codes:?}, got {code}\n{out}"
        )),
        Err(e) => failures.push(format!("{label}: {e}")),
    }
    let left = lab.leftovers();
    assert!(left.is_empty(), "{label}: left behind {left:#?}\n{out}");
}

/// Panics listing every collected failure.
pub fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
