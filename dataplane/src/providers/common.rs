//! What every HTTP adaptor shares: reaching its base URL, holding a credential as a
//! sensitive header, and posting one JSON body.
//!
//! Each adaptor used to parse its `base_url`, mark its key sensitive and assemble the same
//! `content-type`/`accept`/`x-request-id` headers by hand; they differ only in the path, the
//! auth headers and the `accept` value of a stream, which are the arguments here.

use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Uri};
use http_body_util::BodyExt;

use super::client::{self, HttpClient};
use super::{SendError, UpstreamResponse};

pub static JSON: HeaderValue = HeaderValue::from_static("application/json");
pub static EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The upstream at `base_url`, and the base URL's path without its trailing `/` (the prefix
/// of every request path).
pub fn connect(client: &HttpClient, base_url: &str) -> Result<(client::Upstream, String), String> {
    let base: Uri = base_url
        .parse()
        .map_err(|e| format!("invalid base_url {base_url:?}: {e}"))?;
    let upstream = client
        .upstream(&base)
        .map_err(|e| format!("invalid base_url {base_url:?}: {e}"))?;
    Ok((upstream, base.path().trim_end_matches('/').to_owned()))
}

/// `value` as a header value marked sensitive, so that it is never printed; `what` names it
/// in the error ("API key", "session token").
pub fn sensitive(value: &str, what: &str) -> Result<HeaderValue, String> {
    let mut header = HeaderValue::from_str(value)
        .map_err(|_| format!("the {what} contains characters not allowed in a header"))?;
    header.set_sensitive(true);
    Ok(header)
}

/// An optional API key as a sensitive header value, after `prefix` (`"Bearer "` or `""`).
pub fn api_key_header(api_key: Option<&str>, prefix: &str) -> Result<Option<HeaderValue>, String> {
    api_key
        .map(|key| sensitive(&format!("{prefix}{key}"), "API key"))
        .transpose()
}

/// The `accept` value for JSON answers, or `stream_type` for streams.
pub fn accept(stream: bool, stream_type: &'static HeaderValue) -> &'static HeaderValue {
    if stream { stream_type } else { &JSON }
}

/// Posts `body` as JSON to `path` with `content-type`, `accept`, then `auth` (in order), then
/// `x-request-id` when one is given; resolves with the answer's head.
pub async fn post_json(
    upstream: &client::Upstream,
    path: &str,
    accept: &HeaderValue,
    auth: impl IntoIterator<Item = (HeaderName, &HeaderValue)>,
    request_id: Option<&str>,
    body: &[u8],
) -> Result<UpstreamResponse, SendError> {
    let request_id = request_id.and_then(|id| HeaderValue::from_str(id).ok());
    let mut headers: Vec<(HeaderName, &HeaderValue)> = Vec::with_capacity(6);
    headers.push((CONTENT_TYPE, &JSON));
    headers.push((ACCEPT, accept));
    // Pushed one by one (not `extend`), so that the list may also hold the shorter-lived
    // request id.
    for (name, value) in auth {
        headers.push((name, value));
    }
    if let Some(id) = &request_id {
        headers.push((REQUEST_ID, id));
    }
    let response = upstream.post(path, &headers, body).await?;
    Ok(UpstreamResponse {
        status: response.status,
        headers: response.headers,
        body: response.body.boxed(),
    })
}

/// `name` percent-encoded for one path segment: letters, digits, `-`, `_` and `.` stay, every
/// other byte is escaped so that a deployment or model name cannot change the path.
pub fn push_segment(path: &mut String, name: &str) {
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
}
