//! The netlink layer against the real kernel, in namespaces this test makes.
//! Needs root.

use std::process::Command;

use macvtap_net::{tap_device_number, MacAddr, MacvtapMode, MacvtapSpec, NetNs, Netlink};

struct Ns(String);
impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("mvnet-{}-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip");
        assert!(ok.success(), "ip netns add {name} (tests need root)");
        Ns(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .output()
            .expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn creates_macvtap_inside_another_namespace_with_requested_ifindex() {
    let node_guard = Ns::new("node");
    let node = NetNs::open(node_guard.path()).unwrap();
    let pod_guard = Ns::new("pod");
    let pod = NetNs::open(pod_guard.path()).unwrap();
    node_guard.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    node_guard.ip(&["link", "set", "up0", "up"]);

    let mac = MacAddr::parse_unicast("02:00:00:aa:bb:01").unwrap();
    let (dev, pod_link) = node
        .run(|| {
            let mut nl = Netlink::open().unwrap();
            let lower = nl.link_by_name("up0").unwrap().expect("up0");
            nl.create_macvtap(&MacvtapSpec {
                name: "net1",
                lower_index: lower.index,
                mode: MacvtapMode::Vepa,
                source_macs: &[],
                mac: Some(mac),
                mtu: Some(1400),
                promisc: true,
                up: true,
                ifindex: Some(4242),
                netns_fd: Some(pod.raw_fd()),
            })
            .unwrap();
            assert!(
                nl.link_by_name("net1").unwrap().is_none(),
                "created in the node namespace"
            );
            pod.run(|| {
                let mut nl = Netlink::open().unwrap();
                let link = nl.link_by_name("net1").unwrap().expect("net1 in pod");
                (tap_device_number("net1", link.index).unwrap(), link)
            })
            .unwrap()
        })
        .unwrap();
    assert_eq!(pod_link.index, 4242);
    assert_eq!(pod_link.kind.as_deref(), Some("macvtap"));
    assert_eq!(pod_link.macvtap_mode, Some(MacvtapMode::Vepa));
    assert_eq!(pod_link.mac, Some(mac));
    assert_eq!(pod_link.mtu, 1400);
    assert!(pod_link.up && pod_link.promisc);
    let sysfs = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pod_guard.0,
            "cat",
            "/sys/class/net/net1/macvtap/tap4242/dev",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sysfs.stdout).trim(),
        dev.to_string()
    );
}
