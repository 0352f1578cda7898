//! The commands: VERSION and the dispatch here, ADD in `add`, DEL and GC
//! in `teardown`, CHECK and STATUS in `check`.

mod add;
mod check;
mod handover;
mod teardown;
#[cfg(test)]
mod tests;

use macvtap_state::{AttachmentRecord, NodePolicy, PodRef, ResolvedDevice, StateDir};
use serde_json::{json, Value};

use crate::config::{peek_version, Config, Source};
use crate::error::{code, err, CniError, Result};
use crate::ipam::Ipam;
use crate::spec::{Command, Env, Version, SUPPORTED_VERSIONS};

use add::add;
use check::{check, status};
use teardown::{del, gc};

/// What one invocation printed: the version to print errors in, and the
/// result (a JSON document to print, nothing, or an error).
#[derive(Debug)]
pub struct Outcome {
    pub version: String,
    pub result: Result<Option<Value>>,
}

/// Run one plugin invocation.
pub fn run(env: &Env, stdin: &[u8]) -> Outcome {
    let mut version = Version::V110.as_str().to_string();
    let result = dispatch(env, stdin, &mut version);
    Outcome { version, result }
}

fn dispatch(env: &Env, stdin: &[u8], version: &mut String) -> Result<Option<Value>> {
    if let Some(k) = env.not_utf8.first() {
        return Err(err(
            code::INVALID_ENVIRONMENT,
            format!("{k} is not valid UTF-8"),
        ));
    }
    let command = Command::parse(&env.command)?;
    if command == Command::Version {
        let asked = if stdin.iter().all(u8::is_ascii_whitespace) {
            String::new()
        } else {
            peek_version(stdin)?.1
        };
        let shown = if SUPPORTED_VERSIONS.contains(&asked.as_str()) {
            asked
        } else {
            Version::V110.as_str().to_string()
        };
        return Ok(Some(
            json!({ "cniVersion": shown, "supportedVersions": SUPPORTED_VERSIONS }),
        ));
    }
    if std::env::var_os(crate::ipam::DELEGATED_ENV).is_some() {
        return Err(err(
            code::INVALID_CONFIG,
            "this plugin was run as an IPAM plugin by itself: its ipam type names macvtap, not an IPAM plugin",
        ));
    }
    let (value, asked) = peek_version(stdin)?;
    let parsed = Version::parse(&asked)?;
    *version = asked;
    if parsed < command.since() {
        return Err(err(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{} needs cniVersion {} or later, the configuration says {}",
                env.command,
                command.since().as_str(),
                parsed.as_str()
            ),
        ));
    }
    let policy = NodePolicy::load()?;
    let cfg = match Config::parse(value.clone(), env, &policy) {
        // DEL tears down what the record says; a value only ADD needs must
        // not stop it (a bad version still does, and so does a decode error
        // that teardown's own, narrower reading finds too).
        Err(e)
            if command == Command::Del
                && matches!(
                    e.code,
                    code::INVALID_CONFIG | code::INVALID_ENVIRONMENT | code::DECODE
                ) =>
        {
            Config::parse_for_teardown(value, &policy)?
        }
        other => other?,
    };
    if let Source::Handover { interface, mode } = &cfg.source {
        return match command {
            Command::Add => handover::add(&cfg, env, interface.as_deref(), *mode).map(Some),
            Command::Del => handover::del(&cfg, env).map(|()| None),
            Command::Check => handover::check(&cfg, env).map(|()| None),
            Command::Status => status(&cfg, env).map(|()| None),
            Command::Gc => gc(&cfg, env, stdin).map(|()| None),
            Command::Version => unreachable!("answered above"),
        };
    }
    match command {
        Command::Add => add(&cfg, env, stdin).map(Some),
        Command::Del => del(&cfg, env, stdin).map(|()| None),
        Command::Check => check(&cfg, env, stdin).map(|()| None),
        Command::Status => status(&cfg, env).map(|()| None),
        Command::Gc => gc(&cfg, env, stdin).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// The device-plugin device `id`, resolved from the node's resources.json.
fn resolve_device(state: &StateDir, id: &str) -> Result<ResolvedDevice> {
    let node = state.load_config()?;
    node.validate()?;
    Ok(node.resolve(state.root(), id)?)
}

/// The pod the runtime says this is (CNI_ARGS `K8S_POD_NAMESPACE`/`K8S_POD_NAME`).
fn pod_of(env: &Env) -> Option<PodRef> {
    let args = env.parsed_args().ok()?;
    let get = |k: &str| {
        args.iter()
            .rev()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
    };
    Some(PodRef {
        namespace: get("K8S_POD_NAMESPACE")?,
        name: get("K8S_POD_NAME")?,
    })
}

/// Refuse an IPAM binary that is this plugin under another name: it would
/// wait for the lock of the container this invocation holds.
fn refuse_self_as_ipam(ipam: &Ipam<'_>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let found = ipam.find()?;
    let (Ok(theirs), Ok(ours)) = (
        std::fs::metadata(&found),
        std::env::current_exe().and_then(std::fs::metadata),
    ) else {
        return Ok(());
    };
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Err(err(
            code::INVALID_CONFIG,
            format!(
                "IPAM plugin {} is this plugin itself, not an IPAM plugin",
                found.display()
            ),
        ));
    }
    Ok(())
}

/// Add what went wrong while undoing to `e`'s details, and say it on
/// stderr: a rollback that failed leaves something behind, and whoever
/// reads the error must know what.
fn with_failures(mut e: CniError, doing: &str, failures: Vec<CniError>) -> CniError {
    if failures.is_empty() {
        return e;
    }
    let list: Vec<String> = failures.iter().map(ToString::to_string).collect();
    let text = format!("while {doing}: {}", list.join("; "));
    eprintln!("macvtap: {}", crate::error::escape_controls(&text));
    e.details = if e.details.is_empty() {
        text
    } else {
        format!("{}; {text}", e.details)
    };
    e
}

/// The record of an attachment; an unreadable or invalid one names nothing
/// that can be trusted, so it only goes (IPAM is still released by DEL).
fn load_record_or_drop(
    state: &StateDir,
    container_id: &str,
    ifname: &str,
) -> Result<Option<AttachmentRecord>> {
    match state.load_record(container_id, ifname) {
        Ok(record) => Ok(record),
        Err(
            e @ (macvtap_state::Error::Corrupt { .. } | macvtap_state::Error::BadRecord { .. }),
        ) => {
            eprintln!(
                "macvtap: ignoring unreadable record: {}",
                crate::error::escape_controls(&macvtap_net::error_chain(&e))
            );
            state.remove_record(container_id, ifname)?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The IPAM plugin of a teardown (DEL, GC), unless it is this plugin: ADD
/// refused that configuration, so nothing was leased, and running it would
/// wait for the lock this invocation holds.
fn teardown_ipam<'a>(cfg: &'a Config, env: &'a Env, stdin: &'a [u8]) -> Option<Ipam<'a>> {
    let ipam = Ipam::new(&cfg.ipam.as_ref()?.plugin, &env.path, stdin);
    match refuse_self_as_ipam(&ipam) {
        Err(e) if e.code == code::INVALID_CONFIG => {
            eprintln!(
                "macvtap: not running the IPAM plugin: {}",
                crate::error::escape_controls(&e.msg)
            );
            None
        }
        _ => Some(ipam),
    }
}

/// One error for many: the first one's code, every message.
fn combine(errors: Vec<CniError>) -> Result<()> {
    let mut iter = errors.into_iter();
    let Some(mut first) = iter.next() else {
        return Ok(());
    };
    for e in iter {
        first.msg = format!("{}; {}", first.msg, e.msg);
    }
    Err(first)
}
