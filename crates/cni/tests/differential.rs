//! Differential test against the reference plugin: our `macvtap` and
//! `/usr/lib/cni/macvlan` (Debian's containernetworking-plugins) get the
//! same generated inputs over what they share (cniVersion, `name`,
//! `master`, `mtu`, `mac`, `runtimeConfig.mac`, `mode`, `ipam`, CNI_ARGS,
//! CNI_IFNAME, the other CNI_* variables) and must reach the same verdict:
//! both succeed (with the same MTU, mode and, when one was asked for, MAC
//! on the link; then both DEL), or both fail, with the same code when the
//! reference's code is one the CNI spec fixes (1..=99; its own errors are
//! all 999, which the spec does not define). Each single input also gets a
//! DEL alone (nothing to remove), judged the same way.
//!
//! Every disagreement must be listed in [`KNOWN`] with its reason (the same
//! list is in docs/cni-plugin.md, "Differences from the reference macvlan
//! plugin"); a new one fails the test, and so does a listed one that no
//! case shows any more.
//!
//! Inputs: every value of every dimension alone on a valid baseline, a few
//! [`INTERACTIONS`] ("singles", all judged directly), then seeded random
//! combinations. A combination that disagrees passes if each plugin reached
//! a verdict its own singles predict (success when all its singles succeed,
//! else the verdict of one of its failing singles): the disagreement is
//! then one of the singles', already judged, and which of two faults a
//! plugin reports first is not the spec's concern. Otherwise it must be in
//! [`KNOWN`] too.
//!
//! Run: `cargo test -p macvtap-cni --test differential -- --nocapture`
//! (root; 12 to 17 s on 2 shared cores).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::sync::Mutex;
use std::thread;
use std::time::Instant;

use common::*;
use serde_json::{json, Value};

/// The reference plugin.
const REFERENCE: &str = "/usr/lib/cni/macvlan";
/// Seed of the combination generator: the same cases on every run.
const SEED: u64 = 0x6d61_6376_7461_7031;
/// Random combinations on top of the singles.
const COMBINATIONS: usize = 200;
/// Parallel labs (the machine has 2 cores).
const WORKERS: usize = 2;

/// A value a dimension gives a key or variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Val {
    Absent,
    /// JSON text for a configuration key, raw text for a variable.
    Is(&'static str),
}
use Val::{Absent, Is};

/// The shared inputs, each a table of `(label, value)`; row 0 is the
/// baseline (a valid ADD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dim {
    Version,
    Name,
    Master,
    Mtu,
    Mac,
    RuntimeMac,
    Mode,
    Ipam,
    CniArgs,
    Ifname,
    Env,
}

const DIMS: [Dim; 11] = [
    Dim::Version,
    Dim::Name,
    Dim::Master,
    Dim::Mtu,
    Dim::Mac,
    Dim::RuntimeMac,
    Dim::Mode,
    Dim::Ipam,
    Dim::CniArgs,
    Dim::Ifname,
    Dim::Env,
];

const VERSIONS: &[(&str, Val)] = &[
    ("1.0.0", Is(r#""1.0.0""#)),
    ("0.4.0", Is(r#""0.4.0""#)),
    ("0.3.1", Is(r#""0.3.1""#)),
    ("0.3.0", Is(r#""0.3.0""#)),
    ("0.2.0", Is(r#""0.2.0""#)),
    ("0.1.0", Is(r#""0.1.0""#)),
    ("1.1.0", Is(r#""1.1.0""#)),
    ("9.9.9", Is(r#""9.9.9""#)),
    ("1.0", Is(r#""1.0""#)),
    ("v1.0.0", Is(r#""v1.0.0""#)),
    ("empty", Is(r#""""#)),
    ("number", Is("1")),
    ("null", Is("null")),
    ("missing", Absent),
];

const NAMES: &[(&str, Val)] = &[
    ("difftest", Is(r#""difftest""#)),
    ("missing", Absent),
    ("empty", Is(r#""""#)),
    ("with a space", Is(r#""diff test""#)),
    ("with a slash", Is(r#""diff/test""#)),
    ("starts with a dot", Is(r#"".difftest""#)),
    ("dots, dashes, underscores", Is(r#""diff-test_1.0""#)),
    ("non-ASCII", Is(r#""diffné""#)),
    ("number", Is("5")),
];

/// The lower device. Ours also takes it as `lowerDevice` (kubevirt's
/// name): the row "up0 as lowerDevice" gives ours that key, the reference
/// `master`.
const MASTERS: &[(&str, Val)] = &[
    ("up0", Is(r#""up0""#)),
    ("up0 as lowerDevice", Is(r#""up0""#)),
    ("missing", Absent),
    ("empty", Is(r#""""#)),
    ("no such device", Is(r#""nosuch0""#)),
    ("lo", Is(r#""lo""#)),
    ("16 chars", Is(r#""abcdefghijklmnop""#)),
    ("number", Is("5")),
];

const MTUS: &[(&str, Val)] = &[
    ("absent", Absent),
    ("0", Is("0")),
    ("-1", Is("-1")),
    ("67", Is("67")),
    ("68", Is("68")),
    ("1280", Is("1280")),
    ("1500 (lower's)", Is("1500")),
    ("1501 (above lower)", Is("1501")),
    ("9000", Is("9000")),
    ("65536", Is("65536")),
    ("2^31", Is("2147483648")),
    ("string", Is(r#""1500""#)),
    ("fraction", Is("1500.5")),
    ("null", Is("null")),
];

const MACS: &[(&str, Val)] = &[
    ("absent", Absent),
    ("local unicast", Is(r#""02:00:00:00:00:01""#)),
    ("upper case", Is(r#""02:AB:CD:EF:00:01""#)),
    ("universal unicast", Is(r#""00:16:3e:12:34:56""#)),
    ("multicast", Is(r#""01:00:5e:00:00:01""#)),
    ("local multicast", Is(r#""03:00:00:00:00:01""#)),
    ("broadcast", Is(r#""ff:ff:ff:ff:ff:ff""#)),
    ("zero", Is(r#""00:00:00:00:00:00""#)),
    ("not hex", Is(r#""zz:00:00:00:00:01""#)),
    ("five bytes", Is(r#""02:00:00:00:00""#)),
    ("eight bytes", Is(r#""02:00:00:00:00:00:00:01""#)),
    ("dashes", Is(r#""02-00-00-00-00-02""#)),
    ("dotted", Is(r#""0200.0000.0003""#)),
    ("empty", Is(r#""""#)),
    ("number", Is("5")),
];

/// `runtimeConfig.mac` (the `mac` capability): both read it first.
const RUNTIME_MACS: &[(&str, Val)] = &[
    ("absent", Absent),
    ("local unicast", Is(r#""02:00:00:00:00:21""#)),
    ("upper case", Is(r#""02:00:00:00:00:2B""#)),
    ("multicast", Is(r#""01:00:5e:00:00:21""#)),
    ("not hex", Is(r#""zz:00:00:00:00:21""#)),
    ("empty", Is(r#""""#)),
    ("number", Is("5")),
];

const MODES: &[(&str, Val)] = &[
    ("absent", Absent),
    ("bridge", Is(r#""bridge""#)),
    ("private", Is(r#""private""#)),
    ("vepa", Is(r#""vepa""#)),
    ("passthru", Is(r#""passthru""#)),
    ("source", Is(r#""source""#)),
    ("empty", Is(r#""""#)),
    ("Bridge", Is(r#""Bridge""#)),
    ("VEPA", Is(r#""VEPA""#)),
    ("unknown", Is(r#""bridgey""#)),
    ("leading space", Is(r#"" bridge""#)),
    ("number", Is("1")),
];

/// `ipam` sections; `@DATADIR@` becomes the plugin's own host-local dataDir.
const IPAMS: &[(&str, Val)] = &[
    ("absent", Absent),
    (
        "host-local",
        Is(
            r#"{"type": "host-local", "ranges": [[{"subnet": "10.200.0.0/24", "rangeStart": "10.200.0.10", "rangeEnd": "10.200.0.50", "gateway": "10.200.0.1"}]], "routes": [{"dst": "10.200.1.0/24"}], "dataDir": "@DATADIR@"}"#,
        ),
    ),
    (
        "static",
        Is(
            r#"{"type": "static", "addresses": [{"address": "10.200.9.2/24", "gateway": "10.200.9.1"}]}"#,
        ),
    ),
    ("unknown type", Is(r#"{"type": "no-such-ipam"}"#)),
    ("not an object", Is(r#""host-local""#)),
    ("type missing", Is("{}")),
    ("type empty", Is(r#"{"type": ""}"#)),
    ("type a number", Is(r#"{"type": 5}"#)),
    (
        "host-local bad subnet",
        Is(
            r#"{"type": "host-local", "ranges": [[{"subnet": "10.200.300.0/24"}]], "dataDir": "@DATADIR@"}"#,
        ),
    ),
];

const CNI_ARGS: &[(&str, Val)] = &[
    ("absent", Absent),
    ("empty", Is("")),
    ("IgnoreUnknown=1", Is("IgnoreUnknown=1")),
    (
        "k8s keys, IgnoreUnknown",
        Is("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c"),
    ),
    ("k8s key alone", Is("K8S_POD_NAME=p")),
    ("unknown key", Is("FOO=bar")),
    ("unknown key, IgnoreUnknown", Is("IgnoreUnknown=1;FOO=bar")),
    ("pair without =", Is("garbage")),
    (
        "pair without =, IgnoreUnknown",
        Is("IgnoreUnknown=1;garbage"),
    ),
    ("two =", Is("IgnoreUnknown=1;A=b=c")),
    ("empty pairs", Is(";;")),
    ("IgnoreUnknown=yes", Is("IgnoreUnknown=yes")),
    ("IgnoreUnknown=true", Is("IgnoreUnknown=true;FOO=bar")),
    ("MAC", Is("MAC=02:00:00:00:00:09")),
    (
        "MAC, IgnoreUnknown",
        Is("IgnoreUnknown=1;MAC=02:00:00:00:00:0a"),
    ),
    (
        "MAC upper case",
        Is("IgnoreUnknown=1;MAC=02:00:00:00:00:AB"),
    ),
    ("MAC empty", Is("IgnoreUnknown=1;MAC=")),
    ("MAC malformed", Is("IgnoreUnknown=1;MAC=zz")),
    ("MAC multicast", Is("IgnoreUnknown=1;MAC=01:00:5e:00:00:01")),
    (
        "MAC twice",
        Is("IgnoreUnknown=1;MAC=02:00:00:00:00:0c;MAC=02:00:00:00:00:0d"),
    ),
    (
        "mac lower-case key",
        Is("IgnoreUnknown=1;mac=02:00:00:00:00:0b"),
    ),
];

const IFNAMES: &[(&str, Val)] = &[
    ("net1", Is("net1")),
    ("unset", Absent),
    ("empty", Is("")),
    ("15 chars", Is("abcdefghijklmno")),
    ("16 chars", Is("abcdefghijklmnop")),
    ("slash", Is("a/b")),
    ("space", Is("a b")),
    ("colon", Is("a:b")),
    ("dot", Is(".")),
    ("dot dot", Is("..")),
    ("lo (exists)", Is("lo")),
    ("eth0", Is("eth0")),
    ("dotted", Is("net1.5")),
];

/// `VAR` unset or `VAR=value`; `@GONE@` is a namespace path that does not
/// exist.
const ENVS: &[(&str, Val)] = &[
    ("complete", Absent),
    ("CNI_COMMAND unset", Is("CNI_COMMAND")),
    ("CNI_COMMAND lower case", Is("CNI_COMMAND=add")),
    ("CNI_CONTAINERID unset", Is("CNI_CONTAINERID")),
    ("CNI_CONTAINERID empty", Is("CNI_CONTAINERID=")),
    ("CNI_CONTAINERID slash", Is("CNI_CONTAINERID=a/b")),
    ("CNI_CONTAINERID dot dot", Is("CNI_CONTAINERID=..")),
    ("CNI_NETNS unset", Is("CNI_NETNS")),
    ("CNI_NETNS empty", Is("CNI_NETNS=")),
    ("CNI_NETNS gone", Is("CNI_NETNS=@GONE@")),
    ("CNI_PATH unset", Is("CNI_PATH")),
    ("CNI_PATH empty", Is("CNI_PATH=")),
];

fn table(dim: Dim) -> &'static [(&'static str, Val)] {
    match dim {
        Dim::Version => VERSIONS,
        Dim::Name => NAMES,
        Dim::Master => MASTERS,
        Dim::Mtu => MTUS,
        Dim::Mac => MACS,
        Dim::RuntimeMac => RUNTIME_MACS,
        Dim::Mode => MODES,
        Dim::Ipam => IPAMS,
        Dim::CniArgs => CNI_ARGS,
        Dim::Ifname => IFNAMES,
        Dim::Env => ENVS,
    }
}

/// One generated input: a row of each dimension's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Case([usize; 11]);

impl Case {
    fn baseline() -> Case {
        Case([0; 11])
    }

    fn with(mut self, dim: Dim, row: usize) -> Case {
        self.0[dim as usize] = row;
        self
    }

    fn row(&self, dim: Dim) -> usize {
        self.0[dim as usize]
    }

    fn label(&self, dim: Dim) -> &'static str {
        table(dim)[self.row(dim)].0
    }

    fn val(&self, dim: Dim) -> Val {
        table(dim)[self.row(dim)].1
    }

    /// Whether `dim` is one of `labels`.
    fn is(&self, dim: Dim, labels: &[&str]) -> bool {
        labels.contains(&self.label(dim))
    }

    /// The dimensions that differ from the baseline.
    fn varied(&self) -> Vec<Dim> {
        DIMS.into_iter().filter(|d| self.row(*d) != 0).collect()
    }

    /// Whether a MAC was asked for (then both links must carry it).
    fn asks_for_mac(&self) -> bool {
        self.row(Dim::Mac) != 0
            || self.row(Dim::RuntimeMac) != 0
            || matches!(self.val(Dim::CniArgs), Is(a) if a.contains("MAC="))
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let varied = self.varied();
        if varied.is_empty() {
            return write!(f, "baseline");
        }
        let parts: Vec<String> = varied
            .iter()
            .map(|d| format!("{d:?}={}", self.label(*d)))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// splitmix64: a tiny deterministic generator, enough to pick rows.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Pairs whose verdict is not the composition of their parts, always run:
/// an old version with an address (the reference's old result format can
/// then carry it), a bad `mac` key or CNI_ARGS MAC under a good one that
/// wins (the loser is not read by either), malformed CNI_ARGS under
/// `runtimeConfig.mac`, CNI_PATH missing with IPAM.
const INTERACTIONS: &[[(Dim, &str); 2]] = &[
    [(Dim::Version, "0.2.0"), (Dim::Ipam, "static")],
    [(Dim::Version, "missing"), (Dim::Ipam, "host-local")],
    [(Dim::Mac, "multicast"), (Dim::CniArgs, "MAC")],
    [(Dim::Mac, "not hex"), (Dim::CniArgs, "MAC, IgnoreUnknown")],
    [
        (Dim::RuntimeMac, "local unicast"),
        (Dim::CniArgs, "MAC malformed"),
    ],
    [
        (Dim::RuntimeMac, "local unicast"),
        (Dim::CniArgs, "pair without ="),
    ],
    [(Dim::RuntimeMac, "local unicast"), (Dim::Mac, "multicast")],
    [(Dim::Env, "CNI_PATH unset"), (Dim::Ipam, "host-local")],
    [(Dim::Env, "CNI_PATH empty"), (Dim::Ipam, "static")],
];

fn row_of(dim: Dim, label: &str) -> usize {
    table(dim)
        .iter()
        .position(|(l, _)| *l == label)
        .unwrap_or_else(|| panic!("{dim:?} has no row {label:?}"))
}

/// Every row of every dimension alone and the [`INTERACTIONS`], then
/// `COMBINATIONS` distinct random cases varying two to four dimensions.
fn generate() -> (Vec<Case>, Vec<Case>) {
    let mut singles = vec![Case::baseline()];
    for dim in DIMS {
        for row in 1..table(dim).len() {
            singles.push(Case::baseline().with(dim, row));
        }
    }
    for pair in INTERACTIONS {
        let case = pair.iter().fold(Case::baseline(), |c, (dim, label)| {
            c.with(*dim, row_of(*dim, label))
        });
        singles.push(case);
    }
    let mut rng = Rng(SEED);
    let mut seen: BTreeSet<Case> = singles.iter().copied().collect();
    let mut combos = Vec::new();
    while combos.len() < COMBINATIONS {
        let count = 2 + rng.below(3);
        let mut case = Case::baseline();
        while case.varied().len() < count {
            let dim = DIMS[rng.below(DIMS.len())];
            let rows = table(dim).len();
            case = case.with(dim, 1 + rng.below(rows - 1));
        }
        if seen.insert(case) {
            combos.push(case);
        }
    }
    (singles, combos)
}

/// Which plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Reference,
    Ours,
}

/// What the link looked like after a successful ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    mtu: u64,
    mode: Option<String>,
    mac: String,
    /// The networks of the link's IPv4 addresses (`10.200.0.0/24`): the
    /// addresses themselves depend on each side's host-local history.
    networks: Vec<String>,
}

/// `10.200.0.13/24` -> `10.200.0.0/24`.
fn network_of(cidr: &str) -> String {
    let parsed = cidr.split_once('/').and_then(|(addr, len)| {
        Some((
            addr.parse::<std::net::Ipv4Addr>().ok()?,
            len.parse::<u32>().ok()?,
        ))
    });
    match parsed {
        Some((addr, len)) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(addr) & mask))
        }
        _ => format!("unparsable {cidr}"),
    }
}

/// One plugin's verdict on one case.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Success(Applied),
    /// DEL's success: exit 0 (it prints nothing).
    Done,
    Error(i64),
    /// Exit 0 without a result and without doing anything (the reference
    /// prints its "about" text when CNI_COMMAND is unset).
    NoResult,
    /// Not a CNI answer (crash, bad error JSON, the link missing after
    /// success, DEL failing): never acceptable from ours.
    Broken(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Success(a) => write!(
                f,
                "success (mtu {}, mode {}, mac {}, IPv4 networks {:?})",
                a.mtu,
                a.mode.as_deref().unwrap_or("?"),
                a.mac,
                a.networks
            ),
            Outcome::Done => write!(f, "success"),
            Outcome::Error(c) => write!(f, "error {c}"),
            Outcome::NoResult => write!(f, "exit 0, no result"),
            Outcome::Broken(why) => write!(f, "broken: {why}"),
        }
    }
}

/// The spec fixes codes 1..=99 (well-known, reserved); 100 and up are the
/// plugin's own, and 999 is the reference library's "internal".
fn spec_fixed(code: i64) -> bool {
    (1..=99).contains(&code)
}

fn agree(case: &Case, reference: &Outcome, ours: &Outcome) -> bool {
    match (reference, ours) {
        (Outcome::Success(r), Outcome::Success(o)) => {
            r.mtu == o.mtu
                && r.mode == o.mode
                && r.networks == o.networks
                && (!case.asks_for_mac() || r.mac == o.mac)
        }
        (Outcome::Done, Outcome::Done) => true,
        (Outcome::Error(r), Outcome::Error(o)) => !spec_fixed(*r) || r == o,
        _ => false,
    }
}

/// What a known difference expects of one side.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Success,
    /// An error with one of these codes.
    Codes(&'static [i64]),
    /// An error, whatever its code.
    AnyError,
    NoResult,
    /// Decided by the case's other inputs (this key does not fail it).
    Any,
}

impl Expect {
    fn matches(self, outcome: &Outcome) -> bool {
        match (self, outcome) {
            (_, Outcome::Broken(_)) => false,
            (Expect::Success, Outcome::Success(_) | Outcome::Done) => true,
            (Expect::Codes(codes), Outcome::Error(e)) => codes.contains(e),
            (Expect::AnyError, Outcome::Error(_)) => true,
            (Expect::NoResult, Outcome::NoResult) => true,
            (Expect::Any, _) => true,
            _ => false,
        }
    }
}

/// The command a known difference is about: the ADD of every case, or a
/// DEL alone (nothing to remove) of every single.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    Add,
    Del,
    Both,
}

impl On {
    fn covers(self, command: On) -> bool {
        self == On::Both || self == command
    }
}

/// A deliberate difference from the reference (docs/cni-plugin.md lists
/// the same, with the same reasons).
struct Known {
    id: &'static str,
    /// Which command shows it.
    on: On,
    reason: &'static str,
    applies: fn(&Case) -> bool,
    reference: Expect,
    ours: Expect,
}

const KNOWN: &[Known] = &[
    Known {
        id: "cniVersion 1.1.0",
        on: On::Both,
        reason: "ours implements spec 1.1.0 (STATUS, GC); Debian's macvlan stops at 1.0.0",
        applies: |c| c.is(Dim::Version, &["1.1.0"]),
        reference: Expect::Codes(&[1]),
        ours: Expect::Success,
    },
    Known {
        id: "cniVersion before 0.3.0, empty, null or missing",
        on: On::Both,
        reason: "ours speaks 0.3.0 and later only (a result without interfaces cannot describe \
                 a macvtap) and refuses the rest, on DEL too, with code 1 (6 for null); the \
                 reference reads a missing version as 0.1.0, makes its link, and then fails \
                 (999, leaving the link behind) unless IPAM gave an address that the old \
                 result format can carry; its DEL succeeds",
        applies: |c| {
            c.is(
                Dim::Version,
                &["0.2.0", "0.1.0", "empty", "null", "missing"],
            )
        },
        reference: Expect::Any,
        ours: Expect::Codes(&[1, 6]),
    },
    Known {
        id: "mtu 0",
        on: On::Add,
        reason: "ours refuses an explicit 0 (code 7: not an MTU; leave the key out for the lower \
                 device's); the reference reads 0 as unset",
        applies: |c| c.is(Dim::Mtu, &["0"]),
        reference: Expect::Success,
        ours: Expect::Codes(&[7]),
    },
    Known {
        id: "empty mode, mac, runtimeConfig.mac or CNI_ARGS MAC",
        on: On::Add,
        reason: "ours refuses an empty value (7; 4 for CNI_ARGS) instead of reading it as the \
                 default: an empty string is a template that rendered nothing, and attaching \
                 with a random MAC or another mode than meant would be silent",
        applies: |c| {
            c.is(Dim::Mode, &["empty"])
                || c.is(Dim::Mac, &["empty"])
                || c.is(Dim::RuntimeMac, &["empty"])
                || c.is(Dim::CniArgs, &["MAC empty"])
        },
        reference: Expect::Success,
        ours: Expect::Codes(&[4, 7]),
    },
    Known {
        id: "ipam without a type",
        on: On::Add,
        reason: "ours refuses an ipam section without a plugin name (6 when `type` is missing, \
                 7 when empty); the reference reads it as no IPAM. Leave `ipam` out for none",
        applies: |c| c.is(Dim::Ipam, &["type missing", "type empty"]),
        reference: Expect::Success,
        ours: Expect::Codes(&[6, 7]),
    },
    Known {
        id: "lenient CNI_ARGS",
        on: On::Add,
        reason: "ours reads only the keys it knows (MAC, K8S_POD_*) and ignores the rest with \
                 or without IgnoreUnknown (which it does not read); a value may contain '=' \
                 (split at the first), empty pairs are skipped. The reference's library \
                 refuses unknown keys unless IgnoreUnknown is true, and such pairs. A pair \
                 without '=' is refused by both",
        applies: |c| {
            c.is(
                Dim::CniArgs,
                &[
                    "k8s key alone",
                    "unknown key",
                    "two =",
                    "empty pairs",
                    "IgnoreUnknown=yes",
                ],
            )
        },
        reference: Expect::AnyError,
        ours: Expect::Success,
    },
    Known {
        id: "DEL reads only cniVersion, name and ipam",
        on: On::Del,
        reason: "ours tears down what its record says and checks nothing only ADD needs \
                 (master, mtu, the network name's form, CNI_ARGS): a DEL refused for a value \
                 would be retried for ever and leak the attachment. The reference loads and \
                 checks its whole configuration and CNI_ARGS on DEL",
        applies: |c| {
            !c.is(Dim::Name, &["difftest", "dots, dashes, underscores"])
                || !c.is(Dim::Master, &["up0", "up0 as lowerDevice"])
                || c.row(Dim::Mtu) != 0
                || c.row(Dim::CniArgs) != 0
        },
        reference: Expect::AnyError,
        ours: Expect::Success,
    },
    Known {
        id: "DEL removes only what its record names",
        on: On::Del,
        reason: "ours deletes only a link its own record names (none here); the reference \
                 tries to delete CNI_IFNAME whatever it is, and fails on lo",
        applies: |c| c.is(Dim::Ifname, &["lo (exists)"]),
        reference: Expect::AnyError,
        ours: Expect::Success,
    },
    Known {
        id: "CNI_COMMAND unset",
        on: On::Both,
        reason: "the spec makes CNI_COMMAND necessary: ours answers code 4; the reference prints \
                 its 'about' text and exits 0",
        applies: |c| c.is(Dim::Env, &["CNI_COMMAND unset"]),
        reference: Expect::NoResult,
        ours: Expect::Codes(&[4]),
    },
    Known {
        id: "CNI_PATH unset or empty without IPAM",
        on: On::Both,
        reason: "ours needs CNI_PATH only to find an IPAM plugin (without one it is not a \
                 necessary variable); the reference's library requires it for every ADD",
        applies: |c| {
            c.is(Dim::Env, &["CNI_PATH unset", "CNI_PATH empty"]) && c.is(Dim::Ipam, &["absent"])
        },
        reference: Expect::Codes(&[4]),
        ours: Expect::Success,
    },
];

/// One lab per worker: NODE with `up0`, POD, the temp dir.
struct World {
    lab: Lab,
    /// host-local's dataDir for the reference's leases (ours use the lab's).
    reference_ipam_dir: std::path::PathBuf,
}

impl World {
    fn new(worker: usize) -> World {
        let lab = lab(&format!("differential-{worker}"));
        let reference_ipam_dir = lab.dir.path().join("ipam-reference");
        World {
            lab,
            reference_ipam_dir,
        }
    }

    fn config(&self, case: &Case, side: Side) -> Value {
        let mut config = json!({
            "type": match side { Side::Reference => "macvlan", Side::Ours => "macvtap" },
        });
        let master = if side == Side::Ours && case.is(Dim::Master, &["up0 as lowerDevice"]) {
            "lowerDevice"
        } else {
            "master"
        };
        if side == Side::Ours {
            config["stateDir"] = json!(self.lab.state_dir());
        }
        let data_dir = match side {
            Side::Reference => self.reference_ipam_dir.clone(),
            Side::Ours => self.lab.ipam_dir(),
        };
        for (dim, key) in [
            (Dim::Version, "cniVersion"),
            (Dim::Name, "name"),
            (Dim::Master, master),
            (Dim::Mtu, "mtu"),
            (Dim::Mac, "mac"),
            (Dim::Mode, "mode"),
            (Dim::Ipam, "ipam"),
        ] {
            if let Is(text) = case.val(dim) {
                let text = text.replace("@DATADIR@", &data_dir.to_string_lossy());
                let value: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("table value {text} is not JSON: {e}"));
                config[key] = value;
            }
        }
        if let Is(text) = case.val(Dim::RuntimeMac) {
            let mac: Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("table value {text} is not JSON: {e}"));
            config["runtimeConfig"] = json!({ "mac": mac });
        }
        config
    }

    /// The invocation of `command` for `case` on `side`.
    fn invocation(&self, case: &Case, side: Side, command: &str) -> Plugin {
        let config = self.config(case, side);
        let mut plugin = match side {
            Side::Ours => self.lab.plugin(command, &config),
            Side::Reference => Plugin::new(REFERENCE, self.lab.node.path())
                .command(command)
                .container_id(&self.lab.container_id)
                .netns(self.lab.pod.path())
                .ifname(POD_IFNAME)
                .cni_path(&self.lab.cni_path())
                .config(&config),
        };
        plugin = match case.val(Dim::CniArgs) {
            Absent => plugin,
            Is(args) => plugin.args(args),
        };
        plugin = match case.val(Dim::Ifname) {
            Absent => plugin.unset("CNI_IFNAME"),
            Is(name) => plugin.ifname(name),
        };
        if let Is(var) = case.val(Dim::Env) {
            plugin = match var.split_once('=') {
                None => plugin.unset(var),
                Some((key, value)) => {
                    let gone = format!("/run/netns/{}-gone", self.lab.prefix);
                    plugin.env(key, value.replace("@GONE@", &gone))
                }
            };
        }
        plugin
    }

    fn ifname(case: &Case) -> &'static str {
        match case.val(Dim::Ifname) {
            Is(name) => name,
            Absent => "",
        }
    }

    /// ADD, and on success the link's settings and DEL.
    fn run(&self, case: &Case, side: Side) -> Outcome {
        let out = self.invocation(case, side, "ADD").run();
        if printed_about(side, &out) {
            return Outcome::NoResult;
        }
        if out.exit_code == Some(0) && !out.panicked() {
            let kind = match side {
                Side::Reference => "macvlan",
                Side::Ours => "macvtap",
            };
            let ifname = Self::ifname(case);
            let applied = self
                .lab
                .pod
                .link(ifname)
                .filter(|l| l.kind.as_deref() == Some(kind))
                .map(|l| {
                    let mut networks: Vec<String> = self
                        .lab
                        .pod
                        .addr_cidrs(ifname, "inet")
                        .iter()
                        .map(|c| network_of(c))
                        .collect();
                    networks.sort();
                    Applied {
                        mtu: l.mtu,
                        mode: l.mode,
                        mac: l.mac,
                        networks,
                    }
                });
            let del = self.invocation(case, side, "DEL").run();
            return match (applied, del.exit_code) {
                (Some(a), Some(0)) => Outcome::Success(a),
                (None, _) => Outcome::Broken(format!("ADD succeeded without a {kind}\n{out}")),
                (_, _) => Outcome::Broken(format!("DEL after a successful ADD failed\n{del}")),
            };
        }
        let answer = match side {
            Side::Ours => out.error_code(),
            Side::Reference => reference_error_code(&out),
        };
        match answer {
            Ok(code) => Outcome::Error(code),
            Err(e) => Outcome::Broken(e),
        }
    }

    /// DEL alone (no ADD before it), as a runtime sends after a failed or
    /// forgotten ADD: it must succeed when there is nothing to remove.
    fn run_del(&self, case: &Case, side: Side) -> Outcome {
        let out = self.invocation(case, side, "DEL").run();
        if printed_about(side, &out) {
            return Outcome::NoResult;
        }
        if out.exit_code == Some(0) && !out.panicked() {
            return Outcome::Done;
        }
        let answer = match side {
            Side::Ours => out.error_code(),
            Side::Reference => reference_error_code(&out),
        };
        match answer {
            Ok(code) => Outcome::Error(code),
            Err(e) => Outcome::Broken(e),
        }
    }

    /// What the reference left behind, removed (it does not undo a link
    /// when ADD fails after making it).
    fn clean_reference(&self) -> Vec<String> {
        let mut left = Vec::new();
        for ns in [&self.lab.node, &self.lab.pod] {
            for link in ns.links() {
                if link.kind.as_deref() == Some("macvlan") {
                    ns.ip_ok(&["link", "del", &link.name]);
                    left.push(format!("macvlan {} in {}", link.name, ns.name()));
                }
            }
        }
        for lease in leases_in(&self.reference_ipam_dir) {
            fs::remove_file(&lease)
                .unwrap_or_else(|e| panic!("cannot remove {}: {e}", lease.display()));
            left.push(format!("lease {}", lease.display()));
        }
        left
    }
}

/// Whether the reference, run without a command, printed its "about" text
/// (on stderr) and exited 0.
fn printed_about(side: Side, out: &PluginOutput) -> bool {
    side == Side::Reference
        && out.exit_code == Some(0)
        && out.stdout.trim().is_empty()
        && out.stderr.contains("CNI protocol versions supported")
}

/// The reference's error: exit 1 and `{"code", "msg"}` on stdout (it
/// leaves out the `cniVersion` that ours always sends).
fn reference_error_code(out: &PluginOutput) -> Result<i64, String> {
    let code = out
        .json
        .as_ref()
        .and_then(|j| j.get("code"))
        .and_then(Value::as_i64);
    match (out.exit_code, code) {
        (Some(1), Some(code)) => Ok(code),
        _ => Err(format!("not a CNI error\n{out}")),
    }
}

/// Both verdicts on one case, and what the reference left behind.
#[derive(Debug, Clone)]
struct Verdicts {
    reference: Outcome,
    ours: Outcome,
    reference_leftovers: Vec<String>,
    /// A DEL alone: (reference, ours); singles only.
    del: Option<(Outcome, Outcome)>,
}

/// Runs `cases` on `WORKERS` labs. Ours leaving anything behind stops its
/// worker (the following cases would be spoilt) and is a failure.
/// `with_del` cases also get a DEL alone on both sides.
fn run_all(cases: &[(Case, bool)], failures: &Mutex<Vec<String>>) -> BTreeMap<Case, Verdicts> {
    let results = Mutex::new(BTreeMap::new());
    thread::scope(|scope| {
        for worker in 0..WORKERS {
            let results = &results;
            scope.spawn(move || {
                let world = World::new(worker);
                for (case, with_del) in cases.iter().skip(worker).step_by(WORKERS) {
                    let reference = world.run(case, Side::Reference);
                    let mut reference_leftovers = world.clean_reference();
                    let ours = world.run(case, Side::Ours);
                    let del = with_del.then(|| {
                        let reference = world.run_del(case, Side::Reference);
                        reference_leftovers.extend(world.clean_reference());
                        (reference, world.run_del(case, Side::Ours))
                    });
                    let left = world.lab.leftovers();
                    let stop = !left.is_empty();
                    if stop {
                        failures
                            .lock()
                            .expect("failures lock")
                            .push(format!("{case}: ours left behind {left:?} ({ours})"));
                    }
                    results.lock().expect("results lock").insert(
                        *case,
                        Verdicts {
                            reference,
                            ours,
                            reference_leftovers,
                            del,
                        },
                    );
                    if stop {
                        break;
                    }
                }
            });
        }
    });
    results.into_inner().expect("results lock")
}

/// An outcome's verdict without the link's details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Success,
    Error(i64),
    NoResult,
}

fn kind(outcome: &Outcome) -> Option<Kind> {
    match outcome {
        Outcome::Success(_) | Outcome::Done => Some(Kind::Success),
        Outcome::Error(code) => Some(Kind::Error(*code)),
        Outcome::NoResult => Some(Kind::NoResult),
        Outcome::Broken(_) => None,
    }
}

/// The verdicts `side` may reach on a combination, from its singles:
/// success when all of them succeed, else what one of the failing ones
/// gave. A `mac` key under a CNI_ARGS MAC is not read by either plugin.
fn predicted(case: &Case, verdicts: &BTreeMap<Case, Verdicts>, side: Side) -> BTreeSet<Kind> {
    let args_mac =
        matches!(case.val(Dim::CniArgs), Is(a) if a.contains("MAC=") && !a.ends_with("MAC="));
    let mut failing = BTreeSet::new();
    for dim in case.varied() {
        if dim == Dim::Mac && args_mac {
            continue;
        }
        let single = Case::baseline().with(dim, case.row(dim));
        let Some(v) = verdicts.get(&single) else {
            return BTreeSet::new();
        };
        let outcome = if side == Side::Reference {
            &v.reference
        } else {
            &v.ours
        };
        match kind(outcome) {
            Some(Kind::Success) => {}
            Some(k) => {
                failing.insert(k);
            }
            None => return BTreeSet::new(),
        }
    }
    if failing.is_empty() {
        BTreeSet::from([Kind::Success])
    } else {
        failing
    }
}

fn consistent(outcome: &Outcome, prediction: &BTreeSet<Kind>) -> bool {
    kind(outcome).is_some_and(|k| prediction.contains(&k))
}

#[test]
fn same_verdicts_as_the_reference_macvlan() {
    assert!(
        std::path::Path::new(REFERENCE).exists(),
        "{REFERENCE} is missing: apt-get install containernetworking-plugins"
    );
    let started = Instant::now();
    let (singles, combos) = generate();
    let failures = Mutex::new(Vec::new());
    let mut all = singles.clone();
    all.extend(&combos);
    let runs: Vec<(Case, bool)> = all
        .iter()
        .enumerate()
        .map(|(i, c)| (*c, i < singles.len()))
        .collect();
    let verdicts = run_all(&runs, &failures);
    let mut failures = failures.into_inner().expect("failures lock");

    // Uses of each known difference, per command ("ADD" or "DEL").
    let mut known_used: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut agreed = 0;
    let mut by_composition = 0;
    let mut reference_leaks = Vec::new();
    let mut code_pairs: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (index, case) in all.iter().enumerate() {
        let Some(v) = verdicts.get(case) else {
            continue; // its worker stopped; already a failure
        };
        if !v.reference_leftovers.is_empty() {
            reference_leaks.push(format!("{case}: {:?}", v.reference_leftovers));
        }
        let short = |o: &Outcome| match o {
            Outcome::Success(_) | Outcome::Done => "ok".to_string(),
            Outcome::Error(c) => c.to_string(),
            Outcome::NoResult => "no result".to_string(),
            Outcome::Broken(_) => "broken".to_string(),
        };
        *code_pairs
            .entry((short(&v.reference), short(&v.ours)))
            .or_default() += 1;
        if let Outcome::Broken(why) = &v.ours {
            failures.push(format!("{case}: ours is broken: {why}"));
            continue;
        }
        if agree(case, &v.reference, &v.ours) {
            agreed += 1;
            continue;
        }
        let is_combination = index >= singles.len();
        if is_combination
            && consistent(&v.reference, &predicted(case, &verdicts, Side::Reference))
            && consistent(&v.ours, &predicted(case, &verdicts, Side::Ours))
        {
            by_composition += 1;
            continue;
        }
        let known = KNOWN.iter().find(|k| {
            k.on.covers(On::Add)
                && (k.applies)(case)
                && k.reference.matches(&v.reference)
                && k.ours.matches(&v.ours)
        });
        if let Some(k) = known {
            *known_used.entry((k.id, "ADD")).or_default() += 1;
            continue;
        }
        failures.push(format!(
            "{case}: reference {}, ours {} (not a known difference)",
            v.reference, v.ours
        ));
    }
    let mut del_agreed = 0;
    for case in &singles {
        let Some((reference, ours)) = verdicts.get(case).and_then(|v| v.del.as_ref()) else {
            continue;
        };
        if let Outcome::Broken(why) = ours {
            failures.push(format!("DEL {case}: ours is broken: {why}"));
            continue;
        }
        if agree(case, reference, ours) {
            del_agreed += 1;
            continue;
        }
        let known = KNOWN.iter().find(|k| {
            k.on.covers(On::Del)
                && (k.applies)(case)
                && k.reference.matches(reference)
                && k.ours.matches(ours)
        });
        if let Some(k) = known {
            *known_used.entry((k.id, "DEL")).or_default() += 1;
            continue;
        }
        failures.push(format!(
            "DEL {case}: reference {reference}, ours {ours} (not a known difference)"
        ));
    }
    for k in KNOWN {
        for (command, on) in [("ADD", On::Add), ("DEL", On::Del)] {
            if k.on.covers(on) && !known_used.contains_key(&(k.id, command)) {
                failures.push(format!(
                    "known difference {:?} ({}) no longer occurs on {command}: correct it here \
                     and in docs/cni-plugin.md",
                    k.id, k.reason
                ));
            }
        }
    }

    eprintln!(
        "differential: {} cases ({} singles, {} combinations) in {:.1?}; \
         {agreed} agreed, {by_composition} combinations explained by their singles; \
         DEL alone on the singles: {del_agreed} agreed; known differences used: {known_used:?}",
        all.len(),
        singles.len(),
        combos.len(),
        started.elapsed()
    );
    let with_addresses = verdicts
        .values()
        .filter(|v| matches!(&v.ours, Outcome::Success(a) if !a.networks.is_empty()))
        .filter(|v| matches!(&v.reference, Outcome::Success(a) if !a.networks.is_empty()))
        .count();
    eprintln!(
        "verdict pairs (reference, ours): {code_pairs:?}; both succeeded with IPv4 from IPAM in \
         {with_addresses} cases"
    );
    eprintln!(
        "the reference left behind (removed) in {} cases: {reference_leaks:#?}",
        reference_leaks.len()
    );
    assert_no_failures(&failures);
}
