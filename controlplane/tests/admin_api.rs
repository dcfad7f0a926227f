//! The admin REST API against a real Postgres (a fresh database per test) and NATS: roles and
//! tenant isolation, bad input that changes nothing, sealed credentials, the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use axum::http::{Method, StatusCode};
use controlplane::service::auth::{Claims, Role, issue_token};
use serde_json::json;
use sqlx::PgPool;

use common::{Cp, start};

async fn two_tenants_with_keys(cp: &Cp, root: &str) -> (String, String) {
    for t in ["acme", "globex"] {
        let r = cp
            .post("/admin/v1/tenants", root, json!({"id": t, "name": t}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let a = cp
        .post(
            "/admin/v1/keys",
            root,
            json!({"tenant_id": "acme", "name": "a"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let g = cp
        .post(
            "/admin/v1/keys",
            root,
            json!({"tenant_id": "globex", "name": "g"}),
        )
        .await;
    assert_eq!(g.status, StatusCode::CREATED, "{}", g.body);
    (
        a.body["id"].as_str().unwrap().to_owned(),
        g.body["id"].as_str().unwrap().to_owned(),
    )
}

#[sqlx::test(migrations = "../migrations")]
async fn tenant_admins_see_only_their_tenant_and_viewers_cannot_write(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let (acme_key, globex_key) = two_tenants_with_keys(&cp, &root).await;
    let acme = cp
        .admin("ops@acme.example", Role::TenantAdmin, Some("acme"))
        .await;
    let viewer = cp.admin("audit@example.com", Role::Viewer, None).await;
    let before = cp.fingerprint().await;

    // Reading: own key yes, the other tenant's key and tenant are 404; lists are confined.
    assert_eq!(
        cp.get(&format!("/admin/v1/keys/{acme_key}"), &acme)
            .await
            .status,
        StatusCode::OK
    );
    for uri in [
        format!("/admin/v1/keys/{globex_key}"),
        "/admin/v1/tenants/globex".to_owned(),
    ] {
        let r = cp.get(&uri, &acme).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}: {}", r.body);
        assert_eq!(r.headers["content-type"], "application/problem+json");
    }
    let list = cp.get("/admin/v1/keys", &acme).await;
    let ids: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![acme_key.as_str()]);
    let list = cp.get("/admin/v1/keys?tenant_id=globex", &acme).await;
    assert_eq!(list.body["items"], json!([]));
    let tenants = cp.get("/admin/v1/tenants", &acme).await;
    assert_eq!(tenants.body["items"].as_array().unwrap().len(), 1);

    // Changing or revoking the other tenant's key: 404, and nothing changes.
    let r = cp
        .call(
            Method::PATCH,
            &format!("/admin/v1/keys/{globex_key}"),
            &acme,
            Some(json!({"name": "mine now"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    for action in ["revoke", "rotate"] {
        let r = cp
            .post(
                &format!("/admin/v1/keys/{globex_key}/{action}"),
                &acme,
                json!({}),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{action}: {}", r.body);
    }
    // Creating a key in the other tenant reads like an unknown tenant.
    let r = cp
        .post("/admin/v1/keys", &acme, json!({"tenant_id": "globex"}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.body["errors"][0]["path"], "tenant_id");
    // Platform objects are not for tenant admins.
    assert_eq!(
        cp.get("/admin/v1/providers", &acme).await.status,
        StatusCode::FORBIDDEN
    );
    // The audit log shows a tenant admin only its tenant's entries.
    let audit = cp.get("/admin/v1/audit", &acme).await;
    assert!(
        audit.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant_id"] == "acme"),
        "{}",
        audit.body
    );

    // A viewer reads everything and writes nothing.
    assert_eq!(
        cp.get(&format!("/admin/v1/keys/{globex_key}"), &viewer)
            .await
            .status,
        StatusCode::OK
    );
    let writes = [
        (
            Method::POST,
            "/admin/v1/tenants".to_owned(),
            json!({"id": "x"}),
        ),
        (
            Method::POST,
            "/admin/v1/keys".to_owned(),
            json!({"tenant_id": "acme"}),
        ),
        (
            Method::POST,
            format!("/admin/v1/keys/{acme_key}/revoke"),
            json!({}),
        ),
        (
            Method::PATCH,
            format!("/admin/v1/keys/{acme_key}"),
            json!({"name": "v"}),
        ),
        (
            Method::DELETE,
            "/admin/v1/tenants/acme".to_owned(),
            json!({}),
        ),
    ];
    for (method, uri, body) in writes {
        let r = cp.call(method.clone(), &uri, &viewer, Some(body)).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {}",
            r.body
        );
    }
    assert_eq!(
        cp.fingerprint().await,
        before,
        "a refused request changed the database"
    );

    // The tenant admin can manage its own key.
    let r = cp
        .post(
            &format!("/admin/v1/keys/{acme_key}/revoke"),
            &acme,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "revoked");
}

#[sqlx::test(migrations = "../migrations")]
async fn missing_expired_and_tampered_tokens_get_401(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    assert_eq!(
        cp.get("/admin/v1/tenants", &root).await.status,
        StatusCode::OK
    );

    let none = cp
        .raw(Method::GET, "/admin/v1/tenants", None, Vec::new())
        .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers["content-type"], "application/problem+json");

    let now = chrono::Utc::now().timestamp() as u64;
    let expired = issue_token(
        &cp.running.state.settings.jwt_secret,
        &Claims {
            sub: uuid::Uuid::now_v7().to_string(),
            email: "root@example.com".into(),
            role: Role::PlatformAdmin,
            tenant_id: None,
            iat: now - 1000,
            exp: now - 10,
            ver: 0,
            iss: "switchboard-controlplane".into(),
            aud: "switchboard-admin".into(),
        },
    )
    .unwrap();
    let r = cp.get("/admin/v1/tenants", &expired).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body["detail"].as_str().unwrap().contains("expired"));

    // A viewer's token edited to claim platform_admin: the signature no longer matches.
    let viewer = cp.admin("v@example.com", Role::Viewer, None).await;
    let parts: Vec<&str> = viewer.split('.').collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
    let forged = b64.encode(payload.replace("viewer", "platform_admin"));
    let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
    let r = cp
        .post("/admin/v1/tenants", &tampered, json!({"id": "evil"}))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Signed with another secret.
    let other = issue_token(
        b"another-secret-another-secret-xx",
        &Claims {
            sub: uuid::Uuid::now_v7().to_string(),
            email: "x@example.com".into(),
            role: Role::PlatformAdmin,
            tenant_id: None,
            iat: now,
            exp: now + 60,
            ver: 0,
            iss: "switchboard-controlplane".into(),
            aud: "switchboard-admin".into(),
        },
    )
    .unwrap();
    assert_eq!(
        cp.get("/admin/v1/tenants", &other).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Wrong password: 401, no token.
    let r = cp
        .raw(
            Method::POST,
            "/admin/v1/auth/login",
            None,
            br#"{"email":"root@example.com","password":"wrong password!"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.get("access_token").is_none());
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_input_gets_the_right_4xx_and_changes_nothing(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let (acme_key, _) = two_tenants_with_keys(&cp, &root).await;
    let before = cp.fingerprint().await;

    let raw = |body: &str| body.as_bytes().to_vec();
    // (method, uri, body, expected status, a field path the problem must name)
    type Case = (Method, String, Vec<u8>, StatusCode, Option<&'static str>);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/admin/v1/tenants".into(),
            raw("{\"id\": \"x\""),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::POST,
            "/admin/v1/tenants".into(),
            raw("not json"),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::POST,
            "/admin/v1/tenants".into(),
            raw(r#"{"id": 5}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("id"),
        ),
        (
            Method::POST,
            "/admin/v1/tenants".into(),
            raw(r#"{"id": "x", "limits": {"rpm": "many"}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("limits.rpm"),
        ),
        (
            Method::POST,
            "/admin/v1/tenants".into(),
            raw(r#"{"id": "x", "colour": "red"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            Method::POST,
            "/admin/v1/tenants".into(),
            raw(r#"{"id": "x", "limits": {"rpm": 0}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("limits.rpm"),
        ),
        // Stored since 0270; 0 would refuse every request.
        (
            Method::POST,
            "/admin/v1/tenants".into(),
            raw(r#"{"id": "x", "limits": {"concurrency": 0}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("limits.concurrency"),
        ),
        (
            Method::POST,
            "/admin/v1/keys".into(),
            raw(r#"{"tenant_id": "acme", "name": "k", "limits": {"concurrency": 0}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("limits.concurrency"),
        ),
        (
            Method::POST,
            "/admin/v1/tenants".into(),
            raw(r#"{"id": "bad id; DROP TABLE tenants"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("id"),
        ),
        (
            Method::POST,
            "/admin/v1/tenants".into(),
            raw(r#"{"id": "acme"}"#),
            StatusCode::CONFLICT,
            None,
        ),
        (
            Method::POST,
            "/admin/v1/keys".into(),
            raw(r#"{"tenant_id": "acme", "allowed_models": ["nope"]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("allowed_models[0]"),
        ),
        (
            Method::POST,
            "/admin/v1/keys".into(),
            raw(r#"{"tenant_id": "nobody"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("tenant_id"),
        ),
        (
            Method::POST,
            "/admin/v1/keys".into(),
            raw(r#"{"tenant_id": "acme", "expires_at": "tomorrow"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("expires_at"),
        ),
        (
            Method::PATCH,
            format!("/admin/v1/keys/{acme_key}"),
            raw(r#"{"limits": {"tpm": -1}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("limits.tpm"),
        ),
        (
            Method::PATCH,
            format!("/admin/v1/keys/{acme_key}"),
            raw(r#"{"budget": {"max_usd": 1, "soft_usd": 5}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("budget.soft_usd"),
        ),
        (
            Method::PATCH,
            "/admin/v1/keys/00000000-0000-0000-0000-000000000000".into(),
            raw(r#"{"name": "x"}"#),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::POST,
            "/admin/v1/keys/nope/revoke".into(),
            raw("{}"),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::DELETE,
            "/admin/v1/tenants/acme".into(),
            Vec::new(),
            StatusCode::CONFLICT,
            None,
        ),
        (
            Method::DELETE,
            "/admin/v1/tenants/ghost".into(),
            Vec::new(),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Method::POST,
            "/admin/v1/deployments".into(),
            raw(r#"{"id": "d", "model": "m", "provider": "ghost", "upstream_model": "u"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("provider"),
        ),
        (
            Method::PUT,
            "/admin/v1/models/unserved".into(),
            raw(r#"{"retries": 1}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("model"),
        ),
        (
            Method::GET,
            "/admin/v1/keys?limit=5000".into(),
            Vec::new(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::POST,
            "/admin/v1/tenants?wait_ms=999999".into(),
            raw(r#"{"id": "w"}"#),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            Method::POST,
            "/admin/v1/tenants".into(),
            format!(
                "{{\"id\": \"big\", \"name\": \"{}\"}}",
                "x".repeat(100 * 1024)
            )
            .into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
    ];
    for (method, uri, body, status, path) in cases {
        let r = cp.raw(method.clone(), &uri, Some(&root), body).await;
        r.assert_problem(status, path, &format!("{method} {uri}"));
        assert_eq!(
            cp.fingerprint().await,
            before,
            "{method} {uri} changed the database"
        );
    }

    // SQL-looking strings are data: stored and returned literally.
    let evil = "Robert'); DROP TABLE tenants; --";
    let r = cp
        .post(
            "/admin/v1/tenants",
            &root,
            json!({"id": "bobby", "name": evil}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = cp.get("/admin/v1/tenants/bobby", &root).await;
    assert_eq!(r.body["name"], evil);
    let r = cp
        .call(
            Method::PATCH,
            &format!("/admin/v1/keys/{acme_key}"),
            &root,
            Some(json!({"metadata": {"note": evil}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["metadata"]["note"], evil);
    assert_eq!(
        cp.get("/admin/v1/tenants", &root).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn keys_show_their_secret_once_and_rotate(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    two_tenants_with_keys(&cp, &root).await;
    let created = cp
        .post(
            "/admin/v1/keys",
            &root,
            json!({"tenant_id": "acme", "name": "ci", "metadata": {"team": "ml"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let secret = created.body["key"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("sk-sb-") && secret.len() >= 38,
        "{secret}"
    );
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["display_prefix"], &secret[..10]);
    let rev1 = created.revision();

    let got = cp.get(&format!("/admin/v1/keys/{id}"), &root).await;
    assert!(got.body.get("key").is_none());
    assert!(!got.body.to_string().contains(&secret));
    let (hash,): (String,) = sqlx::query_as("SELECT key_hash FROM virtual_keys WHERE id = $1")
        .bind(&id)
        .fetch_one(cp.pool())
        .await
        .unwrap();
    assert_eq!(
        hash,
        switchboard_shared::keys::hash_key_hex(common::PEPPER, &secret)
    );

    let rotated = cp
        .post(&format!("/admin/v1/keys/{id}/rotate"), &root, json!({}))
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    let new_secret = rotated.body["key"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert!(rotated.revision() > rev1);

    // No audit entry holds a secret or a hash.
    let audit = cp.get("/admin/v1/audit?limit=1000", &root).await;
    let text = audit.body.to_string();
    assert!(!text.contains(&secret) && !text.contains(new_secret) && !text.contains(&hash));
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions[0], "rotate");

    // Paging: limit 1 over the three keys walks them all.
    let mut seen = Vec::new();
    let mut uri = "/admin/v1/keys?limit=1".to_owned();
    loop {
        let page = cp.get(&uri, &root).await;
        seen.push(page.body["items"][0]["id"].as_str().unwrap().to_owned());
        match page.body["next_offset"].as_u64() {
            Some(next) => uri = format!("/admin/v1/keys?limit=1&offset={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3);
}

/// The rotated-out secret the snapshot ships for key `id`, if any.
async fn previous_in_snapshot(
    cp: &Cp,
    id: &str,
) -> Option<switchboard_shared::snapshot::PreviousSecret> {
    let snapshot = controlplane::service::snapshot::build_consistent(cp.pool())
        .await
        .unwrap();
    let key = snapshot.virtual_keys.iter().find(|k| k.id == id).unwrap();
    key.previous_secret.clone()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rotation_keeps_the_old_secret_for_its_grace_window(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    two_tenants_with_keys(&cp, &root).await;
    let created = cp
        .post("/admin/v1/keys", &root, json!({"tenant_id": "acme"}))
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let old_hash = switchboard_shared::keys::hash_key_hex(
        common::PEPPER,
        created.body["key"].as_str().unwrap(),
    );
    let rotate = format!("/admin/v1/keys/{id}/rotate");

    // Out of range or unknown fields: 422 at the field, and the secret stays.
    for (body, path) in [
        (json!({"grace_minutes": 10081}), "grace_minutes"),
        (json!({"grace_minutes": -1}), "grace_minutes"),
        (json!({"grace": 5}), "grace"),
    ] {
        let r = cp.post(&rotate, &root, body.clone()).await;
        r.assert_problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(path),
            &body.to_string(),
        );
    }
    assert_eq!(previous_in_snapshot(&cp, &id).await, None);

    // 30 minutes of grace: the key's view says until when, the snapshot ships the old hash
    // with that expiry.
    let asked = chrono::Utc::now();
    let rotated = cp.post(&rotate, &root, json!({"grace_minutes": 30})).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(rotated.body["previous_secret_expires_at"].clone()).unwrap();
    let window = until - asked;
    assert!(
        window > chrono::Duration::minutes(29) && window <= chrono::Duration::minutes(31),
        "{window}"
    );
    let view = cp.get(&format!("/admin/v1/keys/{id}"), &root).await;
    assert_eq!(
        view.body["previous_secret_expires_at"],
        rotated.body["previous_secret_expires_at"]
    );
    assert!(!view.body.to_string().contains(&old_hash));
    let shipped = previous_in_snapshot(&cp, &id).await.unwrap();
    assert_eq!(
        (shipped.key_hash.as_str(), shipped.expires_at),
        (old_hash.as_str(), until)
    );

    // A rotation without a body (no grace window) ends every old secret at once.
    let again = cp.call(Method::POST, &rotate, &root, None).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert!(again.body.get("previous_secret_expires_at").is_none());
    assert_eq!(previous_in_snapshot(&cp, &id).await, None);
}

#[sqlx::test(migrations = "../migrations")]
async fn provider_credentials_are_ciphertext_in_postgres_and_never_returned(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let secret = "sk-upstream-VERY-SECRET-123";
    let r = cp
        .post(
            "/admin/v1/providers",
            &root,
            json!({"id": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1", "api_key": secret}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["has_api_key"], true);
    assert!(!r.body.to_string().contains(secret));
    let (stored,): (String,) = sqlx::query_as("SELECT credential::text FROM providers")
        .fetch_one(cp.pool())
        .await
        .unwrap();
    assert!(!stored.contains(secret), "{stored}");
    let sealed: switchboard_shared::sealed::Sealed = serde_json::from_str(&stored).unwrap();
    let keys = switchboard_shared::sealed::MasterKeys::parse(common::MASTER_KEYS).unwrap();
    assert_eq!(keys.open(&sealed).unwrap(), secret);

    // An update without api_key keeps it (same base URL); the audit log never has it.
    let r = cp
        .call(
            Method::PUT,
            "/admin/v1/providers/openai",
            &root,
            Some(json!({"kind": "openai", "base_url": "https://api.openai.com/v1"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["has_api_key"], true);
    let audit = cp.get("/admin/v1/audit", &root).await;
    assert!(!audit.body.to_string().contains(secret));
    assert!(!audit.body.to_string().contains(&sealed.ciphertext));
}
