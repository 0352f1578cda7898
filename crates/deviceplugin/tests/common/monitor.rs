//! `ip -o monitor link` with arrival times: when the kernel announced a
//! link change, so the daemon's reaction can be told apart from the
//! kernel's own delay (linkwatch batches carrier changes up to a second).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use macvtap_testkit::Netns;

#[derive(Debug)]
pub struct TimedMonitor {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl TimedMonitor {
    /// Watches `ns`; returns once a marker event (a short-lived veth pair
    /// `mvsyncN`, so not for discovery tests) has been seen: the monitor is
    /// live.
    pub fn start(ns: &Netns) -> TimedMonitor {
        let mut child = Command::new("ip")
            .args(["-n", ns.name(), "-o", "monitor", "link"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ip monitor");
        let out = child.stdout.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock()
                    .expect("monitor lines")
                    .push((Instant::now(), line));
            }
        });
        let m = TimedMonitor { child, lines };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut n = 0;
        loop {
            n += 1;
            let marker = format!("mvsync{n}");
            ns.ip_cmd(&format!("link add {marker} type veth peer name {marker}p"));
            ns.ip_cmd(&format!("link del {marker}"));
            let until = Instant::now() + Duration::from_millis(200);
            while Instant::now() < until {
                if m.lines().iter().any(|(_, l)| l.contains(&marker)) {
                    return m;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            assert!(Instant::now() < deadline, "ip monitor never saw {marker}");
        }
    }

    pub fn lines(&self) -> Vec<(Instant, String)> {
        self.lines.lock().expect("monitor lines").clone()
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
            if let Some(e) = self
                .lines()
                .into_iter()
                .find(|(t, l)| *t >= since && pred(l))
            {
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

impl Drop for TimedMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
