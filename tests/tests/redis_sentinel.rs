//! Limits through a Sentinel-managed Redis: a master, its replica and a sentinel started by
//! the test from `redis-server` binaries, three gateways given
//! `redis+sentinel://127.0.0.1:<sentinel>/main`. A key limit holds across the replicas; after
//! a forced failover (`SENTINEL FAILOVER`: the replica is promoted, the old master demoted
//! and read-only) the gateways follow the new master and a fresh limit holds again there.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use dataplane::limits::Limiter;
use http::Method;
use switchboard_tests::services::free_port;
use tokio::process::{Child, Command};

const CHAT: &str = "/v1/chat/completions";
const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

fn secret(id: &str) -> String {
    format!("sk-rsentinel-{id}")
}

async fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn redis(args: &[&str]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server must be installed for the sentinel test")
}

async fn until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn config(base_url: &str, url: &str, prefix: &str) -> String {
    let keys: String = [("k1", "rpm: 60"), ("k2", "rpm: 30")]
        .iter()
        .map(|(id, limits)| {
            format!(
                "  - {{ id: {id}, tenant_id: t1, key_hash: \"{}\", limits: {{ {limits} }} }}\n",
                key_hash(&secret(id))
            )
        })
        .collect();
    let snapshot = format!(
        "revision: 1
tenants: [{{ id: t1 }}]
virtual_keys:
{keys}providers: [{{ id: up, kind: openai, base_url: \"{base_url}\" }}]
deployments:
  - {{ id: d1, model: m, provider: up, upstream_model: up-model }}
"
    );
    format!(
        "{}redis:\n  url: {{ value: \"{url}\" }}\n  key_prefix: \"{prefix}\"\n  timeout_ms: 300\n  failure_policy: open\n",
        config_yaml(&snapshot, "")
    )
}

/// `total` requests with `key`, 6 at a time over the gateways; how many were admitted.
async fn hammer(gateways: &Arc<Vec<Gateway>>, key: &'static str, total: usize) -> (u64, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (gateways, next) = (gateways.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut admitted = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return admitted;
                }
                let reply = send(request(
                    Method::POST,
                    &gateways[n % 3].url(CHAT),
                    &[
                        ("authorization", &format!("Bearer {}", secret(key))),
                        ("content-type", "application/json"),
                    ],
                    BODY.to_owned(),
                ))
                .await;
                match reply.status.as_u16() {
                    200 => admitted += 1,
                    429 => {}
                    other => panic!("{key}: {other} {}", reply.text()),
                }
            }
        }));
    }
    let mut admitted = 0;
    for w in workers {
        admitted += w.await.unwrap();
    }
    (admitted, started.elapsed())
}

fn assert_about(admitted: u64, limit: u64, elapsed: Duration, what: &str) {
    let refill = (limit as f64 * elapsed.as_secs_f64() / 60.0).ceil() as u64;
    let low = (limit as f64 * 0.98).floor() as u64;
    let high = (limit as f64 * 1.02).ceil() as u64 + refill;
    assert!(
        (low..=high).contains(&admitted),
        "{what}: {admitted} admitted, expected {low}..={high} ({elapsed:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_follow_the_master_across_a_sentinel_failover() {
    let (mp, rp, sp) = (free_port(), free_port(), free_port());
    let dir = std::env::temp_dir().join(format!(
        "switchboard-sentinel-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // Replication writes an RDB file even with saving off: into the throwaway directory.
    let dir_arg = dir.to_str().unwrap().to_owned();
    let base = [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir_arg,
    ];
    let _master = redis(&[&["--port", &mp.to_string()][..], &base].concat());
    let _replica = redis(
        &[
            &[
                "--port",
                &rp.to_string(),
                "--replicaof",
                "127.0.0.1",
                &mp.to_string(),
            ][..],
            &base,
        ]
        .concat(),
    );
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sp}\nbind 127.0.0.1\ndir {}\nsentinel monitor main 127.0.0.1 {mp} 1\nsentinel down-after-milliseconds main 1000\nsentinel failover-timeout main 5000\n",
            dir.display()
        ),
    )
    .unwrap();
    let _sentinel = redis(&[conf.to_str().unwrap(), "--sentinel"]);
    until("the replica never synced", async || {
        cli(rp, &["INFO", "replication"])
            .await
            .contains("master_link_status:up")
    })
    .await;
    until("the sentinel never saw the replica", async || {
        cli(sp, &["SENTINEL", "REPLICAS", "main"])
            .await
            .contains(&rp.to_string())
    })
    .await;

    let mock = MockUpstream::start().await.unwrap();
    let prefix = format!("test-rs-{}", uuid::Uuid::now_v7().simple());
    let config = config(
        &mock.base_url(),
        &format!("redis+sentinel://127.0.0.1:{sp}/main"),
        &prefix,
    );
    let gateways = Arc::new(vec![
        Gateway::start(&config).await,
        Gateway::start(&config).await,
        Gateway::start(&config).await,
    ]);
    let (admitted, elapsed) = hammer(&gateways, "k1", 150).await;
    assert_about(
        admitted,
        60,
        elapsed,
        "key rpm through the sentinel's master",
    );
    assert_eq!(
        cli(mp, &["EXISTS", &format!("{prefix}:rl:{{t:t1}}:k:k1:rpm")])
            .await
            .trim(),
        "1"
    );

    cli(sp, &["SENTINEL", "FAILOVER", "main"]).await;
    until("the sentinel never promoted the replica", async || {
        cli(sp, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main"])
            .await
            .contains(&rp.to_string())
    })
    .await;
    until("the new master is not writable yet", async || {
        cli(rp, &["ROLE"]).await.starts_with("master")
    })
    .await;
    until("the old master was never demoted", async || {
        cli(mp, &["ROLE"]).await.starts_with("slave")
    })
    .await;
    // The first calls after the switch may meet the demoted master (READONLY): the gateway
    // drops that connection, asks the sentinel again and runs degraded (policy open) until
    // its probe reaches the new master. Requests are served throughout.
    for _ in 0..2 {
        let (_, _) = hammer(&gateways, "k1", 6).await;
    }
    until("a gateway never went back to Redis", async || {
        gateways
            .iter()
            .all(|gw| match gw.state.books.limiter.as_ref() {
                Limiter::Redis(l) => l.redis().is_up(),
                Limiter::Local(_) => false,
            })
    })
    .await;
    // On the new master, a fresh 30 rpm limit holds across the three.
    let (admitted, elapsed) = hammer(&gateways, "k2", 90).await;
    assert_about(admitted, 30, elapsed, "key rpm after the failover");
    assert_eq!(
        cli(rp, &["EXISTS", &format!("{prefix}:rl:{{t:t1}}:k:k2:rpm")])
            .await
            .trim(),
        "1",
        "the cell is on the promoted master"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
