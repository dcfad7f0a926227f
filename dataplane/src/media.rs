//! Images and audio: `POST /v1/images/generations`, `/v1/audio/transcriptions` and
//! `/v1/audio/speech`, to OpenAI-compatible deployments, priced per image, per second and per
//! character as LiteLLM's price file states it ([`switchboard_shared::pricing::media_cost`]).
//!
//! Why a module of its own: these requests walk the same phases as chat (key, allowed models,
//! limits, budget admission, routing with retries, the ledger, the request log — see
//! [`crate::handlers`]), but three things differ, and they live here:
//! - **What is read from the request.** Images and speech are JSON: besides the model, the
//!   image count (`n`), `size` and `quality`, or the characters of the speech `input`. A
//!   transcription is a `multipart/form-data` upload: only the `model` part is found (its value
//!   is spliced like a JSON model name) and the rest of the body — the audio file — is forwarded
//!   byte for byte, in the client's content type, never decoded. The body is bounded by
//!   `server.max_body_bytes` like every other body.
//! - **What is read from the answer** ([`read_answer`]): the images generated (`data`, and the
//!   `size`/`quality` gpt-image models report) and any token `usage`; a transcription's
//!   duration (`usage.seconds` of `"type": "duration"`, or verbose JSON's `duration`) or token
//!   usage. An answer in plain text, SRT or VTT carries no duration: the request is then charged
//!   the estimate made from the upload's size ([`ESTIMATED_BYTES_PER_SECOND`]).
//! - **Speech is binary audio**, relayed as it arrives by [`BinaryRelay`], which closes the
//!   ledger when the audio ends (or breaks, or the client goes away). Its price is known from
//!   the request: the characters of `input`.
//!
//! Deployments of other provider kinds are never tried: the request's selection keeps only
//! OpenAI-compatible (`openai`) deployments, and a model with none answers 400 saying so.
//! Streamed images and transcriptions (`stream: true`) are refused with a 400.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body::Body as _;
use memchr::memmem;
use serde::Deserialize;
use switchboard_shared::usage::{MediaUsage, Outcome, Usage};
use tokio::time::Sleep;

use crate::accounting::{Ledger, usage_from_body};
use crate::error::ApiError;
use crate::providers::{Endpoint, UpstreamBody};
use crate::request::RequestView;

/// The upload size taken for one second of audio when a transcription's answer states no
/// duration: 4,000 bytes (32 kbit/s, the low end of speech encodings — MP3 and M4A speech are
/// 32–128 kbit/s, WAV far more), so the estimate errs towards more seconds, not fewer.
pub const ESTIMATED_BYTES_PER_SECOND: u64 = 4_000;

/// The most parts a transcription upload may have (OpenAI's form has about a dozen fields).
const MAX_PARTS: usize = 64;

/// Reads what the gateway needs from an image or audio request: its view (model and where to
/// splice it) and what it is priced by. Errors are 400s naming the field.
pub fn parse(
    endpoint: Endpoint,
    body: Bytes,
    headers: &HeaderMap,
) -> Result<(RequestView, MediaUsage), ApiError> {
    match endpoint {
        Endpoint::AudioTranscriptions => parse_upload(body, headers),
        _ => parse_json(endpoint, body),
    }
}

#[derive(Deserialize)]
struct JsonFields {
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    quality: Option<String>,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
}

fn parse_json(endpoint: Endpoint, body: Bytes) -> Result<(RequestView, MediaUsage), ApiError> {
    let mut view = RequestView::parse(body)?;
    // Nothing here streams through the SSE relay (speech audio is relayed as bytes).
    view.stream = false;
    let fields: JsonFields = serde_json::from_slice(&view.body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}"), None))?;
    if fields.stream == Some(true) {
        return Err(refuse_stream());
    }
    let media = if endpoint == Endpoint::AudioSpeech {
        let Some(input) = fields.input else {
            return Err(ApiError::bad_request(
                "you must provide the text to speak in `input`",
                Some("input"),
            ));
        };
        MediaUsage::Characters {
            count: input.chars().count() as u64,
        }
    } else {
        MediaUsage::Images {
            count: view.choices,
            size: fields.size,
            quality: fields.quality,
        }
    };
    Ok((view, media))
}

fn refuse_stream() -> ApiError {
    ApiError::bad_request(
        "the gateway does not stream images or transcriptions; leave `stream` out",
        Some("stream"),
    )
}

/// A transcription upload: finds the `model` part (400 without one), refuses `stream=true`,
/// and estimates the audio's seconds from the upload's size.
fn parse_upload(body: Bytes, headers: &HeaderMap) -> Result<(RequestView, MediaUsage), ApiError> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static(""));
    let boundary = content_type
        .to_str()
        .ok()
        .filter(|t| t.trim_start().starts_with("multipart/form-data"))
        .and_then(boundary_of)
        .ok_or_else(|| {
            ApiError::bad_request(
                "a transcription must be sent as multipart/form-data with a boundary",
                None,
            )
        })?;
    let form = Form::read(&body, &boundary)?;
    if form.stream {
        return Err(refuse_stream());
    }
    let Some(span) = form.model else {
        return Err(ApiError::bad_request(
            "you must provide a model parameter",
            Some("model"),
        ));
    };
    let model = std::str::from_utf8(&body[span.clone()])
        .ok()
        .map(str::trim)
        .filter(|m| !m.is_empty() && m.len() <= 256)
        .ok_or_else(|| ApiError::bad_request("`model` must be a model name", Some("model")))?
        .to_owned();
    let seconds = form.file_bytes.div_ceil(ESTIMATED_BYTES_PER_SECOND).max(1) as f64;
    let view = RequestView::with_model_at(body, model, span, content_type);
    Ok((view, MediaUsage::AudioSeconds { seconds }))
}

/// `boundary=...` of a multipart content type, unquoted.
fn boundary_of(content_type: &str) -> Option<String> {
    let value = content_type.split(';').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim())
    })?;
    let value = value.trim_matches('"');
    (!value.is_empty() && value.len() <= 200).then(|| value.to_owned())
}

/// What [`parse_upload`] needs of a multipart form.
#[derive(Debug, Default)]
struct Form {
    /// Where the `model` part's value is.
    model: Option<std::ops::Range<usize>>,
    /// The `stream` part says `true`.
    stream: bool,
    /// Bytes of the `file` part.
    file_bytes: u64,
}

impl Form {
    /// Walks the parts of `body` (RFC 7578): each starts after `--boundary` and a line end,
    /// has headers up to a blank line, and its value runs to the next `\r\n--boundary`.
    fn read(body: &[u8], boundary: &str) -> Result<Form, ApiError> {
        let bad = || ApiError::bad_request("the multipart body is malformed", None);
        let delimiter = format!("\r\n--{boundary}");
        let finder = memmem::Finder::new(delimiter.as_bytes());
        let first = format!("--{boundary}");
        let mut at = memmem::find(body, first.as_bytes()).ok_or_else(bad)? + first.len();
        let mut form = Form::default();
        for _ in 0..MAX_PARTS {
            if body[at..].starts_with(b"--") {
                return Ok(form);
            }
            let head_start = at + line_end(&body[at..]).ok_or_else(bad)?;
            let head_len = memmem::find(&body[head_start..], b"\r\n\r\n").ok_or_else(bad)?;
            let head = &body[head_start..head_start + head_len];
            let value_start = head_start + head_len + 4;
            let value_len = finder.find(&body[value_start..]).ok_or_else(bad)?;
            let value = value_start..value_start + value_len;
            match part_name(head) {
                Some("model") => form.model = Some(value.clone()),
                Some("stream") => form.stream = body[value.clone()].trim_ascii() == b"true",
                Some("file") => form.file_bytes = value_len as u64,
                _ => {}
            }
            at = value.end + delimiter.len();
        }
        Err(ApiError::bad_request(
            format!("the multipart body has more than {MAX_PARTS} parts"),
            None,
        ))
    }
}

/// The length of the line end that must follow a boundary (`\r\n`, or a lone `\n`).
fn line_end(rest: &[u8]) -> Option<usize> {
    if rest.starts_with(b"\r\n") {
        Some(2)
    } else if rest.starts_with(b"\n") {
        Some(1)
    } else {
        None
    }
}

/// `name="..."` of a part's `Content-Disposition` header.
fn part_name(head: &[u8]) -> Option<&str> {
    let head = std::str::from_utf8(head).ok()?;
    let disposition = head.split("\r\n").find(|line| {
        line.get(..20)
            .is_some_and(|l| l.eq_ignore_ascii_case("content-disposition:"))
    })?;
    disposition.split(';').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        (name.trim() == "name").then(|| value.trim().trim_matches('"'))
    })
}

#[derive(Deserialize)]
struct AnswerFields<'a> {
    #[serde(default, borrow)]
    data: Option<Vec<&'a serde_json::value::RawValue>>,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    quality: Option<String>,
    /// Verbose JSON's audio duration in seconds.
    #[serde(default)]
    duration: Option<f64>,
    #[serde(default)]
    usage: Option<MediaUsageReport>,
}

/// A transcription's `usage` of `"type": "duration"`.
#[derive(Deserialize)]
struct MediaUsageReport {
    #[serde(default)]
    seconds: Option<f64>,
}

/// Usage and media from a complete image or transcription answer, `asked` being what the
/// request said. `Err` when an image answer is not JSON; a transcription may also answer in
/// plain text, SRT or VTT, which carry neither (the request's estimate then stands).
pub fn read_answer(
    endpoint: Endpoint,
    asked: Option<&MediaUsage>,
    body: &[u8],
) -> Result<(Option<Usage>, Option<MediaUsage>), serde_json::Error> {
    let json = body.trim_ascii_start().first() == Some(&b'{');
    if endpoint == Endpoint::AudioTranscriptions && !json {
        return Ok((None, asked.cloned()));
    }
    let usage = usage_from_body(body)?;
    let fields: AnswerFields<'_> = serde_json::from_slice(body)?;
    let media = match asked {
        Some(MediaUsage::Images { size, quality, .. }) => Some(MediaUsage::Images {
            count: fields.data.map_or(0, |d| d.len() as u64),
            size: fields.size.or_else(|| size.clone()),
            quality: fields.quality.or_else(|| quality.clone()),
        }),
        Some(MediaUsage::AudioSeconds { seconds }) => {
            let stated = fields.usage.and_then(|u| u.seconds).or(fields.duration);
            let seconds = stated
                .filter(|s| s.is_finite() && *s >= 0.0)
                .unwrap_or(*seconds);
            Some(MediaUsage::AudioSeconds { seconds })
        }
        other => other.cloned(),
    };
    Ok((usage, media))
}

/// The client-facing body of a speech answer: the upstream's audio bytes as they arrive.
/// Closes the ledger when the audio ends, fails, runs past the deadline, or is dropped
/// because the client went away.
pub struct BinaryRelay {
    upstream: UpstreamBody,
    ledger: Option<Ledger>,
    deadline: Pin<Box<Sleep>>,
}

impl BinaryRelay {
    pub fn new(upstream: UpstreamBody, ledger: Ledger, deadline: tokio::time::Instant) -> Self {
        Self {
            upstream,
            ledger: Some(ledger),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    fn close(&mut self, outcome: Outcome) {
        if let Some(ledger) = self.ledger.take() {
            let status = match outcome {
                Outcome::Success => StatusCode::OK,
                _ => StatusCode::BAD_GATEWAY,
            };
            ledger.answered(outcome, status, None);
        }
    }
}

/// Why a relayed audio answer ended badly (hyper then aborts the response).
#[derive(Debug, thiserror::Error)]
pub enum BinaryRelayError {
    #[error("the upstream audio failed: {0}")]
    Upstream(String),
    #[error("the request's total time limit ran out mid-answer")]
    Timeout,
}

impl Stream for BinaryRelay {
    type Item = Result<Bytes, BinaryRelayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ledger.is_none() {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.close(Outcome::UpstreamError);
            return Poll::Ready(Some(Err(BinaryRelayError::Timeout)));
        }
        loop {
            return match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    this.close(Outcome::Success);
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    this.close(Outcome::UpstreamError);
                    Poll::Ready(Some(Err(BinaryRelayError::Upstream(e.to_string()))))
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => Poll::Ready(Some(Ok(data))),
                    _ => continue,
                },
            };
        }
    }
}

impl Drop for BinaryRelay {
    fn drop(&mut self) {
        self.close(Outcome::ClientDisconnected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(parts: &[(&str, &str)], boundary: &str) -> (Bytes, HeaderMap) {
        let mut body = String::new();
        for (name, value) in parts {
            let file = if *name == "file" {
                "; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg"
            } else {
                ""
            };
            body.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n{value}\r\n"
            ));
        }
        body.push_str(&format!("--{boundary}--\r\n"));
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}")
                .parse()
                .unwrap(),
        );
        (Bytes::from(body), headers)
    }

    #[test]
    fn an_upload_gets_its_model_swapped_and_the_file_kept() {
        let audio = "x".repeat(10_000);
        let (body, headers) = upload(
            &[("file", &audio), ("model", "whisper"), ("language", "en")],
            "b0undary",
        );
        let (view, media) = parse(Endpoint::AudioTranscriptions, body.clone(), &headers).unwrap();
        assert_eq!(view.model, "whisper");
        assert_eq!(media, MediaUsage::AudioSeconds { seconds: 3.0 });
        let out = view.upstream_body(b"whisper-1");
        let expected = String::from_utf8(body.to_vec())
            .unwrap()
            .replace("\r\n\r\nwhisper\r\n", "\r\n\r\nwhisper-1\r\n");
        assert_eq!(String::from_utf8(out.to_vec()).unwrap(), expected);
        assert_eq!(view.estimated_prompt_tokens(), 0);
    }

    #[test]
    fn bad_uploads_are_400s() {
        let (body, headers) = upload(&[("file", "abc")], "b");
        let err = parse(Endpoint::AudioTranscriptions, body, &headers).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let (body, headers) = upload(&[("model", "m"), ("stream", "true")], "b");
        assert!(parse(Endpoint::AudioTranscriptions, body, &headers).is_err());
        let (body, _) = upload(&[("model", "m")], "b");
        assert!(parse(Endpoint::AudioTranscriptions, body, &HeaderMap::new()).is_err());
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            "multipart/form-data; boundary=b".parse().unwrap(),
        );
        let cut =
            Bytes::from_static(b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm");
        assert!(parse(Endpoint::AudioTranscriptions, cut, &headers).is_err());
    }

    #[test]
    fn json_requests_say_what_they_are_priced_by() {
        let body = Bytes::from(r#"{"model":"tts","input":"héllo","voice":"alloy"}"#);
        let (_, media) = parse(Endpoint::AudioSpeech, body, &HeaderMap::new()).unwrap();
        assert_eq!(media, MediaUsage::Characters { count: 5 });
        let body = Bytes::from(r#"{"model":"img","prompt":"a cat","n":2,"size":"1024x1536"}"#);
        let (_, media) = parse(Endpoint::ImagesGenerations, body, &HeaderMap::new()).unwrap();
        assert_eq!(
            media,
            MediaUsage::Images {
                count: 2,
                size: Some("1024x1536".into()),
                quality: None
            }
        );
        let body = Bytes::from(r#"{"model":"img","prompt":"a","stream":true}"#);
        assert!(parse(Endpoint::ImagesGenerations, body, &HeaderMap::new()).is_err());
        let body = Bytes::from(r#"{"model":"tts","voice":"alloy"}"#);
        assert!(parse(Endpoint::AudioSpeech, body, &HeaderMap::new()).is_err());
    }

    #[test]
    fn answers_state_images_and_seconds() {
        let asked = MediaUsage::Images {
            count: 3,
            size: Some("1024x1024".into()),
            quality: None,
        };
        let body = br#"{"created":1,"data":[{"b64_json":"AA=="},{"b64_json":"AA=="}],"quality":"high","usage":{"input_tokens":10,"output_tokens":20,"total_tokens":30,"input_tokens_details":{"text_tokens":10,"image_tokens":0}}}"#;
        let (usage, media) = read_answer(Endpoint::ImagesGenerations, Some(&asked), body).unwrap();
        assert_eq!(usage.unwrap().prompt_tokens, 10);
        assert_eq!(
            media,
            Some(MediaUsage::Images {
                count: 2,
                size: Some("1024x1024".into()),
                quality: Some("high".into())
            })
        );
        let asked = MediaUsage::AudioSeconds { seconds: 9.0 };
        let body = br#"{"text":"hi","usage":{"type":"duration","seconds":4}}"#;
        let (_, media) = read_answer(Endpoint::AudioTranscriptions, Some(&asked), body).unwrap();
        assert_eq!(media, Some(MediaUsage::AudioSeconds { seconds: 4.0 }));
        let body = br#"{"text":"hi","duration":2.5,"segments":[]}"#;
        let (_, media) = read_answer(Endpoint::AudioTranscriptions, Some(&asked), body).unwrap();
        assert_eq!(media, Some(MediaUsage::AudioSeconds { seconds: 2.5 }));
        let (usage, media) =
            read_answer(Endpoint::AudioTranscriptions, Some(&asked), b"just text").unwrap();
        assert_eq!((usage, media), (None, Some(asked)));
        assert!(read_answer(Endpoint::ImagesGenerations, None, b"nope").is_err());
    }
}
