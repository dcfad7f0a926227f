//! The gRPC ConfigService over TLS and mTLS, against a real control plane, Postgres and NATS,
//! with certificates made here: a data plane that trusts the control plane's CA and presents
//! a client certificate from the client CA installs snapshots over gRPC alone; a plaintext
//! client, a client without a certificate, and one whose certificate comes from another CA
//! get nothing. The certificates `deploy/gen-secrets` makes with openssl carry gRPC TLS too.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

#[allow(unused_imports)] // Not every shared helper is needed here.
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::{ControlPlane, unique_namespace};
use dataplane::config::ClusterConfig;
use http::Method;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;
use sqlx::PgPool;
use switchboard_shared::proto::GetSnapshotRequest;
use switchboard_shared::proto::config_service_client::ConfigServiceClient;
use switchboard_tests::cluster_keys::GRPC_TOKEN;
use switchboard_tests::services::nats_url;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A CA that signs certificates, and its PEM.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `names` signed by this CA: (certificate PEM, key PEM).
    fn sign(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// `GetSnapshot` with the test token, over `tls` if given: whether a snapshot came back.
async fn get_snapshot(url: &str, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let mut endpoint = Endpoint::from_shared(url.to_owned()).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let header: tonic::metadata::AsciiMetadataValue =
        format!("Bearer {GRPC_TOKEN}").parse().unwrap();
    let mut client =
        ConfigServiceClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", header.clone());
            Ok(r)
        });
    let answer = client
        .get_snapshot(GetSnapshotRequest { newer_than: 0 })
        .await
        .map_err(|e| format!("call: {e:?}"))?;
    answer
        .into_inner()
        .snapshot
        .map(|_| ())
        .ok_or_else(|| "no snapshot".to_owned())
}

#[sqlx::test(migrations = "../migrations")]
async fn the_config_service_serves_over_mtls_only(pool: PgPool) {
    dataplane::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca, other_ca) = (Ca::new(), Ca::new(), Ca::new());
    let (cert, key) = server_ca.sign(&["127.0.0.1", "localhost"]);
    let (client_cert, client_key) = client_ca.sign(&["dp-1"]);
    let (stranger_cert, stranger_key) = other_ca.sign(&["dp-x"]);
    let files = (
        write(dir.path(), "server.pem", &cert),
        write(dir.path(), "server.key", &key),
        write(dir.path(), "clients-ca.pem", &client_ca.pem),
    );
    let tls = controlplane::grpc::GrpcTls::read(&files.0, &files.1, Some(&files.2)).unwrap();
    let namespace = unique_namespace();
    let cp = ControlPlane::start_tuned(pool, &namespace, &nats_url(), None, |s| {
        s.trust.grpc_tls = Some(tls);
    })
    .await;
    cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "acme"}))
        .await;
    let https = cp.grpc.replacen("http://", "https://", 1);

    // A data plane with the CA and its own certificate, on gRPC alone: it installs.
    let mut cluster = ClusterConfig::with_urls(Some(https.clone()), None);
    cluster.namespace = namespace.clone();
    cluster.controlplane_grpc_ca_file = Some(write(dir.path(), "ca.pem", &server_ca.pem));
    cluster.controlplane_grpc_client_cert = Some(write(dir.path(), "dp.pem", &client_cert));
    cluster.controlplane_grpc_client_key = Some(write(dir.path(), "dp.key", &client_key));
    let (gw, _cluster) = common::cluster::follower(cluster).await;
    let started = Instant::now();
    while gw.state.revision() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never installed over TLS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Everyone else gets nothing: plaintext, TLS without a client certificate, a client
    // certificate from another CA, and a server CA that is not the control plane's.
    let trusting = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&server_ca.pem));
    let refused = [
        ("plaintext", cp.grpc.clone(), None),
        ("no client certificate", https.clone(), Some(trusting())),
        (
            "a stranger's certificate",
            https.clone(),
            Some(trusting().identity(Identity::from_pem(&stranger_cert, &stranger_key))),
        ),
        (
            "another server CA",
            https.clone(),
            Some(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&other_ca.pem))
                    .identity(Identity::from_pem(&client_cert, &client_key)),
            ),
        ),
    ];
    for (what, url, tls) in refused {
        let got = get_snapshot(&url, tls).await;
        assert!(got.is_err(), "{what}: got a snapshot");
    }
    // The same client with the right CA and certificate does get one.
    let right = trusting().identity(Identity::from_pem(&client_cert, &client_key));
    get_snapshot(&https, Some(right)).await.unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn deploy_generated_certificates_carry_grpc_tls(pool: PgPool) {
    dataplane::install_crypto_provider();
    // What a deployment runs once (it needs openssl): the env file and tls/ beside it.
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gen-secrets");
    let ran = std::process::Command::new("bash")
        .arg(&script)
        .arg(dir.path().join("secrets.env"))
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let tls = dir.path().join("tls");
    let server = controlplane::grpc::GrpcTls::read(
        &tls.join("controlplane.pem"),
        &tls.join("controlplane.key"),
        None,
    )
    .unwrap();
    let namespace = unique_namespace();
    let cp = ControlPlane::start_tuned(pool, &namespace, &nats_url(), None, |s| {
        s.trust.grpc_tls = Some(server);
    })
    .await;
    cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "acme"}))
        .await;
    // `localhost` is one of the names the certificate carries (the deploy files dial
    // `controlplane` and `switchboard-controlplane`, which do not resolve here).
    let https = cp.grpc.replacen("http://127.0.0.1", "https://localhost", 1);

    // A data plane trusting only the generated CA installs over gRPC alone.
    let mut cluster = ClusterConfig::with_urls(Some(https.clone()), None);
    cluster.namespace = namespace.clone();
    cluster.controlplane_grpc_ca_file = Some(tls.join("ca.pem"));
    let (gw, _cluster) = common::cluster::follower(cluster).await;
    let started = Instant::now();
    while gw.state.revision() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never installed over TLS with the generated certificates"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The name matters: the same server at an address the certificate does not name fails.
    let ca = std::fs::read_to_string(tls.join("ca.pem")).unwrap();
    let trusting = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca));
    let by_ip = https.replacen("https://localhost", "https://127.0.0.1", 1);
    assert!(get_snapshot(&by_ip, Some(trusting())).await.is_err());
    get_snapshot(&https, Some(trusting())).await.unwrap();
}
