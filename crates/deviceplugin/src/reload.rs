//! Live configuration: the resources come from a file (`--config-file`, a
//! ConfigMap mounted as a volume), which is followed with inotify and
//! applied without a restart. A broken edit keeps the last good
//! configuration running; the outcome of every reload is counted here for
//! /metrics.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::config::{Config, ConfigError, ResourceConfig};
use crate::proto::deviceplugin::device_plugin_server::DevicePlugin;
use crate::proto::deviceplugin::{
    AllocateRequest, AllocateResponse, DevicePluginOptions, Empty, PreStartContainerRequest,
    PreStartContainerResponse, PreferredAllocationRequest, PreferredAllocationResponse,
};
use crate::resource::Resource;
use crate::service::PluginService;

/// A change is read once the directory has been quiet this long: an
/// editor's write-then-rename, or the kubelet's new timestamped directory
/// and its `..data` swap, come as a burst of events.
pub const QUIET: Duration = Duration::from_millis(100);
/// ...but never later than this after the first event of a burst, so that
/// a file rewritten without pause is still followed.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// Why the configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read (missing, unreadable, not UTF-8).
    #[error("configuration file {path}: cannot read it")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file's JSON is refused; the message names file, key, and line
    /// and column or resource.
    #[error(transparent)]
    Parse(#[from] ConfigError),
    /// The file's directory cannot be watched.
    #[error("watching the configuration directory {dir}")]
    Watch {
        dir: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// The configuration file and the discovery variables that go with it (the
/// latter from the environment, read once at start).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The path as given (shown in messages).
    pub path: PathBuf,
    pub discover_kinds: Option<String>,
    pub discover_skip_enslaved: Option<String>,
    /// The file's directory, opened at start: read and watched through it
    /// once the daemon has joined the host's mount namespace, where the
    /// container's path means nothing.
    dir: Option<Arc<std::os::fd::OwnedFd>>,
}

impl ConfigFile {
    pub fn new(
        path: PathBuf,
        discover_kinds: Option<String>,
        discover_skip_enslaved: Option<String>,
    ) -> ConfigFile {
        ConfigFile {
            path,
            discover_kinds,
            discover_skip_enslaved,
            dir: None,
        }
    }

    /// Open the file's directory, before the daemon changes mount
    /// namespace (`--host-mounts`); from then on the file is reached
    /// through `/proc/self/fd`.
    pub fn pin_directory(&mut self) -> Result<(), ReloadError> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.given_dir();
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&dir)
            .map_err(|source| ReloadError::Read {
                path: dir.clone(),
                source,
            })?;
        self.dir = Some(Arc::new(opened.into()));
        Ok(())
    }

    fn given_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// The directory to watch and read in, in this mount namespace.
    pub fn directory(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        match &self.dir {
            Some(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            None => self.given_dir(),
        }
    }

    /// The ConfigMap key the file holds: its name.
    pub fn key(&self) -> String {
        self.path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }

    /// Read and parse the file (through the ConfigMap's symlinks).
    pub fn load(&self) -> Result<Config, ReloadError> {
        let text =
            std::fs::read_to_string(self.directory().join(self.key())).map_err(|source| {
                ReloadError::Read {
                    path: self.path.clone(),
                    source,
                }
            })?;
        let origin = format!("{} (key {})", self.path.display(), self.key());
        Ok(Config::parse_from(
            &origin,
            &text,
            self.discover_kinds.as_deref(),
            self.discover_skip_enslaved.as_deref(),
        )?)
    }
}

/// Follow the file's directory: every event there (the kubelet's symlink
/// swap, an editor's rename-over, an in-place write) sends a notice. The
/// directory, not the file: a watch on the file would follow the inode the
/// old symlink pointed at, which the kubelet deletes.
pub fn watch(file: &ConfigFile) -> Result<mpsc::UnboundedReceiver<()>, ReloadError> {
    let dir = file.directory();
    let failed = |source| ReloadError::Watch {
        dir: file.given_dir(),
        source,
    };
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(failed)?;
    inotify
        .add_watch(
            &dir,
            AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_ATTRIB,
        )
        .map_err(failed)?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("config-dir".into())
        .spawn(move || loop {
            match inotify.read_events() {
                Ok(_) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("watching the configuration directory: {e}");
                    return;
                }
            }
        })
        .map_err(|_| failed(nix::errno::Errno::EAGAIN))?;
    Ok(rx)
}

/// When to read the file after a burst of events.
#[derive(Debug, Default, Clone, Copy)]
pub struct Debounce {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    /// An event arrived at `now`.
    pub fn event(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the file is due to be read; None when nothing happened.
    pub fn due(&self) -> Option<Instant> {
        Some((self.last? + QUIET).min(self.first? + MAX_WAIT))
    }

    /// The file is being read: events from now on start a new burst.
    pub fn clear(&mut self) {
        *self = Debounce::default();
    }
}

/// What a new configuration changes, by resource name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New resources: served and registered.
    pub added: Vec<ResourceConfig>,
    /// Resources no longer configured: their sockets go.
    pub removed: Vec<String>,
    /// Resources whose settings differ, updated in place: (running, wanted).
    pub changed: Vec<(ResourceConfig, ResourceConfig)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compare the running resources with the wanted ones.
pub fn plan<'a>(
    running: impl IntoIterator<Item = &'a ResourceConfig>,
    wanted: &[ResourceConfig],
) -> Plan {
    let mut plan = Plan::default();
    let running: Vec<&ResourceConfig> = running.into_iter().collect();
    for r in &running {
        match wanted.iter().find(|w| w.name == r.name) {
            None => plan.removed.push(r.name.clone()),
            Some(w) if w != *r => plan.changed.push(((*r).clone(), w.clone())),
            Some(_) => {}
        }
    }
    for w in wanted {
        if !running.iter().any(|r| r.name == w.name) {
            plan.added.push(w.clone());
        }
    }
    plan
}

/// What changed in one resource, for the log: `capacity 50 -> 100, ...`.
pub fn describe_change(old: &ResourceConfig, new: &ResourceConfig) -> String {
    let attach = |a: macvtap_state::Attach| match a {
        macvtap_state::Attach::Pod => "pod",
        macvtap_state::Attach::Host => "host",
    };
    let mut parts = Vec::new();
    if old.capacity != new.capacity {
        parts.push(format!("capacity {} -> {}", old.capacity, new.capacity));
    }
    if old.mode != new.mode {
        parts.push(format!("mode {} -> {}", old.mode, new.mode));
    }
    if old.lower_device != new.lower_device {
        parts.push(format!(
            "lowerDevice {} -> {}",
            old.lower_device, new.lower_device
        ));
    }
    if old.attach != new.attach {
        parts.push(format!(
            "attach {} -> {}",
            attach(old.attach),
            attach(new.attach)
        ));
    }
    parts.join(", ")
}

/// A resource's DevicePlugin service whose resource can be replaced while
/// it is served: a changed resource keeps its socket, the kubelet's
/// connection and its ListAndWatch stream (which gets the new list), and
/// the next Allocate uses the new settings. No re-registration: the
/// kubelet handles a plugin's stream ending after its re-registration as
/// the new plugin leaving.
#[derive(Debug, Clone)]
pub struct LiveService(Arc<RwLock<PluginService>>);

impl LiveService {
    pub fn new(service: PluginService) -> LiveService {
        LiveService(Arc::new(RwLock::new(service)))
    }

    /// Calls from now on are served for `resource`; calls under way finish
    /// with the resource they started with.
    pub fn replace(&self, resource: Arc<Resource>) {
        if let Ok(mut current) = self.0.write() {
            current.resource = resource;
        }
    }

    fn current(&self) -> Result<PluginService, Status> {
        self.0
            .read()
            .map(|s| s.clone())
            .map_err(|_| Status::internal("the resource's service is unusable"))
    }
}

#[tonic::async_trait]
impl DevicePlugin for LiveService {
    type ListAndWatchStream = <PluginService as DevicePlugin>::ListAndWatchStream;

    async fn get_device_plugin_options(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        self.current()?.get_device_plugin_options(request).await
    }

    async fn list_and_watch(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        self.current()?.list_and_watch(request).await
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        self.current()?.get_preferred_allocation(request).await
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        self.current()?.allocate(request).await
    }

    async fn pre_start_container(
        &self,
        request: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        self.current()?.pre_start_container(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use macvtap_net::MacvtapMode;
    use macvtap_state::Attach;

    fn rc(name: &str, lower: &str, capacity: u32) -> ResourceConfig {
        ResourceConfig {
            name: name.into(),
            lower_device: lower.into(),
            mode: MacvtapMode::Bridge,
            capacity,
            attach: Attach::Pod,
        }
    }

    #[test]
    fn plan_applies_only_the_difference() {
        let running = [rc("a", "eth0", 10), rc("b", "eth1", 10), rc("c", "eth2", 5)];
        let mut c = rc("c", "eth3", 5);
        c.mode = MacvtapMode::Vepa;
        let wanted = [
            rc("a", "eth0", 10),
            rc("b", "eth1", 20),
            c.clone(),
            rc("d", "eth4", 1),
        ];
        let p = plan(&running, &wanted);
        assert_eq!(p.added, vec![rc("d", "eth4", 1)]);
        assert!(p.removed.is_empty());
        assert_eq!(p.changed.len(), 2);
        assert_eq!(
            describe_change(&p.changed[0].0, &p.changed[0].1),
            "capacity 10 -> 20"
        );
        assert_eq!(
            describe_change(&p.changed[1].0, &p.changed[1].1),
            "mode bridge -> vepa, lowerDevice eth2 -> eth3"
        );
        let p = plan(&running, &[rc("b", "eth1", 10)]);
        assert_eq!(p.removed, vec!["a".to_string(), "c".to_string()]);
        assert!(p.added.is_empty() && p.changed.is_empty());
        assert!(plan(&running, &running).is_empty());
    }

    #[test]
    fn debounce_waits_for_quiet_but_not_forever() {
        let mut d = Debounce::default();
        assert_eq!(d.due(), None);
        let t0 = Instant::now();
        d.event(t0);
        assert_eq!(d.due(), Some(t0 + QUIET));
        d.event(t0 + QUIET / 2);
        assert_eq!(d.due(), Some(t0 + QUIET / 2 + QUIET));
        // Events without pause: read at MAX_WAIT after the first.
        d.event(t0 + MAX_WAIT - QUIET / 4);
        assert_eq!(d.due(), Some(t0 + MAX_WAIT));
        d.clear();
        assert_eq!(d.due(), None);
    }

    #[test]
    fn file_errors_name_the_file_key_and_place() {
        let dir = std::env::temp_dir().join(format!("macvtap-reload-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("DP_MACVTAP_CONF");
        let mut file = ConfigFile::new(path.clone(), None, None);
        file.pin_directory().expect("open the directory");
        let missing = file.load().expect_err("missing file");
        assert!(matches!(missing, ReloadError::Read { .. }), "{missing}");
        std::fs::write(&path, "[{\"name\": \"a\",\n \"lowerDevice\": }]").expect("write");
        let e = file.load().expect_err("broken").to_string();
        std::fs::write(&path, r#"[{"name":"a","lowerDevice":"eth0","capacity":3}]"#)
            .expect("write");
        let good = file.load();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            e.contains("(key DP_MACVTAP_CONF)") && e.contains("line 2, column"),
            "{e}"
        );
        let Ok(Config::Static(r)) = good else {
            panic!("good file refused: {good:?}")
        };
        assert_eq!(r[0].capacity, 3);
    }
}
