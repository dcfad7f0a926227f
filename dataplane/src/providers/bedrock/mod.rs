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
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::chat_only::{self, ChatOnly, Outgoing};
use super::common::{self, Http};
use super::registry::Setup;
use super::translate::{self, TranslateError, openai_bedrock};
use super::{
    ProviderAdaptor, SendError, UpstreamRequest, UpstreamResponse, Verdict, classify_http,
};
use eventstream::EventStreamTranslate;
use sigv4::{Credentials, SigningInput};

static EVENT_STREAM: HeaderValue = HeaderValue::from_static("application/vnd.amazon.eventstream");
const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
const X_AMZ_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");

/// A Bedrock provider in one region.
#[derive(Debug)]
pub struct BedrockAdaptor {
    /// Signed per request: no credential header of its own.
    http: Http,
    /// `{base path}/model/`.
    prefix: String,
    region: String,
    credentials: Credentials,
    session_token: Option<HeaderValue>,
}

impl BedrockAdaptor {
    /// `base_url` defaults to `https://bedrock-runtime.{region}.amazonaws.com`; the
    /// credentials are the provider's `aws_*`.
    pub fn new(setup: &Setup<'_>) -> Result<Self, String> {
        let region = setup.provider.region.as_deref().unwrap_or_default();
        let base_url = setup
            .provider
            .base_url
            .clone()
            .unwrap_or_else(|| format!("https://bedrock-runtime.{region}.amazonaws.com"));
        let http = Http::connect(setup.client, &base_url)?;
        let credentials = setup.aws.clone();
        let session_token = credentials
            .session_token
            .as_deref()
            .map(|token| common::sensitive(token, "session token"))
            .transpose()?;
        Ok(Self {
            prefix: format!("{}/model/", http.base_path),
            http,
            region: region.to_owned(),
            credentials,
            session_token,
        })
    }

    /// The SigV4 `authorization` and `x-amz-date` values for posting `body` to `path` now.
    fn sign(&self, path: &str, body: &[u8]) -> Result<(HeaderValue, HeaderValue), SendError> {
        let amz_date = sigv4::amz_date(chrono::Utc::now());
        let host = self
            .http
            .upstream
            .host_header()
            .to_str()
            .unwrap_or_default();
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
                path,
                query: "",
                headers: &signed,
                payload: body,
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
        Ok((authorization, date))
    }
}

impl ChatOnly for BedrockAdaptor {
    const NAME: &'static str = "Bedrock";

    const TRANSLATE: fn(&[u8]) -> Result<Vec<u8>, TranslateError> = openai_bedrock::request;

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

    async fn post(&self, out: Outgoing<'_>) -> Result<UpstreamResponse, SendError> {
        let stream = out.request.view.stream;
        let (authorization, date) = self.sign(out.path, out.body)?;
        let auth = [(X_AMZ_DATE, &date), (AUTHORIZATION, &authorization)]
            .into_iter()
            .chain(
                self.session_token
                    .as_ref()
                    .map(|token| (X_AMZ_TOKEN, token)),
            );
        let accept = common::accept(stream, &EVENT_STREAM);
        // Bedrock's requests carry no `x-request-id` (it is not among the signed headers).
        let UpstreamResponse {
            status,
            headers: mut response_headers,
            body,
        } = self
            .http
            .post(out.path, accept, auth, None, out.body)
            .await?;
        let body = if !status.is_success() {
            translate::set_content_type(&mut response_headers, false);
            translate::whole(translate::limited(body), move |b: Bytes| {
                openai_bedrock::error(status, b)
            })
        } else if stream {
            translate::set_content_type(&mut response_headers, true);
            EventStreamTranslate::boxed(
                body,
                openai_bedrock::StreamToOpenAi::new(out.request.upstream_model),
            )
        } else {
            translate::set_content_type(&mut response_headers, false);
            translate::whole(body, openai_bedrock::response)
        };
        Ok(UpstreamResponse {
            status,
            headers: response_headers,
            body,
        })
    }
}

impl ProviderAdaptor for BedrockAdaptor {
    fn send<'a>(
        &'a self,
        request: &'a UpstreamRequest<'a>,
    ) -> BoxFuture<'a, Result<UpstreamResponse, SendError>> {
        chat_only::send(self, request).boxed()
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
