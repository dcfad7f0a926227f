//! The gRPC ConfigService (`shared/proto/.../config.proto`): `GetSnapshot` and the streaming
//! `WatchSnapshot`, both served from the publisher's `watch` of the latest snapshot, which
//! follows this replica's commits and the NATS head (other replicas).
//!
//! It hands out key hashes, sealed credentials, tenants and budgets, so every call must carry
//! one of the configured bearer tokens (`authorization: Bearer <token>`, compared in constant
//! time by [`TokenCheck`]; a missing or wrong one gets `UNAUTHENTICATED`). Each envelope
//! carries the snapshot's signature, so a data plane checks the origin of what it got here
//! exactly as of what it got on NATS. All watchers share one copy of each body (the envelope's
//! `bytes` field is a `Bytes` pointing into the publisher's buffer), and at most
//! `max_watchers` streams are open at once; more get `RESOURCE_EXHAUSTED`.
//!
//! It is served over TLS ([`GrpcTls`], rustls) with the configured certificate, and with mTLS
//! when a client CA is configured; plaintext only when `cluster.grpc_plaintext` says so.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use switchboard_shared::cluster::MAX_SNAPSHOT_BYTES;
use switchboard_shared::cluster_trust::constant_time_eq;
use switchboard_shared::proto::config_service_server::{ConfigService, ConfigServiceServer};
use switchboard_shared::proto::{
    GetSnapshotRequest, GetSnapshotResponse, SnapshotEnvelope, WatchSnapshotRequest,
};
use tokio::sync::{Semaphore, watch};
use tokio_stream::wrappers::WatchStream;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::publish::Built;

/// The ConfigService's TLS: its certificate chain and private key (PEM) and, for mTLS, the
/// CA (PEM) every client certificate must chain to. `Debug` never shows the key.
#[derive(Clone)]
pub struct GrpcTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// When set, a client without a certificate from this CA is refused in the handshake.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for GrpcTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTls")
            .field("mtls", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl GrpcTls {
    /// Reads the PEM files; an error names the setting of the file that could not be read.
    pub fn read(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Self, (&'static str, String)> {
        let read = |setting: &'static str, path: &Path| {
            std::fs::read(path).map_err(|e| (setting, format!("{}: {e}", path.display())))
        };
        Ok(Self {
            cert_pem: read("cluster.grpc_tls_cert_file", cert)?,
            key_pem: read("cluster.grpc_tls_key_file", key)?,
            client_ca_pem: client_ca
                .map(|ca| read("cluster.grpc_tls_client_ca_file", ca))
                .transpose()?,
        })
    }

    /// tonic's server TLS settings (rustls, ring).
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// The gRPC server: over TLS when `tls` is given, else plaintext. Fails on a certificate or
/// key that does not parse.
pub fn server_builder(tls: Option<&GrpcTls>) -> anyhow::Result<tonic::transport::Server> {
    let builder = tonic::transport::Server::builder();
    match tls {
        Some(tls) => builder
            .tls_config(tls.server_config())
            .map_err(|e| anyhow::anyhow!("cluster.grpc_tls_cert_file / grpc_tls_key_file: {e}")),
        None => Ok(builder),
    }
}

pub struct ConfigGrpc {
    latest: watch::Receiver<Option<Arc<Built>>>,
    watchers: Arc<Semaphore>,
}

/// Checks the bearer token of every call.
#[derive(Clone)]
pub struct TokenCheck {
    tokens: Arc<Vec<Vec<u8>>>,
    /// Development only (`cluster.allow_unsigned_snapshots` without tokens): no check.
    open: bool,
}

impl TokenCheck {
    /// Accepts any of `tokens`; with none, refuses everything unless `open`.
    pub fn new(tokens: Vec<Vec<u8>>, open: bool) -> Self {
        Self {
            open: open && tokens.is_empty(),
            tokens: Arc::new(tokens),
        }
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.open {
            return Ok(request);
        }
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::as_bytes);
        let Some(presented) = presented else {
            return Err(Status::unauthenticated(
                "a bearer token is required (cluster.controlplane_grpc_token on the data plane)",
            ));
        };
        // Every token is compared, so the time taken does not say which one nearly matched.
        let matched = self
            .tokens
            .iter()
            .fold(false, |acc, t| constant_time_eq(t, presented) | acc);
        if matched {
            Ok(request)
        } else {
            Err(Status::unauthenticated("the bearer token is not valid"))
        }
    }
}

impl ConfigGrpc {
    /// The service behind `check`, allowing messages up to `MAX_SNAPSHOT_BYTES` both ways and
    /// at most `max_watchers` open `WatchSnapshot` streams.
    pub fn server(
        latest: watch::Receiver<Option<Arc<Built>>>,
        check: TokenCheck,
        max_watchers: usize,
    ) -> InterceptedService<ConfigServiceServer<Self>, TokenCheck> {
        let service = Self {
            latest,
            watchers: Arc::new(Semaphore::new(max_watchers)),
        };
        InterceptedService::new(
            ConfigServiceServer::new(service)
                .max_decoding_message_size(MAX_SNAPSHOT_BYTES)
                .max_encoding_message_size(MAX_SNAPSHOT_BYTES),
            check,
        )
    }
}

/// The envelope of `built`; its body is shared, not copied.
fn envelope(built: &Built) -> SnapshotEnvelope {
    SnapshotEnvelope {
        revision: built.revision,
        content_hash: built.content_hash.clone(),
        snapshot_json: built.json.clone(),
        namespace: built.namespace.clone(),
        issued_at_micros: built.issued_at.timestamp_micros(),
        signature: built.signature.clone(),
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
        let Ok(permit) = Arc::clone(&self.watchers).try_acquire_owned() else {
            return Err(Status::resource_exhausted(
                "too many snapshot watchers (cluster.grpc_max_watchers); retry later",
            ));
        };
        let request = request.into_inner();
        tracing::debug!(dataplane = %request.dataplane_id, newer_than = request.newer_than, "snapshot watch");
        let mut sent = request.newer_than;
        // The watch only ever moves forward; `sent` also drops repeats of one revision. The
        // permit lives as long as the stream.
        let stream = WatchStream::new(self.latest.clone()).filter_map(move |latest| {
            let _held = &permit;
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
