//! The mock checked over real HTTP, with a bare hyper client (one connection per request).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::*;

struct Open {
    status: StatusCode,
    headers: HeaderMap,
    body: Incoming,
    connection: JoinHandle<()>,
}

async fn open(addr: SocketAddr, method: &str, path: &str, body: Value) -> anyhow::Result<Open> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(async move {
        let _ = conn.await;
    });
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-upstream")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    Ok(Open {
        status: parts.status,
        headers: parts.headers,
        body,
        connection,
    })
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: Value) -> Answer {
    let open = open(addr, method, path, body).await.unwrap();
    let body = open.body.collect().await.unwrap().to_bytes();
    Answer {
        status: open.status,
        headers: open.headers,
        body,
    }
}

async fn chat(mock: &MockUpstream, scenario: &str, body: Value) -> Answer {
    call(
        mock.addr(),
        "POST",
        &path(scenario, "/v1/chat/completions"),
        body,
    )
    .await
}

fn path(scenario: &str, path: &str) -> String {
    if scenario.is_empty() {
        path.to_owned()
    } else {
        format!("/s/{scenario}{path}")
    }
}

/// The JSON events of an SSE body, and whether it ended with `[DONE]`.
fn events(body: &[u8]) -> (Vec<Value>, bool) {
    let text = std::str::from_utf8(body).unwrap();
    let mut events = Vec::new();
    let mut done = false;
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event.strip_prefix("data: ").unwrap();
        assert!(!done, "nothing may follow [DONE]");
        if data == "[DONE]" {
            done = true;
        } else {
            events.push(serde_json::from_str(data).unwrap());
        }
    }
    (events, done)
}

#[tokio::test]
async fn non_stream_chat_echoes_the_model_and_reports_usage() {
    let mock = MockUpstream::start().await.unwrap();
    let request = json!({"model": "my-model", "messages": [{"role": "user", "content": "hi"}]});
    let answer = chat(&mock, "", request.clone()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-type"], "application/json");
    let doc = answer.json();
    assert_eq!(doc["model"], "my-model");
    assert_eq!(doc["object"], "chat.completion");
    assert!(doc["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert_eq!(doc["choices"][0]["message"]["role"], "assistant");
    assert_eq!(doc["choices"][0]["message"]["content"], CHAT_CONTENT);
    assert_eq!(doc["choices"][0]["finish_reason"], "stop");
    assert_eq!(doc["usage"]["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(doc["usage"]["completion_tokens"], COMPLETION_TOKENS);
    assert_eq!(doc["usage"]["total_tokens"], TOTAL_TOKENS);
    assert_eq!(doc["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    let cached = chat(&mock, "cached=7", request.clone()).await.json();
    assert_eq!(cached["usage"]["prompt_tokens_details"]["cached_tokens"], 7);
    assert_ne!(cached["id"], doc["id"]);

    let recorded = mock.requests("");
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].method, "POST");
    assert_eq!(recorded[0].path, "/v1/chat/completions");
    assert_eq!(
        recorded[0].header("authorization"),
        Some("Bearer sk-upstream")
    );
    assert_eq!(recorded[0].json(), request);
    assert_eq!(mock.requests("cached=7")[0].path, "/v1/chat/completions");
    assert_eq!(mock.request_count("cached=7"), 1);
    assert_eq!(mock.request_count("other"), 0);
}

#[tokio::test]
async fn a_stream_with_include_usage_ends_with_the_usage_chunk_and_done() {
    let mock = MockUpstream::start().await.unwrap();
    let request = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
        "messages": []});
    let answer = chat(&mock, "chunks=3,cached=2", request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-type"], "text/event-stream");
    let (events, done) = events(&answer.body);
    assert!(done);
    // role, 3 content chunks, finish, usage.
    assert_eq!(events.len(), 6);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = events[1..4]
        .iter()
        .map(|e| e["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(content, stream_content(3));
    assert_eq!(events[4]["choices"][0]["finish_reason"], "stop");
    for event in &events[..5] {
        assert_eq!(event["model"], "m");
        assert_eq!(event["object"], "chat.completion.chunk");
        assert!(event["usage"].is_null() && event.get("usage").is_some());
        assert_eq!(event["id"], events[0]["id"]);
    }
    let usage = &events[5];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(usage["usage"]["total_tokens"], PROMPT_TOKENS + 3);
    assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    assert!(
        mock.wait_for_completed_streams(1, Duration::from_secs(5))
            .await
    );
    assert_eq!(mock.cancelled_streams(), 0);
}

#[tokio::test]
async fn a_stream_without_include_usage_has_no_usage_at_all() {
    let mock = MockUpstream::start().await.unwrap();
    let answer = chat(&mock, "", json!({"model": "m", "stream": true})).await;
    let (events, done) = events(&answer.body);
    assert!(done);
    assert_eq!(events.len(), DEFAULT_STREAM_CHUNKS + 2);
    assert!(events.iter().all(|e| e.get("usage").is_none()));
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn legacy_completions_embeddings_models_and_stats() {
    let mock = MockUpstream::start().await.unwrap();
    let addr = mock.addr();
    let doc = call(
        addr,
        "POST",
        "/v1/completions",
        json!({"model": "inst", "prompt": "x"}),
    )
    .await
    .json();
    assert_eq!(doc["object"], "text_completion");
    assert_eq!(doc["model"], "inst");
    assert_eq!(doc["choices"][0]["text"], CHAT_CONTENT);
    assert_eq!(doc["usage"]["total_tokens"], TOTAL_TOKENS);

    let body = json!({"model": "inst", "prompt": "x", "stream": true,
        "stream_options": {"include_usage": true}});
    let answer = call(addr, "POST", "/s/chunks=2/v1/completions", body).await;
    let (events, done) = events(&answer.body);
    assert!(done);
    assert_eq!(events.len(), 4, "2 text chunks, finish, usage");
    assert_eq!(events[0]["choices"][0]["text"], "tok0 ");
    assert_eq!(events[2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[3]["usage"]["completion_tokens"], 2);

    let doc = call(
        addr,
        "POST",
        "/v1/embeddings",
        json!({"model": "emb", "input": "x"}),
    )
    .await
    .json();
    assert_eq!(doc["object"], "list");
    assert_eq!(doc["model"], "emb");
    assert_eq!(
        doc["data"][0]["embedding"].as_array().unwrap().len(),
        EMBEDDING_DIMENSIONS
    );
    assert_eq!(doc["usage"]["prompt_tokens"], EMBEDDING_PROMPT_TOKENS);
    assert_eq!(doc["data"].as_array().unwrap().len(), 1);

    // A list of inputs gets one embedding each, indexed in order, as OpenAI answers.
    for (input, n) in [
        (json!(["hello", "world"]), 2),
        (json!([[1, 2], [3], [4]]), 3),
        (json!([1, 2, 3]), 1),
    ] {
        let doc = call(
            addr,
            "POST",
            "/v1/embeddings",
            json!({"model": "emb", "input": input}),
        )
        .await
        .json();
        let data = doc["data"].as_array().unwrap();
        assert_eq!(data.len(), n, "{input}");
        for (i, item) in data.iter().enumerate() {
            assert_eq!(item["index"], i, "{input}");
            assert_eq!(
                item["embedding"].as_array().unwrap().len(),
                EMBEDDING_DIMENSIONS
            );
        }
    }

    let doc = call(addr, "GET", "/s/latency_ms=1/v1/models", Value::Null)
        .await
        .json();
    assert_eq!(doc["object"], "list");

    let missing = call(addr, "POST", "/v1/nothing", json!({})).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let unparsable = call(addr, "POST", "/v1/chat/completions", json!("no")).await;
    assert_eq!(unparsable.status, StatusCode::BAD_REQUEST);

    let stats = call(addr, "GET", "/mock/stats", Value::Null).await.json();
    // Four single requests and the three embeddings of lists.
    assert_eq!(stats["requests"][""], 7);
    assert_eq!(stats["requests"]["chunks=2"], 1);
    assert_eq!(stats["requests"]["latency_ms=1"], 1);
    assert_eq!(stats["completed_streams"], 1);
    assert_eq!(stats["cancelled_streams"], 0);
}

#[tokio::test]
async fn unknown_knobs_are_a_400_naming_them() {
    let mock = MockUpstream::start().await.unwrap();
    let answer = chat(&mock, "chunks=3,latnecy_ms=5", json!({"model": "m"})).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let message = answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("latnecy_ms"), "{message}");
}

#[tokio::test]
async fn fail_first_applies_the_fault_to_the_first_n_only() {
    let mock = MockUpstream::start().await.unwrap();
    let scenario = "fail_first=2,fault=500";
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(chat(&mock, scenario, json!({"model": "m"})).await.status);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::OK
        ]
    );
    assert_eq!(mock.request_count(scenario), 3);
    // Another scenario string has its own counter.
    let other = chat(&mock, "fault=500,fail_first=2", json!({"model": "m"})).await;
    assert_eq!(other.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn status_faults_have_openai_error_bodies() {
    let mock = MockUpstream::start().await.unwrap();
    let body = json!({"model": "m"});
    let limited = chat(&mock, "fault=429,retry_after=7", body.clone()).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers["retry-after"], "7");
    assert_eq!(limited.json()["error"]["type"], "rate_limit_error");
    let limited = chat(&mock, "fault=429", body.clone()).await;
    assert_eq!(limited.headers["retry-after"], "1");

    let bad = chat(&mock, "fault=400", body.clone()).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["type"], "invalid_request_error");
    assert_eq!(bad.json()["error"]["code"], "context_length_exceeded");

    let unauthorized = chat(&mock, "fault=401", body.clone()).await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unauthorized.json()["error"]["code"], "invalid_api_key");

    for (fault, status) in [
        ("500", StatusCode::INTERNAL_SERVER_ERROR),
        ("503", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let answer = chat(&mock, &format!("fault={fault}"), body.clone()).await;
        assert_eq!(answer.status, status);
        assert_eq!(answer.json()["error"]["type"], "server_error");
    }
}

#[tokio::test]
async fn connection_faults_hang_reset_and_malformed() {
    let mock = MockUpstream::start().await.unwrap();
    let addr = mock.addr();
    let body = json!({"model": "m"});
    let stream_body = json!({"model": "m", "stream": true});

    let hang = tokio::time::timeout(
        Duration::from_millis(300),
        open(
            addr,
            "POST",
            "/s/fault=hang/v1/chat/completions",
            body.clone(),
        ),
    )
    .await;
    assert!(hang.is_err(), "a hung request must not be answered");

    let reset = open(
        addr,
        "POST",
        "/s/fault=reset/v1/chat/completions",
        body.clone(),
    )
    .await;
    assert!(reset.is_err(), "a reset gives no response");

    let cut = open(
        addr,
        "POST",
        "/s/fault=reset_mid_stream/v1/chat/completions",
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(cut.status, StatusCode::OK);
    assert!(cut.body.collect().await.is_err(), "the JSON body is cut");

    let mut cut = open(
        addr,
        "POST",
        "/s/fault=reset_mid_stream,chunks=10/v1/chat/completions",
        stream_body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(cut.status, StatusCode::OK);
    let mut received = Vec::new();
    let error = loop {
        match cut.body.frame().await {
            Some(Ok(frame)) => received.extend_from_slice(frame.data_ref().unwrap()),
            Some(Err(error)) => break error,
            None => panic!("the stream must not end cleanly"),
        }
    };
    let text = String::from_utf8(received).unwrap();
    assert!(
        text.contains("tok0 ") && !text.contains("[DONE]"),
        "{text} / {error}"
    );

    let malformed = chat(&mock, "fault=malformed", body.clone()).await;
    assert_eq!(malformed.status, StatusCode::OK);
    assert!(serde_json::from_slice::<Value>(&malformed.body).is_err());
    let malformed = chat(&mock, "fault=malformed", stream_body).await;
    let text = String::from_utf8(malformed.body.to_vec()).unwrap();
    assert!(text.starts_with("data: {not json\n\n"), "{text}");
}

#[tokio::test]
async fn stream_chunks_are_spaced_by_interval_ms() {
    let mock = MockUpstream::start().await.unwrap();
    let started = Instant::now();
    let mut open = open(
        mock.addr(),
        "POST",
        "/s/interval_ms=100,chunks=3/v1/chat/completions",
        json!({"model": "m", "stream": true}),
    )
    .await
    .unwrap();
    let mut frames = 0;
    while let Some(frame) = open.body.frame().await {
        frame.unwrap();
        frames += 1;
    }
    // role, 3 chunks, finish, [DONE]: 6 events, 5 gaps of 100 ms.
    assert_eq!(frames, 6, "each event is its own frame");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn latency_ms_delays_the_head() {
    let mock = MockUpstream::start().await.unwrap();
    let started = Instant::now();
    let answer = chat(&mock, "latency_ms=150", json!({"model": "m"})).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn a_client_that_goes_away_mid_stream_is_counted_as_cancelled() {
    let mock = MockUpstream::start().await.unwrap();
    let mut open = open(
        mock.addr(),
        "POST",
        "/s/interval_ms=20,chunks=200/v1/chat/completions",
        json!({"model": "m", "stream": true}),
    )
    .await
    .unwrap();
    open.body.frame().await.unwrap().unwrap();
    drop(open.body);
    open.connection.abort();
    assert!(
        mock.wait_for_cancelled_streams(1, Duration::from_secs(5))
            .await
    );
    assert_eq!(mock.completed_streams(), 0);
}

#[tokio::test]
async fn recording_can_be_switched_off() {
    let options = MockOptions { record: false };
    let mock = MockUpstream::start_with("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    assert_eq!(
        chat(&mock, "", json!({"model": "m"})).await.status,
        StatusCode::OK
    );
    assert_eq!(mock.request_count(""), 1);
    assert!(mock.requests("").is_empty());
    assert!(mock.base_url().starts_with("http://127.0.0.1:"));
    assert!(mock.scenario_url("chunks=2").ends_with("/s/chunks=2/v1"));
}
