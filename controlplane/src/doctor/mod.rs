//! `controlplane doctor`: checks everything the control plane depends on and prints a report
//! with a fix for each failure (exit status 1 when something is wrong). Postgres (reachable,
//! migrations applied, clock), NATS (reachable, JetStream enabled, the config and usage
//! streams present), Redis when configured (reachable, clock), the master keys (every stored
//! credential opens), the gRPC endpoint, and each provider's upstream (DNS, TLS, whether it
//! accepts the stored credential). Nothing is written anywhere.

use std::net::SocketAddr;
use std::time::Duration;

use sqlx::PgPool;
use switchboard_shared::cluster::{NatsNames, nats_options};
use switchboard_shared::doctor::{Report, redacted, skew};
use switchboard_shared::sealed::MasterKeys;

use crate::config::Settings;
use crate::repo;
use crate::repo::ListFilter;
use crate::repo::rows::ProviderRow;

/// How far another clock may be from this host's.
pub const MAX_SKEW: Duration = Duration::from_secs(2);
/// How long one network check may take.
const WAIT: Duration = Duration::from_secs(3);

/// Runs every check.
pub async fn run(settings: &Settings, pool: &PgPool) -> Report {
    let mut report = Report::default();
    report.ok("config", "loaded and valid");
    let providers = postgres(pool, &mut report).await;
    nats(settings, &mut report).await;
    if let Some(r) = &settings.redis {
        let fix = "start Redis or correct redis.url (budget counters are reconciled there)";
        switchboard_shared::doctor::redis(&r.url, fix, MAX_SKEW, &mut report).await;
    }
    if let Some(providers) = &providers {
        master_keys(providers, &settings.master_keys, &mut report);
    }
    grpc(settings.grpc_listen, &mut report).await;
    if let Some(providers) = &providers {
        let client = reqwest::Client::builder()
            .timeout(WAIT)
            .build()
            .unwrap_or_default();
        for p in providers {
            upstream(&client, p, &settings.master_keys, &mut report).await;
        }
    }
    report
}

/// Postgres: reachable, migrated, clock; the stored providers (for the later checks).
async fn postgres(pool: &PgPool, report: &mut Report) -> Option<Vec<ProviderRow>> {
    let before = chrono::Utc::now();
    let now = match tokio::time::timeout(WAIT, repo::clock::now(pool)).await {
        Ok(Ok(now)) => now,
        Ok(Err(e)) => {
            report.fail(
                "postgres",
                format!("cannot query: {e}"),
                "start Postgres or correct database.url (SWITCHBOARD__DATABASE__URL)",
            );
            return None;
        }
        Err(_) => {
            report.fail(
                "postgres",
                "no answer within 3 s",
                "check database.url and that Postgres is up",
            );
            return None;
        }
    };
    report.ok("postgres", "reached");
    let (d, ahead) = skew(before, now);
    report.clock("postgres", d, ahead, MAX_SKEW);
    let applied = crate::db::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count();
    match crate::db::applied_migrations(pool).await {
        Ok(n) if n >= applied => report.ok("migrations", format!("{n} applied")),
        Ok(n) => report.fail(
            "migrations",
            format!("{} of {applied} pending", applied - n),
            "run `controlplane migrate` (or start `controlplane serve`, which migrates)",
        ),
        Err(e) => report.fail(
            "migrations",
            format!("cannot read: {e}"),
            "run `controlplane migrate`",
        ),
    }
    let all = ListFilter {
        confined_to: None,
        tenant_id: None,
        limit: 100_000,
        offset: 0,
    };
    match repo::providers::list(pool, all).await {
        Ok(rows) => Some(rows),
        Err(e) => {
            report.fail(
                "providers",
                format!("cannot read: {e}"),
                "run `controlplane migrate`",
            );
            None
        }
    }
}

/// NATS: reachable, JetStream enabled, the streams the planes share present.
async fn nats(settings: &Settings, report: &mut Report) {
    let url = redacted(&settings.nats_url);
    let options = match nats_options(&settings.nats_url, &settings.trust.nats).await {
        Ok(options) => options,
        Err(e) => {
            let fix = "check nats.creds_file (readable by the control plane)";
            report.fail(
                "nats",
                format!("cannot read the NATS credentials: {e}"),
                fix,
            );
            return;
        }
    };
    let connect = options
        .connection_timeout(WAIT)
        .connect(settings.nats_url.as_str());
    let client = match tokio::time::timeout(WAIT * 2, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            report.fail("nats", format!("cannot connect to {url}: {e}"), "start NATS or correct nats.url (SWITCHBOARD__NATS__URL); check its user and password");
            return;
        }
        Err(_) => {
            report.fail(
                "nats",
                format!("no connection to {url} within 6 s"),
                "start NATS or correct nats.url",
            );
            return;
        }
    };
    report.ok("nats", format!("connected to {url}"));
    let js = async_nats::jetstream::new(client);
    let names = NatsNames::new(&settings.namespace);
    let mut jetstream_down = None;
    for stream in [&names.config_stream, &names.usage_stream] {
        let found = tokio::time::timeout(WAIT, js.get_stream(stream.as_str())).await;
        match found {
            Ok(Ok(_)) => report.ok(format!("stream {stream}"), "present"),
            Ok(Err(e)) if e.to_string().contains("not found") => report.fail(
                format!("stream {stream}"),
                "missing",
                format!(
                    "start `controlplane serve` once with cluster.namespace {:?}: it creates the streams",
                    settings.namespace
                ),
            ),
            Ok(Err(e)) => jetstream_down = Some(e.to_string()),
            Err(_) => jetstream_down = Some("no answer within 3 s".to_owned()),
        }
    }
    match jetstream_down {
        None => report.ok("jetstream", "enabled"),
        Some(e) => report.fail(
            "jetstream",
            format!("not available: {e}"),
            "enable JetStream on the NATS server (`nats-server -js`, or `jetstream {}` in its config) and give this user access to it",
        ),
    }
}

/// Every stored credential opens with the configured master keys.
fn master_keys(providers: &[ProviderRow], keys: &MasterKeys, report: &mut Report) {
    let mut bad = Vec::new();
    let mut count = 0;
    for p in providers {
        let extra = &p.extra.0;
        let sealed = p
            .credential
            .iter()
            .map(|c| &c.0)
            .chain(extra.aws_access_key_id.iter())
            .chain(extra.aws_secret_access_key.iter())
            .chain(extra.aws_session_token.iter())
            .chain(extra.api_keys.iter().map(|k| &k.key));
        for s in sealed {
            count += 1;
            if keys.open(s).is_err() {
                bad.push(format!(
                    "provider {} (sealed with key {:?})",
                    p.id, s.key_id
                ));
            }
        }
    }
    if bad.is_empty() {
        report.ok(
            "master keys",
            format!("open all {count} stored credentials"),
        );
    } else {
        report.fail(
            "master keys",
            format!("cannot open {}", bad.join(", ")),
            "SWITCHBOARD_MASTER_KEYS must list the key ids named here (the data planes need the same keys); if a key is lost, set the credentials again with PUT /admin/v1/providers/{id}",
        );
    }
}

/// The gRPC endpoint the data planes fetch snapshots from.
async fn grpc(listen: SocketAddr, report: &mut Report) {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    match tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => report.ok("grpc", format!("{addr} accepts connections")),
        _ => report.warn(
            "grpc",
            format!("nothing listens on {addr}"),
            "normal when `controlplane serve` is not running here; otherwise check server.grpc_listen and firewalls",
        ),
    }
}

pub mod upstream;
use upstream::upstream;
