//! The bad-input corpus: hostile and broken input of every kind, table by
//! table, against the real binary in a lab (NODE with `up0`, POD).
//!
//! Every case must be refused with the code docs/cni-plugin.md promises, as
//! a well-formed error (exit status 1, JSON on stdout with `cniVersion`, an
//! integer `code` and a `msg` that names what is wrong), without a panic,
//! within a time limit, and leave nothing behind: no macvtap in NODE or
//! POD, no file under `<stateDir>/pods`, no device node anywhere under the
//! lab's directory, no IPAM lease. The DEL a runtime sends after a failed
//! ADD is run too and must not panic, hang or leave anything either.
//!
//! Each table is one test (so each failure list names its table);
//! `corpus_size` counts the cases: `cargo test -p macvtap-cni --test
//! bad_input_corpus -- --nocapture` prints the counts.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use common::*;
use macvtap_testkit::STATE_DIR_ENV;
use serde_json::{json, Value};

/// No single run may take longer (the slowest legitimate one, with an
/// IPAM plugin and a rollback, takes well under a second).
const RUN_LIMIT: Duration = Duration::from_secs(10);

/// One row: an invocation, the codes the contract allows, and words of
/// which the error message must contain at least one (case-insensitive),
/// so that it says *what* is wrong.
struct Case {
    label: String,
    plugin: Plugin,
    codes: &'static [i64],
    words: Vec<String>,
}

/// A table under construction, bound to its lab.
struct Table<'a> {
    lab: &'a Lab,
    cases: Vec<Case>,
}

impl<'a> Table<'a> {
    fn new(lab: &'a Lab) -> Table<'a> {
        Table {
            lab,
            cases: Vec::new(),
        }
    }

    /// The lab's standalone config (cniVersion 1.0.0, master up0).
    fn base(&self) -> Value {
        self.lab.config("1.0.0")
    }

    /// `base` with `patch`'s keys set (JSON null removes the key).
    fn patched(&self, base: Value, patch: Value) -> Value {
        let mut config = base;
        let obj = config.as_object_mut().expect("config is an object");
        for (k, v) in patch.as_object().expect("patch is an object") {
            if v.is_null() {
                obj.remove(k);
            } else {
                obj.insert(k.clone(), v.clone());
            }
        }
        config
    }

    /// ADD of the lab's standalone config with `patch` applied.
    fn patch(
        &mut self,
        label: impl Into<String>,
        patch: Value,
        codes: &'static [i64],
        words: &[&str],
    ) {
        let config = self.patched(self.base(), patch);
        let plugin = self.lab.plugin("ADD", &config);
        self.push(label, plugin, codes, words);
    }

    /// ADD with raw stdin bytes.
    fn stdin(
        &mut self,
        label: impl Into<String>,
        bytes: impl Into<Vec<u8>>,
        codes: &'static [i64],
        words: &[&str],
    ) {
        let plugin = self.lab.plugin("ADD", &self.base()).stdin(bytes);
        self.push(label, plugin, codes, words);
    }

    /// ADD of the lab's standalone config, the invocation changed by `f`.
    fn env(
        &mut self,
        label: impl Into<String>,
        f: impl FnOnce(Plugin) -> Plugin,
        codes: &'static [i64],
        words: &[&str],
    ) {
        let plugin = f(self.lab.plugin("ADD", &self.base()));
        self.push(label, plugin, codes, words);
    }

    fn push(
        &mut self,
        label: impl Into<String>,
        plugin: Plugin,
        codes: &'static [i64],
        words: &[&str],
    ) {
        let label = label.into();
        assert!(
            !self.cases.iter().any(|c| c.label == label),
            "duplicate case label {label:?}"
        );
        self.cases.push(Case {
            label,
            plugin,
            codes,
            words: words.iter().map(|w| w.to_string()).collect(),
        });
    }
}

/// A string of `n` copies of `c`.
fn long(c: char, n: usize) -> String {
    std::iter::repeat_n(c, n).collect()
}

/// At most `n` characters of `s`, for messages.
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let head: String = s.chars().take(n).collect();
        format!("{head}... ({} bytes)", s.len())
    }
}

/// Everything a refused call could have left: [`Lab::leftovers`] plus
/// device nodes anywhere under the lab's directory (a path traversal
/// would put them outside the stateDir).
fn leftovers(lab: &Lab) -> Vec<String> {
    let mut left = lab.leftovers();
    for f in files_under(lab.dir.path()) {
        if DeviceNode::stat(&f).is_ok_and(|d| d.is_char_device) {
            let s = format!("device node {}", f.display());
            if !left.contains(&s) {
                left.push(s);
            }
        }
    }
    left
}

/// Removes what a failed case left, so the following rows start clean.
fn scrub(lab: &Lab) {
    for ns in [&lab.pod, &lab.node] {
        for l in ns.macvtaps() {
            let _ = ns.ip(&["link", "del", &l.name]);
        }
    }
    for sub in ["pods", "dev"] {
        let _ = fs::remove_dir_all(lab.state_dir().join(sub));
    }
    let _ = fs::remove_dir_all(lab.ipam_dir());
    for f in files_under(lab.dir.path()) {
        if DeviceNode::stat(&f).is_ok_and(|d| d.is_char_device) {
            let _ = fs::remove_file(&f);
        }
    }
}

/// Runs `plugin` with the time limit; a hang (or a runner panic) is
/// reported as text instead of ending the table.
fn run_limited(plugin: &Plugin) -> Result<PluginOutput, String> {
    let p = plugin.clone().timeout(RUN_LIMIT);
    catch_unwind(AssertUnwindSafe(|| p.run())).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the runner panicked".into())
    })
}

fn describe(out: &PluginOutput) -> String {
    format!(
        "exit {:?} after {:?}\n    stdout: {}\n    stderr: {}",
        out.exit_code,
        out.elapsed,
        cut(out.stdout.trim(), 400),
        cut(out.stderr.trim(), 400)
    )
}

/// Checks one case; returns its problems (empty when it passed).
fn check_case(lab: &Lab, case: &Case) -> Vec<String> {
    let mut problems = Vec::new();
    let label = cut(&case.label, 120);
    match run_limited(&case.plugin) {
        Err(e) => problems.push(format!("{label}: {e}")),
        Ok(out) => {
            match out.error_code() {
                Err(e) => problems.push(format!("{label}: {}", cut(&e, 1200))),
                Ok(code) if !case.codes.contains(&code) => problems.push(format!(
                    "{label}: expected code {:?}, got {code}\n    {}",
                    case.codes,
                    describe(&out)
                )),
                Ok(_) => {
                    let json = out.json.clone().unwrap_or_default();
                    let text = format!(
                        "{} {}",
                        json["msg"].as_str().unwrap_or_default(),
                        json["details"].as_str().unwrap_or_default()
                    )
                    .to_lowercase();
                    if !case.words.iter().any(|w| text.contains(&w.to_lowercase())) {
                        problems.push(format!(
                            "{label}: the message names none of {:?}\n    {}",
                            case.words,
                            describe(&out)
                        ));
                    }
                }
            }
            let left = leftovers(lab);
            if !left.is_empty() {
                problems.push(format!(
                    "{label}: ADD left behind {left:?}\n    {}",
                    describe(&out)
                ));
                scrub(lab);
            }
        }
    }
    // The runtime's DEL after a failed ADD: decided cleanly either way.
    let del = case.plugin.clone().command("DEL");
    match run_limited(&del) {
        Err(e) => problems.push(format!("{label} (the DEL after it): {e}")),
        Ok(out) => {
            let fine = (out.exit_code == Some(0) && !out.panicked()) || out.error_code().is_ok();
            if !fine {
                problems.push(format!(
                    "{label} (the DEL after it): neither success nor a well-formed error\n    {}",
                    describe(&out)
                ));
            }
            let left = leftovers(lab);
            if !left.is_empty() {
                problems.push(format!("{label} (the DEL after it): left behind {left:?}"));
                scrub(lab);
            }
        }
    }
    problems
}

/// Runs a table; panics listing every failing row.
fn run_table(name: &str, lab: &Lab, cases: Vec<Case>) {
    assert_eq!(
        lab.leftovers(),
        Vec::<String>::new(),
        "the lab is not clean"
    );
    let started = Instant::now();
    let mut failures = Vec::new();
    for case in &cases {
        failures.extend(check_case(lab, case));
    }
    println!(
        "bad-input corpus, {name}: {} cases in {:?}, {} problem(s)",
        cases.len(),
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{name}: {} problem(s) in {} cases:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------- tables

/// Broken and hostile JSON on stdin: code 6.
fn json_cases(t: &mut Table) {
    const W: &[&str] = &["json", "configuration"];
    let valid = serde_json::to_string(&t.base()).expect("serialize");
    let cut_at = valid.len() / 2;
    t.stdin("truncated in the middle", &valid[..cut_at], &[6], W);
    t.stdin(
        "truncated after a key",
        r#"{"cniVersion": "1.0.0", "name": "#,
        &[6],
        W,
    );
    t.stdin(
        "truncated inside a string",
        r#"{"cniVersion": "1.0"#,
        &[6],
        W,
    );
    t.stdin("only an opening brace", "{", &[6], W);
    t.stdin("empty stdin", "", &[6], W);
    t.stdin("only whitespace", " \n\t\r\n ", &[6], W);
    t.stdin(
        "100 000 nested arrays",
        long('[', 100_000) + &long(']', 100_000),
        &[6],
        W,
    );
    t.stdin(
        "100 000 unclosed nested arrays",
        long('[', 100_000),
        &[6],
        W,
    );
    let mut deep = valid.trim_end_matches('}').to_string();
    deep.push_str(r#","ipam":"#);
    deep.push_str(&r#"{"a":"#.repeat(20_000));
    deep.push('1');
    deep.push_str(&long('}', 20_001));
    t.stdin("20 000 nested objects under ipam", deep, &[6], W);
    t.stdin(
        "a NUL byte between members",
        "{\"cniVersion\":\"1.0.0\",\0\"name\":\"n\"}",
        &[6],
        W,
    );
    t.stdin("a single NUL byte", "\0", &[6], W);
    t.stdin(
        "a raw NUL byte inside a string",
        valid.replacen("testnet", "test\0net", 1),
        &[6],
        W,
    );
    t.stdin("not UTF-8 at all", vec![0xff, 0xfe, 0xfd, 0x80], &[6], W);
    let mut bad_utf8 = valid.clone().into_bytes();
    let at = valid.find("testnet").expect("name in config");
    bad_utf8[at] = 0xc3; // a lead byte followed by ASCII: invalid UTF-8
    t.stdin("invalid UTF-8 inside the name", bad_utf8, &[6], W);
    t.stdin(
        "UTF-16 encoded",
        valid
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect::<Vec<u8>>(),
        &[6],
        W,
    );
    t.stdin("top-level array", format!("[{valid}]"), &[6], W);
    t.stdin("top-level number", "42", &[6], W);
    t.stdin("top-level string", r#""ADD""#, &[6], W);
    t.stdin("top-level null", "null", &[6], W);
    t.stdin("top-level true", "true", &[6], W);
    t.stdin("trailing garbage", format!("{valid} x"), &[6], W);
    t.stdin("two objects", format!("{valid}{valid}"), &[6], W);
    t.stdin("a comment", format!("// net\n{valid}"), &[6], W);
    t.stdin("single-quoted strings", valid.replace('"', "'"), &[6], W);
    t.stdin(
        "NaN as a number",
        valid.replacen('{', "{\"mtu\": NaN, ", 1),
        &[6],
        W,
    );
    t.stdin("16 MB of garbage", long('x', 16 << 20), &[6], W);
}

/// A value of the wrong JSON type for each key: code 6, and the message
/// names the key.
fn type_cases(t: &mut Table) {
    let cases: Vec<(&str, Value, &'static [&'static str])> = vec![
        ("cniVersion", json!(1.0), &["cniVersion"]),
        ("name", json!(5), &["name"]),
        ("name", json!(["testnet"]), &["name"]),
        ("type", json!(5), &["type"]),
        ("deviceID", json!(7), &["deviceID"]),
        ("master", json!(5), &["master"]),
        ("master", json!(["up0"]), &["master"]),
        ("lowerDevice", json!(true), &["lowerDevice"]),
        ("mode", json!(1), &["mode"]),
        ("sourceMacs", json!([1, 2]), &["sourceMacs"]),
        (
            "sourceMacs",
            json!({"a": "02:00:00:00:00:01"}),
            &["sourceMacs"],
        ),
        ("linkInContainer", json!("true"), &["linkInContainer"]),
        ("linkInContainer", json!(1), &["linkInContainer"]),
        ("mtu", json!(1500.5), &["mtu"]),
        ("mtu", json!(true), &["mtu"]),
        ("mtu", json!([1500]), &["mtu"]),
        ("promiscMode", json!(1), &["promiscMode"]),
        ("promiscMode", json!("true"), &["promiscMode"]),
        ("mac", json!(2), &["mac"]),
        ("mac", json!(["02:00:00:00:00:01"]), &["mac"]),
        ("owner", json!(1.5), &["owner"]),
        ("owner", json!(true), &["owner"]),
        ("group", json!("107"), &["group"]),
        ("group", json!([]), &["group"]),
        ("stateDir", json!(5), &["stateDir"]),
        ("stateDir", json!(["/tmp"]), &["stateDir"]),
        ("ipam", json!("host-local"), &["ipam"]),
        ("ipam", json!([]), &["ipam"]),
        ("ipam", json!({}), &["ipam", "type"]),
        ("ipam", json!({"type": 5}), &["ipam", "type"]),
        ("runtimeConfig", json!("mac"), &["runtimeConfig"]),
        (
            "runtimeConfig",
            json!({"mac": 5}),
            &["runtimeConfig", "mac"],
        ),
        ("prevResult", json!("x"), &["prevResult", "result"]),
        (
            "prevResult",
            json!({"interfaces": 5}),
            &["prevResult", "result"],
        ),
        (
            "cni.dev/valid-attachments",
            json!("x"),
            &["valid-attachments"],
        ),
    ];
    for (key, value, words) in cases {
        let mut patch = json!({});
        patch[key] = value.clone();
        // ipam {} means "type" is missing: a structural (6) or value (7) problem.
        let codes: &'static [i64] = if key == "ipam" && value == json!({}) {
            &[6, 7]
        } else {
            &[6]
        };
        t.patch(format!("{key}: {value}"), patch, codes, words);
    }
}

/// Values of the right type that the contract refuses: code 7 (1 for
/// versions).
fn value_cases(t: &mut Table) {
    const MTU: &[&str] = &["mtu"];
    for mtu in [json!(0), json!(67), json!(65536), json!(70000), json!(-1)] {
        t.patch(format!("mtu {mtu}"), json!({ "mtu": mtu }), &[7], MTU);
    }
    t.patch("mtu i64::MAX", json!({"mtu": i64::MAX}), &[7], MTU);
    t.patch("mtu i64::MIN", json!({"mtu": i64::MIN}), &[7], MTU);
    // Beyond every integer type: JSON has no such int, either code is fair.
    t.stdin(
        "mtu 10^30",
        serde_json::to_string(&t.base())
            .expect("serialize")
            .replacen('{', "{\"mtu\": 1000000000000000000000000000000, ", 1),
        &[6, 7],
        MTU,
    );
    for (key, v) in [
        ("owner", json!(4294967295u64)),
        ("owner", json!(-1)),
        ("owner", json!(i64::MIN)),
        ("owner", json!(99_999_999_999u64)),
        ("group", json!(4294967295u64)),
        ("group", json!(4294967296u64)),
        ("group", json!(-107)),
    ] {
        let mut patch = json!({});
        patch[key] = v.clone();
        let words: &'static [&'static str] = if key == "owner" {
            &["owner"]
        } else {
            &["group"]
        };
        t.patch(format!("{key} {v}"), patch, &[7], words);
    }
    const MODE: &[&str] = &["mode"];
    for mode in [
        "bridgey",
        "BRIDGE",
        "",
        " bridge",
        "bridge\0",
        "macvlan",
        "passthrough",
        "vepa,bridge",
    ] {
        t.patch(
            format!("mode {mode:?}"),
            json!({ "mode": mode }),
            &[7],
            MODE,
        );
    }
    t.patch(
        "mode of 1 MB",
        json!({"mode": long('b', 1 << 20)}),
        &[7],
        MODE,
    );
    const VERSION: &[&str] = &["version"];
    for v in [
        "0.2.0", "0.1.0", "2.0.0", "", "1.0", "v1.0.0", "1.0.0 ", "1.0.0\0",
    ] {
        t.patch(
            format!("cniVersion {v:?}"),
            json!({"cniVersion": v}),
            &[1],
            VERSION,
        );
    }
    t.patch(
        "cniVersion of 1 MB",
        json!({"cniVersion": long('1', 1 << 20)}),
        &[1],
        VERSION,
    );
    t.patch(
        "cniVersion missing",
        json!({"cniVersion": null}),
        &[1],
        VERSION,
    );
    t.patch("name empty", json!({"name": ""}), &[7], &["name"]);
    // The spec's rule for names: a letter or digit, then letters, digits,
    // '_', '.', '-'. Names reach records and logs, never paths.
    for (name, why) in [
        ("../../etc", "a path upwards"),
        ("a/b", "a slash"),
        ("..", "dot-dot"),
        ("-n", "a leading dash"),
        ("a b", "a space"),
        ("n\u{1b}[31m", "a terminal escape"),
        ("n\n", "a newline"),
    ] {
        t.patch(
            format!("name {name:?} ({why})"),
            json!({ "name": name }),
            &[7],
            &["name"],
        );
    }
    t.patch("name missing", json!({"name": null}), &[6, 7], &["name"]);
    const LOWER_W: &[&str] = &["master", "lower"];
    for master in [
        "",
        ".",
        "..",
        "../../x",
        "a/b",
        "up0:1",
        "up 0",
        "up0\0",
        "abcdefghijklmnop",
    ] {
        t.patch(
            format!("master {master:?}"),
            json!({ "master": master }),
            &[7],
            LOWER_W,
        );
    }
    t.patch(
        "master of 1 MB",
        json!({"master": long('u', 1 << 20)}),
        &[7],
        LOWER_W,
    );
    t.patch(
        "master and lowerDevice disagree",
        json!({"lowerDevice": "lan0"}),
        &[7],
        LOWER_W,
    );
    t.patch(
        "neither master nor deviceID",
        json!({"master": null}),
        &[7],
        &["deviceID", "master"],
    );
    t.patch(
        "an empty deviceID and no master",
        json!({"master": null, "deviceID": ""}),
        &[7],
        &["deviceID", "master"],
    );
    t.patch(
        "deviceID and master",
        json!({"deviceID": "dataplane-0"}),
        &[7],
        &["deviceID", "master"],
    );
    t.patch(
        "deviceID and mode",
        json!({"master": null, "deviceID": "dataplane-0", "mode": "vepa"}),
        &[7],
        &["mode"],
    );
    // 100: the lower device does not exist (in NODE; lan0 is in LAN).
    t.patch(
        "master names a link of another namespace",
        json!({"master": "lan0"}),
        &[100],
        &["lan0"],
    );
}

/// Bad MACs from each of the three sources: 7 from the configuration, 4
/// from CNI_ARGS.
fn mac_cases(t: &mut Table) {
    const MAC: &[&str] = &["mac"];
    let bad: Vec<(String, &str)> = vec![
        ("01:00:5e:00:00:01".into(), "multicast"),
        ("33:33:00:00:00:01".into(), "IPv6 multicast"),
        (
            "03:00:00:00:00:01".into(),
            "multicast, locally administered",
        ),
        ("00:00:00:00:00:00".into(), "all zero"),
        ("ff:ff:ff:ff:ff:ff".into(), "broadcast"),
        ("zz:00:00:00:00:01".into(), "not hex"),
        ("02:00:00:00:01".into(), "five octets"),
        ("02:00:00:00:00:01:02".into(), "seven octets"),
        ("02:00:00:00:00:0100".into(), "an octet too long"),
        ("02:00:00:00:00:1".into(), "an octet too short"),
        ("020000000001".into(), "no separators"),
        ("02-00:00:00:00:01".into(), "mixed separators"),
        ("0100.5e00.0001".into(), "multicast, Go's dotted form"),
        ("0000.0000.0000".into(), "all zero, Go's dotted form"),
        ("ffff.ffff.ffff".into(), "broadcast, Go's dotted form"),
        ("0200.0000".into(), "two dotted groups"),
        ("0200.0000.0001.0002".into(), "four dotted groups"),
        ("020.00000.0001".into(), "dotted groups of 3 and 5"),
        ("0200:0000.0001".into(), "dots mixed with a colon"),
        ("+2:00:00:00:00:01".into(), "a sign in an octet"),
        ("02:00:00:00:00:01 ".into(), "a trailing space"),
        ("".into(), "empty"),
        (
            format!("02:00:00:00:00:01{}", long('0', 100_000)),
            "100 kB long",
        ),
    ];
    for (mac, why) in &bad {
        let shown = cut(mac, 40);
        t.patch(
            format!("mac key {shown:?} ({why})"),
            json!({ "mac": mac }),
            &[7],
            MAC,
        );
        t.patch(
            format!("runtimeConfig.mac {shown:?} ({why})"),
            json!({"capabilities": {"mac": true}, "runtimeConfig": {"mac": mac}}),
            &[7],
            MAC,
        );
        let args = format!("IgnoreUnknown=1;MAC={mac}");
        t.env(
            format!("CNI_ARGS MAC={shown:?} ({why})"),
            |p| p.args(&args),
            &[4],
            MAC,
        );
    }
    t.patch(
        "mac key with a NUL",
        json!({"mac": "02:00:00:00:00:01\u{0}"}),
        &[7],
        MAC,
    );
    t.patch(
        "runtimeConfig.mac bad while the mac key is good",
        json!({"mac": "02:00:00:00:00:01", "runtimeConfig": {"mac": "01:00:00:00:00:01"}}),
        &[7],
        MAC,
    );
    let config = t.patched(t.base(), json!({"mac": "02:00:00:00:00:01"}));
    let plugin = t.lab.plugin("ADD", &config).args("MAC=ff:ff:ff:ff:ff:ff");
    t.push(
        "CNI_ARGS MAC= bad while the mac key is good",
        plugin,
        &[4],
        MAC,
    );
}

/// `sourceMacs` and `mode: source` misuse: code 7.
fn source_mac_cases(t: &mut Table) {
    const W: &[&str] = &["sourceMacs", "source"];
    let one = json!(["02:00:00:00:00:01"]);
    for mode in [
        None,
        Some("bridge"),
        Some("vepa"),
        Some("private"),
        Some("passthru"),
    ] {
        let mut patch = json!({ "sourceMacs": one });
        if let Some(m) = mode {
            patch["mode"] = json!(m);
        }
        t.patch(
            format!("sourceMacs with mode {}", mode.unwrap_or("(default)")),
            patch,
            &[7],
            W,
        );
    }
    t.patch(
        "mode source without sourceMacs",
        json!({"mode": "source"}),
        &[7],
        W,
    );
    t.patch(
        "mode source with an empty list",
        json!({"mode": "source", "sourceMacs": []}),
        &[7],
        W,
    );
    for (mac, why) in [
        ("01:00:5e:00:00:01", "multicast"),
        ("00:00:00:00:00:00", "all zero"),
        ("ff:ff:ff:ff:ff:ff", "broadcast"),
        ("02:00:00:00:00", "malformed"),
        ("", "empty"),
    ] {
        t.patch(
            format!("mode source with {why} {mac:?} in the list"),
            json!({"mode": "source", "sourceMacs": ["02:00:00:00:00:01", mac]}),
            &[7],
            W,
        );
    }
    t.patch(
        "sourceMacs with a deviceID",
        json!({"master": null, "deviceID": "dataplane-0", "sourceMacs": one}),
        &[7],
        W,
    );
}

/// deviceIDs that try to leave `<stateDir>/dev`, or that no resource
/// offers: 7 (malformed) or 102 (not offered); nothing is made anywhere.
fn device_id_cases(t: &mut Table) {
    write_resources(
        &t.lab.state_dir(),
        &[Resource::new("dataplane", LOWER, 4, 4096)],
    );
    const W: &[&str] = &["device"];
    let ids = [
        "../dataplane-0".to_string(),
        "../../../../etc/dataplane-0".into(),
        "dataplane-0/../../x".into(),
        "dataplane-1/..".into(),
        "./dataplane-1".into(),
        "/etc/passwd".into(),
        "..".into(),
        ".".into(),
        ".dataplane-1".into(),
        "-1".into(),
        "dataplane-1\0".into(),
        "dataplane-1 ".into(),
        "dataplane-١".into(),
        "dataplane-4294967296".into(),
        "dataplane-99999999999999999999".into(),
        "dataplane-01".into(),
        "dataplane-+1".into(),
        "dataplane--1".into(),
        "dataplane-4".into(),
        "nosuch-0".into(),
        format!("dataplane-{}", long('1', 1 << 20)),
    ];
    for id in ids {
        t.patch(
            format!("deviceID {:?}", cut(&id, 40)),
            json!({"master": null, "deviceID": id}),
            &[7, 102],
            W,
        );
    }
}

/// stateDirs: tenant input may only restate the node's state directory,
/// so every other path in a configuration is refused (7) before anything
/// is touched; and a node whose own state directory is unusable says so
/// (106; 7 for a path that is not absolute or climbs with `..`).
fn state_dir_cases(t: &mut Table) {
    const W: &[&str] = &["state"];
    let dir = t.lab.dir.path().to_path_buf();
    let file = dir.join("a-file");
    fs::write(&file, "").expect("write file");
    let dangling = dir.join("dangling");
    symlink(dir.join("nowhere/at/all"), &dangling).expect("symlink");
    let to_file = dir.join("to-file");
    symlink(&file, &to_file).expect("symlink");
    let to_state = dir.join("to-state");
    symlink(t.lab.state_dir(), &to_state).expect("symlink");
    let state = t.lab.state_dir().display().to_string();
    let not_paths = [
        String::new(),
        "state".into(),
        "./state".into(),
        "~/state".into(),
        format!("{state}/../../escape"),
        format!("{}/a/./../b", dir.display()),
        "/tmp/..".into(),
    ];
    let unusable = [
        ("a regular file", file.display().to_string()),
        (
            "below a regular file",
            file.join("sub").display().to_string(),
        ),
        ("a symlink to a file", to_file.display().to_string()),
        ("a dangling symlink", dangling.display().to_string()),
        ("a character device", "/dev/null".to_string()),
        ("below /dev/null", "/dev/null/state".to_string()),
    ];
    // In a configuration: anything but the node's own directory is 7.
    for s in not_paths
        .iter()
        .cloned()
        .chain(unusable.iter().map(|(_, s)| s.clone()))
        .chain([
            to_state.display().to_string(),
            "/proc/1/root/var/lib/macvtap".to_string(),
            format!("{state}/\u{0}x"),
            format!("{state}/{}", long('s', 5000)),
            format!("/{}", long('s', 1 << 20)),
        ])
    {
        let node_dir = state.clone();
        let config = t.patched(t.base(), json!({ "stateDir": s }));
        t.env(
            format!("stateDir {:?} in the configuration", cut(&s, 60)),
            move |p| p.env(STATE_DIR_ENV, node_dir).config(&config),
            &[7],
            &["stateDir", "node"],
        );
    }
    // The node's own: unusable paths are 106, non-paths 7.
    for s in not_paths {
        let config = t.patched(t.base(), json!({ "stateDir": null }));
        t.env(
            format!("node state dir {s:?}"),
            move |p| p.env(STATE_DIR_ENV, s).config(&config),
            &[7],
            W,
        );
    }
    for (why, s) in unusable {
        let config = t.patched(t.base(), json!({ "stateDir": null }));
        let shown = s.clone();
        t.env(
            format!("node state dir {why}"),
            move |p| p.env(STATE_DIR_ENV, s).config(&config),
            &[106],
            &["state", &shown],
        );
    }
}

/// The CNI_* environment: code 4 (3 for a namespace path that does not
/// exist).
fn env_cases(t: &mut Table) {
    const CMD: &[&str] = &["CNI_COMMAND"];
    t.env("CNI_COMMAND unset", |p| p.unset("CNI_COMMAND"), &[4], CMD);
    t.env("CNI_COMMAND empty", |p| p.command(""), &[4], CMD);
    for c in ["add", "ADD ", " ADD", "DELETE", "FROB", "ADD;DEL"] {
        t.env(format!("CNI_COMMAND {c:?}"), |p| p.command(c), &[4], CMD);
    }
    t.env(
        "CNI_COMMAND of 100 kB",
        |p| p.command(&long('A', 100_000)),
        &[4],
        CMD,
    );
    t.env(
        "CNI_COMMAND not UTF-8",
        |p| p.env_bytes("CNI_COMMAND", b"AD\xffD"),
        &[4],
        CMD,
    );

    const CID: &[&str] = &["CNI_CONTAINERID"];
    t.env(
        "CNI_CONTAINERID unset",
        |p| p.unset("CNI_CONTAINERID"),
        &[4],
        CID,
    );
    for id in [
        "".to_string(),
        "a/b".into(),
        "..".into(),
        ".".into(),
        "../../escape".into(),
        "/abs".into(),
        "-leading-dash".into(),
        ".hidden".into(),
        "a b".into(),
        "a\nb".into(),
        "ü".into(),
        long('c', 254),
        long('c', 100_000),
    ] {
        t.env(
            format!("CNI_CONTAINERID {:?}", cut(&id, 40)),
            |p| p.container_id(&id),
            &[4],
            CID,
        );
    }
    t.env(
        "CNI_CONTAINERID not UTF-8",
        |p| p.env_bytes("CNI_CONTAINERID", b"abc\xff"),
        &[4],
        CID,
    );

    const IF: &[&str] = &["CNI_IFNAME"];
    t.env("CNI_IFNAME unset", |p| p.unset("CNI_IFNAME"), &[4], IF);
    for name in [
        "",
        "abcdefghijklmnop",
        "a/b",
        "/",
        ".",
        "..",
        "a:b",
        "a b",
        "tab\t",
        "net1\n",
    ] {
        t.env(format!("CNI_IFNAME {name:?}"), |p| p.ifname(name), &[4], IF);
    }
    t.env(
        "CNI_IFNAME not UTF-8",
        |p| p.env_bytes("CNI_IFNAME", b"net\xff"),
        &[4],
        IF,
    );

    const NS: &[&str] = &["CNI_NETNS", "namespace", "netns"];
    let dir = t.lab.dir.path().to_path_buf();
    let file = dir.join("not-a-netns");
    fs::write(&file, "").expect("write file");
    let a_dir = dir.join("a-directory");
    fs::create_dir_all(&a_dir).expect("mkdir");
    let dangling = dir.join("dangling-netns");
    symlink(dir.join("nowhere"), &dangling).expect("symlink");
    t.env("CNI_NETNS unset", |p| p.unset("CNI_NETNS"), &[4], NS);
    t.env("CNI_NETNS empty", |p| p.netns(""), &[4], NS);
    let gone = format!("/run/netns/{}-gone", t.lab.prefix);
    t.env("CNI_NETNS does not exist", |p| p.netns(&gone), &[3], NS);
    t.env(
        "CNI_NETNS relative and missing",
        |p| p.netns("no-such-netns"),
        &[3],
        NS,
    );
    t.env(
        "CNI_NETNS a dangling symlink",
        |p| p.netns(&dangling),
        &[3],
        NS,
    );
    t.env("CNI_NETNS a regular file", |p| p.netns(&file), &[4], NS);
    t.env("CNI_NETNS a directory", |p| p.netns(&a_dir), &[4], NS);
    t.env("CNI_NETNS /dev/null", |p| p.netns("/dev/null"), &[4], NS);
    for kind in ["mnt", "uts", "ipc", "pid", "user", "cgroup"] {
        let path = format!("/proc/self/ns/{kind}");
        t.env(
            format!("CNI_NETNS a {kind} namespace"),
            |p| p.netns(&path),
            &[4],
            NS,
        );
    }
    t.env(
        "CNI_NETNS not UTF-8",
        |p| p.env_bytes("CNI_NETNS", b"/run/netns/\xff"),
        &[3, 4],
        NS,
    );

    const ARGS: &[&str] = &["CNI_ARGS"];
    for args in [
        "garbage",
        "IgnoreUnknown=1;;MAC",
        "K8S_POD_NAME",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE",
    ] {
        t.env(format!("CNI_ARGS {args:?}"), |p| p.args(args), &[4], ARGS);
    }
    t.env(
        "CNI_ARGS of 100 kB without '='",
        |p| p.args(&long('k', 100_000)),
        &[4],
        ARGS,
    );
    // Not UTF-8: refused, not read as empty (which would drop the MAC the
    // runtime asked for and attach with a random one).
    t.env(
        "CNI_ARGS not UTF-8, with a MAC",
        |p| {
            p.env_bytes(
                "CNI_ARGS",
                b"IgnoreUnknown=1;MAC=02:00:00:00:00:01;K8S_POD_NAME=\xff",
            )
        },
        &[4],
        ARGS,
    );
}

/// IPAM plugins that cannot be found or run (105), and IPAM types that
/// are not plugin names (7).
fn ipam_cases(t: &mut Table) {
    const W: &[&str] = &["ipam"];
    let bin = t.lab.bin_dir();
    let not_exec = bin.join("not-executable");
    fs::write(&not_exec, "#!/bin/sh\nexit 0\n").expect("write");
    fs::set_permissions(&not_exec, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::create_dir_all(bin.join("a-directory")).expect("mkdir");
    let crashes = t.lab.fake_ipam("crashes", &json!({}), 0);
    // Overwrite the fake with one that dies from a signal.
    fs::write(
        bin.join("crashes"),
        "#!/bin/sh\ncat >/dev/null\nkill -9 $$\n",
    )
    .expect("write");
    let garbage = bin.join("prints-garbage");
    fs::write(&garbage, "#!/bin/sh\ncat >/dev/null\necho 'not json'\n").expect("write");
    fs::set_permissions(&garbage, fs::Permissions::from_mode(0o755)).expect("chmod");
    let no_ips = t
        .lab
        .fake_ipam("no-ips", &json!({"cniVersion": "1.0.0"}), 0);

    for (why, ipam) in [
        ("an unknown plugin", json!({"type": "no-such-ipam"})),
        (
            "a file that is not executable",
            json!({"type": "not-executable"}),
        ),
        ("a directory", json!({"type": "a-directory"})),
        ("a plugin killed by a signal", crashes),
        (
            "a plugin that prints garbage",
            json!({"type": "prints-garbage"}),
        ),
        ("a plugin that returns no address", no_ips),
    ] {
        t.patch(format!("ipam: {why}"), json!({ "ipam": ipam }), &[105], W);
    }
    for ty in [
        "../../../../bin/true",
        "/bin/true",
        "sub/host-local",
        "",
        ".",
        "..",
        ".hidden",
    ] {
        t.patch(
            format!("ipam type {ty:?}"),
            json!({"ipam": {"type": ty}}),
            &[7],
            W,
        );
    }
    t.patch(
        "ipam type with a NUL",
        json!({"ipam": {"type": "host-local\u{0}"}}),
        &[7, 105],
        W,
    );
    let config = t.patched(t.base(), json!({"ipam": {"type": "host-local"}}));
    let plugin = t.lab.plugin("ADD", &config).unset("CNI_PATH");
    t.push("ipam without CNI_PATH", plugin, &[4], &["CNI_PATH"]);
}

/// Commands the configuration's version does not have, and CHECK without
/// what it needs.
fn command_cases(t: &mut Table) {
    let lab = t.lab;
    for (cmd, version) in [
        ("CHECK", "0.3.1"),
        ("CHECK", "0.3.0"),
        ("GC", "1.0.0"),
        ("STATUS", "0.4.0"),
    ] {
        let plugin = lab.plugin(cmd, &lab.config(version));
        t.push(
            format!("{cmd} with cniVersion {version}"),
            plugin,
            &[1],
            &["version"],
        );
    }
    let plugin = lab.plugin("CHECK", &lab.config("1.0.0"));
    t.push("CHECK without prevResult", plugin, &[7], &["prevResult"]);
    let mut with_prev = lab.config("1.0.0");
    with_prev["prevResult"] = json!({"cniVersion": "1.0.0", "interfaces": "x"});
    let plugin = lab.plugin("CHECK", &with_prev);
    t.push(
        "CHECK with a malformed prevResult",
        plugin,
        &[6, 7],
        &["prevResult", "result"],
    );
    let mut gc = lab.config("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": 5, "ifname": "net1"}]);
    let plugin = lab.plugin("GC", &gc);
    t.push(
        "GC with a malformed valid-attachments list",
        plugin,
        &[6],
        &["valid-attachments", "containerID"],
    );
}

type Builder = fn(&mut Table);

const TABLES: [(&str, Builder); 10] = [
    ("json", json_cases),
    ("types", type_cases),
    ("values", value_cases),
    ("macs", mac_cases),
    ("source_macs", source_mac_cases),
    ("device_ids", device_id_cases),
    ("state_dirs", state_dir_cases),
    ("environment", env_cases),
    ("ipam", ipam_cases),
    ("commands", command_cases),
];

fn table(name: &str) {
    let (_, build) = TABLES
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a table of that name");
    let lab = lab(&format!("corpus-{name}"));
    let mut t = Table::new(&lab);
    build(&mut t);
    let cases = t.cases;
    run_table(name, &lab, cases);
}

#[test]
fn corpus_json() {
    table("json");
}

#[test]
fn corpus_types() {
    table("types");
}

#[test]
fn corpus_values() {
    table("values");
}

#[test]
fn corpus_macs() {
    table("macs");
}

#[test]
fn corpus_source_macs() {
    table("source_macs");
}

#[test]
fn corpus_device_ids() {
    table("device_ids");
}

#[test]
fn corpus_state_dirs() {
    table("state_dirs");
}

#[test]
fn corpus_environment() {
    table("environment");
}

#[test]
fn corpus_ipam() {
    table("ipam");
}

#[test]
fn corpus_commands() {
    table("commands");
}

/// Counts the corpus (at least 50 distinct cases, the issue's floor) and
/// prints the count per table.
#[test]
fn corpus_size() {
    let lab = lab("corpus-size");
    let mut total = 0;
    let mut labels = std::collections::BTreeSet::new();
    for (name, build) in TABLES {
        let mut t = Table::new(&lab);
        build(&mut t);
        println!("bad-input corpus: table {name}: {} cases", t.cases.len());
        total += t.cases.len();
        for c in t.cases {
            assert!(
                labels.insert(format!("{name}/{}", c.label)),
                "duplicate case {name}/{}",
                c.label
            );
        }
    }
    println!("bad-input corpus: {total} cases in {} tables", TABLES.len());
    assert!(total >= 50, "only {total} bad-input cases");
}
