//! The `vertex` provider kind through the admin API: the service account's JSON key is a
//! sealed, write-only credential (in Postgres and in the snapshot), the project and location
//! are shipped, and a key that is not a service account's, or whose `token_uri` the base-URL
//! rules refuse, is refused at `api_key` without quoting it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use axum::http::StatusCode;
use common::*;
use controlplane::service::auth::Role;
use serde_json::json;
use sqlx::PgPool;
use switchboard_shared::sealed::MasterKeys;
use switchboard_shared::snapshot::ProviderKind;

/// A service account key in Google's form; the PEM body is a marker, never parsed here.
fn key_file(token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "key-proj",
        "private_key_id": "abc",
        "private_key": "-----BEGIN PRIVATE KEY-----\nSECRET-PEM-BODY\n-----END PRIVATE KEY-----\n",
        "client_email": "gw@key-proj.iam.gserviceaccount.com",
        "token_uri": token_uri,
    })
    .to_string()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_vertex_provider_is_sealed_validated_and_shipped(pool: PgPool) {
    let cp = start(pool.clone()).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let key = key_file("https://oauth2.googleapis.com/token");
    let body = json!({"id": "vx", "kind": "vertex", "region": "global", "project": "billing-proj",
                      "api_key": key});
    let r = cp.post("/admin/v1/providers", &root, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(!r.body.to_string().contains("SECRET-PEM"), "{}", r.body);
    assert_eq!(r.body["kind"], "vertex");
    assert_eq!(r.body["project"], "billing-proj");
    assert_eq!(r.body["region"], "global");
    assert_eq!(r.body["has_api_key"], true);

    let stored: String =
        sqlx::query_scalar("SELECT extra::text || coalesce(credential::text, '') FROM providers")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!stored.contains("SECRET-PEM"), "{stored}");
    let snapshot = controlplane::service::snapshot::build_consistent(&pool)
        .await
        .unwrap();
    snapshot.validate().unwrap();
    let canonical = String::from_utf8(snapshot.to_canonical_json()).unwrap();
    assert!(!canonical.contains("SECRET-PEM"));
    let vx = snapshot.providers.iter().find(|p| p.id == "vx").unwrap();
    assert_eq!(vx.kind, ProviderKind::Vertex);
    assert_eq!(
        (vx.region.as_deref(), vx.project.as_deref()),
        (Some("global"), Some("billing-proj"))
    );
    let keys = MasterKeys::parse(MASTER_KEYS).unwrap();
    let opened = vx
        .api_key
        .as_ref()
        .unwrap()
        .resolve_with(|_| None, Some(&keys))
        .unwrap();
    assert_eq!(opened, key);
}

#[sqlx::test(migrations = "../migrations")]
async fn vertex_credentials_must_be_service_account_keys_sent_to_allowed_hosts(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let before = cp.fingerprint().await;
    for (body, field) in [
        (
            json!({"id": "v1", "kind": "vertex", "region": "us-central1",
                   "api_key": "SECRET-not-json"}),
            "api_key",
        ),
        (
            json!({"id": "v2", "kind": "vertex", "region": "us-central1",
                   "api_key": key_file("http://attacker.example/token")}),
            "api_key",
        ),
        (
            json!({"id": "v3", "kind": "vertex", "region": "us-central1",
                   "api_keys": [{"key": key_file("ftp://x/token")}]}),
            "api_keys[0].key",
        ),
        (
            json!({"id": "v4", "kind": "vertex",
                   "api_key": key_file("https://oauth2.googleapis.com/token")}),
            "region",
        ),
        (
            json!({"id": "v5", "kind": "vertex", "region": "us-central1"}),
            "api_key",
        ),
    ] {
        let r = cp.post("/admin/v1/providers", &root, body).await;
        r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, None, field);
        assert!(r.body.to_string().contains(field), "{field}: {}", r.body);
        assert!(!r.body.to_string().contains("SECRET"), "{}", r.body);
    }
    assert_eq!(cp.fingerprint().await, before);
}
