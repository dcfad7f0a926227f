//! The mock's HTTP/1.1 server: accept loop, routing, scenario faults.
//!
//! Plain hyper rather than a framework, so that the mock costs little next to the gateway it
//! measures: a request is one lock for the counters, one borrowed parse of `model`/`stream`,
//! and a splice into a pre-rendered template.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::body::MockBody;
use super::render::{
    self, ERROR_CONTEXT_LENGTH, ERROR_INSUFFICIENT_QUOTA, ERROR_INVALID_API_KEY, ERROR_OVERLOADED,
    ERROR_RATE_LIMIT, ERROR_SERVER, Reply,
};
use super::scenario::{Fault, Scenario, split_scenario};
use super::state::{RecordedRequest, State};
use super::{anthropic, bedrock, gemini, media, vertex};

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");

/// The body of a `malformed` non-stream answer: cut-off JSON.
const MALFORMED_JSON: &[u8] = br#"{"id":"chatcmpl-mock","object":"chat.completion","choices":[{"#;
/// The bad event of a `malformed` stream.
const MALFORMED_EVENT: &[u8] = b"data: {not json\n\n";

/// Serves connections from `listener` until the task is aborted; aborting it also ends every
/// connection, since they live in this task's `JoinSet`.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    state.connections_accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    connections.spawn(serve_connection(stream, Arc::clone(&state)));
                }
                Err(error) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "mock upstream: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    // Small SSE frames must leave at once, as they would from a real upstream.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(req, Arc::clone(&state)));
    // A connection ending in an error (client gone, deliberate reset) is routine here.
    let _ = http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The error a handler returns to make hyper drop the connection without a response.
#[derive(Debug)]
pub struct DeliberateReset;

impl std::fmt::Display for DeliberateReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock upstream: fault=reset")
    }
}

impl std::error::Error for DeliberateReset {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Chat,
    Completions,
    Embeddings,
    Models,
    /// The Responses API ([`super::responses`]).
    Responses,
}

impl Route {
    fn of(method: &Method, path: &str) -> Option<Self> {
        match (method, path) {
            (&Method::POST, "/v1/chat/completions") => Some(Self::Chat),
            (&Method::POST, "/v1/completions") => Some(Self::Completions),
            (&Method::POST, "/v1/embeddings") => Some(Self::Embeddings),
            (&Method::POST, "/v1/responses") => Some(Self::Responses),
            (&Method::GET, "/v1/models") => Some(Self::Models),
            // Azure OpenAI: /openai/deployments/{deployment}/<the OpenAI path>.
            (&Method::POST, p) if p.starts_with("/openai/deployments/") => {
                let rest = &p["/openai/deployments/".len()..];
                let (deployment, api) = rest.split_once('/')?;
                if deployment.is_empty() {
                    return None;
                }
                match api {
                    "chat/completions" => Some(Self::Chat),
                    "completions" => Some(Self::Completions),
                    "embeddings" => Some(Self::Embeddings),
                    "responses" => Some(Self::Responses),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// The non-OpenAI wire formats, each answered by its own module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProviderRoute {
    Anthropic,
    AnthropicCountTokens,
    Gemini {
        stream: bool,
    },
    Bedrock {
        stream: bool,
    },
    /// Vertex AI's token endpoint and model paths.
    Vertex(vertex::Route),
}

impl ProviderRoute {
    fn of(method: &Method, path: &str) -> Option<Self> {
        if method != Method::POST {
            return None;
        }
        if path == "/v1/messages" {
            return Some(Self::Anthropic);
        }
        if path == "/v1/messages/count_tokens" {
            return Some(Self::AnthropicCountTokens);
        }
        gemini::route(path)
            .map(|stream| Self::Gemini { stream })
            .or_else(|| bedrock::route(path).map(|stream| Self::Bedrock { stream }))
            .or_else(|| vertex::route(path).map(Self::Vertex))
    }
}

/// The few request fields the mock reads.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    /// A chat request with tools gets the tool-call fixture.
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    /// An embeddings request's input: one vector per string (or token list) in a list.
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

/// How many embeddings `input` asks for, as OpenAI counts them: a list of strings or of token
/// lists is one per element; a string or one token list is one.
fn embedding_inputs(input: Option<&RawValue>) -> usize {
    let Some(items) = input.and_then(|i| serde_json::from_str::<Vec<&RawValue>>(i.get()).ok())
    else {
        return 1;
    };
    if items.iter().all(|i| i.get().starts_with(['"', '['])) {
        items.len().max(1)
    } else {
        1
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Answers one request, counted in flight from its arrival until its answer's last frame.
async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<MockBody>, DeliberateReset> {
    if split_scenario(req.uri().path()).1 == "/mock/stats" {
        return Ok(json(StatusCode::OK, state.stats_json()));
    }
    let guard = state.enter();
    let response = answer(req, state).await?;
    Ok(response.map(|body| body.holding(guard)))
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<MockBody>, DeliberateReset> {
    let (parts, body) = req.into_parts();
    let (scenario_text, path) = split_scenario(parts.uri.path());
    if path == "/mock/stats" {
        return Ok(json(StatusCode::OK, state.stats_json()));
    }
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return Ok(invalid_request("could not read the request body"));
    };
    let index = state.record(scenario_text, || RecordedRequest {
        method: parts.method.to_string(),
        path: path.to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body: body.clone(),
        received_at: Instant::now(),
    });
    let scenario = match Scenario::parse(scenario_text) {
        Ok(scenario) => scenario,
        Err(error) => return Ok(invalid_request(&error.0)),
    };
    if let Some(provider) = ProviderRoute::of(&parts.method, path) {
        if scenario.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(scenario.latency_ms)).await;
        }
        let fault = scenario.fault_for(index);
        if matches!(fault, Some(Fault::Hang | Fault::Reset)) {
            fault_response(fault, &scenario).await?;
        }
        let headers = &parts.headers;
        return Ok(match provider {
            ProviderRoute::Anthropic => {
                anthropic::respond(headers, &body, &scenario, fault, &state)
            }
            ProviderRoute::AnthropicCountTokens => anthropic::count_tokens(headers, &body),
            ProviderRoute::Gemini { stream } => gemini::respond(
                stream,
                parts.uri.query(),
                headers,
                &body,
                &scenario,
                fault,
                &state,
            ),
            ProviderRoute::Bedrock { stream } => bedrock::respond(
                stream,
                parts.uri.path(),
                headers,
                &body,
                &scenario,
                fault,
                &state,
            ),
            ProviderRoute::Vertex(route) => {
                let call = vertex::Call {
                    route,
                    full_path: parts.uri.path(),
                    query: parts.uri.query(),
                    headers,
                    body: &body,
                    scenario: &scenario,
                    fault,
                };
                vertex::respond(&call, &state)
            }
        });
    }
    if let Some(route) = media::MediaRoute::of(path).filter(|_| parts.method == Method::POST) {
        if scenario.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(scenario.latency_ms)).await;
        }
        if let Some(response) = fault_response(scenario.fault_for(index), &scenario).await? {
            return Ok(response);
        }
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        return Ok(media::respond(route, &parts.headers, &body, created));
    }
    if path.starts_with("/openai/deployments/")
        && !parts
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("api-version=")))
    {
        return Ok(error_json(
            StatusCode::NOT_FOUND,
            "Resource not found: the api-version query parameter is required",
            "invalid_request_error",
        ));
    }
    let Some(route) = Route::of(&parts.method, path) else {
        return Ok(error_json(
            StatusCode::NOT_FOUND,
            &format!("Invalid URL ({} {path})", parts.method),
            "invalid_request_error",
        ));
    };
    if scenario.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(scenario.latency_ms)).await;
    }
    if let Some(expected) = &scenario.api_key {
        let bearer = parts.headers.get(http::header::AUTHORIZATION);
        let given = bearer.and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "));
        if given != Some(expected.as_str()) {
            let body = Bytes::from_static(ERROR_INVALID_API_KEY.as_bytes());
            return Ok(json(StatusCode::UNAUTHORIZED, body));
        }
    }
    let fault = scenario.fault_for(index);
    if let Some(response) = fault_response(fault, &scenario).await? {
        return Ok(response);
    }
    let output = match render_output(route, &body, &scenario, &state) {
        Ok(output) => output,
        Err(message) => return Ok(invalid_request(message)),
    };
    let interval = Duration::from_millis(scenario.interval_ms);
    let mut response = respond(hostile(output, &scenario), fault, interval, &state);
    if let Some(reset) = scenario
        .ratelimit_reset
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-remaining-requests", HeaderValue::from(0));
        headers.insert("x-ratelimit-reset-tokens", reset.clone());
        headers.insert("x-ratelimit-reset-requests", reset);
    }
    Ok(response)
}

/// The OpenAI answer as the scenario's hostile or unusual upstream would send it: padded past
/// any size cap (`oversize`), with LiteLLM's usage chunk (`litellm_usage`), with other line
/// ends (`line_ends`).
fn hostile(output: Output, scenario: &Scenario) -> Output {
    const FRAME: usize = 64 * 1024;
    if let Some(size) = scenario.oversize {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        return match output {
            Output::Json(_) => {
                let mut body = Vec::with_capacity(size);
                body.extend_from_slice(b"{\"padding\":\"");
                body.resize(size.saturating_sub(2).max(body.len()), b'x');
                body.extend_from_slice(b"\"}");
                Output::Json(Bytes::from(body))
            }
            Output::Stream(_) => {
                let mut frames = vec![Bytes::from_static(b"data: ")];
                let mut left = size;
                while left > 0 {
                    let n = left.min(FRAME);
                    frames.push(Bytes::from(vec![b'x'; n]));
                    left -= n;
                }
                Output::Stream(frames)
            }
        };
    }
    let Output::Stream(events) = output else {
        return output;
    };
    let events = events.into_iter().map(|event| {
        let mut event = event.to_vec();
        let text = String::from_utf8_lossy(&event);
        if scenario.litellm_usage && text.contains("\"usage\":{") {
            event = text
                .replace("\"choices\":[]", "\"choices\":[{\"index\":0,\"delta\":{}}]")
                .into_bytes();
        }
        let end = scenario.line_ends.as_bytes();
        if end != b"\n" {
            event = event.split(|&b| b == b'\n').collect::<Vec<_>>().join(end);
        }
        Bytes::from(event)
    });
    Output::Stream(events.collect())
}

/// Answers for the faults that need no response body of the route; `None` for the others.
async fn fault_response(
    fault: Option<Fault>,
    scenario: &Scenario,
) -> Result<Option<Response<MockBody>>, DeliberateReset> {
    let (status, body) = match fault {
        None | Some(Fault::ResetMidStream | Fault::Malformed) => return Ok(None),
        Some(Fault::Hang) => match std::future::pending::<Infallible>().await {},
        Some(Fault::Reset) => return Err(DeliberateReset),
        Some(Fault::RateLimited) => (StatusCode::TOO_MANY_REQUESTS, ERROR_RATE_LIMIT),
        Some(Fault::ServerError) => (StatusCode::INTERNAL_SERVER_ERROR, ERROR_SERVER),
        Some(Fault::Unavailable) => (StatusCode::SERVICE_UNAVAILABLE, ERROR_OVERLOADED),
        Some(Fault::BadRequest) => (StatusCode::BAD_REQUEST, ERROR_CONTEXT_LENGTH),
        Some(Fault::Unauthorized) => (StatusCode::UNAUTHORIZED, ERROR_INVALID_API_KEY),
        Some(Fault::QuotaExhausted) => (StatusCode::TOO_MANY_REQUESTS, ERROR_INSUFFICIENT_QUOTA),
    };
    let mut response = json(status, Bytes::from_static(body.as_bytes()));
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(scenario.retry_after_secs()));
    }
    Ok(Some(response))
}

/// A normal answer's body, before any body-level fault is applied.
enum Output {
    Json(Bytes),
    Stream(Vec<Bytes>),
}

fn render_output(
    route: Route,
    body: &[u8],
    scenario: &Scenario,
    state: &State,
) -> Result<Output, &'static str> {
    let templates = &state.templates;
    if route == Route::Models {
        return Ok(Output::Json(templates.models.clone()));
    }
    if route == Route::Responses {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        return match super::responses::render(body, state.next_id(), created) {
            Ok((true, events)) => Ok(Output::Stream(events)),
            Ok((false, mut body)) => Ok(Output::Json(body.pop().unwrap_or_default())),
            Err(_) => Err(
                "invalid Responses API request (model and input are required; previous_response_id is not served)",
            ),
        };
    }
    let peek: Peek<'_> = serde_json::from_slice(body).map_err(|_| {
        "We could not parse the JSON body of your request. (HINT: This likely means you \
         aren't using your HTTP library correctly.)"
    })?;
    let model = match peek.model {
        Some(raw) if raw.get().starts_with('"') => raw.get().as_bytes(),
        Some(_) => return Err("model must be a string"),
        None => return Err("you must provide a model parameter"),
    };
    let reply = Reply {
        model,
        id: state.next_id(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        prompt: scenario.prompt_tokens(),
        cached: scenario.cached,
    };
    let stream =
        peek.stream.unwrap_or(false) && route != Route::Embeddings && !scenario.stream_as_json;
    let include_usage = scenario.litellm_usage
        || peek
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
    let chunks = scenario.stream_chunks();
    let tools = peek
        .tools
        .is_some_and(|t| t.get().trim() != "[]" && t.get() != "null");
    if route == Route::Chat && tools {
        return Ok(if stream {
            Output::Stream(render::tool_call_stream(include_usage))
        } else {
            Output::Json(Bytes::from_static(render::TOOL_CALLS.as_bytes()))
        });
    }
    Ok(match (route, stream) {
        (Route::Chat, false) => Output::Json(templates.chat(&reply)),
        (Route::Chat, true) => Output::Stream(templates.chat_stream(&reply, chunks, include_usage)),
        (Route::Completions, false) => Output::Json(templates.completion(&reply)),
        (Route::Completions, true) => {
            Output::Stream(templates.completion_stream(&reply, chunks, include_usage))
        }
        (Route::Embeddings | Route::Models | Route::Responses, _) => {
            Output::Json(templates.embedding(&reply, embedding_inputs(peek.input)))
        }
    })
}

fn respond(
    output: Output,
    fault: Option<Fault>,
    interval: Duration,
    state: &Arc<State>,
) -> Response<MockBody> {
    match (output, fault) {
        (Output::Json(_), Some(Fault::Malformed)) => {
            json(StatusCode::OK, Bytes::from_static(MALFORMED_JSON))
        }
        (Output::Json(body), Some(Fault::ResetMidStream)) => {
            let half = body.len() / 2;
            let frames = vec![body.slice(..half), body.slice(half..)];
            let length = HeaderValue::from(body.len());
            let body = MockBody::frames(frames).cut_after(1);
            let mut response = with_type(StatusCode::OK, JSON, body);
            response.headers_mut().insert(CONTENT_LENGTH, length);
            response
        }
        (Output::Json(body), _) => json(StatusCode::OK, body),
        (Output::Stream(_), Some(Fault::Malformed)) => {
            let frames = vec![
                Bytes::from_static(MALFORMED_EVENT),
                Bytes::from_static(render::DONE_EVENT),
            ];
            let body = MockBody::stream(frames, interval, Arc::clone(state));
            with_type(StatusCode::OK, EVENT_STREAM, body)
        }
        (Output::Stream(events), fault) => {
            let keep = events.len() / 2;
            let body = MockBody::stream(events, interval, Arc::clone(state));
            let body = if fault == Some(Fault::ResetMidStream) {
                body.cut_after(keep)
            } else {
                body
            };
            with_type(StatusCode::OK, EVENT_STREAM, body)
        }
    }
}

fn with_type(status: StatusCode, content_type: HeaderValue, body: MockBody) -> Response<MockBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

fn json(status: StatusCode, body: Bytes) -> Response<MockBody> {
    with_type(status, JSON, MockBody::full(body))
}

/// An OpenAI-shaped error with a message made on the spot (rare paths only).
fn error_json(status: StatusCode, message: &str, kind: &str) -> Response<MockBody> {
    let doc = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": null }
    });
    json(status, Bytes::from(doc.to_string()))
}

fn invalid_request(message: &str) -> Response<MockBody> {
    error_json(StatusCode::BAD_REQUEST, message, "invalid_request_error")
}
