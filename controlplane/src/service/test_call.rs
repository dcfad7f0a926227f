//! `POST /admin/v1/deployments/{id}/test`: one minimal real request (a one-token chat) to the
//! deployment's upstream with its provider's credential, answered with what happened in plain
//! words — before live traffic depends on a new credential or model name.
//!
//! **Through a data plane**, so that credentials stay where they are used: the control plane
//! asks on NATS (request/reply on `NatsNames::test_subject`, [`Asker`]); one data plane of the
//! queue group sends the call through the deployment's own adaptor (Bedrock SigV4-signed,
//! every kind in its own shape) without recording anything into the deployment's shared state,
//! breaker or usage, and replies with the facts (`dataplane/src/cluster/test_call.rs`). The
//! reply must carry a valid ingest-key tag when the cluster has ingest keys. The result says
//! `via: "dataplane"` and which one answered.
//!
//! **Fallback from the control plane**: when no data plane answers (none listening, none within
//! [`TEST_TIMEOUT`], NATS down, a reply that does not verify), the control plane makes the call
//! itself like `controlplane doctor`'s upstream check (it holds the sealed credentials and the
//! master keys), says so (`via: "control_plane"`, `fallback`), and cannot sign Bedrock. Either
//! way no data plane's health changes. The credential is never returned or logged; the
//! upstream's message is shown with key-like words masked
//! ([`switchboard_shared::fleet_keys::error_message`]). Platform admins only (a test call may
//! cost a token).

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use switchboard_shared::cluster::{TEST_REPLY_KIND, TestCallReply, TestCallRequest};
use switchboard_shared::cluster_trust::{DATAPLANE_HEADER, IngestKeys, SIGNATURE_HEADER};
use switchboard_shared::doctor::redacted;
use switchboard_shared::fleet_keys::{PermanentError, error_message};
use switchboard_shared::sealed::MasterKeys;
use switchboard_shared::snapshot::ProviderKind;
use utoipa::ToSchema;

use super::{Actor, Ctx, Error, Result};
use crate::doctor::upstream::{Unreachable, authenticate, base_url, credential, unreached};
use crate::repo;
use crate::repo::rows::{DeploymentRow, ProviderRow};

/// How long the test call may take (also how long a data plane's reply is waited for).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Which way the test call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestVia {
    /// A data plane made the call with the credential it serves with.
    Dataplane,
    /// No data plane answered; the control plane made the call itself.
    ControlPlane,
}

/// How the control plane asks the data planes for a test call over NATS.
#[derive(Clone)]
pub struct Asker {
    pub client: async_nats::Client,
    /// `NatsNames::test_subject`.
    pub subject: String,
    /// The cluster's ingest keys: a reply must carry a valid tag under them. `None`
    /// (development only): any reply counts.
    pub keys: Option<IngestKeys>,
}

/// What the test call found.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TestResult {
    /// The upstream answered the test with a success.
    pub ok: bool,
    pub deployment_id: String,
    pub provider: String,
    /// The URL called (without any user or password in it), on a control-plane call.
    pub url: Option<String>,
    /// The upstream's HTTP status (absent when it could not be reached).
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// What happened, in words, with what to do about it.
    pub explanation: String,
    /// `credential_invalid`, `permission_denied`, `model_not_found` or `quota_exhausted` when
    /// the upstream's answer says the failure lasts.
    pub error_kind: Option<String>,
    /// The upstream's own message (key-like words masked, at most 200 characters).
    pub upstream_message: Option<String>,
    /// Who made the call: a data plane, or the control plane when none answered.
    pub via: TestVia,
    /// The id of the data plane that made the call (with `via: dataplane`).
    pub answered_by: Option<String>,
    /// The revision of the snapshot that data plane serves.
    pub revision: Option<u64>,
    /// Which key of a multi-key provider the result is about (the first that failed).
    pub key_index: Option<usize>,
    /// Why the control plane made the call itself (with `via: control_plane`).
    pub fallback: Option<String>,
}

/// The one-token chat of the provider's kind: its URL path and body.
fn test_request(
    kind: Option<ProviderKind>,
    base: &str,
    d: &DeploymentRow,
    p: &ProviderRow,
) -> (String, serde_json::Value) {
    let model = d.upstream_model.as_str();
    let say = "Reply with OK.";
    match kind {
        Some(ProviderKind::Anthropic) => (
            format!("{base}/messages"),
            json!({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": say}]}),
        ),
        Some(ProviderKind::Gemini) => (
            format!("{base}/models/{model}:generateContent"),
            json!({"contents": [{"role": "user", "parts": [{"text": say}]}],
                "generationConfig": {"maxOutputTokens": 1}}),
        ),
        Some(ProviderKind::Azure) => (
            format!(
                "{base}/openai/deployments/{model}/chat/completions?api-version={}",
                p.extra.0.api_version.as_deref().unwrap_or_default()
            ),
            json!({"max_tokens": 1, "messages": [{"role": "user", "content": say}]}),
        ),
        _ => (
            format!("{base}/chat/completions"),
            json!({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": say}]}),
        ),
    }
}

/// The explanation of an answer with `status` and `body`, and the lasting error it names.
fn explain(
    status: u16,
    body: &str,
    d: &DeploymentRow,
    p: &ProviderRow,
) -> (String, Option<String>) {
    let lasting = PermanentError::from_answer(status, body.as_bytes(), 0).map(|e| e.kind);
    let text = explain_kind(status, lasting.as_deref(), &error_message(body), d, p);
    (text, lasting)
}

/// The explanation of an answer with `status`, the lasting error kind it names and the
/// upstream's (masked) `message`.
fn explain_kind(
    status: u16,
    lasting: Option<&str>,
    message: &str,
    d: &DeploymentRow,
    p: &ProviderRow,
) -> String {
    let fix_key = format!("set a valid api_key: PUT /admin/v1/providers/{}", p.id);
    match (status, lasting) {
        (200..=299, _) => format!(
            "the upstream answered: the credential and the model {:?} work",
            d.upstream_model
        ),
        (_, Some("credential_invalid")) => {
            format!("the upstream refused the credential (HTTP {status}): {message} — {fix_key}")
        }
        (_, Some("permission_denied")) => format!(
            "the upstream refused access (HTTP {status}): the credential lacks permission for \
             this model or API: {message}"
        ),
        (_, Some("model_not_found")) => format!(
            "the upstream does not know the model {:?} (HTTP 404): {message} — correct \
             upstream_model: PUT /admin/v1/deployments/{}",
            d.upstream_model, d.id
        ),
        (_, Some(_)) => format!(
            "the upstream's account is out of quota (HTTP {status}): {message} — add credit or \
             raise the account's limits with the provider"
        ),
        (429, None) => format!(
            "the upstream is rate limiting the account right now (HTTP 429): {message}; the \
             credential and the model were accepted"
        ),
        (404, None) => format!(
            "the upstream has no such path (HTTP 404): {message} — check base_url: PUT \
             /admin/v1/providers/{}",
            p.id
        ),
        (500..=599, None) => format!("the upstream failed (HTTP {status}): {message}"),
        _ => format!("the upstream refused the test request (HTTP {status}): {message}"),
    }
}

/// Sends the test call of deployment `id`: through a data plane when `asker` reaches one
/// that answers, else from the control plane (saying why).
pub async fn run(
    cx: Ctx<'_>,
    actor: &Actor,
    keys: &MasterKeys,
    asker: Option<&Asker>,
    id: &str,
) -> Result<TestResult> {
    actor.require_platform_admin()?;
    let mut conn = cx.pool.acquire().await?;
    let d = repo::deployments::get(&mut conn, id, false)
        .await?
        .ok_or_else(|| Error::not_found("deployment", id))?;
    let p = repo::providers::get(&mut conn, &d.provider_id, false)
        .await?
        .ok_or_else(|| Error::not_found("provider", &d.provider_id))?;
    drop(conn);
    let why = match asker {
        Some(asker) => match asker.ask(id).await {
            Ok(reply) => return Ok(from_reply(&reply, &d, &p)),
            Err(why) => why,
        },
        None => "the control plane has no NATS connection to ask a data plane".to_owned(),
    };
    tracing::info!(deployment = %d.id, reason = %why, "test call made by the control plane");
    let mut result = direct(&d, &p, keys).await?;
    result.fallback = Some(why);
    Ok(result)
}

/// A result about `d` of `p`, nothing known yet.
fn blank(d: &DeploymentRow, p: &ProviderRow, via: TestVia) -> TestResult {
    TestResult {
        ok: false,
        deployment_id: d.id.clone(),
        provider: p.id.clone(),
        url: None,
        status: None,
        latency_ms: 0,
        explanation: String::new(),
        error_kind: None,
        upstream_message: None,
        via,
        answered_by: None,
        revision: None,
        key_index: None,
        fallback: None,
    }
}

/// The result a data plane's `reply` describes, explained.
fn from_reply(reply: &TestCallReply, d: &DeploymentRow, p: &ProviderRow) -> TestResult {
    let mut result = blank(d, p, TestVia::Dataplane);
    result.answered_by = Some(reply.dataplane_id.clone());
    result.revision = Some(reply.revision);
    result.latency_ms = reply.latency_ms;
    result.key_index = reply.key_index;
    if !reply.found {
        result.explanation = format!(
            "the deployment is not in data plane {}'s snapshot (revision {}): nothing was sent — \
             a new deployment reaches the data planes within moments; retry, or see which \
             revision each serves: GET /admin/v1/fleet",
            reply.dataplane_id, reply.revision
        );
        return result;
    }
    let Some(status) = reply.status else {
        result.explanation = format!(
            "{} — check that the upstream is up and reachable from data plane {} (DNS, \
             firewall, proxy, TLS certificate)",
            reply
                .failure
                .as_deref()
                .unwrap_or("the upstream did not answer"),
            reply.dataplane_id
        );
        return result;
    };
    let message = reply.upstream_message.clone().unwrap_or_default();
    result.ok = (200..300).contains(&status);
    result.status = Some(status);
    result.explanation = explain_kind(status, reply.error_kind.as_deref(), &message, d, p);
    if let (false, Some(index)) = (result.ok, reply.key_index) {
        result.explanation = format!(
            "key {index} of the provider's api_keys: {}",
            result.explanation
        );
    }
    result.error_kind = reply.error_kind.clone();
    result.upstream_message = (!result.ok).then_some(message);
    result
}

impl Asker {
    /// Asks one data plane to test deployment `id` and waits up to [`TEST_TIMEOUT`] for its
    /// verified reply; `Err` says in words why none came.
    pub async fn ask(&self, id: &str) -> std::result::Result<TestCallReply, String> {
        use async_nats::RequestErrorKind;
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err("the control plane is not connected to NATS".into());
        }
        let question = TestCallRequest {
            deployment_id: id.to_owned(),
        };
        let payload = serde_json::to_vec(&question).map_err(|e| e.to_string())?;
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(TEST_TIMEOUT));
        let message = self
            .client
            .send_request(self.subject.clone(), request)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => {
                    "no data plane is listening for test calls on NATS".to_owned()
                }
                RequestErrorKind::TimedOut => {
                    format!("no data plane answered within {} s", TEST_TIMEOUT.as_secs())
                }
                _ => format!("the request over NATS failed: {e}"),
            })?;
        self.verified(id, &message)
    }

    /// The reply in `message`, if a data plane of this cluster sent it about `id`.
    fn verified(
        &self,
        id: &str,
        message: &async_nats::Message,
    ) -> std::result::Result<TestCallReply, String> {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map_or_else(String::new, |v| v.as_str().to_owned())
        };
        let sender = header(DATAPLANE_HEADER);
        if let Some(keys) = &self.keys {
            let tag = header(SIGNATURE_HEADER);
            if let Err(refusal) = keys.check(TEST_REPLY_KIND, &sender, &message.payload, &tag) {
                tracing::warn!(
                    reason = refusal.reason(),
                    "ignoring a test-call reply whose ingest-key tag does not verify"
                );
                return Err(format!(
                    "the only reply was not tagged by a data plane of this cluster ({})",
                    refusal.reason()
                ));
            }
        }
        let reply: TestCallReply = serde_json::from_slice(&message.payload)
            .map_err(|_| "the data plane's reply could not be read".to_owned())?;
        if reply.dataplane_id != sender || reply.deployment_id != id {
            return Err("the reply named another data plane or deployment".into());
        }
        Ok(reply)
    }
}

/// The test call made by the control plane itself.
async fn direct(d: &DeploymentRow, p: &ProviderRow, keys: &MasterKeys) -> Result<TestResult> {
    let mut result = blank(d, p, TestVia::ControlPlane);
    let kind = p.kind();
    let base = match (base_url(p), kind) {
        (Err(Unreachable::Mock), _) => {
            result.ok = true;
            result.explanation = "kind mock answers inside the data plane: nothing to call".into();
            return Ok(result);
        }
        (Err(Unreachable::NoBaseUrl), _) => {
            result.explanation = format!(
                "the provider has no base_url — set it: PUT /admin/v1/providers/{}",
                p.id
            );
            return Ok(result);
        }
        (Ok(_), Some(ProviderKind::Bedrock)) => {
            result.explanation = "the control plane does not sign Bedrock requests (SigV4), and \
                no data plane answered to make the call"
                .into();
            return Ok(result);
        }
        (Ok(base), _) => base,
    };
    let (url, body) = test_request(kind, &base, d, p);
    result.url = Some(redacted(&url));
    let client = reqwest::Client::builder()
        .timeout(TEST_TIMEOUT)
        .build()
        .map_err(|e| Error::Internal(format!("test call client: {e}")))?;
    let secret = credential(p, keys);
    let request = authenticate(
        client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string()),
        kind,
        secret.as_deref(),
    );
    let started = Instant::now();
    let answer = request.send().await;
    result.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match answer {
        Err(e) => {
            result.explanation = format!(
                "could not reach the upstream: {} — check that it is up and reachable from the \
                 control plane (firewall, proxy, TLS certificate)",
                unreached(&e)
            );
        }
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            let (explanation, kind) = explain(status, &text, d, p);
            result.ok = (200..300).contains(&status);
            result.status = Some(status);
            result.explanation = explanation;
            result.error_kind = kind;
            result.upstream_message = (!result.ok).then(|| error_message(&text));
        }
    }
    Ok(result)
}
