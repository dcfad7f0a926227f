//! `GET /admin/v1/spend` against real Postgres: totals per group over a day range from the
//! rollups, tenant admins confined to their tenant, and bad parameters refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use axum::http::StatusCode;
use chrono::{TimeZone, Utc};
use common::*;
use controlplane::service::auth::Role;
use serde_json::json;
use sqlx::PgPool;
use switchboard_shared::usage::UsageRecord;

fn record(id: &str, tenant: &str, key: &str, day: u32, cost: f64) -> UsageRecord {
    let started_at = Utc.with_ymd_and_hms(2026, 11, day, 12, 0, 0).unwrap();
    usage_record(id, tenant, key, started_at, cost)
}

#[sqlx::test(migrations = "../migrations")]
async fn spend_is_grouped_over_days_and_confined_to_the_callers_tenant(pool: PgPool) {
    let cp = start(pool.clone()).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    for t in ["acme", "globex"] {
        let r = cp.post("/admin/v1/tenants", &root, json!({"id": t})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    controlplane::ingest::insert_batch(
        &pool,
        &[
            record("r1", "acme", "k1", 1, 0.5),
            record("r2", "acme", "k1", 2, 0.25),
            record("r3", "acme", "k2", 2, 0.125),
            record("r4", "globex", "k9", 2, 4.0),
            record("r5", "acme", "k1", 20, 100.0), // outside the range asked for
        ],
    )
    .await
    .unwrap();

    let r = cp
        .get(
            "/admin/v1/spend?group_by=key&from=2026-11-01&to=2026-11-02",
            &root,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let rows = r.body["rows"].as_array().unwrap();
    let by_key: Vec<(&str, f64, i64)> = rows
        .iter()
        .map(|row| {
            (
                row["group"].as_str().unwrap(),
                row["cost_usd"].as_f64().unwrap(),
                row["requests"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(by_key, [("k9", 4.0, 1), ("k1", 0.75, 2), ("k2", 0.125, 1)]);

    // A tenant admin sees only its tenant, whatever it asks for.
    let acme = cp
        .admin("ops@acme.example", Role::TenantAdmin, Some("acme"))
        .await;
    let r = cp
        .get(
            "/admin/v1/spend?group_by=tenant&from=2026-11-01&to=2026-11-30&tenant_id=globex",
            &acme,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["rows"], json!([]));
    let r = cp
        .get(
            "/admin/v1/spend?group_by=tenant&from=2026-11-01&to=2026-11-30",
            &acme,
        )
        .await;
    let rows = r.body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["group"], "acme");
    assert_eq!(rows[0]["cost_usd"], 100.875);
    assert_eq!(rows[0]["prompt_tokens"], 40);

    for bad in [
        "/admin/v1/spend?group_by=colour&from=2026-11-01&to=2026-11-02",
        "/admin/v1/spend?group_by=key&from=2026-11-05&to=2026-11-02",
        "/admin/v1/spend?group_by=key&from=yesterday&to=2026-11-02",
        "/admin/v1/spend?group_by=key&from=2026-11-01",
        "/admin/v1/spend?group_by=key&from=2026-11-01&to=2026-11-02&bogus=1",
        "/admin/v1/spend?group_by=key%3B%20DROP%20TABLE%20spend_daily&from=2026-11-01&to=2026-11-02",
    ] {
        let r = cp.get(bad, &root).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
    }
    let r = cp
        .get(
            "/admin/v1/spend?group_by=key&from=2026-11-01&to=2026-11-02",
            "not-a-jwt",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
