//! Settings the data plane once read from standalone snapshots only, written through the admin
//! API and found in the snapshot the control plane builds: requests in flight of tenants, keys
//! and deployments; a deployment's caps and transforms; a model policy's routing refinements,
//! transforms and content rules; a key's own response cache (set, changed, cleared, audited).
//! Bad ones are refused with the path of the bad value.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use axum::http::{Method, StatusCode};
use controlplane::service::auth::Role;
use serde_json::json;
use sqlx::PgPool;
use switchboard_shared::snapshot::{Preference, Snapshot};

use common::{Cp, start};

async fn created(cp: &Cp, root: &str, uri: &str, body: serde_json::Value) -> serde_json::Value {
    let r = cp.post(uri, root, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{uri}: {}", r.body);
    r.body
}

async fn built(cp: &Cp) -> Snapshot {
    controlplane::service::snapshot::build_consistent(cp.pool())
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn limits_caps_transforms_and_rules_reach_the_snapshot(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let tenant = json!({"id": "acme", "limits": {"concurrency": 8}});
    created(&cp, &root, "/admin/v1/tenants", tenant).await;
    let key = json!({"tenant_id": "acme", "name": "k", "limits": {"rpm": 60, "concurrency": 2}});
    let key_id = created(&cp, &root, "/admin/v1/keys", key).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let provider = json!({"id": "p", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"});
    created(&cp, &root, "/admin/v1/providers", provider).await;
    let deployment = json!({
        "id": "d1", "model": "big", "provider": "p", "upstream_model": "u",
        "limits": {"concurrency": 4},
        "caps": {"usd_per_day": 0.01, "requests_per_month": 1000},
        "transforms": {"max_tokens": 512, "drop": ["seed"], "strip_cache_control": true},
    });
    let view = created(&cp, &root, "/admin/v1/deployments", deployment).await;
    assert_eq!(view["limits"]["concurrency"], 4, "{view}");
    assert_eq!(view["caps"]["usd_per_day"], 0.01, "{view}");
    assert_eq!(view["transforms"]["drop"], json!(["seed"]), "{view}");
    let small = json!({"id": "d2", "model": "small", "provider": "p", "upstream_model": "s"});
    created(&cp, &root, "/admin/v1/deployments", small).await;
    let policy = json!({
        "concurrency_wait_ms": 250, "latency_buffer_pct": 10.0, "prefer": "free_first",
        "weights_from_limits": true, "derive_tags": true,
        "transforms": {"defaults": {"temperature": 0.2}},
        "rules": [
            {"when": {"images": true, "regex": "(?i)diagram"}, "model": "big"},
            {"model": "small"},
        ],
    });
    let r = cp
        .call(Method::PUT, "/admin/v1/models/auto", &root, Some(policy))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["rules"][0]["model"], "big", "{}", r.body);
    assert_eq!(r.body["prefer"], "free_first", "{}", r.body);

    let s = built(&cp).await;
    assert_eq!(s.tenants[0].limits.concurrency, Some(8));
    let k = s.virtual_keys.iter().find(|k| k.id == key_id).unwrap();
    assert_eq!((k.limits.rpm, k.limits.concurrency), (Some(60), Some(2)));
    let d = s.deployments.iter().find(|d| d.id == "d1").unwrap();
    assert_eq!(d.limits.concurrency, Some(4));
    let caps = d.caps.unwrap();
    assert_eq!(
        (caps.usd_per_day, caps.requests_per_month),
        (Some(0.01), Some(1000))
    );
    assert_eq!(d.transforms.max_tokens, Some(512));
    assert!(d.transforms.strip_cache_control);
    let small = s.deployments.iter().find(|d| d.id == "d2").unwrap();
    assert!(small.caps.is_none() && small.transforms.is_empty());
    let p = s.policy_for("auto");
    assert_eq!(p.concurrency_wait_ms, 250);
    assert_eq!(p.latency_buffer_pct, 10.0);
    assert_eq!(p.prefer, Some(Preference::FreeFirst));
    assert!(p.weights_from_limits && p.derive_tags);
    assert_eq!(p.transforms.defaults["temperature"], json!(0.2));
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.rules[0].when.regex.as_deref(), Some("(?i)diagram"));
    assert_eq!(p.rules[1].model, "small");
    assert_eq!(s.validate(), Ok(()));
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_transforms_and_rules_are_refused_at_their_paths(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let provider = json!({"id": "p", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"});
    created(&cp, &root, "/admin/v1/providers", provider).await;
    let good = json!({"id": "d1", "model": "big", "provider": "p", "upstream_model": "u"});
    created(&cp, &root, "/admin/v1/deployments", good).await;
    let before = cp.fingerprint().await;
    let bad_drop = json!({"id": "d2", "model": "big", "provider": "p", "upstream_model": "u",
        "transforms": {"drop": ["model"]}});
    cp.post("/admin/v1/deployments", &root, bad_drop)
        .await
        .assert_problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("transforms.drop[0]"),
            "drop model",
        );
    let cases = [
        (
            json!({"rules": [{"when": {"regex": "("}, "model": "big"}, {"model": "big"}]}),
            "rules[0].when.regex",
        ),
        (json!({"rules": [{"model": "ghost"}]}), "rules[0].model"),
        (
            json!({"rules": [{"when": {"tools": true}, "model": "big"}]}),
            "rules[0].when",
        ),
        (
            json!({"transforms": {"max_tokens": 0}}),
            "transforms.max_tokens",
        ),
    ];
    for (body, path) in cases {
        let uri = if path.starts_with("rules") {
            "/admin/v1/models/auto"
        } else {
            "/admin/v1/models/big"
        };
        cp.call(Method::PUT, uri, &root, Some(body))
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, Some(path), path);
    }
    assert_eq!(cp.fingerprint().await, before, "nothing was written");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_keys_own_cache_is_stored_shown_audited_and_reaches_the_snapshot(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    created(&cp, &root, "/admin/v1/tenants", json!({"id": "acme"})).await;
    let body = json!({"tenant_id": "acme", "cache": {"ttl_seconds": 60}});
    let view = created(&cp, &root, "/admin/v1/keys", body).await;
    assert_eq!(view["cache"]["ttl_seconds"], 60, "{view}");
    assert_eq!(view["cache"]["enabled"], true, "defaults filled in: {view}");
    let id = view["id"].as_str().unwrap().to_owned();
    let plain = created(&cp, &root, "/admin/v1/keys", json!({"tenant_id": "acme"})).await;
    assert!(plain.get("cache").is_none(), "{plain}");
    let cache_of =
        |s: &Snapshot, id: &str| s.virtual_keys.iter().find(|k| k.id == id).unwrap().cache;
    let s = built(&cp).await;
    assert_eq!(cache_of(&s, &id).unwrap().ttl_seconds, 60);
    assert_eq!(cache_of(&s, plain["id"].as_str().unwrap()), None);

    let uri = format!("/admin/v1/keys/{id}");
    let off = json!({"cache": {"enabled": false}});
    let r = cp.call(Method::PATCH, &uri, &root, Some(off)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["cache"]["enabled"], false, "{}", r.body);
    let renamed = json!({"name": "renamed"});
    let r = cp.call(Method::PATCH, &uri, &root, Some(renamed)).await;
    assert_eq!(
        r.body["cache"]["enabled"], false,
        "an absent cache stays: {}",
        r.body
    );
    assert!(!cache_of(&built(&cp).await, &id).unwrap().enabled);
    // The audit log records the change of the key's cache like any key write.
    let audit = cp.get("/admin/v1/audit", &root).await;
    let items = audit.body["items"].as_array().unwrap();
    let changed = items.iter().filter(|e| {
        e["object_id"] == id.as_str()
            && e["action"] == "update"
            && e["before"]["cache"]["ttl_seconds"] == 60
            && e["after"]["cache"]["enabled"] == false
    });
    assert_eq!(changed.count(), 1, "{}", audit.body);

    let r = cp
        .call(Method::PATCH, &uri, &root, Some(json!({"cache": null})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.get("cache").is_none(), "null clears: {}", r.body);
    assert_eq!(cache_of(&built(&cp).await, &id), None);

    // Validated like a model policy's cache, at the request's own paths; nothing written.
    let before = cp.fingerprint().await;
    let cases = [
        (
            json!({"cache": {"ttl_seconds": 0}}),
            Some("cache.ttl_seconds"),
        ),
        (
            json!({"cache": {"shared_across_tenants": true}}),
            Some("cache.shared_across_tenants"),
        ),
        (json!({"cache": {"ttl": 5}}), None),
    ];
    for (body, path) in cases {
        cp.call(Method::PATCH, &uri, &root, Some(body.clone()))
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, path, &body.to_string());
    }
    let big = json!({"tenant_id": "acme", "cache": {"max_entry_bytes": 999_999_999u64}});
    cp.post("/admin/v1/keys", &root, big).await.assert_problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("cache.max_entry_bytes"),
        "max_entry_bytes",
    );
    assert_eq!(cp.fingerprint().await, before, "nothing was written");
}
