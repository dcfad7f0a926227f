//! Upstreams over TLS: the gateway verifies the upstream's certificate against the web PKI
//! roots plus `server.upstream_ca_file`, and refuses an upstream it cannot verify.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;

const CHAT: &str = "/v1/chat/completions";

/// A TLS front for `backend` with a certificate for `localhost` from a fresh CA; returns its
/// address and the CA's PEM.
async fn tls_front(backend: SocketAddr) -> (SocketAddr, String) {
    dataplane::install_crypto_provider();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, ca_cert.pem())
}

fn config(port: u16, ca_file: Option<&std::path::Path>) -> String {
    let server_extra = ca_file.map_or(String::new(), |p| {
        format!("  upstream_ca_file: \"{}\"\n", p.display())
    });
    config_yaml(
        &snapshot(
            "",
            &format!(
                "providers: [{{ id: up, kind: openai, base_url: \"https://localhost:{port}/v1\" }}]\ndeployments: [{{ id: d1, model: m, provider: up, upstream_model: u }}]\nmodels: [{{ model: m, retries: 0 }}]\n"
            ),
        ),
        &server_extra,
    )
}

#[tokio::test]
async fn a_trusted_tls_upstream_serves_plain_and_streamed_answers() {
    let mock = MockUpstream::start().await.unwrap();
    let (front, ca_pem) = tls_front(mock.addr()).await;
    let ca_file = std::env::temp_dir().join(format!("switchboard-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, ca_pem).unwrap();
    let gw = Gateway::start(&config(front.port(), Some(&ca_file))).await;

    let reply = post(&gw.url(CHAT), r#"{"model":"m","messages":[]}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (status, _, frames, ended) =
        post_timed(&gw.url(CHAT), r#"{"model":"m","stream":true}"#).await;
    assert_eq!(status, 200);
    assert!(ended.is_ok());
    assert_eq!(
        sse_data(&joined(&frames)).last().map(String::as_str),
        Some("[DONE]")
    );
    assert_eq!(mock.request_count(""), 2);
    let _ = std::fs::remove_file(&ca_file);
}

#[tokio::test]
async fn an_untrusted_tls_upstream_is_refused() {
    let mock = MockUpstream::start().await.unwrap();
    let (front, _) = tls_front(mock.addr()).await;
    let gw = Gateway::start(&config(front.port(), None)).await;
    post(&gw.url(CHAT), r#"{"model":"m","messages":[]}"#)
        .await
        .openai_error(502);
    assert_eq!(
        mock.request_count(""),
        0,
        "nothing went to an unverified upstream"
    );
}
