//! The console's session: the same short-lived admin JWT the API hands out at login (so a
//! session carries exactly the role and tenant an API token would), kept in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` when `ui.public_url` is `https://`), and the CSRF token
//! every form write must carry: an HMAC of the session under the JWT secret, so it is per
//! session, needs no storage and cannot be computed without the secret.
//!
//! Writes arrive as [`PostForm`]: the session, the form's fields, and the CSRF token checked
//! (a missing or wrong token is 403). A request whose `Origin` is not this host is refused
//! as well.

use std::collections::BTreeMap;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::service::Actor;
use crate::service::auth::{Claims, issue_token, verify_token};
use crate::state::AppState;

/// The session cookie.
pub const COOKIE: &str = "sb_session";

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub actor: Actor,
    /// The token forms must echo in their `csrf` field.
    pub csrf: String,
    /// The seconds since the Unix epoch at which the session ends.
    pub expires_at: u64,
}

impl Session {
    pub fn can_write(&self) -> bool {
        self.actor.require_writer().is_ok()
    }
    pub fn platform_admin(&self) -> bool {
        self.actor.require_platform_admin().is_ok()
    }
    pub fn platform_reader(&self) -> bool {
        self.actor.require_platform_reader().is_ok()
    }
}

/// The value of cookie `name`, if the request sends it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A `Set-Cookie` value. `max_age` 0 clears the cookie.
pub fn set_cookie(
    state: &AppState,
    name: &str,
    value: &str,
    path: &str,
    same_site: &str,
    max_age: u64,
) -> HeaderValue {
    cookie_header(name, value, path, same_site, max_age, secure(state))
}

/// The `Set-Cookie` text: always `HttpOnly`, `Secure` over TLS.
fn cookie_header(
    name: &str,
    value: &str,
    path: &str,
    same_site: &str,
    max_age: u64,
    secure: bool,
) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path={path}; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether browsers reach the console over TLS.
fn secure(state: &AppState) -> bool {
    state
        .settings
        .ui
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"))
}

/// The CSRF token of the session `token`.
pub fn csrf_of(secret: &[u8], token: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(b"switchboard-ui-csrf\0");
    mac.update(token.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Equal without an early exit.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// A response that starts the session `claims` and goes to `to`.
pub fn start(state: &AppState, claims: &Claims, to: Response) -> Response {
    let Ok(token) = issue_token(&state.settings.jwt_secret, claims) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    };
    let ttl = claims.exp.saturating_sub(claims.iat);
    let mut response = to;
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, COOKIE, &token, "/ui", "Strict", ttl),
    );
    response
}

/// Where an anonymous browser is sent.
fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let token = cookie(&parts.headers, COOKIE).ok_or_else(to_login)?;
        let secret = &state.settings.jwt_secret;
        let auth = &state.settings.admin_auth;
        let claims = verify_token(secret, auth, &token).map_err(|_| to_login())?;
        let actor = actor(state, &claims).await.map_err(|_| to_login())?;
        Ok(Session {
            csrf: csrf_of(secret, &token),
            expires_at: claims.exp,
            actor,
        })
    }
}

/// The admin a console session stands for. A password session is the admin as it is now
/// (`session_actor`: current role and tenant, token version checked, so a deleted, demoted or
/// revoked admin is signed out on the next page). An SSO session (`sub` = `oidc:...`, minted
/// by `ui::oidc` only after the provider's ID token was verified) has no admin row: its role
/// and tenant are the ones mapped from that ID token, for the session's lifetime
/// (`auth.token_ttl_seconds`); the identity provider decides again at the next sign-in.
async fn actor(state: &AppState, claims: &Claims) -> crate::service::Result<Actor> {
    if claims.sub.starts_with("oidc:") {
        return Ok(Actor {
            id: None,
            email: claims.email.clone(),
            role: claims.role,
            tenant_id: claims.tenant_id.clone(),
        });
    }
    crate::service::auth::session_actor(&state.pool, claims).await
}

/// The refusal of a write whose `Origin` names another host than `Host`.
pub fn cross_origin(headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) if origin != "null" => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            (origin_host != host)
                .then(|| (StatusCode::FORBIDDEN, "cross-origin form refused").into_response())
        }
        _ => None,
    }
}

/// The fields of an urlencoded form body.
#[derive(Debug, Default)]
pub struct Fields(pub BTreeMap<String, String>);

impl Fields {
    /// The trimmed value of `name`, `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }
    pub fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().to_owned()
    }
}

/// Parses an urlencoded body.
pub async fn fields(req: Request, state: &AppState) -> Result<Fields, Response> {
    let axum::Form(pairs) = axum::Form::<Vec<(String, String)>>::from_request(req, state)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Fields(pairs.into_iter().collect()))
}

/// A form write from a signed-in browser, its CSRF token checked.
pub struct PostForm {
    pub session: Session,
    pub fields: Fields,
}

impl FromRequest<AppState> for PostForm {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        if let Some(refused) = cross_origin(req.headers()) {
            return Err(refused);
        }
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let fields = fields(Request::from_parts(parts, body), state).await?;
        let sent = fields.0.get("csrf").map(String::as_str).unwrap_or_default();
        if !same(sent, &session.csrf) {
            return Err((
                StatusCode::FORBIDDEN,
                "the form's CSRF token is missing or wrong: reload the page",
            )
                .into_response());
        }
        Ok(PostForm { session, fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name_among_several_headers() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; sb_session_x=no"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("sb_session=tok.en; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("tok.en"));
        assert_eq!(cookie(&h, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn csrf_tokens_differ_per_session_and_per_secret() {
        let a = csrf_of(b"secret-one", "session-a");
        assert_eq!(a, csrf_of(b"secret-one", "session-a"));
        assert_ne!(a, csrf_of(b"secret-one", "session-b"));
        assert_ne!(a, csrf_of(b"secret-two", "session-a"));
        assert_eq!(a.len(), 64);
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &a[..63]));
        assert!(!same(&a, ""));
    }

    #[test]
    fn session_cookies_are_http_only_strict_and_secure_over_tls() {
        let plain = cookie_header(COOKIE, "t", "/ui", "Strict", 900, false);
        assert_eq!(
            plain,
            "sb_session=t; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=900"
        );
        let tls = cookie_header(COOKIE, "t", "/ui", "Strict", 900, true);
        assert!(tls.to_str().unwrap().ends_with("; Secure"), "{tls:?}");
    }

    #[test]
    fn cross_origin_writes_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("admin.example.com:8081"),
        );
        assert!(
            cross_origin(&h).is_none(),
            "no Origin: a non-browser client"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://admin.example.com:8081"),
        );
        assert!(cross_origin(&h).is_none());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        let refused = cross_origin(&h).expect("refused");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
}
