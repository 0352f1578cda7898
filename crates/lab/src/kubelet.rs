//! The lab's kubelet stand-in: the device-plugin API v1beta1 as the kubelet
//! speaks it, minimal. It serves Registration on `<dir>/kubelet.sock`;
//! inside Register it dials the plugin's endpoint and asks for its options
//! (the kubelet refuses a plugin it cannot reach); then it runs
//! ListAndWatch until the devices are Healthy, asks for a preferred
//! allocation of one device (the plugin offers it) and Allocates it, as
//! the kubelet does when a pod that requests the resource is admitted.
//!
//! The gRPC work runs on one current-thread tokio runtime on a thread of
//! its own (it never enters a namespace: unix sockets are found by path).
//! The lab's own thread stays synchronous and reads [`Event`]s.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use macvtap_deviceplugin::proto::deviceplugin::device_plugin_client::DevicePluginClient;
use macvtap_deviceplugin::proto::deviceplugin::registration_server::{
    Registration, RegistrationServer,
};
use macvtap_deviceplugin::proto::deviceplugin::{
    AllocateRequest, ContainerAllocateRequest, ContainerAllocateResponse,
    ContainerPreferredAllocationRequest, Device, DevicePluginOptions, Empty,
    PreferredAllocationRequest, RegisterRequest,
};
use tokio::sync::{mpsc as tmpsc, oneshot};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

/// The kubelet's socket in the device-plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// The API version the stand-in accepts.
pub const API_VERSION: &str = "v1beta1";
/// How long one call to the plugin may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the stand-in saw, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// A RegisterRequest arrived and was accepted (the dial-back worked).
    Registered {
        request: RegisterRequest,
        at: Instant,
        options: DevicePluginOptions,
    },
    /// A RegisterRequest was refused, and why.
    Refused {
        request: RegisterRequest,
        why: String,
    },
    /// One ListAndWatch list.
    Devices { at: Instant, devices: Vec<Device> },
    /// GetPreferredAllocation (when offered) and Allocate of one device.
    Allocated(Allocation),
    /// The stand-in cannot go on.
    Failed(String),
}

/// One device allocated to one container, as the kubelet got it.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub device_id: String,
    /// The plugin's preferred choice, when it offers one.
    pub preferred: Option<Vec<String>>,
    pub preferred_took: Option<Duration>,
    pub response: ContainerAllocateResponse,
    /// The Allocate call, round trip.
    pub took: Duration,
}

/// The running stand-in; stopped (its connections closed as when the
/// kubelet dies) on [`KubeletStandIn::stop`] or drop.
#[derive(Debug)]
pub struct KubeletStandIn {
    dir: PathBuf,
    events: mpsc::Receiver<Event>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl KubeletStandIn {
    /// Create `dir` and serve Registration on `dir/kubelet.sock` (the
    /// socket accepts connections when this returns).
    pub fn start(dir: &Path) -> io::Result<KubeletStandIn> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join(KUBELET_SOCKET);
        let listener = StdUnixListener::bind(&socket)?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (events_tx, events) = mpsc::channel();
        let (stop, stopped) = oneshot::channel();
        let plugin_dir = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("kubelet-stand-in".into())
            .spawn(move || {
                runtime.block_on(serve(listener, plugin_dir, events_tx, stopped));
                // Dropping the runtime cancels every connection task: the
                // plugin sees them reset, as when the kubelet dies.
                drop(runtime);
            })?;
        Ok(KubeletStandIn {
            dir: dir.to_path_buf(),
            events,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The next event, waiting up to `timeout`; `Err` once the stand-in
    /// has stopped.
    pub fn next_event(&self, timeout: Duration) -> Result<Option<Event>, String> {
        match self.events.recv_timeout(timeout) {
            Ok(e) => Ok(Some(e)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("the kubelet stand-in stopped".to_string())
            }
        }
    }

    /// Every event not read yet (without waiting).
    pub fn drain(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }

    /// Stop serving and close every connection; kubelet.sock is removed.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(self.dir.join(KUBELET_SOCKET));
    }
}

impl Drop for KubeletStandIn {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A registration the service accepted, handed to the driver.
struct Accepted {
    resource_name: String,
    client: DevicePluginClient<Channel>,
    options: DevicePluginOptions,
}

#[derive(Clone)]
struct RegistrationService {
    dir: PathBuf,
    events: mpsc::Sender<Event>,
    accepted: tmpsc::UnboundedSender<Accepted>,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let at = Instant::now();
        let request = request.into_inner();
        match self.check(&request).await {
            Ok((client, options)) => {
                let _ = self.events.send(Event::Registered {
                    request: request.clone(),
                    at,
                    options,
                });
                let _ = self.accepted.send(Accepted {
                    resource_name: request.resource_name,
                    client,
                    options,
                });
                Ok(Response::new(Empty {}))
            }
            Err(why) => {
                let _ = self.events.send(Event::Refused {
                    request,
                    why: why.clone(),
                });
                Err(Status::invalid_argument(format!(
                    "registration refused by the lab's kubelet stand-in: {why}"
                )))
            }
        }
    }
}

impl RegistrationService {
    /// What the kubelet checks before it accepts a plugin: the version, an
    /// extended resource name, an endpoint that is a socket in its
    /// directory, and that the plugin answers there.
    async fn check(
        &self,
        request: &RegisterRequest,
    ) -> Result<(DevicePluginClient<Channel>, DevicePluginOptions), String> {
        if request.version != API_VERSION {
            return Err(format!(
                "version {:?}, only {API_VERSION} is spoken",
                request.version
            ));
        }
        let (domain, name) = request.resource_name.split_once('/').ok_or_else(|| {
            format!(
                "{:?} is not an extended resource name",
                request.resource_name
            )
        })?;
        if domain.is_empty() || name.is_empty() || domain.starts_with("kubernetes.io") {
            return Err(format!(
                "{:?} is not an extended resource name",
                request.resource_name
            ));
        }
        if request.endpoint.is_empty() || request.endpoint.contains('/') {
            return Err(format!(
                "endpoint {:?} is not a file name in {}",
                request.endpoint,
                self.dir.display()
            ));
        }
        let socket = self.dir.join(&request.endpoint);
        let is_socket = std::fs::symlink_metadata(&socket)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false);
        if !is_socket {
            return Err(format!("{} is not a unix socket", socket.display()));
        }
        let dial = async {
            let mut client = connect(&socket)
                .await
                .map_err(|e| format!("cannot dial {}: {e}", socket.display()))?;
            let options = client
                .get_device_plugin_options(Empty {})
                .await
                .map_err(|e| format!("GetDevicePluginOptions: {}", e.message()))?
                .into_inner();
            Ok::<_, String>((client, options))
        };
        tokio::time::timeout(CALL_TIMEOUT, dial)
            .await
            .map_err(|_| {
                format!(
                    "{} did not answer within {CALL_TIMEOUT:?}",
                    socket.display()
                )
            })?
    }
}

/// A DevicePlugin client over the unix socket at `path`.
async fn connect(path: &Path) -> Result<DevicePluginClient<Channel>, tonic::transport::Error> {
    Ok(DevicePluginClient::new(
        macvtap_deviceplugin::kubelet::connect_unix(path).await?,
    ))
}

/// The stand-in's whole life: serve Registration, drive the first plugin
/// that registers, until told to stop.
async fn serve(
    listener: StdUnixListener,
    dir: PathBuf,
    events: mpsc::Sender<Event>,
    stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = events.send(Event::Failed(format!("kubelet.sock: {e}")));
            return;
        }
    };
    let (accepted_tx, mut accepted) = tmpsc::unbounded_channel();
    let service = RegistrationService {
        dir,
        events: events.clone(),
        accepted: accepted_tx,
    };
    let server = Server::builder()
        .add_service(RegistrationServer::new(service))
        .serve_with_incoming(UnixListenerStream::new(listener));
    let driver = async {
        if let Some(first) = accepted.recv().await {
            if let Err(e) = drive(first, &events).await {
                let _ = events.send(Event::Failed(e));
            }
        }
        // Later registrations are accepted and not driven; keep serving.
        std::future::pending::<()>().await
    };
    tokio::select! {
        served = server => {
            if let Err(e) = served {
                let _ = events.send(Event::Failed(format!("serving kubelet.sock: {e}")));
            }
        }
        _ = driver => {}
        _ = stopped => {}
    }
}

/// ListAndWatch until every device is Healthy, allocate one, then keep
/// reading the list (the kubelet never stops watching).
async fn drive(plugin: Accepted, events: &mpsc::Sender<Event>) -> Result<(), String> {
    let Accepted {
        resource_name,
        mut client,
        options,
    } = plugin;
    let mut stream = tokio::time::timeout(CALL_TIMEOUT, client.list_and_watch(Empty {}))
        .await
        .map_err(|_| format!("ListAndWatch on {resource_name}: no answer"))?
        .map_err(|e| format!("ListAndWatch on {resource_name}: {}", e.message()))?
        .into_inner();
    let healthy = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .map_err(|_| format!("{resource_name}: no healthy device list within 10 s"))?
            .map_err(|e| format!("ListAndWatch on {resource_name}: {}", e.message()))?
            .ok_or_else(|| format!("ListAndWatch on {resource_name} ended"))?;
        let at = Instant::now();
        let devices = message.devices;
        let _ = events.send(Event::Devices {
            at,
            devices: devices.clone(),
        });
        if !devices.is_empty() && devices.iter().all(|d| d.health == "Healthy") {
            break devices;
        }
    };
    let available: Vec<String> = healthy.iter().map(|d| d.id.clone()).collect();

    let (preferred, preferred_took) = if options.get_preferred_allocation_available {
        let started = Instant::now();
        let response = tokio::time::timeout(
            CALL_TIMEOUT,
            client.get_preferred_allocation(PreferredAllocationRequest {
                container_requests: vec![ContainerPreferredAllocationRequest {
                    available_device_i_ds: available.clone(),
                    must_include_device_i_ds: vec![],
                    allocation_size: 1,
                }],
            }),
        )
        .await
        .map_err(|_| "GetPreferredAllocation: no answer".to_string())?
        .map_err(|e| format!("GetPreferredAllocation: {}", e.message()))?
        .into_inner();
        let ids = response
            .container_responses
            .into_iter()
            .next()
            .map(|c| c.device_i_ds)
            .unwrap_or_default();
        (Some(ids), Some(started.elapsed()))
    } else {
        (None, None)
    };
    // The kubelet takes the plugin's preference when it is a valid one.
    let device_id = preferred
        .as_ref()
        .and_then(|p| p.first())
        .filter(|id| available.contains(id))
        .or_else(|| available.first())
        .cloned()
        .ok_or_else(|| format!("{resource_name} offers no device"))?;

    let started = Instant::now();
    let response = tokio::time::timeout(
        CALL_TIMEOUT,
        client.allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec![device_id.clone()],
            }],
        }),
    )
    .await
    .map_err(|_| format!("Allocate({device_id}): no answer"))?
    .map_err(|e| format!("Allocate({device_id}): {}", e.message()))?
    .into_inner();
    let took = started.elapsed();
    let mut containers = response.container_responses;
    if containers.len() != 1 {
        return Err(format!(
            "Allocate({device_id}): {} container responses for 1 container",
            containers.len()
        ));
    }
    let _ = events.send(Event::Allocated(Allocation {
        device_id,
        preferred,
        preferred_took,
        response: containers.remove(0),
        took,
    }));

    loop {
        match stream.message().await {
            Ok(Some(message)) => {
                let _ = events.send(Event::Devices {
                    at: Instant::now(),
                    devices: message.devices,
                });
            }
            Ok(None) => return Ok(()),
            Err(_) => return Ok(()), // the plugin stopped: the lab's cleanup
        }
    }
}
