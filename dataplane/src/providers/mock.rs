//! The `mock` provider: deterministic answers made inside the data plane, with no network.
//!
//! It lets the README's quickstart and the offline demo work with nothing else running, and it
//! speaks exactly the wire format of an OpenAI-compatible upstream (including the final usage
//! chunk of a stream), so every later phase — streaming relay, usage capture, pricing — runs
//! unchanged on top of it. The answer depends only on the request, never on time or chance
//! (except the `created` timestamp, as OpenAI's does).

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, StatusCode, header::CONTENT_TYPE};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::json;

use super::translate;
use super::{Endpoint, ProviderAdaptor, SendError, UpstreamRequest, UpstreamResponse};

/// The in-process provider.
#[derive(Debug, Default)]
pub struct MockAdaptor;

/// The words of every mock answer; a stream sends one word per chunk.
const WORDS: [&str; 8] = [
    "Hello",
    " from",
    " Switchboard's",
    " mock",
    " provider.",
    " Your",
    " request",
    " arrived.",
];

impl MockAdaptor {
    fn answer(request: &UpstreamRequest<'_>) -> UpstreamResponse {
        let prompt_tokens = request.view.estimated_prompt_tokens();
        let completion_tokens = WORDS.len() as u64;
        let usage = json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        });
        let created = chrono::Utc::now().timestamp();
        let id = format!("mock-{}", request.request_id);
        let model = request.upstream_model;
        let text: String = WORDS.concat();

        if request.view.stream && request.endpoint.supports_streaming() {
            let chat = request.endpoint == Endpoint::ChatCompletions;
            let chunk = |choice: serde_json::Value| {
                json!({
                    "id": id,
                    "object": if chat { "chat.completion.chunk" } else { "text_completion" },
                    "created": created,
                    "model": model,
                    "choices": [choice],
                })
            };
            let mut events: Vec<serde_json::Value> = Vec::with_capacity(WORDS.len() + 3);
            if chat {
                events.push(chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null})));
            }
            for word in WORDS {
                events.push(if chat {
                    chunk(json!({"index": 0, "delta": {"content": word}, "finish_reason": null}))
                } else {
                    chunk(json!({"index": 0, "text": word, "finish_reason": null}))
                });
            }
            events.push(if chat {
                chunk(json!({"index": 0, "delta": {}, "finish_reason": "stop"}))
            } else {
                chunk(json!({"index": 0, "text": "", "finish_reason": "stop"}))
            });
            let mut usage_chunk = chunk(json!(null));
            usage_chunk["choices"] = json!([]);
            usage_chunk["usage"] = usage;
            events.push(usage_chunk);
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = events
                .iter()
                .map(|e| Ok(Frame::data(Bytes::from(format!("data: {e}\n\n")))))
                .chain(std::iter::once(Ok(Frame::data(Bytes::from_static(
                    b"data: [DONE]\n\n",
                )))))
                .collect();
            let body = StreamBody::new(futures_util::stream::iter(frames));
            return response(
                "text/event-stream",
                body.map_err(|never| match never {}).boxed(),
            );
        }

        let document = match request.endpoint {
            Endpoint::ChatCompletions
            | Endpoint::Messages
            | Endpoint::Responses
            | Endpoint::CountTokens
            | Endpoint::Passthrough => json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }],
                "usage": usage,
            }),
            Endpoint::Completions => json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                "usage": usage,
            }),
            Endpoint::Embeddings
            | Endpoint::ImagesGenerations
            | Endpoint::AudioTranscriptions
            | Endpoint::AudioSpeech => json!({
                "object": "list",
                "data": embeddings(&request.view.body),
                "model": model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            }),
        };
        let body = Full::new(Bytes::from(document.to_string()));
        response(
            "application/json",
            body.map_err(|never| match never {}).boxed(),
        )
    }
}

fn response(content_type: &'static str, body: super::UpstreamBody) -> UpstreamResponse {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    UpstreamResponse {
        status: StatusCode::OK,
        headers,
        body,
    }
}

/// An 8-dimensional unit vector that depends only on the input bytes.
/// One embedding object per input, as OpenAI answers: `input` is one string (or one list of
/// token ids), or a list of strings (or of token-id lists).
fn embeddings(body: &[u8]) -> Vec<serde_json::Value> {
    let input = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|mut doc| doc.get_mut("input").map(serde_json::Value::take))
        .unwrap_or_default();
    let inputs = match input {
        serde_json::Value::Array(items) if items.iter().all(|i| !i.is_number()) => items,
        one => vec![one],
    };
    inputs
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let bytes = match item {
                serde_json::Value::String(text) => text.as_bytes().to_vec(),
                other => other.to_string().into_bytes(),
            };
            json!({"object": "embedding", "index": index, "embedding": embedding(&bytes)})
        })
        .collect()
}

fn embedding(input: &[u8]) -> Vec<f64> {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    let raw: Vec<f64> = (0..8)
        .map(|i| {
            for &b in input.iter().chain(std::iter::once(&(i as u8))) {
                state ^= u64::from(b);
                state = state.wrapping_mul(0x0100_0000_01b3);
            }
            (state % 2001) as f64 / 1000.0 - 1.0
        })
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::EPSILON);
    raw.iter().map(|x| (x / norm * 1e6).round() / 1e6).collect()
}

impl ProviderAdaptor for MockAdaptor {
    fn send<'a>(
        &'a self,
        request: &'a UpstreamRequest<'a>,
    ) -> BoxFuture<'a, Result<UpstreamResponse, SendError>> {
        if request.endpoint.is_media() {
            let refusal = super::chat_only::not_served("Mock", request.endpoint);
            return std::future::ready(Ok(refusal)).boxed();
        }
        if !matches!(request.endpoint, Endpoint::Messages | Endpoint::Responses) {
            return std::future::ready(Ok(Self::answer(request))).boxed();
        }
        // A `/v1/messages` or `/v1/responses` client: answer as a chat completion, translated
        // like any OpenAI-compatible upstream's.
        let chat = UpstreamRequest {
            endpoint: Endpoint::ChatCompletions,
            ..*request
        };
        let answer = translate::wrap_for_client(Self::answer(&chat), request);
        std::future::ready(Ok(answer)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{RequestView, json_string_literal};

    async fn run(endpoint: Endpoint, body: &str) -> (UpstreamResponse, Bytes) {
        let view = RequestView::parse(Bytes::from(body.to_owned())).unwrap();
        let model = json_string_literal("mock-up");
        let request = UpstreamRequest {
            endpoint,
            view: &view,
            upstream_model_json: &model,
            upstream_model: "mock-up",
            request_id: "r1",
            native_responses: false,
        };
        let mut response = MockAdaptor.send(&request).await.unwrap();
        let body = std::mem::replace(
            &mut response.body,
            Full::new(Bytes::new()).map_err(|n| match n {}).boxed(),
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        (response, bytes)
    }

    #[tokio::test]
    async fn chat_answers_are_deterministic_with_usage() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let (_, a) = run(Endpoint::ChatCompletions, body).await;
        let (_, b) = run(Endpoint::ChatCompletions, body).await;
        let a: serde_json::Value = serde_json::from_slice(&a).unwrap();
        let mut b: serde_json::Value = serde_json::from_slice(&b).unwrap();
        b["created"] = a["created"].clone();
        assert_eq!(a, b);
        assert_eq!(a["model"], "mock-up");
        assert_eq!(a["usage"]["completion_tokens"], 8);
        assert_eq!(a["usage"]["prompt_tokens"], (body.len() as u64).div_ceil(4));
    }

    #[tokio::test]
    async fn streams_end_with_usage_and_done() {
        let (response, bytes) =
            run(Endpoint::ChatCompletions, r#"{"model":"m","stream":true}"#).await;
        assert_eq!(response.headers[CONTENT_TYPE], "text/event-stream");
        let text = std::str::from_utf8(&bytes).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 1 + 8 + 1 + 1 + 1);
        assert_eq!(*events.last().unwrap(), "data: [DONE]");
        let usage: serde_json::Value =
            serde_json::from_str(&events[events.len() - 2][6..]).unwrap();
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 8);
    }

    #[tokio::test]
    async fn embeddings_depend_only_on_the_input() {
        let (_, a) = run(Endpoint::Embeddings, r#"{"model":"m","input":"a"}"#).await;
        let (_, b) = run(Endpoint::Embeddings, r#"{"model":"m","input":"b"}"#).await;
        let (_, a2) = run(Endpoint::Embeddings, r#"{"model":"m","input":"a"}"#).await;
        let vec = |x: &Bytes| {
            serde_json::from_slice::<serde_json::Value>(x).unwrap()["data"][0]["embedding"].clone()
        };
        assert_eq!(vec(&a), vec(&a2));
        assert_ne!(vec(&a), vec(&b));
        assert_eq!(vec(&a).as_array().unwrap().len(), 8);
    }

    #[tokio::test]
    async fn embeddings_come_one_per_input() {
        let (_, list) = run(Endpoint::Embeddings, r#"{"model":"m","input":["a","b"]}"#).await;
        let (_, a) = run(Endpoint::Embeddings, r#"{"model":"m","input":"a"}"#).await;
        let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
        let a: serde_json::Value = serde_json::from_slice(&a).unwrap();
        let data = list["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[1]["index"], 1);
        assert_eq!(data[0]["embedding"], a["data"][0]["embedding"]);
        assert_ne!(data[0]["embedding"], data[1]["embedding"]);
        let (_, tokens) = run(Endpoint::Embeddings, r#"{"model":"m","input":[1,2,3]}"#).await;
        let tokens: serde_json::Value = serde_json::from_slice(&tokens).unwrap();
        assert_eq!(tokens["data"].as_array().unwrap().len(), 1);
    }
}
