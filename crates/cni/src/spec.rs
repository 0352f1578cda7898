//! The CNI protocol: versions, commands, the `CNI_*` environment and the
//! result formats of each spec version.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{code, err, Result};

/// Spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A supported spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V030,
    V031,
    V040,
    V100,
    V110,
}

impl Version {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "0.3.0" => Version::V030,
            "0.3.1" => Version::V031,
            "0.4.0" => Version::V040,
            "1.0.0" => Version::V100,
            "1.1.0" => Version::V110,
            "" => return Err(err(code::INCOMPATIBLE_VERSION, "cniVersion is missing")),
            other => {
                return Err(err(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "incompatible CNI version {other:?}: this plugin supports {}",
                        SUPPORTED_VERSIONS.join(", ")
                    ),
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V030 => "0.3.0",
            Version::V031 => "0.3.1",
            Version::V040 => "0.4.0",
            Version::V100 => "1.0.0",
            Version::V110 => "1.1.0",
        }
    }
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "" => return Err(err(code::INVALID_ENVIRONMENT, "CNI_COMMAND is not set")),
            other => {
                return Err(err(
                    code::INVALID_ENVIRONMENT,
                    format!(
                    "unknown CNI_COMMAND {other:?} (want ADD, DEL, CHECK, VERSION, STATUS or GC)"
                ),
                ))
            }
        })
    }

    /// The oldest spec version that has this command.
    pub fn since(self) -> Version {
        match self {
            Command::Check => Version::V040,
            Command::Status | Command::Gc => Version::V110,
            _ => Version::V030,
        }
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
    /// CNI_* variables that are set but not UTF-8.
    pub not_utf8: Vec<&'static str>,
}

impl Env {
    /// Read from the process environment.
    pub fn from_process() -> Self {
        let mut not_utf8 = Vec::new();
        let mut var = |k: &'static str| match std::env::var(k) {
            Ok(v) => v,
            Err(std::env::VarError::NotUnicode(_)) => {
                not_utf8.push(k);
                String::new()
            }
            Err(std::env::VarError::NotPresent) => String::new(),
        };
        Env {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
            not_utf8,
        }
    }

    /// CNI_CONTAINERID: alphanumeric plus `_ . -`, starting alphanumeric.
    pub fn require_container_id(&self) -> Result<&str> {
        let id = &self.container_id;
        if id.is_empty() {
            return Err(err(code::INVALID_ENVIRONMENT, "CNI_CONTAINERID is not set"));
        }
        let ok = id.len() <= 253
            && id.starts_with(|c: char| c.is_ascii_alphanumeric())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(err(
                code::INVALID_ENVIRONMENT,
                format!("CNI_CONTAINERID {id:?} is invalid (letters, digits, '_', '.', '-'; starting with a letter or digit)"),
            ));
        }
        Ok(id)
    }

    /// CNI_IFNAME: a name the kernel accepts.
    pub fn require_ifname(&self) -> Result<&str> {
        let name = &self.ifname;
        if name.is_empty() {
            return Err(err(code::INVALID_ENVIRONMENT, "CNI_IFNAME is not set"));
        }
        if let Some(why) = invalid_ifname(name) {
            return Err(err(
                code::INVALID_ENVIRONMENT,
                format!("CNI_IFNAME {name:?} {why}"),
            ));
        }
        Ok(name)
    }

    pub fn require_netns(&self) -> Result<&str> {
        if self.netns.is_empty() {
            return Err(err(code::INVALID_ENVIRONMENT, "CNI_NETNS is not set"));
        }
        Ok(&self.netns)
    }

    /// CNI_ARGS as key/value pairs.
    pub fn parsed_args(&self) -> Result<Vec<(&str, &str)>> {
        parse_args(&self.args)
    }
}

/// Why `name` is not a valid interface name, if it is not (one rule for
/// the plugin and the records it keeps).
pub use macvtap_state::invalid_ifname;

/// `K=V;K=V`. Empty segments are skipped; a segment without `=` is refused.
pub fn parse_args(args: &str) -> Result<Vec<(&str, &str)>> {
    args.split(';')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            pair.split_once('=').ok_or_else(|| {
                err(
                    code::INVALID_ENVIRONMENT,
                    format!("CNI_ARGS: invalid pair {pair:?} (want KEY=VALUE)"),
                )
            })
        })
        .collect()
}

/// A result in a version-independent form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Value>,
    pub dns: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

#[derive(Deserialize)]
struct RawIp {
    address: String,
    gateway: Option<String>,
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct RawInterface {
    name: String,
    mac: Option<String>,
    mtu: Option<u32>,
    sandbox: Option<String>,
}

#[derive(Deserialize)]
struct RawResult {
    #[serde(default)]
    interfaces: Vec<RawInterface>,
    #[serde(default)]
    ips: Vec<RawIp>,
    #[serde(default)]
    routes: Vec<Value>,
    dns: Option<Value>,
}

/// Parse `a.b.c.d/len` or `v6/len`.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

impl CniResult {
    /// Parse a result of any supported version (an IPAM plugin's or a
    /// `prevResult`). Unknown fields are ignored.
    pub fn parse(value: &Value) -> Result<Self> {
        let bad = |m: String| err(code::DECODE, format!("cannot decode result: {m}"));
        let raw: RawResult =
            serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
        let mut ips = Vec::new();
        for ip in raw.ips {
            let (address, prefix_len) = parse_cidr(&ip.address)
                .ok_or_else(|| bad(format!("bad address {:?}", ip.address)))?;
            let gateway = match ip.gateway.as_deref() {
                None | Some("") => None,
                Some(g) => Some(g.parse().map_err(|_| bad(format!("bad gateway {g:?}")))?),
            };
            ips.push(IpConfig {
                address,
                prefix_len,
                gateway,
                interface: ip.interface,
            });
        }
        Ok(CniResult {
            interfaces: raw
                .interfaces
                .into_iter()
                .map(|i| Interface {
                    name: i.name,
                    mac: i.mac,
                    mtu: i.mtu,
                    sandbox: i.sandbox,
                })
                .collect(),
            ips,
            routes: raw.routes,
            dns: raw.dns,
        })
    }

    /// The result JSON in `version`'s format.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), i.name.clone().into());
                if let Some(mac) = &i.mac {
                    o.insert("mac".into(), mac.clone().into());
                }
                if let (Some(mtu), true) = (i.mtu, version >= Version::V110) {
                    o.insert("mtu".into(), mtu.into());
                }
                if let Some(sandbox) = &i.sandbox {
                    o.insert("sandbox".into(), sandbox.clone().into());
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version < Version::V100 {
                    o.insert(
                        "version".into(),
                        if ip.address.is_ipv4() { "4" } else { "6" }.into(),
                    );
                }
                o.insert(
                    "address".into(),
                    format!("{}/{}", ip.address, ip.prefix_len).into(),
                );
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), gw.to_string().into());
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), i.into());
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let keep: &[&str] = if version >= Version::V110 {
                    &["dst", "gw", "mtu", "advmss", "priority", "table", "scope"]
                } else {
                    &["dst", "gw"]
                };
                let mut o = Map::new();
                if let Some(obj) = r.as_object() {
                    for k in keep {
                        if let Some(v) = obj.get(*k) {
                            o.insert((*k).into(), v.clone());
                        }
                    }
                }
                Value::Object(o)
            })
            .collect();
        let mut out = json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
        });
        if !ips.is_empty() {
            out["ips"] = ips.into();
        }
        if !routes.is_empty() {
            out["routes"] = routes.into();
        }
        out["dns"] = self.dns.clone().unwrap_or_else(|| json!({}));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse_and_refuse_pairs_without_equals() {
        assert_eq!(
            parse_args("IgnoreUnknown=1;MAC=02:00:00:00:00:01").unwrap()[1],
            ("MAC", "02:00:00:00:00:01")
        );
        assert!(parse_args("").unwrap().is_empty());
        assert_eq!(
            parse_args("MAC").unwrap_err().code,
            code::INVALID_ENVIRONMENT
        );
    }

    #[test]
    fn ifnames_follow_the_kernel_rules() {
        assert!(invalid_ifname("net1").is_none());
        for bad in ["", "a/b", "a b", "0123456789abcdef", ".", "..", "a:b"] {
            assert!(invalid_ifname(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn results_take_each_versions_shape() {
        let ipam = json!({"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.5/24","gateway":"10.1.0.1"}],
                           "routes":[{"dst":"0.0.0.0/0","gw":"10.1.0.1","mtu":1400}],"dns":{}});
        let mut r = CniResult::parse(&ipam).unwrap();
        r.interfaces.push(Interface {
            name: "net1".into(),
            mac: Some("02:00:00:00:00:01".into()),
            mtu: Some(1500),
            sandbox: Some("/run/netns/x".into()),
        });
        r.ips[0].interface = Some(0);
        let old = r.to_json(Version::V031);
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][0].get("mtu").is_none());
        assert!(old["routes"][0].get("mtu").is_none());
        let new = r.to_json(Version::V110);
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][0]["mtu"], 1500);
        assert_eq!(new["routes"][0]["mtu"], 1400);
        assert_eq!(new["cniVersion"], "1.1.0");
        assert_eq!(CniResult::parse(&new).unwrap().ips, r.ips);
    }

    #[test]
    fn versions_and_commands() {
        assert_eq!(
            Version::parse("0.2.0").unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        assert!(Version::parse("1.0.0").unwrap() < Version::V110);
        assert_eq!(
            Command::parse("FOO").unwrap_err().code,
            code::INVALID_ENVIRONMENT
        );
        assert_eq!(Command::Check.since(), Version::V040);
    }
}
