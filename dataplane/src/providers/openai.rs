//! OpenAI-compatible upstreams: OpenAI itself, vLLM, Ollama, Groq, DeepSeek, Together, ...
//!
//! The body goes out as the client sent it, with only the model name swapped (and, for
//! streams, usage reporting switched on — see [`RequestView::upstream_body`]). Everything that
//! can be computed once per snapshot is: the three endpoint URIs and the auth header.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};

use super::client::HttpClient;
use super::{BodyError, Endpoint, ProviderAdaptor, SendError, UpstreamRequest, UpstreamResponse};
use crate::request::RequestView;

/// An OpenAI-compatible provider.
#[derive(Debug)]
pub struct OpenAiAdaptor {
    client: HttpClient,
    chat_uri: Uri,
    completions_uri: Uri,
    embeddings_uri: Uri,
    /// `Bearer <key>`, marked sensitive so that hyper never logs it.
    authorization: Option<HeaderValue>,
}

impl OpenAiAdaptor {
    /// `base_url` includes the version path (`https://api.openai.com/v1`).
    pub fn new(client: HttpClient, base_url: &str, api_key: Option<&str>) -> Result<Self, String> {
        let base = base_url.trim_end_matches('/');
        let uri = |endpoint: Endpoint| -> Result<Uri, String> {
            format!("{base}{}", endpoint.openai_path())
                .parse::<Uri>()
                .map_err(|e| format!("invalid base_url {base_url:?}: {e}"))
        };
        let authorization = match api_key {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    "the API key contains characters not allowed in a header".to_owned()
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self {
            client,
            chat_uri: uri(Endpoint::ChatCompletions)?,
            completions_uri: uri(Endpoint::Completions)?,
            embeddings_uri: uri(Endpoint::Embeddings)?,
            authorization,
        })
    }

    fn uri(&self, endpoint: Endpoint) -> &Uri {
        match endpoint {
            Endpoint::ChatCompletions => &self.chat_uri,
            Endpoint::Completions => &self.completions_uri,
            Endpoint::Embeddings => &self.embeddings_uri,
        }
    }

    fn build(&self, request: &UpstreamRequest<'_>) -> Request<Full<bytes::Bytes>> {
        let view: &RequestView = request.view;
        let body = view.upstream_body(request.upstream_model_json);
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.uri(request.endpoint).clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(
                ACCEPT,
                if view.stream {
                    HeaderValue::from_static("text/event-stream")
                } else {
                    HeaderValue::from_static("application/json")
                },
            );
        if let Some(auth) = &self.authorization {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        if let Ok(id) = HeaderValue::from_str(request.request_id) {
            builder = builder.header("x-request-id", id);
        }
        builder
            .body(Full::new(body))
            .unwrap_or_else(|_| Request::new(Full::default()))
    }
}

impl ProviderAdaptor for OpenAiAdaptor {
    fn send<'a>(
        &'a self,
        request: &'a UpstreamRequest<'a>,
    ) -> BoxFuture<'a, Result<UpstreamResponse, SendError>> {
        let outgoing = self.build(request);
        self.client
            .request(outgoing)
            .map(|result| match result {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    Ok(UpstreamResponse {
                        status: parts.status,
                        headers: parts.headers,
                        body: body.map_err(|e| BodyError(e.to_string())).boxed(),
                    })
                }
                Err(e) if e.is_connect() => Err(SendError::Connect),
                Err(_) => Err(SendError::Transport),
            })
            .boxed()
    }
}
