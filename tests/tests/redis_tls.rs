//! Redis over TLS with an ACL user, against a real `redis-server` started here with a
//! certificate made here, no usable default user and the minimal ACL of `docs/security.md`
//! (`~switchboard:* &* +@all -@admin`). A gateway whose `redis.url` is
//! `rediss://user:password@…/?ca_file=…` enforces its limits in that Redis (failure policy
//! closed: no Redis, no answer); the same user cannot touch keys outside its prefix, and a
//! wrong password, no login, or a plaintext client get nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

#[allow(unused_imports)] // Not every shared helper is needed here.
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use switchboard_shared::redis_conn::{RedisConn, RedisTarget};
use switchboard_tests::services::free_port;
use tokio::process::{Child, Command};

const PASSWORD: &str = "sb-dataplane-password-0123";

/// A TLS-only `redis-server` with ACL user `sb`; killed when dropped.
struct TlsRedis {
    port: u16,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _child: Child,
}

impl TlsRedis {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let (cert, key, ca_file) = (
            file("redis.pem", &cert.pem()),
            file("redis.key", &key.serialize_pem()),
            file("ca.pem", &ca_pem),
        );
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &cert, "--tls-key-file", &key])
            .args(["--tls-ca-cert-file", &ca_file, "--tls-auth-clients", "no"])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--user", "default", "off"])
            .args(["--user", "sb", "on", &format!(">{PASSWORD}")])
            .args(["~switchboard:*", "&*", "+@all", "-@admin"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (built with TLS) must be installed");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            port,
            ca_file: ca_file.into(),
            _dir: dir,
            _child: child,
        }
    }

    /// A URL for `userinfo` (e.g. `sb:password@`) with the CA.
    fn url(&self, scheme: &str, userinfo: &str) -> String {
        format!(
            "{scheme}://{userinfo}localhost:{}/?ca_file={}",
            self.port,
            self.ca_file.display()
        )
    }
}

/// `SET key 1` through the shared connection code both planes use.
async fn set(url: &str, key: &str) -> Result<(), String> {
    let target = RedisTarget {
        url,
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(2),
    };
    let mut conn = RedisConn::lazy(&target).map_err(|e| e.to_string())?;
    redis::cmd("SET")
        .arg(key)
        .arg(1)
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn both_planes_reach_redis_over_tls_as_an_acl_user() {
    dataplane::install_crypto_provider();
    let redis = TlsRedis::start().await;
    let user = format!("sb:{PASSWORD}@");
    let good = redis.url("rediss", &user);

    // The ACL user, over TLS: its own keys only.
    set(&good, "switchboard:probe").await.unwrap();
    let refused = set(&good, "elsewhere").await.unwrap_err();
    assert!(refused.contains("NoPerm"), "{refused}");
    // A wrong password, no login, or plaintext: nothing.
    for url in [
        redis.url("rediss", "sb:wrong-password-000@"),
        redis.url("rediss", ""),
        format!("redis://{user}127.0.0.1:{}", redis.port),
    ] {
        assert!(set(&url, "switchboard:probe").await.is_err(), "{url}");
    }

    // A gateway whose limits live there (failure policy closed: without Redis it would refuse
    // every limited request): a key limited to one request a minute gets one.
    let mock = MockUpstream::start().await.unwrap();
    let config = one_deployment(&mock.base_url(), ", limits: { rpm: 1 }", "");
    let config = format!(
        "{config}redis:\n  url: {{ value: \"{good}\" }}\n  key_prefix: switchboard\n  \
         timeout_ms: 1000\n  failure_policy: closed\n"
    );
    let gw = Gateway::start(&config).await;
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let first = post(&gw.url("/v1/chat/completions"), body).await;
    assert_eq!(first.status, http::StatusCode::OK, "{}", first.text());
    let second = post(&gw.url("/v1/chat/completions"), body).await;
    assert_eq!(
        second.status,
        http::StatusCode::TOO_MANY_REQUESTS,
        "{}",
        second.text()
    );
}
