//! A bare HTTP/1.1 client connection, as the load generator and the readiness checks use it:
//! one TCP connection, kept alive, no pool and no retries to blur what is measured.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The sending half of one connection; the connection is driven by a spawned task that ends
/// when this is dropped.
pub type Connection = SendRequest<Full<Bytes>>;

/// Opens a connection to `addr`.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Connection> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection's error is seen by the sender as a failed request.
        let _ = connection.await;
    });
    Ok(sender)
}

/// The status of `GET path` on a fresh connection, body read and discarded.
pub async fn get_status(addr: SocketAddr, path: &str) -> anyhow::Result<StatusCode> {
    let mut sender = connect(addr).await?;
    let request = Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

/// Polls `GET path` until it answers 200, `alive` says the server died, or `timeout` passes.
pub async fn wait_ready(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        alive()?;
        let last = match get_status(addr, path).await {
            Ok(StatusCode::OK) => return Ok(()),
            Ok(status) => format!("GET {path} answered {status}"),
            Err(error) => format!("GET {path}: {error}"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("not ready within {timeout:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `method path` with an optional JSON body and bearer token on a fresh connection: the status
/// and the body parsed as JSON (`Null` when it is not JSON). For the admin API.
pub async fn json_call(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let mut sender = connect(addr).await?;
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(token) = bearer {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let bytes = body.map_or_else(Vec::new, |b| b.to_string().into_bytes());
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(bytes)))?)
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    ))
}
