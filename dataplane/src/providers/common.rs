//! What every HTTP adaptor shares: its upstream at the base URL, its credential as a
//! sensitive header, and posting one JSON body.
//!
//! Each adaptor used to parse its `base_url`, mark its key sensitive and assemble the same
//! `content-type`/`accept`/`x-request-id` headers by hand. [`Http`] does it once; adaptors
//! differ only in the path, the credential header's name, the `accept` value of a stream and
//! any extra headers, which are its arguments.

use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Uri};
use http_body_util::BodyExt;

use super::client::{self, HttpClient};
use super::{SendError, UpstreamResponse};

pub static JSON: HeaderValue = HeaderValue::from_static("application/json");
pub static EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
/// `accept` for answers of any type (speech is binary audio).
pub static ANY: HeaderValue = HeaderValue::from_static("*/*");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C trace context, sent when trace export is on (`crate::telemetry`).
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// An HTTP upstream as an adaptor holds it.
#[derive(Debug)]
pub struct Http {
    pub upstream: client::Upstream,
    /// The base URL's path without its trailing `/`: the prefix of every request path.
    pub base_path: String,
    /// The credential header, its value marked sensitive so that it is never printed.
    auth: Option<(HeaderName, HeaderValue)>,
}

impl Http {
    /// The upstream at `base_url`, without a credential yet.
    pub fn connect(client: &HttpClient, base_url: &str) -> Result<Self, String> {
        let base: Uri = base_url
            .parse()
            .map_err(|e| format!("invalid base_url {base_url:?}: {e}"))?;
        let upstream = client
            .upstream(&base)
            .map_err(|e| format!("invalid base_url {base_url:?}: {e}"))?;
        Ok(Self {
            upstream,
            base_path: base.path().trim_end_matches('/').to_owned(),
            auth: None,
        })
    }

    /// Sends `api_key`, if there is one, as header `name` after `prefix` (`"Bearer "`, `""`).
    pub fn with_key(
        mut self,
        name: HeaderName,
        prefix: &str,
        api_key: Option<&str>,
    ) -> Result<Self, String> {
        if let Some(key) = api_key {
            self.auth = Some((name, sensitive(&format!("{prefix}{key}"), "API key")?));
        }
        Ok(self)
    }

    /// Posts `body` as JSON to `path` with `content-type`, `accept`, then `extra` (in order),
    /// the credential, and `x-request-id` when one is given; resolves with the answer's head.
    pub async fn post(
        &self,
        path: &str,
        accept: &HeaderValue,
        extra: impl IntoIterator<Item = (HeaderName, &HeaderValue)>,
        request_id: Option<&str>,
        body: &[u8],
    ) -> Result<UpstreamResponse, SendError> {
        self.post_typed(path, &JSON, accept, extra, request_id, body)
            .await
    }

    /// [`Http::post`] of a body of `content_type` (a multipart upload's, with its boundary).
    pub async fn post_typed(
        &self,
        path: &str,
        content_type: &HeaderValue,
        accept: &HeaderValue,
        extra: impl IntoIterator<Item = (HeaderName, &HeaderValue)>,
        request_id: Option<&str>,
        body: &[u8],
    ) -> Result<UpstreamResponse, SendError> {
        let request_id = request_id.and_then(|id| HeaderValue::from_str(id).ok());
        let mut headers: Vec<(HeaderName, &HeaderValue)> = Vec::with_capacity(6);
        headers.push((CONTENT_TYPE, content_type));
        headers.push((ACCEPT, accept));
        // Pushed one by one (not `extend`), so that the list may also hold the shorter-lived
        // request id.
        for (name, value) in extra {
            headers.push((name, value));
        }
        if let Some((name, value)) = &self.auth {
            headers.push((name.clone(), value));
        }
        if let Some(id) = &request_id {
            headers.push((REQUEST_ID, id));
        }
        let traceparent = crate::telemetry::upstream_call(self.upstream.host_header());
        if let Some(value) = &traceparent {
            headers.push((TRACEPARENT, value));
        }
        let response = self.upstream.post(path, &headers, body).await?;
        Ok(UpstreamResponse {
            status: response.status,
            headers: response.headers,
            body: response.body.boxed(),
        })
    }
}

/// `value` as a header value marked sensitive, so that it is never printed; `what` names it
/// in the error ("API key", "session token").
pub fn sensitive(value: &str, what: &str) -> Result<HeaderValue, String> {
    let mut header = HeaderValue::from_str(value)
        .map_err(|_| format!("the {what} contains characters not allowed in a header"))?;
    header.set_sensitive(true);
    Ok(header)
}

/// The `accept` value for JSON answers, or `stream_type` for streams.
pub fn accept(stream: bool, stream_type: &'static HeaderValue) -> &'static HeaderValue {
    if stream { stream_type } else { &JSON }
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
