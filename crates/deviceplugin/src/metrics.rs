//! `/metrics` (Prometheus text or OpenMetrics, by `prometheus-client`),
//! `/healthz` (ready: every resource registered) and `/livez`, served by
//! hyper's HTTP/1.1 server.
//!
//! The port is open to whatever reaches the node's address, so the server
//! bounds what a client can hold: the request head must arrive within
//! [`READ_TIMEOUT`], at most [`MAX_CONNECTIONS`] connections are served at
//! once, and a connection that has sent no complete request yet is closed
//! to make room for a new one once it has had [`EVICT_AFTER`] to do so.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, Notify};

use crate::resource::Resource;
use crate::sweep::Swept;

/// The resources to report, shared with the daemon (discovery adds some).
pub type Shared = Arc<RwLock<Vec<Arc<Resource>>>>;

/// Label set of the per-resource series: `resource="macvtap.network.kubevirt.io/<name>"`.
type ResourceLabel = Vec<(&'static str, String)>;
/// Label set of a family split by one fixed-name label (`result`, `kind`).
type KindLabel = Vec<(&'static str, &'static str)>;

/// Allocate's duration: a pod-attach call takes tens of µs, a host-attach
/// one creates links (~17 ms each), and one may wait up to the node lock's
/// 30 s for a CNI command.
const ALLOCATE_BUCKETS: [f64; 18] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

fn allocate_histogram() -> Histogram {
    Histogram::new(ALLOCATE_BUCKETS)
}

/// Every series the daemon exports, and what feeds them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    allocate_seconds: Family<ResourceLabel, Histogram, fn() -> Histogram>,
    config_reloads: Family<KindLabel, Counter>,
    config_last_reload_success: Gauge,
    sweeps: Family<KindLabel, Counter>,
    sweep_removed: Family<KindLabel, Counter>,
    sweep_grants: Counter,
    resources: Shared,
}

/// What the sweep removes, as the `kind` label says it.
const SWEEP_KINDS: [&str; 3] = ["records", "nodes", "links"];

impl Metrics {
    pub fn new(resources: Shared) -> Arc<Metrics> {
        let mut registry = Registry::default();
        // The resource families keep their pre-`prometheus-client` names
        // (no prefix) for existing dashboards, and come first.
        registry.register_collector(Box::new(ResourceSeries(resources.clone())));
        let allocate_seconds: Family<ResourceLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(allocate_histogram);
        let config_reloads = Family::<KindLabel, Counter>::default();
        let config_last_reload_success = Gauge::default();
        let sweeps = Family::<KindLabel, Counter>::default();
        let sweep_removed = Family::<KindLabel, Counter>::default();
        let sweep_grants = Counter::default();
        // Every label value exists from the start: a rate over a series
        // that appears only at its first increment misses that increment.
        for result in ["ok", "error"] {
            drop(config_reloads.get_or_create(&vec![("result", result)]));
        }
        for result in ["done", "skipped"] {
            drop(sweeps.get_or_create(&vec![("result", result)]));
        }
        for kind in SWEEP_KINDS {
            drop(sweep_removed.get_or_create(&vec![("kind", kind)]));
        }
        let own = registry.sub_registry_with_prefix("macvtap_deviceplugin");
        own.register_collector(Box::new(Registered(resources.clone())));
        own.register_with_unit(
            "allocate_duration",
            "Time Allocate took, from the start of its work to its end (undo included), per resource",
            Unit::Seconds,
            allocate_seconds.clone(),
        );
        own.register(
            "config_reloads",
            "Configuration loads by result (the start-up load counts as one)",
            config_reloads.clone(),
        );
        own.register(
            "config_last_reload_success",
            "1 if the last configuration load succeeded, else 0",
            config_last_reload_success.clone(),
        );
        own.register(
            "sweeps",
            "Start-up sweeps: done, or skipped because the PodResources API did not answer",
            sweeps.clone(),
        );
        own.register(
            "sweep_removed",
            "What start-up sweeps removed for devices no pod holds, by kind",
            sweep_removed.clone(),
        );
        own.register(
            "sweep_grants_rederived",
            "Grants start-up sweeps re-derived from the PodResources API",
            sweep_grants.clone(),
        );
        Arc::new(Metrics {
            registry,
            allocate_seconds,
            config_reloads,
            config_last_reload_success,
            sweeps,
            sweep_removed,
            sweep_grants,
            resources,
        })
    }

    /// Times one Allocate of `resource` until dropped.
    pub fn allocate_timer(&self, resource: &Resource) -> AllocateTimer<'_> {
        AllocateTimer {
            metrics: self,
            resource: resource.resource_name(),
            started: Instant::now(),
        }
    }

    /// `resource` is no longer offered: its Allocate histogram goes with
    /// the other per-resource series (an Allocate still in flight may
    /// bring it back once).
    pub fn forget(&self, resource: &Resource) {
        self.allocate_seconds
            .remove(&vec![("resource", resource.resource_name())]);
    }

    /// One configuration load (the start-up one, or a reload) ended.
    pub fn config_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads
            .get_or_create(&vec![("result", result)])
            .inc();
        self.config_last_reload_success.set(i64::from(ok));
    }

    /// The start-up sweep ended; None: it was skipped.
    pub fn swept(&self, swept: Option<&Swept>) {
        let Some(swept) = swept else {
            self.sweeps
                .get_or_create(&vec![("result", "skipped")])
                .inc();
            return;
        };
        self.sweeps.get_or_create(&vec![("result", "done")]).inc();
        for (kind, n) in SWEEP_KINDS
            .into_iter()
            .zip([swept.records, swept.nodes, swept.links])
        {
            self.sweep_removed
                .get_or_create(&vec![("kind", kind)])
                .inc_by(n as u64);
        }
        self.sweep_grants.inc_by(swept.grants as u64);
    }

    /// The exposition: OpenMetrics text, or Prometheus text 0.0.4.
    pub fn render(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        }
        Ok(out)
    }

    /// The resources not registered with the kubelet now.
    fn unregistered(&self) -> Vec<String> {
        snapshot(&self.resources)
            .iter()
            .filter(|r| !r.registered.load(Ordering::Relaxed))
            .map(|r| r.resource_name())
            .collect()
    }
}

/// Observes the time since its creation in the Allocate histogram when dropped.
#[derive(Debug)]
pub struct AllocateTimer<'a> {
    metrics: &'a Metrics,
    resource: String,
    started: Instant,
}

impl Drop for AllocateTimer<'_> {
    fn drop(&mut self) {
        let label = vec![("resource", std::mem::take(&mut self.resource))];
        self.metrics
            .allocate_seconds
            .get_or_create(&label)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

fn snapshot(resources: &Shared) -> Vec<Arc<Resource>> {
    resources.read().map(|r| r.clone()).unwrap_or_default()
}

/// One series per current resource, read at scrape time.
fn encode_per_resource<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    resources: &[Arc<Resource>],
    (name, help): (&str, &str),
    value: impl Fn(&Resource) -> M,
) -> Result<(), std::fmt::Error> {
    let Some(first) = resources.first() else {
        return Ok(());
    };
    let mut family = encoder.encode_descriptor(name, help, None, value(first).metric_type())?;
    for r in resources {
        let label: ResourceLabel = vec![("resource", r.resource_name())];
        value(r).encode(family.encode_family(&label)?)?;
    }
    Ok(())
}

/// The device and call counts each resource keeps.
#[derive(Debug)]
struct ResourceSeries(Shared);

impl Collector for ResourceSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let resources = snapshot(&self.0);
        let count = |c: &std::sync::atomic::AtomicU64| ConstCounter::new(c.load(Ordering::Relaxed));
        encode_per_resource(
            &mut encoder,
            &resources,
            ("macvtap_devices", "Devices offered by the resource"),
            |r| ConstGauge::new(i64::from(r.config.capacity)),
        )?;
        encode_per_resource(
            &mut encoder,
            &resources,
            ("macvtap_devices_healthy", "Devices reported Healthy"),
            |r| ConstGauge::new(r.healthy_count() as i64),
        )?;
        encode_per_resource(
            &mut encoder,
            &resources,
            ("macvtap_allocations", "Successful Allocate calls"),
            |r| count(&r.counters.allocations),
        )?;
        encode_per_resource(
            &mut encoder,
            &resources,
            (
                "macvtap_allocation_failures",
                "Refused or failed Allocate calls",
            ),
            |r| count(&r.counters.allocation_failures),
        )?;
        encode_per_resource(
            &mut encoder,
            &resources,
            ("macvtap_registrations", "Registrations with the kubelet"),
            |r| count(&r.counters.registrations),
        )
    }
}

/// Whether each resource is registered with the kubelet now.
#[derive(Debug)]
struct Registered(Shared);

impl Collector for Registered {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_per_resource(
            &mut encoder,
            &snapshot(&self.0),
            (
                "registered",
                "1 while the resource is registered with the kubelet (0 until then, and again after a kubelet restart until it is registered anew)",
            ),
            |r| ConstGauge::new(i64::from(r.registered.load(Ordering::Relaxed))),
        )
    }
}

/// The request head must arrive within this long after the connection is
/// accepted, or the connection is closed (a slow-loris trickling bytes gets
/// no more time than a silent connection).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// When every connection slot is taken, a connection that has sent no
/// complete request this long after it was accepted is closed for a new
/// one; a real client sends its request at once. Until one is that old,
/// new connections wait in the listen backlog.
pub const EVICT_AFTER: Duration = Duration::from_millis(100);
/// The longest a connection lives, answer included: a client that does not
/// read its answer is not waited for either.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);
/// The longest request head read (hyper's minimum buffer); more is 431.
const MAX_REQUEST: usize = 8 * 1024;

/// The connections being served, and which of them still wait for their
/// request (those may be closed to make room).
#[derive(Default)]
struct Connections {
    live: usize,
    next_id: u64,
    /// Oldest first: id, when accepted, the signal that closes it.
    idle: VecDeque<(u64, Instant, oneshot::Sender<()>)>,
}

#[derive(Default)]
struct Table {
    connections: Mutex<Connections>,
    /// A connection ended: a slot may be free.
    freed: Notify,
}

impl Table {
    /// The counts stay consistent even if a holder panicked (each section
    /// is a few plain updates), so a poisoned lock is used as it is.
    fn lock(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counts a connection as live until dropped.
struct Slot {
    table: Arc<Table>,
    id: u64,
    /// A complete request head arrived: no longer closed early.
    busy: AtomicBool,
}

impl Slot {
    fn mark_busy(&self) {
        self.busy.store(true, Ordering::Relaxed);
        self.table.lock().idle.retain(|(id, _, _)| *id != self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.lock();
        t.live = t.live.saturating_sub(1);
        t.idle.retain(|(id, _, _)| *id != self.id);
        drop(t);
        self.table.freed.notify_one();
    }
}

/// Take a slot now, or say how long to wait before asking again.
fn try_admit(t: &mut Connections) -> Result<(u64, oneshot::Receiver<()>), Duration> {
    if t.live >= MAX_CONNECTIONS {
        match t.idle.front().map(|(_, since, _)| since.elapsed()) {
            Some(age) if age >= EVICT_AFTER => {
                if let Some((_, _, close)) = t.idle.pop_front() {
                    // Its task ends and frees the slot as soon as it runs
                    // (unless its request has arrived meanwhile: then it is
                    // answered first); until then the count is over the cap.
                    let _ = close.send(());
                }
            }
            Some(age) => return Err(EVICT_AFTER - age),
            None => return Err(EVICT_AFTER),
        }
    }
    t.live += 1;
    t.next_id += 1;
    let id = t.next_id;
    let (close, closed) = oneshot::channel();
    t.idle.push_back((id, Instant::now(), close));
    Ok((id, closed))
}

/// Admit a new connection: a slot, and the signal that closes it early.
/// Waits while every slot is taken by a connection that is answering or
/// was accepted less than [`EVICT_AFTER`] ago.
async fn admit(table: &Arc<Table>) -> (Arc<Slot>, oneshot::Receiver<()>) {
    loop {
        let admitted = try_admit(&mut table.lock());
        match admitted {
            Ok((id, closed)) => {
                let slot = Slot {
                    table: table.clone(),
                    id,
                    busy: AtomicBool::new(false),
                };
                return (Arc::new(slot), closed);
            }
            Err(wait) => {
                tokio::select! {
                    _ = table.freed.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

const PLAIN: &str = "text/plain; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answer one request.
pub fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "GET or HEAD only\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => {
            // Prometheus asks for OpenMetrics first when it can take it.
            let openmetrics = request
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            match metrics.render(openmetrics) {
                Ok(body) if openmetrics => text(StatusCode::OK, OPENMETRICS, body),
                Ok(body) => text(
                    StatusCode::OK,
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    body,
                ),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    PLAIN,
                    "encoding the metrics failed\n".into(),
                ),
            }
        }
        // Ready when every resource is registered with the kubelet (a node
        // without any resource to offer is ready too); else 503 naming the
        // ones that are not.
        "/healthz" => {
            let waiting = metrics.unregistered();
            if waiting.is_empty() {
                text(StatusCode::OK, PLAIN, "ok\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    format!("not registered with the kubelet: {}\n", waiting.join(", ")),
                )
            }
        }
        // The process answers: for a liveness probe, which must not restart
        // the daemon while the kubelet is away.
        "/livez" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}

async fn connection(
    stream: TcpStream,
    slot: Arc<Slot>,
    evicted: oneshot::Receiver<()>,
    metrics: Arc<Metrics>,
) {
    let service = {
        let slot = slot.clone();
        service_fn(move |request: Request<Incoming>| {
            slot.mark_busy();
            let response = respond(&metrics, &request);
            std::future::ready(Ok::<_, Infallible>(response))
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST)
        // One request per connection: a kept-alive connection would be an
        // idle one again, holding a slot between scrapes.
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let head_deadline = tokio::time::sleep(READ_TIMEOUT);
    let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
    tokio::pin!(head_deadline, lifetime, evicted);
    let (mut evict_seen, mut head_seen) = (false, false);
    loop {
        // The connection first: one whose request is already in is served
        // even if it was picked for closing meanwhile.
        tokio::select! {
            biased;
            _ = &mut conn => return,
            _ = &mut evicted, if !evict_seen => evict_seen = true,
            _ = &mut head_deadline, if !head_seen => head_seen = true,
            _ = &mut lifetime => return,
        }
        if !slot.busy.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Serve until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let table = Arc::new(Table::default());
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
        // While no slot can be had, further connections wait in the
        // kernel's backlog.
        let (slot, evicted) = admit(&table).await;
        tokio::spawn(connection(stream, slot, evicted, metrics.clone()));
    }
}

/// Connections the kernel completes and queues while the server waits for
/// a free slot (the standard library's 128 overflowed under 200 parallel
/// scrapes: the dropped handshakes were retried a second later).
const BACKLOG: u32 = 1024;

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As the standard library's bind: a restarted daemon rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_table(accepted_ago: Duration) -> (Connections, Vec<oneshot::Receiver<()>>) {
        let mut t = Connections::default();
        let mut closed = Vec::new();
        let since = Instant::now()
            .checked_sub(accepted_ago)
            .expect("a clock past the test's start");
        for _ in 0..MAX_CONNECTIONS {
            let (_, rx) = try_admit(&mut t).expect("a free slot");
            closed.push(rx);
        }
        for entry in &mut t.idle {
            entry.1 = since;
        }
        (t, closed)
    }

    #[test]
    fn a_full_table_closes_the_oldest_idle_connection_once_it_had_its_chance() {
        let (mut t, mut closed) = full_table(EVICT_AFTER * 2);
        let (id, _) = try_admit(&mut t).expect("the oldest idle one makes room");
        assert_eq!(id, MAX_CONNECTIONS as u64 + 1);
        assert_eq!(closed[0].try_recv(), Ok(()), "the oldest was told to close");
        assert!(closed[1].try_recv().is_err(), "only the oldest");
        assert_eq!(t.idle.len(), MAX_CONNECTIONS);
    }

    #[test]
    fn a_full_table_lets_a_fresh_connection_send_its_request_first() {
        let (mut t, mut closed) = full_table(Duration::ZERO);
        let wait = try_admit(&mut t).expect_err("nobody old enough to close");
        assert!(wait > Duration::ZERO && wait <= EVICT_AFTER, "{wait:?}");
        assert!(closed.iter_mut().all(|c| c.try_recv().is_err()));
        // Every connection answering: wait for one to end.
        t.idle.clear();
        assert_eq!(try_admit(&mut t).err(), Some(EVICT_AFTER));
        assert_eq!(t.live, MAX_CONNECTIONS);
    }

    #[test]
    fn config_loads_show_in_both_formats_and_openmetrics_ends_with_eof() {
        let metrics = Metrics::new(Shared::default());
        metrics.config_reloaded(true);
        metrics.config_reloaded(false);
        let om = metrics.render(true).expect("OpenMetrics");
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("macvtap_deviceplugin_config_reloads_total{result=\"error\"} 1"));
        assert!(
            om.contains("macvtap_deviceplugin_config_last_reload_success 0"),
            "{om}"
        );
        let text = metrics.render(false).expect("text");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("macvtap_deviceplugin_config_reloads_total{result=\"ok\"} 1"),
            "{text}"
        );
    }
}
