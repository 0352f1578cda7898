//! The macvtap device plugin: kubelet API, resources, health, allocation.

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
