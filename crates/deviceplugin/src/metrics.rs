//! Prometheus text on /metrics and a /healthz, over plain HTTP/1.1.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

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
    out.push_str(&crate::reload::STATUS.render());
    out
}

/// A request (its head) must arrive within this long after the connection
/// is accepted, or the connection is closed.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once. When all are taken, a new connection closes
/// the oldest one that has not sent its request yet; when none is idle, the
/// new one is closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// The longest request head read; more is a bad request.
const MAX_REQUEST: usize = 8 * 1024;

/// The connections being served, and which of them still wait for their
/// request (those may be closed to make room).
#[derive(Default)]
struct Connections {
    live: usize,
    next_id: u64,
    idle: VecDeque<(u64, oneshot::Sender<()>)>,
}

type Table = Arc<Mutex<Connections>>;

/// Counts a connection as live until dropped.
struct Slot {
    table: Table,
    id: u64,
}

impl Slot {
    /// The request is in: this connection may no longer be closed early.
    fn busy(&self) {
        if let Ok(mut t) = self.table.lock() {
            t.idle.retain(|(id, _)| *id != self.id);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock() {
            t.live -= 1;
            t.idle.retain(|(id, _)| *id != self.id);
        }
    }
}

/// Admit a new connection: a slot, and the signal that closes it early.
fn admit(table: &Table) -> Option<(Slot, oneshot::Receiver<()>)> {
    let mut t = table.lock().ok()?;
    if t.live >= MAX_CONNECTIONS {
        // Idle and half-open connections must not starve /healthz: the
        // oldest that has sent nothing yet makes room. Its task ends (and
        // frees its slot) as soon as it runs; until then the count may be
        // over the cap, by at most the number of idle connections.
        let (_, close) = t.idle.pop_front()?;
        let _ = close.send(());
    }
    t.live += 1;
    t.next_id += 1;
    let id = t.next_id;
    let (tx, rx) = oneshot::channel();
    t.idle.push_back((id, tx));
    Some((
        Slot {
            table: table.clone(),
            id,
        },
        rx,
    ))
}

/// Read up to the end of the request head (an empty line).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(head);
        }
        if head.len() > MAX_REQUEST {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    slot: Slot,
    evicted: oneshot::Receiver<()>,
    resources: Shared,
) {
    // The whole head within READ_TIMEOUT: a slow-loris trickling one byte
    // at a time gets no more time than a silent connection.
    let head = tokio::select! {
        _ = evicted => return,
        head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)) => match head {
            Ok(Ok(head)) => head,
            _ => return,
        },
    };
    slot.busy();
    let request = String::from_utf8_lossy(&head);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, body, kind) = match path {
        "/metrics" => {
            let snapshot = resources.read().map(|r| r.clone()).unwrap_or_default();
            ("200 OK", render(&snapshot), "text/plain; version=0.0.4")
        }
        "/healthz" => healthz(&resources),
        // The process answers: for a liveness probe, which must not restart
        // the daemon while the kubelet is away.
        "/livez" => ("200 OK", "ok\n".to_string(), "text/plain"),
        _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A client that does not read its answer is not waited for either.
    let _ = tokio::time::timeout(READ_TIMEOUT, stream.write_all(response.as_bytes())).await;
}

/// Ready when every resource is registered with the kubelet (a node
/// without any resource to offer is ready too); else 503 naming the ones
/// that are not.
fn healthz(resources: &Shared) -> (&'static str, String, &'static str) {
    let snapshot = resources.read().map(|r| r.clone()).unwrap_or_default();
    let waiting: Vec<String> = snapshot
        .iter()
        .filter(|r| !r.registered.load(Ordering::Relaxed))
        .map(|r| r.resource_name())
        .collect();
    if waiting.is_empty() {
        ("200 OK", "ok\n".to_string(), "text/plain")
    } else {
        (
            "503 Service Unavailable",
            format!("not registered with the kubelet: {}\n", waiting.join(", ")),
            "text/plain",
        )
    }
}

/// Serve until the task is dropped.
pub async fn serve(listener: TcpListener, resources: Shared) {
    let table: Table = Arc::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: do not spin.
                tracing::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match admit(&table) {
            Some((slot, evicted)) => {
                tokio::spawn(handle(stream, slot, evicted, resources.clone()));
            }
            None => drop(stream), // every slot busy answering: close at once
        }
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
