//! The gRPC ConfigService (`shared/proto/.../config.proto`): `GetSnapshot` and the streaming
//! `WatchSnapshot`, both served from the publisher's `watch` of the latest snapshot, which
//! follows this replica's commits and the NATS head (other replicas).

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use switchboard_shared::cluster::MAX_SNAPSHOT_BYTES;
use switchboard_shared::proto::config_service_server::{ConfigService, ConfigServiceServer};
use switchboard_shared::proto::{
    GetSnapshotRequest, GetSnapshotResponse, SnapshotEnvelope, WatchSnapshotRequest,
};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

use crate::publish::Built;

pub struct ConfigGrpc {
    latest: watch::Receiver<Option<Arc<Built>>>,
}

impl ConfigGrpc {
    /// The service, allowing messages up to `MAX_SNAPSHOT_BYTES` both ways.
    pub fn server(latest: watch::Receiver<Option<Arc<Built>>>) -> ConfigServiceServer<Self> {
        ConfigServiceServer::new(Self { latest })
            .max_decoding_message_size(MAX_SNAPSHOT_BYTES)
            .max_encoding_message_size(MAX_SNAPSHOT_BYTES)
    }
}

fn envelope(built: &Built) -> SnapshotEnvelope {
    SnapshotEnvelope {
        revision: built.revision,
        content_hash: built.content_hash.clone(),
        snapshot_json: built.json.to_vec(),
    }
}

type Envelopes = Pin<Box<dyn Stream<Item = Result<SnapshotEnvelope, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigService for ConfigGrpc {
    async fn get_snapshot(
        &self,
        request: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        let newer_than = request.into_inner().newer_than;
        let latest = self.latest.borrow().clone();
        match latest {
            None => Err(Status::unavailable("no snapshot has been built yet")),
            Some(built) => Ok(Response::new(GetSnapshotResponse {
                snapshot: (built.revision > newer_than).then(|| envelope(&built)),
            })),
        }
    }

    type WatchSnapshotStream = Envelopes;

    async fn watch_snapshot(
        &self,
        request: Request<WatchSnapshotRequest>,
    ) -> Result<Response<Self::WatchSnapshotStream>, Status> {
        let request = request.into_inner();
        tracing::debug!(dataplane = %request.dataplane_id, newer_than = request.newer_than, "snapshot watch");
        let mut sent = request.newer_than;
        // The watch only ever moves forward; `sent` also drops repeats of one revision.
        let stream = WatchStream::new(self.latest.clone()).filter_map(move |latest| {
            let item = match latest {
                Some(built) if built.revision > sent => {
                    sent = built.revision;
                    Some(Ok(envelope(&built)))
                }
                _ => None,
            };
            std::future::ready(item)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
