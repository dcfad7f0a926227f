//! Alert webhooks: budget thresholds crossed and upstream credentials rejected, POSTed to an
//! operator's URL, signed with HMAC.
//!
//! Events are queued without blocking (a bounded channel; when it is full the event is
//! dropped, logged and counted) and sent by one background task, retried three times with
//! backoff. Each POST carries `x-switchboard-signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA-256(secret, "<t>.<body>")>` so the receiver can check origin and freshness
//! ([`signature`] computes it).

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use http::{HeaderName, HeaderValue, Uri};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use switchboard_shared::secret::SecretRef;
use tokio::sync::mpsc;

use crate::providers::client::HttpClient;

/// The `webhooks:` section of the data plane's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// The HMAC key of the signature header.
    pub secret: SecretRef,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5_000
}

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";
const QUEUE: usize = 1024;
const ATTEMPTS: u32 = 3;

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// `budget.soft_threshold`, `budget.exhausted` or `upstream.credential_rejected`.
    pub kind: &'static str,
    pub at: DateTime<Utc>,
    /// `key`, `tenant` or `deployment`.
    pub scope: &'static str,
    pub id: String,
    /// Budget events: the period's spend and the threshold crossed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spent_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_usd: Option<f64>,
    /// Credential events: the provider whose credential was refused, and the upstream status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// A handle that queues events; `disabled()` drops them.
#[derive(Debug, Clone, Default)]
pub struct Webhooks {
    tx: Option<mpsc::Sender<Event>>,
}

impl Webhooks {
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Starts the sending task (needs a Tokio runtime).
    pub fn start(config: &WebhookConfig, client: &HttpClient) -> anyhow::Result<Self> {
        let secret = config
            .secret
            .resolve()
            .map_err(|e| anyhow::anyhow!("webhooks.secret: {e}"))?
            .into_bytes();
        let uri: Uri = config
            .url
            .parse()
            .map_err(|_| anyhow::anyhow!("webhooks.url: not a URL"))?;
        let upstream = client
            .upstream(&uri)
            .map_err(|e| anyhow::anyhow!("webhooks.url: {e}"))?;
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let timeout = Duration::from_millis(config.timeout_ms);
        let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let Ok(body) = serde_json::to_vec(&event) else {
                    continue;
                };
                let mut delivered = false;
                for attempt in 0..ATTEMPTS {
                    let t = Utc::now().timestamp();
                    let Ok(sig) = HeaderValue::from_str(&signature(&secret, t, &body)) else {
                        break;
                    };
                    let headers = [
                        (
                            HeaderName::from_static("content-type"),
                            &HeaderValue::from_static("application/json"),
                        ),
                        (HeaderName::from_static(SIGNATURE_HEADER), &sig),
                    ];
                    let sent = tokio::time::timeout(timeout, upstream.post(&path, &headers, &body));
                    if let Ok(Ok(response)) = sent.await
                        && response.status.is_success()
                    {
                        delivered = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                if !delivered {
                    tracing::error!(kind = event.kind, id = %event.id, "webhook not delivered");
                }
            }
        });
        Ok(Self { tx: Some(tx) })
    }

    /// Queues an event without waiting.
    pub fn send(&self, event: Event) {
        if let Some(tx) = &self.tx
            && tx.try_send(event).is_err()
        {
            tracing::warn!("webhook queue full or closed: event dropped");
        }
    }
}

/// The signature header's value for `body` sent at Unix time `t`.
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC accepts keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}
