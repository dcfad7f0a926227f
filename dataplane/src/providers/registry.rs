//! The provider registry: which adaptor serves which [`ProviderKind`], built from a snapshot
//! provider and one of its credentials.
//!
//! This is the one place that names every adaptor. The catalog calls [`build`] once per
//! credential and never sees an adaptor type; a new kind is one line in [`build`]'s match
//! (the compiler points at it, the match has no catch-all arm). Each adaptor's constructor
//! takes a [`Setup`] and reads from it the settings of its kind. See
//! `docs/adding-a-provider.md`.

use std::sync::Arc;

use http::HeaderName;
use switchboard_shared::snapshot::{Provider, ProviderKind};

use super::ProviderAdaptor;
use super::anthropic::AnthropicAdaptor;
use super::azure::AzureAdaptor;
use super::bedrock::BedrockAdaptor;
use super::bedrock::sigv4::Credentials;
use super::client::HttpClient;
use super::common::Http;
use super::gemini::GeminiAdaptor;
use super::mock::MockAdaptor;
use super::openai::OpenAiAdaptor;
use super::vertex::VertexAdaptor;

/// What a constructor gets: the snapshot provider, the shared HTTP client and one of the
/// provider's credentials, already resolved from its secret reference.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    pub provider: &'a Provider,
    pub client: &'a HttpClient,
    pub api_key: Option<&'a str>,
    pub aws: &'a Credentials,
}

impl Setup<'_> {
    /// The provider's `base_url` (validation has made it present for every kind that needs it).
    pub fn base_url(&self) -> &str {
        self.provider.base_url.as_deref().unwrap_or_default()
    }

    /// The upstream at `base_url`, sending the API key (if any) as header `key_header`, after
    /// `prefix` (`"Bearer "`, or `""`).
    pub fn http(&self, key_header: HeaderName, prefix: &str) -> Result<Http, String> {
        Http::connect(self.client, self.base_url())?.with_key(key_header, prefix, self.api_key)
    }
}

/// The adaptor of `provider` with one credential (`api_key`, or the AWS `aws` for Bedrock).
/// `Err` is a message for the provider's path, e.g. an unparsable `base_url`.
pub fn build(
    provider: &Provider,
    client: &HttpClient,
    api_key: Option<&str>,
    aws: &Credentials,
) -> Result<Arc<dyn ProviderAdaptor>, String> {
    let s = Setup {
        provider,
        client,
        api_key,
        aws,
    };
    Ok(match provider.kind {
        ProviderKind::Mock => Arc::new(MockAdaptor),
        ProviderKind::Openai => Arc::new(OpenAiAdaptor::new(&s)?),
        ProviderKind::Anthropic => Arc::new(AnthropicAdaptor::new(&s)?),
        ProviderKind::Gemini => Arc::new(GeminiAdaptor::new(&s)?),
        ProviderKind::Bedrock => Arc::new(BedrockAdaptor::new(&s)?),
        ProviderKind::Azure => Arc::new(AzureAdaptor::new(&s)?),
        ProviderKind::Vertex => Arc::new(VertexAdaptor::new(&s)?),
    })
}
