//! Unique names and the root check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A short per-process salt: a stale namespace left by a crashed earlier run
/// that had the same pid must not collide with ours.
fn salt() -> u32 {
    static SALT: OnceLock<u32> = OnceLock::new();
    *SALT.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        nanos % 0x1_0000
    })
}

/// `mvt-<pid><salt>-<counter>-<tag>`: unique across threads and processes.
/// The tag is reduced to `[A-Za-z0-9_-]` and cut to 24 characters so the
/// name stays a valid namespace, file and CNI container ID name.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let clean: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    format!("mvt-{}{:04x}-{}-{}", std::process::id(), salt(), n, clean)
}

/// Panics loudly unless running as root: these tests create namespaces and
/// links, and silently skipping them would report a false success.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the macvtap integration tests must run as root (they create network \
         namespaces, links and device nodes); effective uid is {euid}. \
         Run e.g. `sudo -E cargo test -p macvtap-cni`."
    );
}
