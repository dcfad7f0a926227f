//! The fuzz targets: each takes one input and returns `Err` with a reason when a property
//! fails; a panic is caught by the runner ([`crate::run`]). Every target also runs under the
//! runner's allocation bound. The properties beyond "no panic":
//! - `sse`: the events found do not depend on how the stream was cut into reads;
//! - `relay`: without usage stripping the relay's output is its input, byte for byte; with it,
//!   never more than twice the input;
//! - stream translators: output linear in the input ([`MAX_GROWTH`]);
//! - `request`: a valid JSON body the parser accepts is still JSON after the gateway's edits
//!   (model replaced, usage reporting switched on), and wherever the scan reads the body's
//!   fields serde reads the same ones;
//! - `snapshot`: a snapshot that validates survives its canonical JSON unchanged;
//! - `prices`: every parsed entry's serialisation reads back strictly as the same entry;
//! - `usage_body`: a complete answer's usage is read (by a validating scan and serde on its
//!   usage alone) exactly as serde reads the whole body, refusals included.

use bytes::Bytes;
use dataplane::accounting::usage_from_body_agrees;
use dataplane::providers::bedrock::eventstream::{self, EventStream};
use dataplane::providers::translate::{
    Sse, StreamTranslator, Translated, anthropic_openai, openai_anthropic, openai_bedrock,
    openai_gemini, responses_openai,
};
use dataplane::relay::SseRelay;
use dataplane::request::{RequestView, scanned_fields_agree};
use dataplane::sse::{self, EventScanner};
use futures_util::StreamExt;
use serde_json::Value;
use switchboard_shared::price::{PriceEntry, parse_price_file};
use switchboard_shared::pricing::cost;
use switchboard_shared::snapshot::Snapshot;
use switchboard_shared::usage::Usage;

use crate::drive::{self, pieces, trickle};

/// A translated stream may be this many times its input, plus [`SLACK`] bytes: each upstream
/// event becomes at most a few client events of bounded size (ids and model names repeated).
const MAX_GROWTH: usize = 64;
const SLACK: usize = 64 * 1024;

pub type Check = Result<(), String>;

/// A target: its name (also its corpus directory), the function, the tokens the mutator adds
/// for it, and how its seeds are derived from the checked-in corpus.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> Check,
    pub tokens: &'static [&'static [u8]],
    pub derive: fn(Vec<Vec<u8>>) -> Vec<Vec<u8>>,
}

const JSON_TOKENS: &[&[u8]] = &[
    b"\"model\":",
    b"\"messages\":",
    b"\"content\":",
    b"\"role\":\"user\"",
    b"\"stream\":true",
    b"\"stream_options\":{\"include_usage\":false}",
    b"\"max_tokens\":",
    b"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}]",
    b"\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\"}}]",
    b"\"image_url\":{\"url\":\"data:image/png;base64,AAAA\"}",
];

const STREAM_TOKENS: &[&[u8]] = &[
    b"event: message_delta\n",
    b"event: content_block_start\n",
    b"event: content_block_delta\n",
    b"event: error\n",
    b"\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":18446744073709551615}",
    b"\"usage\":{\"input_tokens\":-1,\"output_tokens\":1e30}",
    b"\"usageMetadata\":{\"promptTokenCount\":1}",
    b"\"choices\":[{\"index\":0,\"delta\":{}}]",
    b"\"index\":4294967295",
    b"\"contentBlockIndex\":18446744073709551615",
    b"\"tool_calls\":[{\"index\":99999999,\"function\":{\"arguments\":\"x\"}}]",
    b"\"finish_reason\":\"length\"",
    b":keep-alive\n",
];

const USAGE_TOKENS: &[&[u8]] = &[
    b"\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2},",
    b"\"usage\":{\"input_tokens\":3,\"cache_read_input_tokens\":1},",
    b"\"prompt_tokens_details\":{\"cached_tokens\":4}",
    b"\"usageMetadata\":{\"promptTokenCount\":1,\"candidatesTokenCount\":2},",
    b"\"us\\u0061ge\":",
    b"\"\\ud800\\u00e9\"",
    b"\"\xff\xc3\"",
    b"1e999",
    b"-0.5E+3",
    b"18446744073709551616",
    b"[[[[[[[[[[[[[[[[",
    b"]]]]]]]]]]]]]]]]",
];

pub fn all() -> Vec<Target> {
    let keep = |seeds| seeds;
    vec![
        Target {
            name: "request",
            run: request,
            tokens: JSON_TOKENS,
            derive: keep,
        },
        Target {
            name: "sse",
            run: sse_scanner,
            tokens: STREAM_TOKENS,
            derive: keep,
        },
        Target {
            name: "relay",
            run: relay,
            tokens: STREAM_TOKENS,
            derive: keep,
        },
        Target {
            name: "anthropic_stream",
            run: anthropic_stream,
            tokens: STREAM_TOKENS,
            derive: keep,
        },
        Target {
            name: "openai_stream",
            run: openai_stream,
            tokens: STREAM_TOKENS,
            derive: keep,
        },
        Target {
            name: "gemini_stream",
            run: gemini_stream,
            tokens: STREAM_TOKENS,
            derive: keep,
        },
        Target {
            name: "bedrock_stream",
            run: bedrock_stream,
            tokens: STREAM_TOKENS,
            derive: bedrock_seeds,
        },
        Target {
            name: "snapshot",
            run: snapshot,
            tokens: &[],
            derive: keep,
        },
        Target {
            name: "prices",
            run: prices,
            tokens: &[],
            derive: keep,
        },
        Target {
            name: "usage_body",
            run: usage_from_body_agrees,
            tokens: USAGE_TOKENS,
            derive: keep,
        },
    ]
}

/// Client bodies: the parser every route uses, the gateway's edit of the body, and each
/// translation of a client body into another provider's request.
fn request(input: &[u8]) -> Check {
    scanned_fields_agree(input)?;
    // serde_json skips the strings of fields it ignores without checking their UTF-8, so the
    // parser passes such bytes on as they came: only valid JSON must stay valid.
    let valid = serde_json::from_slice::<Value>(input).is_ok();
    if valid && let Ok(view) = RequestView::parse(Bytes::copy_from_slice(input)) {
        let _ = view.estimated_prompt_tokens();
        let _ = view.prompt_bytes();
        let edited = view.upstream_body(b"\"fuzz-model\"");
        if serde_json::from_slice::<Value>(&edited).is_err() {
            return Err(format!(
                "the edited body is not JSON: {}",
                String::from_utf8_lossy(&edited)
            ));
        }
    }
    let stream = drive::hash(input).is_multiple_of(2);
    let _ = anthropic_openai::request(input, "fuzz-model", stream);
    let _ = openai_anthropic::request(input, "fuzz-model", stream);
    let _ = responses_openai::request(input, "fuzz-model", stream);
    let _ = openai_gemini::request(input);
    let _ = openai_bedrock::request(input);
    Ok(())
}

/// The SSE scanner: the same event ends whether the stream comes whole or in pieces.
fn sse_scanner(input: &[u8]) -> Check {
    let mut whole = Vec::new();
    EventScanner::default().feed(input, |end| whole.push(end));
    let mut cut = Vec::new();
    let mut scanner = EventScanner::default();
    let mut offset = 0;
    for piece in pieces(input) {
        scanner.feed(&piece, |end| cut.push(offset + end));
        offset += piece.len();
    }
    // A CRLF split between two reads ends its event one byte earlier (the LF is left over).
    let same = whole.len() == cut.len()
        && whole
            .iter()
            .zip(&cut)
            .all(|(w, c)| w == c || *w == c + 1 && input[*c] == b'\n');
    if !same {
        return Err(format!(
            "event ends differ: whole {whole:?}, in pieces {cut:?}"
        ));
    }
    let mut start = 0;
    for end in whole {
        let event = &input[start..end];
        let _ = sse::text_bytes(event);
        let line_bytes: usize = sse::lines(event).map(<[u8]>::len).sum();
        if line_bytes > event.len() {
            return Err("lines longer than their event".into());
        }
        start = end;
    }
    Ok(())
}

/// The passthrough relay, with and without usage stripping.
fn relay(input: &[u8]) -> Check {
    let strip = drive::hash(input).is_multiple_of(2);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
    let out = drive::block_on(async {
        let mut relay = SseRelay::unaccounted(trickle(pieces(input)), strip, deadline);
        let mut out = Vec::new();
        while let Some(item) = relay.next().await {
            match item {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(out)
    })?;
    if !strip && out != input {
        return Err("the relay changed a stream it had nothing to strip from".into());
    }
    if out.len() > 2 * input.len() + 1024 {
        return Err(format!(
            "{} bytes relayed for {} in",
            out.len(),
            input.len()
        ));
    }
    Ok(())
}

/// Anthropic's stream and answers translated for an OpenAI client.
fn anthropic_stream(input: &[u8]) -> Check {
    translated::<Sse, _>(input, openai_anthropic::StreamToOpenAi::new())?;
    whole(input, openai_anthropic::response, openai_anthropic::error)
}

/// An OpenAI-compatible stream translated for an Anthropic client and a Responses client.
fn openai_stream(input: &[u8]) -> Check {
    translated::<Sse, _>(input, anthropic_openai::StreamToAnthropic::new())?;
    let skeleton = serde_json::json!({
        "id": "resp_fuzz", "object": "response", "created_at": 0, "status": "in_progress",
        "model": "fuzz-model", "output": [],
    });
    translated::<Sse, _>(
        input,
        responses_openai::StreamToResponses::new(skeleton.clone()),
    )?;
    let _ = responses_openai::response_of(skeleton, input);
    whole(input, anthropic_openai::response, anthropic_openai::error)
}

/// Gemini's stream and answers translated for an OpenAI client.
fn gemini_stream(input: &[u8]) -> Check {
    translated::<Sse, _>(input, openai_gemini::StreamToOpenAi::new())?;
    let _ = openai_gemini::retry_delay_secs(input);
    whole(input, openai_gemini::response, openai_gemini::error)
}

/// Bedrock's binary event stream (decoded frame by frame) translated for an OpenAI client.
fn bedrock_stream(input: &[u8]) -> Check {
    translated::<EventStream, _>(input, openai_bedrock::StreamToOpenAi::new("fuzz-model"))?;
    whole(input, openai_bedrock::response, openai_bedrock::error)
}

/// The checked-in Bedrock seeds are the mock's event lists (`[[type, payload], ...]`, easy to
/// read and edit); the target reads frames, so each list is also encoded as the mock does.
fn bedrock_seeds(mut seeds: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut framed = Vec::new();
    for seed in &seeds {
        let Ok(doc) = serde_json::from_slice::<Value>(seed) else {
            continue;
        };
        let events = doc
            .get("events")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut stream = Vec::new();
        for event in events {
            let (Some(kind), Some(payload)) = (event[0].as_str(), event.get(1)) else {
                continue;
            };
            let headers = [
                (":event-type", kind),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ];
            let payload = serde_json::to_vec(payload).unwrap_or_default();
            stream.extend_from_slice(&eventstream::encode(&headers, &payload));
        }
        framed.push(stream);
    }
    seeds.extend(framed);
    seeds
}

/// A stream through a translator, cut into pieces; its output must stay linear in its input.
fn translated<F, T>(input: &[u8], translator: T) -> Check
where
    F: dataplane::providers::translate::Framing,
    T: StreamTranslator,
{
    let body = Translated::<F, T>::boxed(trickle(pieces(input)), translator);
    let out = drive::collect(body).unwrap_or_default();
    bounded(input, out.len())
}

/// A complete answer and an error body through their converters.
fn whole(
    input: &[u8],
    answer: fn(Bytes) -> Bytes,
    error: fn(http::StatusCode, Bytes) -> Bytes,
) -> Check {
    let body = Bytes::copy_from_slice(input);
    bounded(input, answer(body.clone()).len())?;
    bounded(
        input,
        error(http::StatusCode::TOO_MANY_REQUESTS, body).len(),
    )
}

fn bounded(input: &[u8], out: usize) -> Check {
    if out > MAX_GROWTH * input.len() + SLACK {
        return Err(format!("{out} bytes out for {} in", input.len()));
    }
    Ok(())
}

/// Snapshot parsing (YAML and JSON) and validation; a valid snapshot round-trips.
fn snapshot(input: &[u8]) -> Check {
    let _ = Snapshot::from_json(input).map(|s| s.validate());
    let text = String::from_utf8_lossy(input);
    let Ok(parsed) = Snapshot::from_yaml(&text) else {
        return Ok(());
    };
    if parsed.validate().is_err() {
        return Ok(());
    }
    let json = parsed.to_canonical_json();
    let _ = parsed.content_hash();
    match Snapshot::from_json(&json) {
        Ok(back) if back == parsed => Ok(()),
        Ok(_) => Err("a valid snapshot changed through its canonical JSON".into()),
        Err(e) => Err(format!(
            "a valid snapshot's canonical JSON does not parse: {e}"
        )),
    }
}

/// The LiteLLM price file: every entry priced, and read back from its own serialisation.
fn prices(input: &[u8]) -> Check {
    let text = String::from_utf8_lossy(input);
    let Ok(entries) = parse_price_file(&text) else {
        return Ok(());
    };
    let usages = [
        Usage::default(),
        Usage {
            prompt_tokens: 300_000,
            completion_tokens: 1000,
            cached_read_tokens: 500,
            ..Usage::default()
        },
        Usage {
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            ..Usage::default()
        },
    ];
    for (model, entry) in &entries {
        for usage in &usages {
            let _ = cost(usage, entry);
        }
        let json = serde_json::to_value(entry).map_err(|e| format!("{model}: {e}"))?;
        match PriceEntry::from_json_strict(&json) {
            Ok(back) if back == *entry => {}
            Ok(back) => return Err(format!("{model}: {entry:?} read back as {back:?}")),
            Err(e) => {
                return Err(format!(
                    "{model}: its own serialisation {json} is refused: {e}"
                ));
            }
        }
    }
    Ok(())
}
