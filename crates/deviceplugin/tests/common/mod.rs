//! What every device plugin test uses: the harness's device plugin world
//! (kubelet and PodResources stand-ins, the daemon launcher) and its
//! namespace tools.
#![allow(unused_imports, dead_code)] // each test file uses a different subset

pub use macvtap_testkit::device_plugin::*;

/// Runs `f` on a fresh thread inside the network namespace at `netns`;
/// sockets made there stay in that namespace wherever they are used later.
pub fn in_netns<T: Send + 'static>(
    netns: &std::path::Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns).expect("open netns");
        // On this dedicated, short-lived thread only.
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// One HTTP/1.1 GET to `addr` from inside the namespace at `netns`:
/// (status code, body).
pub fn http_get(netns: &std::path::Path, addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let addr = addr.to_string();
    let path = path.to_string();
    in_netns(netns, move || {
        let mut s = std::net::TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    })
}

/// The test virtualenv's Python (`MACVTAP_TEST_PYTHON` overrides), which
/// scripts/install-deps fills with grpcio and prometheus-client.
pub fn python() -> std::path::PathBuf {
    let p = std::env::var_os("MACVTAP_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/opt/macvtap-test-venv/bin/python".into());
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-deps (it creates the virtualenv with grpcio and prometheus-client)",
        p.display()
    );
    p
}
