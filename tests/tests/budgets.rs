//! Budgets against a real Redis shared by two "replicas" (two independent `Budgets` with their
//! own connections): concurrent requests never overrun a hard budget by more than one
//! request's maximum cost, refusals name the budget, periods roll over on a controllable
//! clock, and settlements report threshold crossings.
//!
//! Then budgets without Redis, through a real gateway: counted in process, with the same
//! bound under 32 concurrent clients, the same refusal, the same reset at the period boundary
//! (on the gateway's movable clock), and a refusal by either the budget or a rate limit
//! leaving nothing charged on the other.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use switchboard_tests::services::redis_url;

use chrono::{DateTime, Utc};
use common::*;
use dataplane::budget::{
    BudgetCell, BudgetRefusal, BudgetScope, BudgetSubject, Budgets, Subjects, Threshold,
};
use dataplane::shared_redis::{FailurePolicy, RedisConfig, SharedRedis};
use switchboard_shared::budget::usd_to_nanos;
use switchboard_shared::secret::SecretRef;
use switchboard_shared::snapshot::{Budget, BudgetPeriod};
use switchboard_tests::mock::{COMPLETION_TOKENS, PROMPT_TOKENS};

fn replica(prefix: &str, url: &str, policy: FailurePolicy) -> Budgets {
    let config = RedisConfig {
        url: SecretRef::Value(url.into()),
        key_prefix: prefix.into(),
        timeout_ms: 500,
        failure_policy: policy,
        refresh_ms: 200,
        concurrency_lease_ms: 15_000,
        lease: Default::default(),
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

fn key<'a>(id: &'a str, b: &'a Budget, cell: &'a BudgetCell) -> BudgetSubject<'a> {
    BudgetSubject {
        scope: BudgetScope::Key,
        id,
        tenant_id: "acme",
        budget: b,
        cell,
    }
}

/// One key's budget, as a request charges it.
fn only<'a>(id: &'a str, b: &'a Budget, cell: &'a BudgetCell) -> Subjects<'a> {
    Subjects::one(key(id, b, cell))
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
            let cell = BudgetCell::default();
            let mut refused = None;
            for i in 0..100u64 {
                match budgets
                    .reserve(&only("k1", &hard, &cell), max_cost, now)
                    .await
                {
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
    let cell = BudgetCell::default();
    let seen = replicas[1]
        .spent_usd(&key("k1", &hard, &cell), now)
        .await
        .unwrap();
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
    let cell = BudgetCell::default();
    for _ in 0..2 {
        let r = budgets
            .reserve(&only("k1", &daily, &cell), cost, before_midnight)
            .await
            .unwrap();
        budgets.settle(r, cost).await;
    }
    match budgets
        .reserve(&only("k1", &daily, &cell), cost, before_midnight)
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
        .reserve(&only("k1", &daily, &cell), cost, after_midnight)
        .await
        .unwrap();
    assert_eq!(
        budgets
            .spent_usd(&key("k1", &daily, &cell), after_midnight)
            .await,
        Some(0.05)
    );
    // The day before keeps its own counter (a fresh cell: as a reloaded catalog would ask).
    assert_eq!(
        budgets
            .spent_usd(&key("k1", &daily, &BudgetCell::default()), before_midnight)
            .await,
        Some(0.10)
    );
}

#[tokio::test]
async fn a_tenant_budget_refuses_every_key_of_the_tenant_and_charges_nothing_on_refusal() {
    let prefix = unique_prefix();
    let budgets = replica(&prefix, &redis_url(), FailurePolicy::Open);
    let tenant_budget = budget(0.05, None, BudgetPeriod::None);
    let key_budget = budget(100.0, None, BudgetPeriod::Monthly);
    let tenant_cell = BudgetCell::default();
    let tenant = BudgetSubject {
        scope: BudgetScope::Tenant,
        id: "acme",
        tenant_id: "acme",
        budget: &tenant_budget,
        cell: &tenant_cell,
    };
    let now = Utc::now();
    let cost = usd_to_nanos(0.05);
    let (k1, k2) = (BudgetCell::default(), BudgetCell::default());
    let r = budgets
        .reserve(
            &Subjects::two(key("k1", &key_budget, &k1), tenant),
            cost,
            now,
        )
        .await
        .unwrap();
    budgets.settle(r, cost).await;
    let refusal = budgets
        .reserve(
            &Subjects::two(key("k2", &key_budget, &k2), tenant),
            cost,
            now,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refusal, BudgetRefusal::Exhausted { scope: BudgetScope::Tenant, id, resets_in_seconds: None, .. } if id == "acme"),
        "{refusal:?}"
    );
    // All or nothing: the refused request did not charge k2's own budget.
    assert_eq!(
        budgets.spent_usd(&key("k2", &key_budget, &k2), now).await,
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
    let cell = BudgetCell::default();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = budgets
            .reserve(&only("k1", &b, &cell), step, now)
            .await
            .unwrap();
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
    let cell = BudgetCell::default();
    let open = replica("x", "redis://127.0.0.1:1", FailurePolicy::Open);
    let r = open.reserve(&only("k1", &b, &cell), 10, now).await.unwrap();
    assert!(r.is_empty(), "fail-open admits without charging");
    let closed = replica("x", "redis://127.0.0.1:1", FailurePolicy::Closed);
    assert_eq!(
        closed
            .reserve(&only("k1", &b, &cell), 10, now)
            .await
            .unwrap_err(),
        BudgetRefusal::Unavailable
    );
    // No Redis configured at all: budgets are counted in this process.
    let local = Budgets::new(None);
    let r = local
        .reserve(&only("k1", &b, &cell), usd_to_nanos(1.0), now)
        .await
        .unwrap();
    assert_eq!(r.reserved_nanos(), usd_to_nanos(1.0));
    assert!(matches!(
        local.reserve(&only("k1", &b, &cell), 10, now).await,
        Err(BudgetRefusal::Exhausted { .. })
    ));
}

// ---- Without Redis: budgets counted in process, through a real gateway. ----

const CHAT: &str = "/v1/chat/completions";
const INPUT_PRICE: f64 = 0.000_01;
const OUTPUT_PRICE: f64 = 0.000_03;
const MAX_TOKENS: u64 = 40;
const BODY: &str = r#"{"model":"m","max_tokens":40,"messages":[{"role":"user","content":"hi"}]}"#;

/// What one request really costs (the mock's usage at these prices).
fn real_cost() -> f64 {
    PROMPT_TOKENS as f64 * INPUT_PRICE + COMPLETION_TOKENS as f64 * OUTPUT_PRICE
}

/// The most one request may cost: its prompt estimate plus `max_tokens`, at these prices.
fn max_cost() -> f64 {
    (BODY.len() as f64 / 4.0).ceil() * INPUT_PRICE + MAX_TOKENS as f64 * OUTPUT_PRICE
}

/// A standalone gateway config (no `redis:`): key `k1` (secret [`KEY`]) of tenant `t1` with
/// `key_fields` (`, budget: {...}`, `, limits: {...}`), one priced deployment of model `m`.
fn standalone(base_url: &str, key_fields: &str) -> String {
    let snapshot = snapshot(
        key_fields,
        &format!(
            "providers: [{{ id: up, kind: openai, base_url: \"{base_url}\" }}]
deployments:
  - {{ id: d1, model: m, provider: up, upstream_model: up-model, price: {{ input_cost_per_token: {INPUT_PRICE}, output_cost_per_token: {OUTPUT_PRICE} }} }}
"
        ),
    );
    config_yaml(&snapshot, "")
}

async fn chat(gw: &Gateway) -> Reply {
    post(&gw.url(CHAT), BODY).await
}

/// The key's budget spend this period, as `/v1/key/info` reports it.
async fn key_spent(gw: &Gateway) -> f64 {
    let info = key_info(gw).await;
    info["key"]["budget"]["spent_usd"]
        .as_f64()
        .unwrap_or_else(|| panic!("no spend reported: {info}"))
}

/// Waits until the key's spend (settled in the background) is `expected`; returns the last
/// value seen.
async fn spent_settles_at(gw: &Gateway, expected: f64) -> f64 {
    let mut spent = f64::NAN;
    for _ in 0..100 {
        spent = key_spent(gw).await;
        if (spent - expected).abs() < 1e-12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    spent
}

fn assert_budget_refusal(reply: &Reply) {
    let error = reply.openai_error(429);
    assert_eq!(error["type"], "insufficient_quota");
    assert_eq!(error["code"], "budget_exceeded");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("key `k1`"), "{message}");
}

#[tokio::test]
async fn standalone_budget_holds_under_32_concurrent_clients_and_refuses_in_openai_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let budget = 0.02;
    let gw = Arc::new(
        Gateway::start(&standalone(
            &mock.base_url(),
            &format!(", budget: {{ max_usd: {budget}, period: monthly }}"),
        ))
        .await,
    );
    let mut workers = Vec::new();
    for _ in 0..32 {
        let gw = Arc::clone(&gw);
        workers.push(tokio::spawn(async move {
            for _ in 0..50 {
                let reply = chat(&gw).await;
                if reply.status != 200 {
                    return reply;
                }
            }
            panic!("50 requests and the budget never refused");
        }));
    }
    let mut refusals = Vec::new();
    for w in workers {
        refusals.push(w.await.unwrap());
    }
    let served: Vec<_> = gw
        .usage
        .records()
        .into_iter()
        .filter(|r| r.status == 200)
        .collect();
    let spent: f64 = served.iter().map(|r| r.cost_usd).sum();
    assert!(
        spent <= budget + max_cost(),
        "admitted ${spent} against a ${budget} budget ({} requests)",
        served.len()
    );
    assert!(spent >= budget - max_cost(), "budget not used up: ${spent}");
    for reply in &refusals {
        assert_budget_refusal(reply);
        assert!(reply.headers.contains_key("retry-after"));
    }
    assert_eq!(mock.request_count(""), served.len());
    // `/v1/key/info` reports this replica's own count: what was served, once settled.
    assert!((spent_settles_at(&gw, spent).await - spent).abs() < 1e-12);
}

#[tokio::test]
async fn standalone_budget_resets_when_the_clock_crosses_the_period_boundary() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&standalone(
        &mock.base_url(),
        ", budget: { max_usd: 0.001, period: daily }",
    ))
    .await;
    let mut served = 0;
    loop {
        let reply = chat(&gw).await;
        if reply.status != 200 {
            assert_budget_refusal(&reply);
            break;
        }
        served += 1;
        assert!(served < 10, "the budget never ran out");
    }
    // Still refused until the day is over.
    assert_budget_refusal(&chat(&gw).await);
    gw.state.books.clock.advance(Duration::from_secs(86_400));
    assert_eq!(chat(&gw).await.status, 200, "a new day, a new budget");
    assert!((spent_settles_at(&gw, real_cost()).await - real_cost()).abs() < 1e-12);
}

#[tokio::test]
async fn standalone_budget_refusals_leave_the_rate_limit_untouched() {
    let mock = MockUpstream::start().await.unwrap();
    // Two requests a minute; a budget the first request uses up.
    let gw = Gateway::start(&standalone(
        &mock.base_url(),
        ", limits: { rpm: 2 }, budget: { max_usd: 0.0001, period: daily }",
    ))
    .await;
    assert_eq!(chat(&gw).await.status, 200);
    for _ in 0..3 {
        assert_budget_refusal(&chat(&gw).await);
    }
    // A new budget day (the rate limits' own clock has not moved): the key's second request
    // of the minute is still there, because the refused ones took none.
    gw.state.books.clock.advance(Duration::from_secs(86_400));
    let reply = chat(&gw).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        chat(&gw).await.openai_error(429)["code"],
        "rate_limit_exceeded",
        "the limit itself still holds"
    );
}

#[tokio::test]
async fn standalone_rate_limit_refusals_reserve_nothing_on_the_budget() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&standalone(
        &mock.base_url(),
        ", limits: { rpm: 1 }, budget: { max_usd: 1.0, period: daily }",
    ))
    .await;
    assert_eq!(chat(&gw).await.status, 200);
    assert!((spent_settles_at(&gw, real_cost()).await - real_cost()).abs() < 1e-12);
    for _ in 0..3 {
        assert_eq!(
            chat(&gw).await.openai_error(429)["code"],
            "rate_limit_exceeded"
        );
    }
    assert!(
        (key_spent(&gw).await - real_cost()).abs() < 1e-12,
        "a refused request left a reservation"
    );
}
