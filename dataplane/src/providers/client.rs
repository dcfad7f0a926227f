//! The upstream HTTP/1.1 client: pooled keep-alive connections, plain TCP or rustls TLS (ring
//! provider, bundled web PKI roots — no OpenSSL, no system store).
//!
//! Why not hyper's client: it runs each connection in a task of its own and hands a response
//! body over one chunk per turn of that task, through a channel. For an SSE stream of twenty
//! small events that meant twenty task switches and twenty client writes per answer, where a
//! proxy like nginx reads what the socket holds and writes it on in one go. Here the response
//! body *is* the connection: polling it reads the socket in the caller's task and returns every
//! byte that is decodable at that moment as one frame. Requests go out in one write.
//!
//! The pool is a lock-free queue of idle connections per origin. A body read to its end puts
//! its connection back; a body dropped early closes it, which is how a client disconnect
//! cancels the upstream request. A request on a reused connection that fails before any byte of
//! the answer arrives (the server closed it while idle) is retried once on a new connection.
//!
//! Upstreams are untrusted: the body enforces the [`UpstreamCaps`] as it is read ([`Cap`]) —
//! a complete body past `body_bytes`, or an event of an event stream past `event_bytes`, ends
//! it with [`BodyError::TooLarge`], counted in `switchboard_upstream_oversize_total`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_queue::ArrayQueue;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{BodyError, Oversize, SendError, UpstreamCaps};
use crate::sse::EventScanner;

/// Client settings from the server config.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub caps: UpstreamCaps,
}

/// Shared by every adaptor; cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    settings: ClientSettings,
    tls: TlsConnector,
    /// Pools by origin. Locked only while a catalog is built, never on the request path.
    pools: Mutex<HashMap<Origin, Arc<Pool>>>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// Builds the shared client, trusting the bundled web PKI roots plus `extra_roots` (e.g. a
/// private CA in front of self-hosted models). Needs the process-wide rustls provider
/// installed first (see [`crate::install_crypto_provider`]).
pub fn build(
    settings: ClientSettings,
    extra_roots: Vec<CertificateDer<'static>>,
) -> Result<HttpClient, String> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for (i, cert) in extra_roots.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("extra root certificate #{}: {e}", i + 1))?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(HttpClient {
        inner: Arc::new(ClientInner {
            settings,
            tls: TlsConnector::from(Arc::new(config)),
            pools: Mutex::new(HashMap::new()),
        }),
    })
}

/// Reads the certificates of a PEM file.
pub fn load_pem_certificates(
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    Ok(certs)
}

/// Scheme, host and port of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    tls: bool,
    host: String,
    port: u16,
}

/// Where one adaptor sends its requests: an origin's pool and the `Host` header.
#[derive(Clone)]
pub struct Upstream {
    client: HttpClient,
    pool: Arc<Pool>,
    host_header: HeaderValue,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("origin", &self.pool.origin)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// The upstream at a base URL's origin, sharing the pool with every other user of it.
    pub fn upstream(&self, base: &Uri) -> Result<Upstream, String> {
        let tls = match base.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(format!("unsupported scheme {other:?}")),
        };
        let host = base.host().ok_or("the URL has no host")?.to_owned();
        let port = base.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let origin = Origin {
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        };
        let default_port = port == if tls { 443 } else { 80 };
        let host_header = if default_port {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        let host_header = HeaderValue::from_str(&host_header).map_err(|e| e.to_string())?;
        let pool = {
            let mut pools = self
                .inner
                .pools
                .lock()
                .map_err(|_| "the connection pool registry is poisoned".to_owned())?;
            Arc::clone(pools.entry(origin.clone()).or_insert_with(|| {
                Arc::new(Pool {
                    origin,
                    idle: ArrayQueue::new(self.inner.settings.pool_max_idle_per_host.max(1)),
                    idle_timeout: self.inner.settings.pool_idle_timeout,
                })
            }))
        };
        Ok(Upstream {
            client: self.clone(),
            pool,
            host_header,
        })
    }
}

/// Idle connections of one origin.
struct Pool {
    origin: Origin,
    idle: ArrayQueue<Idle>,
    idle_timeout: Duration,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Pool {
    /// A live idle connection, if one is left.
    fn take(&self) -> Option<Conn> {
        while let Some(idle) = self.idle.pop() {
            if idle.since.elapsed() < self.idle_timeout && idle.conn.looks_open() {
                return Some(idle.conn);
            }
        }
        None
    }

    fn put(&self, conn: Conn) {
        // A full pool drops the connection, which closes it.
        let _ = self.idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

/// A connection to an upstream.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// Whether an idle connection was not closed by the server meanwhile (a closed one reads
    /// end-of-file at once; an open, idle one would block).
    fn looks_open(&self) -> bool {
        let tcp = match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        };
        let mut probe = [0u8; 1];
        matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The answer's head; the body reads on from the same connection.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: ResponseBody,
}

impl Upstream {
    async fn connect(&self) -> Result<Conn, SendError> {
        let origin = &self.pool.origin;
        let timeout = self.client.inner.settings.connect_timeout;
        let connect = async {
            let tcp = TcpStream::connect((origin.host.as_str(), origin.port))
                .await
                .map_err(|_| SendError::Connect)?;
            let _ = tcp.set_nodelay(true);
            if !origin.tls {
                return Ok(Conn::Plain(tcp));
            }
            let name = rustls::pki_types::ServerName::try_from(origin.host.clone())
                .map_err(|_| SendError::Connect)?;
            let tls = self
                .client
                .inner
                .tls
                .connect(name, tcp)
                .await
                .map_err(|_| SendError::Connect)?;
            Ok(Conn::Tls(Box::new(tls)))
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| SendError::Connect)?
    }

    /// The `Host` header this upstream's requests carry (request signing covers it).
    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// Sends `POST path` with `headers` and `body`; resolves when the answer's head is in.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(HeaderName, &HeaderValue)],
        body: &[u8],
    ) -> Result<Response, SendError> {
        let request = encode_request(path, &self.host_header, headers, body);
        if let Some(conn) = self.pool.take() {
            match exchange(conn, &request).await {
                Ok(response) => return Ok(self.finish(response)),
                // Closed while idle, before answering anything: try once more, on a new one.
                Err(Exchange::Stale) => {}
                Err(Exchange::Failed) => return Err(SendError::Transport),
            }
        }
        let conn = self.connect().await?;
        match exchange(conn, &request).await {
            Ok(response) => Ok(self.finish(response)),
            Err(_) => Err(SendError::Transport),
        }
    }

    fn finish(&self, (status, headers, conn, buf, framing): Head) -> Response {
        let cap = Cap::of(&headers, self.client.inner.settings.caps);
        Response {
            status,
            headers,
            body: ResponseBody {
                conn: Some(conn),
                buf,
                framing,
                pool: Arc::clone(&self.pool),
                cap,
            },
        }
    }
}

/// The head of a request in one buffer, followed by its body.
fn encode_request(
    path: &str,
    host: &HeaderValue,
    headers: &[(HeaderName, &HeaderValue)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    for (name, value) in headers {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

type Head = (StatusCode, HeaderMap, Conn, BytesMut, Framing);

enum Exchange {
    /// Nothing came back at all: the connection was dead before we used it.
    Stale,
    Failed,
}

const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

/// Writes the request and reads the answer's head.
async fn exchange(mut conn: Conn, request: &[u8]) -> Result<Head, Exchange> {
    if conn.write_all(request).await.is_err() {
        return Err(Exchange::Stale);
    }
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut received_any = false;
    loop {
        let read = tokio::io::AsyncReadExt::read_buf(&mut conn, &mut buf).await;
        match read {
            Ok(0) | Err(_) if !received_any => return Err(Exchange::Stale),
            Ok(0) | Err(_) => return Err(Exchange::Failed),
            Ok(_) => received_any = true,
        }
        loop {
            match parse_head(&buf) {
                Ok(None) if buf.len() > MAX_HEAD_BYTES => return Err(Exchange::Failed),
                Ok(None) => break,
                Err(()) => return Err(Exchange::Failed),
                Ok(Some((status, headers, len, framing))) => {
                    buf.advance(len);
                    if status.is_informational() {
                        continue; // 100 Continue and friends: the real head follows
                    }
                    return Ok((status, headers, conn, buf, framing));
                }
            }
        }
    }
}

/// Parses a response head: `Ok(None)` when incomplete; else the status, the headers, the
/// head's length and how its body is framed (read from the headers as they are parsed,
/// rather than looked up again in the map).
fn parse_head(buf: &[u8]) -> Result<Option<(StatusCode, HeaderMap, usize, Framing)>, ()> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(())?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let mut framing = FramingHeaders::default();
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ())?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| ())?;
        framing.read(&name, &value);
        headers.append(name, value);
    }
    Ok(Some((status, headers, len, framing.framing(status))))
}

/// What a head's headers say about the framing of its body: any `connection` value naming
/// `close`, any `transfer-encoding` value naming `chunked` (case-insensitively), the first
/// `content-length` (unreadable: `None` within).
#[derive(Default)]
struct FramingHeaders {
    close: bool,
    chunked: bool,
    length: Option<Option<u64>>,
}

impl FramingHeaders {
    fn read(&mut self, name: &HeaderName, value: &HeaderValue) {
        let names = |word: &str| {
            value
                .to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains(word))
        };
        if *name == http::header::CONNECTION {
            self.close |= names("close");
        } else if *name == http::header::TRANSFER_ENCODING {
            self.chunked |= names("chunked");
        } else if *name == http::header::CONTENT_LENGTH && self.length.is_none() {
            let length = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            self.length = Some(length);
        }
    }

    fn framing(&self, status: StatusCode) -> Framing {
        let reusable = !self.close;
        if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Framing::Done { reusable };
        }
        if self.chunked {
            return Framing::Chunked {
                state: Chunk::Size,
                reusable,
            };
        }
        match self.length.flatten() {
            Some(0) => Framing::Done { reusable },
            Some(left) => Framing::Length { left, reusable },
            None => Framing::UntilClose,
        }
    }
}

/// How the end of a body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length {
        left: u64,
        reusable: bool,
    },
    Chunked {
        state: Chunk,
        reusable: bool,
    },
    /// Ends when the server closes the connection.
    UntilClose,
    Done {
        reusable: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a size line.
    Size,
    /// Inside a chunk's data.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

impl Framing {
    fn is_done(&self) -> bool {
        matches!(self, Framing::Done { .. })
    }
}

static CRLF: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n"));

/// Takes every decodable byte of body out of `buf`, advancing `framing`.
/// `Err` on a malformed chunked encoding.
fn decode(buf: &mut BytesMut, framing: &mut Framing) -> Result<Option<Bytes>, BodyError> {
    let mut out: Option<BytesMut> = None;
    let mut first: Option<Bytes> = None;
    let emit = |data: Bytes, first: &mut Option<Bytes>, out: &mut Option<BytesMut>| {
        if data.is_empty() {
            return;
        }
        match (first.take(), out.as_mut()) {
            (None, None) => *first = Some(data),
            (Some(f), None) => {
                let mut joined = BytesMut::with_capacity(f.len() + data.len() + 512);
                joined.extend_from_slice(&f);
                joined.extend_from_slice(&data);
                *out = Some(joined);
            }
            (_, Some(o)) => o.extend_from_slice(&data),
        }
    };
    loop {
        match framing {
            Framing::Done { .. } => break,
            Framing::UntilClose => {
                let n = buf.len();
                emit(buf.split_to(n).freeze(), &mut first, &mut out);
                break;
            }
            Framing::Length { left, reusable } => {
                let n = (*left).min(buf.len() as u64) as usize;
                emit(buf.split_to(n).freeze(), &mut first, &mut out);
                *left -= n as u64;
                if *left == 0 {
                    *framing = Framing::Done {
                        reusable: *reusable,
                    };
                }
                break;
            }
            Framing::Chunked { state, reusable } => match *state {
                Chunk::Size => {
                    let Some(eol) = CRLF.find(buf) else {
                        if buf.len() > 1024 {
                            return Err(BodyError::Failed("chunk size line too long".into()));
                        }
                        break;
                    };
                    let line = &buf[..eol];
                    let hex = line.split(|&b| b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
                        .ok_or_else(|| BodyError::Failed("malformed chunk size".into()))?;
                    buf.advance(eol + 2);
                    *state = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        break;
                    }
                    let n = left.min(buf.len() as u64) as usize;
                    emit(buf.split_to(n).freeze(), &mut first, &mut out);
                    *state = if left == n as u64 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n as u64)
                    };
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        break;
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BodyError::Failed("missing CRLF after a chunk".into()));
                    }
                    buf.advance(2);
                    *state = Chunk::Size;
                }
                Chunk::Trailers => {
                    let Some(eol) = CRLF.find(buf) else {
                        if buf.len() > MAX_HEAD_BYTES {
                            return Err(BodyError::Failed("trailer line too long".into()));
                        }
                        break;
                    };
                    buf.advance(eol + 2);
                    if eol == 0 {
                        *framing = Framing::Done {
                            reusable: *reusable,
                        };
                    }
                }
            },
        }
    }
    Ok(out.map(BytesMut::freeze).or(first))
}

/// A response body read straight from its connection, in the polling task.
pub struct ResponseBody {
    conn: Option<Conn>,
    buf: BytesMut,
    framing: Framing,
    pool: Arc<Pool>,
    cap: Cap,
}

/// The size cap a body is read under, chosen by its content type.
enum Cap {
    /// A complete body: this many bytes are left.
    Whole { left: usize },
    /// Server-sent events: each event at most `max` bytes.
    Events { scanner: EventScanner, max: usize },
    /// A binary event stream (Bedrock): its framing caps each message itself.
    Framed,
}

impl Cap {
    fn of(headers: &HeaderMap, caps: UpstreamCaps) -> Cap {
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if content_type.starts_with("text/event-stream") {
            Cap::Events {
                scanner: EventScanner::default(),
                max: caps.event_bytes,
            }
        } else if content_type.starts_with("application/vnd.amazon.eventstream") {
            Cap::Framed
        } else {
            Cap::Whole {
                left: caps.body_bytes,
            }
        }
    }

    /// Checks the next decoded bytes against the cap.
    fn check(&mut self, data: &[u8]) -> Result<(), BodyError> {
        let passed = match self {
            Cap::Whole { left } => match left.checked_sub(data.len()) {
                Some(rest) => {
                    *left = rest;
                    None
                }
                None => Some(Oversize::Body),
            },
            Cap::Events { scanner, max } => {
                let mut longest = 0;
                let mut event_start = -(scanner.pending_len() as isize);
                scanner.feed(data, |end| {
                    longest = longest.max(end as isize - event_start);
                    event_start = end as isize;
                });
                let longest = (longest.max(0) as usize).max(scanner.pending_len());
                (longest > *max).then_some(Oversize::Event)
            }
            Cap::Framed => None,
        };
        match passed {
            None => Ok(()),
            Some(what) => {
                crate::metrics::count_upstream_oversize(what.label());
                Err(BodyError::TooLarge(what))
            }
        }
    }
}

impl ResponseBody {
    /// Hands the connection back to the pool if the body ended cleanly and it may be reused.
    fn release(&mut self) {
        if let (Framing::Done { reusable: true }, true) = (self.framing, self.buf.is_empty())
            && let Some(conn) = self.conn.take()
        {
            self.pool.put(conn);
        }
        self.conn = None;
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            let decoded = decode(&mut this.buf, &mut this.framing)?;
            if let Some(data) = &decoded
                && let Err(e) = this.cap.check(data)
            {
                // Never reused: the rest of the body is still on the wire.
                this.conn = None;
                this.buf.clear();
                this.framing = Framing::Done { reusable: false };
                return Poll::Ready(Some(Err(e)));
            }
            if this.framing.is_done() {
                this.release();
            }
            if let Some(data) = decoded {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if this.buf.capacity() - this.buf.len() < 4096 {
                this.buf.reserve(16 * 1024);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(conn),
                cx,
                &mut this.buf
            ))
            .map_err(|e| BodyError::Failed(e.to_string()))?;
            if n == 0 {
                if this.framing == Framing::UntilClose {
                    this.framing = Framing::Done { reusable: false };
                    this.conn = None;
                    return Poll::Ready(None);
                }
                this.conn = None;
                return Poll::Ready(Some(Err(BodyError::Failed(
                    "the upstream closed the connection mid-answer".into(),
                ))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done() && self.buf.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length { left, .. } => SizeHint::with_exact(left),
            Framing::Done { .. } => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], mut framing: Framing) -> (Vec<u8>, Framing) {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(data) = decode(&mut buf, &mut framing).unwrap() {
            out.extend_from_slice(&data);
        }
        (out, framing)
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in 0..wire.len() {
            let mut framing = Framing::Chunked {
                state: Chunk::Size,
                reusable: true,
            };
            let mut buf = BytesMut::from(&wire[..split]);
            let mut out = Vec::new();
            while let Some(d) = decode(&mut buf, &mut framing).unwrap() {
                out.extend_from_slice(&d);
            }
            buf.extend_from_slice(&wire[split..]);
            while let Some(d) = decode(&mut buf, &mut framing).unwrap() {
                out.extend_from_slice(&d);
            }
            assert_eq!(out, b"hello, world", "split at {split}");
            assert_eq!(framing, Framing::Done { reusable: true });
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn everything_decodable_comes_out_as_one_frame() {
        let mut framing = Framing::Chunked {
            state: Chunk::Size,
            reusable: true,
        };
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n3\r\ndef\r\n3\r\ngh"[..]);
        assert_eq!(
            decode(&mut buf, &mut framing).unwrap().as_deref(),
            Some(&b"abcdefgh"[..])
        );
        assert_eq!(decode(&mut buf, &mut framing).unwrap(), None);
    }

    #[test]
    fn bad_chunk_sizes_are_errors() {
        let mut framing = Framing::Chunked {
            state: Chunk::Size,
            reusable: true,
        };
        assert!(decode(&mut BytesMut::from(&b"zz\r\n"[..]), &mut framing).is_err());
        let mut framing = Framing::Chunked {
            state: Chunk::Trailers,
            reusable: true,
        };
        let endless = vec![b'x'; MAX_HEAD_BYTES + 1];
        assert!(decode(&mut BytesMut::from(&endless[..]), &mut framing).is_err());
    }

    #[test]
    fn caps_follow_the_content_type() {
        let caps = UpstreamCaps {
            body_bytes: 10,
            event_bytes: 10,
        };
        let typed = |t: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(t));
            Cap::of(&h, caps)
        };
        let mut json = typed("application/json");
        assert!(json.check(b"0123456789").is_ok());
        assert!(matches!(
            json.check(b"x"),
            Err(BodyError::TooLarge(Oversize::Body))
        ));
        // A stream may run long; each event may not.
        let mut sse = typed("text/event-stream");
        for _ in 0..10 {
            assert!(sse.check(b"data: 1\n\n").is_ok());
        }
        assert!(sse.check(b"data: 123").is_ok());
        assert!(matches!(
            sse.check(b"45"),
            Err(BodyError::TooLarge(Oversize::Event))
        ));
        // An event that starts, passes the cap and ends within one read is caught too.
        let mut sse = typed("text/event-stream");
        assert!(sse.check(b"data: 123456789\n\ndata: 1\n\n").is_err());
        let mut bedrock = typed("application/vnd.amazon.eventstream");
        assert!(bedrock.check(&[0; 100]).is_ok());
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let (out, framing) = decode_all(
            b"abcdef",
            Framing::Length {
                left: 4,
                reusable: true,
            },
        );
        assert_eq!(out, b"abcd");
        assert_eq!(framing, Framing::Done { reusable: true });
    }

    #[test]
    fn heads_parse_and_framing_follows_headers() {
        let wire = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nrest";
        let (status, headers, len, framing) = parse_head(wire).unwrap().unwrap();
        assert_eq!(status, 200);
        assert_eq!(&wire[len..], b"rest");
        assert_eq!(headers.len(), 2);
        assert!(matches!(framing, Framing::Chunked { reusable: true, .. }));
        let (status, _, _, framing) =
            parse_head(b"HTTP/1.1 429 Too Many\r\ncontent-length: 10\r\nconnection: close\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(status, 429);
        assert_eq!(
            framing,
            Framing::Length {
                left: 10,
                reusable: false
            }
        );
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le").unwrap(), None);
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        let framing = |head: &[u8]| parse_head(head).unwrap().unwrap().3;
        // The first content-length counts; any connection value naming close, any coding
        // naming chunked, whatever their case.
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 7\r\n\r\n"),
            Framing::Length {
                left: 5,
                reusable: true
            }
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n"),
            Framing::Done { reusable: false }
        );
        assert!(matches!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\ncontent-length: 3\r\n\r\n"
            ),
            Framing::Chunked { reusable: true, .. }
        ));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"),
            Framing::UntilClose
        );
        assert_eq!(
            framing(b"HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n"),
            Framing::Done { reusable: true }
        );
    }

    #[test]
    fn requests_are_encoded_in_one_buffer() {
        let auth = HeaderValue::from_static("Bearer x");
        let out = encode_request(
            "/v1/chat/completions",
            &HeaderValue::from_static("api.example.com"),
            &[(http::header::AUTHORIZATION, &auth)],
            b"{}",
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "POST /v1/chat/completions HTTP/1.1\r\nhost: api.example.com\r\nauthorization: Bearer x\r\ncontent-length: 2\r\n\r\n{}"
        );
    }
}
