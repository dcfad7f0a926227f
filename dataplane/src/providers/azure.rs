//! Azure OpenAI: OpenAI's wire format at per-deployment URLs.
//!
//! `POST {base_url}/openai/deployments/{deployment}/{chat/completions|completions|embeddings}
//! ?api-version={api_version}` with the key in an `api-key` header. The Azure deployment name
//! is the gateway deployment's `upstream_model`; the body passes through (Azure ignores its
//! `model`), and `/v1/messages` clients are translated as for any OpenAI-compatible API.
//! Azure's 429s carry `retry-after-ms`, which [`super::retry_after`] reads; its content
//! filter refusals are 400s with code `content_filter`, relayed to the client as they are.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, Uri};

use super::client::{self, HttpClient};
use super::openai::send_openai_compatible;
use super::{ProviderAdaptor, SendError, UpstreamRequest, UpstreamResponse};

const API_KEY: HeaderName = HeaderName::from_static("api-key");

/// An Azure OpenAI resource.
#[derive(Debug)]
pub struct AzureAdaptor {
    upstream: client::Upstream,
    /// `{base path}/openai/deployments/`.
    prefix: String,
    /// `?api-version=...`.
    query: String,
    api_key: Option<HeaderValue>,
}

impl AzureAdaptor {
    /// `base_url` is the resource endpoint (`https://NAME.openai.azure.com`).
    pub fn new(
        client: &HttpClient,
        base_url: &str,
        api_version: &str,
        api_key: Option<&str>,
    ) -> Result<Self, String> {
        let base: Uri = base_url
            .parse()
            .map_err(|e| format!("invalid base_url {base_url:?}: {e}"))?;
        let upstream = client
            .upstream(&base)
            .map_err(|e| format!("invalid base_url {base_url:?}: {e}"))?;
        let api_key = match api_key {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::from_str(key).map_err(|_| {
                    "the API key contains characters not allowed in a header".to_owned()
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self {
            upstream,
            prefix: format!("{}/openai/deployments/", base.path().trim_end_matches('/')),
            query: format!("?api-version={api_version}"),
            api_key,
        })
    }

    /// The request path for one attempt. Deployment names are letters, digits, `-`, `_` and
    /// `.`; anything else is percent-encoded so that it cannot change the path.
    fn path(&self, deployment: &str, openai_path: &str) -> String {
        let mut path =
            String::with_capacity(self.prefix.len() + deployment.len() + 40 + self.query.len());
        path.push_str(&self.prefix);
        for b in deployment.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                path.push(char::from(b));
            } else {
                path.push_str(&format!("%{b:02X}"));
            }
        }
        path.push_str(openai_path);
        path.push_str(&self.query);
        path
    }
}

impl ProviderAdaptor for AzureAdaptor {
    fn send<'a>(
        &'a self,
        request: &'a UpstreamRequest<'a>,
    ) -> BoxFuture<'a, Result<UpstreamResponse, SendError>> {
        async move {
            let path = self.path(request.upstream_model, request.endpoint.openai_path());
            let auth = self.api_key.as_ref().map(|v| (API_KEY, v));
            send_openai_compatible(&self.upstream, &path, auth, request).await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_deployment_and_the_api_version() {
        crate::install_crypto_provider();
        let settings = client::ClientSettings {
            connect_timeout: std::time::Duration::from_secs(1),
            pool_idle_timeout: std::time::Duration::from_secs(1),
            pool_max_idle_per_host: 1,
        };
        let client = client::build(settings, Vec::new()).unwrap();
        let a = AzureAdaptor::new(
            &client,
            "https://r.openai.azure.com",
            "2024-10-21",
            Some("k"),
        )
        .unwrap();
        assert_eq!(
            a.path("gpt-4o-prod", "/chat/completions"),
            "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            a.path("a/b?c", "/embeddings"),
            "/openai/deployments/a%2Fb%3Fc/embeddings?api-version=2024-10-21"
        );
    }
}
