//! The network configuration: upstream's keys, then ours, validated once
//! into a [`Config`] before anything is touched.

use macvtap_net::{MacAddr, MacvtapMode};
use macvtap_state::NodePolicy;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{code, err, CniError, Result};
use crate::spec::{Env, Version};

/// Default uid/gid of the tap device node: qemu in KubeVirt's images.
pub const DEFAULT_OWNER: u32 = 107;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    cni_version: String,
    name: Option<String>,
    #[serde(rename = "deviceID")]
    device_id: Option<String>,
    master: Option<String>,
    lower_device: Option<String>,
    mode: Option<String>,
    source_macs: Option<Vec<String>>,
    #[serde(default)]
    link_in_container: bool,
    mtu: Option<i64>,
    #[serde(default)]
    promisc_mode: bool,
    mac: Option<String>,
    owner: Option<i64>,
    group: Option<i64>,
    state_dir: Option<String>,
    ipam: Option<Ipam>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
    #[serde(default)]
    handover: bool,
    handover_interface: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    mac: Option<String>,
}

/// The `ipam` section: only `type` is ours to read; the plugin gets the
/// whole configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Ipam {
    #[serde(rename = "type")]
    pub plugin: String,
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Where the macvtap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A device the node's device plugin offers.
    Device(String),
    /// Standalone: a lower device and a mode from the configuration.
    Lower {
        device: String,
        mode: MacvtapMode,
        source_macs: Vec<MacAddr>,
    },
    /// Chained handover (`"handover": true`): a macvtap on the container
    /// interface the previous plugin made, which hands its identity over.
    Handover {
        /// `handoverInterface`: which of prevResult's container interfaces
        /// (default: the first with an IPv4 address).
        interface: Option<String>,
        mode: MacvtapMode,
    },
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub version: Version,
    pub name: String,
    pub source: Source,
    pub link_in_container: bool,
    pub mtu: Option<u32>,
    pub promisc: bool,
    pub mac: Option<MacAddr>,
    pub owner: u32,
    pub group: u32,
    /// The node's policy (state directory, lock timeout, allowed modes):
    /// node input, never from the configuration.
    pub policy: NodePolicy,
    pub ipam: Option<Ipam>,
    pub prev_result: Option<Value>,
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// Just the version, read before anything else so that a config of an
/// unsupported version fails with code 1 rather than a decode error.
pub fn peek_version(bytes: &[u8]) -> Result<(Value, String)> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        err(
            code::DECODE,
            format!("network configuration is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(err(
            code::DECODE,
            "network configuration must be a JSON object",
        ));
    }
    let version = match value.get("cniVersion") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(err(code::DECODE, "cniVersion must be a string")),
    };
    Ok((value, version))
}

/// The spec's rule for a network name: an ASCII letter or digit, then
/// letters, digits, `_`, `.` and `-` (code 7 otherwise, as the reference
/// plugins' library answers).
fn check_network_name(name: &str) -> Result<()> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Ok(());
    }
    Err(invalid(format!(
        "name {name:?} is not a network name: a letter or digit, then letters, digits, '_', '.' or '-'"
    )))
}

fn invalid(msg: impl Into<String>) -> CniError {
    err(code::INVALID_CONFIG, msg)
}

fn id_from(v: Option<i64>, key: &str) -> Result<u32> {
    match v {
        None => Ok(DEFAULT_OWNER),
        // u32::MAX is "no change" to chown(2), never a real id.
        Some(n) if (0..u32::MAX as i64).contains(&n) => Ok(n as u32),
        Some(n) => Err(invalid(format!(
            "{key} {n} is not a valid id (0..4294967294)"
        ))),
    }
}

/// Each known key's JSON type, checked before decoding so that a wrong
/// type is reported with the key's name (serde's message has no path).
fn check_types(value: &Value) -> Result<()> {
    let Some(obj) = value.as_object() else {
        return Err(err(
            code::DECODE,
            "network configuration must be a JSON object",
        ));
    };
    let string = |v: &Value| v.is_string();
    let int = |v: &Value| v.is_i64() || v.is_u64();
    for (key, v) in obj {
        if v.is_null() {
            continue;
        }
        let (ok, want) = match key.as_str() {
            "cniVersion" | "name" | "type" | "deviceID" | "master" | "lowerDevice" | "mode"
            | "mac" | "stateDir" => (string(v), "a string"),
            "handoverInterface" => (string(v), "a string"),
            "linkInContainer" | "promiscMode" | "handover" => (v.is_boolean(), "true or false"),
            "mtu" | "owner" | "group" => (int(v), "an integer"),
            "sourceMacs" => (
                v.as_array().is_some_and(|a| a.iter().all(string)),
                "a list of strings",
            ),
            "ipam" => (
                v.as_object()
                    .is_some_and(|o| o.get("type").is_some_and(string)),
                "an object with a string \"type\"",
            ),
            "runtimeConfig" => (
                v.as_object()
                    .is_some_and(|o| o.get("mac").is_none_or(|m| m.is_null() || string(m))),
                "an object (with a string \"mac\")",
            ),
            "prevResult" => (v.is_object(), "an object"),
            "cni.dev/valid-attachments" => (
                v.as_array().is_some_and(|a| {
                    a.iter().all(|e| {
                        e.get("containerID").is_some_and(string)
                            && e.get("ifname").is_some_and(string)
                    })
                }),
                "a list of {\"containerID\", \"ifname\"} strings",
            ),
            _ => (true, ""),
        };
        if !ok {
            let shown: String = v.to_string().chars().take(80).collect();
            return Err(err(
                code::DECODE,
                format!("{key} must be {want}, not {shown}"),
            ));
        }
    }
    Ok(())
}

/// What every command needs from a configuration, decoded and checked.
struct Decoded {
    raw: RawConf,
    version: Version,
    name: String,
}

/// This plugin's own type: as an IPAM plugin it would wait for the lock of
/// the container its parent holds.
const OWN_TYPE: &str = "macvtap";

fn decode(mut value: Value, policy: &NodePolicy, teardown: bool) -> Result<Decoded> {
    if teardown {
        // ADD refuses an ipam section without a plugin name, so nothing was
        // leased: tear down without it rather than fail a DEL the runtime
        // would retry forever (the reference reads it as no IPAM).
        if let Some(obj) = value.as_object_mut() {
            let typeless = obj
                .get("ipam")
                .and_then(Value::as_object)
                .is_some_and(|i| i.get("type").is_none_or(|t| t.is_null() || t == ""));
            if typeless {
                obj.remove("ipam");
            }
        }
    }
    check_types(&value)?;
    let raw: RawConf = serde_json::from_value(value).map_err(|e| {
        err(
            code::DECODE,
            format!("cannot decode network configuration: {e}"),
        )
    })?;
    let version = Version::parse(&raw.cni_version)?;
    let name = raw
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("name is missing"))?;
    // Where the state lives decides which files a root process reads and
    // removes: the node's choice. Accepted only as a restatement of it.
    if let Some(dir) = &raw.state_dir {
        if std::path::Path::new(dir) != std::path::Path::new(&policy.state_dir) {
            return Err(invalid(format!(
                "stateDir {dir:?} is not this node's state directory: it is node policy ({}), not part of a network configuration; remove the key",
                policy.origin
            )));
        }
    }
    let mut raw = raw;
    if teardown && raw.ipam.as_ref().is_some_and(|i| i.plugin == OWN_TYPE) {
        // ADD refused it, so nothing was leased: tear down without it rather
        // than fail a DEL the runtime would retry forever.
        raw.ipam = None;
    }
    if let Some(ipam) = &raw.ipam {
        if ipam.plugin.is_empty() || ipam.plugin.contains('/') || ipam.plugin.starts_with('.') {
            return Err(invalid(format!(
                "ipam type {:?} is not a plugin name",
                ipam.plugin
            )));
        }
        if ipam.plugin == OWN_TYPE {
            return Err(invalid(format!(
                "ipam type {OWN_TYPE:?} is this plugin itself, not an IPAM plugin"
            )));
        }
    }
    Ok(Decoded { raw, version, name })
}

impl Config {
    /// For DEL: only what tearing down needs (name, stateDir, ipam). A
    /// runtime may send DEL with a configuration ADD would refuse (Multus
    /// cannot recover the deviceID once the pod is gone); the attachment's
    /// record says what was made, so refusing would only leak it.
    pub fn parse_for_teardown(value: Value, policy: &NodePolicy) -> Result<Self> {
        let Decoded { raw, version, name } = decode(value, policy, true)?;
        // Not used by DEL (the record names the link), except to tell a
        // handover's DEL from a macvtap attachment's.
        let source = if raw.handover {
            Source::Handover {
                interface: raw.handover_interface.clone(),
                mode: MacvtapMode::Bridge,
            }
        } else {
            Source::Lower {
                device: String::new(),
                mode: MacvtapMode::Bridge,
                source_macs: Vec::new(),
            }
        };
        Ok(Config {
            version,
            name,
            source,
            link_in_container: raw.link_in_container,
            mtu: None,
            promisc: false,
            mac: None,
            owner: DEFAULT_OWNER,
            group: DEFAULT_OWNER,
            policy: policy.clone(),
            ipam: raw.ipam,
            prev_result: None,
            valid_attachments: raw.valid_attachments,
        })
    }

    /// Decode and validate against the node's `policy`. `env` supplies
    /// CNI_ARGS (for `MAC=`).
    pub fn parse(value: Value, env: &Env, policy: &NodePolicy) -> Result<Self> {
        let cfg = Self::parse_keys(value, env, policy)?;
        // CNI_ARGS are read for `MAC=` only when no runtimeConfig.mac wins;
        // malformed ones are refused either way, as the reference does.
        env.parsed_args()?;
        // Checked last so that a bad value of another key is the one named.
        // Not for DEL's teardown: an attachment made before this check
        // existed must still come off.
        check_network_name(&cfg.name)?;
        Ok(cfg)
    }

    fn parse_keys(value: Value, env: &Env, policy: &NodePolicy) -> Result<Self> {
        let Decoded { raw, version, name } = decode(value, policy, false)?;
        if raw.handover {
            return Self::handover(raw, version, name, policy);
        }
        if raw.handover_interface.is_some() {
            return Err(invalid(
                "handoverInterface needs \"handover\": true (a chained handover)",
            ));
        }

        let lower = match (raw.master, raw.lower_device) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(format!(
                    "master {a:?} and lowerDevice {b:?} disagree"
                )))
            }
            (a, b) => a.or(b),
        };
        let mode = raw
            .mode
            .as_deref()
            .map(|m| m.parse::<MacvtapMode>().map_err(invalid))
            .transpose()?;
        let listed = raw.source_macs.unwrap_or_default();
        let mut source_macs: Vec<MacAddr> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for m in &listed {
            let mac = MacAddr::parse_unicast(m).map_err(|e| invalid(format!("sourceMacs: {e}")))?;
            if seen.insert(mac.0) {
                source_macs.push(mac);
            }
        }
        // Capped after de-duplication; thousands would also overflow a
        // netlink attribute.
        if source_macs.len() > policy.max_source_macs {
            return Err(invalid(format!(
                "sourceMacs lists {} distinct MACs; this node allows at most {} ({})",
                source_macs.len(),
                policy.max_source_macs,
                policy.origin
            )));
        }
        let source = match (raw.device_id.filter(|d| !d.is_empty()), lower) {
            (Some(_), Some(_)) => {
                return Err(invalid("deviceID and master/lowerDevice are exclusive: the device plugin's resource names the lower device"))
            }
            (None, None) => {
                return Err(invalid("need deviceID (device plugin mode) or master (standalone mode)"))
            }
            (Some(id), None) => {
                if mode.is_some() || !source_macs.is_empty() {
                    return Err(invalid("mode and sourceMacs come from the device plugin's resource when deviceID is set"));
                }
                Source::Device(id)
            }
            (None, Some(device)) => {
                if let Some(why) = crate::spec::invalid_ifname(&device) {
                    return Err(invalid(format!("master {device:?} {why}")));
                }
                let mode = mode.unwrap_or(MacvtapMode::Bridge);
                if mode == MacvtapMode::Source && source_macs.is_empty() {
                    return Err(invalid("mode source needs a non-empty sourceMacs list"));
                }
                if mode != MacvtapMode::Source && !source_macs.is_empty() {
                    return Err(invalid(format!("sourceMacs only apply to mode source, not {mode}")));
                }
                policy.allows_standalone(&device, mode).map_err(invalid)?;
                Source::Lower { device, mode, source_macs }
            }
        };

        let mtu = match raw.mtu {
            None => None,
            Some(m) if (68..=65535).contains(&m) => Some(m as u32),
            Some(m) => return Err(invalid(format!("mtu {m} is out of range (68..65535)"))),
        };

        // Precedence: runtimeConfig.mac, then CNI_ARGS MAC=, then `mac`.
        let mac = if let Some(m) = raw.runtime_config.mac.as_deref() {
            Some(
                MacAddr::parse_unicast(m)
                    .map_err(|e| invalid(format!("runtimeConfig.mac: {e}")))?,
            )
        } else if let Some((_, m)) = env
            .parsed_args()?
            .into_iter()
            .rev()
            .find(|(k, _)| *k == "MAC")
        {
            Some(
                MacAddr::parse_unicast(m)
                    .map_err(|e| err(code::INVALID_ENVIRONMENT, format!("CNI_ARGS MAC: {e}")))?,
            )
        } else if let Some(m) = raw.mac.as_deref() {
            Some(MacAddr::parse_unicast(m).map_err(|e| invalid(format!("mac: {e}")))?)
        } else {
            None
        };

        Ok(Config {
            version,
            name,
            source,
            link_in_container: raw.link_in_container,
            mtu,
            promisc: raw.promisc_mode,
            mac,
            owner: id_from(raw.owner, "owner")?,
            group: id_from(raw.group, "group")?,
            policy: policy.clone(),
            ipam: raw.ipam,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }
}

impl Config {
    /// A chained handover's configuration. What would make a macvtap of
    /// its own (a lower device, a device, IPAM, MTU, promiscuous mode) is
    /// refused: the container interface and its addresses come from
    /// `prevResult`. The guest's MAC is the `mac` key's or generated: a
    /// runtime's MAC (CNI_ARGS `MAC=`, `runtimeConfig.mac`) belongs to the
    /// previous plugin's interface and is not used here.
    fn handover(raw: RawConf, version: Version, name: String, policy: &NodePolicy) -> Result<Self> {
        let mut clash: Vec<&str> = Vec::new();
        let keys = [
            ("deviceID", raw.device_id.is_some()),
            ("master", raw.master.is_some()),
            ("lowerDevice", raw.lower_device.is_some()),
            ("ipam", raw.ipam.is_some()),
            ("sourceMacs", raw.source_macs.is_some()),
            ("linkInContainer", raw.link_in_container),
            ("mtu", raw.mtu.is_some()),
            ("promiscMode", raw.promisc_mode),
        ];
        for (key, set) in keys {
            if set {
                clash.push(key);
            }
        }
        if !clash.is_empty() {
            return Err(invalid(format!(
                "{}: not for \"handover\": true, which takes the container interface and its addresses from prevResult (remove {})",
                clash.join(", "),
                if clash.len() == 1 { "it" } else { "them" }
            )));
        }
        let mode = raw
            .mode
            .as_deref()
            .map(|m| m.parse::<MacvtapMode>().map_err(invalid))
            .transpose()?
            .unwrap_or(MacvtapMode::Bridge);
        if matches!(mode, MacvtapMode::Source | MacvtapMode::Passthru) {
            return Err(invalid(format!(
                "mode {mode} cannot hand over an identity: use bridge (the default), vepa or private"
            )));
        }
        if let Some(ifname) = &raw.handover_interface {
            if let Some(why) = crate::spec::invalid_ifname(ifname) {
                return Err(invalid(format!("handoverInterface {ifname:?} {why}")));
            }
        }
        let mac = raw
            .mac
            .as_deref()
            .map(|m| MacAddr::parse_unicast(m).map_err(|e| invalid(format!("mac: {e}"))))
            .transpose()?;
        Ok(Config {
            version,
            name,
            source: Source::Handover {
                interface: raw.handover_interface,
                mode,
            },
            link_in_container: false,
            mtu: None,
            promisc: false,
            mac,
            owner: id_from(raw.owner, "owner")?,
            group: id_from(raw.group, "group")?,
            policy: policy.clone(),
            ipam: None,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }
}

/// Everything the plugin derives from untrusted input before it touches
/// the system: the configuration bytes, CNI_ARGS, CNI_IFNAME and
/// CNI_CONTAINERID, and a result a previous plugin or IPAM plugin printed.
/// Never panics; the fuzz targets and their corpus replay call this.
pub fn parse_untrusted(
    config: &[u8],
    args: &str,
    ifname: &str,
    container_id: &str,
) -> Result<Config> {
    let env = Env {
        args: args.to_string(),
        ifname: ifname.to_string(),
        container_id: container_id.to_string(),
        ..Env::default()
    };
    env.require_ifname()?;
    env.require_container_id()?;
    let (value, _) = peek_version(config)?;
    // The fuzz targets explore every mode: a policy that allows them all.
    let policy = NodePolicy {
        allow_source_mode: true,
        ..NodePolicy::default()
    };
    let cfg = Config::parse(value, &env, &policy)?;
    if let Some(prev) = &cfg.prev_result {
        let result = crate::spec::CniResult::parse(prev)?;
        // Render it in every version: the output path must hold up too.
        for v in [Version::V030, Version::V040, Version::V100, Version::V110] {
            let _ = result.to_json(v);
        }
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value, args: &str) -> Result<Config> {
        let env = Env {
            args: args.into(),
            ..Env::default()
        };
        Config::parse(v, &env, &NodePolicy::default())
    }

    #[test]
    fn upstream_configs_parse() {
        let c = parse(json!({"cniVersion":"0.3.1","name":"dataplane","type":"macvtap","mtu":1500,"deviceID":"dataplane-1"}), "").unwrap();
        assert_eq!(c.source, Source::Device("dataplane-1".into()));
        assert_eq!((c.owner, c.group, c.mtu), (107, 107, Some(1500)));
        let c = parse(
            json!({"cniVersion":"1.0.0","name":"n","lowerDevice":"eth0"}),
            "",
        )
        .unwrap();
        assert!(matches!(
            c.source,
            Source::Lower {
                mode: MacvtapMode::Bridge,
                ..
            }
        ));
    }

    #[test]
    fn malformed_cni_args_are_refused_whichever_mac_wins() {
        let conf = json!({"cniVersion":"1.0.0","name":"n","master":"eth0",
                          "runtimeConfig":{"mac":"02:00:00:00:00:01"}});
        let e = parse(conf.clone(), "IgnoreUnknown=1;garbage").expect_err("a pair without =");
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
        // A MAC= that loses to runtimeConfig.mac is not read.
        let c = parse(conf, "IgnoreUnknown=1;MAC=zz").expect("losing MAC= unread");
        assert_eq!(
            c.mac.map(|m| m.to_string()).as_deref(),
            Some("02:00:00:00:00:01")
        );
    }

    #[test]
    fn network_names_follow_the_spec() {
        let with_name = |name: &str| {
            parse(
                json!({"cniVersion":"1.0.0","name":name,"master":"eth0"}),
                "",
            )
        };
        for good in ["n", "7", "dataplane", "vm-net_1.0", "A.b-C_d"] {
            assert_eq!(with_name(good).expect(good).name, good);
        }
        for bad in [
            "-n", ".n", "_n", "a b", "a/b", "a:b", "n\u{1b}", "né", "a\nb",
        ] {
            let e = with_name(bad).expect_err(bad);
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad}");
        }
        // Another bad key is named first.
        let e = parse(
            json!({"cniVersion":"1.0.0","name":"a b","master":"eth0","mtu":5}),
            "",
        )
        .expect_err("mtu 5");
        assert!(e.msg.contains("mtu"), "{}", e.msg);
        // DEL tears down without an ipam section that has no plugin name
        // (ADD refused it: nothing was leased).
        for ipam in [json!({}), json!({"type": ""}), json!({"type": null})] {
            let conf = json!({"cniVersion":"1.0.0","name":"n","ipam":ipam});
            assert!(parse(conf.clone(), "").is_err(), "ADD refuses {ipam}");
            let c = Config::parse_for_teardown(conf, &NodePolicy::default()).expect("teardown");
            assert!(c.ipam.is_none(), "{ipam}");
        }
        // DEL tears down whatever the name.
        let c = Config::parse_for_teardown(
            json!({"cniVersion":"1.0.0","name":"a b"}),
            &NodePolicy::default(),
        )
        .expect("teardown");
        assert_eq!(c.name, "a b");
    }

    #[test]
    fn macs_in_go_forms() {
        // The forms themselves: macvtap_net's MacAddr tests.
        let dotted =
            json!({"cniVersion":"1.0.0","name":"n","master":"eth0","mac":"0200.0000.0005"});
        assert_eq!(
            parse(dotted, "").unwrap().mac.unwrap().to_string(),
            "02:00:00:00:00:05"
        );
    }

    #[test]
    fn mac_precedence() {
        let conf = json!({"cniVersion":"1.0.0","name":"n","master":"eth0","mac":"02:00:00:00:00:03",
                          "runtimeConfig":{"mac":"02:00:00:00:00:01"}});
        let args = "IgnoreUnknown=1;MAC=02:00:00:00:00:02";
        assert_eq!(
            parse(conf.clone(), args).unwrap().mac.unwrap().to_string(),
            "02:00:00:00:00:01"
        );
        let mut c = conf.clone();
        c.as_object_mut().unwrap().remove("runtimeConfig");
        assert_eq!(
            parse(c.clone(), args).unwrap().mac.unwrap().to_string(),
            "02:00:00:00:00:02"
        );
        assert_eq!(
            parse(c, "").unwrap().mac.unwrap().to_string(),
            "02:00:00:00:00:03"
        );
    }

    #[test]
    fn bad_values_get_their_codes() {
        let cases = [
            (
                json!({"cniVersion":"1.0.0","name":"n","master":"eth0","mode":"nat"}),
                "",
                code::INVALID_CONFIG,
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","master":"eth0","mtu":0}),
                "",
                code::INVALID_CONFIG,
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","master":"eth0","mtu":"1500"}),
                "",
                code::DECODE,
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n"}),
                "",
                code::INVALID_CONFIG,
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","master":"eth0","deviceID":"a-1"}),
                "",
                code::INVALID_CONFIG,
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","master":"eth0","mode":"source"}),
                "",
                code::INVALID_CONFIG,
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","master":"eth0","sourceMacs":["02:00:00:00:00:01"]}),
                "",
                code::INVALID_CONFIG,
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","master":"eth0","owner":-1}),
                "",
                code::INVALID_CONFIG,
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","master":"eth0","stateDir":"rel"}),
                "",
                code::INVALID_CONFIG,
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","master":"eth0","stateDir":"/proc/1/root/var/lib/macvtap"}),
                "",
                code::INVALID_CONFIG,
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","master":"eth0","ipam":{"type":"macvtap"}}),
                "",
                code::INVALID_CONFIG,
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","master":"eth0","mode":"source","sourceMacs":["02:00:00:00:00:01"]}),
                "",
                code::INVALID_CONFIG,
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","master":"eth0","mac":"01:00:00:00:00:01"}),
                "",
                code::INVALID_CONFIG,
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","master":"eth0"}),
                "MAC=00:00:00:00:00:00",
                code::INVALID_ENVIRONMENT,
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","master":"eth0","ipam":{"type":"../x"}}),
                "",
                code::INVALID_CONFIG,
            ),
            (
                json!({"cniVersion":"9.9.9","name":"n","master":"eth0"}),
                "",
                code::INCOMPATIBLE_VERSION,
            ),
        ];
        for (conf, args, want) in cases {
            let got = parse(conf.clone(), args).unwrap_err();
            assert_eq!(got.code, want, "{conf} -> {got}");
        }
    }

    #[test]
    fn handover_takes_its_own_keys_and_refuses_what_makes_no_sense() {
        let base = json!({"cniVersion":"1.0.0","name":"n","type":"macvtap","handover":true});
        let c = parse(base.clone(), "MAC=02:00:00:00:00:02").unwrap();
        assert_eq!(
            c.source,
            Source::Handover {
                interface: None,
                mode: MacvtapMode::Bridge
            }
        );
        // A runtime's MAC is the previous plugin's interface's, not the guest's.
        assert_eq!(c.mac, None);
        let mut named = base.clone();
        named["handoverInterface"] = "net1".into();
        named["mac"] = "02:00:00:00:00:05".into();
        named["mode"] = "vepa".into();
        let c = parse(named, "").unwrap();
        assert_eq!(
            c.source,
            Source::Handover {
                interface: Some("net1".into()),
                mode: MacvtapMode::Vepa
            }
        );
        assert_eq!(c.mac.unwrap().to_string(), "02:00:00:00:00:05");
        for (key, value) in [
            ("master", json!("eth0")),
            ("lowerDevice", json!("eth0")),
            ("deviceID", json!("a-1")),
            ("ipam", json!({"type":"host-local"})),
            ("linkInContainer", json!(true)),
            ("mtu", json!(1400)),
            ("promiscMode", json!(true)),
            ("mode", json!("passthru")),
            ("mode", json!("source")),
            ("mac", json!("01:00:5e:00:00:01")),
            ("handoverInterface", json!("a/b")),
        ] {
            let mut conf = base.clone();
            conf[key] = value.clone();
            let got = parse(conf, "").unwrap_err();
            assert_eq!(got.code, code::INVALID_CONFIG, "{key}={value}: {got}");
        }
        let mut conf = base.clone();
        conf["handover"] = "yes".into();
        assert_eq!(parse(conf, "").unwrap_err().code, code::DECODE);
        // handoverInterface alone is a mistake, not a silent standalone config.
        let conf =
            json!({"cniVersion":"1.0.0","name":"n","master":"eth0","handoverInterface":"eth0"});
        assert_eq!(parse(conf, "").unwrap_err().code, code::INVALID_CONFIG);
        // DEL tells a handover from an attachment even from a config ADD refuses.
        let mut conf = base;
        conf["master"] = "eth0".into();
        let c = Config::parse_for_teardown(conf, &NodePolicy::default()).unwrap();
        assert!(matches!(c.source, Source::Handover { .. }));
    }
}
