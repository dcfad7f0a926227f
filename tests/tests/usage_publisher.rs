//! The data plane's usage publisher against real NATS JetStream: every record emitted is
//! stored exactly once in the usage stream, across a NATS restart and through the spill file.
//!
//! Outage tests run their own throwaway `nats-server` (never the shared one) so they can kill
//! and restart it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

use std::path::Path;
use std::time::Duration;
use switchboard_tests::services::nats_url;

use async_nats::jetstream::{self, stream};
use chrono::Utc;
use dataplane::accounting::UsageSink;
use dataplane::usage_publisher::{NatsUsageSink, PublisherSettings};
use switchboard_shared::cluster::NatsNames;
use switchboard_shared::usage::{Outcome, Usage, UsageRecord};
use switchboard_tests::services::ThrowawayNats;

fn unique_namespace(tag: &str) -> String {
    format!("t{}{}", tag, uuid::Uuid::now_v7().simple())
        .chars()
        .take(32)
        .collect()
}

fn record(i: usize) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{i:06}"),
        client_request_id: None,
        tenant_id: "acme".into(),
        key_id: "key-1".into(),
        model: "gpt-4o".into(),
        deployment_id: Some("d1".into()),
        provider_id: Some("p1".into()),
        endpoint: "chat_completions".into(),
        stream: i.is_multiple_of(2),
        outcome: Outcome::Success,
        status: 200,
        attempts: 1,
        usage: Usage {
            prompt_tokens: 10,
            completion_tokens: i as u64,
            ..Usage::default()
        },
        usage_reported: true,
        cost_usd: 0.0001,
        price_revision: 1,
        price_version: None,
        started_at: Utc::now(),
        latency_ms: 3,
        ttft_ms: None,
        error_kind: None,
        attempt_log: Vec::new(),
        content: None,
        cached_response: false,
        saved_usd: 0.0,
    }
}

/// The usage stream exactly as the control plane creates it.
async fn create_usage_stream(js: &jetstream::Context, names: &NatsNames) -> stream::Stream {
    controlplane::ingest::ensure_usage_stream(js, names)
        .await
        .unwrap()
}

/// Distinct request ids stored in the stream, read without consuming (direct gets by
/// sequence), and the number of messages.
async fn stored_ids(stream: &mut stream::Stream) -> (std::collections::BTreeSet<String>, u64) {
    let info = stream.info().await.unwrap();
    let (first, last, count) = (
        info.state.first_sequence,
        info.state.last_sequence,
        info.state.messages,
    );
    let mut ids = std::collections::BTreeSet::new();
    if count > 0 {
        for seq in first..=last {
            if let Ok(m) = stream.get_raw_message(seq).await {
                let r: UsageRecord = serde_json::from_slice(&m.payload).unwrap();
                ids.insert(r.request_id);
            }
        }
    }
    (ids, count)
}

async fn wait_for_count(stream: &mut stream::Stream, want: u64, within: Duration) -> u64 {
    let until = tokio::time::Instant::now() + within;
    loop {
        let n = stream.info().await.map(|i| i.state.messages).unwrap_or(0);
        if n >= want || tokio::time::Instant::now() >= until {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn settings(names: &NatsNames, capacity: usize, spill: Option<&Path>) -> PublisherSettings {
    PublisherSettings {
        subject: names.usage_subject.clone(),
        tag: None,
        capacity,
        spill_path: spill.map(Path::to_path_buf),
        ..PublisherSettings::default()
    }
}

#[tokio::test]
async fn every_emitted_record_is_stored_once() {
    let names = NatsNames::new(&unique_namespace("up"));
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(client);
    let mut stream = create_usage_stream(&js, &names).await;

    let sink = NatsUsageSink::start(js.clone(), settings(&names, 10_000, None));
    for i in 0..500 {
        sink.emit(record(i));
    }
    // A record emitted twice (a retry after a lost ack looks like this) is stored once.
    sink.emit(record(7));
    sink.close(Duration::from_secs(10)).await;

    let (ids, count) = stored_ids(&mut stream).await;
    assert_eq!(
        count, 500,
        "the duplicate must be dropped by its message id"
    );
    assert_eq!(ids.len(), 500);
    assert_eq!(ids.first().map(String::as_str), Some("req-000000"));
    assert_eq!(ids.last().map(String::as_str), Some("req-000499"));
    js.delete_stream(&names.usage_stream).await.unwrap();
}

#[tokio::test]
async fn records_emitted_while_nats_is_down_arrive_after_it_returns() {
    let mut nats = ThrowawayNats::start().await;
    let names = NatsNames::new(&unique_namespace("out"));
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .unwrap();
    let js = jetstream::new(client);
    create_usage_stream(&js, &names).await;
    let sink = NatsUsageSink::start(js.clone(), settings(&names, 10_000, None));

    for i in 0..100 {
        sink.emit(record(i));
    }
    let mut stream = js.get_stream(&names.usage_stream).await.unwrap();
    assert_eq!(
        wait_for_count(&mut stream, 100, Duration::from_secs(10)).await,
        100
    );

    nats.stop().await;
    for i in 100..200 {
        sink.emit(record(i));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart().await;

    let mut stream = async {
        loop {
            if let Ok(s) = js.get_stream(&names.usage_stream).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    let stored = wait_for_count(&mut stream, 200, Duration::from_secs(30)).await;
    let (ids, _) = stored_ids(&mut stream).await;
    assert_eq!(stored, 200, "records lost or doubled across the restart");
    assert_eq!(ids.len(), 200);
    sink.close(Duration::from_secs(5)).await;
}

/// `switchboard_usage_records_total{result}` so far in this process.
fn records_so_far(result: &str) -> u64 {
    let label = format!("result=\"{result}\"");
    dataplane::metrics::install()
        .render()
        .lines()
        .find(|l| l.starts_with("switchboard_usage_records_total") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn spilled_so_far() -> u64 {
    records_so_far("spilled")
}

/// Held by the tests that touch a spill file, so the counters move for one of them at a time.
static SPILLING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_backlog_beyond_memory_goes_to_the_spill_file_and_is_replayed() {
    let _alone = SPILLING.lock().await;
    let spilled_before = spilled_so_far();
    let mut nats = ThrowawayNats::start().await;
    let names = NatsNames::new(&unique_namespace("sp"));
    let spill_dir = tempfile::tempdir().unwrap();
    let spill = spill_dir.path().join("usage.spill");
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .unwrap();
    let js = jetstream::new(client);
    create_usage_stream(&js, &names).await;

    nats.stop().await;
    // Capacity 10 while 60 records arrive: most cannot stay in memory.
    let sink = NatsUsageSink::start(js.clone(), settings(&names, 10, Some(&spill)));
    for i in 0..60 {
        sink.emit(record(i));
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    sink.close(Duration::from_millis(300)).await;
    let spilled = std::fs::read_to_string(&spill).unwrap();
    assert_eq!(
        spilled.lines().count(),
        60,
        "every unpublished record is in the spill file"
    );
    assert_eq!(spilled_so_far() - spilled_before, 60);

    // A new process (a restarted data plane) replays the file once NATS is back.
    nats.restart().await;
    let sink = NatsUsageSink::start(js.clone(), settings(&names, 10, Some(&spill)));
    sink.emit(record(60));
    let mut stream = async {
        loop {
            if let Ok(s) = js.get_stream(&names.usage_stream).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    assert_eq!(
        wait_for_count(&mut stream, 61, Duration::from_secs(30)).await,
        61
    );
    let (ids, _) = stored_ids(&mut stream).await;
    assert_eq!(ids.len(), 61);
    sink.close(Duration::from_secs(5)).await;
    assert!(!spill.exists(), "a replayed spill file is removed");
    assert!(!spill.with_extension("spill.replay").exists());
    // Replaying 60 records into a backlog of 10 put 50 back in the file, again and again: each
    // record is still counted once (the one emitted during the replay may have spilled too).
    let spilled = spilled_so_far() - spilled_before;
    assert!((60..=61).contains(&spilled), "{spilled} counted as spilled");
}

async fn stream_of(js: &jetstream::Context, names: &NatsNames) -> stream::Stream {
    loop {
        if let Ok(s) = js.get_stream(&names.usage_stream).await {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Request ids in the spill file and in the replay in progress.
fn ids_on_disk(spill: &Path) -> std::collections::BTreeSet<String> {
    let replay = spill.with_extension("spill.replay");
    [spill, replay.as_path()]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<UsageRecord>(l).ok())
                .map(|r| r.request_id)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn write_records(path: &Path, ids: std::ops::Range<usize>) {
    let mut text = String::new();
    for i in ids {
        text.push_str(&serde_json::to_string(&record(i)).unwrap());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_full_spill_file_drops_its_oldest_records_and_counts_them() {
    let _alone = SPILLING.lock().await;
    let evicted_before = records_so_far("evicted");
    let mut nats = ThrowawayNats::start().await;
    let names = NatsNames::new(&unique_namespace("cap"));
    let spill_dir = tempfile::tempdir().unwrap();
    let spill = spill_dir.path().join("usage.spill");
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .unwrap();
    let js = jetstream::new(client);
    create_usage_stream(&js, &names).await;
    nats.stop().await;

    let line = serde_json::to_string(&record(0)).unwrap().len() as u64 + 1;
    let max_bytes = 20 * line;
    let sink = NatsUsageSink::start(
        js.clone(),
        PublisherSettings {
            spill_max_bytes: max_bytes,
            ..settings(&names, 10, Some(&spill))
        },
    );
    for i in 0..100 {
        sink.emit(record(i));
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    sink.close(Duration::from_millis(300)).await;
    let size = std::fs::metadata(&spill).unwrap().len();
    assert!(
        size <= max_bytes,
        "{size} bytes in a file capped at {max_bytes}"
    );
    let kept = ids_on_disk(&spill);
    assert!(!kept.is_empty());
    assert!(kept.contains("req-000099"), "the newest record is kept");
    // Records 0..5 stay in memory until shutdown (half the capacity); 5 is the first spilled.
    assert!(
        !kept.contains("req-000005"),
        "the oldest record in the file goes first"
    );
    let evicted = records_so_far("evicted") - evicted_before;
    assert_eq!(
        evicted + kept.len() as u64,
        100,
        "every lost record is counted"
    );
}

#[tokio::test]
async fn a_replay_stopped_half_way_leaves_every_unpublished_record_on_disk() {
    let _alone = SPILLING.lock().await;
    let names = NatsNames::new(&unique_namespace("rp"));
    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let mut stream = create_usage_stream(&js, &names).await;
    let spill_dir = tempfile::tempdir().unwrap();
    let spill = spill_dir.path().join("usage.spill");
    // A replay a crash interrupted, and records spilled after it.
    write_records(&spill.with_extension("spill.replay"), 0..1000);
    write_records(&spill, 1000..2000);

    let sink = NatsUsageSink::start(js.clone(), settings(&names, 10, Some(&spill)));
    wait_for_count(&mut stream, 30, Duration::from_secs(10)).await;
    sink.close(Duration::ZERO).await;
    let (published, _) = stored_ids(&mut stream).await;
    let on_disk = ids_on_disk(&spill);
    let all: std::collections::BTreeSet<_> = published.union(&on_disk).cloned().collect();
    assert_eq!(
        all.len(),
        2000,
        "a record neither published nor on disk is lost"
    );

    // The next start finishes the replay: every record once in the stream, no file left.
    let sink = NatsUsageSink::start(js.clone(), settings(&names, 10, Some(&spill)));
    let mut stream = stream_of(&js, &names).await;
    assert_eq!(
        wait_for_count(&mut stream, 2000, Duration::from_secs(60)).await,
        2000
    );
    sink.close(Duration::from_secs(5)).await;
    let (ids, count) = stored_ids(&mut stream).await;
    assert_eq!((ids.len(), count), (2000, 2000));
    assert!(
        ids_on_disk(&spill).is_empty(),
        "a replayed spill file is removed"
    );
    js.delete_stream(&names.usage_stream).await.unwrap();
}
