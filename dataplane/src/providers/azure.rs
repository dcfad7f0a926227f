//! Azure OpenAI: OpenAI's wire format at per-deployment URLs.
//!
//! `POST {base_url}/openai/deployments/{deployment}/{chat/completions|completions|embeddings}
//! ?api-version={api_version}` with the key in an `api-key` header. The Azure deployment name
//! is the gateway deployment's `upstream_model`; the body passes through (Azure ignores its
//! `model`), and `/v1/messages` clients are translated as for any OpenAI-compatible API.
//! Azure's 429s carry `retry-after-ms`, which [`super::retry_after`] reads; its content
//! filter refusals are 400s with code `content_filter`, relayed to the client as they are.
//! A metered passthrough (`/passthrough/azure/{path}`) goes to the deployment's URL with
//! `{path}` after its name (`/openai/deployments/{deployment}/{path}?api-version=...`).

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::HeaderName;

use super::common::{self, Http};
use super::openai::{send_openai_compatible, send_passthrough};
use super::registry::Setup;
use super::{Endpoint, ProviderAdaptor, SendError, UpstreamRequest, UpstreamResponse};

const API_KEY: HeaderName = HeaderName::from_static("api-key");

/// An Azure OpenAI resource.
#[derive(Debug)]
pub struct AzureAdaptor {
    /// With `api-key: <key>`.
    http: Http,
    /// `{base path}/openai/deployments/`.
    prefix: String,
    /// `?api-version=...`.
    query: String,
}

impl AzureAdaptor {
    /// `base_url` is the resource endpoint (`https://NAME.openai.azure.com`); `api_version`
    /// is the provider's.
    pub fn new(setup: &Setup<'_>) -> Result<Self, String> {
        let http = setup.http(API_KEY, "")?;
        let api_version = setup.provider.api_version.as_deref().unwrap_or_default();
        Ok(Self {
            prefix: format!("{}/openai/deployments/", http.base_path),
            query: format!("?api-version={api_version}"),
            http,
        })
    }

    /// The request path for one attempt. Deployment names are letters, digits, `-`, `_` and
    /// `.`; anything else is percent-encoded so that it cannot change the path.
    fn path(&self, deployment: &str, openai_path: &str) -> String {
        let mut path =
            String::with_capacity(self.prefix.len() + deployment.len() + 40 + self.query.len());
        path.push_str(&self.prefix);
        common::push_segment(&mut path, deployment);
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
            if let (Endpoint::Passthrough, Some(target)) =
                (request.endpoint, &request.view.passthrough)
            {
                let path = self.path(request.upstream_model, &target.path);
                return send_passthrough(&self.http, &path, request).await;
            }
            let path = self.path(request.upstream_model, request.endpoint.openai_path());
            send_openai_compatible(&self.http, &path, request).await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::bedrock::sigv4::Credentials;
    use crate::providers::client;

    #[test]
    fn paths_name_the_deployment_and_the_api_version() {
        crate::install_crypto_provider();
        let settings = client::ClientSettings {
            connect_timeout: std::time::Duration::from_secs(1),
            pool_idle_timeout: std::time::Duration::from_secs(1),
            pool_max_idle_per_host: 1,
            caps: Default::default(),
        };
        let client = client::build(settings, Vec::new()).unwrap();
        let provider: switchboard_shared::snapshot::Provider = serde_json::from_value(
            serde_json::json!({"id": "az", "kind": "azure", "base_url": "https://r.openai.azure.com", "api_version": "2024-10-21"}),
        )
        .unwrap();
        let aws = Credentials {
            access_key_id: String::new(),
            secret_access_key: String::new(),
            session_token: None,
        };
        let a = AzureAdaptor::new(&Setup {
            provider: &provider,
            client: &client,
            api_key: Some("k"),
            aws: &aws,
        })
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
