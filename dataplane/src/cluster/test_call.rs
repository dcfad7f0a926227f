//! Test calls for the control plane (`POST /admin/v1/deployments/{id}/test`), answered here so
//! that credentials stay where they are used: the control plane asks on NATS
//! (`NatsNames::test_subject`, request/reply), one data plane of the queue group
//! [`TEST_QUEUE_GROUP`] sends a one-token chat through the deployment's own adaptor — so
//! Bedrock is SigV4-signed, Azure, Gemini, Vertex and Anthropic get their own auth and shapes —
//! and answers a [`TestCallReply`] with the facts (status, latency, lasting error kind, the
//! upstream's message masked).
//!
//! The call goes around the proxy on purpose: nothing is recorded into the deployment's state
//! (breaker, latency, fleet sync), its caps or anyone's usage, so a refused test never takes
//! the deployment out of service and charges no tenant. A multi-key provider's keys are tried
//! one by one through their own adaptors, not through the key ring, so no key is rested.
//! The reply is tagged under the ingest key like a heartbeat, so the control plane can tell it
//! from a forged one.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use switchboard_shared::cluster::{
    TEST_QUEUE_GROUP, TEST_REPLY_KIND, TestCallReply, TestCallRequest,
};
use switchboard_shared::cluster_trust::{DATAPLANE_HEADER, IngestKeys, SIGNATURE_HEADER};
use switchboard_shared::fleet_keys::{PermanentError, error_message};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout_at};

use crate::catalog::DeploymentEntry;
use crate::providers::{Endpoint, ProviderAdaptor, SendError, UpstreamRequest};
use crate::request::RequestView;
use crate::state::AppState;

/// How long a test call may take, all keys together (the control plane waits a little
/// longer).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How much of an upstream's refusal is read.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Test calls this data plane makes at once; more wait their turn.
const CONCURRENT_TESTS: usize = 4;
/// Pause before subscribing again after a failed subscription.
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(1);

/// Who answers test calls, and with what.
#[derive(Debug, Clone)]
pub struct Responder {
    pub client: Client,
    pub subject: String,
    pub dataplane_id: String,
    pub keys: Option<IngestKeys>,
    pub state: Arc<AppState>,
}

impl Responder {
    /// Answers test calls until the connection closes. The client resubscribes by itself
    /// after a reconnection.
    pub async fn run(self) {
        let me = Arc::new(self);
        let permits = Arc::new(Semaphore::new(CONCURRENT_TESTS));
        loop {
            let group = TEST_QUEUE_GROUP.to_owned();
            let mut requests = match me.client.queue_subscribe(me.subject.clone(), group).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for test calls; retrying");
                    tokio::time::sleep(SUBSCRIBE_RETRY).await;
                    continue;
                }
            };
            while let Some(message) = requests.next().await {
                let Some(reply_to) = message.reply.clone() else {
                    continue;
                };
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                let me = Arc::clone(&me);
                tokio::spawn(async move {
                    me.answer(reply_to, &message.payload).await;
                    drop(permit);
                });
            }
            return;
        }
    }

    /// Makes the call `payload` asks for and replies on `reply_to`.
    async fn answer(&self, reply_to: Subject, payload: &[u8]) {
        let reply = match serde_json::from_slice::<TestCallRequest>(payload) {
            Ok(request) => test(&self.state, &self.dataplane_id, &request.deployment_id).await,
            Err(_) => TestCallReply {
                dataplane_id: self.dataplane_id.clone(),
                failure: Some("the data plane could not read the test request".into()),
                ..TestCallReply::default()
            },
        };
        let Ok(body) = serde_json::to_vec(&reply) else {
            return;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(DATAPLANE_HEADER, self.dataplane_id.as_str());
        if let Some(keys) = &self.keys {
            let tag = keys.tag(TEST_REPLY_KIND, &self.dataplane_id, &body);
            headers.insert(SIGNATURE_HEADER, tag.as_str());
        }
        if let Err(e) = self
            .client
            .publish_with_headers(reply_to, headers, body.into())
            .await
        {
            tracing::warn!(error = %e, "test call reply not sent");
        }
    }
}

/// Sends deployment `id`'s test call as this data plane (`dataplane_id`) serves it now:
/// through each of its keys in turn, stopping at the first that does not succeed.
pub async fn test(state: &AppState, dataplane_id: &str, id: &str) -> TestCallReply {
    let catalog = state.catalog();
    let mut reply = TestCallReply {
        dataplane_id: dataplane_id.to_owned(),
        deployment_id: id.to_owned(),
        revision: catalog.as_ref().map_or(0, |c| c.revision),
        ..TestCallReply::default()
    };
    let Some(deployment) = catalog
        .as_ref()
        .and_then(|c| c.deployments().find(|d| d.id == id))
    else {
        return reply;
    };
    reply.found = true;
    let keys = deployment.adaptor.key_adaptors();
    let adaptors = keys
        .clone()
        .unwrap_or_else(|| vec![Arc::clone(&deployment.adaptor)]);
    let deadline = Instant::now() + TEST_TIMEOUT;
    for (index, adaptor) in adaptors.iter().enumerate() {
        send_once(deployment, adaptor.as_ref(), deadline, &mut reply).await;
        reply.key_index = keys.as_ref().map(|_| index);
        if !reply.status.is_some_and(|s| (200..300).contains(&s)) {
            break;
        }
    }
    reply
}

/// One one-token chat through `adaptor`, over by `deadline`, its outcome written into `reply`.
async fn send_once(
    deployment: &DeploymentEntry,
    adaptor: &dyn ProviderAdaptor,
    deadline: Instant,
    reply: &mut TestCallReply,
) {
    reply.status = None;
    reply.error_kind = None;
    reply.upstream_message = None;
    reply.failure = None;
    let body = serde_json::json!({"model": deployment.model, "max_tokens": 1,
        "messages": [{"role": "user", "content": "Reply with OK."}]});
    let view = match RequestView::parse(Bytes::from(body.to_string())) {
        Ok(view) => view,
        Err(e) => {
            reply.failure = Some(format!("the test request could not be built: {e}"));
            return;
        }
    };
    let shaped = match view.transformed(&[&deployment.transforms]) {
        Ok(shaped) => shaped,
        Err(e) => {
            reply.failure = Some(format!(
                "the deployment's transforms refused the test request: {e}"
            ));
            return;
        }
    };
    let view = shaped.as_ref().unwrap_or(&view);
    let request_id = format!("test-{:016x}", fastrand::u64(..));
    let request = UpstreamRequest {
        endpoint: Endpoint::ChatCompletions,
        view,
        upstream_model_json: &deployment.upstream_model_json,
        upstream_model: &deployment.upstream_model,
        request_id: &request_id,
        native_responses: false,
    };
    let started = Instant::now();
    let sent = timeout_at(deadline, adaptor.send(&request)).await;
    reply.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let response = match sent {
        Err(_) => {
            reply.failure = Some(format!(
                "the upstream did not answer within {} s",
                TEST_TIMEOUT.as_secs()
            ));
            return;
        }
        Ok(Err(SendError::Connect)) => {
            reply.failure = Some("could not connect to the upstream".into());
            return;
        }
        Ok(Err(SendError::Transport)) => {
            reply.failure = Some("the connection to the upstream broke before an answer".into());
            return;
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status.as_u16();
    reply.status = Some(status);
    if (200..300).contains(&status) {
        return;
    }
    let limited = http_body_util::Limited::new(response.body, MAX_BODY_BYTES);
    let body = match timeout_at(deadline, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => Bytes::new(),
    };
    reply.error_kind = PermanentError::from_answer(status, &body, 0).map(|e| e.kind);
    reply.upstream_message = Some(error_message(&String::from_utf8_lossy(&body)));
}
