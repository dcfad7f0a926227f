//! Price sync against real Postgres: LiteLLM's real price file from disk and over HTTP,
//! versions only on change, overrides winning, bad files refused without a trace, one
//! replica at a time for scheduled syncs, and a hostile source (an endless body, a redirect
//! to another host) refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::path::PathBuf;

use axum::http::StatusCode;
use controlplane::service::auth::Role;
use serde_json::json;

use controlplane::service::prices;
use sqlx::PgPool;
use switchboard_shared::price::PriceEntry;

fn price_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/model_prices_and_context_window.json")
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The URL of `body` served as a price file.
async fn serve(body: Vec<u8>) -> String {
    format!("{}/prices.json", common::serve_prices(body).await)
}

async fn versions(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM price_versions")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn the_real_file_syncs_once_and_prices_models(pool: PgPool) {
    let first = prices::sync_from_file(&pool, &price_file()).await.unwrap();
    assert!(first.new_version);
    assert!(first.entries > 4000, "{} entries", first.entries);
    let again = prices::sync_from_file(&pool, &price_file()).await.unwrap();
    assert!(!again.new_version, "an unchanged file makes no new version");
    assert_eq!(again.version_id, first.version_id);
    assert_eq!(versions(&pool).await, 1);

    let wanted = vec!["gpt-4o".to_string(), "no-such-model-xyz".to_string()];
    let priced = prices::effective_prices(&pool, &wanted).await.unwrap();
    // gpt-4o in LiteLLM's file: $2.50 / $10 per million tokens, cached reads $1.25.
    let gpt4o = &priced["gpt-4o"];
    assert_eq!(gpt4o.input_cost_per_token, Some(2.5e-6));
    assert_eq!(gpt4o.output_cost_per_token, Some(1e-5));
    assert_eq!(gpt4o.cache_read_input_token_cost, Some(1.25e-6));
    assert_eq!(
        prices::missing_models(&pool, &wanted).await.unwrap(),
        ["no-such-model-xyz".to_string()].into()
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_url_sync_makes_a_new_version_and_overrides_win(pool: PgPool) {
    prices::sync_from_file(&pool, &price_file()).await.unwrap();
    let changed = br#"{
        "sample_spec": {"input_cost_per_token": 0},
        "gpt-4o": {"input_cost_per_token": 0.000003, "output_cost_per_token": 0.000012},
        "my-model": {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}
    }"#
    .to_vec();
    let url = serve(changed).await;
    let outcome = prices::sync_from_url(&pool, &client(), &url).await.unwrap();
    assert!(outcome.new_version);
    assert_eq!(outcome.entries, 2);
    assert_eq!(versions(&pool).await, 2);

    let wanted = vec!["gpt-4o".to_string(), "my-model".to_string()];
    let priced = prices::effective_prices(&pool, &wanted).await.unwrap();
    assert_eq!(
        priced["gpt-4o"].input_cost_per_token,
        Some(3e-6),
        "newest version wins"
    );

    let override_entry = PriceEntry {
        input_cost_per_token: Some(1e-7),
        output_cost_per_token: Some(2e-7),
        ..PriceEntry::default()
    };
    prices::set_override(&pool, "gpt-4o", &override_entry, "admin@example.com")
        .await
        .unwrap();
    let priced = prices::effective_prices(&pool, &wanted).await.unwrap();
    assert_eq!(
        priced["gpt-4o"].input_cost_per_token,
        Some(1e-7),
        "an override wins"
    );
    assert_eq!(priced["my-model"].output_cost_per_token, Some(2e-6));

    // A later sync (here: the source rolled back to the earlier file, which becomes current
    // again without a new version) does not disturb the override.
    let rolled_back = prices::sync_from_file(&pool, &price_file()).await.unwrap();
    assert!(!rolled_back.new_version);
    assert_eq!(versions(&pool).await, 2);
    let priced = prices::effective_prices(&pool, &wanted).await.unwrap();
    assert_eq!(priced["gpt-4o"].input_cost_per_token, Some(1e-7));
    assert!(prices::delete_override(&pool, "gpt-4o").await.unwrap());
    let priced = prices::effective_prices(&pool, &wanted).await.unwrap();
    assert_eq!(priced["gpt-4o"].input_cost_per_token, Some(2.5e-6));
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_files_and_sources_change_nothing(pool: PgPool) {
    prices::sync_from_file(&pool, &price_file()).await.unwrap();
    let wrong_type = br#"{"gpt-4o": {"input_cost_per_token": "cheap"}}"#.to_vec();
    for (body, needle) in [
        (b"not json".to_vec(), "invalid price file"),
        (wrong_type, "gpt-4o"),
        (b"{}".to_vec(), "no model entries"),
    ] {
        let url = serve(body).await;
        let err = prices::sync_from_url(&pool, &client(), &url)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
    let err = prices::sync_from_url(&pool, &client(), "http://127.0.0.1:1/prices.json")
        .await
        .unwrap_err();
    assert!(matches!(err, prices::SyncError::Fetch { .. }), "{err}");
    let err = prices::sync_from_file(&pool, std::path::Path::new("/no/such/file.json"))
        .await
        .unwrap_err();
    assert!(matches!(err, prices::SyncError::Fetch { .. }), "{err}");
    assert_eq!(versions(&pool).await, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn only_one_replica_syncs_at_a_time(pool: PgPool) {
    let url = serve(std::fs::read(price_file()).unwrap()).await;
    // Another replica holds the lock.
    let mut other = pool.acquire().await.unwrap();
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(prices::SYNC_LOCK)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(held);
    assert_eq!(
        prices::sync_once_locked(&pool, &client(), &url)
            .await
            .unwrap(),
        None
    );
    assert_eq!(versions(&pool).await, 0);

    let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(prices::SYNC_LOCK)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    let done = prices::sync_once_locked(&pool, &client(), &url)
        .await
        .unwrap();
    assert!(done.is_some_and(|o| o.new_version));
    assert_eq!(versions(&pool).await, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn snapshots_carry_the_effective_price_of_unpriced_deployments(pool: PgPool) {
    let cp = common::start(pool.clone()).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let r = cp
        .post(
            "/admin/v1/providers",
            &root,
            json!({"id": "up", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for (id, own_price) in [
        ("unpriced", None),
        ("priced", Some(json!({"input_cost_per_token": 1e-9}))),
    ] {
        let mut body =
            json!({"id": id, "model": "m", "provider": "up", "upstream_model": "gpt-4o"});
        if let Some(price) = own_price {
            body["price"] = price;
        }
        let r = cp.post("/admin/v1/deployments", &root, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let before = controlplane::service::snapshot::build_consistent(&pool)
        .await
        .unwrap();
    assert!(
        before
            .deployments
            .iter()
            .find(|d| d.id == "unpriced")
            .unwrap()
            .price
            .is_none()
    );

    // A sync is a config change: the revision moves and the snapshot prices the deployment.
    prices::sync_from_file(&pool, &price_file()).await.unwrap();
    let after = controlplane::service::snapshot::build_consistent(&pool)
        .await
        .unwrap();
    assert!(after.revision > before.revision);
    let price = |s: &switchboard_shared::snapshot::Snapshot, id: &str| {
        s.deployments
            .iter()
            .find(|d| d.id == id)
            .and_then(|d| d.price.as_ref())
            .and_then(|p| p.input_cost_per_token)
    };
    assert_eq!(price(&after, "unpriced"), Some(2.5e-6));
    assert_eq!(
        price(&after, "priced"),
        Some(1e-9),
        "a deployment's own price wins"
    );
    after.validate().unwrap();
}

/// A source that answers every request with an endless chunked body.
async fn endless_source() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
                // Stops when the client hangs up (or after 1 GiB, whichever comes first).
                for _ in 0..16_384 {
                    if socket.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/prices.json")
}

#[sqlx::test(migrations = "../migrations")]
async fn an_endless_body_is_refused_at_the_size_cap(pool: PgPool) {
    let _ = client();
    let url = endless_source().await;
    let err = prices::sync_from_url(&pool, &prices::http_client().unwrap(), &url)
        .await
        .unwrap_err();
    assert!(matches!(err, prices::SyncError::Fetch { .. }), "{err}");
    assert!(err.to_string().contains("larger than"), "{err}");
    assert_eq!(versions(&pool).await, 0);
}

#[sqlx::test(migrations = "../migrations")]
async fn redirects_are_followed_only_to_the_same_host(pool: PgPool) {
    let _ = client();
    let file = std::fs::read(price_file()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let redirect = |to: String| {
        move || {
            let to = to.clone();
            async move { (StatusCode::FOUND, [("location", to)]) }
        }
    };
    let app = axum::Router::new()
        .route(
            "/prices.json",
            axum::routing::get(move || {
                let file = file.clone();
                async move { file }
            }),
        )
        .route("/same", axum::routing::get(redirect("/prices.json".into())))
        .route(
            "/away",
            axum::routing::get(redirect(format!("http://localhost:{port}/prices.json"))),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = prices::http_client().unwrap();

    // Another host (the same machine by another name): refused, nothing stored.
    let err = prices::sync_from_url(&pool, &client, &format!("http://127.0.0.1:{port}/away"))
        .await
        .unwrap_err();
    assert!(matches!(err, prices::SyncError::Fetch { .. }), "{err}");
    assert_eq!(versions(&pool).await, 0);
    // The same host: followed.
    let done = prices::sync_from_url(&pool, &client, &format!("http://127.0.0.1:{port}/same"))
        .await
        .unwrap();
    assert!(done.new_version);
}

#[test]
fn only_allowed_hosts_are_synced_from() {
    let allowed = vec!["raw.example.com".to_owned()];
    assert_eq!(
        prices::check_source("https://RAW.example.com/p.json", &allowed),
        None
    );
    assert_eq!(
        prices::check_source("https://any.example.org/p.json", &[]),
        None
    );
    let refused = prices::check_source("http://169.254.169.254/latest", &allowed).unwrap();
    assert!(refused.contains("allowed_hosts"), "{refused}");
    assert!(prices::check_source("file:///etc/passwd", &[]).is_some());
}
