//! One Redis connection type for both planes, whatever the Redis deployment: a single server,
//! a Redis Cluster, or a Sentinel-managed master that fails over.
//!
//! Both planes run the same scripts and pipelines (rate-limit cells, budget counters, shared
//! deployment state) and must not care which of the three they talk to. [`RedisConn`]
//! implements `redis::aio::ConnectionLike`, so `cmd.query_async(&mut conn)`, pipelines and
//! `Script::load_async` work unchanged on each:
//!
//! - **standalone**: `ConnectionManager` (multiplexed, reconnects by itself);
//! - **cluster**: `cluster_async::ClusterConnection`, which follows `MOVED`/`ASK` and slot
//!   changes after a failover. Every script call's keys share one hash tag (see the key
//!   layouts in the planes), so a script runs on one node. A *pipeline* may mix keys of several
//!   slots (a batch of settlements, several models' state): it is split into one sub-pipeline
//!   per hash tag, sent concurrently, and the replies put back in order; keyless commands in it
//!   (`SCRIPT LOAD`) are sent first, one by one, routed by the cluster client (`SCRIPT LOAD`
//!   goes to every node);
//! - **sentinel**: the master the sentinels name, over a multiplexed connection that is
//!   dropped when a call fails by I/O, times out or finds the server read-only (a demoted
//!   master), so the next call asks the sentinels again and reaches the promoted replica.
//!
//! Nothing connects before the first call: a plane starts while Redis is down. Errors never
//! carry the URL (it may hold a password); callers report `e.category()`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};

/// Where Redis is and how long its calls may take. The URL picks the deployment:
///
/// - `redis://[:password@]host:port[/db]` (or `rediss://`): one server;
/// - several such URLs, comma-separated, or `redis+cluster://[:password@]h1:7000[,h2:7000…]`:
///   a Redis Cluster, these being seed nodes (the rest are discovered);
/// - `redis+sentinel://[:password@]s1:26379[,s2:26379…]/<master name>[/db]`: the master the
///   sentinels monitor under that name (the password, if any, is the master's and the
///   sentinels').
///
/// `user:password@` logs in as a Redis ACL user (`AUTH user password`), `:password@` as the
/// default user. `rediss://` is TLS (rustls): the server's certificate must chain to the
/// system's roots, or to the CA in the PEM file a `ca_file=/path` query parameter names
/// (`rediss://sb:pw@redis:6380/?ca_file=/etc/switchboard/redis-ca.pem`; for every URL of a
/// cluster list; not with `redis+sentinel://`).
#[derive(Clone)]
pub struct RedisTarget<'a> {
    pub url: &'a str,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

/// The deployment a URL names, as URLs the `redis` crate understands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Topology {
    Standalone(String),
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        db: i64,
    },
}

/// `url` without its `ca_file=` query parameter, and that parameter's path (decoded).
fn split_ca_file(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut ca_file = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|param| match param.strip_prefix("ca_file=") {
            Some(path) => {
                ca_file = Some(crate::cluster::percent_decode(path));
                false
            }
            None => !param.is_empty(),
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, ca_file)
}

/// The CA named by the URLs' `ca_file` (the same for all), read.
fn read_ca_file(urls: &[String]) -> Result<(Vec<String>, Option<Vec<u8>>), String> {
    let mut path = None;
    let mut stripped = Vec::with_capacity(urls.len());
    for url in urls {
        let (url, ca) = split_ca_file(url);
        if ca.is_some() && path.is_some() && ca != path {
            return Err("every URL of a cluster list must name the same ca_file".into());
        }
        path = path.or(ca);
        stripped.push(url);
    }
    let Some(path) = path else {
        return Ok((stripped, None));
    };
    if stripped.iter().any(|u| !u.starts_with("rediss://")) {
        return Err("ca_file needs a rediss:// URL".into());
    }
    let pem = std::fs::read(&path).map_err(|e| format!("ca_file {path}: {e}"))?;
    Ok((stripped, Some(pem)))
}

fn tls_certificates(ca: Vec<u8>) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca),
    }
}

impl RedisTarget<'_> {
    /// What is wrong with the URL, if anything; never echoes it.
    pub fn problem(&self) -> Option<String> {
        let topology = self.topology().err();
        topology.or_else(|| match self.topology() {
            Ok(Topology::Standalone(url)) => read_ca_file(&[url]).err(),
            Ok(Topology::Cluster(urls)) => read_ca_file(&urls).err(),
            _ => None,
        })
    }

    /// `standalone`, `cluster` or `sentinel` (for logs and metrics; never the URL).
    pub fn mode(&self) -> &'static str {
        match self.topology() {
            Ok(Topology::Cluster(_)) => "cluster",
            Ok(Topology::Sentinel { .. }) => "sentinel",
            _ => "standalone",
        }
    }

    fn topology(&self) -> Result<Topology, String> {
        let url = self.url.trim();
        let check = |u: &str| {
            redis::Client::open(split_ca_file(u).0.as_str())
                .map(|_| ())
                .map_err(|e| format!("not a Redis URL: {}", e.category()))
        };
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            if rest.contains("ca_file=") {
                return Err("ca_file is not supported with redis+sentinel://".into());
            }
            return sentinel_topology(rest, &check);
        }
        let (urls, cluster): (Vec<String>, bool) =
            if let Some(rest) = url.strip_prefix("redis+cluster://") {
                let (auth, hosts) = split_auth(rest);
                let urls = hosts
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(|h| format!("redis://{auth}{h}"))
                    .collect();
                (urls, true)
            } else {
                let urls: Vec<String> = url
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect();
                let several = urls.len() > 1;
                (urls, several)
            };
        if urls.is_empty() {
            return Err("no Redis URL".into());
        }
        for u in &urls {
            check(u)?;
        }
        Ok(if cluster {
            Topology::Cluster(urls)
        } else {
            Topology::Standalone(urls.into_iter().next().unwrap_or_default())
        })
    }
}

/// `user:password@` (with the `@`) and the rest.
fn split_auth(rest: &str) -> (&str, &str) {
    match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    }
}

fn sentinel_topology(
    rest: &str,
    check: &dyn Fn(&str) -> Result<(), String>,
) -> Result<Topology, String> {
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (auth, hosts) = split_auth(hosts);
    let mut path = path.split('/');
    let master = path.next().unwrap_or_default().to_owned();
    if master.is_empty() {
        return Err("redis+sentinel:// needs the master's name as its path".into());
    }
    let db = match path.next() {
        None | Some("") => 0,
        Some(db) => db
            .parse()
            .map_err(|_| "the database after the master's name must be a number".to_owned())?,
    };
    let sentinels: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{auth}{h}"))
        .collect();
    if sentinels.is_empty() {
        return Err("redis+sentinel:// needs at least one sentinel".into());
    }
    for u in &sentinels {
        check(u)?;
    }
    Ok(Topology::Sentinel {
        sentinels,
        master,
        db,
    })
}

/// A cheap-to-clone handle to Redis, for one command or pipeline at a time.
#[derive(Clone)]
pub struct RedisConn(Inner);

#[derive(Clone)]
enum Inner {
    Standalone(ConnectionManager),
    Cluster(Arc<Lazy<ClusterClient, ClusterConnection>>),
    Sentinel(Arc<Lazy<tokio::sync::Mutex<SentinelClient>, MultiplexedConnection>>),
}

/// A connection made on first use (and again after [`Lazy::forget`]).
struct Lazy<C, K> {
    client: C,
    conn: RwLock<Option<K>>,
    connecting: tokio::sync::Mutex<()>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl<C, K: Clone> Lazy<C, K> {
    fn new(client: C, target: &RedisTarget<'_>) -> Self {
        Self {
            client,
            conn: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            connect_timeout: target.connect_timeout,
            response_timeout: target.response_timeout,
        }
    }

    fn current(&self) -> Option<K> {
        self.conn.read().ok().and_then(|c| c.clone())
    }

    fn forget(&self) {
        if let Ok(mut c) = self.conn.write() {
            *c = None;
        }
    }

    /// The connection, made now under one lock if there is none (one connect at a time,
    /// bounded by the connect timeout).
    async fn get<'a, F, Fut>(&'a self, connect: F) -> RedisResult<K>
    where
        F: FnOnce(&'a C) -> Fut,
        Fut: std::future::Future<Output = RedisResult<K>>,
    {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let made = tokio::time::timeout(self.connect_timeout, connect(&self.client))
            .await
            .map_err(|_| RedisError::from((ErrorKind::Io, "connect timed out")))??;
        if let Ok(mut c) = self.conn.write() {
            *c = Some(made.clone());
        }
        Ok(made)
    }
}

impl RedisConn {
    /// Prepares the connection without connecting. Fails only on bad settings.
    pub fn lazy(target: &RedisTarget<'_>) -> RedisResult<Self> {
        let topology = target.topology().map_err(|problem| {
            RedisError::from((ErrorKind::InvalidClientConfig, "bad Redis URL", problem))
        })?;
        Ok(Self(match topology {
            Topology::Standalone(url) => {
                let (url, ca) = read_ca_file(&[url]).map_err(bad_ca)?;
                let url = url.concat();
                let client = match ca {
                    Some(ca) => redis::Client::build_with_tls(url.as_str(), tls_certificates(ca))?,
                    None => redis::Client::open(url.as_str())?,
                };
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(target.connect_timeout))
                    .set_response_timeout(Some(target.response_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Inner::Standalone(ConnectionManager::new_lazy_with_config(client, config)?)
            }
            Topology::Cluster(urls) => {
                // No response timeout here: the callers bound each call themselves, and the
                // cluster client's own timeout retries (and, under load, over-admitted in
                // tests: replies of timed-out calls). One retry follows a MOVED/ASK after a
                // failover or resharding.
                let (urls, ca) = read_ca_file(&urls).map_err(bad_ca)?;
                let mut builder = ClusterClient::builder(urls);
                if let Some(ca) = ca {
                    builder = builder.certs(tls_certificates(ca));
                }
                let client = builder
                    .connection_timeout(target.connect_timeout)
                    .retries(1)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()?;
                let lazy = Arc::new(Lazy::new(client, target));
                // Discovering a cluster takes several round trips: start now, in the
                // background, so that the first requests need not wait for it.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let early = lazy.clone();
                    runtime.spawn(async move { cluster_conn(&early).await.is_ok() });
                }
                Inner::Cluster(lazy)
            }
            Topology::Sentinel {
                sentinels,
                master,
                db,
            } => {
                let first = redis::IntoConnectionInfo::into_connection_info(sentinels[0].as_str())?;
                let node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(first.redis_settings().clone().set_db(db));
                let client = SentinelClient::build(
                    sentinels,
                    master,
                    Some(node),
                    SentinelServerType::Master,
                )?;
                Inner::Sentinel(Arc::new(Lazy::new(tokio::sync::Mutex::new(client), target)))
            }
        }))
    }

    /// Whether this is a Redis Cluster, where a script's keys must share a slot (callers that
    /// coalesce calls group them by [`hash_tag`]).
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Inner::Cluster(_))
    }

    async fn command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match &mut self.0 {
            Inner::Standalone(c) => c.req_packed_command(cmd).await,
            Inner::Cluster(lazy) => cluster_conn(lazy).await?.req_packed_command(cmd).await,
            Inner::Sentinel(lazy) => {
                let mut conn = sentinel_conn(lazy).await?;
                let reply = conn.req_packed_command(cmd).await;
                forget_if_lost(lazy, &reply);
                reply
            }
        }
    }

    async fn commands(
        &mut self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match &mut self.0 {
            Inner::Standalone(c) => c.req_packed_commands(pipeline, offset, count).await,
            Inner::Cluster(lazy) => {
                let conn = cluster_conn(lazy).await?;
                if pipeline.is_transaction() {
                    let mut conn = conn;
                    return conn.req_packed_commands(pipeline, offset, count).await;
                }
                split_pipeline(conn, pipeline).await
            }
            Inner::Sentinel(lazy) => {
                let mut conn = sentinel_conn(lazy).await?;
                let reply = conn.req_packed_commands(pipeline, offset, count).await;
                forget_if_lost(lazy, &reply);
                reply
            }
        }
    }
}

/// A `ca_file` problem as a client-config error (the message names the file, not the URL).
fn bad_ca(problem: String) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, "bad Redis ca_file", problem))
}

async fn cluster_conn(
    lazy: &Lazy<ClusterClient, ClusterConnection>,
) -> RedisResult<ClusterConnection> {
    lazy.get(|client| client.get_async_connection()).await
}

async fn sentinel_conn(
    lazy: &Lazy<tokio::sync::Mutex<SentinelClient>, MultiplexedConnection>,
) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(lazy.connect_timeout))
        .set_response_timeout(Some(lazy.response_timeout));
    lazy.get(|client| async move {
        client
            .lock()
            .await
            .get_async_connection_with_config(&config)
            .await
    })
    .await
}

/// After a failover the old master is gone (I/O errors, timeouts) or demoted (`READONLY`):
/// forget the connection so that the next call asks the sentinels for the master again.
fn forget_if_lost<T, K: Clone>(lazy: &Lazy<impl Sized, K>, reply: &RedisResult<T>) {
    if let Err(e) = reply
        && (e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly))
    {
        lazy.forget();
    }
}

/// The part of a command's first key that picks its cluster slot (the hash tag, if any);
/// `None` for a keyless command. `EVAL`/`EVALSHA` name their keys after the key count.
fn slot_part(cmd: &Cmd) -> Option<Vec<u8>> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => b,
            _ => &b""[..],
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let count: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if count == 0 {
                return None;
            }
            args.get(3)?
        }
        b"SCRIPT" | b"PING" | b"INFO" | b"CLUSTER" | b"CONFIG" | b"FLUSHALL" | b"FLUSHDB"
        | b"DBSIZE" | b"FUNCTION" => return None,
        _ => args.get(1)?,
    };
    Some(hash_tag(key).to_vec())
}

/// Redis Cluster's rule: the bytes between the first `{` and the next `}`, if not empty;
/// else the whole key. Keys with the same tag live in one slot.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|b| *b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|b| *b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// Sends a pipeline whose commands may live in different slots: keyless commands first, one
/// by one, then one sub-pipeline per hash tag, concurrently; replies in the pipeline's order.
async fn split_pipeline(conn: ClusterConnection, pipeline: &Pipeline) -> RedisResult<Vec<Value>> {
    let mut groups: Vec<(Vec<u8>, Pipeline, Vec<usize>)> = Vec::new();
    let mut replies: Vec<Option<Value>> = Vec::new();
    let mut keyless = Vec::new();
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        replies.push(None);
        match slot_part(cmd) {
            None => keyless.push((i, cmd)),
            Some(tag) => match groups.iter_mut().find(|(t, _, _)| *t == tag) {
                Some((_, p, at)) => {
                    p.add_command(cmd.clone());
                    at.push(i);
                }
                None => {
                    let mut p = Pipeline::new();
                    p.add_command(cmd.clone());
                    groups.push((tag, p, vec![i]));
                }
            },
        }
    }
    for (i, cmd) in keyless {
        let mut c = conn.clone();
        replies[i] = Some(c.req_packed_command(cmd).await?);
    }
    let sent = groups.iter().map(|(_, p, _)| {
        let mut c = conn.clone();
        async move { c.req_packed_commands(p, 0, p.len()).await }
    });
    let answers = futures_util::future::try_join_all(sent).await?;
    for ((_, _, at), values) in groups.iter().zip(answers) {
        for (i, v) in at.iter().zip(values) {
            replies[*i] = Some(v);
        }
    }
    Ok(replies
        .into_iter()
        .map(|v| v.unwrap_or(Value::Nil))
        .collect())
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.commands(pipeline, offset, count))
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Standalone(c) => c.get_db(),
            Inner::Cluster(_) | Inner::Sentinel(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(url: &str) -> Result<Topology, String> {
        RedisTarget {
            url,
            connect_timeout: Duration::from_millis(100),
            response_timeout: Duration::from_millis(100),
        }
        .topology()
    }

    #[test]
    fn the_url_picks_the_deployment_and_problems_never_echo_it() {
        assert_eq!(
            topology("redis://h:1/2"),
            Ok(Topology::Standalone("redis://h:1/2".into()))
        );
        assert_eq!(
            topology("redis://h:1, redis://h:2"),
            Ok(Topology::Cluster(vec![
                "redis://h:1".into(),
                "redis://h:2".into()
            ]))
        );
        assert_eq!(
            topology("redis+cluster://:pw@h:1,h:2"),
            Ok(Topology::Cluster(vec![
                "redis://:pw@h:1".into(),
                "redis://:pw@h:2".into()
            ]))
        );
        assert_eq!(
            topology("redis+sentinel://:pw@s:1,s:2/main/3"),
            Ok(Topology::Sentinel {
                sentinels: vec!["redis://:pw@s:1".into(), "redis://:pw@s:2".into()],
                master: "main".into(),
                db: 3,
            })
        );
        for bad in [
            "",
            "redis+sentinel://s:1",
            "redis+sentinel://s:1/m/x",
            "redis+sentinel:///m",
            "redis://h:1,http://u:hunter2@h",
            "http://u:hunter2@h",
        ] {
            let problem = topology(bad).unwrap_err();
            assert!(!problem.contains("hunter2"), "{problem}");
        }
    }

    #[test]
    fn a_ca_file_parameter_is_taken_off_the_url() {
        assert_eq!(
            split_ca_file("rediss://u:p@h:1/0?ca_file=%2Fetc%2Fca.pem&protocol=resp3"),
            (
                "rediss://u:p@h:1/0?protocol=resp3".to_owned(),
                Some("/etc/ca.pem".to_owned())
            )
        );
        assert_eq!(split_ca_file("rediss://h:1/?ca_file=/x").0, "rediss://h:1/");
        assert_eq!(split_ca_file("redis://h:1").1, None);
        let problem = |url: &str| {
            RedisTarget {
                url,
                connect_timeout: Duration::from_millis(100),
                response_timeout: Duration::from_millis(100),
            }
            .problem()
            .unwrap_or_default()
        };
        assert!(problem("redis://:hunter2@h:1/?ca_file=/x").contains("needs a rediss:// URL"));
        assert!(problem("rediss://:hunter2@h:1/?ca_file=/no/such/file").contains("/no/such/file"));
        assert!(!problem("rediss://:hunter2@h:1/?ca_file=/no/such/file").contains("hunter2"));
        assert!(problem("redis+sentinel://s:1/m?ca_file=/x").contains("not supported"));
    }

    #[test]
    fn commands_group_by_hash_tag() {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg("abc")
            .arg(2)
            .arg("p:rl:{t:a}:rpm")
            .arg("p:budget:{t:a}:x");
        assert_eq!(slot_part(&evalsha).unwrap(), b"t:a");
        let mut keyless = redis::cmd("EVALSHA");
        keyless.arg("abc").arg(0).arg("x");
        assert_eq!(slot_part(&keyless), None);
        assert_eq!(slot_part(redis::cmd("GET").arg("plain")).unwrap(), b"plain");
        assert_eq!(slot_part(redis::cmd("GET").arg("a{}b")).unwrap(), b"a{}b");
        assert_eq!(slot_part(redis::cmd("SCRIPT").arg("LOAD").arg("x")), None);
    }
}
