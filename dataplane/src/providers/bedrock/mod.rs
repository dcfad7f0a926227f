//! Amazon Bedrock's Converse API: `POST {base_url}/model/{modelId}/converse`, or
//! `/converse-stream` for streams, signed with AWS Signature Version 4 ([`sigv4`]).
//!
//! Chat requests are translated both ways ([`crate::providers::translate::openai_bedrock`]);
//! `/v1/messages` requests go through OpenAI's shape first. Streams arrive in AWS's binary
//! event-stream framing ([`eventstream`]), decoded and checked (CRCs) frame by frame and
//! turned into SSE chunks at once. Completions and embeddings are not served (400 without a
//! network call).
//!
//! Errors carry their class in `x-amzn-errortype` and their text in `{"message"}`: 400
//! `ValidationException` (e.g. "Input is too long") goes back to the client, 403
//! `AccessDeniedException`/`UnrecognizedClientException` takes the deployment out, 429
//! `ThrottlingException` cools it, 424 `ModelErrorException`, 500 and 503 are retried
//! elsewhere.

pub mod eventstream;
pub mod sigv4;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use http_body_util::BodyExt;

use super::anthropic::{openai_answer_for_messages, openai_request_body};
use super::client::{self, HttpClient};
use super::translate::{self, TranslateError, openai_bedrock};
use super::{
    Endpoint, ProviderAdaptor, SendError, UpstreamRequest, UpstreamResponse, Verdict, classify_http,
};
use eventstream::EventStreamTranslate;
use sigv4::{Credentials, SigningInput};

static JSON: HeaderValue = HeaderValue::from_static("application/json");
static EVENT_STREAM: HeaderValue = HeaderValue::from_static("application/vnd.amazon.eventstream");
const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
const X_AMZ_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");

/// A Bedrock provider in one region.
#[derive(Debug)]
pub struct BedrockAdaptor {
    upstream: client::Upstream,
    /// `{base path}/model/`.
    prefix: String,
    region: String,
    credentials: Credentials,
    session_token: Option<HeaderValue>,
}

impl BedrockAdaptor {
    /// `base_url` defaults to `https://bedrock-runtime.{region}.amazonaws.com`.
    pub fn new(
        client: &HttpClient,
        base_url: Option<&str>,
        region: &str,
        credentials: Credentials,
    ) -> Result<Self, String> {
        let base_url = base_url.map_or_else(
            || format!("https://bedrock-runtime.{region}.amazonaws.com"),
            str::to_owned,
        );
        let base: Uri = base_url
            .parse()
            .map_err(|e| format!("invalid base_url {base_url:?}: {e}"))?;
        let upstream = client
            .upstream(&base)
            .map_err(|e| format!("invalid base_url {base_url:?}: {e}"))?;
        let session_token = match &credentials.session_token {
            None => None,
            Some(token) => {
                let mut value = HeaderValue::from_str(token).map_err(|_| {
                    "the session token contains characters not allowed in a header".to_owned()
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self {
            upstream,
            prefix: format!("{}/model/", base.path().trim_end_matches('/')),
            region: region.to_owned(),
            credentials,
            session_token,
        })
    }

    fn path(&self, model: &str, stream: bool) -> String {
        format!(
            "{}{}/{}",
            self.prefix,
            sigv4::uri_encode(model, false),
            if stream {
                "converse-stream"
            } else {
                "converse"
            }
        )
    }

    async fn send_chat(
        &self,
        request: &UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, SendError> {
        let stream = request.view.stream;
        let openai_body = match openai_request_body(request) {
            Ok(body) => body,
            Err(refusal) => return Ok(refusal),
        };
        let body = match openai_bedrock::request(&openai_body) {
            Ok(body) => body,
            Err(e) => return Ok(translate::refusal(request.endpoint, &e)),
        };
        let path = self.path(request.upstream_model, stream);
        let amz_date = sigv4::amz_date(chrono::Utc::now());
        let host = self.upstream.host_header().to_str().unwrap_or_default();
        let token = self.credentials.session_token.as_deref();
        let mut signed: Vec<(&str, &str)> = vec![
            ("content-type", "application/json"),
            ("host", host),
            ("x-amz-date", &amz_date),
        ];
        if let Some(token) = token {
            signed.push(("x-amz-security-token", token));
        }
        let authorization = sigv4::authorization(
            &SigningInput {
                method: "POST",
                path: &path,
                query: "",
                headers: &signed,
                payload: &body,
                region: &self.region,
                service: "bedrock",
                amz_date: &amz_date,
            },
            &self.credentials,
        );
        let Ok(mut authorization) = HeaderValue::from_str(&authorization) else {
            return Err(SendError::Connect);
        };
        authorization.set_sensitive(true);
        let Ok(date) = HeaderValue::from_str(&amz_date) else {
            return Err(SendError::Connect);
        };
        let mut headers: Vec<(HeaderName, &HeaderValue)> = Vec::with_capacity(6);
        headers.push((CONTENT_TYPE, &JSON));
        headers.push((ACCEPT, if stream { &EVENT_STREAM } else { &JSON }));
        headers.push((X_AMZ_DATE, &date));
        headers.push((AUTHORIZATION, &authorization));
        if let Some(token) = &self.session_token {
            headers.push((X_AMZ_TOKEN, token));
        }
        let response = self.upstream.post(&path, &headers, &body).await?;
        let UpstreamResponse {
            status,
            headers: mut response_headers,
            body,
        } = UpstreamResponse {
            status: response.status,
            headers: response.headers,
            body: response.body.boxed(),
        };
        let body = if !status.is_success() {
            translate::set_content_type(&mut response_headers, false);
            translate::whole(translate::limited(body), move |b: Bytes| {
                openai_bedrock::error(status, b)
            })
        } else if stream {
            translate::set_content_type(&mut response_headers, true);
            EventStreamTranslate::boxed(
                body,
                openai_bedrock::StreamToOpenAi::new(request.upstream_model),
            )
        } else {
            translate::set_content_type(&mut response_headers, false);
            translate::whole(body, openai_bedrock::response)
        };
        let response = UpstreamResponse {
            status,
            headers: response_headers,
            body,
        };
        Ok(if request.endpoint == Endpoint::Messages {
            openai_answer_for_messages(response, stream)
        } else {
            response
        })
    }
}

impl ProviderAdaptor for BedrockAdaptor {
    fn send<'a>(
        &'a self,
        request: &'a UpstreamRequest<'a>,
    ) -> BoxFuture<'a, Result<UpstreamResponse, SendError>> {
        async move {
            match request.endpoint {
                Endpoint::ChatCompletions | Endpoint::Messages => self.send_chat(request).await,
                Endpoint::Completions | Endpoint::Embeddings => Ok(translate::refusal(
                    request.endpoint,
                    &TranslateError::new(
                        format!(
                            "Bedrock deployments do not serve the {} API",
                            request.endpoint.as_str()
                        ),
                        None,
                    ),
                )),
            }
        }
        .boxed()
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        match status.as_u16() {
            // ModelErrorException / ModelNotReadyException: the model, not the request.
            424 => Verdict::Failed,
            _ => classify_http(status, headers),
        }
    }

    fn rate_limits(&self, _headers: &HeaderMap) -> Option<crate::fleet::UpstreamRateLimits> {
        None
    }
}
