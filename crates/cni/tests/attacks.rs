//! The tenant's attacks on the CNI plugin (issue 12, "Proof").
//!
//! Each test acts as an unprivileged tenant would: it controls the network
//! configuration (a NetworkAttachmentDefinition's `config`), CNI_ARGS its
//! pod's runtime passes, and files in directories it owns (made here owned
//! by uid 4242, and written by a thread whose filesystem uid is 4242). The
//! node's own settings (MACVTAP_STATE_DIR, the node policy file) are set
//! explicitly as the node's administrator would, so a configuration's
//! `stateDir` is never copied into them. Every attack takes a snapshot of
//! the files, links and leases it targets before and after, and asserts
//! that nothing changed and that the error is the right CNI code.
//!
//! 1. magic-link state dir (`/proc/<pid>/root/...`), in the configuration
//!    (7) and as the node's own setting (106);
//! 2. a symlink swapped in a tenant-writable directory while thousands of
//!    DELs run with the node's state dir pointing through it;
//! 3. forged records in the node's root-owned state dir;
//! 4. self-IPAM (7) and a slow IPAM that blocks only its own container;
//! 5. device pre-emption in both attach modes (grants, pods, claims);
//! 6. source-mode sniffing and the `sourceMacs` overflow;
//! 7. kill -9 at every state- or kernel-changing step of ADD (strace fault
//!    injection), followed by the runtime's DEL and a retried ADD;
//! 8. control characters in errors and on stderr.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const BASE: u32 = 4096;
/// The tenant's uid (and gid): owns its directories, nothing else.
const TENANT: u32 = 4242;

// ------------------------------------------------------------------ helpers

/// A tenant's standalone configuration: no `stateDir` (that is the node's).
fn standalone(name: &str) -> Value {
    json!({"cniVersion": "1.0.0", "name": name, "type": "macvtap", "master": LOWER})
}

/// A tenant's device-plugin configuration.
fn device(id: &str) -> Value {
    json!({"cniVersion": "1.0.0", "name": "dpnet", "type": "macvtap", "deviceID": id})
}

/// The lab's invocation with the node's state directory set as node input
/// (MACVTAP_STATE_DIR), whatever the configuration says.
fn node_plugin(lab: &Lab, command: &str, config: &Value) -> Plugin {
    lab.plugin(command, config)
        .env(STATE_DIR_ENV, lab.state_dir().to_string_lossy())
}

/// The same invocation, but of `binary` (a wrapper around the plugin).
fn plugin_via(lab: &Lab, binary: &Path, command: &str, config: &Value) -> Plugin {
    Plugin::new(binary, lab.node.path())
        .env(NODE_CONFIG_ENV, lab.node_policy_path().to_string_lossy())
        .env(STATE_DIR_ENV, lab.state_dir().to_string_lossy())
        .command(command)
        .container_id(&lab.container_id)
        .netns(lab.pod.path())
        .ifname(POD_IFNAME)
        .cni_path(&lab.cni_path())
        .config(config)
}

/// What a snapshot holds: one line of facts per file, link or lease.
type Snapshot = BTreeMap<String, String>;

/// Every entry below each of `roots` (not following symlinks: type, mode,
/// owner, inode, device number, content or target) and every link of each
/// of `namespaces` (index, kind, MAC, MTU, lower device, up).
fn snapshot(roots: &[&Path], namespaces: &[&Netns]) -> Snapshot {
    let mut out = Snapshot::new();
    for root in roots {
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            let Ok(md) = fs::symlink_metadata(&p) else {
                continue;
            };
            let t = md.file_type();
            if t.is_dir() {
                // Directories are only containers (the plugin makes its
                // empty subdirectories as it goes): their entries count.
                if let Ok(entries) = fs::read_dir(&p) {
                    stack.extend(entries.flatten().map(|e| e.path()));
                }
                continue;
            }
            if p.file_name().is_some_and(|n| n == "lock") {
                continue; // the node lock: an empty file, made on first use
            }
            let (kind, content) = if t.is_symlink() {
                let target = fs::read_link(&p).map(|t| t.display().to_string());
                ("symlink", target.unwrap_or_default())
            } else if t.is_file() {
                let bytes = fs::read(&p).unwrap_or_default();
                ("file", String::from_utf8_lossy(&bytes).into_owned())
            } else if t.is_char_device() {
                ("chardev", String::new())
            } else {
                ("other", String::new())
            };
            out.insert(
                format!("file {}", p.display()),
                format!(
                    "{kind} mode {:o} owner {}:{} inode {} rdev {:x} {content}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid(),
                    md.ino(),
                    md.rdev()
                ),
            );
        }
    }
    for ns in namespaces {
        for l in ns.links() {
            out.insert(
                format!("link {}/{}", ns.name(), l.name),
                format!(
                    "ifindex {} kind {:?} mode {:?} mac {} mtu {} lower {:?} up {}",
                    l.ifindex,
                    l.kind,
                    l.mode,
                    l.mac,
                    l.mtu,
                    l.link_index,
                    l.is_up()
                ),
            );
        }
    }
    out
}

/// What differs between two snapshots, one line per entry.
fn differences(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut diffs = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => diffs.push(format!("gone:    {k}: {v}")),
            Some(a) if a != v => diffs.push(format!("changed: {k}: {v}\n     ->  {a}")),
            _ => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            diffs.push(format!("new:     {k}: {v}"));
        }
    }
    diffs
}

fn assert_unchanged(what: &str, before: &Snapshot, after: &Snapshot) {
    let diffs = differences(before, after);
    assert!(
        diffs.is_empty(),
        "{what}: the attack changed what it targeted:\n{}",
        diffs.join("\n")
    );
}

/// A root-only file (0600 in a 0700 directory) that a forged record names.
fn root_only_file(lab: &Lab, name: &str) -> PathBuf {
    let dir = lab.dir.path().join(format!("root-only-{name}"));
    fs::create_dir(&dir).expect("mkdir root-only dir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    let file = dir.join(name);
    fs::write(&file, "precious").expect("write victim file");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
    file
}

fn assert_intact(file: &Path, when: &str) {
    match fs::read_to_string(file) {
        Ok(s) if s == "precious" => {}
        other => panic!(
            "{when}: the victim file {} was changed: {other:?}",
            file.display()
        ),
    }
}

/// Device and inode of a namespace file (what records carry).
fn ns_identity(ns: &Netns) -> (u64, u64) {
    let md = fs::metadata(ns.path()).expect("stat netns");
    (md.dev(), md.ino())
}

/// A record as the plugin writes it, naming `link` in `ns` (with `ns`'s
/// real identity unless `identity` says otherwise) and `node_path`.
fn forged_record(
    container_id: &str,
    network: &str,
    ns: &Netns,
    identity: (u64, u64),
    link: &Link,
    node_path: &Path,
) -> Value {
    json!({
        "network": network,
        "containerId": container_id,
        "ifname": POD_IFNAME,
        "netns": ns.path(),
        "netnsDev": identity.0,
        "netnsIno": identity.1,
        "phase": "attached",
        "ifindex": link.ifindex,
        "deviceId": null,
        "nodePath": node_path,
        "mac": link.mac,
    })
}

/// Switch this thread's filesystem identity to the tenant's: what it makes
/// is the tenant's, and it may change only what the tenant may (the
/// kernel drops the filesystem capabilities with a non-zero fsuid).
fn become_tenant() {
    use nix::unistd::{setfsgid, setfsuid, Gid, Uid};
    setfsgid(Gid::from_raw(TENANT));
    setfsuid(Uid::from_raw(TENANT));
    let uid = setfsuid(Uid::from_raw(u32::MAX)); // asks, changes nothing
    assert_eq!(uid.as_raw(), TENANT, "setfsuid did not take");
}

/// Run `f` as the tenant, on a thread of its own.
fn as_tenant<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        s.spawn(|| {
            become_tenant();
            f()
        })
        .join()
        .expect("tenant thread")
    })
}

/// Write `value` as JSON to `path`, creating parents (as whoever runs it).
fn write_json(path: &Path, value: &Value) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir parents");
    fs::write(path, value.to_string()).expect("write json");
}

fn require_strace() {
    let ok = Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "strace is needed for these attacks (apt-get install -y strace; scripts/install-deps)"
    );
}

/// A shell wrapper `<lab>/<name>` that runs the plugin under strace with
/// `strace_args`.
fn strace_wrapper(lab: &Lab, name: &str, strace_args: &str) -> PathBuf {
    let path = lab.dir.path().join(name);
    fs::write(
        &path,
        format!("#!/bin/sh\nexec strace {strace_args} {PLUGIN}\n"),
    )
    .expect("write wrapper");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A child process killed (by its pid) and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process this test started indirectly (recorded by pid in a file),
/// killed by that pid when dropped.
struct KillPid(Option<i32>);

impl Drop for KillPid {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            // SAFETY: kill(2) on a pid this test's own child recorded.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Start the plugin as the node would (MACVTAP_STATE_DIR set), without
/// waiting for it.
fn spawn_plugin(lab: &Lab, command: &str, container: &str, netns: &Path, config: &Value) -> Reaped {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", lab.node.path().display()))
        .arg("--")
        .arg(PLUGIN)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env(NODE_CONFIG_ENV, lab.node_policy_path())
        .env(STATE_DIR_ENV, lab.state_dir())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", POD_IFNAME)
        .env("CNI_PATH", lab.cni_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the plugin");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(&serde_json::to_vec(config).expect("json"))
        .expect("write config");
    drop(stdin);
    Reaped(child)
}

/// Wait up to `limit` for `cond`.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Everything an attachment could leave, stricter than `Lab::leftovers`:
/// also any file of the state other than `resources.json`, the node lock
/// and the device plugin's grants (claims, container locks, device nodes,
/// temporary files).
fn strict_leftovers(lab: &Lab) -> Vec<String> {
    let mut left = lab.leftovers();
    let state = lab.state_dir();
    for f in files_under(&state) {
        let rel = f
            .strip_prefix(&state)
            .expect("below state")
            .to_string_lossy()
            .into_owned();
        let grant = rel.starts_with("allocations/")
            && rel.ends_with(".json")
            && !rel.starts_with("allocations/.");
        if !(rel == "resources.json" || rel == "lock" || grant) {
            left.push(format!("state file {rel}"));
        }
    }
    left.sort();
    left.dedup();
    left
}

/// The msg of an error JSON.
fn msg(err: &Value) -> String {
    err["msg"].as_str().unwrap_or_default().to_string()
}

/// Characters that must never reach a log line raw.
fn is_bad_char(c: char) -> bool {
    (c.is_control() && c != '\n') || matches!(c, '\u{2028}' | '\u{2029}')
}

// ------------------------------------------------------------- 1. magic link

/// A process of the test in private mount and network namespaces (a
/// container): in its mount namespace the node's state directory path is a
/// tmpfs holding the tenant's forged state. Killed (by pid) on drop.
struct Container {
    child: Reaped,
}

impl Container {
    fn start(state: &Path, forged: &Path, container_id: &str) -> Container {
        let pods = state.join("pods").join(container_id);
        let script = format!(
            "mount -t tmpfs -o mode=0755 tmpfs '{state}' && mkdir -p '{pods}' && \
             cp '{forged}' '{pods}/{POD_IFNAME}.json' && echo ready && exec sleep 600",
            state = state.display(),
            pods = pods.display(),
            forged = forged.display()
        );
        let mut child = Command::new("unshare")
            .args([
                "--mount",
                "--net",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start unshare");
        let stdout = child.stdout.take().expect("stdout");
        let child = Reaped(child);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read ready");
        assert_eq!(line.trim(), "ready", "the container did not start");
        Container { child }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// Syscall lines of an strace log that reach into the state (any of its
/// well-known names), or open `forbidden` successfully.
fn state_accesses(log: &Path, forbidden: &str) -> Vec<String> {
    let text = fs::read_to_string(log).expect("read strace log");
    let names = [
        "\"pods\"",
        "\"locks\"",
        "\"lock\"",
        "\"dev\"",
        "\"claims\"",
        "\"allocations\"",
        "\"resources.json\"",
        "\"state\"",
        "net1.json",
    ];
    // An lstat of the link itself (to name it in the error) does not go
    // through it: only an access that could resolve it counts.
    let lstat_of_link = |l: &str| l.contains("newfstatat(") && l.contains("AT_SYMLINK_NOFOLLOW");
    text.lines()
        .filter(|l| {
            names.iter().any(|n| l.contains(n))
                || (l.contains(forbidden) && !l.contains("= -1") && !lstat_of_link(l))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn attack_1_magic_link_state_dir_is_refused_and_nothing_is_read_or_written() {
    require_strace();
    let lab = lab("atk-magic");
    let state = lab.state_dir();
    write_resources(&state, &[Resource::new("dataplane", LOWER, 4, BASE)]);
    // Another pod's attachment in the node's real state.
    let victim = lab.netns("victim");
    let vcid = lab.other_container_id("victim");
    node_plugin(&lab, "ADD", &standalone("victimnet"))
        .container_id(&vcid)
        .netns(victim.path())
        .run()
        .result();
    let vlink = victim.expect_link(POD_IFNAME);
    let secret = root_only_file(&lab, "shadow");
    // The tenant's forged record: DEL of its container would remove the
    // victim's link and the root-only file, if it were believed.
    let forged = lab.dir.path().join("forged.json");
    write_json(
        &forged,
        &forged_record(
            &lab.container_id,
            "tenantnet",
            &victim,
            ns_identity(&victim),
            &vlink,
            &secret,
        ),
    );
    let container = Container::start(&state, &forged, &lab.container_id);
    let pid = container.pid();
    let through_container = format!("/proc/{pid}/root{}", state.display());
    // (Proof that the magic path leads to the tenant's state, not the node's.)
    assert!(
        Path::new(&through_container)
            .join("pods")
            .join(&lab.container_id)
            .join("net1.json")
            .exists(),
        "the container's view of the state path is not the forged one"
    );

    let targets = |lab: &Lab| {
        snapshot(
            &[&state, secret.parent().expect("dir"), &lab.ipam_dir()],
            &[&lab.node, &lab.pod, &victim],
        )
    };
    let before = targets(&lab);
    let log = lab.dir.path().join("magic.strace");
    let traced = strace_wrapper(
        &lab,
        "traced-plugin",
        &format!("-f -qq -o {} -e trace=%file", log.display()),
    );
    let gc_config = |name: &str| {
        json!({"cniVersion": "1.1.0", "name": name, "type": "macvtap", "master": LOWER,
               "cni.dev/valid-attachments": []})
    };

    // (a) In the configuration: refused (7) before anything is opened.
    let magic_paths = [
        through_container.clone(),
        format!("/proc/self/root{}", state.display()),
        format!("/proc/thread-self/root{}", state.display()),
        format!("/proc/{pid}/cwd{}", state.display()),
    ];
    let mut failures = Vec::new();
    for path in &magic_paths {
        for command in ["ADD", "DEL", "GC"] {
            let mut config = if command == "GC" {
                gc_config("tenantnet")
            } else {
                standalone("tenantnet")
            };
            config["stateDir"] = json!(path);
            let mut plugin = plugin_via(&lab, &traced, command, &config);
            if command != "ADD" {
                plugin = plugin.unset("CNI_NETNS");
            }
            let out = plugin.run();
            let label = format!("config stateDir {path}, {command}");
            match out.error_code() {
                Ok(7) => {
                    let m = msg(out.json.as_ref().expect("json"));
                    if !(m.contains("stateDir") && m.contains("node")) {
                        failures.push(format!("{label}: unclear message: {m}"));
                    }
                }
                Ok(c) => failures.push(format!("{label}: code {c}, want 7\n{out}")),
                Err(e) => failures.push(format!("{label}: {e}")),
            }
            // Refused before the state is opened at all: no syscall names
            // the magic path or anything of the state.
            let touched: Vec<String> = state_accesses(&log, "/proc/")
                .into_iter()
                .chain(
                    fs::read_to_string(&log)
                        .unwrap_or_default()
                        .lines()
                        .filter(|l| l.contains(&format!("/proc/{pid}")) || l.contains("/root/"))
                        .map(str::to_string),
                )
                .filter(|l| !l.contains("/proc/self/maps"))
                .collect();
            if !touched.is_empty() {
                failures.push(format!(
                    "{label}: the plugin looked at the state: {touched:#?}"
                ));
            }
            assert_unchanged(&label, &before, &targets(&lab));
        }
    }

    // (b) The node misconfigured: MACVTAP_STATE_DIR itself through a
    // magic link (or /proc/self, a symlink): 106 naming it, nothing below
    // it opened.
    let node_paths = [
        (through_container.clone(), format!("/proc/{pid}/root")),
        (
            format!("/proc/self/root{}", state.display()),
            "/proc/self".to_string(),
        ),
        (
            format!("/proc/{pid}/cwd{}", state.display()),
            format!("/proc/{pid}/cwd"),
        ),
    ];
    for (path, names) in &node_paths {
        for command in ["ADD", "DEL", "GC"] {
            let config = if command == "GC" {
                gc_config("tenantnet")
            } else {
                standalone("tenantnet")
            };
            let mut plugin =
                plugin_via(&lab, &traced, command, &config).env(STATE_DIR_ENV, path.as_str());
            if command != "ADD" {
                plugin = plugin.unset("CNI_NETNS");
            }
            let out = plugin.run();
            let label = format!("MACVTAP_STATE_DIR={path}, {command}");
            match out.error_code() {
                Ok(106) => {
                    // (Whether it calls it a symlink: attack_1b.)
                    let m = msg(out.json.as_ref().expect("json"));
                    if !m.contains(&format!("state directory {names}:")) {
                        failures.push(format!("{label}: the message does not name {names}: {m}"));
                    }
                }
                Ok(c) => failures.push(format!("{label}: code {c}, want 106\n{out}")),
                Err(e) => failures.push(format!("{label}: {e}")),
            }
            let touched = state_accesses(&log, "\"root\"");
            if !touched.is_empty() {
                failures.push(format!(
                    "{label}: opened below the magic link: {touched:#?}"
                ));
            }
            assert_unchanged(&label, &before, &targets(&lab));
        }
    }
    // The tenant's forged record is still there: nothing acted on it.
    assert!(
        Path::new(&through_container)
            .join("pods")
            .join(&lab.container_id)
            .join("net1.json")
            .exists(),
        "the forged record in the container was removed: the plugin read it"
    );
    assert_intact(&secret, "after the magic-link attacks");
    assert_eq!(victim.expect_link(POD_IFNAME).ifindex, vlink.ifindex);
    drop(container);
    assert_no_failures(&failures);
    // The victim's own DEL still works.
    node_plugin(&lab, "DEL", &standalone("victimnet"))
        .container_id(&vcid)
        .netns(victim.path())
        .run()
        .success();
    assert!(victim.link(POD_IFNAME).is_none());
}

/// The node's MACVTAP_STATE_DIR through a symlink or a magic link is
/// refused (attack 1 proves that); the message should say that is why, not
/// that the component is "not a directory" (it is one, behind a link).
#[test]
fn attack_1b_a_link_in_the_node_state_path_is_called_a_link() {
    let lab = lab("atk-magic-words");
    let state = lab.state_dir();
    let link = lab.dir.path().join("link-to-state");
    symlink(&state, &link).expect("symlink");
    let mut failures = Vec::new();
    for (path, names) in [
        (
            format!("/proc/self/root{}", state.display()),
            "/proc/self".to_string(),
        ),
        (
            format!("/proc/1/root{}", state.display()),
            "/proc/1/root".to_string(),
        ),
        (link.display().to_string(), link.display().to_string()),
    ] {
        let out = lab
            .plugin("ADD", &standalone("tenantnet"))
            .env(STATE_DIR_ENV, path.as_str())
            .run();
        let err = out.error(106);
        let m = msg(&err);
        if !(m.contains(&format!("state directory {names}:")) && m.contains("symlink")) {
            failures.push(format!("MACVTAP_STATE_DIR={path}: {m}"));
        }
    }
    lab.assert_clean("refused state dirs");
    assert_no_failures(&failures);
}

// ------------------------------------------------------------ 2. symlink swap

/// renameat2(RENAME_EXCHANGE) of two names in `dir`.
fn exchange(dir: &Path, a: &str, b: &str) -> bool {
    let a = CString::new(dir.join(a).as_os_str().as_bytes()).expect("cstring");
    let b = CString::new(dir.join(b).as_os_str().as_bytes()).expect("cstring");
    // SAFETY: two valid NUL-terminated paths; renameat2 only reads them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    rc == 0
}

/// Sets the flag when dropped, so that a panicking test still stops the
/// swapper (the scope would wait for it forever).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn attack_2_symlink_swapped_under_thousands_of_dels_changes_nothing() {
    let lab = lab("atk-swap");
    let state = lab.state_dir();
    // The victim: another pod's attachment (with a lease) in the real state.
    let victim = lab.netns("victim");
    let vcid = lab.other_container_id("victim");
    let mut vconfig = standalone("victimnet");
    vconfig["ipam"] = lab.host_local(1);
    node_plugin(&lab, "ADD", &vconfig)
        .container_id(&vcid)
        .netns(victim.path())
        .run()
        .result();
    let vlink = victim.expect_link(POD_IFNAME);
    assert_eq!(leases_in(&lab.ipam_dir()).len(), 1);
    let secret = root_only_file(&lab, "secret");
    let attacker = lab.container_id.clone();
    let record_for = |cid: &str| {
        forged_record(
            cid,
            "tenantnet",
            &victim,
            ns_identity(&victim),
            &vlink,
            &secret,
        )
    };

    // Control: the forged record is potent. Believed from a root-owned
    // state directory it removes the link it names (a decoy here) ...
    let decoy = lab.netns("decoy");
    lab.node.ip_cmd(&format!(
        "link add link {LOWER} name {POD_IFNAME} netns {} type macvtap",
        decoy.name()
    ));
    let decoy_link = decoy.expect_link(POD_IFNAME);
    let control = lab.dir.subdir("control-state");
    write_json(
        &control.join("pods").join(&attacker).join("net1.json"),
        &forged_record(
            &attacker,
            "tenantnet",
            &decoy,
            ns_identity(&decoy),
            &decoy_link,
            &secret,
        ),
    );
    lab.plugin("DEL", &standalone("tenantnet"))
        .env(STATE_DIR_ENV, control.to_string_lossy())
        .unset("CNI_NETNS")
        .run()
        .success();
    assert!(
        decoy.link(POD_IFNAME).is_none(),
        "control: a record in a trusted state dir should have removed the decoy link"
    );
    // ... but even then never the file its nodePath names.
    assert_intact(&secret, "control DEL");

    let targets = || {
        snapshot(
            &[&state, secret.parent().expect("dir"), &lab.ipam_dir()],
            &[&lab.node, &victim],
        )
    };
    let before = targets();
    let del_config = {
        let mut c = standalone("tenantnet");
        c["ipam"] = lab.host_local(1);
        c
    };
    let gc_config = json!({"cniVersion": "1.1.0", "name": "tenantnet", "type": "macvtap",
                           "master": LOWER, "ipam": lab.host_local(1),
                           "cni.dev/valid-attachments": []});

    // (directory, how it is made, DELs, what the refusal says)
    let variants: [(&str, u32, u32, usize, &str); 3] = [
        ("emptydir", 0, 0o777, 300, "lets others write"),
        ("tenant-owned", TENANT, 0o755, 300, "owned by uid 4242"),
        ("sticky", 0, 0o1777, 2000, "sticky/cur:"),
    ];
    let started = Instant::now();
    let mut report = Vec::new();
    for (name, owner, mode, dels, why) in variants {
        let dir = lab.dir.path().join(name);
        fs::create_dir(&dir).expect("mkdir");
        std::os::unix::fs::chown(&dir, Some(owner), Some(owner)).expect("chown");
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).expect("chmod");
        // The tenant's doing: two forged state dirs and two symlinks.
        as_tenant(|| {
            for forged in ["forged", "forged2"] {
                for cid in [&attacker, &vcid] {
                    write_json(
                        &dir.join(forged).join("pods").join(cid).join("net1.json"),
                        &record_for(cid),
                    );
                }
            }
            symlink(&state, dir.join("cur")).expect("symlink to the real state");
            symlink(dir.join("forged2"), dir.join("evil")).expect("symlink to the forged state");
        });
        let forged_before = snapshot(&[&dir.join("forged"), &dir.join("forged2")], &[]);
        let node_state_dir = dir.join("cur");
        let stop = AtomicBool::new(false);
        let swaps = AtomicU64::new(0);
        let mut failures: Vec<String> = Vec::new();
        thread::scope(|s| {
            let _stop = StopOnDrop(&stop);
            s.spawn(|| {
                become_tenant();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let other = if i.is_multiple_of(2) {
                        "evil"
                    } else {
                        "forged"
                    };
                    if exchange(&dir, "cur", other) {
                        swaps.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            });
            for i in 0..dels {
                let gc = i % 25 == 24;
                let out = lab
                    .plugin(
                        if gc { "GC" } else { "DEL" },
                        if gc { &gc_config } else { &del_config },
                    )
                    .env(STATE_DIR_ENV, node_state_dir.to_string_lossy())
                    .unset("CNI_NETNS")
                    .run();
                match out.error_code() {
                    Ok(106) if msg(out.json.as_ref().expect("json")).contains(why) => {}
                    Ok(106) => {
                        // The swapper may show the walk either kind of entry.
                        let m = msg(out.json.as_ref().expect("json"));
                        let known = [
                            "lets others write",
                            "owned by uid 4242",
                            "is a symlink or a magic link",
                            "not a directory", // a symlink, opened O_DIRECTORY|O_NOFOLLOW
                        ];
                        if !known.iter().any(|k| m.contains(k))
                            || !m.contains(&dir.display().to_string())
                        {
                            failures.push(format!("{name} #{i}: unclear 106: {m}"));
                        }
                    }
                    Ok(c) => failures.push(format!("{name} #{i}: code {c}, want 106\n{out}")),
                    Err(e) => failures.push(format!("{name} #{i}: {e}")),
                }
                if fs::read_to_string(&secret).ok().as_deref() != Some("precious") {
                    failures.push(format!("{name} #{i}: the root-only file was changed"));
                    break;
                }
                if i % 500 == 499 && victim.link(POD_IFNAME).is_none() {
                    failures.push(format!("{name} #{i}: the victim's link is gone"));
                    break;
                }
                if failures.len() > 5 {
                    break;
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
        let swaps = swaps.load(Ordering::Relaxed);
        assert_no_failures(&failures);
        assert!(
            swaps > dels as u64,
            "{name}: only {swaps} swaps during {dels} DELs: no race"
        );
        report.push(format!("{name}: {dels} DEL/GC, {swaps} swaps, all 106"));
        // The forged records are all still there (cur may have ended on
        // any of the three entries; put the real-state symlink back).
        let forged_after = snapshot(&[&dir.join("forged"), &dir.join("forged2")], &[]);
        let records = |s: &Snapshot| -> Vec<String> {
            let mut v: Vec<String> = s
                .iter()
                .filter(|(k, _)| k.ends_with("net1.json"))
                .map(|(_, v)| v.clone())
                .collect();
            v.sort();
            v
        };
        let mut all_after = records(&forged_after);
        all_after.extend(records(&snapshot(
            &[&dir.join("cur"), &dir.join("evil")],
            &[],
        )));
        all_after.sort();
        all_after.dedup();
        assert_eq!(
            records(&forged_before)
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>(),
            all_after.into_iter().collect(),
            "{name}: a forged record was removed or changed: the plugin acted on it"
        );
        assert_unchanged(name, &before, &targets());
    }
    println!(
        "symlink swap: {} in {:?}",
        report.join("; "),
        started.elapsed()
    );
    assert_intact(&secret, "after the swaps");
    assert_eq!(victim.expect_link(POD_IFNAME).mac, vlink.mac);
    // The victim's own DEL works and releases its lease.
    node_plugin(&lab, "DEL", &vconfig)
        .container_id(&vcid)
        .netns(victim.path())
        .run()
        .success();
    assert!(victim.link(POD_IFNAME).is_none());
    assert!(leases_in(&lab.ipam_dir()).is_empty());
}

// ---------------------------------------------------------- 3. forged records

#[test]
fn attack_3_forged_records_in_the_node_state_touch_no_victim() {
    let lab = lab("atk-forged");
    let state = lab.state_dir();
    write_resources(&state, &[Resource::new("dataplane", LOWER, 4, BASE)]);
    // Victims: a pod's macvtap attachment (made by the plugin), a veth in
    // the same pod, a root-only file; another namespace for identity.
    let victim = lab.netns("victim");
    let vcid = lab.other_container_id("victim");
    node_plugin(&lab, "ADD", &device("dataplane-0"))
        .container_id(&vcid)
        .netns(victim.path())
        .run()
        .result();
    let vlink = victim.expect_link(POD_IFNAME);
    victim.ip_cmd("link add vveth0 type veth peer name vveth1");
    let vveth = victim.expect_link("vveth0");
    let other = lab.netns("other");
    let shadow = root_only_file(&lab, "shadow");
    let shadow_md = fs::metadata(&shadow).expect("stat");
    let (vdev, vino) = ns_identity(&victim);
    let wrong = ns_identity(&other);

    let base = |cid: &str| forged_record(cid, "tenantnet", &victim, wrong, &vlink, &shadow);
    let with = |cid: &str, patch: Value| {
        let mut r = base(cid);
        for (k, v) in patch.as_object().expect("object") {
            r[k] = v.clone();
        }
        r
    };
    let cid = |n: u32| lab.other_container_id(&format!("forged{n}"));
    // (label, container ID of the file, CNI_IFNAME, record)
    let cases: Vec<(&str, String, &str, Value)> = vec![
        ("containerId ../x", cid(1), POD_IFNAME, with(&cid(1), json!({"containerId": "../x"}))),
        ("ifname with '/'", cid(2), POD_IFNAME, with(&cid(2), json!({"ifname": "net1/../../x"}))),
        (
            "nodePath of a root-only file, the victim's link in a namespace that is not the victim's",
            cid(3),
            POD_IFNAME,
            base(&cid(3)),
        ),
        (
            "victim's ifindex and MAC, netns path of the victim, identity of another namespace",
            cid(4),
            POD_IFNAME,
            with(&cid(4), json!({"netnsDev": wrong.0, "netnsIno": wrong.1})),
        ),
        (
            "an intent with the victim's MAC, identity of another namespace",
            cid(5),
            POD_IFNAME,
            with(&cid(5), json!({"phase": "intent", "ifindex": 0})),
        ),
        (
            "the victim's veth by name and ifindex, true identity",
            cid(6),
            "vveth0",
            with(
                &cid(6),
                json!({"ifname": "vveth0", "ifindex": vveth.ifindex, "mac": vveth.mac,
                       "netnsDev": vdev, "netnsIno": vino}),
            ),
        ),
        (
            "the victim's deviceID with the root-only file's identity",
            cid(7),
            POD_IFNAME,
            with(
                &cid(7),
                json!({"deviceId": "dataplane-0", "nodeInode": shadow_md.ino(),
                       "nodeRdev": shadow_md.rdev(),
                       "nodeCtimeNs": shadow_md.ctime() * 1_000_000_000 + shadow_md.ctime_nsec()}),
            ),
        ),
        ("deviceId ../../etc/shadow-1", cid(8), POD_IFNAME, with(&cid(8), json!({"deviceId": "../../etc/shadow-1"}))),
        ("a relative netns path", cid(9), POD_IFNAME, with(&cid(9), json!({"netns": "../../run/netns/x"}))),
        ("ifindex out of range", cid(10), POD_IFNAME, with(&cid(10), json!({"ifindex": 4_294_967_295u64}))),
        ("a MAC that is multicast", cid(11), POD_IFNAME, with(&cid(11), json!({"phase": "intent", "ifindex": 0, "mac": "01:00:5e:00:00:01"}))),
    ];
    let vnode = state.join("dev/dataplane-0");
    let mut outcomes = Vec::new();
    for (label, file_cid, ifname, record) in cases {
        let path = state
            .join("pods")
            .join(&file_cid)
            .join(format!("{ifname}.json"));
        write_json(&path, &record);
        // Everything but the forged file's own directory and lock.
        let targets = || {
            let mut s = snapshot(
                &[&state, shadow.parent().expect("dir")],
                &[&lab.node, &victim, &other],
            );
            s.retain(|k, _| !k.contains(&file_cid));
            s
        };
        let before = targets();
        assert!(vnode.exists());
        let out = node_plugin(&lab, "DEL", &standalone("tenantnet"))
            .container_id(&file_cid)
            .ifname(ifname)
            .unset("CNI_NETNS")
            .run();
        let outcome = match out.exit_code {
            Some(0) => "DEL succeeded".to_string(),
            _ => format!("DEL refused: {}", out.any_error()),
        };
        assert_unchanged(label, &before, &targets());
        assert_intact(&shadow, label);
        outcomes.push(format!("{label}: {outcome}"));
    }
    println!("forged records:\n  {}", outcomes.join("\n  "));
    // The victim's own attachment is whole and its DEL works.
    assert_eq!(victim.expect_link(POD_IFNAME).ifindex, vlink.ifindex);
    node_plugin(&lab, "DEL", &device("dataplane-0"))
        .container_id(&vcid)
        .netns(victim.path())
        .run()
        .success();
    assert!(victim.link(POD_IFNAME).is_none() && !vnode.exists());
    assert!(victim.link("vveth0").is_some());
}

// ------------------------------------------------------------- 4. self-IPAM

#[test]
fn attack_4a_self_ipam_is_refused_at_once_and_leaves_no_lock_held() {
    let lab = lab("atk-selfipam");
    // A short lock timeout bounds what a self-call could wait.
    lab.set_node_policy(&json!({"lockTimeoutSeconds": 5}));
    let mut failures = Vec::new();
    let quick = Duration::from_secs(3);
    let targets = |lab: &Lab| snapshot(&[&lab.state_dir()], &[&lab.node, &lab.pod]);
    let before = targets(&lab);

    // By name.
    let mut by_name = standalone("tenantnet");
    by_name["ipam"] = json!({"type": "macvtap"});
    let out = node_plugin(&lab, "ADD", &by_name).run();
    let err = out.error(7);
    assert!(msg(&err).contains("this plugin itself"), "{err}");
    assert!(out.elapsed < quick, "took {:?}", out.elapsed);
    let del = node_plugin(&lab, "DEL", &by_name).run();
    assert!(del.elapsed < quick, "DEL took {:?}", del.elapsed);
    if del.exit_code != Some(0) {
        del.error(7);
    }
    assert_unchanged("ipam type macvtap", &before, &targets(&lab));

    // A symlink to the plugin under another name, in a CNI_PATH directory.
    symlink(PLUGIN, lab.bin_dir().join("evil-ipam")).expect("symlink");
    let mut by_link = standalone("tenantnet");
    by_link["ipam"] = json!({"type": "evil-ipam"});
    let out = node_plugin(&lab, "ADD", &by_link).run();
    let err = out.error(7);
    assert!(msg(&err).contains("this plugin itself"), "{err}");
    assert!(out.elapsed < quick, "took {:?}", out.elapsed);
    lab.assert_clean("ADD with a symlinked self-IPAM");
    // The runtime's DEL with the same configuration: the plugin as its own
    // IPAM must be refused (or skipped) there too, not run while this
    // container's lock is held (its child would wait for that lock).
    let del = node_plugin(&lab, "DEL", &by_link)
        .timeout(Duration::from_secs(60))
        .run();
    let del_ok = del.exit_code == Some(0) || del.error_code() == Ok(7);
    if !del_ok || del.elapsed >= quick {
        failures.push(format!(
            "DEL with a symlinked self-IPAM: took {:?}, want 0 or code 7 at once\n{del}",
            del.elapsed
        ));
    }
    lab.assert_clean("DEL with a symlinked self-IPAM");

    // A copy (another inode): the child refuses itself before any lock.
    fs::copy(PLUGIN, lab.bin_dir().join("evil-copy")).expect("copy");
    let mut by_copy = standalone("tenantnet");
    by_copy["ipam"] = json!({"type": "evil-copy"});
    let out = node_plugin(&lab, "ADD", &by_copy).run();
    match out.error_code() {
        Ok(7) => {}
        other => failures.push(format!(
            "ADD with a copy of the plugin as IPAM: {other:?}\n{out}"
        )),
    }
    if out.elapsed >= quick {
        failures.push(format!(
            "ADD with a copied self-IPAM took {:?}",
            out.elapsed
        ));
    }
    lab.assert_clean("ADD with a copied self-IPAM");

    // The caller killed mid-call (as a runtime does at its timeout): the
    // container is not left locked, for any of the three.
    for config in [&by_name, &by_link, &by_copy] {
        let mut child = spawn_plugin(&lab, "ADD", &lab.container_id, &lab.pod.path(), config);
        thread::sleep(Duration::from_millis(5));
        let _ = child.0.kill();
        let _ = child.0.wait();
    }
    let t = Instant::now();
    let ok = standalone("tenantnet");
    node_plugin(&lab, "DEL", &ok).run().success(); // the runtime's DEL
    node_plugin(&lab, "ADD", &ok).run().result();
    node_plugin(&lab, "DEL", &ok).run().success();
    assert!(
        t.elapsed() < quick,
        "ADD+DEL after the killed callers took {:?}: a lock was left held",
        t.elapsed()
    );
    lab.assert_clean("after the killed self-IPAM callers");
    assert_no_failures(&failures);
}

#[test]
fn attack_4b_a_slow_ipam_blocks_only_its_own_container() {
    let lab = lab("atk-slowipam");
    let state = lab.state_dir();
    write_resources(&state, &[Resource::new("dataplane", LOWER, 4, BASE)]);
    lab.set_node_policy(&json!({"lockTimeoutSeconds": 2}));
    let a = lab.container_id.clone();
    let flag = lab.dir.path().join("slow.flag");
    let pidfile = lab.dir.path().join("slow.pid");
    fs::write(&flag, "").expect("flag");
    let script = format!(
        "#!/bin/sh\n\
         cat >/dev/null\n\
         case \"$CNI_COMMAND\" in\n\
         ADD)\n\
           if [ \"$CNI_CONTAINERID\" = '{a}' ] && [ -e '{flag}' ]; then echo $$ > '{pid}.tmp'; mv '{pid}.tmp' '{pid}'; exec sleep 20; fi\n\
           echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.200.9.10/24\"}}]}}' ;;\n\
         VERSION) echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.3.1\",\"0.4.0\",\"1.0.0\"]}}' ;;\n\
         esac\n\
         exit 0\n",
        flag = flag.display(),
        pid = pidfile.display()
    );
    let ipam = lab.bin_dir().join("slow-ipam");
    fs::write(&ipam, script).expect("write slow IPAM");
    fs::set_permissions(&ipam, fs::Permissions::from_mode(0o755)).expect("chmod");
    let with_ipam = |mut c: Value| {
        c["ipam"] = json!({"type": "slow-ipam"});
        c
    };
    let config_a = with_ipam(device("dataplane-0"));
    let config_b = with_ipam(device("dataplane-1"));
    let config_c = with_ipam(standalone("tenantnet"));

    // A's ADD reaches its IPAM, which sleeps 20 s.
    let mut add_a = spawn_plugin(&lab, "ADD", &a, &lab.pod.path(), &config_a);
    wait_for(Duration::from_secs(5), "A's IPAM to start", || {
        pidfile.exists()
    });
    let sleeper_pid: i32 = fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid number");
    let sleeper = KillPid(Some(sleeper_pid));

    // B (a device: takes the node lock) and C (standalone) are not held up.
    let pod_b = lab.netns("b");
    let pod_c = lab.netns("c");
    let cid_b = lab.other_container_id("b");
    let cid_c = lab.other_container_id("c");
    let add_b = node_plugin(&lab, "ADD", &config_b)
        .container_id(&cid_b)
        .netns(pod_b.path())
        .run();
    add_b.result();
    assert!(
        add_b.elapsed < Duration::from_secs(2),
        "B's ADD took {:?} while A's IPAM slept",
        add_b.elapsed
    );
    let add_c = node_plugin(&lab, "ADD", &config_c)
        .container_id(&cid_c)
        .netns(pod_c.path())
        .run();
    add_c.result();
    assert!(
        add_c.elapsed < Duration::from_secs(2),
        "C's ADD took {:?}",
        add_c.elapsed
    );
    let b_targets = || snapshot(&[&state.join("dev/dataplane-1")], &[&pod_b, &pod_c]);
    let b_before = b_targets();

    // A's own container is locked, for at most the node's lock timeout.
    let del_a = node_plugin(&lab, "DEL", &config_a).run();
    let err = del_a.error(11);
    assert!(
        msg(&err).contains(&a),
        "the timeout should name the container: {err}"
    );
    assert!(
        del_a.elapsed < Duration::from_secs(5),
        "DEL of A waited {:?}",
        del_a.elapsed
    );
    assert!(
        add_a.0.try_wait().expect("try_wait").is_none(),
        "A's ADD ended early"
    );

    // The runtime kills A's ADD (by its pid); A's lock frees with it.
    add_a.0.kill().expect("kill A's ADD");
    add_a.0.wait().expect("reap A's ADD");
    drop(sleeper);
    fs::remove_file(&flag).expect("remove flag");
    let t = Instant::now();
    node_plugin(&lab, "DEL", &config_a).run().success();
    assert!(lab.pod.macvtaps().is_empty(), "A's DEL left its link");
    assert!(
        !state.join("dev/dataplane-0").exists(),
        "A's DEL left its node"
    );
    let again = node_plugin(&lab, "ADD", &config_a).run();
    again.result();
    node_plugin(&lab, "DEL", &config_a).run().success();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "A's DEL/ADD/DEL after the kill took {:?}",
        t.elapsed()
    );
    assert_unchanged(
        "B and C while A was slow and killed",
        &b_before,
        &b_targets(),
    );
    for (cid, ns, config) in [(&cid_b, &pod_b, &config_b), (&cid_c, &pod_c, &config_c)] {
        node_plugin(&lab, "DEL", config)
            .container_id(cid)
            .netns(ns.path())
            .run()
            .success();
    }
    let left = strict_leftovers(&lab);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

// ---------------------------------------------------- 5. device pre-emption

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

const POD_A: &str = "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=a";
const POD_B: &str = "K8S_POD_NAMESPACE=ns2;K8S_POD_NAME=b";

#[test]
fn attack_5a_device_pre_emption_attach_pod() {
    let lab = lab("atk-preempt-pod");
    let state = lab.state_dir();
    let res = Resource::new("dataplane", LOWER, 4, BASE);
    write_resources_ungranted(&state, std::slice::from_ref(&res));
    let attacker_pod = lab.netns("attacker");
    let attacker = lab.other_container_id("attacker");
    let attack = |id: &str, args: &str| {
        node_plugin(&lab, "ADD", &device(id))
            .container_id(&attacker)
            .netns(attacker_pod.path())
            .args(args)
            .run()
    };
    let targets = |lab: &Lab| snapshot(&[&state], &[&lab.node, &lab.pod, &attacker_pod]);

    // Ungranted: refused, nothing made.
    let before = targets(&lab);
    let err = attack("dataplane-0", POD_B).error(102);
    assert!(msg(&err).contains("not allocated"), "{err}");
    assert_unchanged("ungranted device", &before, &targets(&lab));

    // Granted to ns1/a: refused to ns2/b and to a pod the runtime names not.
    grant_to_pod(&state, &res, &ids(&["dataplane-1"]), Some(("ns1", "a")));
    let before = targets(&lab);
    for args in [
        POD_B,
        "",
        "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=b",
        "K8S_POD_NAMESPACE=ns2;K8S_POD_NAME=a",
    ] {
        let err = attack("dataplane-1", args).error(102);
        assert!(msg(&err).contains("ns1/a"), "CNI_ARGS {args:?}: {err}");
        assert_unchanged(
            &format!("device of ns1/a, CNI_ARGS {args:?}"),
            &before,
            &targets(&lab),
        );
    }
    // ... and the rightful pod gets it.
    node_plugin(&lab, "ADD", &device("dataplane-1"))
        .args(POD_A)
        .run()
        .result();
    node_plugin(&lab, "DEL", &device("dataplane-1"))
        .args(POD_A)
        .run()
        .success();

    // Claimed by live pod A under the current grant: refused to B.
    grant(&state, &res, &ids(&["dataplane-2"]));
    let node = state.join("dev/dataplane-2");
    let ra = node_plugin(&lab, "ADD", &device("dataplane-2"))
        .args(POD_A)
        .run()
        .result();
    let la = assert_attached(&lab, &lab.pod, &ra, POD_IFNAME, "bridge");
    let a_targets = |lab: &Lab| {
        snapshot(
            &[
                &state.join("dev"),
                &state.join("pods"),
                &state.join("claims"),
            ],
            &[&lab.pod, &attacker_pod],
        )
    };
    let before = a_targets(&lab);
    let err = attack("dataplane-2", POD_B).error(102);
    assert!(
        msg(&err).contains(&lab.container_id),
        "the error should name the holder: {err}"
    );
    assert_unchanged("device claimed by live pod A", &before, &a_targets(&lab));
    lab.assert_device_node(&node, &lab.pod, &la, 107, 107);

    // A new Allocate (a fresh grant, for B): B takes it.
    grant(&state, &res, &ids(&["dataplane-2"]));
    let rb = attack("dataplane-2", POD_B).result();
    let lb = assert_attached(&lab, &attacker_pod, &rb, POD_IFNAME, "bridge");
    lab.assert_device_node(&node, &attacker_pod, &lb, 107, 107);
    let b_before = snapshot(&[&node, &state.join("claims")], &[&attacker_pod]);
    // A's late DEL removes A's link, not B's node, link or claim.
    node_plugin(&lab, "DEL", &device("dataplane-2"))
        .args(POD_A)
        .run()
        .success();
    assert!(lab.pod.link(POD_IFNAME).is_none(), "A's DEL left A's link");
    assert_unchanged(
        "B's device after A's late DEL",
        &b_before,
        &snapshot(&[&node, &state.join("claims")], &[&attacker_pod]),
    );
    lab.assert_device_node(&node, &attacker_pod, &lb, 107, 107);
    node_plugin(&lab, "DEL", &device("dataplane-2"))
        .container_id(&attacker)
        .netns(attacker_pod.path())
        .args(POD_B)
        .run()
        .success();
    let left = strict_leftovers(&lab);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[test]
fn attack_5b_device_pre_emption_attach_host() {
    let lab = lab("atk-preempt-host");
    let state = lab.state_dir();
    let res = Resource::new("dataplane", LOWER, 8, BASE).attach("host");
    write_resources_ungranted(&state, std::slice::from_ref(&res));
    // What the device plugin does at Allocate: the host link mvtap<N>.
    for i in [0u32, 1, 2] {
        let idx = BASE + i;
        lab.node.ip_cmd(&format!(
            "link add link {LOWER} name mvtap{idx} index {idx} type macvtap mode bridge"
        ));
    }
    let attacker_pod = lab.netns("attacker");
    let attacker = lab.other_container_id("attacker");
    let attack = |id: &str, args: &str| {
        node_plugin(&lab, "ADD", &device(id))
            .container_id(&attacker)
            .netns(attacker_pod.path())
            .args(args)
            .run()
    };
    let targets = |lab: &Lab| snapshot(&[&state], &[&lab.node, &lab.pod, &attacker_pod]);

    // No grant: the host link is not moved.
    let before = targets(&lab);
    attack("dataplane-0", POD_B).error(102);
    assert_unchanged("attach host, ungranted", &before, &targets(&lab));
    assert_eq!(lab.node.expect_link("mvtap4096").ifindex, 4096);

    // Granted to ns1/a: not moved for ns2/b; then moved for ns1/a.
    grant_to_pod(&state, &res, &ids(&["dataplane-1"]), Some(("ns1", "a")));
    let before = targets(&lab);
    attack("dataplane-1", POD_B).error(102);
    assert_unchanged("attach host, granted to ns1/a", &before, &targets(&lab));
    node_plugin(&lab, "ADD", &device("dataplane-1"))
        .args(POD_A)
        .run()
        .result();
    let la = lab.pod.expect_link(POD_IFNAME);
    assert_eq!(
        (la.kind.as_deref(), la.ifindex),
        (Some("macvtap"), u64::from(BASE + 1))
    );
    assert!(lab.node.link("mvtap4097").is_none());
    node_plugin(&lab, "DEL", &device("dataplane-1"))
        .args(POD_A)
        .run()
        .success();

    // Granted (no pod named) and taken by live pod A: not taken from A.
    grant(&state, &res, &ids(&["dataplane-2"]));
    node_plugin(&lab, "ADD", &device("dataplane-2"))
        .args(POD_A)
        .run()
        .result();
    let la = lab.pod.expect_link(POD_IFNAME);
    assert!(
        lab.node.link("mvtap4098").is_none(),
        "A's ADD did not take the host link"
    );
    let before = targets(&lab);
    let err = attack("dataplane-2", POD_B).error(102);
    assert!(msg(&err).contains(&lab.container_id), "{err}");
    assert_unchanged("attach host, claimed by A", &before, &targets(&lab));
    assert_eq!(lab.pod.expect_link(POD_IFNAME).ifindex, la.ifindex);
    node_plugin(&lab, "DEL", &device("dataplane-2"))
        .args(POD_A)
        .run()
        .success();
    assert!(attacker_pod.macvtaps().is_empty());
}

// -------------------------------------------------------- 6. source mode

fn source_config(macs: Vec<String>) -> Value {
    let mut c = standalone("tenantnet");
    c["mode"] = json!("source");
    c["sourceMacs"] = json!(macs);
    c
}

fn distinct_macs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "02:00:00:{:02x}:{:02x}:{:02x}",
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff
            )
        })
        .collect()
}

#[test]
fn attack_6_source_mode_sniffing_is_off_and_source_macs_are_capped() {
    let lab = lab("atk-source");
    let targets = |lab: &Lab| snapshot(&[&lab.state_dir()], &[&lab.node, &lab.pod]);
    let before = targets(&lab);

    // Off by default: refused, nothing made.
    let out = node_plugin(&lab, "ADD", &source_config(ids(&["02:00:00:00:00:01"]))).run();
    let err = out.error(7);
    assert!(
        msg(&err).contains("source") && msg(&err).contains("allowSourceMode"),
        "{err}"
    );
    assert_unchanged("mode source, default policy", &before, &targets(&lab));

    // Allowed by the administrator: 5000 MACs are refused cleanly.
    lab.set_node_policy(&json!({"allowSourceMode": true}));
    let out = node_plugin(&lab, "ADD", &source_config(distinct_macs(5000))).run();
    let err = out.error(7);
    assert!(
        msg(&err).contains("5000") && msg(&err).contains("256"),
        "{err}"
    );
    assert!(
        out.stderr.len() < 4096,
        "stderr is huge: {} bytes",
        out.stderr.len()
    );
    assert_unchanged("5000 sourceMacs", &before, &targets(&lab));

    // Duplicates collapse: 200 copies of one MAC and two others are 3.
    let mut macs = vec!["02:00:00:aa:00:01".to_string(); 200];
    macs.extend(ids(&[
        "02:00:00:aa:00:02",
        "02:00:00:AA:00:01",
        "02:00:00:aa:00:03",
    ]));
    let config = source_config(macs);
    let r = node_plugin(&lab, "ADD", &config).run().result();
    let link = assert_attached(&lab, &lab.pod, &r, POD_IFNAME, "source");
    let mut got = link.source_macs.clone();
    got.sort();
    assert_eq!(
        got,
        ids(&[
            "02:00:00:aa:00:01",
            "02:00:00:aa:00:02",
            "02:00:00:aa:00:03"
        ])
    );
    node_plugin(&lab, "DEL", &config).run().success();
    lab.assert_clean("DEL of a source-mode link");

    // The most the policy allows (4096) is made or refused cleanly: no
    // abort, no link left on a failure.
    lab.set_node_policy(&json!({"allowSourceMode": true, "maxSourceMacs": 4096}));
    let config = source_config(distinct_macs(4096));
    let out = node_plugin(&lab, "ADD", &config).run();
    if out.exit_code == Some(0) {
        let link = lab.pod.expect_link(POD_IFNAME);
        assert_eq!(link.source_macs.len(), 4096, "not every MAC was set");
        node_plugin(&lab, "DEL", &config).run().success();
    } else {
        println!("4096 sourceMacs refused: {}", out.any_error());
    }
    lab.assert_clean("4096 sourceMacs");
    assert_unchanged("source mode", &before, &targets(&lab));

    // 300 copies of one MAC with the default cap (256) are one MAC.
    lab.set_node_policy(&json!({"allowSourceMode": true}));
    let config = source_config(vec!["02:00:00:bb:00:01".to_string(); 300]);
    let out = node_plugin(&lab, "ADD", &config).run();
    assert!(
        out.exit_code == Some(0),
        "300 copies of one MAC (one distinct MAC, cap 256) were refused:\n{out}"
    );
    assert_eq!(
        lab.pod.expect_link(POD_IFNAME).source_macs,
        ids(&["02:00:00:bb:00:01"])
    );
    node_plugin(&lab, "DEL", &config).run().success();
    lab.assert_clean("300 copies");
}

// ------------------------------------------------ 7. kill -9 at every step

/// The syscalls with which ADD changes the state or the kernel.
const STEPS: [&str; 11] = [
    "openat2",
    "mkdirat",
    "mknodat",
    "fchownat",
    "fchmodat",
    "renameat",
    "renameat2",
    "unlinkat",
    "flock",
    "sendto",
    "write",
];

/// How many times ADD makes each of `STEPS` (ADD under strace, then DEL).
fn count_steps(lab: &Lab, config: &Value) -> Vec<(&'static str, usize)> {
    let log = lab.dir.path().join("steps.strace");
    let tracer = strace_wrapper(
        lab,
        "count-steps",
        &format!("-qq -o {} -e trace={}", log.display(), STEPS.join(",")),
    );
    plugin_via(lab, &tracer, "ADD", config).run().result();
    node_plugin(lab, "DEL", config).run().success();
    let text = fs::read_to_string(&log).expect("strace log");
    STEPS
        .iter()
        .map(|s| {
            let n = text
                .lines()
                .filter(|l| l.starts_with(&format!("{s}(")))
                .count();
            (*s, n)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Remove whatever a failed case left, so the next case starts clean.
fn force_clean(lab: &Lab) {
    for l in lab.pod.macvtaps() {
        lab.pod.ip_ok(&["link", "del", &l.name]);
    }
    for sub in ["pods", "dev", "claims", "locks"] {
        let _ = fs::remove_dir_all(lab.state_dir().join(sub));
    }
    let _ = fs::remove_dir_all(lab.ipam_dir());
}

fn kill_at_every_step(test: &str, device_mode: bool) {
    require_strace();
    let lab = lab(test);
    let config = if device_mode {
        write_resources(
            &lab.state_dir(),
            &[Resource::new("dataplane", LOWER, 4, BASE)],
        );
        let mut c = device("dataplane-1");
        c["ipam"] = lab.host_local(1);
        c
    } else {
        let mut c = standalone("tenantnet");
        c["ipam"] = lab.host_local(1);
        c
    };
    let steps = count_steps(&lab, &config);
    let left = strict_leftovers(&lab);
    assert!(left.is_empty(), "the untouched ADD and DEL left {left:#?}");
    let mut failures = Vec::new();
    let mut points = 0;
    let mut killed = 0;
    let started = Instant::now();
    for (syscall, total) in &steps {
        for n in 1..=*total {
            points += 1;
            let label = format!("kill -9 at {syscall} #{n}");
            let killer = strace_wrapper(
                &lab,
                &format!("kill-{syscall}-{n}"),
                &format!(
                    "-qq -o /dev/null -e trace={syscall} -e inject={syscall}:signal=KILL:when={n}"
                ),
            );
            // Two runtimes' ways on: DEL first, or the ADD retried at once.
            for retry_first in [false, true] {
                let add = plugin_via(&lab, &killer, "ADD", &config).run();
                if add.exit_code.is_none() {
                    killed += 1;
                }
                if retry_first {
                    let retry = node_plugin(&lab, "ADD", &config).run();
                    // (A killed ADD that had finished its record is attached.)
                    let finished = retry.exit_code == Some(1)
                        && retry.json.as_ref().is_some_and(|j| {
                            j["code"] == 101 && msg(j).contains("is already attached")
                        });
                    if retry.exit_code != Some(0) && !finished {
                        failures.push(format!(
                            "{label}: the retried ADD (no DEL between) failed\n{retry}"
                        ));
                    }
                }
                let del = node_plugin(&lab, "DEL", &config).run();
                if del.exit_code != Some(0) {
                    failures.push(format!("{label}: the runtime's DEL failed\n{del}"));
                }
                let left = strict_leftovers(&lab);
                if !left.is_empty() {
                    failures.push(format!(
                        "{label}{}: DEL left {left:#?}",
                        if retry_first {
                            " (after a retried ADD)"
                        } else {
                            ""
                        }
                    ));
                    force_clean(&lab);
                    continue;
                }
                if !retry_first {
                    let retry = node_plugin(&lab, "ADD", &config).run();
                    if retry.exit_code != Some(0) {
                        failures.push(format!(
                            "{label}: the retried ADD after DEL failed\n{retry}"
                        ));
                    }
                    node_plugin(&lab, "DEL", &config).run();
                    let left = strict_leftovers(&lab);
                    if !left.is_empty() {
                        failures.push(format!("{label}: the retried ADD's DEL left {left:#?}"));
                        force_clean(&lab);
                    }
                }
            }
        }
    }
    println!(
        "{test}: {points} kill points ({}), {killed} ADDs killed, {:?}",
        steps
            .iter()
            .map(|(s, n)| format!("{s} x{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed()
    );
    assert!(killed > 0, "no ADD was killed: is strace's inject working?");
    assert_no_failures(&failures);
}

#[test]
fn attack_7a_kill_9_at_every_step_of_add_device_id() {
    kill_at_every_step("atk-kill-dev", true);
}

#[test]
fn attack_7b_kill_9_at_every_step_of_add_standalone() {
    kill_at_every_step("atk-kill-sa", false);
}

// --------------------------------------------------- 8. control characters

/// Problems with an output: raw control characters in stdout, in the
/// decoded msg/details, or on stderr; stderr lines that do not start with
/// the plugin's prefix (a forged line).
fn control_char_problems(out: &PluginOutput) -> Vec<String> {
    let mut problems = Vec::new();
    if out.stdout.trim_end_matches('\n').chars().any(is_bad_char) {
        problems.push(format!(
            "stdout has raw control characters: {:?}",
            out.stdout
        ));
    }
    if let Some(json) = &out.json {
        for key in ["msg", "details"] {
            let s = json[key].as_str().unwrap_or_default();
            if s.chars()
                .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
            {
                problems.push(format!(
                    "the error's {key} decodes to control characters: {s:?}"
                ));
            }
        }
    }
    if out.stderr.chars().any(is_bad_char) {
        problems.push(format!(
            "stderr has raw control characters: {:?}",
            out.stderr
        ));
    }
    for line in out.stderr.lines() {
        if !line.starts_with("macvtap") {
            problems.push(format!(
                "stderr line not from the plugin (forged by a newline?): {line:?}"
            ));
        }
    }
    problems
}

const EVIL: &str = "\u{1b}[31m\nmacvtap: forged\u{2028}\u{9b}";

#[test]
fn attack_8_control_characters_in_the_configuration_never_reach_errors_or_stderr_raw() {
    let lab = lab("atk-ctl");
    let state = lab.state_dir();
    let res = Resource::new("dataplane", LOWER, 4, BASE);
    write_resources_ungranted(&state, std::slice::from_ref(&res));
    grant_to_pod(&state, &res, &ids(&["dataplane-3"]), Some(("ns1", "a")));
    let with = |patch: Value| {
        let mut c = standalone(&format!("name{EVIL}"));
        for (k, v) in patch.as_object().expect("object") {
            c[k] = v.clone();
        }
        c
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "name and master",
            with(json!({"master": format!("up{EVIL}0")})),
            "",
        ),
        (
            "master without whitespace",
            with(json!({"master": "up\u{1b}[31m0"})),
            "",
        ),
        (
            "stateDir",
            with(json!({"stateDir": format!("/x{EVIL}")})),
            "",
        ),
        (
            "ipam type",
            with(json!({"ipam": {"type": format!("ipam{EVIL}")}})),
            "",
        ),
        ("mode", with(json!({"mode": format!("bridge{EVIL}")})), ""),
        ("mac", with(json!({"mac": format!("02:00{EVIL}")})), ""),
        (
            "sourceMacs",
            with(json!({"mode": "source", "sourceMacs": [format!("02{EVIL}")]})),
            "",
        ),
        (
            "deviceID",
            json!({"cniVersion": "1.0.0", "name": "n", "deviceID": format!("dataplane{EVIL}-1")}),
            "",
        ),
        (
            "pod name in CNI_ARGS against a grant",
            json!({"cniVersion": "1.0.0", "name": "n", "deviceID": "dataplane-3"}),
            "K8S_POD_NAMESPACE=ns\u{1b}[31m;K8S_POD_NAME=b\u{1b}[0m",
        ),
        (
            "unknown key",
            with(json!({format!("key{EVIL}"): 1, "mtu": 70000})),
            "",
        ),
    ];
    let mut failures = Vec::new();
    for (label, config, args) in &cases {
        for command in ["ADD", "DEL", "CHECK"] {
            let mut plugin = node_plugin(&lab, command, config);
            if !args.is_empty() {
                plugin = plugin.args(args);
            }
            let out = plugin.run();
            if out.exit_code == Some(0) && command != "ADD" {
                continue; // DEL of nothing succeeds: nothing printed
            }
            if let Err(e) = out.error_code() {
                failures.push(format!("{label}, {command}: {e}"));
            }
            for p in control_char_problems(&out) {
                failures.push(format!("{label}, {command}: {p}\n{out}"));
            }
        }
        lab.assert_clean(label);
    }
    assert_no_failures(&failures);
}

#[test]
fn attack_8b_control_characters_in_the_runtime_environment_never_reach_stderr_raw() {
    let lab = lab("atk-ctl-env");
    let config = standalone("tenantnet");
    let mut failures = Vec::new();
    let cases = [
        ("CNI_CONTAINERID", "CNI_CONTAINERID"),
        ("CNI_IFNAME", "CNI_IFNAME"),
        ("CNI_COMMAND", "CNI_COMMAND"),
        ("CNI_ARGS MAC", "CNI_ARGS"),
    ];
    for (label, key) in cases {
        let value = if key == "CNI_ARGS" {
            format!("MAC=02:00{EVIL}")
        } else {
            format!("x{EVIL}")
        };
        let out = node_plugin(&lab, "ADD", &config).env(key, value).run();
        if let Err(e) = out.error_code() {
            failures.push(format!("{label}: {e}"));
        }
        for p in control_char_problems(&out) {
            failures.push(format!("{label}: {p}\n{out}"));
        }
    }
    lab.assert_clean("control characters in the environment");
    assert_no_failures(&failures);
}
