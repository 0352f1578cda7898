//! The NoCloud seed and the kernel's ip= argument, made from a real
//! handover's record and read back by other readers.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::process::Command;

use common::{HandoverWorld, World};
use macvtap_handover::cmdline::{append_ip_argument, KernelIpOptions};
use macvtap_handover::nocloud::{read_vfat, seed, SeedOptions};
use macvtap_handover::{apply, undo, UndoOutcome};
use yaml_rust2::{Yaml, YamlLoader};

fn strs(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("not a list: {y:?}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("not a string: {v:?}"))
                .to_string()
        })
        .collect()
}

#[test]
fn nocloud_seed_is_a_cidata_vfat_with_the_identity() {
    let w = World::new("seed", 211);
    let ns = w.netns();
    let store = w.store();
    let applied = apply(&store, &ns, &w.options()).unwrap();
    let rec = &applied.record;
    let opts = SeedOptions {
        hostname: Some("guest-a".into()),
        set_name: Some("eth0".into()),
        user_data: Some("#cloud-config\nruncmd:\n  - [echo, hi]\n".into()),
        ..SeedOptions::default()
    };
    let image_path = w.tmp.path().join("seed.img");
    let s = seed(rec, &opts).unwrap();
    s.write_vfat(&image_path).unwrap();

    // blkid (util-linux, what cloud-init itself asks) sees a vfat labelled cidata.
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(&image_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "blkid: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.lines().any(|l| l == "LABEL=cidata"), "{text}");
    assert!(text.lines().any(|l| l == "TYPE=vfat"), "{text}");

    // Read back: exactly the three files, with the contents made.
    let image = std::fs::read(&image_path).unwrap();
    let (label, files) = read_vfat(&image).unwrap();
    assert_eq!(label.trim(), "cidata");
    let mut names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["meta-data", "network-config", "user-data"]);
    let file = |name: &str| files.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(
        file("user-data"),
        "#cloud-config\nruncmd:\n  - [echo, hi]\n"
    );

    let meta = &YamlLoader::load_from_str(&file("meta-data")).unwrap()[0];
    assert_eq!(meta["local-hostname"].as_str(), Some("guest-a"));
    assert!(meta["instance-id"]
        .as_str()
        .unwrap()
        .starts_with("handover-"));

    let net = &YamlLoader::load_from_str(&file("network-config")).unwrap()[0];
    assert_eq!(net["version"].as_i64(), Some(2));
    let eth = &net["ethernets"]["guest"];
    assert_eq!(
        eth["match"]["macaddress"].as_str(),
        Some(rec.made.mac.to_string().as_str())
    );
    assert_eq!(eth["set-name"].as_str(), Some("eth0"));
    assert_eq!(eth["mtu"].as_i64(), Some(1400));
    assert_eq!(eth["dhcp4"].as_bool(), Some(false));
    let mut addrs = strs(&eth["addresses"]);
    addrs.sort();
    assert_eq!(
        addrs,
        ["10.211.0.2/24", "10.211.0.3/24", "2001:db8:211::2/64"]
    );
    let routes: Vec<(String, String, Option<i64>)> = eth["routes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["to"].as_str().unwrap().to_string(),
                r["via"].as_str().unwrap().to_string(),
                r["metric"].as_i64(),
            )
        })
        .collect();
    assert!(
        routes.contains(&("0.0.0.0/0".into(), "10.211.0.1".into(), None)),
        "{routes:?}"
    );
    assert!(
        routes.contains(&("10.212.0.0/16".into(), "10.211.0.1".into(), Some(50))),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r.0 == "::/0" && r.1 == "2001:db8:211::1"),
        "{routes:?}"
    );
    assert_eq!(
        routes.len(),
        3,
        "prefix routes are the guest kernel's to make: {routes:?}"
    );
    assert_eq!(
        strs(&eth["nameservers"]["addresses"]),
        ["10.0.0.53", "2001:db8:53::53"]
    );
    assert_eq!(
        strs(&eth["nameservers"]["search"]),
        ["corp.example", "lab.example"]
    );

    // PyYAML, the parser cloud-init itself uses (YAML 1.1), reads the same.
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut py.stdin.take().unwrap(),
        file("network-config").as_bytes(),
    )
    .unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = &v["ethernets"]["guest"];
    assert_eq!(g["match"]["macaddress"], rec.made.mac.to_string());
    assert_eq!(g["mtu"], 1400);
    assert_eq!(g["addresses"].as_array().unwrap().len(), 3);
    assert_eq!(g["nameservers"]["addresses"][1], "2001:db8:53::53");
    assert_eq!(g["routes"].as_array().unwrap().len(), 3);

    // The same record gives the ip= argument.
    let append = append_ip_argument(
        "console=ttyS0",
        &rec.identity,
        &KernelIpOptions {
            hostname: Some("guest-a".into()),
            device: None,
        },
    )
    .unwrap();
    assert_eq!(
        append,
        "console=ttyS0 ip=10.211.0.2::10.211.0.1:255.255.255.0:guest-a:eth0:off:10.0.0.53"
    );
    assert_eq!(undo(&store, &ns, "eth0").unwrap(), UndoOutcome::Restored);
}

#[test]
fn seed_refuses_what_it_cannot_say() {
    let w = World::new("seedbad", 212);
    let ns = w.netns();
    let id = macvtap_handover::capture(&ns, "eth0", &macvtap_handover::ResolvConf::None).unwrap();
    let mac = macvtap_handover::generate_mac();
    let bad_host = SeedOptions {
        hostname: Some("a\nb: c".into()),
        ..SeedOptions::default()
    };
    assert!(macvtap_handover::nocloud::seed_for(&id, mac, &bad_host).is_err());
    let huge = SeedOptions {
        user_data: Some("x".repeat(600 << 10)),
        ..SeedOptions::default()
    };
    assert!(macvtap_handover::nocloud::seed_for(&id, mac, &huge).is_err());
    // With no DNS captured, no nameservers key at all.
    let s = macvtap_handover::nocloud::seed_for(&id, mac, &SeedOptions::default()).unwrap();
    let net = &YamlLoader::load_from_str(&s.network_config).unwrap()[0];
    assert!(net["ethernets"]["guest"]["nameservers"].is_badvalue());
}
