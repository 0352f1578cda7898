//! A container as docker or podman leaves it, in private namespaces: `ctr`
//! holds `eth0`, a veth whose peer `lan0` sits in `lan` (the runtime's
//! bridge side), with both address families, routes, an MTU and a
//! resolv.conf: what a handover captures and must give back. Namespaces and
//! the temporary directory go on drop, also when a test fails.

use std::path::PathBuf;

use serde_json::Value;

use crate::{require_root, unique_name, Netns, TempDir};

/// The resolv.conf every container world gets (two families of name
/// servers, a search list, an option the capture must skip).
pub const RESOLV_CONF: &str = "# test\nnameserver 10.0.0.53\nnameserver 2001:db8:53::53\n\
     search corp.example lab.example\noptions ndots:2\n";

#[derive(Debug)]
pub struct ContainerNet {
    pub ctr: Netns,
    pub lan: Netns,
    pub tmp: TempDir,
    /// The second octet of every IPv4 address: 10.<net>.0.0/24.
    pub net: u8,
}

impl ContainerNet {
    /// `eth0` with 10.<net>.0.2/24 (and the secondary .3),
    /// 2001:db8:<net>::2/64, default routes of both families, a route to
    /// 10.<net+1>.0.0/16 with metric 50, MTU 1400.
    pub fn new(tag: &str, net: u8) -> ContainerNet {
        require_root();
        let ctr = Netns::new(&unique_name(&format!("{tag}-c")));
        let lan = Netns::new(&unique_name(&format!("{tag}-l")));
        ctr.ip_ok(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "lan0",
            "netns",
            lan.name(),
        ]);
        lan.ip_cmd("link set lan0 up");
        // Quiet peer: no IPv6 autoconfiguration noise on the LAN side.
        lan.exec(&["sysctl", "-qw", "net.ipv6.conf.lan0.disable_ipv6=1"]);
        // No DAD on eth0: its link-local address would turn from tentative
        // to valid in the middle of a test and make snapshots differ.
        let dad = ctr.exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"]);
        assert!(dad.status.success(), "{dad:?}");
        ctr.ip_cmd("link set eth0 mtu 1400 up");
        ctr.ip_cmd(&format!("addr add 10.{net}.0.2/24 dev eth0"));
        ctr.ip_cmd(&format!("addr add 10.{net}.0.3/24 dev eth0"));
        ctr.ip_cmd(&format!("addr add 2001:db8:{net}::2/64 dev eth0 nodad"));
        ctr.ip_cmd(&format!("route add default via 10.{net}.0.1 dev eth0"));
        ctr.ip_cmd(&format!(
            "route add 10.{}.0.0/16 via 10.{net}.0.1 dev eth0 metric 50",
            net.wrapping_add(1)
        ));
        ctr.ip_cmd(&format!(
            "-6 route add default via 2001:db8:{net}::1 dev eth0"
        ));
        let tmp = TempDir::new(tag);
        std::fs::write(tmp.path().join("resolv.conf"), RESOLV_CONF)
            .expect("write the container's resolv.conf");
        ContainerNet { ctr, lan, tmp, net }
    }

    /// A file in the world's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn resolv_conf(&self) -> PathBuf {
        self.path("resolv.conf")
    }

    pub fn state_dir(&self) -> String {
        self.path("state").display().to_string()
    }

    /// Everything `ip` says about eth0's addresses, every route of the
    /// namespace (both families, main and local tables) and the link names,
    /// order-independent: equal before a handover and after its undo.
    pub fn snapshot(&self) -> Value {
        let mut addr = self.ctr.ip_json(&["addr", "show", "dev", "eth0"]);
        if let Some(info) = addr[0]["addr_info"].as_array_mut() {
            info.sort_by_key(|v| v.to_string());
        }
        let mut routes = Vec::new();
        for fam in ["-4", "-6"] {
            for table in ["main", "local"] {
                if let Value::Array(r) = self.ctr.ip_json(&[fam, "route", "show", "table", table]) {
                    routes.extend(r);
                }
            }
        }
        routes.sort_by_key(|v| v.to_string());
        let mut links: Vec<String> = self.ctr.links().into_iter().map(|l| l.name).collect();
        links.sort();
        serde_json::json!({"addr": addr, "routes": routes, "links": links})
    }

    /// IPv4 addresses on eth0.
    pub fn ipv4(&self) -> Vec<String> {
        self.ctr.addr_cidrs("eth0", "inet")
    }

    /// Addresses on eth0 other than IPv6 link-local ones.
    pub fn global_addrs(&self) -> Vec<String> {
        let mut v = self.ipv4();
        v.extend(
            self.ctr
                .addr_cidrs("eth0", "inet6")
                .into_iter()
                .filter(|a| !a.starts_with("fe80")),
        );
        v
    }

    /// Routes (main table, both families) through eth0 except fe80::/64.
    pub fn eth0_routes(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            if let Value::Array(r) = self.ctr.ip_json(&[fam, "route", "show", "dev", "eth0"]) {
                out.extend(
                    r.into_iter()
                        .filter(|r| !r["dst"].as_str().unwrap_or("").starts_with("fe80")),
                );
            }
        }
        out
    }
}
