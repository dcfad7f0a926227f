//! Images and audio (`/v1/images/generations`, `/v1/audio/transcriptions`, `/v1/audio/speech`)
//! in process, against the mock's OpenAI endpoints, with deployments priced by LiteLLM's real
//! price file (`gpt-image-1` with its size and quality entries gathered as the control plane
//! does, `whisper-1`, `tts-1`): each call reaches the upstream with the credential injected
//! and only the model changed, and its usage record and budget charge equal the file's figure.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use common::*;
use http::Method;
use serde_json::{Value, json};
use switchboard_shared::price::{PriceEntry, attach_image_variants, parse_price_file};
use switchboard_tests::mock::media::{AUDIO_BYTES_PER_SECOND, TRANSCRIPT, speech_audio};

const PRICE_FILE: &str = "../shared/data/model_prices_and_context_window.json";
const BOUNDARY: &str = "----switchboard-test-7MA4YWxkTrZu0gW";

fn prices() -> &'static BTreeMap<String, PriceEntry> {
    static PRICES: OnceLock<BTreeMap<String, PriceEntry>> = OnceLock::new();
    PRICES.get_or_init(|| parse_price_file(&std::fs::read_to_string(PRICE_FILE).unwrap()).unwrap())
}

/// The file's entry for `model`, with its image variants as the snapshot build attaches them,
/// as snapshot JSON.
fn price_json(model: &str) -> String {
    let mut entry = prices()[model].clone();
    attach_image_variants(&mut entry, model, prices());
    serde_json::to_string(&entry).unwrap()
}

/// A per-unit rate stated by the file's entry `name`, by field name.
fn file_rate(name: &str, field: &str) -> f64 {
    let raw: Value = serde_json::from_str(&std::fs::read_to_string(PRICE_FILE).unwrap()).unwrap();
    raw[name][field]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}.{field}"))
}

fn config(root: &str, key_extra: &str) -> String {
    let rest = format!(
        "providers:
  - {{ id: oai, kind: openai, base_url: \"{root}\", api_key: {{ value: sk-oai-upstream }} }}
  - {{ id: ant, kind: anthropic, base_url: \"{root}\", api_key: {{ value: sk-ant-upstream }} }}
deployments:
  - {{ id: d-img, model: img, provider: oai, upstream_model: gpt-image-1, price: {img} }}
  - {{ id: d-stt, model: stt, provider: oai, upstream_model: whisper-1, price: {stt} }}
  - {{ id: d-tts, model: tts, provider: oai, upstream_model: tts-1, price: {tts} }}
  - {{ id: d-claude, model: claude, provider: ant, upstream_model: claude-up }}
",
        img = price_json("gpt-image-1"),
        stt = price_json("whisper-1"),
        tts = price_json("tts-1"),
    );
    config_yaml(&snapshot(key_extra, &rest), "")
}

async fn post_json(gw: &Gateway, path: &str, body: &Value) -> Reply {
    send(request(
        Method::POST,
        &gw.url(path),
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    ))
    .await
}

/// A multipart transcription upload as the OpenAI SDK sends it.
fn upload(model: &str, audio: &[u8], response_format: Option<&str>) -> Vec<u8> {
    let mut body = Vec::new();
    let mut text = |name: &str, value: &str| {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    };
    text("model", model);
    if let Some(format) = response_format {
        text("response_format", format);
    }
    body.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"speech.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(audio);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn transcribe(gw: &Gateway, body: Vec<u8>) -> Reply {
    send(request(
        Method::POST,
        &gw.url("/v1/audio/transcriptions"),
        &[
            ("authorization", &format!("Bearer {KEY}")),
            (
                "content-type",
                &format!("multipart/form-data; boundary={BOUNDARY}"),
            ),
        ],
        body,
    ))
    .await
}

fn assert_close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() <= 1e-12 * expected.abs().max(1e-9),
        "{actual} != {expected}"
    );
}

#[tokio::test]
async fn images_are_priced_per_image_at_the_size_and_quality_of_the_answer() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock.base_url(),
        ", budget: { max_usd: 100, period: monthly }",
    ))
    .await;
    let body = json!({"model": "img", "prompt": "a red fox", "n": 2, "size": "1024x1536", "quality": "medium"});
    let reply = post_json(&gw, "/v1/images/generations", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["data"].as_array().unwrap().len(), 2);
    assert_eq!(answer["quality"], "medium");
    let sent = mock.requests("").pop().unwrap();
    assert_eq!(sent.path, "/v1/images/generations");
    assert_eq!(sent.headers["authorization"], "Bearer sk-oai-upstream");
    let mut expected = body.clone();
    expected["model"] = "gpt-image-1".into();
    assert_eq!(
        serde_json::from_slice::<Value>(&sent.body).unwrap(),
        expected
    );

    // No quality asked for: the mock (like OpenAI's `auto`) answers `high`, which prices it.
    let body = json!({"model": "img", "prompt": "a blue fox"});
    let reply = post_json(&gw, "/v1/images/generations", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["quality"], "high");

    let records = gw.usage_records(2).await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].endpoint, "images_generations");
    let medium = file_rate("medium/1024-x-1536/gpt-image-1", "input_cost_per_image");
    assert_close(medium, 0.063);
    assert_close(records[0].cost_usd, 2.0 * medium);
    let high = file_rate("high/1024-x-1024/gpt-image-1", "input_cost_per_image");
    assert_close(high, 0.167);
    assert_close(records[1].cost_usd, high);
    // The tokens the answer reported are recorded beside the per-image price.
    assert!(records[0].usage_reported);
    assert_eq!(records[0].usage.prompt_tokens, 50);

    // The budget was charged exactly the same.
    let info = key_info(&gw).await;
    let spent = info["key"]["budget"]["spent_usd"].as_f64().unwrap();
    assert!((spent - (2.0 * medium + high)).abs() < 1e-6, "{info}");
}

#[tokio::test]
async fn a_transcription_upload_goes_through_whole_and_is_priced_per_second() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.base_url(), "")).await;
    let audio: Vec<u8> = (0..3 * AUDIO_BYTES_PER_SECOND)
        .map(|i| (i % 253) as u8)
        .collect();
    let reply = transcribe(&gw, upload("stt", &audio, None)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["text"], TRANSCRIPT);
    let sent = mock.requests("").pop().unwrap();
    assert_eq!(sent.path, "/v1/audio/transcriptions");
    assert_eq!(sent.headers["authorization"], "Bearer sk-oai-upstream");
    assert_eq!(
        sent.headers["content-type"],
        format!("multipart/form-data; boundary={BOUNDARY}").as_str()
    );
    // Byte for byte what the client sent, but for the model's value.
    assert_eq!(sent.body, upload("whisper-1", &audio, None));

    // verbose_json states a duration of 2.5 s; OpenAI bills whole seconds (`usage.seconds`).
    let short = vec![7u8; AUDIO_BYTES_PER_SECOND * 5 / 2];
    let reply = transcribe(&gw, upload("stt", &short, Some("verbose_json"))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["duration"], 2.5);
    // Plain text states none: charged the estimate from the upload's size (4,000 B/s).
    let reply = transcribe(&gw, upload("stt", &short, Some("text"))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.text().starts_with(TRANSCRIPT));

    let records = gw.usage_records(3).await;
    let per_second = file_rate("whisper-1", "input_cost_per_second");
    assert_close(per_second, 0.0001);
    assert_eq!(records[0].endpoint, "audio_transcriptions");
    assert_close(records[0].cost_usd, 3.0 * per_second);
    assert_close(records[1].cost_usd, 3.0 * per_second);
    assert_close(records[2].cost_usd, 10.0 * per_second);
}

#[tokio::test]
async fn speech_is_relayed_as_binary_audio_and_priced_per_character() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.base_url(), "")).await;
    let input = "Bonjour, ça va? The fox jumps.";
    let characters = input.chars().count();
    let body = json!({"model": "tts", "input": input, "voice": "alloy"});
    let reply = post_json(&gw, "/v1/audio/speech", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["content-type"], "audio/mpeg");
    assert_eq!(reply.body, speech_audio(characters));
    let sent = mock.requests("").pop().unwrap();
    assert_eq!(sent.path, "/v1/audio/speech");
    let mut expected = body.clone();
    expected["model"] = "tts-1".into();
    assert_eq!(
        serde_json::from_slice::<Value>(&sent.body).unwrap(),
        expected
    );

    let record = gw.usage_records(1).await.pop().unwrap();
    assert_eq!(record.endpoint, "audio_speech");
    assert_eq!(record.status, 200);
    let per_character = file_rate("tts-1", "input_cost_per_character");
    assert_close(per_character, 1.5e-5);
    assert_close(record.cost_usd, characters as f64 * per_character);
}

#[tokio::test]
async fn models_without_an_openai_deployment_are_refused_naming_the_kind() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.base_url(), "")).await;
    let body = json!({"model": "claude", "prompt": "a fox"});
    let reply = post_json(&gw, "/v1/images/generations", &body).await;
    let error = reply.openai_error(400);
    assert!(
        error["message"].as_str().unwrap().contains("`openai`"),
        "{error}"
    );
    let body = json!({"model": "claude", "input": "hi", "voice": "alloy"});
    post_json(&gw, "/v1/audio/speech", &body)
        .await
        .openai_error(400);
    assert_eq!(mock.request_count(""), 0);
    // A stream of images is refused rather than mis-relayed.
    let body = json!({"model": "img", "prompt": "a fox", "stream": true});
    let error = post_json(&gw, "/v1/images/generations", &body)
        .await
        .openai_error(400);
    assert_eq!(error["param"], "stream");
}

#[tokio::test]
async fn media_requests_are_refused_at_the_budget() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock.base_url(),
        ", budget: { max_usd: 0.1, period: monthly }",
    ))
    .await;
    let body = json!({"model": "img", "prompt": "a fox", "quality": "high"});
    let reply = post_json(&gw, "/v1/images/generations", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // $0.167 spent of $0.10: the next request is refused before the upstream.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = mock.request_count("");
    let reply = post_json(&gw, "/v1/images/generations", &body).await;
    let error = reply.openai_error(429);
    assert!(
        error["message"].as_str().unwrap().contains("budget"),
        "{error}"
    );
    let upload = upload("stt", &[1u8; 100], None);
    transcribe(&gw, upload).await.openai_error(429);
    assert_eq!(mock.request_count(""), before);
}

fn python() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("SWITCHBOARD_PYTHON") {
        return p.into();
    }
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/.venv/bin/python")
}

/// The official `openai` SDK (tests/python/test_media_sdk.py): `images.generate`,
/// `audio.transcriptions.create`, `audio.speech.create`; each call's record costs what the
/// price file states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_media_calls_work_and_are_priced_from_the_file() {
    let python = python();
    assert!(
        python.exists(),
        "{} not found: run scripts/test (it creates the venv from tests/python/requirements.txt), \
         or set SWITCHBOARD_PYTHON to an interpreter with openai and pytest installed",
        python.display()
    );
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.base_url(), "")).await;
    let suite =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/test_media_sdk.py");
    let output = tokio::process::Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(suite)
        .env("SWITCHBOARD_ROOT_URL", gw.url(""))
        .env("SWITCHBOARD_KEY", KEY)
        .output()
        .await
        .expect("pytest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the SDK suite failed:\n{stdout}");
    assert!(
        stdout.contains("6 passed"),
        "expected 6 SDK tests:\n{stdout}"
    );

    // Five calls reached the upstream (the sixth was refused before it) and were priced.
    let records = gw.usage_records(6).await;
    let costs: BTreeMap<&str, Vec<f64>> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        m.entry(r.endpoint.as_str()).or_default().push(r.cost_usd);
        m
    });
    let medium = file_rate("medium/1024-x-1536/gpt-image-1", "input_cost_per_image");
    assert_eq!(costs["images_generations"].len(), 2, "{costs:?}");
    assert!(
        costs["images_generations"]
            .iter()
            .any(|c| (c - 2.0 * medium).abs() < 1e-12)
    );
    let per_second = file_rate("whisper-1", "input_cost_per_second");
    for cost in &costs["audio_transcriptions"] {
        assert_close(*cost, 3.0 * per_second);
    }
    let per_character = file_rate("tts-1", "input_cost_per_character");
    let mut speech = costs["audio_speech"].clone();
    speech.sort_by(f64::total_cmp);
    assert_close(speech[0], 2.0 * per_character);
    assert_close(speech[1], 17.0 * per_character);
}
