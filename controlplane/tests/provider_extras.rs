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

/// The master key that replaces `MASTER_KEYS` in the rotation test.
const NEW_KEY: &str = "k2:ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=";

#[sqlx::test(migrations = "../migrations")]
async fn reseal_covers_every_sealed_field_so_the_old_master_key_can_be_dropped(pool: PgPool) {
    let cp = start(pool.clone()).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    for body in [
        json!({"id": "br", "kind": "bedrock", "region": "us-east-1",
               "aws_access_key_id": "AKIA-secret-2", "aws_secret_access_key": "aws-secret-3",
               "aws_session_token": "aws-secret-6"}),
        json!({"id": "multi", "kind": "openai", "base_url": "https://api.openai.com/v1",
               "api_keys": [{"key": "sk-secret-4", "weight": 3}, {"key": "sk-secret-5"}]}),
        json!({"id": "one", "kind": "openai", "base_url": "https://api.openai.com/v1",
               "api_key": "sk-secret-1"}),
    ] {
        let r = cp.post("/admin/v1/providers", &root, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    // Rotation: the new key first, the old one still listed; reseal; then only the new key.
    let both = MasterKeys::parse(&format!("{NEW_KEY},{MASTER_KEYS}")).unwrap();
    let changed = controlplane::service::providers::reseal_credentials(&pool, &both)
        .await
        .unwrap();
    assert_eq!(changed, 3);
    let again = controlplane::service::providers::reseal_credentials(&pool, &both)
        .await
        .unwrap();
    assert_eq!(again, 0, "a second reseal has nothing left to do");
    let only_new = MasterKeys::parse(NEW_KEY).unwrap();
    let snapshot = controlplane::service::snapshot::build_consistent(&pool)
        .await
        .unwrap();
    snapshot.validate().unwrap();
    let mut opened = Vec::new();
    for p in &snapshot.providers {
        let refs = [
            &p.api_key,
            &p.aws_access_key_id,
            &p.aws_secret_access_key,
            &p.aws_session_token,
        ];
        for r in refs.into_iter().flatten() {
            opened.push(r.resolve_with(|_| None, Some(&only_new)).unwrap());
        }
        for k in &p.api_keys {
            opened.push(k.key.resolve_with(|_| None, Some(&only_new)).unwrap());
        }
    }
    opened.sort();
    assert_eq!(
        opened,
        [
            "AKIA-secret-2",
            "aws-secret-3",
            "aws-secret-6",
            "sk-secret-1",
            "sk-secret-4",
            "sk-secret-5"
        ]
    );
    // The admin view says which key seals the credential now.
    let r = cp.get("/admin/v1/providers/one", &root).await;
    assert_eq!(r.body["api_key_sealed_with"], "k2");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_stored_credential_cannot_be_pointed_at_a_new_base_url(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    for body in [
        json!({"id": "one", "kind": "openai", "base_url": "https://api.openai.com/v1",
               "api_key": "sk-secret-1"}),
        json!({"id": "br", "kind": "bedrock", "region": "us-east-1",
               "aws_access_key_id": "AKIA-secret-2", "aws_secret_access_key": "aws-secret-3"}),
    ] {
        let r = cp.post("/admin/v1/providers", &root, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let before = cp.fingerprint().await;
    let put = |id: &'static str, body: serde_json::Value| {
        let cp = &cp;
        let root = &root;
        async move {
            cp.call(
                axum::http::Method::PUT,
                &format!("/admin/v1/providers/{id}"),
                root,
                Some(body),
            )
            .await
        }
    };
    // A new base URL (or kind) without the credential: refused, the field named, nothing
    // changed.
    let r = put(
        "one",
        json!({"kind": "openai", "base_url": "https://attacker.example/v1"}),
    )
    .await;
    r.assert_problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("api_key"),
        "new base_url",
    );
    assert!(r.body.to_string().contains("base_url"), "{}", r.body);
    let r = put(
        "one",
        json!({"kind": "azure", "base_url": "https://api.openai.com/v1",
                              "api_version": "2024-10-21"}),
    )
    .await;
    r.assert_problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("api_key"),
        "new kind",
    );
    let r = put(
        "br",
        json!({"kind": "bedrock", "region": "us-east-1",
                             "base_url": "https://attacker.example"}),
    )
    .await;
    r.assert_problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("aws_secret_access_key"),
        "bedrock",
    );
    // Plain http to a non-loopback host, user info, another scheme: refused on create too.
    for url in [
        "http://api.openai.com/v1",
        "https://u:p@api.openai.com/v1",
        "ftp://x/v1",
    ] {
        let r = put(
            "one",
            json!({"kind": "openai", "base_url": url, "api_key": "sk-new"}),
        )
        .await;
        r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("base_url"), url);
        let r = cp
            .post(
                "/admin/v1/providers",
                &root,
                json!({"id": "x", "kind": "openai", "base_url": url}),
            )
            .await;
        r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("base_url"), url);
    }
    assert_eq!(cp.fingerprint().await, before);
    // With the credential re-entered the move is allowed; loopback http is allowed.
    let r = put(
        "one",
        json!({"kind": "openai", "base_url": "http://127.0.0.1:9/v1",
                              "api_key": "sk-new"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_base_url_allow_list_is_applied_on_create_and_update(pool: PgPool) {
    let mut s = settings(&unique_namespace());
    s.providers = controlplane::config::ProvidersConfig {
        allowed_hosts: vec!["api.openai.com".into(), "*.openai.azure.com".into()],
        http_hosts: vec![],
    };
    let cp = start_with(pool, s).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let create = |id: &str, url: &str| json!({"id": id, "kind": "openai", "base_url": url});
    for (id, url, ok) in [
        ("a", "https://api.openai.com/v1", true),
        ("b", "https://res1.openai.azure.com/openai", true),
        ("c", "https://evil.example/v1", false),
        ("d", "https://api.openai.com.evil.example/v1", false),
        ("e", "http://127.0.0.1:9/v1", false),
    ] {
        let r = cp.post("/admin/v1/providers", &root, create(id, url)).await;
        if ok {
            assert_eq!(r.status, StatusCode::CREATED, "{url}: {}", r.body);
        } else {
            r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("base_url"), url);
        }
    }
    let r = cp
        .call(
            axum::http::Method::PUT,
            "/admin/v1/providers/a",
            &root,
            Some(json!({"kind": "openai", "base_url": "https://evil.example/v1"})),
        )
        .await;
    r.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("base_url"), "update");
}
