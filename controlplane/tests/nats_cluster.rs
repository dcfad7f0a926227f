//! JetStream on a real three-node NATS cluster (`nats-server -js --cluster … --routes …`,
//! started by the test) with `nats.replicas: 3`: the streams the control plane creates have
//! three copies, and when one server is killed while usage is being published and ingested,
//! every usage record lands in Postgres exactly once and the config stream still answers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use chrono::{TimeZone, Utc};
use controlplane::ingest::{self, IngestSettings};
use controlplane::publish::Publisher;
use sqlx::PgPool;
use switchboard_shared::cluster::NatsNames;
use switchboard_shared::usage::{Outcome, Usage, UsageRecord};
use tokio::process::{Child, Command};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Three `nats-server -js` in one cluster, each with its own store; dies with the value.
struct NatsCluster {
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    dir: PathBuf,
}

impl NatsCluster {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-nats-cluster-{}",
            uuid::Uuid::now_v7().simple()
        ));
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = routes_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        for (i, (port, route)) in ports.iter().zip(&routes_ports).enumerate() {
            let store = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&store).unwrap();
            let child = Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(&store)
                .args(["-n", &format!("n{i}"), "--cluster_name", "sbtest"])
                .args(["--cluster", &format!("nats://127.0.0.1:{route}")])
                .args(["--routes", &routes])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("nats-server must be installed for the NATS cluster test");
            children.push(Some(child));
        }
        Self {
            ports,
            children,
            dir,
        }
    }

    /// Every server's URL: the client fails over between them.
    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect()
    }

    async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn record(i: usize) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{i:07}"),
        client_request_id: None,
        tenant_id: "tenant-0".into(),
        key_id: "key-0".into(),
        model: "gpt-4o".into(),
        deployment_id: Some("d1".into()),
        provider_id: Some("p1".into()),
        endpoint: "chat_completions".into(),
        stream: false,
        outcome: Outcome::Success,
        status: 200,
        attempts: 1,
        usage: Usage {
            prompt_tokens: 100,
            completion_tokens: 10,
            cached_read_tokens: 0,
            cache_creation_tokens: 0,
        },
        usage_reported: true,
        cost_usd: 0.000_25,
        price_revision: 3,
        price_version: Some(2),
        started_at: Utc.with_ymd_and_hms(2026, 11, 3, 12, 0, 0).unwrap(),
        latency_ms: 12,
        ttft_ms: None,
        error_kind: None,
        attempt_log: Vec::new(),
        content: None,
        cached_response: false,
        saved_usd: 0.0,
    }
}

/// Publishes `r` as a data plane does (message id = request id) until JetStream acknowledges
/// it: a resend after a lost ack is dropped by the duplicate window.
async fn publish(js: &jetstream::Context, names: &NatsNames, r: &UsageRecord) {
    let payload: bytes::Bytes = serde_json::to_vec(r).unwrap().into();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = js
            .send_publish(
                names.usage_subject.clone(),
                PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(&r.request_id),
            )
            .await;
        if let Ok(ack) = sent
            && let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), ack.into_future()).await
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never acknowledged",
            r.request_id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn usage_and_config_survive_the_loss_of_one_of_three_nats_servers(pool: PgPool) {
    let mut cluster = NatsCluster::start().await;
    let names = NatsNames::new(&format!(
        "nc{}",
        &uuid::Uuid::now_v7().simple().to_string()[..20]
    ))
    .with_replicas(3);
    // JetStream needs a meta leader before it creates anything: retry until it has one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (client, js) = loop {
        if let Ok(client) = async_nats::connect(cluster.urls()).await {
            let js = jetstream::new(client.clone());
            if ingest::ensure_usage_stream(&js, &names).await.is_ok() {
                break (client, js);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the NATS cluster never served JetStream"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut usage = js.get_stream(&names.usage_stream).await.unwrap();
    assert_eq!(usage.info().await.unwrap().config.num_replicas, 3);
    let publisher = Publisher::new(client.clone(), names.clone());
    assert!(publisher.head().await.unwrap().is_none());
    let mut config = js.get_stream(&names.config_stream).await.unwrap();
    assert_eq!(config.info().await.unwrap().config.num_replicas, 3);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ingest::run(
        pool.clone(),
        js.clone(),
        names.clone(),
        IngestSettings::default(),
        async {
            let _ = stopped.await;
        },
    ));
    const N: usize = 600;
    for i in 0..N {
        if i == N / 3 {
            // Kill a server the client is not necessarily on: any one of three.
            cluster.kill(1).await;
        }
        publish(&js, &names, &record(i)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rows = 0i64;
    while Instant::now() < deadline {
        rows = sqlx::query_scalar("SELECT count(*) FROM spend_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        if rows as usize >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a late duplicate the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = sqlx::query_scalar("SELECT request_id FROM spend_events")
        .fetch_all(&pool)
        .await
        .unwrap();
    let _ = stop.send(());
    task.await.unwrap();
    assert_eq!(
        ids.len(),
        N,
        "every usage record exactly once ({rows} rows)"
    );
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), N);
    // The config stream still answers with one server gone, once the two left have
    // settled who leads it: a request in flight during that election may time out.
    let deadline = Instant::now() + Duration::from_secs(30);
    let head = loop {
        match publisher.head().await {
            Ok(head) => break head,
            Err(e) if Instant::now() < deadline => {
                eprintln!("config stream not answering yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("config stream lost with one of three servers gone: {e:#}"),
        }
    };
    assert!(head.is_none());
}
