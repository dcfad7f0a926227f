//! Admin sessions that end when they should (issue 12 item 3), against a real Postgres: a
//! deleted, demoted, re-passworded or revoked admin's token stops working on the next request;
//! tokens for another issuer or audience are refused; logins are rate limited per account and
//! per client address, and password checks never run beyond their cap under a flood.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use controlplane::config::AdminAuthSettings;
use controlplane::service::auth::{Claims, Role, issue_token};
use serde_json::json;
use sqlx::PgPool;
use tower::ServiceExt;

use common::{Cp, PASSWORD, settings, start_with, unique_namespace};

/// The admin id behind a token (its `sub`).
fn admin_id(token: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    claims["sub"].as_str().unwrap().to_owned()
}

/// A login from `peer` (when given) as the server would see it.
async fn login_from(cp: &Cp, peer: Option<SocketAddr>, email: &str, password: &str) -> StatusCode {
    let (status, _) = login_reply(cp, peer, email, password).await;
    status
}

async fn login_reply(
    cp: &Cp,
    peer: Option<SocketAddr>,
    email: &str,
    password: &str,
) -> (StatusCode, Option<String>) {
    let body = serde_json::to_vec(&json!({"email": email, "password": password})).unwrap();
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/admin/v1/auth/login")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    if let Some(peer) = peer {
        req.extensions_mut().insert(ConnectInfo(peer));
    }
    let response = cp.router.clone().oneshot(req).await.unwrap();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status(), retry)
}

#[sqlx::test(migrations = "../migrations")]
async fn deleted_demoted_revoked_and_repassworded_admins_lose_their_sessions_at_once(pool: PgPool) {
    let cp = common::start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let r = cp
        .post("/admin/v1/tenants", &root, json!({"id": "acme"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // Deleted: its token is 401 on the very next request.
    let gone = cp
        .admin("gone@example.com", Role::PlatformAdmin, None)
        .await;
    assert_eq!(
        cp.get("/admin/v1/tenants", &gone).await.status,
        StatusCode::OK
    );
    let r = cp
        .call(
            Method::DELETE,
            &format!("/admin/v1/admins/{}", admin_id(&gone)),
            &root,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = cp.get("/admin/v1/tenants", &gone).await;
    r.assert_problem(StatusCode::UNAUTHORIZED, None, "deleted admin");

    // Demoted from platform admin to viewer: the old token is ended; a new login is a viewer.
    let demoted = cp
        .admin("demoted@example.com", Role::PlatformAdmin, None)
        .await;
    let uri = format!("/admin/v1/admins/{}", admin_id(&demoted));
    let r = cp
        .call(Method::PATCH, &uri, &root, Some(json!({"role": "viewer"})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["role"], "viewer");
    let r = cp
        .post("/admin/v1/tenants", &demoted, json!({"id": "evil"}))
        .await;
    r.assert_problem(StatusCode::UNAUTHORIZED, None, "demoted admin's old token");
    let (status, _) = login_reply(&cp, None, "demoted@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);

    // A tenant admin moved to viewer mid-session: same.
    let ops = cp
        .admin("ops@acme.example", Role::TenantAdmin, Some("acme"))
        .await;
    let r = cp
        .call(
            Method::PATCH,
            &format!("/admin/v1/admins/{}", admin_id(&ops)),
            &root,
            Some(json!({"role": "viewer", "tenant_id": null})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        cp.get("/admin/v1/keys", &ops).await.status,
        StatusCode::UNAUTHORIZED
    );
    // A role without its tenant rule is refused and changes nothing.
    let r = cp
        .call(
            Method::PATCH,
            &format!("/admin/v1/admins/{}", admin_id(&ops)),
            &root,
            Some(json!({"role": "tenant_admin"})),
        )
        .await;
    r.assert_problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("tenant_id"),
        "no tenant",
    );

    // Password change: old token ended, old password refused, new one works.
    let pw = cp.admin("pw@example.com", Role::Viewer, None).await;
    let r = cp
        .call(
            Method::PATCH,
            &format!("/admin/v1/admins/{}", admin_id(&pw)),
            &root,
            Some(json!({"password": "a brand new password"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(!r.body.to_string().contains("brand new"), "{}", r.body);
    assert_eq!(
        cp.get("/admin/v1/tenants", &pw).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login_from(&cp, None, "pw@example.com", PASSWORD).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login_from(&cp, None, "pw@example.com", "a brand new password").await,
        StatusCode::OK
    );

    // "Log out everywhere", by the admin itself: every earlier token ends, including the one
    // that asked.
    let me = cp.admin("me@example.com", Role::Viewer, None).await;
    let r = cp
        .post(
            &format!("/admin/v1/admins/{}/revoke-sessions", admin_id(&me)),
            &me,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        cp.get("/admin/v1/tenants", &me).await.status,
        StatusCode::UNAUTHORIZED
    );
    // A non-platform admin cannot end another's sessions (it is not found for them).
    let other = cp.admin("other@example.com", Role::Viewer, None).await;
    let r = cp
        .post(
            &format!("/admin/v1/admins/{}/revoke-sessions", admin_id(&root)),
            &other,
            json!({}),
        )
        .await;
    r.assert_problem(StatusCode::NOT_FOUND, None, "viewer revoking root");
    assert_eq!(
        cp.get("/admin/v1/tenants", &root).await.status,
        StatusCode::OK
    );
    // A platform admin ends someone else's.
    let r = cp
        .post(
            &format!("/admin/v1/admins/{}/revoke-sessions", admin_id(&other)),
            &root,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        cp.get("/admin/v1/tenants", &other).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Each of these was audited.
    let audit = cp.get("/admin/v1/audit?limit=1000", &root).await;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["object_type"] == "admin_user")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"revoke_sessions"), "{actions:?}");
    assert!(actions.contains(&"update"), "{actions:?}");
}

#[sqlx::test(migrations = "../migrations")]
async fn tokens_for_another_issuer_or_audience_or_an_old_version_are_refused(pool: PgPool) {
    let cp = common::start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let settings = &cp.running.state.settings;
    let now = chrono::Utc::now().timestamp() as u64;
    let claims = Claims {
        sub: admin_id(&root),
        email: "root@example.com".into(),
        role: Role::PlatformAdmin,
        tenant_id: None,
        iat: now,
        exp: now + 60,
        ver: 0,
        iss: settings.admin_auth.issuer.clone(),
        aud: settings.admin_auth.audience.clone(),
    };
    let sign = |c: &Claims| issue_token(&settings.jwt_secret, c).unwrap();
    assert_eq!(
        cp.get("/admin/v1/tenants", &sign(&claims)).await.status,
        StatusCode::OK
    );
    for (what, c) in [
        (
            "issuer",
            Claims {
                iss: "someone-else".into(),
                ..claims.clone()
            },
        ),
        (
            "audience",
            Claims {
                aud: "another-service".into(),
                ..claims.clone()
            },
        ),
        (
            "version",
            Claims {
                ver: 7,
                ..claims.clone()
            },
        ),
        (
            "unknown admin",
            Claims {
                sub: uuid::Uuid::now_v7().to_string(),
                ..claims.clone()
            },
        ),
    ] {
        let r = cp.get("/admin/v1/tenants", &sign(&c)).await;
        r.assert_problem(StatusCode::UNAUTHORIZED, None, what);
    }
    // The role in the token is not what counts: a viewer's row with a token claiming more.
    let viewer = cp.admin("v@example.com", Role::Viewer, None).await;
    let lying = Claims {
        sub: admin_id(&viewer),
        email: "v@example.com".into(),
        ..claims.clone()
    };
    let r = cp
        .post("/admin/v1/tenants", &sign(&lying), json!({"id": "x"}))
        .await;
    r.assert_problem(
        StatusCode::FORBIDDEN,
        None,
        "viewer claiming platform_admin",
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn logins_are_rate_limited_per_account_and_per_address_with_retry_after(pool: PgPool) {
    let mut s = settings(&unique_namespace());
    s.admin_auth = AdminAuthSettings {
        login_per_account_per_minute: 3,
        login_per_ip_per_minute: 5,
        ..AdminAuthSettings::default()
    };
    let cp = start_with(pool, s).await;
    cp.admin("root@example.com", Role::PlatformAdmin, None)
        .await; // one login used
    let a: SocketAddr = "198.51.100.7:5000".parse().unwrap();
    let b: SocketAddr = "198.51.100.8:5000".parse().unwrap();
    // Per account (any case): two more attempts, then 429 with Retry-After — even with the
    // right password, and from another address.
    for _ in 0..2 {
        assert_eq!(
            login_from(&cp, Some(a), "ROOT@example.com", "wrong password!!").await,
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, retry) = login_reply(&cp, Some(b), "root@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Per address: a spray of accounts from one address is cut off at 5 (2 used above).
    let mut statuses = Vec::new();
    for i in 0..5 {
        statuses
            .push(login_from(&cp, Some(a), &format!("u{i}@example.com"), "whatever12345").await);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // Another address is not affected.
    assert_eq!(
        login_from(&cp, Some(b), "u9@example.com", "whatever12345").await,
        StatusCode::UNAUTHORIZED
    );
    // Both refusals are exported at /metrics (open, like /healthz), by reason only.
    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let response = cp.router.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    for reason in ["account", "ip"] {
        let series = format!("switchboard_login_refusals_total{{reason=\"{reason}\"}}");
        assert!(
            text.contains(&series),
            "{series} missing from /metrics:\n{text}"
        );
    }
    assert!(
        !text.contains("example.com"),
        "an email in /metrics:\n{text}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_login_flood_never_runs_more_password_checks_than_the_cap(pool: PgPool) {
    let mut s = settings(&unique_namespace());
    s.admin_auth = AdminAuthSettings {
        login_per_account_per_minute: 1000,
        login_per_ip_per_minute: 1000,
        max_concurrent_password_checks: 2,
        ..AdminAuthSettings::default()
    };
    let cp = std::sync::Arc::new(start_with(pool, s).await);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let cp = cp.clone();
        tasks.push(tokio::spawn(async move {
            let peer: SocketAddr = format!("203.0.113.{}:1", i % 50).parse().unwrap();
            login_reply(
                &cp,
                Some(peer),
                &format!("nobody{i}@example.com"),
                "bad password!",
            )
            .await
        }));
    }
    let mut refused = 0;
    for task in tasks {
        let (status, retry) = task.await.unwrap();
        match status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(retry.is_some(), "429 without Retry-After");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let peak = cp.running.state.login_guard.peak_checks();
    assert!((1..=2).contains(&peak), "peak {peak} checks at once");
    assert!(
        refused > 0,
        "a flood of 100 with a cap of 2 must be refused in part"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_deleted_key_leaves_the_snapshot_and_stays_gone(pool: PgPool) {
    let cp = common::start(pool.clone()).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    for t in ["acme", "globex"] {
        let r = cp.post("/admin/v1/tenants", &root, json!({"id": t})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let r = cp
        .post("/admin/v1/keys", &root, json!({"tenant_id": "acme"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let uri = format!("/admin/v1/keys/{id}");
    // Another tenant's admin and a viewer cannot delete it.
    let globex = cp
        .admin("ops@globex.example", Role::TenantAdmin, Some("globex"))
        .await;
    let viewer = cp.admin("v@example.com", Role::Viewer, None).await;
    let r = cp.call(Method::DELETE, &uri, &globex, None).await;
    r.assert_problem(StatusCode::NOT_FOUND, None, "other tenant");
    let r = cp.call(Method::DELETE, &uri, &viewer, None).await;
    r.assert_problem(StatusCode::FORBIDDEN, None, "viewer");

    let r = cp.call(Method::DELETE, &uri, &root, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let deleted_at = r.revision();
    assert_eq!(cp.get(&uri, &root).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        cp.call(Method::DELETE, &uri, &root, None).await.status,
        StatusCode::NOT_FOUND
    );
    let snapshot = controlplane::service::snapshot::build_consistent(&pool)
        .await
        .unwrap();
    assert!(snapshot.revision >= deleted_at);
    assert!(snapshot.virtual_keys.iter().all(|k| k.id != id));
    let audit = cp.get("/admin/v1/audit?limit=1000", &root).await;
    assert!(
        audit.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "delete" && e["object_id"] == id.as_str()),
        "{}",
        audit.body
    );
}
