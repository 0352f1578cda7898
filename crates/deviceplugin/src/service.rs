//! The DevicePlugin gRPC service of one resource.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::allocate::Allocator;
use crate::proto::deviceplugin::device_plugin_server::DevicePlugin;
use crate::proto::deviceplugin::{
    AllocateRequest, AllocateResponse, ContainerPreferredAllocationResponse, DevicePluginOptions,
    Empty, ListAndWatchResponse, PreStartContainerRequest, PreStartContainerResponse,
    PreferredAllocationRequest, PreferredAllocationResponse,
};
use crate::resource::{Counters, Resource, HEALTHY};

/// Options the daemon registers with and answers.
pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// Serves one resource.
#[derive(Debug, Clone)]
pub struct PluginService {
    pub resource: Arc<Resource>,
    pub allocator: Arc<Allocator>,
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for PluginService {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        // The current list at once, then every change, until the resource
        // is retired (its link gone for good): then the stream ends.
        let lists = WatchStream::new(self.resource.devices()).map(Some);
        let retired = WatchStream::new(self.resource.retired())
            .filter(|retired| *retired)
            .map(|_| None);
        let stream = lists.merge(retired).map_while(|devices| {
            devices.map(|devices| {
                Ok(ListAndWatchResponse {
                    devices: devices.as_ref().clone(),
                })
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let devices = self.resource.devices().borrow().clone();
        let healthy: BTreeSet<&str> = devices
            .iter()
            .filter(|d| d.health == HEALTHY)
            .map(|d| d.id.as_str())
            .collect();
        let mut container_responses = Vec::new();
        for req in request.into_inner().container_requests {
            let size = usize::try_from(req.allocation_size).unwrap_or(0);
            // Must-include first, then healthy devices in index order: a
            // stable, predictable choice. Devices this plugin knows to be
            // unhealthy (lower device down, promised ifindex taken by another
            // link) are never preferred; if that leaves fewer than asked
            // for, the kubelet picks the rest itself.
            let mut chosen: Vec<String> = req.must_include_device_i_ds.clone();
            let mut available: Vec<&String> = req
                .available_device_i_ds
                .iter()
                .filter(|id| !chosen.contains(id) && healthy.contains(id.as_str()))
                .collect();
            available.sort_by_key(|id| (index_of(id).unwrap_or(u32::MAX), (*id).clone()));
            for id in available {
                if chosen.len() >= size {
                    break;
                }
                chosen.push(id.clone());
            }
            container_responses.push(ContainerPreferredAllocationResponse {
                device_i_ds: chosen,
            });
        }
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let started = std::time::Instant::now();
        let containers: Vec<Vec<String>> = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| c.devices_ids)
            .collect();
        let allocator = self.allocator.clone();
        let resource = self.resource.clone();
        let ids: Vec<String> = containers.iter().flatten().cloned().collect();
        // The blocking side answers through `reply`; when the kubelet gives
        // up (deadline, cancel, lost connection) tonic drops this future and
        // with it `answer`, which tells the blocking side to undo its work.
        let (reply, answer) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || allocator.allocate_for(&resource, &containers, reply));
        let result = answer.await.unwrap_or_else(|_| {
            Err(Status::internal(
                "the allocation task ended without an answer",
            ))
        });
        match result {
            Ok(response) => {
                Counters::add(&self.resource.counters.allocations);
                if let Some(binder) = &self.allocator.binder {
                    let _ = binder.send(ids);
                }
                tracing::info!(
                    resource = %self.resource.config.name,
                    took_us = started.elapsed().as_micros() as u64,
                    "allocated"
                );
                Ok(Response::new(response))
            }
            Err(status) => {
                Counters::add(&self.resource.counters.allocation_failures);
                tracing::warn!(resource = %self.resource.config.name, "allocate refused: {}", status.message());
                Err(status)
            }
        }
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

fn index_of(id: &str) -> Option<u32> {
    id.rsplit_once('-').and_then(|(_, i)| i.parse().ok())
}
