//! The kubelet stand-in: the Registration service on `<dir>/kubelet.sock`,
//! a DevicePlugin client, a ListAndWatch reader and the restart simulation.

use std::fmt;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use macvtap_deviceplugin::proto::deviceplugin::device_plugin_client::DevicePluginClient;
use macvtap_deviceplugin::proto::deviceplugin::registration_server::{
    Registration, RegistrationServer,
};
use macvtap_deviceplugin::proto::deviceplugin::{
    Device, DevicePluginOptions, Empty, ListAndWatchResponse, RegisterRequest,
};
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::server::ServerThread;

/// The kubelet's socket name in the device-plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";

/// One RegisterRequest as the stand-in received it.
#[derive(Clone)]
pub struct Registered {
    pub request: RegisterRequest,
    /// When the request arrived.
    pub at: Instant,
    /// Which kubelet instance received it (0, then +1 per restart).
    pub generation: u32,
    /// The endpoint was a unix socket in the directory when the request
    /// arrived.
    pub socket_existed: bool,
    /// What the kubelet's own dial-back (done inside Register, as the real
    /// kubelet does) got from GetDevicePluginOptions on the endpoint.
    pub dial_back: Result<DevicePluginOptions, String>,
}

impl fmt::Debug for Registered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registered")
            .field("version", &self.request.version)
            .field("endpoint", &self.request.endpoint)
            .field("resource_name", &self.request.resource_name)
            .field("options", &self.request.options)
            .field("generation", &self.generation)
            .field("socket_existed", &self.socket_existed)
            .field("dial_back", &self.dial_back)
            .finish()
    }
}

#[derive(Clone)]
struct RegistrationService {
    dir: PathBuf,
    generation: u32,
    log: Arc<watch::Sender<Vec<Registered>>>,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let at = Instant::now();
        let request = request.into_inner();
        let socket = self.dir.join(&request.endpoint);
        let socket_existed = !request.endpoint.is_empty()
            && !request.endpoint.contains('/')
            && fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket());
        // The kubelet dials the plugin inside Register and fails the
        // registration when it cannot: a plugin must serve first.
        let dial_back = if socket_existed {
            match tokio::time::timeout(Duration::from_secs(1), options_of(&socket)).await {
                Ok(r) => r,
                Err(_) => Err("dial-back timed out after 1 s".to_string()),
            }
        } else {
            Err(format!("{} is not a socket", socket.display()))
        };
        let ok = dial_back.is_ok() && request.version == "v1beta1";
        let failure = format!("{dial_back:?}, version {:?}", request.version);
        self.log.send_modify(|v| {
            v.push(Registered {
                request,
                at,
                generation: self.generation,
                socket_existed,
                dial_back,
            })
        });
        if ok {
            Ok(Response::new(Empty {}))
        } else {
            Err(Status::invalid_argument(format!(
                "registration refused by the kubelet stand-in: {failure}"
            )))
        }
    }
}

async fn options_of(socket: &Path) -> Result<DevicePluginOptions, String> {
    let mut client = connect(socket).await.map_err(|e| format!("dial: {e}"))?;
    client
        .get_device_plugin_options(Empty {})
        .await
        .map(Response::into_inner)
        .map_err(|e| format!("GetDevicePluginOptions: {e}"))
}

/// The kubelet stand-in. Registrations from every generation are kept in
/// one log.
#[derive(Debug)]
pub struct Kubelet {
    dir: PathBuf,
    log: Arc<watch::Sender<Vec<Registered>>>,
    generation: u32,
    server: Option<ServerThread>,
    /// When the current generation's kubelet.sock started accepting.
    pub started_at: Instant,
}

impl Kubelet {
    /// Serves Registration on `<dir>/kubelet.sock`.
    pub fn start(dir: &Path) -> Kubelet {
        let (log, _) = watch::channel(Vec::new());
        let mut k = Kubelet {
            dir: dir.to_path_buf(),
            log: Arc::new(log),
            generation: 0,
            server: None,
            started_at: Instant::now(),
        };
        k.serve();
        k
    }

    fn serve(&mut self) {
        self.serve_listen_delayed(Duration::ZERO);
    }

    fn serve_listen_delayed(&mut self, delay: Duration) {
        let svc = RegistrationService {
            dir: self.dir.clone(),
            generation: self.generation,
            log: Arc::clone(&self.log),
        };
        let routes = Routes::new(RegistrationServer::new(svc));
        self.started_at = Instant::now();
        self.server = Some(ServerThread::start_listen_delayed(
            &self.socket(),
            routes,
            delay,
        ));
    }

    /// A restart whose new kubelet.sock exists `delay` before it accepts
    /// connections (bind, then listen later). `started_at` is the bind.
    pub fn restart_listen_delayed(&mut self, delay: Duration) {
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
        self.delete_sockets();
        self.generation += 1;
        self.serve_listen_delayed(delay);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join(KUBELET_SOCKET)
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Every registration so far, all generations.
    pub fn registrations(&self) -> Vec<Registered> {
        self.log.borrow().clone()
    }

    /// Registrations received by the current generation.
    pub fn current_registrations(&self) -> Vec<Registered> {
        self.registrations()
            .into_iter()
            .filter(|r| r.generation == self.generation)
            .collect()
    }

    /// Waits until the current generation has received at least `n`
    /// registrations; panics after `timeout` with what arrived.
    pub async fn wait_registrations(&self, n: usize, timeout: Duration) -> Vec<Registered> {
        let generation = self.generation;
        let mut rx = self.log.subscribe();
        let got = tokio::time::timeout(timeout, async {
            rx.wait_for(|v| v.iter().filter(|r| r.generation == generation).count() >= n)
                .await
                .map(|_| ())
        })
        .await;
        let current = self.current_registrations();
        match got {
            Ok(Ok(())) => current,
            _ => panic!(
                "expected {n} registration(s) within {timeout:?} (kubelet generation \
                 {generation}); got {}: {current:#?}",
                current.len()
            ),
        }
    }

    /// Simulates a kubelet restart: the old kubelet dies (its server and
    /// connections go away), the new one deletes every socket in the
    /// directory and serves `kubelet.sock` again. Returns when the new
    /// socket accepts connections.
    pub fn restart(&mut self) {
        self.restart_with_gap(Duration::ZERO);
    }

    /// Like [`Kubelet::restart`], with `gap` between deleting the sockets
    /// and serving the new kubelet.sock (a real kubelet cleans the
    /// directory early in its start-up and serves later).
    pub fn restart_with_gap(&mut self, gap: Duration) {
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
        self.delete_sockets();
        self.generation += 1;
        std::thread::sleep(gap);
        self.serve();
    }

    /// Deletes every socket in the directory (kubelet.sock included).
    pub fn delete_sockets(&self) {
        for socket in sockets_in(&self.dir) {
            fs::remove_file(&socket)
                .unwrap_or_else(|e| panic!("cannot delete {}: {e}", socket.display()));
        }
    }

    /// A kubelet that is not running yet: no server, no kubelet.sock.
    pub fn absent(dir: &Path) -> Kubelet {
        let (log, _) = watch::channel(Vec::new());
        Kubelet {
            dir: dir.to_path_buf(),
            log: Arc::new(log),
            generation: 0,
            server: None,
            started_at: Instant::now(),
        }
    }

    /// Starts serving kubelet.sock (after [`Kubelet::absent`] or
    /// [`Kubelet::stop`]) as a new generation.
    pub fn come_up(&mut self) {
        assert!(self.server.is_none(), "the kubelet is already serving");
        if self.socket().exists() {
            fs::remove_file(self.socket()).expect("remove the dead kubelet.sock");
        }
        self.generation += 1;
        self.serve();
    }

    /// Stops the kubelet without restarting it (kubelet.sock stays, dead).
    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
    }
}

/// Every unix socket directly in `dir`, sorted.
pub fn sockets_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// A DevicePlugin client over the unix socket at `path` (connects now).
pub async fn connect(path: &Path) -> Result<DevicePluginClient<Channel>, tonic::transport::Error> {
    Ok(DevicePluginClient::new(
        macvtap_deviceplugin::kubelet::connect_unix(path).await?,
    ))
}

/// Like [`connect`], panicking with the socket path on failure.
pub async fn client(path: &Path) -> DevicePluginClient<Channel> {
    connect(path)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e:?}", path.display()))
}

/// One ListAndWatch response as the reader received it.
#[derive(Debug, Clone)]
pub struct Update {
    pub at: Instant,
    pub devices: Vec<Device>,
}

#[derive(Debug, Default, Clone)]
struct WatchState {
    updates: Vec<Update>,
    ended: Option<String>,
}

/// A ListAndWatch stream read in the background, like the kubelet's.
#[derive(Debug)]
pub struct DeviceWatch {
    state: Arc<watch::Sender<WatchState>>,
    task: tokio::task::JoinHandle<()>,
    what: String,
}

impl DeviceWatch {
    /// Opens ListAndWatch on `client`; `what` names it in messages.
    pub async fn start(client: &mut DevicePluginClient<Channel>, what: &str) -> DeviceWatch {
        let mut stream = client
            .list_and_watch(Empty {})
            .await
            .unwrap_or_else(|e| panic!("ListAndWatch on {what} failed: {e}"))
            .into_inner();
        let (tx, _) = watch::channel(WatchState::default());
        let state = Arc::new(tx);
        let sink = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(ListAndWatchResponse { devices })) => {
                        let at = Instant::now();
                        sink.send_modify(|s| s.updates.push(Update { at, devices }));
                    }
                    Ok(None) => {
                        sink.send_modify(|s| s.ended = Some("stream ended".into()));
                        break;
                    }
                    Err(e) => {
                        sink.send_modify(|s| s.ended = Some(format!("stream failed: {e}")));
                        break;
                    }
                }
            }
        });
        DeviceWatch {
            state,
            task,
            what: what.to_string(),
        }
    }

    /// Every update so far.
    pub fn updates(&self) -> Vec<Update> {
        self.state.borrow().updates.clone()
    }

    /// Whether (and why) the stream has ended.
    pub fn ended(&self) -> Option<String> {
        self.state.borrow().ended.clone()
    }

    /// Waits until the latest update satisfies `pred`; returns that update.
    /// Panics after `timeout`, or when the stream ends first, showing the
    /// latest list.
    pub async fn wait_for(
        &self,
        desc: &str,
        timeout: Duration,
        pred: impl Fn(&[Device]) -> bool,
    ) -> Update {
        let mut rx = self.state.subscribe();
        let found = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| s.ended.is_some() || s.updates.last().is_some_and(|u| pred(&u.devices)))
                .await
                .map(|s| s.clone())
        })
        .await;
        let snapshot = self.state.borrow().clone();
        let latest = snapshot
            .updates
            .last()
            .map(|u| describe(&u.devices))
            .unwrap_or_else(|| "(no update yet)".into());
        match found {
            Ok(Ok(s)) => match s.updates.last() {
                Some(u) if pred(&u.devices) => u.clone(),
                _ => panic!(
                    "{}: {} before {desc}; latest list: {latest}",
                    self.what,
                    s.ended.unwrap_or_default()
                ),
            },
            _ => panic!(
                "{}: not {desc} within {timeout:?}; {} update(s), latest: {latest}",
                self.what,
                snapshot.updates.len()
            ),
        }
    }

    /// The first update (the full list), waiting up to `timeout`.
    pub async fn first(&self, timeout: Duration) -> Update {
        self.wait_for("any list sent", timeout, |_| true).await;
        self.updates()[0].clone()
    }
}

impl Drop for DeviceWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `id:health` of every device, for messages.
pub fn describe(devices: &[Device]) -> String {
    let parts: Vec<String> = devices
        .iter()
        .map(|d| format!("{}:{}", d.id, d.health))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// The device IDs, sorted.
pub fn ids(devices: &[Device]) -> Vec<String> {
    let mut v: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    v.sort();
    v
}

/// Every device has `health` (and there is at least one).
pub fn all(devices: &[Device], health: &str) -> bool {
    !devices.is_empty() && devices.iter().all(|d| d.health == health)
}

pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";
