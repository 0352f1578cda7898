//! Upstream's command line: kubevirt/macvtap-cni's device plugin is a Go
//! program whose only flags are glog's, parsed by Go's `flag` package, and
//! the manifests that run it (its own `manifests/macvtap.yaml`, the
//! cluster-network-addons-operator's template, which an operator
//! reconciles so it cannot be edited) say `-v 3 -logtostderr`.
//!
//! [`split`] takes those flags out of the arguments before ours are
//! parsed, in Go's spellings (`-flag` or `--flag`, `-flag=value` or
//! `-flag value`; a boolean only as `-flag` or `-flag=bool`):
//!
//! - `-v N`: glog's verbosity (a 32-bit signed integer, as Go parses it). Upstream logs its normal messages at `V(3)`
//!   and below, which our `info` level already covers; so 0–3 → info,
//!   4–5 → debug, 6 and more → trace. `RUST_LOG` wins when it is set.
//! - `-logtostderr`, `-alsologtostderr`: logs always go to stderr here;
//!   accepted (also `=true`/`=false`).
//! - `-stderrthreshold`, `-log_dir`, `-log_backtrace_at`, `-vmodule`,
//!   `-log_link`: about glog's log files and per-file verbosity, which
//!   this daemon does not have; accepted and ignored.

use std::ffi::OsString;

use tracing_subscriber::filter::LevelFilter;

/// A glog flag that cannot be taken as upstream's binary would.
#[derive(Debug, thiserror::Error)]
pub enum GlogError {
    /// A flag that needs a value came last.
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    /// `-v` with something other than a number.
    #[error("invalid value {value:?} for flag -v")]
    Verbosity {
        value: String,
        #[source]
        source: std::num::ParseIntError,
    },
    /// A boolean flag with something other than a Go boolean.
    #[error("invalid boolean value {value:?} for -{flag}")]
    Bool { flag: String, value: String },
}

/// The glog flags found, and the rest of the arguments for our parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Every argument that is not a glog flag, in order (the program name first).
    pub rest: Vec<OsString>,
    /// `-v`, when given.
    pub verbosity: Option<i32>,
    /// The glog flags accepted without effect, as given (for the log).
    pub ignored: Vec<String>,
}

const BOOLS: [&str; 2] = ["logtostderr", "alsologtostderr"];
const VALUED: [&str; 5] = [
    "stderrthreshold",
    "log_dir",
    "log_backtrace_at",
    "vmodule",
    "log_link",
];

/// Take glog's flags out of `args` (see the module documentation).
pub fn split(args: impl IntoIterator<Item = OsString>) -> Result<Split, GlogError> {
    let mut args = args.into_iter();
    let mut out = Split {
        rest: args.next().into_iter().collect(),
        verbosity: None,
        ignored: Vec::new(),
    };
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            out.rest.push(arg);
            continue;
        };
        if text == "--" {
            out.rest.push(arg);
            out.rest.extend(args.by_ref());
            break;
        }
        let body = text
            .strip_prefix("--")
            .or_else(|| text.strip_prefix('-'))
            .unwrap_or("");
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if name == "v" {
            let value = match inline {
                Some(v) => v,
                None => args
                    .next()
                    .map(|v| v.to_string_lossy().into_owned())
                    .ok_or_else(|| GlogError::MissingValue("v".into()))?,
            };
            let level = value.parse().map_err(|source| GlogError::Verbosity {
                value: value.clone(),
                source,
            })?;
            out.verbosity = Some(level);
        } else if BOOLS.contains(&name) {
            if let Some(v) = &inline {
                if !matches!(
                    v.as_str(),
                    "1" | "0"
                        | "t"
                        | "f"
                        | "T"
                        | "F"
                        | "true"
                        | "false"
                        | "TRUE"
                        | "FALSE"
                        | "True"
                        | "False"
                ) {
                    return Err(GlogError::Bool {
                        flag: name.into(),
                        value: v.clone(),
                    });
                }
            }
            out.ignored.push(text.to_string());
        } else if VALUED.contains(&name) {
            let shown = match inline {
                Some(_) => text.to_string(),
                None => {
                    let v = args
                        .next()
                        .ok_or_else(|| GlogError::MissingValue(name.into()))?;
                    format!("{text} {}", v.to_string_lossy())
                }
            };
            out.ignored.push(shown);
        } else {
            out.rest.push(arg);
        }
    }
    Ok(out)
}

/// The tracing level for glog's verbosity.
pub fn level(verbosity: i32) -> LevelFilter {
    match verbosity {
        ..=3 => LevelFilter::INFO,
        4..=5 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Split, GlogError> {
        split(
            std::iter::once("prog")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    fn rest(s: &Split) -> Vec<String> {
        s.rest
            .iter()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn upstreams_command_lines() {
        for args in [
            &["-v", "3", "-logtostderr"][..],
            &["-v=3", "--logtostderr"],
            &["--v", "3", "-logtostderr=true"],
            &["-logtostderr", "--v=3"],
        ] {
            let s = run(args).unwrap();
            assert_eq!(s.verbosity, Some(3), "{args:?}");
            assert!(rest(&s).is_empty(), "{args:?}: {s:?}");
            assert_eq!(s.ignored.len(), 1, "{args:?}");
        }
    }

    #[test]
    fn other_glog_flags_are_taken_and_ours_pass() {
        let s = run(&[
            "-alsologtostderr",
            "-stderrthreshold",
            "INFO",
            "-log_dir=/tmp",
            "--vmodule",
            "x=2",
            "-log_backtrace_at=a.go:1",
            "--state-dir",
            "/x",
            "--check-config",
        ])
        .unwrap();
        assert_eq!(s.verbosity, None);
        assert_eq!(rest(&s), ["--state-dir", "/x", "--check-config"]);
        assert_eq!(
            s.ignored,
            [
                "-alsologtostderr",
                "-stderrthreshold INFO",
                "-log_dir=/tmp",
                "--vmodule x=2",
                "-log_backtrace_at=a.go:1"
            ]
        );
    }

    #[test]
    fn after_a_double_dash_nothing_is_taken() {
        let s = run(&["--", "-v", "3"]).unwrap();
        assert_eq!(rest(&s), ["--", "-v", "3"]);
        assert_eq!(s.verbosity, None);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let e = run(&["-v"]).unwrap_err();
        assert_eq!(e.to_string(), "flag needs an argument: -v");
        let e = run(&["-v", "loud"]).unwrap_err();
        assert_eq!(e.to_string(), "invalid value \"loud\" for flag -v");
        assert!(std::error::Error::source(&e).is_some());
        let e = run(&["-v=1.5"]).unwrap_err();
        assert!(matches!(e, GlogError::Verbosity { .. }), "{e}");
        // Go parses a Level as a 32-bit signed integer.
        assert_eq!(run(&["-v=-1"]).unwrap().verbosity, Some(-1));
        let e = run(&["-v=3000000000"]).unwrap_err();
        assert!(matches!(e, GlogError::Verbosity { .. }), "{e}");
        let e = run(&["-logtostderr=yes"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid boolean value \"yes\" for -logtostderr"
        );
        let e = run(&["-log_dir"]).unwrap_err();
        assert_eq!(e.to_string(), "flag needs an argument: -log_dir");
    }

    #[test]
    fn verbosity_levels() {
        assert_eq!(level(-1), LevelFilter::INFO);
        assert_eq!(level(0), LevelFilter::INFO);
        assert_eq!(level(3), LevelFilter::INFO);
        assert_eq!(level(4), LevelFilter::DEBUG);
        assert_eq!(level(10), LevelFilter::TRACE);
    }
}
