//! create, list, show and delete in every mode, checked against what the
//! kernel reports (`ip -d -j`), in private namespaces.

mod common;

use common::{run_in, unique_ifindex, veth_pair};
use macvtap_testkit::{unique_name, Netns};
use serde_json::Value;

const MODES: [&str; 5] = ["bridge", "vepa", "private", "passthru", "source"];

fn mac_for(i: usize) -> String {
    format!("02:00:0a:c9:01:{:02x}", i + 1)
}

#[test]
fn create_list_show_delete_in_every_mode() {
    let ns = Netns::new(&unique_name("ctl-modes"));
    let mut made = Vec::new();
    for (i, mode) in MODES.iter().enumerate() {
        // passthru wants a lower device of its own; give every mode one.
        let lower = format!("low{i}");
        veth_pair(&ns, &lower, &format!("peer{i}"));
        let name = format!("mv-{mode}");
        let mac = mac_for(i);
        let mut args = vec![
            "create", "--lower", &lower, "--name", &name, "--mode", mode, "--mac", &mac, "--mtu",
            "1400", "--json",
        ];
        let (s1, s2) = ("02:00:0a:c9:02:01", "02:00:0a:c9:02:02");
        if *mode == "source" {
            args.extend(["--source-mac", s1, "--source-mac", s2]);
        }
        let created = run_in(&ns, &args).json();

        let kernel = ns.expect_link(&name);
        assert_eq!(kernel.kind.as_deref(), Some("macvtap"));
        assert_eq!(kernel.mode.as_deref(), Some(*mode));
        assert_eq!(kernel.json["address"], mac.as_str());
        assert_eq!(kernel.json["mtu"], 1400);
        assert_eq!(kernel.link.as_deref(), Some(lower.as_str()));
        if *mode == "source" {
            let mut allowed = kernel.source_macs.clone();
            allowed.sort();
            assert_eq!(allowed, [s1, s2]);
        }
        assert_eq!(created["name"], name.as_str());
        assert_eq!(created["mode"], *mode);
        assert_eq!(created["mac"], mac.as_str());
        assert_eq!(created["ifindex"], kernel.ifindex);
        assert_eq!(created["lower"], lower.as_str());
        assert_eq!(created["state"], "up");
        made.push((name, kernel, mode));
    }

    let listed = run_in(&ns, &["list", "--json"]).json();
    let listed = listed.as_array().expect("list --json is an array");
    assert_eq!(listed.len(), MODES.len(), "{listed:#?}");
    let text = run_in(&ns, &["list"]).ok().to_string();
    for (name, kernel, mode) in &made {
        let entry = listed
            .iter()
            .find(|e| e["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} not listed"));
        assert_eq!(entry["mode"], **mode);
        assert!(
            text.lines()
                .any(|l| l.starts_with(name.as_str()) && l.contains(*mode)),
            "{text}"
        );

        let shown = run_in(&ns, &["show", name, "--json"]).json();
        let (major, minor) = ns.tap_dev(kernel);
        assert_eq!(shown["device"], format!("{major}:{minor}"));
        assert_eq!(shown["mtu"], 1400);
        // A device node is only offered when it verifiably is this device.
        if let Some(node) = shown["device_node"].as_str() {
            let meta = std::fs::metadata(node).unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!(
                (
                    libc::major(meta.rdev()) as u64,
                    libc::minor(meta.rdev()) as u64
                ),
                (major, minor)
            );
        } else {
            assert!(shown["device_node_note"]
                .as_str()
                .unwrap()
                .contains("by number"));
        }
        let human = run_in(&ns, &["show", name]).ok().to_string();
        assert!(human.contains(&format!("mode {mode}")), "{human}");
        assert!(
            human.contains(&format!("device {major}:{minor}")),
            "{human}"
        );
    }

    for (name, _, _) in &made {
        run_in(&ns, &["delete", name]).ok();
        assert!(ns.link(name).is_none(), "{name} survived delete");
    }
    assert_eq!(
        run_in(&ns, &["list", "--json"]).json(),
        Value::Array(vec![])
    );
    assert!(run_in(&ns, &["list"]).ok().contains("no macvtaps"));
}

#[test]
fn create_asks_for_an_ifindex_and_refuses_a_taken_one() {
    let ns = Netns::new(&unique_name("ctl-ifindex"));
    veth_pair(&ns, "up0", "up1");
    let index = unique_ifindex().to_string();
    let shown = run_in(
        &ns,
        &[
            "create",
            "--lower",
            "up0",
            "--name",
            "mv0",
            "--ifindex",
            &index,
            "--json",
        ],
    )
    .json();
    assert_eq!(shown["ifindex"].to_string(), index);
    assert_eq!(ns.expect_link("mv0").ifindex.to_string(), index);
    let err = run_in(
        &ns,
        &[
            "create",
            "--lower",
            "up0",
            "--name",
            "mv1",
            "--ifindex",
            &index,
        ],
    )
    .fails_with(1)
    .to_string();
    assert!(err.contains(&format!("ifindex {index} is taken")), "{err}");
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let ns = Netns::new(&unique_name("ctl-bad"));
    veth_pair(&ns, "up0", "up1");
    let cases: [(&[&str], &str); 7] = [
        (
            &["create", "--lower", "nope0", "--name", "mv0"],
            "no interface \"nope0\"",
        ),
        (
            &[
                "create", "--lower", "up0", "--name", "mv0", "--mode", "source",
            ],
            "at least one --source-mac",
        ),
        (
            &[
                "create",
                "--lower",
                "up0",
                "--name",
                "mv0",
                "--source-mac",
                "02:00:00:00:00:01",
            ],
            "only applies to --mode source",
        ),
        (
            &["create", "--lower", "up0", "--name", "a-very-long-name0"],
            "not a usable interface name",
        ),
        (
            &["create", "--lower", "up0", "--name", "mv0", "--mtu", "40"],
            "out of range",
        ),
        (&["delete", "up1"], "not a macvtap"),
        (&["show", "ghost0"], "no interface \"ghost0\""),
    ];
    for (args, want) in cases {
        let err = run_in(&ns, args).fails_with(1).to_string();
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(ns.macvtaps().is_empty(), "a refused request made a macvtap");
    // The veth survived the refused delete.
    assert!(ns.link("up1").is_some());

    run_in(&ns, &["create", "--lower", "up0", "--name", "mv0"]).ok();
    let err = run_in(&ns, &["create", "--lower", "up0", "--name", "mv0"])
        .fails_with(1)
        .to_string();
    assert!(err.contains("already exists"), "{err}");

    let missing = common::run(&["--netns", "mvt-no-such-ns-4711", "list"]);
    assert!(
        missing.fails_with(1).contains("does not exist"),
        "{missing:?}"
    );
    let usage = common::run(&["create", "--lower", "up0"]);
    assert!(usage.fails_with(2).contains("--name"), "{usage:?}");
}
