//! Operating the control plane: a NATS outage delays publishing, never the admin API (writes
//! still commit and answer promptly, and once NATS is back the reconcile loop publishes the
//! current revision; the test runs a throwaway nats-server on a free port, never the shared
//! one); the bootstrap admin; master-key rotation (`controlplane keys reseal`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::http::StatusCode;
use controlplane::service::auth::Role;
use serde_json::json;
use sqlx::PgPool;
use switchboard_shared::cluster::{NatsNames, SnapshotHead};
use tokio::process::{Child, Command};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn nats_server(port: u16, dir: &std::path::Path) -> Child {
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server is installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nats-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

async fn head_revision(url: &str, names: &NatsNames) -> Option<u64> {
    let client = async_nats::connect(url).await.ok()?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&names.config_stream).await.ok()?;
    let m = stream
        .get_last_raw_message_by_subject(&names.head_subject)
        .await
        .ok()?;
    Some(
        serde_json::from_slice::<SnapshotHead>(&m.payload)
            .ok()?
            .revision,
    )
}

#[sqlx::test(migrations = "../migrations")]
async fn writes_commit_during_a_nats_outage_and_are_published_after_it(pool: PgPool) {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("sb-nats-{}", uuid::Uuid::now_v7()));
    let url = format!("nats://127.0.0.1:{port}");
    let mut nats = nats_server(port, &dir).await;

    let mut settings = common::settings(&common::unique_namespace());
    settings.nats_url = url.clone();
    let names = NatsNames::new(&settings.namespace);
    let cp = common::start_with(pool, settings).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let r = cp
        .post("/admin/v1/tenants", &root, json!({"id": "a"}))
        .await;
    assert_eq!(head_revision(&url, &names).await, Some(r.revision()));

    nats.kill().await.unwrap();
    let started = Instant::now();
    let r = cp
        .post("/admin/v1/tenants", &root, json!({"id": "b"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the write waited for NATS"
    );
    let during = r.revision();

    // NATS comes back (same port and storage): the reconcile loop republishes.
    let _nats = nats_server(port, &dir).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if head_revision(&url, &names).await == Some(during) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revision committed during the outage was never published"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_bootstrap_admin_is_created_once(pool: PgPool) {
    let env = |email: &str| {
        vec![
            (
                controlplane::BOOTSTRAP_EMAIL_ENV.to_owned(),
                email.to_owned(),
            ),
            (
                controlplane::BOOTSTRAP_PASSWORD_ENV.to_owned(),
                common::PASSWORD.to_owned(),
            ),
        ]
    };
    assert!(
        controlplane::bootstrap_admin(&pool, &env("first@example.com"))
            .await
            .unwrap()
    );
    assert!(
        !controlplane::bootstrap_admin(&pool, &env("second@example.com"))
            .await
            .unwrap()
    );
    assert!(!controlplane::bootstrap_admin(&pool, &[]).await.unwrap());
    let emails: Vec<(String, String)> = sqlx::query_as("SELECT email, role FROM admin_users")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        emails,
        vec![("first@example.com".to_owned(), "platform_admin".to_owned())]
    );
    let (actor, action): (String, String) =
        sqlx::query_as("SELECT actor, action FROM audit_log WHERE object_type = 'admin_user'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((actor.as_str(), action.as_str()), ("system", "create"));
}

#[sqlx::test(migrations = "../migrations")]
async fn rotating_the_master_key_reseals_every_credential(pool: PgPool) {
    let cp = common::start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let r = cp
        .post(
            "/admin/v1/providers",
            &root,
            json!({"id": "p", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "upstream-secret"}),
        )
        .await;
    assert_eq!(r.body["api_key_sealed_with"], "k1");
    let rotated = switchboard_shared::sealed::MasterKeys::parse(&format!(
        "k2:HxwdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=,{}",
        common::MASTER_KEYS
    ))
    .unwrap();
    let n = controlplane::service::providers::reseal_credentials(cp.pool(), &rotated)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let (stored,): (String,) = sqlx::query_as("SELECT credential::text FROM providers")
        .fetch_one(cp.pool())
        .await
        .unwrap();
    let sealed: switchboard_shared::sealed::Sealed = serde_json::from_str(&stored).unwrap();
    assert_eq!(sealed.key_id, "k2");
    let only_new = switchboard_shared::sealed::MasterKeys::parse(
        "k2:HxwdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=",
    )
    .unwrap();
    assert_eq!(only_new.open(&sealed).unwrap(), "upstream-secret");
    // A second run has nothing left to do.
    assert_eq!(
        controlplane::service::providers::reseal_credentials(cp.pool(), &rotated)
            .await
            .unwrap(),
        0
    );
}
