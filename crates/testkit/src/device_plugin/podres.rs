//! The kubelet's PodResources API (v1 `List`) stand-in: answers with the
//! device IDs the test says pods hold.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use macvtap_deviceplugin::proto::podresources::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use macvtap_deviceplugin::proto::podresources::{
    ContainerDevices, ContainerResources, ListPodResourcesRequest, ListPodResourcesResponse,
    PodResources as PodResourcesMsg,
};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use super::server::ServerThread;

/// `(resource_name, device IDs)` held by one pod's container.
pub type Held = Vec<(String, Vec<String>)>;

#[derive(Clone)]
struct Lister {
    held: Arc<Mutex<Held>>,
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl PodResourcesLister for Lister {
    async fn list(
        &self,
        _request: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let held = self.held.lock().expect("held devices").clone();
        // One pod per held resource, plus a pod without devices, as a real
        // node lists them.
        let mut pods: Vec<PodResourcesMsg> = held
            .into_iter()
            .enumerate()
            .map(|(n, (resource_name, device_ids))| PodResourcesMsg {
                name: format!("virt-launcher-vm{n}"),
                namespace: "default".into(),
                containers: vec![ContainerResources {
                    name: "compute".into(),
                    devices: vec![ContainerDevices {
                        resource_name,
                        device_ids,
                    }],
                }],
            })
            .collect();
        pods.push(PodResourcesMsg {
            name: "coredns".into(),
            namespace: "kube-system".into(),
            containers: vec![ContainerResources {
                name: "coredns".into(),
                devices: vec![],
            }],
        });
        Ok(Response::new(ListPodResourcesResponse {
            pod_resources: pods,
        }))
    }
}

#[derive(Debug)]
pub struct PodResources {
    server: ServerThread,
    held: Arc<Mutex<Held>>,
    calls: Arc<AtomicUsize>,
}

impl PodResources {
    /// Serves List on `path`, answering that pods hold `held`.
    pub fn start(path: &Path, held: &[(&str, &[&str])]) -> PodResources {
        let held = Arc::new(Mutex::new(to_held(held)));
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = Lister {
            held: Arc::clone(&held),
            calls: Arc::clone(&calls),
        };
        let server = ServerThread::start(path, Routes::new(PodResourcesListerServer::new(svc)));
        PodResources {
            server,
            held,
            calls,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.server.path().to_path_buf()
    }

    /// Changes what pods hold from now on.
    pub fn set_held(&self, held: &[(&str, &[&str])]) {
        *self.held.lock().expect("held devices") = to_held(held);
    }

    /// How many List calls were answered.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn to_held(held: &[(&str, &[&str])]) -> Held {
    held.iter()
        .map(|(r, ids)| (r.to_string(), ids.iter().map(|s| s.to_string()).collect()))
        .collect()
}
