//! `ip -o monitor link` with arrival times: when the kernel announced a
//! link change, so the daemon's reaction can be told apart from the
//! kernel's own delay (linkwatch batches carrier changes up to a second).

use std::time::{Duration, Instant};

use crate::{LinkMonitor, Netns};

/// The testkit's link monitor, waited on from async tests.
#[derive(Debug)]
pub struct TimedMonitor(LinkMonitor);

impl TimedMonitor {
    /// Watches `ns`; returns once it is live.
    pub fn start(ns: &Netns) -> TimedMonitor {
        TimedMonitor(LinkMonitor::start(ns))
    }

    pub fn lines(&self) -> Vec<(Instant, String)> {
        self.0.timed_lines()
    }

    /// The time of the first event after `since` whose line satisfies
    /// `pred`, waiting up to `timeout` for it.
    pub async fn event_after(
        &self,
        since: Instant,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.0.first_after(since, &pred) {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// The flags of an `ip -o monitor link` line (`<A,B,C>`).
pub fn flags(line: &str) -> Vec<&str> {
    match (line.find('<'), line.find('>')) {
        (Some(a), Some(b)) if a < b => line[a + 1..b].split(',').collect(),
        _ => vec![],
    }
}

/// The line reports `dev` up with carrier.
pub fn has_carrier(line: &str, dev: &str) -> bool {
    let f = flags(line);
    names(line, dev)
        && !line.starts_with("Deleted")
        && f.contains(&"UP")
        && f.contains(&"LOWER_UP")
        && !f.contains(&"NO-CARRIER")
}

/// The line reports `dev` without carrier (or administratively down).
pub fn lacks_carrier(line: &str, dev: &str) -> bool {
    let f = flags(line);
    names(line, dev)
        && !line.starts_with("Deleted")
        && (!f.contains(&"UP") || !f.contains(&"LOWER_UP") || f.contains(&"NO-CARRIER"))
}

/// The line reports `dev` deleted.
pub fn deleted(line: &str, dev: &str) -> bool {
    names(line, dev) && line.starts_with("Deleted")
}

/// The line is about `dev` (`N: dev@peer: ...` or `N: dev: ...`).
pub fn names(line: &str, dev: &str) -> bool {
    line.contains(&format!(": {dev}@")) || line.contains(&format!(": {dev}:"))
}
