//! The shipped NATS permissions (`deploy/nats/nats-server.conf`) against a real nats-server
//! started with that very file: a data-plane credential can do what a data plane does — follow
//! the head and the config deltas with ordered consumers, fetch the snapshot object, publish its own heartbeat and
//! usage records (the same async-nats calls as `dataplane/src/cluster/nats.rs`,
//! `cluster/heartbeat.rs` and `usage_publisher.rs`) — and cannot publish a head, a delta, an object or
//! another data plane's heartbeat, read usage or heartbeats, or change a stream. The
//! control-plane credential can set everything up, publish and consume usage as
//! `controlplane/src/publish.rs` and `ingest.rs` do. A deployment test call goes from the
//! control plane to a data plane and back (request/reply, as `service/test_call.rs` and
//! `cluster/test_call.rs` do it), while a data plane can neither ask one nor publish into an
//! inbox other than the reply of a request it received.
//!
//! A refusal is proven twice: the server reports a permissions violation to the client, and the
//! message never arrives (at a control-plane subscriber, or in the stream that would keep it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, object_store, stream};
use async_nats::{Client, Event};
use futures_util::StreamExt;
use switchboard_shared::cluster::{NatsNames, SnapshotHead, nats_options, snapshot_object};
use switchboard_tests::jetstream::{first_message, object};
use switchboard_tests::services::free_port;
use tokio::process::{Child, Command};

const CONTROLPLANE_PASSWORD: &str = "cp-test-password";
const DATAPLANE_PASSWORD: &str = "dp0-test-password";
/// How long a refused message is given to show up anyway.
const QUIET: Duration = Duration::from_millis(300);

/// A nats-server running the shipped configuration, its passwords from the environment.
struct ConfiguredNats {
    port: u16,
    dir: PathBuf,
    _child: Child,
}

impl ConfiguredNats {
    async fn start() -> Self {
        let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/nats-server.conf");
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "switchboard-nats-perms-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("store"))
            .env(
                "SWITCHBOARD_NATS_CONTROLPLANE_PASSWORD",
                CONTROLPLANE_PASSWORD,
            )
            .env("SWITCHBOARD_NATS_DATAPLANE_0_PASSWORD", DATAPLANE_PASSWORD)
            // The other data-plane users of the shipped file.
            .env("SWITCHBOARD_NATS_DATAPLANE_1_PASSWORD", "dp1-test-password")
            .env("SWITCHBOARD_NATS_DATAPLANE_2_PASSWORD", "dp2-test-password")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server must be installed");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server with {} did not start:\n{log}",
                conf.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            port,
            dir,
            _child: child,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The URL a plane is configured with to log in as `user` (`cluster.nats_url`,
    /// `nats_url`): the password percent-encoded as in a URL.
    fn url_as(&self, user: &str, password: &str) -> String {
        let password: String = password
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// The server's permission-violation log lines, for failure messages.
    fn violations(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Violation"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ConfiguredNats {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client logged in as `user` the way both planes log in (the credentials in their NATS URL,
/// read by `switchboard_shared::cluster::nats_options`), and the server errors it has been
/// sent.
async fn login(
    nats: &ConfiguredNats,
    user: &str,
    password: &str,
) -> (Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let url = nats.url_as(user, password);
    let client = nats_options(&url, &Default::default())
        .await
        .unwrap()
        .event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let Event::ServerError(e) = event {
                    sink.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{user} cannot log in: {e}"));
    (client, errors)
}

/// Waits until the server has reported a violation naming `subject`.
async fn refused(errors: &Arc<Mutex<Vec<String>>>, subject: &str) {
    let started = Instant::now();
    loop {
        if errors.lock().unwrap().iter().any(|e| e.contains(subject)) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no permissions violation for {subject}; errors: {:?}",
            errors.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the control plane keeps: the head stream with one head, the object store with its
/// body, the usage work queue.
struct Published {
    head: SnapshotHead,
    body: Vec<u8>,
    config: stream::Stream,
    usage: stream::Stream,
    deltas: stream::Stream,
}

async fn publish_as_controlplane(js: &jetstream::Context, names: &NatsNames) -> Published {
    let config = js
        .get_or_create_stream(stream::Config {
            name: names.config_stream.clone(),
            subjects: vec![names.config_subjects.clone()],
            max_messages_per_subject: 1,
            ..Default::default()
        })
        .await
        .expect("the control plane creates the head stream");
    let usage = js
        .get_or_create_stream(stream::Config {
            name: names.usage_stream.clone(),
            subjects: vec![names.usage_subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("the control plane creates the usage stream");
    let store = js
        .create_object_store(object_store::Config {
            bucket: names.snapshot_bucket.clone(),
            ..Default::default()
        })
        .await
        .expect("the control plane creates the object store");
    // Several chunks, so the data plane's read goes through flow control.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let object = snapshot_object(7);
    store
        .put(object.as_str(), &mut body.as_slice())
        .await
        .expect("the control plane puts a snapshot object");
    let head = SnapshotHead {
        revision: 7,
        content_hash: "a".repeat(64),
        object,
        size: body.len() as u64,
        published_at: chrono::Utc::now(),
        namespace: String::new(),
        signature: String::new(),
    };
    js.publish(
        names.head_subject.clone(),
        serde_json::to_vec(&head).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .expect("the control plane publishes a head");
    let deltas = js
        .get_or_create_stream(stream::Config {
            name: names.delta_stream.clone(),
            subjects: vec![names.delta_subject.clone()],
            max_messages: 100,
            ..Default::default()
        })
        .await
        .expect("the control plane creates the delta stream");
    js.publish(names.delta_subject.clone(), DELTA.into())
        .await
        .unwrap()
        .await
        .expect("the control plane publishes a delta");
    Published {
        head,
        body,
        config,
        usage,
        deltas,
    }
}

/// The delta message the control plane publishes (its form does not matter to NATS).
const DELTA: &str = "{\"revision\":8}\n{}";

/// The data plane's delta reads, as `cluster/nats.rs` does them: every delta the stream holds.
async fn read_deltas_as_dataplane(
    js: &jetstream::Context,
    names: &NatsNames,
    nats: &ConfiguredNats,
) -> Vec<u8> {
    let (stream, subject) = (&names.delta_stream, &names.delta_subject);
    first_message(
        js,
        stream,
        subject,
        DeliverPolicy::All,
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|e| refused_by(nats, "the first delta", &e))
}

/// The data plane's reads, as `cluster/nats.rs` does them: the last head, then its object.
async fn read_as_dataplane(
    js: &jetstream::Context,
    names: &NatsNames,
    nats: &ConfiguredNats,
) -> (SnapshotHead, Vec<u8>) {
    let (stream, subject) = (&names.config_stream, &names.head_subject);
    let deliver = DeliverPolicy::LastPerSubject;
    let head = first_message(js, stream, subject, deliver, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| refused_by(nats, "the head", &e));
    let head: SnapshotHead = serde_json::from_slice(&head).unwrap();
    let body = object(
        js,
        &names.snapshot_bucket,
        &head.object,
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| refused_by(nats, "the snapshot", &e));
    (head, body)
}

/// Fails the test with what the server logged refusing.
fn refused_by(nats: &ConfiguredNats, what: &str, e: &str) -> ! {
    panic!("{what}: {e}; the server refused:\n{}", nats.violations())
}

/// How many messages the object store's stream holds.
async fn object_messages(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

#[tokio::test]
async fn a_data_plane_reads_config_and_reports_only_as_itself() {
    let nats = ConfiguredNats::start().await;
    let names = NatsNames::default();
    let (cp, _) = login(&nats, "controlplane", CONTROLPLANE_PASSWORD).await;
    let cp_js = jetstream::new(cp.clone());
    let published = publish_as_controlplane(&cp_js, &names).await;
    let mut heartbeats = cp.subscribe(names.heartbeat_wildcard()).await.unwrap();
    cp.flush().await.unwrap();

    let (dp, dp_errors) = login(&nats, "dataplane-0", DATAPLANE_PASSWORD).await;
    let dp_js = jetstream::new(dp.clone());
    let (head, body) = read_as_dataplane(&dp_js, &names, &nats).await;
    assert_eq!(head, published.head, "{}", nats.violations());
    assert_eq!(
        read_deltas_as_dataplane(&dp_js, &names, &nats).await,
        DELTA.as_bytes()
    );
    assert!(body == published.body, "object body differs");

    // Another data plane's heartbeat first, then its own, on one connection (so in order):
    // the control plane's first heartbeat must be its own.
    dp.publish(names.heartbeat_subject("dataplane-1"), "forged".into())
        .await
        .unwrap();
    dp.publish(names.heartbeat_subject("dataplane-0"), "own".into())
        .await
        .unwrap();
    dp.flush().await.unwrap();
    let beat = tokio::time::timeout(Duration::from_secs(5), heartbeats.next())
        .await
        .expect("its own heartbeat arrives")
        .unwrap();
    assert_eq!(
        beat.subject.as_str(),
        names.heartbeat_subject("dataplane-0")
    );
    refused(&dp_errors, &names.heartbeat_subject("dataplane-1")).await;
    assert!(
        tokio::time::timeout(QUIET, heartbeats.next())
            .await
            .is_err(),
        "a forged heartbeat reached the control plane"
    );

    // Usage, as the publisher sends it: JetStream-acknowledged, with a message id.
    dp_js
        .send_publish(
            names.usage_subject.clone(),
            PublishMessage::build()
                .payload("{\"request_id\":\"r1\"}".into())
                .message_id("r1"),
        )
        .await
        .unwrap()
        .await
        .expect("the usage stream acknowledges a data plane's record");
    // ... and the control plane consumes and acknowledges it.
    let consumer = published
        .usage
        .get_or_create_consumer(
            "ingest",
            PullConfig {
                durable_name: Some("ingest".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(10).messages().await.unwrap();
    let record = batch.next().await.expect("one usage record").unwrap();
    assert_eq!(&record.payload[..], b"{\"request_id\":\"r1\"}");
    record.ack().await.unwrap();
}

#[tokio::test]
async fn a_data_plane_cannot_publish_config_or_read_what_is_not_its_own() {
    let nats = ConfiguredNats::start().await;
    let names = NatsNames::default();
    let (cp, _) = login(&nats, "controlplane", CONTROLPLANE_PASSWORD).await;
    let cp_js = jetstream::new(cp.clone());
    let mut published = publish_as_controlplane(&cp_js, &names).await;
    let objects = format!("OBJ_{}", names.snapshot_bucket);
    let stored_objects = object_messages(&cp_js, &objects).await;
    let (dp, dp_errors) = login(&nats, "dataplane-0", DATAPLANE_PASSWORD).await;

    // A head with a higher revision (what would freeze the fleet), by core and JetStream publish.
    let forged = SnapshotHead {
        revision: u64::MAX,
        ..published.head.clone()
    };
    let forged = serde_json::to_vec(&forged).unwrap();
    dp.publish(names.head_subject.clone(), forged.clone().into())
        .await
        .unwrap();
    dp.flush().await.unwrap();
    refused(&dp_errors, &names.head_subject).await;
    let mut dp_js = jetstream::new(dp.clone());
    // Refused requests go unanswered: wait for them briefly.
    dp_js.set_timeout(Duration::from_secs(1));
    let ack = dp_js
        .publish(names.head_subject.clone(), forged.into())
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), ack)
            .await
            .map_or(true, |a| a.is_err()),
        "the head stream acknowledged a data plane's head"
    );
    let last = published
        .config
        .get_last_raw_message_by_subject(&names.head_subject)
        .await
        .unwrap();
    let last: SnapshotHead = serde_json::from_slice(&last.payload).unwrap();
    assert_eq!(last, published.head, "the head changed");

    // A delta (which, signed or not, no data plane may send).
    dp.publish(names.delta_subject.clone(), "forged".into())
        .await
        .unwrap();
    refused(&dp_errors, &names.delta_subject).await;
    let ack = dp_js
        .publish(names.delta_subject.clone(), "forged".into())
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), ack)
            .await
            .map_or(true, |a| a.is_err()),
        "the delta stream acknowledged a data plane's delta"
    );
    let last = published
        .deltas
        .get_last_raw_message_by_subject(&names.delta_subject)
        .await
        .unwrap();
    assert_eq!(last.payload.as_ref(), DELTA.as_bytes(), "a delta was added");

    // An object body or its metadata.
    let chunk = format!("$O.{}.C.forged", names.snapshot_bucket);
    dp.publish(chunk.clone(), "x".into()).await.unwrap();
    refused(&dp_errors, &chunk).await;
    let meta = format!("$O.{}.M.forged", names.snapshot_bucket);
    dp.publish(meta.clone(), "x".into()).await.unwrap();
    refused(&dp_errors, &meta).await;

    // Streams: no deletion, no purge, no new stream that would capture heartbeats or usage.
    assert!(dp_js.delete_stream(&names.config_stream).await.is_err());
    refused(
        &dp_errors,
        &format!("$JS.API.STREAM.DELETE.{}", names.config_stream),
    )
    .await;
    assert!(
        published.config.info().await.is_ok(),
        "the head stream is gone"
    );
    assert!(
        dp_js
            .create_stream(stream::Config {
                name: "CAPTURE".into(),
                subjects: vec![names.heartbeat_wildcard()],
                ..Default::default()
            })
            .await
            .is_err()
    );
    refused(&dp_errors, "$JS.API.STREAM.CREATE.CAPTURE").await;

    // Reading others: usage records (a consumer on the usage stream) and heartbeats.
    let usage_consumer = dp_js.get_stream(&names.usage_stream).await;
    assert!(
        usage_consumer.is_err(),
        "a data plane sees the usage stream"
    );
    let _subscription = dp.subscribe(names.heartbeat_wildcard()).await.unwrap();
    dp.flush().await.unwrap();
    refused(&dp_errors, &names.heartbeat_wildcard()).await;
    let _usage = dp.subscribe(names.usage_subject.clone()).await.unwrap();
    dp.flush().await.unwrap();
    refused(&dp_errors, &names.usage_subject).await;

    // Nothing of it reached the object store either.
    assert_eq!(
        object_messages(&cp_js, &objects).await,
        stored_objects,
        "a data plane's message reached the object store"
    );
}

#[tokio::test]
async fn test_calls_go_from_the_control_plane_to_a_data_plane_and_back() {
    use switchboard_shared::cluster::TEST_QUEUE_GROUP;
    let nats = ConfiguredNats::start().await;
    let names = NatsNames::default();
    let (cp, _) = login(&nats, "controlplane", CONTROLPLANE_PASSWORD).await;
    let (dp, dp_errors) = login(&nats, "dataplane-0", DATAPLANE_PASSWORD).await;
    let mut asked = dp
        .queue_subscribe(names.test_subject.clone(), TEST_QUEUE_GROUP.into())
        .await
        .unwrap();
    dp.flush().await.unwrap();
    let answering = dp.clone();
    let responder = tokio::spawn(async move {
        let message = asked.next().await.unwrap();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Switchboard-Dataplane", "dataplane-0");
        let reply_to = message.reply.unwrap();
        answering
            .publish_with_headers(reply_to.clone(), headers, "reply".into())
            .await
            .unwrap();
        answering.flush().await.unwrap();
        (asked, message.payload, reply_to)
    });
    // `flush` only writes: the server may not have the data plane's subscription yet, which
    // the control plane hears as "no responders" (and then tries again).
    let started = Instant::now();
    let reply = loop {
        let question = "{\"deployment_id\":\"d\"}";
        let asking = cp.request(names.test_subject.clone(), question.into());
        match tokio::time::timeout(Duration::from_secs(5), asking).await {
            Ok(Err(e))
                if e.kind() == async_nats::RequestErrorKind::NoResponders
                    && started.elapsed() < Duration::from_secs(5) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Ok(reply)) => break reply,
            Ok(Err(e)) => panic!("test call: {e}; refused:\n{}", nats.violations()),
            Err(_) => panic!("no reply within 5 s"),
        }
    };
    assert_eq!(&reply.payload[..], b"reply");
    let (mut asked, question, reply_to) = responder.await.unwrap();
    assert_eq!(&question[..], b"{\"deployment_id\":\"d\"}");

    // A data plane may not ask for a test call (its own subscription never sees it) ...
    dp.publish(names.test_subject.clone(), "forged".into())
        .await
        .unwrap();
    dp.flush().await.unwrap();
    refused(&dp_errors, &names.test_subject).await;
    assert!(
        tokio::time::timeout(QUIET, asked.next()).await.is_err(),
        "a data plane's test call was delivered"
    );
    // ... nor publish into an inbox that is not a reply to what it received, nor answer twice.
    let mut inbox = cp.subscribe("_INBOX.cp-owned.>").await.unwrap();
    cp.flush().await.unwrap();
    dp.publish("_INBOX.cp-owned.x", "forged".into())
        .await
        .unwrap();
    dp.flush().await.unwrap();
    refused(&dp_errors, "_INBOX.cp-owned.x").await;
    assert!(
        tokio::time::timeout(QUIET, inbox.next()).await.is_err(),
        "a data plane published into another client's inbox"
    );
    dp.publish(reply_to.clone(), "again".into()).await.unwrap();
    dp.flush().await.unwrap();
    refused(&dp_errors, reply_to.as_str()).await;
}

#[tokio::test]
async fn only_known_users_with_their_password_get_in() {
    let nats = ConfiguredNats::start().await;
    for (user, password) in [
        ("dataplane-0", "wrong"),
        ("controlplane", DATAPLANE_PASSWORD),
        ("nobody", "x"),
    ] {
        let login = nats_options(&nats.url_as(user, password), &Default::default())
            .await
            .unwrap()
            .connect(nats.url())
            .await;
        assert!(login.is_err(), "{user} got in with a wrong password");
    }
    assert!(
        async_nats::connect(nats.url()).await.is_err(),
        "an anonymous client got in"
    );
}
