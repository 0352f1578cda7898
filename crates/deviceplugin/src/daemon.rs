//! The daemon: offer the resources, keep their health current, follow the
//! kubelet through restarts, stop cleanly on SIGTERM/SIGINT.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use macvtap_state::{Attach, NodeConfig, StateDir};
use tokio::signal::unix::{signal, SignalKind};

use crate::allocate::Allocator;
use crate::config::{valid_resource_name, Config, Discovery, ResourceConfig, DEFAULT_CAPACITY};
use crate::kubelet::{register, watch_dir, DirEvent, Served, KUBELET_SOCKET};
use crate::links::{watch_links, HostLink, LinkTable};
use crate::reload::{self, ConfigFile, Debounce, ReloadError};
use crate::resource::{assign_bases, Counters, Resource};
use crate::{metrics, sweep};

/// Where things are.
#[derive(Debug, Clone)]
pub struct Paths {
    pub device_plugin_dir: PathBuf,
    pub state_dir: String,
    pub pod_resources_socket: PathBuf,
    pub metrics_address: Option<SocketAddr>,
    /// `--cdi`: where the CDI specs go (None: no CDI).
    pub cdi_spec_dir: Option<PathBuf>,
}

/// How the daemon behaves, beyond where things are.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Discovery: a resource whose link has been gone this long is retired.
    pub retire_after: Duration,
    /// The configuration came from this file: follow it and apply changes.
    pub live: Option<ConfigFile>,
}

/// A short-lived link's resource (a veth of a test, a USB NIC unplugged)
/// goes after this long; a link that flaps or is re-created by its manager
/// comes back well within it and keeps its resource and ifindex range.
pub const DEFAULT_RETIRE_AFTER: Duration = Duration::from_secs(30);

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            retire_after: DEFAULT_RETIRE_AFTER,
            live: None,
        }
    }
}

/// Why the daemon cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state directory is unusable.
    #[error("state directory")]
    State(#[from] macvtap_state::Error),
    /// Links cannot be listed or followed.
    #[error("following host links")]
    Links(#[from] macvtap_net::Error),
    /// The device-plugin directory is unusable.
    #[error("device-plugin directory {path}")]
    PluginDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A resource's socket cannot be served.
    #[error("serving resource {name}")]
    Serve {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// The metrics address cannot be bound.
    #[error("metrics address {addr}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A watcher thread stopped: the daemon can no longer follow the
    /// kubelet or the links; exiting lets the DaemonSet restart it.
    #[error("{0}")]
    Watch(String),
    /// Signal handlers cannot be installed.
    #[error("signal handling")]
    Signals(#[source] std::io::Error),
    /// The CDI spec directory is unusable or a spec cannot be written.
    #[error("CDI")]
    Cdi(#[from] crate::cdi::CdiError),
    /// The configuration file cannot be followed.
    #[error("live configuration")]
    Reload(#[from] ReloadError),
}

const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(2);

struct Daemon {
    paths: Paths,
    state: StateDir,
    allocator: Arc<Allocator>,
    resources: BTreeMap<String, Arc<Resource>>,
    served: BTreeMap<String, Served>,
    /// Resources whose registration failed, retried until it works.
    unregistered: BTreeSet<String>,
    /// The wait before the next retry: short at first (a new kubelet.sock
    /// may refuse connections for a moment), growing to 2 s.
    retry_delay: Duration,
    shared: metrics::Shared,
    discover: Option<Discovery>,
    /// Discovered resources whose link is gone, and since when.
    gone_since: BTreeMap<String, Instant>,
    retire_after: Duration,
    /// The configuration file followed, if any.
    live: Option<ConfigFile>,
    /// The configuration applied last (the file's last good content).
    running_config: Config,
    /// When to read the file after its directory changed.
    debounce: Debounce,
    /// Why the last reload was refused, while it is the last one (a broken
    /// file seen again is one refusal, logged and counted once).
    reload_refused: Option<String>,
    /// Sockets this daemon removed itself (a withdrawn resource): their
    /// deletion events are not a kubelet restart.
    removed_sockets: BTreeSet<String>,
}

/// Resources that discovery offers for these links. A link whose name
/// cannot be a resource name is left out (upstream offers it, and the
/// kubelet refuses its registration).
fn discovered<'a>(
    links: impl IntoIterator<Item = &'a HostLink>,
    discovery: &Discovery,
) -> Vec<ResourceConfig> {
    links
        .into_iter()
        .filter(|l| {
            l.kind.is_some_and(|k| discovery.kinds.contains(&k))
                && !(discovery.skip_enslaved && l.enslaved)
                && valid_resource_name(&l.name)
        })
        .map(|l| ResourceConfig {
            name: l.name.clone(),
            lower_device: l.name.clone(),
            mode: macvtap_net::MacvtapMode::Bridge,
            capacity: DEFAULT_CAPACITY,
            attach: Attach::Pod,
        })
        .collect()
}

impl Daemon {
    /// Add resources (ifindex ranges stable across restarts), persist the
    /// node configuration for the CNI, and return the new ones.
    fn add_resources(
        &mut self,
        wanted: Vec<ResourceConfig>,
        links: &LinkTable,
    ) -> Result<Vec<Arc<Resource>>, DaemonError> {
        let wanted: Vec<ResourceConfig> = wanted
            .into_iter()
            .filter(|w| !self.resources.contains_key(&w.name))
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let previous = self.state.load_config().unwrap_or_default();
        // Ranges already in use by this run count as taken.
        let mut known = NodeConfig {
            resources: self.resources.values().map(|r| r.to_state()).collect(),
        };
        for p in previous.resources {
            if !known.resources.iter().any(|k| k.name == p.name)
                && wanted.iter().any(|w| w.name == p.name)
            {
                known.resources.push(p);
            }
        }
        let all: Vec<ResourceConfig> = self
            .resources
            .values()
            .map(|r| r.config.clone())
            .chain(wanted.iter().cloned())
            .collect();
        let bases = assign_bases(&known, &all);
        let mut added = Vec::new();
        for (config, base) in all.into_iter().zip(bases) {
            if self.resources.contains_key(&config.name) {
                continue;
            }
            let resource = Resource::new(config, base, links);
            self.resources
                .insert(resource.config.name.clone(), resource.clone());
            added.push(resource);
        }
        self.state.save_config(&NodeConfig {
            resources: self.resources.values().map(|r| r.to_state()).collect(),
        })?;
        self.allocator.sync_cdi(self.resources.values())?;
        if let Ok(mut shared) = self.shared.write() {
            *shared = self.resources.values().cloned().collect();
        }
        Ok(added)
    }

    fn serve(&mut self, resource: &Arc<Resource>) -> Result<(), DaemonError> {
        let served = Served::start(
            &self.paths.device_plugin_dir,
            resource.clone(),
            self.allocator.clone(),
        )
        .map_err(|source| DaemonError::Serve {
            name: resource.config.name.clone(),
            source,
        })?;
        if let Some(old) = self.served.insert(resource.config.name.clone(), served) {
            drop(old); // its socket path now belongs to the new server
        }
        resource.registered.store(false, Ordering::Relaxed);
        self.unregistered.insert(resource.config.name.clone());
        Ok(())
    }

    /// Register every served resource not registered yet.
    async fn register_pending(&mut self) {
        if !self.paths.device_plugin_dir.join(KUBELET_SOCKET).exists() {
            // Its creation (inotify) triggers the next attempt.
            self.retry_delay = LAST_RETRY;
            return;
        }
        let pending: Vec<String> = self.unregistered.iter().cloned().collect();
        for name in pending {
            let Some(resource) = self.resources.get(&name).cloned() else {
                continue;
            };
            match register(&self.paths.device_plugin_dir, &resource).await {
                Ok(()) => {
                    Counters::add(&resource.counters.registrations);
                    resource.registered.store(true, Ordering::Relaxed);
                    self.unregistered.remove(&name);
                    tracing::info!(resource = %resource.resource_name(), "registered with the kubelet");
                }
                Err(e) => tracing::warn!(resource = %resource.resource_name(), "{e}"),
            }
        }
        self.retry_delay = if self.unregistered.is_empty() {
            FIRST_RETRY
        } else {
            (self.retry_delay * 2).min(LAST_RETRY)
        };
    }

    /// The kubelet restarted: it deleted our sockets. Serve and register again.
    async fn kubelet_restarted(&mut self) -> Result<(), DaemonError> {
        self.retry_delay = FIRST_RETRY;
        let all: Vec<Arc<Resource>> = self.resources.values().cloned().collect();
        for (_, served) in std::mem::take(&mut self.served) {
            served.stop();
        }
        for resource in &all {
            self.serve(resource)?;
        }
        self.register_pending().await;
        Ok(())
    }

    /// Discovery: note which resources' links are gone (and since when)
    /// and which came back.
    fn track_gone(&mut self, links: &LinkTable) {
        let now = Instant::now();
        for (name, resource) in &self.resources {
            if links.by_name(&resource.config.lower_device).is_some() {
                self.gone_since.remove(name);
            } else {
                self.gone_since.entry(name.clone()).or_insert(now);
            }
        }
    }

    /// When the next gone resource is due for retirement.
    fn next_retirement(&self) -> Option<Instant> {
        self.gone_since
            .values()
            .min()
            .map(|t| *t + self.retire_after)
    }

    /// Retire every resource whose link has been gone long enough: stop
    /// serving it (its socket goes, which the kubelet takes as the plugin
    /// leaving), end its ListAndWatch streams, and drop it from
    /// resources.json so its ifindex range is free again.
    fn retire_due(&mut self) -> Result<(), DaemonError> {
        let due: Vec<String> = self
            .gone_since
            .iter()
            .filter(|(_, since)| since.elapsed() >= self.retire_after)
            .map(|(name, _)| name.clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        for name in &due {
            if let Some(resource) = self.withdraw(name) {
                tracing::info!(
                    resource = %resource.resource_name(),
                    after_s = self.retire_after.as_secs_f64(),
                    "retired: its link has been gone for the grace period"
                );
            }
        }
        self.persist()
    }

    /// Stop offering a resource: its socket goes (the kubelet takes that as
    /// the plugin leaving and stops offering its devices to new pods), its
    /// ListAndWatch streams end. Devices pods hold are not touched: they
    /// keep working until their pods go. Call [`Daemon::persist`] after.
    fn withdraw(&mut self, name: &str) -> Option<Arc<Resource>> {
        self.gone_since.remove(name);
        self.unregistered.remove(name);
        if let Some(served) = self.served.remove(name) {
            served.stop();
            if let Some(resource) = self.resources.get(name) {
                self.removed_sockets.insert(resource.socket_name());
            }
        }
        let resource = self.resources.remove(name)?;
        resource.retire();
        if let Some(metrics) = &self.allocator.metrics {
            metrics.forget(&resource);
        }
        Some(resource)
    }

    /// Give changed resources their new settings where they are served:
    /// the kubelet's ListAndWatch streams get the new device list, the
    /// next Allocates use the new mode and lower device, devices in use
    /// stay as they are. A resource keeps its ifindex range unless it grew
    /// into another's.
    fn change_in_place(&mut self, changed: &[(ResourceConfig, ResourceConfig)], links: &LinkTable) {
        if changed.is_empty() {
            return;
        }
        let known = NodeConfig {
            resources: self.resources.values().map(|r| r.to_state()).collect(),
        };
        let all: Vec<ResourceConfig> = self
            .resources
            .values()
            .map(|r| {
                changed
                    .iter()
                    .find(|(old, _)| old.name == r.config.name)
                    .map_or_else(|| r.config.clone(), |(_, new)| new.clone())
            })
            .collect();
        let bases = assign_bases(&known, &all);
        for (config, base) in all.into_iter().zip(bases) {
            let Some((old, _)) = changed.iter().find(|(old, _)| old.name == config.name) else {
                continue;
            };
            let Some(running) = self.resources.get(&config.name).cloned() else {
                continue;
            };
            let change = reload::describe_change(old, &config);
            let moved = if base == running.ifindex_base {
                String::new()
            } else {
                format!(", ifindexes from {base} (was {})", running.ifindex_base)
            };
            let successor = running.successor(config, base);
            // The service first: once the kubelet sees a new device, an
            // Allocate of it must find the new settings.
            if let Some(served) = self.served.get(&successor.config.name) {
                served.replace(successor.clone());
            }
            self.resources
                .insert(successor.config.name.clone(), successor.clone());
            successor.update(links);
            tracing::info!(
                resource = %successor.resource_name(),
                "changed in the configuration: {change}{moved}; ListAndWatch sent the new list, devices in use keep their settings"
            );
        }
    }

    /// Write resources.json for the CNI and the list /metrics reports.
    fn persist(&mut self) -> Result<(), DaemonError> {
        if let Ok(mut shared) = self.shared.write() {
            *shared = self.resources.values().cloned().collect();
        }
        self.state.save_config(&NodeConfig {
            resources: self.resources.values().map(|r| r.to_state()).collect(),
        })?;
        self.allocator.sync_cdi(self.resources.values())?;
        Ok(())
    }

    /// The configuration file's directory changed: read the file and apply
    /// what differs from the running configuration. A file that cannot be
    /// read or parsed changes nothing; it is logged and counted.
    async fn reload(&mut self, links: &LinkTable) -> Result<(), DaemonError> {
        let Some(file) = self.live.clone() else {
            return Ok(());
        };
        let started = Instant::now();
        let config = match file.load() {
            Ok(config) => config,
            Err(e) => {
                let why = macvtap_net::error_chain(&e);
                // The same broken content seen again (another event on the
                // directory) is one refusal, not several.
                if self.reload_refused.as_deref() != Some(why.as_str()) {
                    tracing::error!(
                        file = %file.path.display(),
                        key = %file.key(),
                        "configuration change refused, the last good configuration stays in effect: {why}"
                    );
                    self.reload_ended(Some(why));
                }
                return Ok(());
            }
        };
        if config == self.running_config {
            if self.reload_refused.is_some() {
                tracing::info!(file = %file.path.display(), "configuration file valid again, equal to the one in effect");
                self.reload_ended(None);
            }
            return Ok(());
        }
        let changes = self.apply(config, links).await;
        match &changes {
            Ok(()) => {
                self.reload_ended(None);
                tracing::info!(
                    took_ms = started.elapsed().as_secs_f64() * 1e3,
                    "configuration file applied"
                );
            }
            // Serving or persisting failed: the daemon exits with this
            // error and its restart reads the file afresh.
            Err(e) => self.reload_ended(Some(macvtap_net::error_chain(e))),
        }
        changes
    }

    /// A reload ended, refused (with why) or applied: remembered for the
    /// next one, and counted in /metrics.
    fn reload_ended(&mut self, refused: Option<String>) {
        if let Some(metrics) = &self.allocator.metrics {
            metrics.config_reloaded(refused.is_none());
        }
        self.reload_refused = refused;
    }

    /// Make the offered resources those of `config`: withdraw removed ones,
    /// update changed ones in place, serve and register added ones.
    async fn apply(&mut self, config: Config, links: &LinkTable) -> Result<(), DaemonError> {
        let (mut wanted, discover) = match &config {
            Config::Static(resources) => (resources.clone(), None),
            Config::Discover(discovery) => {
                (discovered(links.iter(), discovery), Some(discovery.clone()))
            }
        };
        if discover.is_some() && self.discover.is_some() {
            // Discovered resources whose link is gone keep their grace period.
            for name in self.gone_since.keys() {
                if let Some(r) = self.resources.get(name) {
                    wanted.push(r.config.clone());
                }
            }
        }
        let plan = reload::plan(self.resources.values().map(|r| &r.config), &wanted);
        for name in &plan.removed {
            if let Some(resource) = self.withdraw(name) {
                tracing::info!(
                    resource = %resource.resource_name(),
                    "removed from the configuration: socket removed; devices in use keep working until their pods go"
                );
            }
        }
        self.change_in_place(&plan.changed, links);
        let is_discovery = discover.is_some();
        self.discover = discover;
        self.running_config = config;
        let added = self.add_resources(plan.added.clone(), links)?;
        if added.is_empty() {
            self.persist()?;
        }
        if is_discovery {
            self.track_gone(links);
        } else {
            self.gone_since.clear();
        }
        for resource in &added {
            tracing::info!(resource = %resource.resource_name(), "added to the configuration");
            self.serve(resource)?;
        }
        if !added.is_empty() {
            self.register_pending().await;
        }
        Ok(())
    }

    fn stop(&mut self) {
        for (_, served) in std::mem::take(&mut self.served) {
            served.stop();
        }
    }
}

/// Run until SIGTERM or SIGINT.
pub async fn run(config: Config, paths: Paths, tuning: Tuning) -> Result<(), DaemonError> {
    let started = Instant::now();
    let state = StateDir::open(&paths.state_dir)?;
    std::fs::create_dir_all(&paths.device_plugin_dir).map_err(|source| DaemonError::PluginDir {
        path: paths.device_plugin_dir.clone(),
        source,
    })?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut links = watch_links()?;
    let table = links.borrow_and_update().clone();

    let (wanted, discover) = match &config {
        Config::Static(resources) => (resources.clone(), None),
        Config::Discover(discovery) => {
            (discovered(table.iter(), discovery), Some(discovery.clone()))
        }
    };
    // Watched from before the daemon looks at the configuration's effects:
    // an edit from now on is seen (the first read below catches one made
    // since the file was read at start).
    let mut config_events = match &tuning.live {
        Some(file) => Some(reload::watch(file)?),
        None => None,
    };
    let shared: metrics::Shared = Arc::default();
    let metrics = metrics::Metrics::new(shared.clone());
    let mut daemon = Daemon {
        allocator: Arc::new(Allocator {
            state: state.clone(),
            binder: Some(crate::grants::start_binder(
                state.clone(),
                paths.pod_resources_socket.clone(),
            )),
            cdi: match &paths.cdi_spec_dir {
                Some(dir) => Some(crate::cdi::SpecDir::open(dir)?),
                None => None,
            },
            metrics: Some(metrics.clone()),
        }),
        state,
        paths,
        resources: BTreeMap::new(),
        served: BTreeMap::new(),
        unregistered: BTreeSet::new(),
        retry_delay: FIRST_RETRY,
        shared,
        discover,
        gone_since: BTreeMap::new(),
        retire_after: tuning.retire_after,
        live: tuning.live,
        running_config: config,
        debounce: Debounce::default(),
        reload_refused: None,
        removed_sockets: BTreeSet::new(),
    };
    if daemon.live.is_some() {
        daemon.debounce.event(Instant::now());
    }
    let added = daemon.add_resources(wanted, &table)?;
    // The start-up load counts as the first; reloads add theirs.
    metrics.config_reloaded(true);
    let all: Vec<Arc<Resource>> = daemon.resources.values().cloned().collect();
    let swept = sweep::sweep(&daemon.state, &all, &daemon.paths.pod_resources_socket).await;
    metrics.swept(swept.as_ref());

    let mut dir_events =
        watch_dir(&daemon.paths.device_plugin_dir).map_err(|e| DaemonError::PluginDir {
            path: daemon.paths.device_plugin_dir.clone(),
            source: e.into(),
        })?;
    for resource in &added {
        daemon.serve(resource)?;
    }
    daemon.register_pending().await;
    tracing::info!(
        resources = daemon.resources.len(),
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "serving"
    );

    if let Some(addr) = daemon.paths.metrics_address {
        let listener = metrics::bind(addr)
            .await
            .map_err(|source| DaemonError::Metrics { addr, source })?;
        tokio::spawn(metrics::serve(listener, metrics.clone()));
    }

    // Whatever ends the loop, the sockets go: an error exit must not leave
    // the kubelet dialing a dead plugin.
    let result = serve_until_signal(
        &mut daemon,
        &mut sigterm,
        &mut sigint,
        &mut dir_events,
        &mut links,
        &mut config_events,
    )
    .await;
    daemon.stop();
    match &result {
        Ok(()) => tracing::info!("stopped; sockets removed"),
        Err(e) => tracing::error!(
            "stopping on error, sockets removed: {}",
            macvtap_net::error_chain(e)
        ),
    }
    result
}

async fn serve_until_signal(
    daemon: &mut Daemon,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
    dir_events: &mut tokio::sync::mpsc::UnboundedReceiver<DirEvent>,
    links: &mut tokio::sync::watch::Receiver<Arc<LinkTable>>,
    config_events: &mut Option<tokio::sync::mpsc::UnboundedReceiver<()>>,
) -> Result<(), DaemonError> {
    // What discovery last looked at: only links that changed since are
    // looked at again (a diff of the persistent maps skips what they share).
    let mut previous = links.borrow().clone();
    loop {
        tokio::select! {
            _ = sigterm.recv() => return Ok(()),
            _ = sigint.recv() => return Ok(()),
            event = dir_events.recv() => match event {
                None => return Err(DaemonError::Watch("the device-plugin directory watcher stopped".into())),
                Some(DirEvent::KubeletStarted) => {
                    tracing::info!("kubelet.sock created: the kubelet (re)started; serving and registering again");
                    daemon.kubelet_restarted().await?;
                }
                Some(DirEvent::Deleted(name)) => {
                    if !daemon.removed_sockets.remove(&name)
                        && daemon.resources.values().any(|r| r.socket_name() == name)
                    {
                        tracing::info!("socket {name} was removed (kubelet restart?)");
                    }
                }
            },
            changed = links.changed() => {
                if changed.is_err() {
                    return Err(DaemonError::Watch("the link watcher stopped".into()));
                }
                let table = links.borrow_and_update().clone();
                for resource in daemon.resources.values() {
                    resource.update(&table);
                }
                if let Some(discovery) = daemon.discover.clone() {
                    daemon.track_gone(&table);
                    let fresh = discovered(table.changed_since(&previous), &discovery);
                    let added = daemon.add_resources(fresh, &table)?;
                    for resource in &added {
                        tracing::info!(resource = %resource.resource_name(), "discovered");
                        daemon.serve(resource)?;
                    }
                    if !added.is_empty() {
                        daemon.register_pending().await;
                    }
                }
                previous = table;
            },
            _ = tokio::time::sleep(daemon.retry_delay), if !daemon.unregistered.is_empty() => {
                daemon.register_pending().await
            }
            _ = sleep_until_some(daemon.next_retirement()), if daemon.next_retirement().is_some() => {
                daemon.retire_due()?;
            }
            event = recv_some(config_events), if config_events.is_some() => match event {
                None => return Err(DaemonError::Watch("the configuration directory watcher stopped".into())),
                Some(()) => daemon.debounce.event(Instant::now()),
            },
            _ = sleep_until_some(daemon.debounce.due()), if daemon.debounce.due().is_some() => {
                daemon.debounce.clear();
                let table = links.borrow().clone();
                daemon.reload(&table).await?;
            }
        }
    }
}

/// The next notice of `rx`; never, when there is no receiver.
async fn recv_some(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleep until `at`; forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LinkKind;
    use crate::links::HostLink;

    fn link(
        index: u32,
        name: &str,
        info_kind: Option<&str>,
        device: bool,
        enslaved: bool,
    ) -> HostLink {
        HostLink {
            index,
            name: name.into(),
            kind: LinkKind::from_info_kind(info_kind, device),
            info_kind: info_kind.map(Into::into),
            carrier: true,
            enslaved,
            lower_index: None,
            numa_node: None,
        }
    }

    fn names(links: &LinkTable, d: &Discovery) -> Vec<String> {
        discovered(links.iter(), d)
            .into_iter()
            .map(|r| r.name)
            .collect()
    }

    /// Upstream (pkg/util/netlink.go, isSuitableMacvtapParent): every link
    /// netlink reports as a plain device or a bond, loopback excluded,
    /// enslaved ones included.
    #[test]
    fn discovery_offers_upstreams_set_by_default() {
        let links = LinkTable::from_links([
            link(1, "lo", None, false, false),
            link(2, "eth0", None, true, false),
            link(3, "eth1", None, true, true), // enslaved to bond0
            link(4, "bond0", Some("bond"), false, false),
            link(5, "team0", Some("team"), false, false),
            link(6, "eth0.100", Some("vlan"), false, false),
            link(7, "br0", Some("bridge"), false, false),
            link(8, "veth0", Some("veth"), false, false),
            link(9, "vxlan0", Some("vxlan"), false, false),
            link(10, "mvl0", Some("macvlan"), false, false),
            link(11, "tap0", Some("tun"), false, false),
        ]);
        assert_eq!(
            names(&links, &Discovery::upstream()),
            ["eth0", "eth1", "bond0"]
        );
        let wider = Discovery {
            kinds: crate::config::parse_kinds("physical,bond,team,vlan").expect("kinds"),
            skip_enslaved: true,
        };
        assert_eq!(
            names(&links, &wider),
            ["eth0", "bond0", "team0", "eth0.100"]
        );
    }
}
