//! Rate limits across replicas: three gateways in one process share one real Redis (each test
//! under its own key prefix) and must together admit what the limit allows — for key, tenant
//! and deployment limits, requests and tokens — and keep serving per the failure policy while
//! a throwaway Redis is killed, then enforce limits in Redis again once it is back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use switchboard_tests::services::ThrowawayRedis;
use switchboard_tests::services::redis_url;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use dataplane::limits::Limiter;
use http::Method;

const CHAT: &str = "/v1/chat/completions";
const TOKENS_PER_ANSWER: u64 = switchboard_tests::mock::TOTAL_TOKENS;

/// A key prefix no other test (or test run) uses.
fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test-cl-{name}-{}-{nanos}", std::process::id())
}

/// The secret of a test key by id.
fn secret(id: &str) -> String {
    format!("sk-cluster-{id}")
}

/// A config with tenants `t1` (unlimited) and `t2` (90 rpm), keys (id, tenant, limits), model
/// `m` on an unlimited deployment and model `md` on one limited to 90 rpm, all at `base_url`,
/// sharing Redis at `url` under `prefix`.
fn cluster_config(
    base_url: &str,
    keys: &[(&str, &str, &str)],
    url: &str,
    prefix: &str,
    policy: &str,
) -> String {
    let keys: String = keys
        .iter()
        .map(|(id, tenant, limits)| {
            format!(
                "  - {{ id: {id}, tenant_id: {tenant}, key_hash: \"{}\", limits: {{ {limits} }} }}\n",
                key_hash(&secret(id))
            )
        })
        .collect();
    let snapshot = format!(
        "revision: 1
tenants: [{{ id: t1 }}, {{ id: t2, limits: {{ rpm: 90 }} }}]
virtual_keys:
{keys}providers: [{{ id: up, kind: openai, base_url: \"{base_url}\" }}]
deployments:
  - {{ id: d1, model: m, provider: up, upstream_model: up-model }}
  - {{ id: d2, model: md, provider: up, upstream_model: up-model, limits: {{ rpm: 90 }} }}
"
    );
    format!(
        "{}redis:\n  url: {{ value: \"{url}\" }}\n  key_prefix: \"{prefix}\"\n  timeout_ms: 200\n  failure_policy: {policy}\n",
        config_yaml(&snapshot, "")
    )
}

async fn three_gateways(config: &str) -> Vec<Gateway> {
    vec![
        Gateway::start(config).await,
        Gateway::start(config).await,
        Gateway::start(config).await,
    ]
}

fn chat_body(model: &str, max_tokens: Option<u32>) -> String {
    let max = max_tokens.map_or(String::new(), |m| format!(",\"max_tokens\":{m}"));
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]{max}}}"#)
}

async fn post_as(gw: &Gateway, key_id: &str, body: &str) -> Reply {
    send(request(
        Method::POST,
        &gw.url(CHAT),
        &[
            ("authorization", &format!("Bearer {}", secret(key_id))),
            ("content-type", "application/json"),
        ],
        body.to_owned(),
    ))
    .await
}

/// Sends `total` requests with `key_id`, `concurrency` at a time, spread round-robin over the
/// gateways. Returns the replies and how long it took.
async fn hammer(
    gateways: &[Gateway],
    key_id: &str,
    body: &str,
    total: usize,
    concurrency: usize,
) -> (Vec<Reply>, Duration) {
    let urls: Arc<Vec<String>> = Arc::new(gateways.iter().map(|g| g.url(CHAT)).collect());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (urls, next) = (urls.clone(), next.clone());
        let (key, body) = (secret(key_id), body.to_owned());
        workers.push(tokio::spawn(async move {
            let mut replies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return replies;
                }
                replies.push(
                    send(request(
                        Method::POST,
                        &urls[n % urls.len()],
                        &[
                            ("authorization", &format!("Bearer {key}")),
                            ("content-type", "application/json"),
                        ],
                        body.clone(),
                    ))
                    .await,
                );
            }
        }));
    }
    let mut replies = Vec::new();
    for w in workers {
        replies.extend(w.await.unwrap());
    }
    (replies, started.elapsed())
}

/// What the limit lets through in `elapsed` beyond the first burst: GCRA refills smoothly.
fn refill(limit_per_minute: u64, elapsed: Duration) -> u64 {
    (limit_per_minute as f64 * elapsed.as_secs_f64() / 60.0).ceil() as u64
}

/// Asserts that `admitted` is the limit within ±2%, plus what refilled while the test ran.
fn assert_about(admitted: u64, limit: u64, elapsed: Duration, what: &str) {
    let low = (limit as f64 * 0.98).floor() as u64;
    let high = (limit as f64 * 1.02).ceil() as u64 + refill(limit, elapsed);
    assert!(
        (low..=high).contains(&admitted),
        "{what}: {admitted} admitted, expected {low}..={high} for a limit of {limit} ({elapsed:?})"
    );
}

fn header_u64(reply: &Reply, name: &str) -> u64 {
    reply.headers[name]
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{name}: {:?}", reply.headers[name]))
}

/// 200s carry OpenAI-style request headers for `limit`; the rest are 429s with Retry-After.
fn check_request_limit_replies(replies: &[Reply], limit: u64, scope: &str) -> u64 {
    let mut admitted = 0;
    let mut lowest_remaining = u64::MAX;
    for r in replies {
        if r.status == 200 {
            admitted += 1;
            assert_eq!(header_u64(r, "x-ratelimit-limit-requests"), limit);
            let remaining = header_u64(r, "x-ratelimit-remaining-requests");
            assert!(remaining < limit, "remaining {remaining} of {limit}");
            lowest_remaining = lowest_remaining.min(remaining);
            assert!(r.headers.contains_key("x-ratelimit-reset-requests"));
        } else {
            let e = r.openai_error(429);
            assert_eq!(e["code"], "rate_limit_exceeded");
            assert_eq!(e["type"], "rate_limit_error");
            assert!(
                e["message"].as_str().unwrap().contains(scope),
                "refused by the {scope} limit: {e}"
            );
            assert!(header_u64(r, "retry-after") >= 1);
            assert_eq!(header_u64(r, "x-ratelimit-limit-requests"), limit);
            assert_eq!(header_u64(r, "x-ratelimit-remaining-requests"), 0);
            assert!(r.headers.contains_key("x-ratelimit-reset-requests"));
        }
    }
    assert!(
        lowest_remaining <= 1,
        "the last admissions see the limit exhausted (lowest remaining {lowest_remaining})"
    );
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limit_holds_across_three_replicas() {
    let mock = MockUpstream::start().await.unwrap();
    let config = cluster_config(
        &mock.base_url(),
        &[("k1", "t1", "rpm: 150")],
        &redis_url(),
        &unique_prefix("key-rpm"),
        "open",
    );
    let gateways = three_gateways(&config).await;
    let (replies, elapsed) = hammer(&gateways, "k1", &chat_body("m", None), 450, 24).await;
    let admitted = check_request_limit_replies(&replies, 150, "key");
    assert_about(admitted, 150, elapsed, "key rpm across 3 replicas");
    // Each replica admitted some: the limit was shared, not met by one replica alone.
    for gw in &gateways {
        assert!(!gw.usage.records().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_limit_holds_across_three_replicas_and_keys() {
    let mock = MockUpstream::start().await.unwrap();
    let config = cluster_config(
        &mock.base_url(),
        &[("ka", "t2", ""), ("kb", "t2", "")],
        &redis_url(),
        &unique_prefix("tenant-rpm"),
        "open",
    );
    let gateways = three_gateways(&config).await;
    let body = chat_body("m", None);
    let (a, b) = tokio::join!(
        hammer(&gateways, "ka", &body, 135, 8),
        hammer(&gateways, "kb", &body, 135, 8)
    );
    let elapsed = a.1.max(b.1);
    let replies: Vec<Reply> = a.0.into_iter().chain(b.0).collect();
    let admitted = check_request_limit_replies(&replies, 90, "tenant");
    assert_about(
        admitted,
        90,
        elapsed,
        "tenant rpm over two keys, 3 replicas",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_limit_holds_across_three_replicas() {
    let mock = MockUpstream::start().await.unwrap();
    let config = cluster_config(
        &mock.base_url(),
        &[("k1", "t1", "")],
        &redis_url(),
        &unique_prefix("deployment-rpm"),
        "open",
    );
    let gateways = three_gateways(&config).await;
    let (replies, elapsed) = hammer(&gateways, "k1", &chat_body("md", None), 270, 24).await;
    let mut admitted = 0;
    for r in &replies {
        if r.status == 200 {
            admitted += 1;
        } else {
            // The model's only deployment is over its limit: no deployment available.
            let e = r.openai_error(503);
            assert!(
                e["message"].as_str().unwrap().contains("no deployment"),
                "{e}"
            );
            assert!(header_u64(r, "retry-after") >= 1);
        }
    }
    assert_about(admitted, 90, elapsed, "deployment rpm across 3 replicas");
    assert_eq!(mock.request_count(""), admitted as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_limit_holds_across_three_replicas_with_real_counts() {
    const TPM: u64 = 2000;
    let mock = MockUpstream::start().await.unwrap();
    let config = cluster_config(
        &mock.base_url(),
        &[("k1", "t1", "tpm: 2000")],
        &redis_url(),
        &unique_prefix("key-tpm"),
        "open",
    );
    let gateways = three_gateways(&config).await;
    // Estimated at admission: the prompt's size plus max_tokens, ~120; really used: 29.
    let body = chat_body("m", Some(100));
    let started = Instant::now();
    let (mut replies, _) = hammer(&gateways, "k1", &body, 200, 6).await;
    // Let the last settlements land, then take what is left one request at a time, so that
    // every admission sees the real counts of all before it.
    let mut refusals_in_a_row = 0;
    let mut n = 0usize;
    while refusals_in_a_row < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let reply = post_as(&gateways[n % 3], "k1", &body).await;
        n += 1;
        refusals_in_a_row = if reply.status == 200 {
            0
        } else {
            refusals_in_a_row + 1
        };
        replies.push(reply);
        assert!(n < 500, "the token limit never refused");
    }
    let elapsed = started.elapsed();
    let mut admitted = 0u64;
    for r in &replies {
        if r.status == 200 {
            admitted += 1;
            assert_eq!(header_u64(r, "x-ratelimit-limit-tokens"), TPM);
            assert!(header_u64(r, "x-ratelimit-remaining-tokens") < TPM);
            assert!(!r.headers.contains_key("x-ratelimit-limit-requests"));
        } else {
            let e = r.openai_error(429);
            assert!(e["message"].as_str().unwrap().contains("key tokens"), "{e}");
            assert!(header_u64(r, "retry-after") >= 1);
        }
    }
    let used = admitted * TOKENS_PER_ANSWER;
    let estimate = 120;
    // Never more than the limit (plus its refill while the test ran) …
    assert!(
        used <= TPM * 102 / 100 + refill(TPM, elapsed),
        "{used} tokens used through a {TPM} tpm limit ({admitted} requests, {elapsed:?})"
    );
    // … and, because the real counts were settled, all of it save less than one estimate.
    // (Without settlement only ~TPM/120 requests would pass: ~480 tokens.)
    assert!(
        used + estimate >= TPM,
        "{used} tokens used of {TPM}: settlement did not give back the over-estimate"
    );
}

fn redis_is_up(gw: &Gateway) -> bool {
    match gw.state.books.limiter.as_ref() {
        Limiter::Redis(l) => l.redis().is_up(),
        Limiter::Local(_) => panic!("the gateway was built without Redis"),
    }
}

/// Keeps sending with keys `roomy` (limited, never near its limit) and `free` (unlimited)
/// through all gateways until `stop`; returns the statuses seen per key.
async fn steady_load(
    gateways: Arc<Vec<Gateway>>,
    stop: Arc<AtomicBool>,
) -> (Vec<(u16, String)>, Vec<u16>) {
    let mut tasks = Vec::new();
    for worker in 0..6 {
        let (gateways, stop) = (gateways.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut n = worker;
            let key = if worker % 2 == 0 { "roomy" } else { "free" };
            while !stop.load(Ordering::Relaxed) {
                let reply = post_as(&gateways[n % 3], key, &chat_body("m", None)).await;
                n += 1;
                seen.push((key, reply.status.as_u16(), reply.text()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        }));
    }
    let (mut roomy, mut free) = (Vec::new(), Vec::new());
    for t in tasks {
        for (key, status, body) in t.await.unwrap() {
            if key == "roomy" {
                roomy.push((status, body));
            } else {
                free.push(status);
            }
        }
    }
    (roomy, free)
}

/// What an outage run leaves: statuses seen per key, and the setup, back on Redis.
struct AfterOutage {
    roomy: Vec<(u16, String)>,
    free: Vec<u16>,
    gateways: Arc<Vec<Gateway>>,
    redis: ThrowawayRedis,
    _mock: MockUpstream,
}

/// Runs steady load while Redis is killed and restarted.
async fn through_an_outage(policy: &str, prefix: &str) -> AfterOutage {
    let mock = MockUpstream::start().await.unwrap();
    let mut redis = ThrowawayRedis::start().await;
    let config = cluster_config(
        &mock.base_url(),
        &[
            ("roomy", "t1", "rpm: 1000000"),
            ("free", "t1", ""),
            ("after", "t1", "rpm: 30"),
        ],
        &redis.url(),
        prefix,
        policy,
    );
    let gateways = Arc::new(three_gateways(&config).await);
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(steady_load(gateways.clone(), stop.clone()));
    let load = async move { load.await.unwrap() };
    tokio::pin!(load);

    tokio::time::sleep(Duration::from_millis(700)).await;
    let port = redis.port;
    redis.stop().await;
    // Every replica finds out from its own traffic.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gateways.iter().any(redis_is_up) {
        assert!(
            Instant::now() < deadline,
            "no replica noticed Redis was gone"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let redis = ThrowawayRedis::start_on(port).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gateways.iter().all(redis_is_up) {
        assert!(
            Instant::now() < deadline,
            "the replicas never went back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (roomy, free) = load.await;
    AfterOutage {
        roomy,
        free,
        gateways,
        redis,
        _mock: mock,
    }
}

/// After an outage the limits are enforced in Redis again: a fresh key at 30 rpm admits 30
/// across the three replicas (each would admit 30 on its own), and its cell is in Redis.
async fn limits_are_back_in_redis(gateways: &[Gateway], redis: &ThrowawayRedis, prefix: &str) {
    let (replies, elapsed) = hammer(gateways, "after", &chat_body("m", None), 90, 9).await;
    let admitted = check_request_limit_replies(&replies, 30, "key");
    assert_about(admitted, 30, elapsed, "key rpm after Redis returned");
    assert!(
        exists(&redis.url(), &format!("{prefix}:rl:{{t:t1}}:k:after:rpm")).await,
        "the limit's cell is in the restarted Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_policy_serves_everything_while_redis_is_down_then_goes_back() {
    let prefix = unique_prefix("outage-open");
    let AfterOutage {
        roomy,
        free,
        gateways,
        redis,
        _mock,
    } = through_an_outage("open", &prefix).await;
    assert!(roomy.len() > 20 && free.len() > 20, "load ran");
    for (status, body) in &roomy {
        assert_eq!(*status, 200, "limited key during the outage: {body}");
    }
    assert!(free.iter().all(|s| *s == 200), "{free:?}");
    let metrics = send(request(Method::GET, &gateways[0].url("/metrics"), &[], ""))
        .await
        .text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchboard_limits_degraded_total{policy=\"open\"}")),
        "degraded admissions are counted"
    );
    assert!(metrics.lines().any(|l| l == "switchboard_redis_up 1"));
    limits_are_back_in_redis(&gateways, &redis, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_policy_refuses_only_limited_keys_while_redis_is_down() {
    let prefix = unique_prefix("outage-closed");
    let AfterOutage {
        roomy,
        free,
        gateways,
        redis,
        _mock,
    } = through_an_outage("closed", &prefix).await;
    assert!(free.iter().all(|s| *s == 200), "unlimited key: {free:?}");
    let mut refused = 0;
    for (status, body) in &roomy {
        match status {
            200 => {}
            503 => {
                refused += 1;
                let e: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(e["error"]["type"], "api_error", "{body}");
                assert!(
                    e["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("rate limits cannot be checked"),
                    "{body}"
                );
            }
            other => panic!("limited key during the outage: {other} {body}"),
        }
    }
    assert!(
        refused > 0,
        "the limited key was refused while Redis was down"
    );
    assert_eq!(
        roomy.last().map(|(s, _)| *s),
        Some(200),
        "served again after Redis returned"
    );
    limits_are_back_in_redis(&gateways, &redis, &prefix).await;
}

/// Whether `key` exists in the Redis at `url`.
async fn exists(url: &str, key: &str) -> bool {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut conn)
        .await
        .unwrap()
        == 1
}

/// `redis.lease` with slices of a fiftieth of a limit, so that test-sized limits are leased:
/// 600 rpm has slices of 12 requests.
fn leasing(config: String) -> String {
    config.replace(
        "  timeout_ms: 200\n",
        "  timeout_ms: 200\n  lease: { fraction: 0.02 }\n",
    )
}

/// The leasing events `event` counted on `gw` (`switchboard_limits_lease_events_total`).
async fn lease_events(gw: &Gateway, event: &str) -> u64 {
    let metrics = send(request(Method::GET, &gw.url("/metrics"), &[], ""))
        .await
        .text();
    let prefix = format!("switchboard_limits_lease_events_total{{event=\"{event}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Counts the 200s; every other reply is a 429 naming `scope`.
fn admitted_or_refused_by(replies: &[Reply], scope: &str) -> u64 {
    let mut admitted = 0;
    for r in replies {
        if r.status == 200 {
            admitted += 1;
        } else {
            let e = r.openai_error(429);
            assert!(e["message"].as_str().unwrap().contains(scope), "{e}");
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_limit_holds_across_three_replicas_within_the_slices_held() {
    const RPM: u64 = 600;
    const SLICE: u64 = 12;
    let mock = MockUpstream::start().await.unwrap();
    let config = leasing(cluster_config(
        &mock.base_url(),
        &[("k1", "t1", "rpm: 600"), ("k2", "t2", "rpm: 600")],
        &redis_url(),
        &unique_prefix("leased-rpm"),
        "open",
    ));
    let gateways = three_gateways(&config).await;
    let (replies, elapsed) = hammer(&gateways, "k1", &chat_body("m", None), 900, 12).await;
    let admitted = admitted_or_refused_by(&replies, "key");
    // Every unit was charged in Redis before it was used, so no more than the exact path
    // admits; the slices held elsewhere (or on their way back) refuse early by at most
    // one slice per replica.
    let (low, high) = (RPM - 3 * SLICE, RPM + refill(RPM, elapsed));
    assert!(
        (low..=high).contains(&admitted),
        "{admitted} admitted, expected {low}..={high} ({elapsed:?})"
    );
    let mut local = 0;
    for gw in &gateways {
        assert!(
            !gw.usage.records().is_empty(),
            "every replica admitted some"
        );
        let Limiter::Redis(limiter) = gw.state.books.limiter.as_ref() else {
            panic!("a Redis-mode gateway");
        };
        local += limiter.admitted_from_slices();
    }
    // Most were admitted from slices, without a call to Redis.
    assert!(local > admitted / 2, "{local} of {admitted} from slices");
    // The replicas share this process's metrics (with the other tests): slices were fetched.
    assert!(lease_events(&gateways[0], "refill").await > 0);
    // A leased key under a small tenant limit (90 rpm, the exact path): the tenant's limit
    // holds exactly, and what its refusals took from the key's slices is put back.
    let (replies, elapsed) = hammer(&gateways, "k2", &chat_body("m", None), 270, 9).await;
    let admitted = admitted_or_refused_by(&replies, "tenant");
    assert_about(admitted, 90, elapsed, "tenant rpm over a leased key");
}
