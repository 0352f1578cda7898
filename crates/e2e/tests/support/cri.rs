//! A small CRI client (RuntimeService, runtime.v1) over containerd's unix
//! socket, compiled from proto/cri.proto by build.rs.

use std::path::Path;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// The generated CRI messages and client.
#[allow(clippy::all, missing_docs, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

pub use v1::runtime_service_client::RuntimeServiceClient;

pub type Cri = RuntimeServiceClient<Channel>;

/// Connects to the CRI socket at `path`.
pub async fn connect(path: &Path) -> Result<Cri, tonic::transport::Error> {
    Ok(RuntimeServiceClient::new(
        macvtap_deviceplugin::kubelet::connect_unix(path).await?,
    ))
}
