//! The upstream check of `controlplane doctor`: for one provider, the host resolves, a
//! connection (TLS for `https`) opens, and an authenticated read-only call (the provider's
//! model list) is not refused. The credential is opened with the master keys for the call
//! only and never printed.

use reqwest::RequestBuilder;
use switchboard_shared::doctor::{Report, redacted};
use switchboard_shared::sealed::MasterKeys;
use switchboard_shared::snapshot::ProviderKind;

use crate::repo::rows::ProviderRow;

/// Checks the provider `p`, filing one line.
pub async fn upstream(
    client: &reqwest::Client,
    p: &ProviderRow,
    keys: &MasterKeys,
    report: &mut Report,
) {
    let name = format!("upstream {}", p.id);
    let kind = p.kind();
    let base = match base_url(p) {
        Ok(base) => base,
        Err(Unreachable::Mock) => {
            report.ok(name, "kind mock answers inside the data plane");
            return;
        }
        Err(Unreachable::NoBaseUrl) => {
            report.fail(
                name,
                "no base_url",
                format!("set base_url: PUT /admin/v1/providers/{}", p.id),
            );
            return;
        }
    };
    let shown = redacted(&base);
    if let Err(e) = resolve(&base).await {
        report.fail(
            name,
            format!("{shown}: DNS: {e}"),
            "check the host name in base_url and this host's DNS",
        );
        return;
    }
    let credential = credential(p, keys);
    let request = probe(
        client,
        kind,
        &base,
        p.extra.0.api_version.as_deref(),
        credential.as_deref(),
    );
    match request.send().await {
        Ok(r) if matches!(r.status().as_u16(), 401 | 403) && !matches!(kind, Some(ProviderKind::Bedrock | ProviderKind::Vertex)) => report.fail(
            name,
            format!("{shown} refused the credential (HTTP {})", r.status().as_u16()),
            format!("set a valid api_key: PUT /admin/v1/providers/{} (the upstream's account may also lack access)", p.id),
        ),
        // Gemini answers a bad key with 400 API_KEY_INVALID.
        Ok(r) if r.status().as_u16() == 400 && kind == Some(ProviderKind::Gemini) => {
            let body = r.text().await.unwrap_or_default();
            if body.contains("API_KEY_INVALID") {
                report.fail(
                    name,
                    format!("{shown} refused the credential (API_KEY_INVALID)"),
                    format!("set a valid api_key: PUT /admin/v1/providers/{}", p.id),
                );
            } else {
                report.ok(name, format!("{shown} reachable, HTTP 400 to a model list"));
            }
        }
        Ok(r) => report.ok(name, format!("{shown} reachable, HTTP {} to an authenticated model list", r.status().as_u16())),
        Err(e) => {
            let why = unreached(&e);
            report.fail(name, format!("{shown}: {why}"), "check that the upstream is up and reachable from here (firewall, proxy, TLS certificate)");
        }
    }
}

/// Why a call got no answer, in words (never the error's text, which may name the URL).
pub fn unreached(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if format!("{e:?}")
        .to_ascii_lowercase()
        .contains("certificate")
    {
        "TLS: the certificate is not trusted"
    } else {
        "cannot connect"
    }
}

/// Resolves the URL's host.
async fn resolve(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|_| "not a URL".to_owned())?;
    let host = parsed.host_str().ok_or("no host")?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    let found = tokio::net::lookup_host((host, port))
        .await
        .map(|mut addrs| addrs.next().is_some());
    match found {
        Ok(true) => Ok(()),
        _ => Err(format!("cannot resolve {host}")),
    }
}

/// Why a provider has no URL to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Kind `mock`: it answers inside the data plane.
    Mock,
    /// No `base_url`, and the kind has no fixed one.
    NoBaseUrl,
}

/// The provider's API base URL (no trailing `/`), as the data planes call it.
pub fn base_url(p: &ProviderRow) -> Result<String, Unreachable> {
    match (p.kind(), p.base_url.as_deref()) {
        (Some(ProviderKind::Mock), _) => Err(Unreachable::Mock),
        (_, Some(url)) => Ok(url.trim_end_matches('/').to_owned()),
        (Some(ProviderKind::Bedrock), None) => Ok(format!(
            "https://bedrock-runtime.{}.amazonaws.com",
            p.extra.0.region.as_deref().unwrap_or("us-east-1")
        )),
        (Some(ProviderKind::Vertex), None) => Ok(match p.extra.0.region.as_deref() {
            Some("global") | None => "https://aiplatform.googleapis.com".to_owned(),
            Some(location) => format!("https://{location}-aiplatform.googleapis.com"),
        }),
        _ => Err(Unreachable::NoBaseUrl),
    }
}

/// The provider's credential (its first key, for a multi-key provider), opened with the master
/// keys; `None` when it has none or it does not open. For the call only: never print it.
pub fn credential(p: &ProviderRow, keys: &MasterKeys) -> Option<String> {
    p.credential
        .as_ref()
        .map(|c| &c.0)
        .or(p.extra.0.api_keys.first().map(|k| &k.key))
        .and_then(|s| keys.open(s).ok())
}

/// `request` with the kind's credential header (Bedrock's SigV4 and Vertex's OAuth2 token are
/// not reproduced here).
pub fn authenticate(
    request: RequestBuilder,
    kind: Option<ProviderKind>,
    key: Option<&str>,
) -> RequestBuilder {
    let key = key.unwrap_or_default();
    match kind {
        Some(ProviderKind::Anthropic) => request
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01"),
        Some(ProviderKind::Gemini) => request.header("x-goog-api-key", key),
        Some(ProviderKind::Azure) => request.header("api-key", key),
        // SigV4 and Vertex's OAuth2 token are not reproduced here: only reachability.
        Some(ProviderKind::Bedrock | ProviderKind::Vertex) => request,
        _ => request.bearer_auth(key),
    }
}

/// A read-only authenticated call of the provider's API.
fn probe(
    client: &reqwest::Client,
    kind: Option<ProviderKind>,
    base: &str,
    api_version: Option<&str>,
    key: Option<&str>,
) -> RequestBuilder {
    let url = match kind {
        Some(ProviderKind::Azure) => format!(
            "{base}/openai/models?api-version={}",
            api_version.unwrap_or_default()
        ),
        // SigV4 and Vertex's OAuth2 token are not reproduced here: only reachability.
        Some(ProviderKind::Bedrock | ProviderKind::Vertex) => base.to_owned(),
        _ => format!("{base}/models"),
    };
    authenticate(client.get(url), kind, key)
}
