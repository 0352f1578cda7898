//! The macvtap device plugin: kubelet API, resources, health, allocation.
//! The binary `macvtap-deviceplugin` parses its flags and calls [`daemon::run`].

pub mod allocate;
pub mod authority;
pub mod cdi;
pub mod config;
pub mod daemon;
pub mod glog;
pub mod grants;
pub mod hostns;
pub mod kubelet;
pub mod links;
pub mod metrics;
pub mod reload;
pub mod resource;
pub mod service;
pub mod sweep;

/// Generated kubelet APIs.
pub mod proto {
    /// Device plugin API v1beta1 (Registration, DevicePlugin).
    #[allow(missing_docs, clippy::all)]
    pub mod deviceplugin {
        tonic::include_proto!("v1beta1");
    }
    /// PodResources API v1 (PodResourcesLister).
    #[allow(missing_docs, clippy::all)]
    pub mod podresources {
        tonic::include_proto!("v1");
    }
}
