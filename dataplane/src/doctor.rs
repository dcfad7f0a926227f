//! `dataplane doctor --config FILE`: checks what a data plane depends on before (or while) it
//! serves, and prints a report with a fix for each failure (exit status 1 when something is
//! wrong): the config, the master keys, Redis (reachable, clock), in cluster mode NATS
//! (JetStream streams) and the control plane's gRPC endpoint (the current snapshot), that
//! every credential of the snapshot opens (sealed ones with the master keys, `{ env: NAME }`
//! ones from the environment), and that each upstream resolves and accepts connections.
//! Whether an upstream accepts its credential is `controlplane doctor`'s check (this one
//! sends no request upstream). Nothing here prints a secret.

use std::path::Path;
use std::time::Duration;

use switchboard_shared::cluster::{NatsNames, nats_options};
use switchboard_shared::doctor::{Report, redacted};
use switchboard_shared::proto::GetSnapshotRequest;
use switchboard_shared::proto::config_service_client::ConfigServiceClient;
use switchboard_shared::sealed::MasterKeys;
use switchboard_shared::secret::SecretRef;
use switchboard_shared::snapshot::{Provider, Snapshot};

use crate::config::{ClusterConfig, Config};

/// How far another clock may be from this host's.
pub const MAX_SKEW: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(3);

/// Runs every check on the config at `path` (`env`: the process environment; `master_keys`:
/// `SWITCHBOARD_MASTER_KEYS`).
/// `cluster_urls`: the command line's `--controlplane` and `--nats`, which win over the file.
pub async fn run(
    path: &Path,
    env: &[(String, String)],
    master_keys: Option<&str>,
    cluster_urls: (Option<String>, Option<String>),
) -> Report {
    let mut report = Report::default();
    let loaded = Config::load(path, env).map(|mut c| {
        c.override_cluster(cluster_urls.0, cluster_urls.1);
        c
    });
    let config = match loaded
        .map_err(|e| e.to_string())
        .and_then(|c| c.validate().map(|()| c).map_err(|p| p.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            report.fail(
                "config",
                e,
                format!(
                    "correct {} (the problems are listed by path)",
                    path.display()
                ),
            );
            return report;
        }
    };
    report.ok("config", format!("{} is valid", path.display()));
    let keys = match crate::server::master_keys_from(master_keys) {
        Ok(k) => k,
        Err(e) => {
            report.fail(
                "master keys",
                format!("{e:#}"),
                "set SWITCHBOARD_MASTER_KEYS to the control plane's keys (`id:base64key,...`)",
            );
            None
        }
    };
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if let Some(r) = &config.redis {
        match r.url.resolve_with(lookup, keys.as_ref()) {
            Ok(url) => {
                let fix = "start Redis or correct redis.url (rate limits, budgets and the fleet state live there)";
                switchboard_shared::doctor::redis(&url, fix, MAX_SKEW, &mut report).await;
            }
            Err(e) => report.fail(
                "redis",
                format!("redis.url: {e}"),
                "set the variable redis.url names",
            ),
        }
    }
    let snapshot = match (&config.snapshot, &config.cluster) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(cluster)) => cluster_checks(cluster, &mut report).await,
        (None, None) => None,
    };
    if let Some(snapshot) = &snapshot {
        secrets(snapshot, &lookup, keys.as_ref(), &mut report);
        for p in &snapshot.providers {
            upstream(p, &mut report).await;
        }
    }
    report
}

/// NATS and the control plane's gRPC endpoint; the current snapshot.
async fn cluster_checks(cluster: &ClusterConfig, report: &mut Report) -> Option<Snapshot> {
    if let Some(url) = &cluster.nats_url {
        nats(cluster, url, &NatsNames::new(&cluster.namespace), report).await;
    }
    let url = cluster.controlplane_grpc.as_deref()?;
    let shown = redacted(url);
    let fetch = async {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("not a URL: {e}"))?
            .connect_timeout(WAIT)
            .connect()
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let mut client = ConfigServiceClient::new(channel)
            .max_decoding_message_size(switchboard_shared::cluster::MAX_SNAPSHOT_BYTES);
        let answer = client
            .get_snapshot(GetSnapshotRequest { newer_than: 0 })
            .await
            .map_err(|e| format!("GetSnapshot: {}", e.message()))?
            .into_inner();
        let envelope = answer.snapshot.ok_or("no snapshot published yet")?;
        serde_json::from_slice::<Snapshot>(&envelope.snapshot_json)
            .map_err(|e| format!("the snapshot does not parse: {e}"))
    };
    match tokio::time::timeout(WAIT * 2, fetch).await {
        Ok(Ok(s)) => {
            report.ok("grpc", format!("{shown} serves revision {}", s.revision));
            Some(s)
        }
        Ok(Err(e)) => {
            report.fail(
                "grpc",
                format!("{shown}: {e}"),
                "start `controlplane serve` or correct cluster.controlplane_grpc (--controlplane)",
            );
            None
        }
        Err(_) => {
            report.fail(
                "grpc",
                format!("{shown}: no answer within 6 s"),
                "check cluster.controlplane_grpc and the network between the planes",
            );
            None
        }
    }
}

async fn nats(cluster: &ClusterConfig, url: &str, names: &NatsNames, report: &mut Report) {
    let shown = redacted(url);
    let options = match cluster.nats_auth() {
        Ok(auth) => nats_options(url, &auth).await.map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    let options = match options {
        Ok(options) => options,
        Err(e) => {
            let fix = "check cluster.nats_creds_file, nats_nkey_seed and the TLS files";
            report.fail("nats", format!("cannot build the NATS login: {e}"), fix);
            return;
        }
    };
    let connect = options.connection_timeout(WAIT).connect(url);
    let client = match tokio::time::timeout(WAIT * 2, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            report.fail(
                "nats",
                format!("cannot connect to {shown}: {e}"),
                "start NATS or correct cluster.nats_url (--nats); check its user and password",
            );
            return;
        }
        Err(_) => {
            report.fail(
                "nats",
                format!("no connection to {shown} within 6 s"),
                "start NATS or correct cluster.nats_url",
            );
            return;
        }
    };
    report.ok("nats", format!("connected to {shown}"));
    let js = async_nats::jetstream::new(client);
    for stream in [&names.config_stream, &names.usage_stream] {
        match tokio::time::timeout(WAIT, js.get_stream(stream.as_str())).await {
            Ok(Ok(_)) => report.ok(format!("stream {stream}"), "present"),
            Ok(Err(e)) if e.to_string().contains("not found") => report.fail(
                format!("stream {stream}"),
                "missing",
                "start `controlplane serve` with the same cluster.namespace: it creates the streams",
            ),
            Ok(Err(e)) => report.fail("jetstream", format!("not available: {e}"), "enable JetStream on the NATS server (`nats-server -js`) and give this user access"),
            Err(_) => report.fail("jetstream", "no answer within 3 s", "enable JetStream on the NATS server"),
        }
    }
}

/// Every credential of the snapshot opens: sealed ones with `keys`, the others from `env`.
fn secrets(
    snapshot: &Snapshot,
    env: &dyn Fn(&str) -> Option<String>,
    keys: Option<&MasterKeys>,
    report: &mut Report,
) {
    let (mut sealed_bad, mut env_bad, mut count) = (Vec::new(), Vec::new(), 0);
    for p in &snapshot.providers {
        let refs = p
            .api_key
            .iter()
            .chain(p.aws_access_key_id.iter())
            .chain(p.aws_secret_access_key.iter())
            .chain(p.aws_session_token.iter())
            .chain(p.api_keys.iter().map(|k| &k.key));
        for r in refs {
            count += 1;
            if let Err(e) = r.resolve_with(env, keys) {
                match r {
                    SecretRef::Sealed(s) => sealed_bad.push(format!(
                        "provider {} (sealed with key {:?})",
                        p.id, s.key_id
                    )),
                    _ => env_bad.push(format!("provider {}: {e}", p.id)),
                }
            }
        }
    }
    if sealed_bad.is_empty() {
        report.ok(
            "master keys",
            format!("{count} credentials of revision {} open", snapshot.revision),
        );
    } else {
        report.fail(
            "master keys",
            format!("cannot open {}", sealed_bad.join(", ")),
            "SWITCHBOARD_MASTER_KEYS must list the control plane's key ids named here",
        );
    }
    if !env_bad.is_empty() {
        report.fail(
            "secrets",
            env_bad.join("; "),
            "set the environment variables the snapshot names",
        );
    }
}

/// The upstream's host resolves and accepts a TCP connection.
async fn upstream(p: &Provider, report: &mut Report) {
    let name = format!("upstream {}", p.id);
    let Some(base) = p.base_url.as_deref() else {
        report.ok(
            name,
            format!("kind {} needs no base_url check", p.kind.as_str()),
        );
        return;
    };
    let shown = redacted(base);
    let Ok(uri) = base.parse::<http::Uri>() else {
        report.fail(
            name,
            format!("{shown}: not a URL"),
            "correct the provider's base_url",
        );
        return;
    };
    let host = uri.host().unwrap_or_default().to_owned();
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addrs: Vec<_> = match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(a) => a.collect(),
        Err(_) => Vec::new(),
    };
    let Some(addr) = addrs.first() else {
        report.fail(
            name,
            format!("{shown}: DNS: cannot resolve {host}"),
            "check the host in base_url and this host's DNS",
        );
        return;
    };
    match tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => report.ok(name, format!("{shown} accepts connections")),
        _ => report.fail(
            name,
            format!("{shown}: cannot connect to {addr}"),
            "check that the upstream is up and reachable from here (firewall, proxy)",
        ),
    }
}
