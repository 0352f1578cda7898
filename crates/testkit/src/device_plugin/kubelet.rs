//! The kubelet stand-in: the Registration service on `<dir>/kubelet.sock`,
//! a DevicePlugin client, a ListAndWatch reader and the restart simulation.

use std::fmt;
use std::fs;
use std::io;
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
    /// Why the stand-in refused the registration (its
    /// [`RegistrationPolicy`]); `None` when it accepted it.
    pub refused: Option<String>,
}

/// The API version the stand-in speaks.
pub const API_VERSION: &str = "v1beta1";

/// What the stand-in checks before it accepts a registration. Always: the
/// version, an endpoint that is a file name in its directory and a unix
/// socket there, and a dial-back (GetDevicePluginOptions) that answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationPolicy {
    /// Refuse a name that is not an extended resource name
    /// (`<domain>/<name>`, the domain outside kubernetes.io), as the
    /// kubelet does. Off only for tests that register odd names on purpose.
    pub extended_resource_name: bool,
    /// How long the dial-back may take.
    pub dial_back_timeout: Duration,
}

impl RegistrationPolicy {
    /// The tests': a plugin that does not answer within a second fails.
    pub const TESTS: RegistrationPolicy = RegistrationPolicy {
        extended_resource_name: true,
        dial_back_timeout: Duration::from_secs(1),
    };
    /// The lab's: its device plugin runs on a busy machine, not under a
    /// contract's clock.
    pub const LAB: RegistrationPolicy = RegistrationPolicy {
        extended_resource_name: true,
        dial_back_timeout: Duration::from_secs(5),
    };

    /// Why `request` is refused, the first reason in the kubelet's order;
    /// `None` when it is accepted.
    fn refusal(
        &self,
        request: &RegisterRequest,
        dir: &Path,
        dial_back: &Result<DevicePluginOptions, String>,
    ) -> Option<String> {
        if request.version != API_VERSION {
            return Some(format!(
                "version {:?}, only {API_VERSION} is spoken",
                request.version
            ));
        }
        if self.extended_resource_name && !is_extended_resource_name(&request.resource_name) {
            return Some(format!(
                "{:?} is not an extended resource name",
                request.resource_name
            ));
        }
        if !is_file_name(&request.endpoint) {
            return Some(format!(
                "endpoint {:?} is not a file name in {}",
                request.endpoint,
                dir.display()
            ));
        }
        dial_back.as_ref().err().cloned()
    }
}

/// `<domain>/<name>`, both non-empty, the domain outside kubernetes.io.
fn is_extended_resource_name(name: &str) -> bool {
    name.split_once('/').is_some_and(|(domain, name)| {
        !domain.is_empty() && !name.is_empty() && !domain.starts_with("kubernetes.io")
    })
}

fn is_file_name(endpoint: &str) -> bool {
    !endpoint.is_empty() && !endpoint.contains('/')
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
            .field("refused", &self.refused)
            .finish()
    }
}

#[derive(Clone)]
struct RegistrationService {
    dir: PathBuf,
    policy: RegistrationPolicy,
    generation: u32,
    log: Arc<watch::Sender<Vec<Registered>>>,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let at = Instant::now();
        let request = request.into_inner();
        let socket = self.dir.join(&request.endpoint);
        let socket_existed = is_file_name(&request.endpoint)
            && fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket());
        // The kubelet dials the plugin inside Register and fails the
        // registration when it cannot: a plugin must serve first.
        let timeout = self.policy.dial_back_timeout;
        let dial_back = if socket_existed {
            match tokio::time::timeout(timeout, options_of(&socket)).await {
                Ok(r) => r,
                Err(_) => Err(format!("dial-back timed out after {timeout:?}")),
            }
        } else {
            Err(format!("{} is not a socket", socket.display()))
        };
        let refused = self.policy.refusal(&request, &self.dir, &dial_back);
        self.log.send_modify(|v| {
            v.push(Registered {
                request,
                at,
                generation: self.generation,
                socket_existed,
                dial_back,
                refused: refused.clone(),
            })
        });
        match refused {
            None => Ok(Response::new(Empty {})),
            Some(why) => Err(Status::invalid_argument(format!(
                "registration refused by the kubelet stand-in: {why}"
            ))),
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
    policy: RegistrationPolicy,
    log: Arc<watch::Sender<Vec<Registered>>>,
    generation: u32,
    server: Option<ServerThread>,
    /// When the current generation's kubelet.sock started accepting.
    pub started_at: Instant,
}

impl Kubelet {
    /// Serves Registration on `<dir>/kubelet.sock` with the tests' policy.
    pub fn start(dir: &Path) -> Kubelet {
        Self::try_start(dir, RegistrationPolicy::TESTS).unwrap_or_else(|e| {
            panic!(
                "cannot serve the kubelet stand-in in {}: {e}",
                dir.display()
            )
        })
    }

    /// Serves Registration on `<dir>/kubelet.sock` with `policy` (the
    /// socket accepts connections when this returns).
    pub fn try_start(dir: &Path, policy: RegistrationPolicy) -> io::Result<Kubelet> {
        let mut k = Kubelet::not_serving(dir, policy);
        k.server = Some(ServerThread::try_start(&k.socket(), k.routes())?);
        Ok(k)
    }

    fn not_serving(dir: &Path, policy: RegistrationPolicy) -> Kubelet {
        let (log, _) = watch::channel(Vec::new());
        Kubelet {
            dir: dir.to_path_buf(),
            policy,
            log: Arc::new(log),
            generation: 0,
            server: None,
            started_at: Instant::now(),
        }
    }

    /// The Registration service of the current generation; `started_at`
    /// is now.
    fn routes(&mut self) -> Routes {
        let svc = RegistrationService {
            dir: self.dir.clone(),
            policy: self.policy,
            generation: self.generation,
            log: Arc::clone(&self.log),
        };
        self.started_at = Instant::now();
        Routes::new(RegistrationServer::new(svc))
    }

    fn serve(&mut self) {
        self.serve_listen_delayed(Duration::ZERO);
    }

    fn serve_listen_delayed(&mut self, delay: Duration) {
        let routes = self.routes();
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

    /// The registration number `index` (counting every generation),
    /// waiting for it as long as it takes.
    pub async fn registration(&self, index: usize) -> Registered {
        let mut rx = self.log.subscribe();
        let found = rx
            .wait_for(|v| v.len() > index)
            .await
            .map(|v| v[index].clone());
        match found {
            Ok(r) => r,
            // The sender lives in `self`: it cannot be gone while we wait.
            Err(_) => std::future::pending().await,
        }
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
        Kubelet::not_serving(dir, RegistrationPolicy::TESTS)
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
        Self::try_start(client, what)
            .await
            .unwrap_or_else(|e| panic!("ListAndWatch on {what} failed: {e}"))
    }

    /// [`DeviceWatch::start`] for callers that must not panic (the lab).
    pub async fn try_start(
        client: &mut DevicePluginClient<Channel>,
        what: &str,
    ) -> Result<DeviceWatch, Status> {
        let mut stream = client.list_and_watch(Empty {}).await?.into_inner();
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
        Ok(DeviceWatch {
            state,
            task,
            what: what.to_string(),
        })
    }

    /// Update number `index`, waiting for it; `Err` (why) when the stream
    /// ends first.
    pub async fn update(&self, index: usize) -> Result<Update, String> {
        let mut rx = self.state.subscribe();
        let state = rx
            .wait_for(|s| s.updates.len() > index || s.ended.is_some())
            .await
            .map_err(|_| format!("{}: the reader is gone", self.what))?;
        match state.updates.get(index) {
            Some(u) => Ok(u.clone()),
            None => Err(state.ended.clone().unwrap_or_default()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: &str, resource_name: &str, endpoint: &str) -> RegisterRequest {
        RegisterRequest {
            version: version.into(),
            endpoint: endpoint.into(),
            resource_name: resource_name.into(),
            options: None,
        }
    }

    fn refusal(policy: RegistrationPolicy, r: &RegisterRequest) -> Option<String> {
        let answered = Ok(DevicePluginOptions::default());
        policy.refusal(r, Path::new("/dp"), &answered)
    }

    #[test]
    fn the_policy_refuses_as_the_kubelet_does_first_reason_first() {
        let good = request(API_VERSION, "example.com/net", "example.com_net");
        for policy in [RegistrationPolicy::TESTS, RegistrationPolicy::LAB] {
            assert_eq!(refusal(policy, &good), None);
            for (bad, why) in [
                (request("v1alpha", "no-slash", "a/b"), "version"),
                (request(API_VERSION, "no-slash", "x"), "extended"),
                (request(API_VERSION, "/net", "x"), "extended"),
                (request(API_VERSION, "kubernetes.io/net", "x"), "extended"),
                (request(API_VERSION, "example.com/net", "a/b"), "file name"),
                (request(API_VERSION, "example.com/net", ""), "file name"),
            ] {
                let got = refusal(policy, &bad).unwrap_or_default();
                assert!(got.contains(why), "{bad:?}: {got:?}, wanted {why:?}");
            }
        }
        let failed_dial = Err("dial: refused".to_string());
        let refused = RegistrationPolicy::LAB.refusal(&good, Path::new("/dp"), &failed_dial);
        assert_eq!(refused.as_deref(), Some("dial: refused"));
    }

    #[test]
    fn odd_names_pass_when_the_test_asks_for_it() {
        let odd = RegistrationPolicy {
            extended_resource_name: false,
            ..RegistrationPolicy::TESTS
        };
        assert_eq!(refusal(odd, &request(API_VERSION, "odd", "odd.sock")), None);
    }
}
