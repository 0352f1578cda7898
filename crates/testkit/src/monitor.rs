//! Watching a namespace's link events (`ip -o monitor link`), to prove
//! something never happened there, not merely that it is gone now.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

static PROBES: AtomicU64 = AtomicU64::new(0);
use crate::netns::Netns;

/// A running `ip -n NS -o monitor link`; killed (by its pid) on drop.
#[derive(Debug)]
pub struct LinkMonitor {
    child: Child,
    /// Each event line with the time it was read.
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    ns: String,
}

impl LinkMonitor {
    /// Starts watching `ns` and returns once events are being received.
    pub fn start(ns: &Netns) -> LinkMonitor {
        let mut child = Command::new("ip")
            .args(["-n", ns.name(), "-o", "monitor", "link"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ip monitor");
        let out = child.stdout.take().expect("stdout is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock()
                    .expect("monitor lines")
                    .push((Instant::now(), line));
            }
        });
        let monitor = LinkMonitor {
            child,
            lines,
            ns: ns.name().to_string(),
        };
        monitor.sync();
        monitor
    }

    /// Makes a marker event (a short-lived veth named `mvprobe<n>`) and
    /// waits until it is seen, so every event before it has been read too.
    pub fn sync(&self) {
        let n = PROBES.fetch_add(1, Ordering::Relaxed);
        let marker = format!("mvprobe{n}");
        let peer = format!("mvprobe{n}p");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.ip(&[
                "link", "add", &marker, "type", "veth", "peer", "name", &peer,
            ]);
            self.ip(&["link", "del", &marker]);
            // Until the monitor is subscribed a marker can be missed: repeat.
            let wait_until = Instant::now() + Duration::from_millis(200);
            while Instant::now() < wait_until {
                if self.lines().iter().any(|l| l.contains(&marker)) {
                    return;
                }
                thread::sleep(Duration::from_millis(2));
            }
            assert!(
                Instant::now() < deadline,
                "ip monitor in {} never reported the probe",
                self.ns
            );
        }
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.ns)
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "`ip -n {} {}` failed: {}",
            self.ns,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every event line so far.
    pub fn lines(&self) -> Vec<String> {
        self.timed_lines().into_iter().map(|(_, l)| l).collect()
    }

    /// Every event line so far, with the time it was read.
    pub fn timed_lines(&self) -> Vec<(Instant, String)> {
        self.lines.lock().expect("monitor lines").clone()
    }

    /// The first event read at or after `since` whose line satisfies `pred`.
    pub fn first_after(
        &self,
        since: Instant,
        pred: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        self.timed_lines()
            .into_iter()
            .find(|(t, l)| *t >= since && pred(l))
    }
}

impl Drop for LinkMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
