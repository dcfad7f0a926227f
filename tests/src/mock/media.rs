//! OpenAI's image and audio endpoints, in their real wire shapes:
//! - `POST /v1/images/generations`: `gpt-image-*` models answer as gpt-image-1 does
//!   (`b64_json` images, the `size` and `quality` used, token `usage`); other models as
//!   DALL·E does (`url` or `b64_json` per `response_format`, a `revised_prompt`, no usage).
//!   `n` images (default 1).
//! - `POST /v1/audio/transcriptions`: a `multipart/form-data` upload with `model` and `file`.
//!   The audio's duration is its size at [`AUDIO_BYTES_PER_SECOND`]. `response_format`
//!   `json` (default) answers `{"text", "usage"}` — `usage` of `"type": "duration"` with the
//!   whole seconds billed for `whisper-*`, token usage for other models; `verbose_json` adds
//!   `duration`, `language` and `segments`; `text`, `srt` and `vtt` answer plain text.
//! - `POST /v1/audio/speech`: JSON with `model`, `input`, `voice`; answers binary audio
//!   (`audio/mpeg`, or the `response_format`'s type), [`SPEECH_BYTES_PER_CHARACTER`] bytes a
//!   character of `input`, in several frames.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::{Value, json};

use super::body::MockBody;

/// Bytes of uploaded audio that the mock counts as one second.
pub const AUDIO_BYTES_PER_SECOND: usize = 16_000;
/// Bytes of audio the mock speaks per character of `input`.
pub const SPEECH_BYTES_PER_CHARACTER: usize = 64;
/// The transcript the mock returns.
pub const TRANSCRIPT: &str = "The quick brown fox jumped over the lazy dog.";
/// Token usage of a non-whisper transcription (`input_tokens`, `output_tokens`).
pub const TRANSCRIBE_TOKENS: (u64, u64) = (14, 45);
/// Token usage of a gpt-image answer (`input_tokens`, `output_tokens` per image).
pub const IMAGE_TOKENS: (u64, u64) = (50, 4160);

/// The media routes below `/v1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaRoute {
    Images,
    Transcriptions,
    Speech,
}

impl MediaRoute {
    pub fn of(path: &str) -> Option<Self> {
        match path {
            "/v1/images/generations" => Some(Self::Images),
            "/v1/audio/transcriptions" => Some(Self::Transcriptions),
            "/v1/audio/speech" => Some(Self::Speech),
            _ => None,
        }
    }
}

/// Answers one media request.
pub fn respond(
    route: MediaRoute,
    headers: &HeaderMap,
    body: &Bytes,
    created: u64,
) -> Response<MockBody> {
    let answer = match route {
        MediaRoute::Images => images(body, created),
        MediaRoute::Transcriptions => transcription(headers, body),
        MediaRoute::Speech => speech(body),
    };
    answer.unwrap_or_else(|message| {
        let doc = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}});
        typed(StatusCode::BAD_REQUEST, "application/json", MockBody::full(doc.to_string()))
    })
}

fn typed(status: StatusCode, content_type: &'static str, body: MockBody) -> Response<MockBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_answer(doc: &Value) -> Response<MockBody> {
    typed(
        StatusCode::OK,
        "application/json",
        MockBody::full(doc.to_string()),
    )
}

fn images(body: &[u8], created: u64) -> Result<Response<MockBody>, String> {
    let request: Value = serde_json::from_slice(body).map_err(|_| "invalid JSON body")?;
    let model = request["model"]
        .as_str()
        .ok_or("you must provide a model parameter")?;
    request["prompt"]
        .as_str()
        .ok_or("you must provide a prompt")?;
    let n = request["n"].as_u64().unwrap_or(1).clamp(1, 10);
    let size = request["size"]
        .as_str()
        .filter(|s| *s != "auto")
        .unwrap_or("1024x1024");
    if model.starts_with("gpt-image") {
        let quality = request["quality"]
            .as_str()
            .filter(|q| *q != "auto")
            .unwrap_or("high");
        let data: Vec<Value> = (0..n)
            .map(|_| json!({"b64_json": "iVBORw0KGgo="}))
            .collect();
        let (input, output) = IMAGE_TOKENS;
        return Ok(json_answer(&json!({
            "created": created,
            "background": "opaque",
            "data": data,
            "output_format": "png",
            "quality": quality,
            "size": size,
            "usage": {
                "input_tokens": input,
                "input_tokens_details": {"image_tokens": 0, "text_tokens": input},
                "output_tokens": output * n,
                "total_tokens": input + output * n,
            },
        })));
    }
    let b64 = request["response_format"].as_str() == Some("b64_json");
    let data: Vec<Value> = (0..n)
        .map(|i| match b64 {
            true => json!({"b64_json": "iVBORw0KGgo=", "revised_prompt": "A cat, as asked."}),
            false => json!({"url": format!("https://images.mock.invalid/{created}-{i}.png"), "revised_prompt": "A cat, as asked."}),
        })
        .collect();
    Ok(json_answer(&json!({"created": created, "data": data})))
}

/// The multipart form's text parts and the file's size.
struct Upload {
    fields: Vec<(String, String)>,
    file_bytes: usize,
}

impl Upload {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn read_upload(headers: &HeaderMap, body: &[u8]) -> Result<Upload, String> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = content_type
        .strip_prefix("multipart/form-data")
        .and_then(|rest| rest.split("boundary=").nth(1))
        .map(|b| b.split(';').next().unwrap_or(b).trim_matches('"'))
        .ok_or("Invalid Content-Type header, expected multipart/form-data with a boundary")?;
    let delimiter = format!("--{boundary}");
    let mut upload = Upload {
        fields: Vec::new(),
        file_bytes: 0,
    };
    let mut parts = split(body, delimiter.as_bytes()).into_iter().skip(1);
    for part in parts.by_ref() {
        if part.starts_with(b"--") {
            break;
        }
        let part = part
            .strip_prefix(b"\r\n")
            .ok_or("malformed multipart body")?;
        let part = part
            .strip_suffix(b"\r\n")
            .ok_or("malformed multipart body")?;
        let head_end = find(part, b"\r\n\r\n").ok_or("malformed multipart part")?;
        let head = String::from_utf8_lossy(&part[..head_end]);
        let value = &part[head_end + 4..];
        let name = head
            .split(';')
            .find_map(|p| p.trim().strip_prefix("name=\""))
            .and_then(|n| n.split('"').next())
            .ok_or("a multipart part has no name")?;
        if name == "file" {
            upload.file_bytes = value.len();
        } else {
            let value = String::from_utf8_lossy(value).into_owned();
            upload.fields.push((name.to_owned(), value));
        }
    }
    Ok(upload)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn split<'a>(mut body: &'a [u8], delimiter: &[u8]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    while let Some(at) = find(body, delimiter) {
        pieces.push(&body[..at]);
        body = &body[at + delimiter.len()..];
    }
    pieces.push(body);
    pieces
}

fn transcription(headers: &HeaderMap, body: &[u8]) -> Result<Response<MockBody>, String> {
    let upload = read_upload(headers, body)?;
    let model = upload
        .field("model")
        .ok_or("you must provide a model parameter")?;
    if upload.file_bytes == 0 {
        return Err("you must provide a file".into());
    }
    let duration = upload.file_bytes as f64 / AUDIO_BYTES_PER_SECOND as f64;
    let usage = if model.starts_with("whisper") {
        json!({"type": "duration", "seconds": duration.ceil() as u64})
    } else {
        let (input, output) = TRANSCRIBE_TOKENS;
        json!({"type": "tokens", "input_tokens": input,
            "input_token_details": {"text_tokens": 0, "audio_tokens": input},
            "output_tokens": output, "total_tokens": input + output})
    };
    let text = |body: String| {
        typed(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            MockBody::full(body),
        )
    };
    Ok(match upload.field("response_format").unwrap_or("json") {
        "json" => json_answer(&json!({"text": TRANSCRIPT, "usage": usage})),
        "verbose_json" => json_answer(&json!({
            "task": "transcribe",
            "language": "english",
            "duration": duration,
            "text": TRANSCRIPT,
            "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": TRANSCRIPT,
                "tokens": [50364, 440], "temperature": 0.0, "avg_logprob": -0.2,
                "compression_ratio": 1.2, "no_speech_prob": 0.01}],
            "usage": usage,
        })),
        "text" => text(format!("{TRANSCRIPT}\n")),
        "srt" => text(format!(
            "1\n00:00:00,000 --> 00:00:{:02},000\n{TRANSCRIPT}\n\n",
            duration.ceil() as u64
        )),
        "vtt" => text(format!(
            "WEBVTT\n\n00:00:00.000 --> 00:00:{:02}.000\n{TRANSCRIPT}\n\n",
            duration.ceil() as u64
        )),
        other => return Err(format!("response_format `{other}` is not supported")),
    })
}

fn speech(body: &[u8]) -> Result<Response<MockBody>, String> {
    let request: Value = serde_json::from_slice(body).map_err(|_| "invalid JSON body")?;
    request["model"]
        .as_str()
        .ok_or("you must provide a model parameter")?;
    let input = request["input"]
        .as_str()
        .ok_or("you must provide `input`")?;
    request["voice"]
        .as_str()
        .ok_or("you must provide a voice")?;
    let content_type = match request["response_format"].as_str().unwrap_or("mp3") {
        "mp3" => "audio/mpeg",
        "opus" => "audio/ogg",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        "wav" => "audio/wav",
        "pcm" => "audio/pcm",
        other => return Err(format!("response_format `{other}` is not supported")),
    };
    let audio = speech_audio(input.chars().count());
    let frames: Vec<Bytes> = audio.chunks(4096).map(Bytes::copy_from_slice).collect();
    Ok(typed(
        StatusCode::OK,
        content_type,
        MockBody::frames(frames),
    ))
}

/// The audio the mock speaks for `characters` characters: an ID3 header, then a byte pattern.
pub fn speech_audio(characters: usize) -> Vec<u8> {
    let mut audio = b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec();
    audio.extend((0..characters * SPEECH_BYTES_PER_CHARACTER).map(|i| (i % 251) as u8));
    audio
}
