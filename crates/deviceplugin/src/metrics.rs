//! Prometheus text on /metrics and a /healthz, over plain HTTP/1.1.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::resource::Resource;

/// The resources to report, shared with the daemon (discovery adds some).
pub type Shared = Arc<RwLock<Vec<Arc<Resource>>>>;

/// One exported series: name, type, help, and how to read it.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Resource) -> u64,
);

pub fn render(resources: &[Arc<Resource>]) -> String {
    let mut out = String::new();
    let series: [Series; 5] = [
        (
            "macvtap_devices",
            "gauge",
            "Devices offered by the resource.",
            |r| u64::from(r.config.capacity),
        ),
        (
            "macvtap_devices_healthy",
            "gauge",
            "Devices reported Healthy.",
            |r| r.healthy_count() as u64,
        ),
        (
            "macvtap_allocations_total",
            "counter",
            "Successful Allocate calls.",
            |r| r.counters.allocations.load(Ordering::Relaxed),
        ),
        (
            "macvtap_allocation_failures_total",
            "counter",
            "Refused or failed Allocate calls.",
            |r| r.counters.allocation_failures.load(Ordering::Relaxed),
        ),
        (
            "macvtap_registrations_total",
            "counter",
            "Registrations with the kubelet.",
            |r| r.counters.registrations.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in resources {
            let _ = writeln!(
                out,
                "{name}{{resource=\"{}\"}} {}",
                r.resource_name(),
                value(r)
            );
        }
    }
    out
}

/// Serve until the task is dropped.
pub async fn serve(listener: TcpListener, resources: Shared) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let resources = resources.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let Ok(n) = stream.read(&mut buf).await else {
                return;
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body, kind) = match path {
                "/metrics" => {
                    let snapshot = resources.read().map(|r| r.clone()).unwrap_or_default();
                    ("200 OK", render(&snapshot), "text/plain; version=0.0.4")
                }
                "/healthz" => ("200 OK", "ok\n".to_string(), "text/plain"),
                _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
