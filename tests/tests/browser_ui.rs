//! The admin console (`/ui`) in a real browser: this test starts a real control plane (on
//! Postgres and NATS), a cluster-mode data plane following it and the mock upstream, then runs
//! `tests/browser/run.mjs` — Playwright (`playwright-core`, from `tests/browser/package-lock.json`)
//! driving headless Chromium, with an OIDC provider (`oauth2-mock-server`) for single sign-on.
//! The script's checks are listed at its top; it fails this test by exiting non-zero.
//!
//! What must be installed: `node` (18+), `npm` (for `npm ci` when `node_modules` is missing)
//! and Chromium (`/usr/bin/chromium`, or `$CHROMIUM`). A missing one FAILS the test naming it:
//! CI must not pass without having run the browser.
//!
//! Screenshots go to `$CARGO_TARGET_DIR/ui-screenshots`, or to `docs/screenshots` with
//! `SB_UPDATE_SCREENSHOTS=1` (how the committed ones were made).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{ADMIN, MASTER_KEYS, PASSWORD, unique_namespace};
use common::{MockUpstream, PEPPER};
use controlplane::config::{OidcSettings, PricesConfig, Settings, SpendConfig, UiSettings};
use sqlx::PgPool;
use switchboard_shared::sealed::MasterKeys;

const CLIENT_ID: &str = "switchboard-console";

/// A free local port (bound and released: the control plane and the OIDC provider need to
/// know each other's URLs before either starts).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Fails naming what is missing: node, npm packages (installed by `npm ci` when absent), chromium.
async fn prerequisites(dir: &Path) {
    let node = tokio::process::Command::new("node")
        .arg("--version")
        .output()
        .await;
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "browser tests need `node` (18+) on PATH: install Node.js (Debian: apt-get install nodejs npm)"
    );
    assert!(
        chromium().exists(),
        "browser tests need Chromium at {} (Debian: apt-get install chromium), or set CHROMIUM",
        chromium().display()
    );
    if !dir.join("node_modules/playwright-core").exists()
        || !dir.join("node_modules/oauth2-mock-server").exists()
    {
        let status = tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir)
            .status()
            .await;
        assert!(
            status.is_ok_and(|s| s.success()),
            "browser tests need their npm packages: `npm ci` in {} failed (is npm installed and the registry reachable?)",
            dir.display()
        );
    }
}

fn settings(namespace: &str, listen: u16, oidc_port: u16) -> Settings {
    Settings {
        listen: format!("127.0.0.1:{listen}").parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        max_body_bytes: 1 << 20,
        nats_url: switchboard_tests::services::nats_url(),
        namespace: namespace.to_owned(),
        heartbeat_interval: Duration::from_millis(500),
        reconcile_interval: Duration::from_millis(500),
        full_snapshots: Default::default(),
        pepper: PEPPER.as_bytes().to_vec(),
        jwt_secret: b"browser-jwt-secret-that-is-long-enough-0123".to_vec(),
        token_ttl: Duration::from_secs(900),
        master_keys: MasterKeys::parse(MASTER_KEYS).unwrap(),
        spend: SpendConfig::default(),
        prices: PricesConfig::default(),
        redis: None,
        nats_replicas: 1,
        admin_auth: controlplane::config::AdminAuthSettings::default(),
        providers: controlplane::config::ProvidersConfig::default(),
        trust: controlplane::config::ClusterTrust::with_keys(
            namespace,
            switchboard_tests::cluster_keys::SIGNING_SEED,
            switchboard_tests::cluster_keys::GRPC_TOKEN,
            switchboard_tests::cluster_keys::INGEST_KEY,
        ),
        ui: UiSettings {
            public_url: None,
            oidc: Some(OidcSettings {
                issuer: format!("http://127.0.0.1:{oidc_port}"),
                client_id: CLIENT_ID.into(),
                client_secret: "console-client-secret".into(),
                scopes: "openid email profile".into(),
                role_claim: "groups".into(),
                roles: [
                    ("gw-admins", "platform_admin"),
                    ("gw-tenant-admins", "tenant_admin"),
                    ("gw-viewers", "viewer"),
                ]
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect(),
                tenant_claim: "tenant".into(),
                label: "Sign in with SSO".into(),
            }),
        },
    }
}

/// A cluster-mode data plane following the control plane at `grpc`.
async fn data_plane(
    dir: &Path,
    namespace: &str,
    grpc: &str,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let config = format!(
        "server:\n  key_pepper: {{ value: \"{PEPPER}\" }}\n  shutdown_grace_seconds: 1\n\
         cluster:\n  namespace: {namespace}\n  nats_url: \"{nats}\"\n  controlplane_grpc: \"{grpc}\"\n  \
         heartbeat_interval_ms: 500\n  snapshot_cache: \"{cache}\"\n  usage_spill_path: \"{spill}\"\n{trust}",
        trust = common::cluster::trust_yaml(),
        nats = switchboard_tests::services::nats_url(),
        cache = dir.join("dp.snapshot.json").display(),
        spill = dir.join("dp.usage.jsonl").display(),
    );
    let path = dir.join("dp.yaml");
    std::fs::write(&path, config).unwrap();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(dataplane::serve_until(
        dataplane::Options {
            config_path: path,
            listen: Some("127.0.0.1:0".parse().unwrap()),
            master_keys: Some(MASTER_KEYS.to_owned()),
            ..Default::default()
        },
        async move {
            let _ = stop_rx.await;
        },
        move |addr| {
            let _ = addr_tx.send(addr);
        },
    ));
    (format!("http://{}", addr_rx.await.unwrap()), stop_tx, task)
}

#[sqlx::test(migrations = "../migrations")]
async fn the_console_works_in_a_browser(pool: PgPool) {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    prerequisites(&browser_dir).await;
    let namespace = unique_namespace();
    let (listen, oidc_port) = (free_port(), free_port());
    let env = [
        (
            controlplane::BOOTSTRAP_EMAIL_ENV.to_owned(),
            ADMIN.to_owned(),
        ),
        (
            controlplane::BOOTSTRAP_PASSWORD_ENV.to_owned(),
            PASSWORD.to_owned(),
        ),
    ];
    controlplane::bootstrap_admin(&pool, &env).await.unwrap();
    // Prices from the checked-in price file, so that spend has costs and the prices page rows.
    let prices = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/model_prices_and_context_window.json");
    controlplane::service::prices::sync_from_file(&pool, &prices)
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = controlplane::serve(settings(&namespace, listen, oidc_port), pool, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let grpc = format!("http://{}", running.grpc_addr);
    let (dp, dp_stop, dp_task) = data_plane(dir.path(), &namespace, &grpc).await;
    let shots = if std::env::var_os("SB_UPDATE_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
    } else {
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(
            || dir.path().to_path_buf(),
            |t| PathBuf::from(t).join("ui-screenshots"),
        )
    };
    std::fs::create_dir_all(&shots).unwrap();
    let run = tokio::process::Command::new("node")
        .arg("run.mjs")
        .current_dir(&browser_dir)
        .env("SB_UI", format!("http://{}", running.rest_addr))
        .env("SB_DATAPLANE", &dp)
        .env("SB_MOCK", mock.base_url())
        .env("SB_OIDC_PORT", oidc_port.to_string())
        .env("SB_OIDC_CLIENT", CLIENT_ID)
        .env("SB_ADMIN", ADMIN)
        .env("SB_PASSWORD", PASSWORD)
        .env("SB_SCREENSHOTS", &shots)
        .env("CHROMIUM", chromium())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser run finishes within 3 minutes")
        .expect("node starts");
    let _ = stop.send(());
    let _ = dp_stop.send(());
    dp_task.abort();
    running.wait().await;
    assert!(
        status.success(),
        "the browser checks failed (their output is above)"
    );
}
