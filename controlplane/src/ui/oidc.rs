//! OpenID Connect single sign-on for the console: the authorization code flow with PKCE
//! (S256) against any provider found by discovery (`{issuer}/.well-known/openid-configuration`).
//!
//! `GET /ui/sso/start` makes a state, a nonce and a PKCE verifier, keeps them in a short-lived
//! signed cookie (`HttpOnly`, `SameSite=Lax` so that it comes back with the provider's
//! redirect, path `/ui/sso`) and sends the browser to the provider. `GET /ui/sso/callback`
//! checks the state against the cookie, redeems the code with the verifier and the client
//! secret, and validates the ID token: signature by the provider's JWKS (asymmetric algorithms
//! only), `iss`, `aud`, `exp` and `nonce`. The role and tenant come from configured claims
//! (`ui.oidc.role_claim`, `roles`, `tenant_claim`); a role that maps to nothing, or a tenant
//! admin without a tenant, is refused. The session is then the same as a password sign-in's.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::session::{cookie, set_cookie, start};
use crate::config::OidcSettings;
use crate::service::Role;
use crate::service::auth::Claims;
use crate::state::AppState;

/// The flow cookie.
const FLOW_COOKIE: &str = "sb_oidc";
/// How long a sign-in at the provider may take.
const FLOW_TTL: u64 = 600;

/// What the flow cookie holds (signed with the JWT secret).
#[derive(Debug, Serialize, Deserialize)]
struct Flow {
    state: String,
    nonce: String,
    verifier: String,
    exp: u64,
}

/// The parts of the discovery document used here.
#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// Why SSO failed: said to the browser in words, without secrets.
#[derive(Debug)]
pub struct SsoError(String);

impl IntoResponse for SsoError {
    fn into_response(self) -> Response {
        tracing::warn!(reason = %self.0, "ui: single sign-on refused");
        let body = super::html::document(
            "Sign-in failed",
            maud::html! { main.login { h1 { "Sign-in failed" } p role="alert" { (self.0) }
            p { a href="/ui/login" { "Back to sign-in" } } } },
        );
        (StatusCode::UNAUTHORIZED, body).into_response()
    }
}

fn fail(why: impl Into<String>) -> SsoError {
    SsoError(why.into())
}

fn random() -> String {
    use aes_gcm::aead::OsRng;
    use aes_gcm::aead::rand_core::RngCore;
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

fn oidc(state: &AppState) -> Result<&OidcSettings, SsoError> {
    state
        .settings
        .ui
        .oidc
        .as_ref()
        .ok_or_else(|| fail("single sign-on is not configured"))
}

fn client() -> Result<reqwest::Client, SsoError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| fail(format!("HTTP client: {e}")))
}

async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    what: &str,
) -> Result<T, SsoError> {
    let response = client.get(url).send().await.map_err(|_| {
        fail(format!(
            "the identity provider's {what} could not be fetched"
        ))
    })?;
    if !response.status().is_success() {
        return Err(fail(format!(
            "the identity provider's {what} answered {}",
            response.status()
        )));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|_| fail(format!("the identity provider's {what} was cut off")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| fail(format!("the identity provider's {what} is not valid JSON")))
}

async fn discover(client: &reqwest::Client, o: &OidcSettings) -> Result<Discovery, SsoError> {
    let url = format!("{}/.well-known/openid-configuration", o.issuer);
    let d: Discovery = get_json(client, &url, "discovery document").await?;
    if d.issuer.trim_end_matches('/') != o.issuer {
        return Err(fail("the discovery document names another issuer"));
    }
    Ok(d)
}

/// `{public_url}/ui/sso/callback`.
fn redirect_uri(state: &AppState) -> String {
    let base = state
        .settings
        .ui
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", state.settings.listen));
    format!("{base}/ui/sso/callback")
}

/// `GET /ui/sso/start`.
pub async fn start_sso(State(state): State<AppState>) -> Result<Response, SsoError> {
    let o = oidc(&state)?;
    let d = discover(&client()?, o).await?;
    let flow = Flow {
        state: random(),
        nonce: random(),
        verifier: random(),
        exp: now() + FLOW_TTL,
    };
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(flow.verifier.as_bytes()));
    let redirect = redirect_uri(&state);
    let url = reqwest::Url::parse_with_params(
        &d.authorization_endpoint,
        &[
            ("response_type", "code"),
            ("client_id", o.client_id.as_str()),
            ("redirect_uri", redirect.as_str()),
            ("scope", o.scopes.as_str()),
            ("state", flow.state.as_str()),
            ("nonce", flow.nonce.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    )
    .map_err(|_| fail("the identity provider's authorization endpoint is not a URL"))?;
    let sealed = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &flow,
        &EncodingKey::from_secret(&state.settings.jwt_secret),
    )
    .map_err(|_| fail("internal error"))?;
    let mut response = Redirect::to(url.as_str()).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, FLOW_COOKIE, &sealed, "/ui/sso", "Lax", FLOW_TTL),
    );
    Ok(response)
}

/// `GET /ui/sso/callback` parameters.
#[derive(Debug, Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /ui/sso/callback`.
pub async fn callback(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(cb): Query<Callback>,
) -> Result<Response, SsoError> {
    let o = oidc(&state)?;
    if let Some(error) = cb.error {
        return Err(fail(format!(
            "the identity provider refused: {}",
            error.chars().take(100).collect::<String>()
        )));
    }
    let sealed = cookie(&headers, FLOW_COOKIE).ok_or_else(|| {
        fail("no sign-in was started in this browser (or it took over 10 minutes)")
    })?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp"]);
    let flow = jsonwebtoken::decode::<Flow>(
        &sealed,
        &jsonwebtoken::DecodingKey::from_secret(&state.settings.jwt_secret),
        &validation,
    )
    .map_err(|_| fail("the sign-in expired or was tampered with"))?
    .claims;
    if cb.state.as_deref() != Some(flow.state.as_str()) {
        return Err(fail("the sign-in's state does not match"));
    }
    let code = cb
        .code
        .ok_or_else(|| fail("the identity provider sent no code"))?;
    let client = client()?;
    let d = discover(&client, o).await?;
    let id_token = redeem(&client, &state, o, &d, &code, &flow.verifier).await?;
    let claims = validate(&client, o, &d, &id_token, &flow.nonce).await?;
    let session = session_claims(&state, o, &claims)?;
    let page = super::html::document(
        "Signed in",
        maud::html! {
            main.login { p { "Signed in. " a #continue href="/ui" { "Continue to the console" } } }
        },
    );
    let mut page = start(&state, &session, page);
    page.headers_mut().insert(
        header::REFRESH,
        axum::http::HeaderValue::from_static("0; url=/ui"),
    );
    page.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, FLOW_COOKIE, "", "/ui/sso", "Lax", 0),
    );
    Ok(page)
}

/// Redeems the code (with the PKCE verifier; client secret by HTTP Basic) for an ID token.
async fn redeem(
    client: &reqwest::Client,
    state: &AppState,
    o: &OidcSettings,
    d: &Discovery,
    code: &str,
    verifier: &str,
) -> Result<String, SsoError> {
    let redirect = redirect_uri(state);
    let mut form =
        reqwest::Url::parse("http://form.invalid/").map_err(|_| fail("internal error"))?;
    form.query_pairs_mut()
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", &redirect)
        .append_pair("code_verifier", verifier)
        .append_pair("client_id", &o.client_id);
    let response = client
        .post(&d.token_endpoint)
        .basic_auth(&o.client_id, Some(&o.client_secret))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(form.query().unwrap_or_default().to_owned())
        .send()
        .await
        .map_err(|_| fail("the identity provider's token endpoint could not be reached"))?;
    if !response.status().is_success() {
        return Err(fail(format!(
            "the identity provider's token endpoint answered {}",
            response.status()
        )));
    }
    let body: Value = serde_json::from_slice(
        &response
            .bytes()
            .await
            .map_err(|_| fail("the token answer was cut off"))?,
    )
    .map_err(|_| fail("the token answer is not JSON"))?;
    body["id_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| fail("the token answer holds no id_token"))
}

/// Checks the ID token's signature (JWKS), issuer, audience, expiry and nonce.
async fn validate(
    client: &reqwest::Client,
    o: &OidcSettings,
    d: &Discovery,
    token: &str,
    nonce: &str,
) -> Result<serde_json::Map<String, Value>, SsoError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| fail("the ID token is malformed"))?;
    let asymmetric = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    if !asymmetric.contains(&header.alg) {
        return Err(fail("the ID token's algorithm is not an asymmetric one"));
    }
    let jwks: JwkSet = get_json(client, &d.jwks_uri, "key set").await?;
    let jwk = match &header.kid {
        Some(kid) => jwks.find(kid),
        None => jwks.keys.first(),
    }
    .ok_or_else(|| fail("the ID token is signed by a key the provider does not publish"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| fail("the provider's key is unusable"))?;
    let mut validation = Validation::new(header.alg);
    validation.leeway = 30;
    validation.set_issuer(&[o.issuer.as_str(), d.issuer.as_str()]);
    validation.set_audience(&[o.client_id.as_str()]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation)
        .map_err(|e| fail(format!("the ID token is not valid: {e}")))?;
    if data.claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
        return Err(fail("the ID token's nonce does not match this sign-in"));
    }
    Ok(data.claims)
}

/// The role a role claim maps to: a string, or the first of an array of strings (a groups
/// claim) that maps to one.
fn role_of(o: &OidcSettings, claim: Option<&Value>) -> Result<Role, SsoError> {
    let values: Vec<&str> = match claim {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => {
            return Err(fail(format!(
                "the ID token has no {} claim: no role",
                o.role_claim
            )));
        }
    };
    let mapped = |v: &str| {
        let name = if o.roles.is_empty() {
            Some(v)
        } else {
            o.roles.get(v).map(String::as_str)
        };
        name.and_then(Role::parse)
    };
    values.iter().find_map(|v| mapped(v)).ok_or_else(|| {
        let shown: Vec<String> = values.iter().take(5).map(|v| format!("{v:?}")).collect();
        fail(format!(
            "the {} claim ({}) maps to no role",
            o.role_claim,
            shown.join(", ")
        ))
    })
}

/// The session's claims from the ID token's, by the configured mapping.
fn session_claims(
    state: &AppState,
    o: &OidcSettings,
    claims: &serde_json::Map<String, Value>,
) -> Result<Claims, SsoError> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let role = role_of(o, claims.get(&o.role_claim))?;
    let tenant_id = text(&o.tenant_claim);
    if role == Role::TenantAdmin && tenant_id.is_none() {
        return Err(fail(format!(
            "a tenant admin needs a {} claim",
            o.tenant_claim
        )));
    }
    let sub = text("sub").unwrap_or_default();
    let email = text("email").unwrap_or_else(|| format!("{sub}@{}", o.issuer));
    let iat = now();
    Ok(Claims {
        sub: format!("oidc:{sub}"),
        email,
        role,
        tenant_id: if role == Role::TenantAdmin {
            tenant_id
        } else {
            None
        },
        iat,
        exp: iat + state.settings.token_ttl.as_secs(),
        // SSO sessions have no admin row (and so no token version): see `session::actor`.
        ver: 0,
        iss: state.settings.admin_auth.issuer.clone(),
        aud: state.settings.admin_auth.audience.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(roles: &[(&str, &str)]) -> OidcSettings {
        OidcSettings {
            issuer: "https://idp.example".into(),
            client_id: "console".into(),
            client_secret: "s".into(),
            scopes: "openid".into(),
            role_claim: "groups".into(),
            roles: roles
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
            tenant_claim: "tenant".into(),
            label: "SSO".into(),
        }
    }

    #[test]
    fn roles_map_from_a_string_or_the_first_mapped_group() {
        let o = settings(&[("ops", "platform_admin"), ("acme-admins", "tenant_admin")]);
        assert_eq!(
            role_of(&o, Some(&json!("ops"))).unwrap(),
            Role::PlatformAdmin
        );
        let groups = json!(["staff", "acme-admins", "ops"]);
        assert_eq!(role_of(&o, Some(&groups)).unwrap(), Role::TenantAdmin);
        assert!(role_of(&o, Some(&json!(["staff"]))).is_err());
        assert!(
            role_of(&o, Some(&json!("platform_admin"))).is_err(),
            "only mapped values count"
        );
        assert!(role_of(&o, None).is_err());
        assert!(role_of(&o, Some(&json!(7))).is_err());
    }

    #[test]
    fn without_a_mapping_the_claim_must_name_a_role() {
        let o = settings(&[]);
        assert_eq!(role_of(&o, Some(&json!("viewer"))).unwrap(), Role::Viewer);
        assert!(role_of(&o, Some(&json!("admin"))).is_err());
    }
}
