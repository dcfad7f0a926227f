//! `POST /admin/v1/deployments/{id}/test`: one minimal real request (a one-token chat) to the
//! deployment's upstream with its provider's credential, answered with what happened in plain
//! words — before live traffic depends on a new credential or model name.
//!
//! The control plane makes the call itself, like `controlplane doctor`'s upstream check (it
//! holds the sealed credentials and the master keys that open them), so **no data plane takes
//! part**: the shared deployment state in Redis is not touched, and a refused test never takes
//! the deployment out of service. The credential is opened for the call only and never
//! returned or logged; the upstream's message is shown with key-like words masked
//! ([`switchboard_shared::fleet_keys::error_message`]). Platform admins only (a test call may
//! cost a token).

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use switchboard_shared::doctor::redacted;
use switchboard_shared::fleet_keys::{PermanentError, error_message};
use switchboard_shared::sealed::MasterKeys;
use switchboard_shared::snapshot::ProviderKind;
use utoipa::ToSchema;

use super::{Actor, Ctx, Error, Result};
use crate::doctor::upstream::{Unreachable, authenticate, base_url, credential, unreached};
use crate::repo;
use crate::repo::rows::{DeploymentRow, ProviderRow};

/// How long the test call may take.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// What the test call found.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TestResult {
    /// The upstream answered the test with a success.
    pub ok: bool,
    pub deployment_id: String,
    pub provider: String,
    /// The URL called (without any user or password in it).
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

/// The explanation of an answer with `status` and `body`.
fn explain(
    status: u16,
    body: &str,
    d: &DeploymentRow,
    p: &ProviderRow,
) -> (String, Option<String>) {
    let lasting = PermanentError::from_answer(status, body.as_bytes(), 0);
    let message = error_message(body);
    let fix_key = format!("set a valid api_key: PUT /admin/v1/providers/{}", p.id);
    let text = match (status, lasting.as_ref().map(|e| e.kind.as_str())) {
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
    };
    (text, lasting.map(|e| e.kind))
}

/// Sends the test call of deployment `id`.
pub async fn run(cx: Ctx<'_>, actor: &Actor, keys: &MasterKeys, id: &str) -> Result<TestResult> {
    actor.require_platform_admin()?;
    let mut conn = cx.pool.acquire().await?;
    let d = repo::deployments::get(&mut conn, id, false)
        .await?
        .ok_or_else(|| Error::not_found("deployment", id))?;
    let p = repo::providers::get(&mut conn, &d.provider_id, false)
        .await?
        .ok_or_else(|| Error::not_found("provider", &d.provider_id))?;
    drop(conn);
    let mut result = TestResult {
        ok: false,
        deployment_id: d.id.clone(),
        provider: p.id.clone(),
        url: None,
        status: None,
        latency_ms: 0,
        explanation: String::new(),
        error_kind: None,
        upstream_message: None,
    };
    let kind = p.kind();
    let base = match (base_url(&p), kind) {
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
            result.explanation = "the test call does not sign Bedrock requests (SigV4); send a \
                request through a data plane instead"
                .into();
            return Ok(result);
        }
        (Ok(base), _) => base,
    };
    let (url, body) = test_request(kind, &base, &d, &p);
    result.url = Some(redacted(&url));
    let client = reqwest::Client::builder()
        .timeout(TEST_TIMEOUT)
        .build()
        .map_err(|e| Error::Internal(format!("test call client: {e}")))?;
    let secret = credential(&p, keys);
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
            let (explanation, kind) = explain(status, &text, &d, &p);
            result.ok = (200..300).contains(&status);
            result.status = Some(status);
            result.explanation = explanation;
            result.error_kind = kind;
            result.upstream_message = (!result.ok).then(|| error_message(&text));
        }
    }
    Ok(result)
}
