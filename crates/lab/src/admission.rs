//! The kubelet's side of admitting the lab's pod, on the harness's kubelet
//! stand-in (the one the device plugin's tests use, with the kubelet's
//! registration rules): wait for the plugin to register, ListAndWatch
//! until its devices are Healthy, ask for a preferred allocation of one
//! device (when offered) and Allocate it.
//!
//! The gRPC work runs on a runtime whose one worker thread never enters a
//! namespace (unix sockets are found by path); the lab's own thread stays
//! synchronous and waits in short slices, so it can watch the daemon and
//! the signals meanwhile.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use macvtap_deviceplugin::proto::deviceplugin::ContainerAllocateResponse;
use macvtap_testkit::device_plugin::{
    connect, ContainerAllocateRequest, ContainerPreferredAllocationRequest, DevicePluginClient,
    DeviceWatch, Kubelet, Registered, RegistrationPolicy, Update, KUBELET_SOCKET,
};
use macvtap_testkit::device_plugin::{AllocateRequest, PreferredAllocationRequest};
use tokio::runtime::Runtime;
use tonic::transport::Channel;
use tonic::{Response, Status};

/// How long one call to the plugin may take. (Timers are made inside
/// `block_on`: outside a runtime's context there is no timer to make them.)
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The kubelet stand-in serving Registration, and the client and the
/// ListAndWatch reader of the plugin that registered. Field order is drop
/// order: the reader and the client before the stand-in and the runtime.
pub struct KubeletSide {
    dir: PathBuf,
    watch: Option<DeviceWatch>,
    client: Option<DevicePluginClient<Channel>>,
    kubelet: Option<Kubelet>,
    runtime: Runtime,
}

impl KubeletSide {
    /// Create `dir` and serve Registration on `dir/kubelet.sock` (the
    /// socket accepts connections when this returns).
    pub fn start(dir: &Path) -> io::Result<KubeletSide> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kubelet-stand-in")
            .enable_all()
            .build()?;
        std::fs::create_dir_all(dir)?;
        let kubelet = Kubelet::try_start(dir, RegistrationPolicy::LAB)?;
        Ok(KubeletSide {
            dir: dir.to_path_buf(),
            watch: None,
            client: None,
            kubelet: Some(kubelet),
            runtime,
        })
    }

    /// The device-plugin directory it serves.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn kubelet(&self) -> Result<&Kubelet, String> {
        self.kubelet
            .as_ref()
            .ok_or_else(|| "the kubelet stand-in stopped".to_string())
    }

    /// The first registration, waiting up to `wait`.
    pub fn registration(&self, wait: Duration) -> Result<Option<Registered>, String> {
        let kubelet = self.kubelet()?;
        Ok(self
            .runtime
            .block_on(async { tokio::time::timeout(wait, kubelet.registration(0)).await })
            .ok())
    }

    /// Dial the registered endpoint and open ListAndWatch on it, as the
    /// kubelet does once it accepted a plugin.
    pub fn list_and_watch(&mut self, registered: &Registered) -> Result<(), String> {
        let socket = self.dir.join(&registered.request.endpoint);
        let what = registered.request.resource_name.clone();
        let (client, watch) = self.runtime.block_on(async {
            let opened = async {
                let mut client = connect(&socket).await.map_err(|e| {
                    format!(
                        "cannot dial {}: {}",
                        socket.display(),
                        macvtap_net::error_chain(&e)
                    )
                })?;
                let watch = DeviceWatch::try_start(&mut client, &what)
                    .await
                    .map_err(|e| format!("ListAndWatch on {what}: {}", e.message()))?;
                Ok::<_, String>((client, watch))
            };
            tokio::time::timeout(CALL_TIMEOUT, opened)
                .await
                .map_err(|_| format!("ListAndWatch on {what}: no answer"))?
        })?;
        self.client = Some(client);
        self.watch = Some(watch);
        Ok(())
    }

    /// ListAndWatch list number `index`, waiting up to `wait`; `Err` when
    /// the stream ended.
    pub fn list(&self, index: usize, wait: Duration) -> Result<Option<Update>, String> {
        let watch = self
            .watch
            .as_ref()
            .ok_or_else(|| "ListAndWatch is not open".to_string())?;
        self.runtime
            .block_on(async { tokio::time::timeout(wait, watch.update(index)).await })
            .ok()
            .transpose()
            .map_err(|why| format!("ListAndWatch: {why}"))
    }

    /// Every ListAndWatch list received so far.
    pub fn lists_received(&self) -> usize {
        self.watch.as_ref().map_or(0, |w| w.updates().len())
    }

    /// GetPreferredAllocation of one device among `available`; the
    /// plugin's choice and the call's round trip.
    pub fn preferred_allocation(
        &self,
        available: &[String],
    ) -> Result<(Vec<String>, Duration), String> {
        let request = PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_i_ds: available.to_vec(),
                must_include_device_i_ds: vec![],
                allocation_size: 1,
            }],
        };
        let (response, took) = self.call("GetPreferredAllocation", |mut client| async move {
            client.get_preferred_allocation(request).await
        })?;
        let ids = response
            .container_responses
            .into_iter()
            .next()
            .map(|c| c.device_i_ds)
            .unwrap_or_default();
        Ok((ids, took))
    }

    /// Allocate `device_id` to one container; its response and the call's
    /// round trip.
    pub fn allocate(
        &self,
        device_id: &str,
    ) -> Result<(ContainerAllocateResponse, Duration), String> {
        let request = AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec![device_id.to_string()],
            }],
        };
        let what = format!("Allocate({device_id})");
        let (response, took) =
            self.call(
                &what,
                |mut client| async move { client.allocate(request).await },
            )?;
        let mut containers = response.container_responses;
        if containers.len() != 1 {
            return Err(format!(
                "Allocate({device_id}): {} container responses for 1 container",
                containers.len()
            ));
        }
        Ok((containers.remove(0), took))
    }

    /// One call to the registered plugin, `what` naming it in errors; the
    /// answer and the call's round trip.
    fn call<T, F>(
        &self,
        what: &str,
        call: impl FnOnce(DevicePluginClient<Channel>) -> F,
    ) -> Result<(T, Duration), String>
    where
        F: Future<Output = Result<Response<T>, Status>>,
    {
        // A clone shares the connection.
        let client = self
            .client
            .clone()
            .ok_or_else(|| "no plugin registered".to_string())?;
        let started = Instant::now();
        let answer = self
            .runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, call(client)).await })
            .map_err(|_| format!("{what}: no answer"))?
            .map_err(|e| format!("{what}: {}", e.message()))?;
        Ok((answer.into_inner(), started.elapsed()))
    }

    /// Stop serving and close every connection, as when the kubelet dies;
    /// kubelet.sock is removed.
    pub fn stop(&mut self) {
        let _inside = self.runtime.enter();
        self.watch = None;
        self.client = None;
        if let Some(mut kubelet) = self.kubelet.take() {
            kubelet.stop();
            let _ = std::fs::remove_file(self.dir.join(KUBELET_SOCKET));
        }
    }
}

impl Drop for KubeletSide {
    fn drop(&mut self) {
        self.stop();
    }
}
