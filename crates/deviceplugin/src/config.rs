//! `DP_MACVTAP_CONF` (or the file `--config-file` names),
//! `DP_MACVTAP_DISCOVER_KINDS` and `DP_MACVTAP_DISCOVER_SKIP_ENSLAVED`,
//! validated at start and, for the file, at every change.

use std::collections::BTreeSet;
use std::fmt;

use macvtap_net::MacvtapMode;
use macvtap_state::{is_safe_name, Attach};
use serde::Deserialize;

/// Largest capacity of one resource: ifindexes are reserved per device.
pub const MAX_CAPACITY: u32 = 4096;
/// Capacity of discovered resources, and when `capacity` is not given.
pub const DEFAULT_CAPACITY: u32 = 100;

/// Why the configuration is refused. The daemon exits with this message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The variable is not set.
    #[error(
        "DP_MACVTAP_CONF is not set: give a JSON array of resources, or [] to discover uplinks"
    )]
    Unset,
    /// Not JSON, or not of the expected shape. `origin` is where the JSON
    /// came from: `DP_MACVTAP_CONF` or the configuration file.
    #[error("{origin}: {msg} at line {line}, column {column}")]
    Syntax {
        origin: String,
        msg: String,
        line: usize,
        column: usize,
    },
    /// One resource is wrong.
    #[error("{origin}: resource {name:?}: {why}")]
    Resource {
        origin: String,
        name: String,
        why: String,
    },
    /// A discovery kind is unknown.
    #[error("DP_MACVTAP_DISCOVER_KINDS: unknown kind {0:?} (want physical, bond, team, vlan, bridge, vxlan, veth or macvlan)")]
    Kind(String),
    /// The enslaved filter is not a boolean.
    #[error("DP_MACVTAP_DISCOVER_SKIP_ENSLAVED: {0:?} is not true or false")]
    SkipEnslaved(String),
}

/// One resource as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceConfig {
    pub name: String,
    pub lower_device: String,
    pub mode: MacvtapMode,
    pub capacity: u32,
    pub attach: Attach,
}

/// Kinds of host links that discovery offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkKind {
    Physical,
    Bond,
    Team,
    Vlan,
    Bridge,
    Vxlan,
    Veth,
    Macvlan,
}

impl LinkKind {
    const ALL: [(LinkKind, &'static str); 8] = [
        (LinkKind::Physical, "physical"),
        (LinkKind::Bond, "bond"),
        (LinkKind::Team, "team"),
        (LinkKind::Vlan, "vlan"),
        (LinkKind::Bridge, "bridge"),
        (LinkKind::Vxlan, "vxlan"),
        (LinkKind::Veth, "veth"),
        (LinkKind::Macvlan, "macvlan"),
    ];

    /// The kind for the kernel's IFLA_INFO_KIND (None: a device without a
    /// driver kind, physical if sysfs says it has a device behind it).
    pub fn from_info_kind(kind: Option<&str>, has_device: bool) -> Option<LinkKind> {
        match kind {
            None if has_device => Some(LinkKind::Physical),
            None => None,
            Some(k) => Self::ALL
                .iter()
                .find(|(_, n)| *n == k)
                .map(|(kind, _)| *kind),
        }
    }
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(k, _)| k == self)
            .map_or("?", |(_, n)| n);
        f.write_str(name)
    }
}

/// What the daemon offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Config {
    /// The configured resources.
    Static(Vec<ResourceConfig>),
    /// `[]`: one resource per suitable link.
    Discover(Discovery),
}

/// Which links discovery offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// Links of these kinds.
    pub kinds: BTreeSet<LinkKind>,
    /// Leave out links enslaved to a bond, bridge or team.
    pub skip_enslaved: bool,
}

impl Discovery {
    /// Upstream's set: every physical device and bond, enslaved or not.
    pub fn upstream() -> Discovery {
        Discovery {
            kinds: default_kinds(),
            skip_enslaved: false,
        }
    }
}

impl fmt::Display for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<String> = self.kinds.iter().map(ToString::to_string).collect();
        write!(f, "discovery of {} links", kinds.join(", "))?;
        if self.skip_enslaved {
            f.write_str(" that are not enslaved")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawResource {
    name: Option<String>,
    lower_device: Option<String>,
    master: Option<String>,
    mode: Option<String>,
    capacity: Option<i64>,
    attach: Option<String>,
}

/// Check one resource's keys and their types, so that an error names the
/// resource and the key (serde alone would say "expected i64" and no more).
fn typed_resource(
    origin: &str,
    i: usize,
    value: serde_json::Value,
) -> Result<RawResource, ConfigError> {
    let label = value
        .get("name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .map_or_else(|| format!("#{i}"), str::to_string);
    let bad = |why: String| ConfigError::Resource {
        origin: origin.to_string(),
        name: label.clone(),
        why,
    };
    let Some(object) = value.as_object() else {
        return Err(bad(format!(
            "must be an object like {{\"name\": ..., \"lowerDevice\": ...}}, not {value}"
        )));
    };
    for (key, v) in object {
        let ok = match key.as_str() {
            "name" | "lowerDevice" | "master" | "mode" | "attach" => v.is_string(),
            "capacity" => v.is_i64() || v.is_u64(),
            _ => {
                return Err(bad(format!(
                "unknown field {key:?} (known: name, lowerDevice, master, mode, capacity, attach)"
            )))
            }
        };
        if !ok {
            let want = if key == "capacity" {
                "an integer"
            } else {
                "a string"
            };
            return Err(bad(format!("{key} must be {want}, not {v}")));
        }
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// The default discovery kinds, upstream's (kubevirt/macvtap-cni offers
/// netlink's plain devices and bonds): the same resource names after a swap.
pub fn default_kinds() -> BTreeSet<LinkKind> {
    [LinkKind::Physical, LinkKind::Bond].into()
}

/// Parse `DP_MACVTAP_DISCOVER_KINDS`.
pub fn parse_kinds(s: &str) -> Result<BTreeSet<LinkKind>, ConfigError> {
    s.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| {
            LinkKind::ALL
                .iter()
                .find(|(_, n)| *n == k)
                .map(|(kind, _)| *kind)
                .ok_or_else(|| ConfigError::Kind(k.to_string()))
        })
        .collect()
}

/// Whether `name` can follow `macvtap.network.kubevirt.io/`: the kubelet
/// wants a qualified name (letters, digits, `-`, `_`, `.`, starting and
/// ending with a letter or digit; registration would fail forever
/// otherwise), and `<name>-<index>` must fit its 63-character device IDs.
pub fn valid_resource_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    is_safe_name(name) && name.len() <= 56 && name.starts_with(alnum) && name.ends_with(alnum)
}

/// Whether a name can be a Linux interface name.
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

impl Config {
    /// Parse `DP_MACVTAP_CONF` and `DP_MACVTAP_DISCOVER_KINDS`.
    pub fn parse(conf: Option<&str>, kinds: Option<&str>) -> Result<Config, ConfigError> {
        Self::parse_all(conf, kinds, None)
    }

    /// Parse the three variables' values.
    pub fn parse_all(
        conf: Option<&str>,
        kinds: Option<&str>,
        skip_enslaved: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let conf = conf.ok_or(ConfigError::Unset)?;
        Self::parse_from("DP_MACVTAP_CONF", conf, kinds, skip_enslaved)
    }

    /// Parse the resources' JSON from `origin` (named in errors: the
    /// variable, or the configuration file) and the discovery variables.
    pub fn parse_from(
        origin: &str,
        conf: &str,
        kinds: Option<&str>,
        skip_enslaved: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let values: Vec<serde_json::Value> =
            serde_json::from_str(conf).map_err(|e| ConfigError::Syntax {
                origin: origin.to_string(),
                msg: e
                    .to_string()
                    .split(" at line ")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                line: e.line(),
                column: e.column(),
            })?;
        let raw = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| typed_resource(origin, i, v))
            .collect::<Result<Vec<RawResource>, ConfigError>>()?;
        if raw.is_empty() {
            let kinds = match kinds {
                Some(k) if !k.trim().is_empty() => parse_kinds(k)?,
                _ => default_kinds(),
            };
            let skip_enslaved = match skip_enslaved.map(str::trim) {
                None | Some("") | Some("false") | Some("0") => false,
                Some("true") | Some("1") => true,
                Some(other) => return Err(ConfigError::SkipEnslaved(other.to_string())),
            };
            return Ok(Config::Discover(Discovery {
                kinds,
                skip_enslaved,
            }));
        }
        let mut resources: Vec<ResourceConfig> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let name = r.name.unwrap_or_default();
            let bad = |why: String| ConfigError::Resource {
                origin: origin.to_string(),
                name: if name.is_empty() {
                    format!("#{i}")
                } else {
                    name.clone()
                },
                why,
            };
            if name.is_empty() {
                return Err(bad("name is missing".into()));
            }
            if !valid_resource_name(&name) {
                return Err(bad("name must be 1-56 letters, digits, '.', '_' or '-', starting and ending with a letter or digit".into()));
            }
            if resources.iter().any(|o| o.name == name) {
                return Err(bad("defined twice".into()));
            }
            let lower_device = match (r.lower_device, r.master) {
                (Some(a), Some(b)) if a != b => {
                    return Err(bad(format!("lowerDevice {a:?} and master {b:?} disagree")))
                }
                (a, b) => a
                    .or(b)
                    .ok_or_else(|| bad("lowerDevice (or master) is missing".into()))?,
            };
            if !valid_ifname(&lower_device) {
                return Err(bad(format!(
                    "lowerDevice {lower_device:?} is not an interface name"
                )));
            }
            let mode = match r.mode.as_deref() {
                None | Some("") => MacvtapMode::Bridge,
                Some(m) => m.parse().map_err(bad)?,
            };
            let capacity = match r.capacity {
                None => DEFAULT_CAPACITY,
                Some(c) if (1..=i64::from(MAX_CAPACITY)).contains(&c) => c as u32,
                Some(c) => {
                    return Err(bad(format!(
                        "capacity {c} is out of range (1..{MAX_CAPACITY})"
                    )))
                }
            };
            let attach = match r.attach.as_deref() {
                None | Some("pod") => Attach::Pod,
                Some("host") => Attach::Host,
                Some(a) => {
                    return Err(bad(format!("attach {a:?} is neither \"pod\" nor \"host\"")))
                }
            };
            resources.push(ResourceConfig {
                name,
                lower_device,
                mode,
                capacity,
                attach,
            });
        }
        Ok(Config::Static(resources))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_configs_parse() {
        let c = Config::parse(
            Some(r#"[{"name":"dataplane","master":"eth0","mode":"bridge","capacity":50}]"#),
            None,
        )
        .unwrap();
        let Config::Static(r) = c else {
            panic!("static")
        };
        assert_eq!(r[0].lower_device, "eth0");
        assert_eq!((r[0].capacity, r[0].attach), (50, Attach::Pod));
        let Config::Static(r) = Config::parse(
            Some(r#"[{"name":"a","lowerDevice":"eth1","attach":"host"}]"#),
            None,
        )
        .unwrap() else {
            panic!("static")
        };
        assert_eq!(
            (r[0].capacity, r[0].mode, r[0].attach),
            (100, MacvtapMode::Bridge, Attach::Host)
        );
    }

    #[test]
    fn empty_array_discovers() {
        assert_eq!(
            Config::parse(Some("[]"), None).unwrap(),
            Config::Discover(Discovery::upstream())
        );
        assert_eq!(
            default_kinds(),
            [LinkKind::Physical, LinkKind::Bond].into(),
            "upstream's set"
        );
        assert_eq!(
            Config::parse(Some("[]"), Some("veth, bridge")).unwrap(),
            Config::Discover(Discovery {
                kinds: [LinkKind::Veth, LinkKind::Bridge].into(),
                skip_enslaved: false
            })
        );
        let Config::Discover(wider) =
            Config::parse_all(Some("[]"), Some("physical,bond,team,vlan"), Some("true")).unwrap()
        else {
            panic!("discovery")
        };
        assert_eq!(
            wider.to_string(),
            "discovery of physical, bond, team, vlan links that are not enslaved"
        );
        let e = Config::parse_all(Some("[]"), None, Some("yes")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "DP_MACVTAP_DISCOVER_SKIP_ENSLAVED: \"yes\" is not true or false"
        );
        assert!(matches!(
            Config::parse(Some("[]"), Some("ethernet")),
            Err(ConfigError::Kind(_))
        ));
    }

    #[test]
    fn errors_name_the_resource_and_the_place() {
        let e = Config::parse(Some("[{\"name\": \"a\",\n \"lowerDevice\": }]"), None).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e}");
        assert!(e.to_string().contains("line 2, column"), "{e}");
        for (conf, needle) in [
            (
                r#"[{"name":"x","lowerDevice":"eth0","mode":"nat"}]"#,
                "\"x\"",
            ),
            (
                r#"[{"name":"x","lowerDevice":"eth0","capacity":0}]"#,
                "capacity 0",
            ),
            (r#"[{"name":"x"}]"#, "lowerDevice"),
            (
                r#"[{"name":"x","lowerDevice":"a"},{"name":"x","lowerDevice":"b"}]"#,
                "twice",
            ),
            (r#"[{"name":"../x","lowerDevice":"a"}]"#, "name must"),
            (r#"[{"name":"lan-","lowerDevice":"a"}]"#, "name must"),
            (r#"[{"name":"_lan","lowerDevice":"a"}]"#, "name must"),
            (
                r#"[{"name":"x","lowerDevice":"a","mtu":9000}]"#,
                "unknown field",
            ),
        ] {
            let e = Config::parse(Some(conf), None).unwrap_err().to_string();
            assert!(e.contains(needle), "{conf}: {e}");
        }
        assert!(matches!(Config::parse(None, None), Err(ConfigError::Unset)));
    }
}
