//! Talking to the kubelet: serve a resource's socket, register it, notice
//! kubelet restarts, ask which devices pods hold.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::allocate::Allocator;
use crate::authority::AuthorityTolerant;
use crate::proto::deviceplugin::device_plugin_server::DevicePluginServer;
use crate::proto::deviceplugin::registration_client::RegistrationClient;
use crate::proto::deviceplugin::RegisterRequest;
use crate::proto::podresources::pod_resources_lister_client::PodResourcesListerClient;
use crate::proto::podresources::ListPodResourcesRequest;
use crate::reload::LiveService;
use crate::resource::{Resource, RESOURCE_PREFIX};
use crate::service::{options, PluginService};

/// The kubelet's registration socket, in the device-plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// The device-plugin API version this daemon speaks.
pub const API_VERSION: &str = "v1beta1";

/// A gRPC channel over a unix socket.
pub async fn connect_unix(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by the API and ignored by the connector.
    Endpoint::from_static("http://[::]:0")
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// One resource's gRPC server on its socket.
#[derive(Debug)]
pub struct Served {
    path: PathBuf,
    task: JoinHandle<()>,
    service: LiveService,
}

impl Served {
    /// Bind the resource's socket (replacing a stale file) and serve it.
    pub fn start(
        dir: &Path,
        resource: Arc<Resource>,
        allocator: Arc<Allocator>,
    ) -> std::io::Result<Served> {
        let path = dir.join(resource.socket_name());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        // Only root (the kubelet) may talk to the plugin.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let live = LiveService::new(PluginService {
            resource,
            allocator,
        });
        let service = DevicePluginServer::new(live.clone());
        let shown = path.clone();
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(
                    UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityTolerant::new)),
                )
                .await;
            if let Err(e) = served {
                tracing::error!(
                    "serving {}: {}",
                    shown.display(),
                    macvtap_net::error_chain(&e)
                );
            }
        });
        Ok(Served {
            path,
            task,
            service: live,
        })
    }

    /// Serve `resource` (the same resource with new settings) from now on:
    /// same socket, same connections, same ListAndWatch streams.
    pub fn replace(&self, resource: Arc<Resource>) {
        self.service.replace(resource);
    }

    /// Stop serving and remove the socket. Open ListAndWatch streams would
    /// hold a graceful shutdown forever, so the server is aborted.
    pub fn stop(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Register a served resource with the kubelet.
pub async fn register(dir: &Path, resource: &Resource) -> Result<(), String> {
    let channel = connect_unix(&dir.join(KUBELET_SOCKET)).await.map_err(|e| {
        format!(
            "connect to {}: {}",
            dir.join(KUBELET_SOCKET).display(),
            macvtap_net::error_chain(&e)
        )
    })?;
    let request = RegisterRequest {
        version: API_VERSION.into(),
        endpoint: resource.socket_name(),
        resource_name: resource.resource_name(),
        options: Some(options()),
    };
    tokio::time::timeout(
        Duration::from_secs(5),
        RegistrationClient::new(channel).register(request),
    )
    .await
    .map_err(|_| "the kubelet did not answer Register within 5 s".to_string())?
    .map_err(|e| format!("Register refused: {}", e.message()))?;
    Ok(())
}

/// Something happened in the device-plugin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirEvent {
    /// `kubelet.sock` was created: the kubelet (re)started.
    KubeletStarted,
    /// A socket was deleted (the kubelet removes all of them on restart).
    Deleted(String),
}

/// Follow the directory with inotify on a thread of its own.
pub fn watch_dir(dir: &Path) -> nix::Result<mpsc::UnboundedReceiver<DirEvent>> {
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
    inotify.add_watch(
        dir,
        AddWatchFlags::IN_CREATE | AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_TO,
    )?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("plugin-dir".into())
        .spawn(move || loop {
            let events = match inotify.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("watching the device-plugin directory: {e}");
                    return;
                }
            };
            for event in events {
                let Some(name) = event.name.and_then(|n| n.into_string().ok()) else {
                    continue;
                };
                let message = if event
                    .mask
                    .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                {
                    if name != KUBELET_SOCKET {
                        continue;
                    }
                    DirEvent::KubeletStarted
                } else {
                    DirEvent::Deleted(name)
                };
                if tx.send(message).is_err() {
                    return;
                }
            }
        })
        .map_err(|_| nix::errno::Errno::EAGAIN)?;
    Ok(rx)
}

/// The device IDs of our resources that pods hold, from the kubelet's
/// PodResources API; None when it cannot be asked.
pub async fn devices_in_use(socket: &Path) -> Option<HashSet<String>> {
    device_holders(socket)
        .await
        .map(|holders| holders.into_keys().collect())
}

/// Which pod holds each device of our resources, from the kubelet's
/// PodResources API; None when it cannot be asked.
pub async fn device_holders(socket: &Path) -> Option<HashMap<String, macvtap_state::PodRef>> {
    if !socket.exists() {
        return None;
    }
    let ask = async {
        let channel = connect_unix(socket).await.ok()?;
        let response = PodResourcesListerClient::new(channel)
            .list(ListPodResourcesRequest {})
            .await
            .ok()?
            .into_inner();
        let prefix = format!("{RESOURCE_PREFIX}/");
        let mut holders = HashMap::new();
        for pod in response.pod_resources {
            let owner = macvtap_state::PodRef {
                namespace: pod.namespace,
                name: pod.name,
            };
            for device in pod.containers.into_iter().flat_map(|c| c.devices) {
                if device.resource_name.starts_with(&prefix) {
                    for id in device.device_ids {
                        holders.insert(id, owner.clone());
                    }
                }
            }
        }
        Some(holders)
    };
    tokio::time::timeout(Duration::from_secs(3), ask)
        .await
        .ok()
        .flatten()
}
