//! The prices admin API against a real Postgres and NATS: the effective-price listing (search,
//! source, paging) over LiteLLM's real file, model names with `/` as `%2F`, overrides that
//! change the published snapshot through the one write path (revision, audit), the report of
//! models that deployments use but nothing prices, roles, bad input that changes nothing, and
//! a sync on demand that never echoes the file or the URL's credentials.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use axum::http::{Method, StatusCode};
use controlplane::service::auth::Role;
use controlplane::service::prices;
use serde_json::{Value, json};
use sqlx::PgPool;

use common::{Cp, serve_prices as serve, start};

/// A small price file in LiteLLM's shape.
const SMALL_FILE: &str = r#"{
    "sample_spec": {"input_cost_per_token": 0, "output_cost_per_token": 0},
    "gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
               "litellm_provider": "openai", "mode": "chat"},
    "gemini/gemini-2.5-pro": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05,
               "input_cost_per_token_above_200k_tokens": 2.5e-06, "litellm_provider": "gemini"},
    "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0": {"input_cost_per_token": 3e-06,
               "output_cost_per_token": 1.5e-05},
    "text-embedding-3-small": {"input_cost_per_token": 2e-08, "output_cost_per_token": 0,
               "mode": "embedding"}
}"#;

fn real_file() -> Vec<u8> {
    std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data/model_prices_and_context_window.json"),
    )
    .unwrap()
}

async fn seed_small(cp: &Cp) -> i64 {
    prices::store(cp.pool(), "small.json", SMALL_FILE.as_bytes())
        .await
        .unwrap()
        .version_id
}

async fn revision(cp: &Cp) -> u64 {
    controlplane::repo::revision::current(cp.pool())
        .await
        .unwrap()
}

/// The common fingerprint plus the price tables.
async fn fingerprint(cp: &Cp) -> (Vec<i64>, String, String) {
    let (overrides,): (String,) = sqlx::query_as(
        "SELECT md5(coalesce(string_agg(o::text, ',' ORDER BY o.model), '')) FROM price_overrides o",
    )
    .fetch_one(cp.pool())
    .await
    .unwrap();
    let (versions,): (String,) = sqlx::query_as(
        "SELECT md5(coalesce(string_agg(v::text, ',' ORDER BY v.id), '')) FROM price_versions v",
    )
    .fetch_one(cp.pool())
    .await
    .unwrap();
    (cp.fingerprint().await, overrides, versions)
}

/// A provider and deployments `(id, upstream_model, own price)`.
async fn deployments(cp: &Cp, root: &str, list: &[(&str, &str, Option<Value>)]) {
    let r = cp
        .post(
            "/admin/v1/providers",
            root,
            json!({"id": "up", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for (id, upstream, price) in list {
        let mut body =
            json!({"id": id, "model": "m", "provider": "up", "upstream_model": upstream});
        if let Some(price) = price {
            body["price"] = price.clone();
        }
        let r = cp.post("/admin/v1/deployments", root, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
}

/// `id`'s input price in the snapshot the publisher holds (the one it published).
fn published_input_price(cp: &Cp, id: &str) -> Option<f64> {
    let built = cp
        .running
        .state
        .publisher
        .subscribe()
        .borrow()
        .clone()
        .unwrap();
    let snapshot: Value = serde_json::from_slice(&built.json).unwrap();
    snapshot["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap()["price"]["input_cost_per_token"]
        .as_f64()
}

fn models(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["model"].as_str().unwrap().to_owned())
        .collect()
}

async fn put_override(cp: &Cp, token: &str, model_in_path: &str, entry: Value) -> common::Reply {
    cp.call(
        Method::PUT,
        &format!("/admin/v1/prices/{model_in_path}/override"),
        token,
        Some(entry),
    )
    .await
}

#[sqlx::test(migrations = "../migrations")]
async fn the_listing_pages_searches_and_filters_the_real_file(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let synced = prices::store(cp.pool(), "litellm.json", &real_file())
        .await
        .unwrap();
    assert!(synced.entries > 4000);

    // Every page is sorted and the pages together are every entry once.
    let mut all = Vec::new();
    let mut offset = 0;
    loop {
        let r = cp
            .get(
                &format!("/admin/v1/prices?limit=1000&offset={offset}"),
                &root,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let items = r.body["items"].as_array().unwrap();
        assert!(items.len() <= 1000);
        for item in items {
            assert_eq!(item["source"], "file", "{item}");
            assert_eq!(item["version_id"], synced.version_id, "{item}");
        }
        all.extend(models(&r.body));
        match r.body["next_offset"].as_u64() {
            Some(next) => {
                assert_eq!(next, offset + 1000);
                offset = next;
            }
            None => break,
        }
    }
    assert_eq!(all.len(), synced.entries);
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), all.len(), "a model listed twice");
    let gpt4o = cp
        .get("/admin/v1/prices?search=gpt-4o&limit=1000", &root)
        .await;
    let item = gpt4o.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["model"] == "gpt-4o")
        .unwrap()
        .clone();
    assert_eq!(item["entry"]["input_cost_per_token"], 2.5e-6);
    assert_eq!(item["entry"]["output_cost_per_token"], 1e-5);

    // Search: a case-insensitive substring, `/` included.
    let r = cp
        .get("/admin/v1/prices?search=GEMINI%2FGEMINI-2.5-PRO", &root)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let found = models(&r.body);
    assert!(
        found.contains(&"gemini/gemini-2.5-pro".to_owned()),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .all(|m| m.to_lowercase().contains("gemini/gemini-2.5-pro")),
        "{found:?}"
    );
    // Paging within a search.
    let r = cp
        .get("/admin/v1/prices?search=gpt-4o&limit=2", &root)
        .await;
    assert_eq!(models(&r.body).len(), 2);
    assert_eq!(r.body["next_offset"], 2);

    // Source: an override moves a model from `file` to `override`.
    assert_eq!(
        cp.get("/admin/v1/prices?source=override", &root).await.body["items"],
        json!([])
    );
    let r = put_override(
        &cp,
        &root,
        "gpt-4o",
        json!({"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = cp.get("/admin/v1/prices?source=override", &root).await;
    assert_eq!(
        r.body["items"],
        json!([{"model": "gpt-4o", "source": "override", "version_id": synced.version_id,
                "entry": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}}])
    );
    let r = cp
        .get(
            "/admin/v1/prices?source=file&search=gpt-4o&limit=1000",
            &root,
        )
        .await;
    let found = models(&r.body);
    assert!(!found.is_empty() && !found.contains(&"gpt-4o".to_owned()));
    // An override of a model the file lacks is listed too, without a version.
    let r = put_override(
        &cp,
        &root,
        "my-private-model",
        json!({"input_cost_per_token": 1e-6}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = cp.get("/admin/v1/prices?search=my-private", &root).await;
    assert_eq!(r.body["items"][0]["source"], "override");
    assert_eq!(r.body["items"][0]["version_id"], Value::Null);
    let r = cp
        .get("/admin/v1/prices?limit=1000&offset=4000", &root)
        .await;
    assert_eq!(
        models(&r.body).len() + 4000,
        synced.entries + 1,
        "the listing is the union of file and overrides"
    );

    // Bad parameters are 400 problems.
    for uri in [
        "/admin/v1/prices?limit=0",
        "/admin/v1/prices?limit=1001",
        "/admin/v1/prices?source=cache",
        "/admin/v1/prices?tenant_id=acme",
        "/admin/v1/prices?offset=-1",
    ] {
        let r = cp.get(uri, &root).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {}", r.body);
        assert_eq!(r.headers["content-type"], "application/problem+json");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_model_with_a_slash_is_addressed_as_percent_2f(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let version = seed_small(&cp).await;

    let r = cp
        .get("/admin/v1/prices/gemini%2Fgemini-2.5-pro", &root)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["model"], "gemini/gemini-2.5-pro");
    assert_eq!(r.body["source"], "file");
    assert_eq!(r.body["file"]["version_id"], version);
    assert_eq!(
        r.body["effective"]["input_cost_per_token_above_200k_tokens"],
        2.5e-6
    );
    assert_eq!(r.body["override"], Value::Null);
    // Lower-case hex and other encoded characters decode too.
    let r = cp
        .get(
            "/admin/v1/prices/bedrock%2fanthropic.claude-3-5-sonnet-20240620-v1%3A0",
            &root,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["model"],
        "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0"
    );
    // An unencoded `/` is another path: no such route.
    let r = cp
        .get("/admin/v1/prices/gemini/gemini-2.5-pro", &root)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/problem+json");

    // Both layers once overridden.
    let r = put_override(
        &cp,
        &root,
        "gemini%2Fgemini-2.5-pro",
        json!({"input_cost_per_token": 1e-6, "output_cost_per_token": 8e-6}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["model"], "gemini/gemini-2.5-pro");
    assert_eq!(r.body["source"], "override");
    assert_eq!(r.body["effective"]["input_cost_per_token"], 1e-6);
    assert_eq!(r.body["override"]["entry"]["output_cost_per_token"], 8e-6);
    assert_eq!(r.body["override"]["updated_by"], "root@example.com");
    assert_eq!(r.body["file"]["entry"]["input_cost_per_token"], 1.25e-6);
    let stored: (String,) = sqlx::query_as("SELECT model FROM price_overrides")
        .fetch_one(cp.pool())
        .await
        .unwrap();
    assert_eq!(stored.0, "gemini/gemini-2.5-pro");

    // The same over a real HTTP connection: nothing between client and router decodes `%2F`.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!(
        "http://{}/admin/v1/prices/gemini%2Fgemini-2.5-pro",
        cp.running.rest_addr
    );
    let r = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["model"], "gemini/gemini-2.5-pro");
    assert_eq!(body["source"], "override");
    let r = reqwest::Client::new()
        .delete(format!("{url}/override"))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = cp
        .get("/admin/v1/prices/gemini%2Fgemini-2.5-pro", &root)
        .await;
    assert_eq!(r.body["source"], "file");
}

#[sqlx::test(migrations = "../migrations")]
async fn overrides_change_the_published_snapshot_through_the_write_path(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    seed_small(&cp).await;
    deployments(
        &cp,
        &root,
        &[
            ("d1", "gpt-4o", None),
            ("own", "gpt-4o", Some(json!({"input_cost_per_token": 9e-9}))),
        ],
    )
    .await;
    let built = controlplane::service::snapshot::build_consistent(cp.pool())
        .await
        .unwrap();
    let price = |s: &switchboard_shared::snapshot::Snapshot, id: &str| {
        s.deployments
            .iter()
            .find(|d| d.id == id)
            .and_then(|d| d.price.as_ref())
            .and_then(|p| p.input_cost_per_token)
    };
    assert_eq!(price(&built, "d1"), Some(2.5e-6));
    let before = revision(&cp).await;

    // Set: a new revision, published at once, audited.
    let entry = json!({"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7,
                       "max_input_tokens": 128000});
    let r = put_override(&cp, &root, "gpt-4o", entry.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let set_at = r.revision();
    assert_eq!(set_at, before + 1);
    assert_eq!(revision(&cp).await, set_at);
    assert_eq!(r.body["effective"], entry);
    assert_eq!(r.body["file"]["entry"]["input_cost_per_token"], 2.5e-6);
    assert_eq!(cp.running.state.publisher.latest_revision(), set_at);
    assert_eq!(published_input_price(&cp, "d1"), Some(1e-7));
    assert_eq!(
        published_input_price(&cp, "own"),
        Some(9e-9),
        "a deployment's own price still wins"
    );
    let built = controlplane::service::snapshot::build_consistent(cp.pool())
        .await
        .unwrap();
    assert_eq!(price(&built, "d1"), Some(1e-7));
    assert_eq!(
        built
            .deployments
            .iter()
            .find(|d| d.id == "d1")
            .unwrap()
            .price
            .as_ref()
            .unwrap()
            .max_input_tokens,
        Some(128_000)
    );
    let audit = cp.get("/admin/v1/audit", &root).await;
    let last = &audit.body["items"][0];
    assert_eq!(last["action"], "create", "{last}");
    assert_eq!(last["object_type"], "price_override");
    assert_eq!(last["object_id"], "gpt-4o");
    assert_eq!(last["actor"], "root@example.com");
    assert_eq!(last["revision"], set_at);
    assert_eq!(last["before"], Value::Null);
    assert_eq!(last["after"]["entry"], entry);

    // Replace: 200, the audit row holds both.
    let r = put_override(
        &cp,
        &root,
        "gpt-4o",
        json!({"input_cost_per_token": 3e-7, "output_cost_per_token": 4e-7}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.revision(), set_at + 1);
    assert_eq!(published_input_price(&cp, "d1"), Some(3e-7));
    let last = cp.get("/admin/v1/audit", &root).await.body["items"][0].clone();
    assert_eq!(last["action"], "update");
    assert_eq!(last["before"]["entry"]["input_cost_per_token"], 1e-7);
    assert_eq!(last["after"]["entry"]["input_cost_per_token"], 3e-7);

    // Delete: the file's entry is back, in Postgres and in the published snapshot.
    let r = cp
        .call(
            Method::DELETE,
            "/admin/v1/prices/gpt-4o/override",
            &root,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let deleted_at = r.revision();
    assert_eq!(deleted_at, set_at + 2);
    assert_eq!(published_input_price(&cp, "d1"), Some(2.5e-6));
    let r = cp.get("/admin/v1/prices/gpt-4o", &root).await;
    assert_eq!(r.body["source"], "file");
    assert_eq!(r.body["override"], Value::Null);
    assert_eq!(r.body["effective"]["input_cost_per_token"], 2.5e-6);
    let last = cp.get("/admin/v1/audit", &root).await.body["items"][0].clone();
    assert_eq!(
        (&last["action"], &last["object_id"], &last["revision"]),
        (&json!("delete"), &json!("gpt-4o"), &json!(deleted_at))
    );
    assert_eq!(last["before"]["entry"]["input_cost_per_token"], 3e-7);

    // Deleting again: 404, nothing written.
    let r = cp
        .call(
            Method::DELETE,
            "/admin/v1/prices/gpt-4o/override",
            &root,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!(revision(&cp).await, deleted_at);

    // The functions for callers without a request take the same path: audited as their actor.
    let entry = switchboard_shared::price::PriceEntry {
        input_cost_per_token: Some(5e-7),
        ..Default::default()
    };
    let committed = prices::set_override(cp.pool(), "gpt-4o", &entry, "cli@example.com")
        .await
        .unwrap();
    assert_eq!(committed.revision, deleted_at + 1);
    let last = cp.get("/admin/v1/audit", &root).await.body["items"][0].clone();
    assert_eq!(
        (&last["actor"], &last["action"]),
        (&json!("cli@example.com"), &json!("create"))
    );
    assert!(prices::delete_override(cp.pool(), "gpt-4o").await.unwrap());
    assert!(!prices::delete_override(cp.pool(), "gpt-4o").await.unwrap());
    assert_eq!(revision(&cp).await, deleted_at + 2);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_missing_report_lists_unpriced_upstream_models_until_an_override(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    seed_small(&cp).await;
    deployments(
        &cp,
        &root,
        &[
            ("d-gpt", "gpt-4o", None),
            ("d-y", "private/llama-x", None),
            ("d-x", "private/llama-x", None),
            (
                "d-own",
                "nowhere",
                Some(json!({"input_cost_per_token": 1e-9})),
            ),
            ("d-z", "vllm/qwen", None),
        ],
    )
    .await;
    let r = cp.get("/admin/v1/prices/missing", &root).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["items"],
        json!([
            {"model": "private/llama-x", "deployments": ["d-x", "d-y"]},
            {"model": "vllm/qwen", "deployments": ["d-z"]},
        ])
    );
    assert_eq!(published_input_price(&cp, "d-x"), None);

    let r = put_override(
        &cp,
        &root,
        "private%2Fllama-x",
        json!({"input_cost_per_token": 2e-7, "output_cost_per_token": 2e-7}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = cp.get("/admin/v1/prices/missing", &root).await;
    assert_eq!(
        r.body["items"],
        json!([{"model": "vllm/qwen", "deployments": ["d-z"]}])
    );
    assert_eq!(published_input_price(&cp, "d-x"), Some(2e-7));

    // It names deployments: platform readers only.
    let viewer = cp.admin("v@example.com", Role::Viewer, None).await;
    assert_eq!(
        cp.get("/admin/v1/prices/missing", &viewer).await.status,
        StatusCode::OK
    );
    let r = cp
        .post("/admin/v1/tenants", &root, json!({"id": "acme"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let acme = cp
        .admin("ops@acme.example", Role::TenantAdmin, Some("acme"))
        .await;
    let r = cp.get("/admin/v1/prices/missing", &acme).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
}

#[sqlx::test(migrations = "../migrations")]
async fn everyone_reads_prices_and_only_platform_admins_change_them(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    seed_small(&cp).await;
    let r = cp
        .post("/admin/v1/tenants", &root, json!({"id": "acme"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let acme = cp
        .admin("ops@acme.example", Role::TenantAdmin, Some("acme"))
        .await;
    let viewer = cp.admin("v@example.com", Role::Viewer, None).await;
    let r = put_override(&cp, &root, "gpt-4o", json!({"input_cost_per_token": 1e-7})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let before = fingerprint(&cp).await;

    for token in [&acme, &viewer] {
        for uri in [
            "/admin/v1/prices",
            "/admin/v1/prices/gpt-4o",
            "/admin/v1/prices/versions",
        ] {
            let r = cp.get(uri, token).await;
            assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
        }
        let writes = [
            (
                Method::PUT,
                "/admin/v1/prices/gpt-4o/override",
                json!({"input_cost_per_token": 0}),
            ),
            (
                Method::PUT,
                "/admin/v1/prices/new-model/override",
                json!({"input_cost_per_token": 0}),
            ),
            (
                Method::DELETE,
                "/admin/v1/prices/gpt-4o/override",
                Value::Null,
            ),
            (
                Method::POST,
                "/admin/v1/prices/sync",
                json!({"url": "http://127.0.0.1:1/p.json"}),
            ),
        ];
        for (method, uri, body) in writes {
            let r = cp.call(method.clone(), uri, token, Some(body)).await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{method} {uri}: {}",
                r.body
            );
            assert_eq!(r.headers["content-type"], "application/problem+json");
        }
    }
    // No token: 401 everywhere.
    for (method, uri) in [
        (Method::GET, "/admin/v1/prices"),
        (Method::GET, "/admin/v1/prices/gpt-4o"),
        (Method::GET, "/admin/v1/prices/versions"),
        (Method::GET, "/admin/v1/prices/missing"),
        (Method::PUT, "/admin/v1/prices/gpt-4o/override"),
        (Method::DELETE, "/admin/v1/prices/gpt-4o/override"),
        (Method::POST, "/admin/v1/prices/sync"),
    ] {
        let r = cp
            .raw(
                method.clone(),
                uri,
                None,
                br#"{"input_cost_per_token": 0}"#.to_vec(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{method} {uri}: {}",
            r.body
        );
    }
    assert_eq!(
        fingerprint(&cp).await,
        before,
        "a refused request changed the database"
    );
    assert_eq!(
        cp.get("/admin/v1/prices/gpt-4o", &viewer).await.body["effective"]["input_cost_per_token"],
        1e-7
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_override_input_gets_the_right_status_and_changes_nothing(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    seed_small(&cp).await;
    let r = put_override(&cp, &root, "gpt-4o", json!({"input_cost_per_token": 1e-7})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let before = fingerprint(&cp).await;

    let put = |model: &str| (Method::PUT, format!("/admin/v1/prices/{model}/override"));
    // (method and uri, body, status, the field path the problem must name)
    type Case = (
        (Method, String),
        &'static str,
        StatusCode,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            put("gpt-4o"),
            r#"{"input_cost_per_token": "#,
            StatusCode::BAD_REQUEST,
            None,
        ),
        (put("gpt-4o"), "not json", StatusCode::BAD_REQUEST, None),
        (
            put("gpt-4o"),
            r#"{"input_cost_per_token": "cheap"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("input_cost_per_token"),
        ),
        (
            put("gpt-4o"),
            r#"{"input_cost_per_token": 1e-6, "input_cost_per_tokens": 1e-6}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("input_cost_per_tokens"),
        ),
        (
            put("gpt-4o"),
            r#"{"input_cost_per_token": 1e-6, "output_cost_per_token": -1e-6}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("output_cost_per_token"),
        ),
        (
            put("gpt-4o"),
            r#"{"input_cost_per_token": 1e400}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("input_cost_per_token"),
        ),
        (
            put("gpt-4o"),
            r#"{"input_cost_per_token": 1e-6, "tiered_pricing": [{"range": [10, 0]}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("tiered_pricing[0].range"),
        ),
        (
            put("gpt-4o"),
            r#"{"input_cost_per_token": 1e-6, "supports_vision": "yes"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("supports_vision"),
        ),
        (
            put("gpt-4o"),
            "[]",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(""),
        ),
        (
            put("gpt-4o"),
            r#"{"max_input_tokens": 1000}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(""),
        ),
        (
            put("%20gpt-4o"),
            r#"{"input_cost_per_token": 1e-6}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("model"),
        ),
        (
            put("gpt%0A4o"),
            r#"{"input_cost_per_token": 1e-6}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("model"),
        ),
        (
            (
                Method::PUT,
                "/admin/v1/prices/gpt-4o/override?wait_ms=999999".into(),
            ),
            r#"{"input_cost_per_token": 1e-6}"#,
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            (
                Method::DELETE,
                "/admin/v1/prices/no-such-model/override".into(),
            ),
            "",
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            (
                Method::DELETE,
                "/admin/v1/prices/text-embedding-3-small/override".into(),
            ),
            "",
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            (Method::GET, "/admin/v1/prices/no-such-model".into()),
            "",
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            (Method::POST, "/admin/v1/prices/gpt-4o/override".into()),
            r#"{"input_cost_per_token": 1e-6}"#,
            StatusCode::METHOD_NOT_ALLOWED,
            None,
        ),
    ];
    for ((method, uri), body, status, path) in cases {
        let r = cp
            .raw(method.clone(), &uri, Some(&root), body.as_bytes().to_vec())
            .await;
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert_eq!(r.status, status, "{method} {uri} {body}: {}", r.body);
        } else {
            r.assert_problem(status, path, &format!("{method} {uri} {body}"));
        }
        assert_eq!(
            fingerprint(&cp).await,
            before,
            "{method} {uri} {body} changed the database"
        );
    }
    let r = cp.get("/admin/v1/prices/gpt-4o", &root).await;
    assert_eq!(r.body["effective"], json!({"input_cost_per_token": 1e-7}));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_sync_on_demand_stores_publishes_and_never_echoes_the_file(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    deployments(&cp, &root, &[("d1", "gpt-4o", None)]).await;
    let before = revision(&cp).await;

    // Credentials in the URL are used but neither stored nor shown.
    let good = serve(SMALL_FILE.as_bytes().to_vec()).await;
    let with_secrets =
        good.replacen("http://", "http://mirror:hunter2@", 1) + "/prices.json?token=sesame";
    let r = cp
        .post("/admin/v1/prices/sync", &root, json!({"url": with_secrets}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["new_version"], true);
    assert_eq!(r.body["entries"], 4);
    let version = r.body["version_id"].as_i64().unwrap();
    assert_eq!(revision(&cp).await, before + 1);
    assert_eq!(cp.running.state.publisher.latest_revision(), before + 1);
    assert_eq!(published_input_price(&cp, "d1"), Some(2.5e-6));
    let versions = cp.get("/admin/v1/prices/versions", &root).await;
    assert_eq!(versions.status, StatusCode::OK, "{}", versions.body);
    let v = &versions.body["items"][0];
    assert_eq!(v["id"], version);
    assert_eq!(v["current"], true);
    assert_eq!(v["entries"], 4);
    assert_eq!(v["source"], format!("{good}/prices.json"));
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    for secret in ["hunter2", "mirror", "sesame"] {
        assert!(
            !versions.body.to_string().contains(secret),
            "{}",
            versions.body
        );
    }

    // The same file again: no new version, no new revision.
    let r = cp
        .post(
            "/admin/v1/prices/sync",
            &root,
            json!({"url": format!("{good}/prices.json")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["new_version"], false);
    assert_eq!(r.body["version_id"], version);
    assert_eq!(revision(&cp).await, before + 1);

    let after_good = fingerprint(&cp).await;
    // An invalid file: 422, and nothing of it in the answer.
    let leaky =
        serve(br#"{"leaky-model-name": {"input_cost_per_token": "topsecretvalue"}}"#.to_vec())
            .await;
    let r = cp
        .post(
            "/admin/v1/prices/sync",
            &root,
            json!({"url": format!("{leaky}/prices.json")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let text = r.body.to_string();
    assert!(
        !text.contains("leaky") && !text.contains("topsecret"),
        "{text}"
    );
    // A source that fails: 502, without the URL.
    for url in [
        "http://user:pw@127.0.0.1:1/prices.json".to_owned(),
        format!("{good}/elsewhere.json"),
    ] {
        let r = cp
            .post("/admin/v1/prices/sync", &root, json!({"url": url}))
            .await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{url}: {}", r.body);
        assert_eq!(r.body["type"], "urn:switchboard:problem:bad-gateway");
        let text = r.body.to_string();
        assert!(
            !text.contains("127.0.0.1") && !text.contains("pw"),
            "{text}"
        );
    }
    // No URL given and none configured; not an HTTP URL; unknown field.
    for (body, status, path) in [
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY, "url"),
        (
            json!({"url": "file:///etc/passwd"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "url",
        ),
        (
            json!({"file": "/etc/passwd"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "file",
        ),
    ] {
        let r = cp.post("/admin/v1/prices/sync", &root, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.body["errors"][0]["path"], path, "{body}: {}", r.body);
    }
    // The three syncs that reached their source are audited as failed, without the file.
    let failed: Vec<String> =
        sqlx::query_scalar("SELECT after::text FROM audit_log WHERE action = 'sync_failed'")
            .fetch_all(cp.pool())
            .await
            .unwrap();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|a| !a.contains("leaky") && !a.contains("pw")),
        "{failed:?}"
    );
    // The audit log is append-only: beyond those three rows, nothing changed.
    let mut audited = after_good.clone();
    audited.0[6] += 3;
    assert_eq!(
        fingerprint(&cp).await,
        audited,
        "a failed sync changed the database"
    );

    // A changed file is a new version and becomes current.
    let changed = serve(br#"{"gpt-4o": {"input_cost_per_token": 3e-06}}"#.to_vec()).await;
    let r = cp
        .post(
            "/admin/v1/prices/sync",
            &root,
            json!({"url": format!("{changed}/prices.json")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["new_version"], true);
    assert_eq!(published_input_price(&cp, "d1"), Some(3e-6));
    let versions = cp.get("/admin/v1/prices/versions", &root).await;
    let flags: Vec<(i64, bool)> = versions.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["id"].as_i64().unwrap(), v["current"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        flags,
        [
            (r.body["version_id"].as_i64().unwrap(), true),
            (version, false)
        ]
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn syncs_on_demand_obey_allowed_hosts_and_are_audited(pool: PgPool) {
    let mut settings = common::settings(&common::unique_namespace());
    settings.prices.allowed_hosts = vec!["127.0.0.1".into()];
    let cp = common::start_with(pool, settings).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let good = format!(
        "{}/prices.json",
        serve(SMALL_FILE.as_bytes().to_vec()).await
    );
    let outside = good.replace("127.0.0.1", "localhost");

    let r = cp
        .post("/admin/v1/prices/sync", &root, json!({"url": outside}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body.to_string().contains("allowed_hosts"), "{}", r.body);
    let r = cp
        .post("/admin/v1/prices/sync", &root, json!({"url": good}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let bad = format!("{}/prices.json", serve(b"not json".to_vec()).await);
    let r = cp
        .post("/admin/v1/prices/sync", &root, json!({"url": bad}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);

    let audited: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT action, actor, after FROM audit_log WHERE object_type = 'price_version' ORDER BY id",
    )
    .fetch_all(cp.pool())
    .await
    .unwrap();
    let actions: Vec<&str> = audited.iter().map(|(a, _, _)| a.as_str()).collect();
    assert_eq!(actions, ["sync", "sync_failed"], "{audited:?}");
    assert!(
        audited
            .iter()
            .all(|(_, actor, _)| actor == "root@example.com")
    );
    assert_eq!(audited[0].2["entries"], 4, "{audited:?}");
    assert!(
        !audited[1].2.to_string().contains("not json"),
        "no file content"
    );
}
