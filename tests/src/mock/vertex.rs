//! The mock's Vertex AI: Google's OAuth2 token endpoint (`POST /token`) and the model paths
//! `POST /v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{model}:{method}`.
//!
//! The token endpoint does what Google's does with a JWT bearer grant: the form must carry
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and an `assertion` signed (RS256)
//! by the test service account (`tests/fixtures/vertex/test_service_account.json`, verified
//! with its public half), issued by its `client_email`, for the audience of this endpoint's
//! URL, with the cloud-platform scope and at most an hour of life; it answers with a fresh
//! access token good for `token_ttl` seconds (3599 by default) and counts it. `fault=401` on
//! the token path refuses every assertion (400 `invalid_grant`, as Google does for a disabled
//! key), `fault=500`/`503` fail.
//!
//! The model paths want `Authorization: Bearer <a token issued here, not expired, not
//! revoked>` (else Vertex AI's 401 `UNAUTHENTICATED`, also the answer to `fault=401`).
//! Google's models (`publishers/google`, `:generateContent`, `:streamGenerateContent?alt=sse`)
//! are answered as the mock's Gemini API does; Anthropic's (`publishers/anthropic`,
//! `:rawPredict`, `:streamRawPredict`) as its Messages API does, in Vertex AI's dialect: no
//! `model` in the body, `anthropic_version: "vertex-2023-10-16"` required, `stream` matching
//! the method.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::Deserialize;
use serde_json::Value;

use switchboard_shared::cluster::percent_decode;

use super::anthropic::{self, Dialect};
use super::body::MockBody;
use super::gemini;
use super::scenario::{Fault, Scenario};
use super::state::State;

/// The test service account's JSON key (its `token_uri` is Google's; tests replace it with
/// the mock's).
pub const TEST_SERVICE_ACCOUNT: &str =
    include_str!("../../fixtures/vertex/test_service_account.json");
const TOKEN_RESPONSE: &str = include_str!("../../fixtures/vertex/token_response.json");
const INVALID_GRANT: &str = include_str!("../../fixtures/vertex/token_error_invalid_grant.json");
const UNAUTHENTICATED: &str = include_str!("../../fixtures/vertex/error_unauthenticated.json");

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's tokens live an hour less a second.
const DEFAULT_TTL_SECS: u64 = 3599;

/// The test service account's JSON key with its `token_uri` set to `token_uri`.
pub fn service_account(token_uri: &str) -> String {
    // The fixture is JSON (the mock's tests parse it); `Null` would become an object below.
    let mut key: Value = serde_json::from_str(TEST_SERVICE_ACCOUNT).unwrap_or(Value::Null);
    key["token_uri"] = Value::from(token_uri);
    key.to_string()
}

/// What a Vertex AI path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Token,
    Google { stream: bool },
    Anthropic { stream: bool },
}

/// The route of `path` (without the scenario prefix), if it is one of Vertex AI's.
pub fn route(path: &str) -> Option<Route> {
    if path == "/token" {
        return Some(Route::Token);
    }
    let rest = path.strip_prefix("/v1/projects/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    let [
        project,
        "locations",
        location,
        "publishers",
        publisher,
        "models",
        call,
    ] = segments[..]
    else {
        return None;
    };
    let (model, method) = call.split_once(':')?;
    if project.is_empty() || location.is_empty() || model.is_empty() {
        return None;
    }
    match (publisher, method) {
        ("google", "generateContent") => Some(Route::Google { stream: false }),
        ("google", "streamGenerateContent") => Some(Route::Google { stream: true }),
        ("anthropic", "rawPredict") => Some(Route::Anthropic { stream: false }),
        ("anthropic", "streamRawPredict") => Some(Route::Anthropic { stream: true }),
        _ => None,
    }
}

/// One request to a Vertex AI path. `full_path` is the path as received (with the scenario
/// prefix): the token endpoint's own URL, the assertion's audience.
pub struct Call<'a> {
    pub route: Route,
    pub full_path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub scenario: &'a Scenario,
    pub fault: Option<Fault>,
}

/// The answer to one Vertex AI call.
pub fn respond(call: &Call<'_>, state: &Arc<State>) -> Response<MockBody> {
    match call.route {
        Route::Token => token(call, state),
        Route::Google { stream } => {
            if let Some(refused) = unauthenticated(call, state) {
                return refused;
            }
            if let Some(response) = gemini::fault_answer(call.fault) {
                return response;
            }
            gemini::generate(
                stream,
                call.query,
                call.body,
                call.scenario,
                call.fault,
                state,
            )
        }
        Route::Anthropic { stream } => {
            if let Some(refused) = unauthenticated(call, state) {
                return refused;
            }
            if let Some(response) = anthropic::fault_answer(call.fault, call.scenario) {
                return response;
            }
            let body_stream = serde_json::from_slice::<Value>(call.body)
                .ok()
                .and_then(|v| v.get("stream").and_then(Value::as_bool))
                .unwrap_or(false);
            if body_stream != stream {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "stream must be true for streamRawPredict and absent or false for rawPredict",
                );
            }
            anthropic::messages(Dialect::Vertex, call.body, call.scenario, call.fault, state)
        }
    }
}

/// Vertex AI's 401 unless the call carries a live token issued here (or under `fault=401`).
fn unauthenticated(call: &Call<'_>, state: &State) -> Option<Response<MockBody>> {
    let token = call
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let live = token.is_some_and(|t| {
        let tokens = state
            .vertex_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tokens.get(t).is_some_and(|expiry| Instant::now() < *expiry)
    });
    (!live || call.fault == Some(Fault::Unauthorized))
        .then(|| gemini::json(StatusCode::UNAUTHORIZED, UNAUTHENTICATED))
}

/// The assertion's claims the endpoint checks.
#[derive(Deserialize)]
struct Claims {
    iss: String,
    scope: String,
    iat: u64,
    exp: u64,
}

/// The token endpoint: checks the grant and its assertion, issues a token.
fn token(call: &Call<'_>, state: &State) -> Response<MockBody> {
    match call.fault {
        Some(Fault::Unauthorized) => return gemini::json(StatusCode::BAD_REQUEST, INVALID_GRANT),
        Some(Fault::ServerError | Fault::Unavailable) => {
            return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "internal_failure", "");
        }
        _ => {}
    }
    let form = call
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/x-www-form-urlencoded");
    if !form {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded",
        );
    }
    let body = String::from_utf8_lossy(call.body);
    let field = |name: &str| {
        body.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    };
    if field("grant_type").as_deref() != Some(JWT_BEARER) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type",
        );
    }
    let host = call
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let audience = format!("http://{host}{}", call.full_path);
    match field("assertion").map(|a| verify(&a, &audience)) {
        Some(Ok(())) => issue(call.scenario, state),
        _ => gemini::json(StatusCode::BAD_REQUEST, INVALID_GRANT),
    }
}

/// Whether `assertion` is the test account's, signed with its key, for `audience`.
fn verify(assertion: &str, audience: &str) -> Result<(), String> {
    let account: Value = serde_json::from_str(TEST_SERVICE_ACCOUNT).map_err(|e| e.to_string())?;
    // The public half of the test account's own key: the fixture holds no second key file.
    let private = account["private_key"].as_str().unwrap_or_default();
    let private = RsaPrivateKey::from_pkcs8_pem(private).map_err(|e| e.to_string())?;
    let public = RsaPublicKey::from(&private);
    let der = public.to_pkcs1_der().map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let data = jsonwebtoken::decode::<Claims>(
        assertion,
        &DecodingKey::from_rsa_der(der.as_bytes()),
        &validation,
    )
    .map_err(|e| e.to_string())?;
    let claims = data.claims;
    let key_id = account["private_key_id"].as_str();
    if claims.iss != account["client_email"].as_str().unwrap_or_default()
        || data.header.kid.as_deref() != key_id
        || !claims.scope.split(' ').any(|s| s == SCOPE)
        || claims.exp.saturating_sub(claims.iat) > 3600
    {
        return Err("wrong issuer, key id, scope or lifetime".into());
    }
    Ok(())
}

/// A fresh token, remembered with its expiry and counted.
fn issue(scenario: &Scenario, state: &State) -> Response<MockBody> {
    let ttl = scenario.token_ttl.unwrap_or(DEFAULT_TTL_SECS);
    let n = state.tokens_issued.fetch_add(1, Ordering::Relaxed) + 1;
    let token = format!("ya29.mock-{n}-{}", state.next_id());
    state
        .vertex_tokens
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    let mut doc: Value = serde_json::from_str(TOKEN_RESPONSE)
        .unwrap_or_else(|_| serde_json::json!({"token_type": "Bearer"}));
    doc["access_token"] = Value::from(token);
    doc["expires_in"] = Value::from(ttl);
    body_response(StatusCode::OK, doc.to_string())
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<MockBody> {
    let doc = serde_json::json!({"error": error, "error_description": description});
    body_response(status, doc.to_string())
}

fn google_error(status: StatusCode, code: &str, message: &str) -> Response<MockBody> {
    let doc =
        serde_json::json!({"error": {"code": status.as_u16(), "message": message, "status": code}});
    body_response(status, doc.to_string())
}

fn body_response(status: StatusCode, body: String) -> Response<MockBody> {
    let mut response = Response::new(MockBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
