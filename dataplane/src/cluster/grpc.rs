//! The control plane's gRPC `ConfigService`: bootstrap and the fallback while NATS is down.
//!
//! - [`GrpcSource::bootstrap`] asks `GetSnapshot` for anything newer than what is served,
//!   racing NATS at start; it retries until it gets an answer or until NATS has delivered.
//! - [`GrpcSource::watch`] follows `WatchSnapshot`, which sends the latest snapshot at once
//!   (if newer) and then each new revision; it reconnects until the caller stops it, which
//!   the follower does as soon as NATS works again.
//!
//! Both carry the same canonical JSON, content hash and signature as NATS, so the
//! [`Installer`] checks them the same way, and a revision that arrives on both paths is
//! installed once. Every call carries `authorization: Bearer <cluster.controlplane_grpc_token>`,
//! over TLS (rustls) to an `https://` control plane ([`client_tls`]: the pinned CA, and this
//! data plane's certificate for mTLS).

use std::time::Duration;

use switchboard_shared::cluster::MAX_SNAPSHOT_BYTES;
use switchboard_shared::proto::config_service_client::ConfigServiceClient;
use switchboard_shared::proto::{GetSnapshotRequest, SnapshotEnvelope, WatchSnapshotRequest};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::cluster::install::{Announced, Installer, Offer, Source};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

/// The client TLS settings for an `https://` control plane: the CA its certificate must chain
/// to and, for mTLS, this data plane's certificate. `None` for an `http://` one (plaintext).
pub fn client_tls(
    config: &crate::config::ClusterConfig,
) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(ca) = &config.controlplane_grpc_ca_file else {
        return Ok(None);
    };
    let read = |setting: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("{setting}: {}: {e}", path.display()))
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(
        "cluster.controlplane_grpc_ca_file",
        ca,
    )?));
    if let (Some(cert), Some(key)) = (
        &config.controlplane_grpc_client_cert,
        &config.controlplane_grpc_client_key,
    ) {
        tls = tls.identity(Identity::from_pem(
            read("cluster.controlplane_grpc_client_cert", cert)?,
            read("cluster.controlplane_grpc_client_key", key)?,
        ));
    }
    Ok(Some(tls))
}

/// A lazily connected `ConfigService` client.
#[derive(Debug, Clone)]
pub struct GrpcSource {
    client: ConfigServiceClient<InterceptedService<Channel, Bearer>>,
    /// For logs, without credentials.
    url: String,
    dataplane_id: String,
}

impl GrpcSource {
    /// Prepares the client, presenting `token` if given, over `tls` if given; nothing is
    /// dialled until the first call.
    pub fn new(
        url: &str,
        token: Option<&str>,
        tls: Option<ClientTlsConfig>,
        dataplane_id: &str,
    ) -> anyhow::Result<Self> {
        let bearer = match token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse::<MetadataValue<tonic::metadata::Ascii>>()
                    .map_err(|_| {
                        anyhow::anyhow!("cluster.controlplane_grpc_token: not a valid header value")
                    })?,
            ),
            None => None,
        };
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| anyhow::anyhow!("cluster.controlplane_grpc: {e}"))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| anyhow::anyhow!("cluster.controlplane_grpc TLS: {e}"))?;
        }
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self {
            client: ConfigServiceClient::with_interceptor(channel, Bearer(bearer))
                .max_decoding_message_size(MAX_SNAPSHOT_BYTES)
                .max_encoding_message_size(MAX_SNAPSHOT_BYTES),
            url: crate::config::redacted_url(url),
            dataplane_id: dataplane_id.to_owned(),
        })
    }

    /// One `GetSnapshot` for anything newer than what is served; offers what comes back.
    pub async fn get_latest(&self, installer: &Installer) -> Result<(), tonic::Status> {
        let newer_than = installer.state().revision();
        let answer = self
            .client
            .clone()
            .get_snapshot(GetSnapshotRequest { newer_than })
            .await?
            .into_inner();
        if let Some(envelope) = answer.snapshot {
            offer(envelope, installer).await;
        }
        Ok(())
    }

    /// Asks `GetSnapshot` until it answers, or until a live snapshot came by another path.
    pub async fn bootstrap(&self, installer: &Installer) {
        let mut delay = FIRST_RETRY;
        while !installer.has_live_snapshot() {
            match self.get_latest(installer).await {
                Ok(()) => return,
                Err(status) => {
                    tracing::debug!(url = %self.url, error = %status.message(), "GetSnapshot failed; retrying");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY);
        }
    }

    /// Follows `WatchSnapshot`, reconnecting after failures. Returns only if dropped. The
    /// first failure of a series is a warning, the repeats are debug lines.
    pub async fn watch(&self, installer: &Installer) {
        let mut delay = FIRST_RETRY;
        let mut failing = false;
        loop {
            let started = tokio::time::Instant::now();
            let result = self.watch_once(installer).await;
            if started.elapsed() > MAX_RETRY {
                // It worked for a while: this is a new failure, not the same one again.
                delay = FIRST_RETRY;
                failing = false;
            }
            match result {
                Ok(()) => tracing::info!(url = %self.url, "WatchSnapshot ended; reconnecting"),
                Err(status) if !failing => tracing::warn!(
                    url = %self.url,
                    code = ?status.code(),
                    error = %status.message(),
                    "WatchSnapshot failed; retrying"
                ),
                Err(status) => tracing::debug!(
                    url = %self.url,
                    code = ?status.code(),
                    error = %status.message(),
                    "WatchSnapshot failed again; retrying"
                ),
            }
            failing = true;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY);
        }
    }

    async fn watch_once(&self, installer: &Installer) -> Result<(), tonic::Status> {
        let mut stream = self
            .client
            .clone()
            .watch_snapshot(WatchSnapshotRequest {
                newer_than: installer.state().revision(),
                dataplane_id: self.dataplane_id.clone(),
            })
            .await?
            .into_inner();
        tracing::info!(url = %self.url, "following WatchSnapshot");
        while let Some(envelope) = stream.message().await? {
            offer(envelope, installer).await;
        }
        Ok(())
    }
}

async fn offer(envelope: SnapshotEnvelope, installer: &Installer) {
    // `offer` checks the origin before the revision is believed; a stale one skips early.
    if installer.skip_stale(Source::Grpc, envelope.revision) {
        return;
    }
    installer
        .offer(Offer {
            source: Source::Grpc,
            announced: Some(Announced {
                revision: envelope.revision,
                content_hash: envelope.content_hash,
                namespace: envelope.namespace,
                issued_at_micros: envelope.issued_at_micros,
                signature: envelope.signature,
            }),
            body: envelope.snapshot_json,
        })
        .await;
}
