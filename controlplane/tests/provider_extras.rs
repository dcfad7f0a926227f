//! Provider settings beyond one credential through the admin API: Azure's `api_version`,
//! Bedrock's region and AWS credentials, several weighted keys — sealed at rest and in the
//! snapshot, never returned, and checked per kind with the whole config.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use axum::http::StatusCode;
use common::*;
use controlplane::service::auth::Role;
use serde_json::json;
use sqlx::PgPool;
use switchboard_shared::sealed::MasterKeys;
use switchboard_shared::secret::SecretRef;

#[sqlx::test(migrations = "../migrations")]
async fn extra_provider_settings_are_sealed_validated_and_shipped(pool: PgPool) {
    let cp = start(pool.clone()).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let bodies = [
        json!({"id": "az", "kind": "azure", "base_url": "https://r.openai.azure.com",
               "api_key": "az-secret-1", "api_version": "2024-10-21"}),
        json!({"id": "br", "kind": "bedrock", "region": "us-east-1",
               "aws_access_key_id": "AKIA-secret-2", "aws_secret_access_key": "aws-secret-3"}),
        json!({"id": "multi", "kind": "openai", "base_url": "https://api.openai.com/v1",
               "api_keys": [{"key": "sk-secret-4", "weight": 3}, {"key": "sk-secret-5"}]}),
    ];
    for body in bodies {
        let r = cp.post("/admin/v1/providers", &root, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert!(!r.body.to_string().contains("secret-"), "{}", r.body);
    }
    let r = cp.get("/admin/v1/providers/multi", &root).await;
    assert_eq!(r.body["api_key_count"], 2);
    let r = cp.get("/admin/v1/providers/br", &root).await;
    assert_eq!(
        (
            r.body["region"].clone(),
            r.body["has_aws_credentials"].clone()
        ),
        (json!("us-east-1"), json!(true))
    );

    // Ciphertext only, in Postgres and in the snapshot.
    let stored: String = sqlx::query_scalar(
        "SELECT string_agg(extra::text || coalesce(credential::text, ''), ' ') FROM providers",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!stored.contains("secret-"), "{stored}");
    let snapshot = controlplane::service::snapshot::build_consistent(&pool)
        .await
        .unwrap();
    snapshot.validate().unwrap();
    assert!(
        !String::from_utf8(snapshot.to_canonical_json())
            .unwrap()
            .contains("secret-")
    );
    let keys = MasterKeys::parse(MASTER_KEYS).unwrap();
    let open = |s: &Option<SecretRef>| {
        s.as_ref()
            .unwrap()
            .resolve_with(|_| None, Some(&keys))
            .unwrap()
    };
    let find = |id: &str| snapshot.providers.iter().find(|p| p.id == id).unwrap();
    assert_eq!(find("az").api_version.as_deref(), Some("2024-10-21"));
    assert_eq!(open(&find("br").aws_secret_access_key), "aws-secret-3");
    let multi = find("multi");
    assert_eq!(multi.api_keys.len(), 2);
    assert_eq!(multi.api_keys[0].weight, 3);
    assert_eq!(multi.api_keys[1].weight, 1);
    assert_eq!(open(&Some(multi.api_keys[1].key.clone())), "sk-secret-5");

    // An update without the credentials keeps them.
    let r = cp
        .call(
            axum::http::Method::PUT,
            "/admin/v1/providers/br",
            &root,
            Some(json!({"kind": "bedrock", "region": "eu-west-1"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let snapshot = controlplane::service::snapshot::build_consistent(&pool)
        .await
        .unwrap();
    let br = snapshot.providers.iter().find(|p| p.id == "br").unwrap();
    assert_eq!(br.region.as_deref(), Some("eu-west-1"));
    assert!(br.aws_access_key_id.is_some());

    // Per-kind rules come from the whole config's validation, with the field named, and
    // change nothing.
    let before = cp.fingerprint().await;
    for (body, field) in [
        (
            json!({"id": "az2", "kind": "azure", "base_url": "https://r.openai.azure.com"}),
            "api_version",
        ),
        (
            json!({"id": "br2", "kind": "bedrock", "aws_access_key_id": "a", "aws_secret_access_key": "b"}),
            "region",
        ),
        (
            json!({"id": "oa", "kind": "openai", "base_url": "https://x/v1", "region": "us-east-1"}),
            "region",
        ),
        (
            json!({"id": "e", "kind": "openai", "base_url": "https://x/v1", "api_keys": [{"key": " "}]}),
            "api_keys[0].key",
        ),
    ] {
        let r = cp.post("/admin/v1/providers", &root, body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
        assert!(r.body.to_string().contains(field), "{field}: {}", r.body);
    }
    assert_eq!(cp.fingerprint().await, before);
}
