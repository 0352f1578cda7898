//! Where the lab finds `macvtap-deviceplugin`, and how long it may take to
//! stop. The daemon itself is started by the harness's launcher
//! ([`macvtap_testkit::device_plugin::DaemonCmd`]): inside the node
//! namespace, its PID the daemon's, in its own process group (a terminal's
//! Ctrl-C reaches only the lab, which then stops it in order), with every
//! path under the lab's directory; stopped with SIGTERM by its PID, it
//! must exit 0 and remove its sockets.

use std::path::PathBuf;
use std::time::Duration;

/// The daemon's binary name, looked for next to macvtap-lab.
pub const BINARY: &str = "macvtap-deviceplugin";
/// How long SIGTERM may take before the daemon is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// `macvtap-deviceplugin` next to this executable.
pub fn find_next_to_me() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let candidate = me.parent()?.join(BINARY);
    candidate.is_file().then_some(candidate)
}
