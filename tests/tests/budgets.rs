//! Budgets against a real Redis shared by two "replicas" (two independent `Budgets` with their
//! own connections): concurrent requests never overrun a hard budget by more than one
//! request's maximum cost, refusals name the budget, periods roll over on a controllable
//! clock, and settlements report threshold crossings.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use switchboard_tests::services::redis_url;

use chrono::{DateTime, Utc};
use dataplane::budget::{BudgetRefusal, BudgetScope, BudgetSubject, Budgets, Threshold};
use dataplane::shared_redis::{FailurePolicy, RedisConfig, SharedRedis};
use switchboard_shared::budget::usd_to_nanos;
use switchboard_shared::secret::SecretRef;
use switchboard_shared::snapshot::{Budget, BudgetPeriod};

fn replica(prefix: &str, url: &str, policy: FailurePolicy) -> Budgets {
    let config = RedisConfig {
        url: SecretRef::Value(url.into()),
        key_prefix: prefix.into(),
        timeout_ms: 500,
        failure_policy: policy,
        refresh_ms: 200,
    };
    Budgets::new(Some(SharedRedis::connect(&config).unwrap()))
}

fn unique_prefix() -> String {
    format!("test-budget-{}", uuid::Uuid::now_v7().simple())
}

fn budget(max_usd: f64, soft_usd: Option<f64>, period: BudgetPeriod) -> Budget {
    Budget {
        max_usd,
        soft_usd,
        period,
        time_zone: None,
    }
}

fn key<'a>(id: &'a str, b: &'a Budget) -> BudgetSubject<'a> {
    BudgetSubject {
        scope: BudgetScope::Key,
        id,
        tenant_id: "acme",
        budget: b,
    }
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[tokio::test]
async fn concurrent_requests_through_two_replicas_stay_within_one_request_of_the_budget() {
    let prefix = unique_prefix();
    let replicas = Arc::new([
        replica(&prefix, &redis_url(), FailurePolicy::Open),
        replica(&prefix, &redis_url(), FailurePolicy::Open),
    ]);
    let hard = budget(1.0, None, BudgetPeriod::Monthly);
    let max_cost = usd_to_nanos(0.03);
    let admitted_spend = Arc::new(AtomicI64::new(0));
    let now = Utc::now();

    let mut tasks = Vec::new();
    for worker in 0..32usize {
        let replicas = Arc::clone(&replicas);
        let admitted_spend = Arc::clone(&admitted_spend);
        let hard = hard.clone();
        tasks.push(tokio::spawn(async move {
            let budgets = &replicas[worker % 2];
            let mut refused = None;
            for i in 0..100u64 {
                match budgets.reserve(&[key("k1", &hard)], max_cost, now).await {
                    Ok(reservation) => {
                        // The real cost is at most the estimate; vary it per request.
                        let actual = max_cost
                            - i64::try_from((i * 7 + worker as u64) % 20).unwrap() * 1_000_000;
                        tokio::time::sleep(std::time::Duration::from_millis(1 + i % 3)).await;
                        admitted_spend.fetch_add(actual, Ordering::Relaxed);
                        budgets.settle(reservation, actual).await;
                    }
                    Err(refusal) => {
                        refused = Some(refusal);
                        break;
                    }
                }
            }
            refused
        }));
    }
    let mut refusals = Vec::new();
    for t in tasks {
        refusals.push(t.await.unwrap());
    }
    let spent = admitted_spend.load(Ordering::Relaxed);
    assert!(
        spent <= usd_to_nanos(1.0) + max_cost,
        "admitted ${} against a $1.00 budget",
        spent as f64 / 1e9
    );
    assert!(
        spent >= usd_to_nanos(1.0) - max_cost,
        "the budget was not used up: {spent}"
    );
    // Every worker ended refused, and the refusal names the budget.
    for r in refusals {
        match r.expect("every worker runs into the budget") {
            BudgetRefusal::Exhausted {
                scope,
                id,
                max_usd,
                spent_usd,
                resets_in_seconds,
            } => {
                assert_eq!((scope, id.as_str(), max_usd), (BudgetScope::Key, "k1", 1.0));
                assert!(spent_usd >= 1.0);
                assert!(resets_in_seconds.is_some_and(|s| s > 0));
            }
            other => panic!("unexpected refusal {other:?}"),
        }
    }
    // What both replicas see is the settled total.
    let seen = replicas[1].spent_usd(&key("k1", &hard), now).await.unwrap();
    assert!(
        (seen - spent as f64 / 1e9).abs() < 1e-9,
        "{seen} vs {spent}"
    );
}

#[tokio::test]
async fn a_daily_budget_resets_at_the_period_boundary() {
    let prefix = unique_prefix();
    let budgets = replica(&prefix, &redis_url(), FailurePolicy::Open);
    let daily = budget(0.10, None, BudgetPeriod::Daily);
    let before_midnight = at("2026-11-23T23:59:00Z");
    let cost = usd_to_nanos(0.05);
    for _ in 0..2 {
        let r = budgets
            .reserve(&[key("k1", &daily)], cost, before_midnight)
            .await
            .unwrap();
        budgets.settle(r, cost).await;
    }
    match budgets
        .reserve(&[key("k1", &daily)], cost, before_midnight)
        .await
    {
        Err(BudgetRefusal::Exhausted {
            resets_in_seconds, ..
        }) => {
            assert_eq!(resets_in_seconds, Some(60));
        }
        other => panic!("expected exhaustion, got {other:?}"),
    }
    // One second after midnight: a new period with nothing spent.
    let after_midnight = at("2026-11-24T00:00:01Z");
    budgets
        .reserve(&[key("k1", &daily)], cost, after_midnight)
        .await
        .unwrap();
    assert_eq!(
        budgets.spent_usd(&key("k1", &daily), before_midnight).await,
        Some(0.10)
    );
}

#[tokio::test]
async fn a_tenant_budget_refuses_every_key_of_the_tenant_and_charges_nothing_on_refusal() {
    let prefix = unique_prefix();
    let budgets = replica(&prefix, &redis_url(), FailurePolicy::Open);
    let tenant_budget = budget(0.05, None, BudgetPeriod::None);
    let key_budget = budget(100.0, None, BudgetPeriod::Monthly);
    let tenant = BudgetSubject {
        scope: BudgetScope::Tenant,
        id: "acme",
        tenant_id: "acme",
        budget: &tenant_budget,
    };
    let now = Utc::now();
    let cost = usd_to_nanos(0.05);
    let r = budgets
        .reserve(&[key("k1", &key_budget), tenant], cost, now)
        .await
        .unwrap();
    budgets.settle(r, cost).await;
    let refusal = budgets
        .reserve(&[key("k2", &key_budget), tenant], cost, now)
        .await
        .unwrap_err();
    assert!(
        matches!(&refusal, BudgetRefusal::Exhausted { scope: BudgetScope::Tenant, id, resets_in_seconds: None, .. } if id == "acme"),
        "{refusal:?}"
    );
    // All or nothing: the refused request did not charge k2's own budget.
    assert_eq!(
        budgets.spent_usd(&key("k2", &key_budget), now).await,
        Some(0.0)
    );
}

#[tokio::test]
async fn settlements_report_the_thresholds_they_cross_once() {
    let prefix = unique_prefix();
    let budgets = replica(&prefix, &redis_url(), FailurePolicy::Open);
    let b = budget(1.0, Some(0.5), BudgetPeriod::Monthly);
    let now = Utc::now();
    let step = usd_to_nanos(0.3);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = budgets.reserve(&[key("k1", &b)], step, now).await.unwrap();
        seen.push(
            budgets
                .settle(r, step)
                .await
                .into_iter()
                .map(|c| c.threshold)
                .collect::<Vec<_>>(),
        );
    }
    // 0.3, 0.6 (soft crossed), 0.9, 1.2 (hard crossed).
    assert_eq!(
        seen,
        [vec![], vec![Threshold::Soft], vec![], vec![Threshold::Hard]]
    );
}

#[tokio::test]
async fn an_unreachable_redis_follows_the_failure_policy() {
    let b = budget(1.0, None, BudgetPeriod::Monthly);
    let now = Utc::now();
    // Nothing listens on port 1.
    let open = replica("x", "redis://127.0.0.1:1", FailurePolicy::Open);
    let r = open.reserve(&[key("k1", &b)], 10, now).await.unwrap();
    assert!(r.is_empty(), "fail-open admits without charging");
    let closed = replica("x", "redis://127.0.0.1:1", FailurePolicy::Closed);
    assert_eq!(
        closed.reserve(&[key("k1", &b)], 10, now).await.unwrap_err(),
        BudgetRefusal::Unavailable
    );
    // No Redis configured at all: budgets are not enforced.
    assert!(
        Budgets::new(None)
            .reserve(&[key("k1", &b)], 10, now)
            .await
            .unwrap()
            .is_empty()
    );
}
