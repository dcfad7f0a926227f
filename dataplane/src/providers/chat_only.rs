//! The send of an upstream that serves only chat, reached through OpenAI's chat shape
//! (Gemini, Bedrock).
//!
//! Such an adaptor translates OpenAI chat requests to its upstream and its answers back; a
//! `/v1/messages` client goes Anthropic → OpenAI first and back through both (a `/v1/responses`
//! client likewise through the Responses translation), and the
//! completions and embeddings APIs get a 400 in the client's shape without a network call.
//! That frame is the same for every such upstream, so it is written once here ([`send`]);
//! the adaptor supplies only its translation and its post ([`ChatOnly`]).

use std::future::Future;

use super::translate::{self, TranslateError, anthropic_openai};
use super::{Endpoint, SendError, UpstreamRequest, UpstreamResponse};

/// What a chat-only upstream adds to the common frame.
pub trait ChatOnly: Sync {
    /// The provider's name in refusals ("Gemini deployments do not serve ...").
    const NAME: &'static str;

    /// The upstream's request body for an OpenAI chat completion request.
    const TRANSLATE: fn(&[u8]) -> Result<Vec<u8>, TranslateError>;

    /// The request path for the upstream model (`model`), streamed or not.
    fn path(&self, model: &str, stream: bool) -> String;

    /// Posts the translated request; the answer comes back already in OpenAI's chat shape
    /// (answer, stream chunks and errors).
    fn post<'a>(
        &'a self,
        out: Outgoing<'a>,
    ) -> impl Future<Output = Result<UpstreamResponse, SendError>> + Send + 'a;
}

/// One translated attempt, as [`ChatOnly::post`] gets it.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// From [`ChatOnly::path`].
    pub path: &'a str,
    /// From [`ChatOnly::TRANSLATE`].
    pub body: &'a [u8],
    pub request: &'a UpstreamRequest<'a>,
}

/// Sends one attempt to a chat-only upstream, answering in the client's protocol.
pub async fn send<A: ChatOnly>(
    adaptor: &A,
    request: &UpstreamRequest<'_>,
) -> Result<UpstreamResponse, SendError> {
    if !matches!(
        request.endpoint,
        Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses
    ) {
        return Ok(not_served(A::NAME, request.endpoint));
    }
    let openai_body = match anthropic_openai::openai_body_with(request, true) {
        Ok(body) => body,
        Err(refusal) => return Ok(refusal),
    };
    let body = match (A::TRANSLATE)(&openai_body) {
        Ok(body) => body,
        Err(e) => return Ok(translate::refusal(request.endpoint, &e)),
    };
    let path = adaptor.path(request.upstream_model, request.view.stream);
    let out = Outgoing {
        path: &path,
        body: &body,
        request,
    };
    let response = adaptor.post(out).await?;
    Ok(translate::wrap_for_client(response, request))
}

/// The 400 for an API the provider does not have, in the client's shape, sent without a
/// network call.
pub fn not_served(name: &str, endpoint: Endpoint) -> UpstreamResponse {
    translate::refusal(
        endpoint,
        &TranslateError::new(
            format!(
                "{name} deployments do not serve the {} API",
                endpoint.as_str()
            ),
            None,
        ),
    )
}
