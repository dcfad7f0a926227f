//! The connection to the Redis that all replicas share, and whether it is reachable now.
//!
//! Redis holds what replicas must agree on (rate-limit windows, deployment load, latency,
//! cooldowns). This module owns only the connection: its settings, a key namespace, and a
//! health flag that the users of Redis flip when a call fails and that a background probe
//! flips back once Redis answers again. Limiters and shared deployment state build on it;
//! while it is down they fall back to in-process state per [`FailurePolicy`].
//!
//! The handle is `switchboard_shared::redis_conn::RedisConn`: for a single server a
//! multiplexed, auto-reconnecting connection, for a Redis Cluster URL a cluster client, for a
//! `redis+sentinel://` URL the master the sentinels name (followed across a failover). Cloning it is
//! cheap and concurrent requests pipeline over one socket per node. The scripts run unchanged
//! on all three: every script call's keys share one hash tag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_shared::redis_conn::{RedisConn, RedisTarget};
use switchboard_shared::secret::SecretRef;
use switchboard_shared::validate::Problem;

/// The `redis:` section of the data plane's config. Absent: in-process state only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]` (or `rediss://`). A secret, since it may hold a
    /// password. Several URLs, comma-separated, or `redis+cluster://h1:7000,h2:7000`: a Redis
    /// Cluster (seed nodes); `redis+sentinel://s1:26379,s2:26379/<master name>`: a
    /// Sentinel-managed master (see `switchboard_shared::redis_conn`).
    pub url: SecretRef,
    /// Prefix of every key this deployment writes, so several deployments (or tests) can
    /// share one Redis. Rate-limit keys look like `<prefix>:rl:{t:<tenant>}:k:<key>:rpm`
    /// (see `limits::redis`).
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// A Redis call that takes longer counts as a failure (and the request proceeds per
    /// `failure_policy`).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// What admission does while Redis is unreachable.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// How often the local copy of shared deployment state is refreshed from Redis.
    #[serde(default = "default_refresh_ms")]
    pub refresh_ms: u64,
    /// Lifetime of a concurrency slot's lease: renewed every third of it while its request
    /// lives, so a crashed replica's slots come back within this time.
    #[serde(default = "default_concurrency_lease_ms")]
    pub concurrency_lease_ms: u64,
    /// Leasing slices of large rate limits and budgets, so that their requests are admitted
    /// without waiting for Redis (`limits::lease`).
    #[serde(default)]
    pub lease: LeaseConfig,
}

/// The `redis.lease` settings: each replica takes a slice of a large limit or budget from
/// Redis ahead of use and admits from it locally (see `limits::lease` and docs/limits.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// Off: every limited or budgeted request waits for its own admission in Redis.
    pub enabled: bool,
    /// A slice is this fraction of the limit (per minute) or of the budget's maximum.
    pub fraction: f64,
    /// A limit or budget is leased for a request only when its slice covers at least this
    /// many of the request's own units (1 request, its estimated tokens, its estimated cost);
    /// otherwise the request takes the exact path.
    pub min_requests: u32,
    /// A slice unused for this long is given back.
    pub idle_ms: u64,
    /// A slice is used for at most this long after its last refill, then given back.
    pub max_age_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            fraction: 0.001,
            min_requests: 10,
            idle_ms: 1_000,
            max_age_ms: 1_000,
        }
    }
}

impl LeaseConfig {
    /// Every problem with these settings, paths under `at` (e.g. `redis.lease`).
    fn problems(&self, at: &str, out: &mut Vec<Problem>) {
        let mut push = |field: &str, message: &str| {
            out.push(Problem {
                path: format!("{at}.{field}"),
                message: message.into(),
            });
        };
        if !(self.fraction > 0.0 && self.fraction <= 0.1) {
            push("fraction", "must be above 0 and at most 0.1");
        }
        if !(2..=1_000_000).contains(&self.min_requests) {
            push("min_requests", "must be between 2 and 1000000");
        }
        if !(100..=60_000).contains(&self.idle_ms) {
            push("idle_ms", "must be between 100 and 60000");
        }
        if !(100..=60_000).contains(&self.max_age_ms) {
            push("max_age_ms", "must be between 100 and 60000");
        }
    }
}

/// What to do about limits while Redis is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Keep serving, enforcing limits with this replica's in-process counters.
    #[default]
    Open,
    /// Refuse requests that have limits (503) until Redis is back.
    Closed,
}

fn default_key_prefix() -> String {
    "switchboard".into()
}
fn default_timeout_ms() -> u64 {
    50
}
fn default_refresh_ms() -> u64 {
    200
}
fn default_concurrency_lease_ms() -> u64 {
    15_000
}

impl RedisConfig {
    fn target<'a>(&'a self, url: &'a str) -> RedisTarget<'a> {
        let timeout = Duration::from_millis(self.timeout_ms);
        RedisTarget {
            url,
            connect_timeout: timeout.max(Duration::from_millis(250)),
            response_timeout: timeout,
        }
    }

    /// Every problem with these settings, paths under `at` (e.g. `redis`).
    pub fn problems(&self, at: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut push = |field: &str, message: String| {
            out.push(Problem {
                path: format!("{at}.{field}"),
                message,
            });
        };
        match self.url.resolve() {
            Err(e) => push("url", e.to_string()),
            Ok(url) => {
                // The problem names the scheme or mode; it never echoes the URL (which may
                // hold a password).
                if let Some(problem) = self.target(&url).problem() {
                    push("url", problem);
                }
            }
        }
        let prefix_ok = !self.key_prefix.is_empty()
            && self.key_prefix.len() <= 64
            && self
                .key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !prefix_ok {
            push(
                "key_prefix",
                "1–64 characters of letters, digits, '-', '_', '.', ':'".into(),
            );
        }
        if self.timeout_ms == 0 {
            push("timeout_ms", "must be positive".into());
        }
        if !(10..=10_000).contains(&self.refresh_ms) {
            push("refresh_ms", "must be between 10 and 10000".into());
        }
        if !(300..=600_000).contains(&self.concurrency_lease_ms) {
            push(
                "concurrency_lease_ms",
                "must be between 300 and 600000".into(),
            );
        }
        self.lease.problems(&format!("{at}.lease"), &mut out);
        out
    }
}

/// A shared, cloneable handle to Redis plus its reachability.
#[derive(Clone)]
pub struct SharedRedis {
    conn: RedisConn,
    prefix: Arc<str>,
    timeout: Duration,
    policy: FailurePolicy,
    refresh: Duration,
    lease: Duration,
    quota_lease: LeaseConfig,
    up: Arc<AtomicBool>,
}

impl std::fmt::Debug for SharedRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRedis")
            .field("prefix", &self.prefix)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl SharedRedis {
    /// Prepares the connection without waiting for Redis: a data plane starts (degraded)
    /// while Redis is down and connects when it comes up. Fails only on bad settings.
    pub fn connect(config: &RedisConfig) -> anyhow::Result<Self> {
        let url = config
            .url
            .resolve()
            .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let target = config.target(&url);
        if let Some(problem) = target.problem() {
            anyhow::bail!("redis.url: {problem}");
        }
        let conn =
            RedisConn::lazy(&target).map_err(|e| anyhow::anyhow!("redis: {}", e.category()))?;
        Ok(Self {
            conn,
            prefix: Arc::from(config.key_prefix.as_str()),
            timeout,
            policy: config.failure_policy,
            refresh: Duration::from_millis(config.refresh_ms),
            lease: Duration::from_millis(config.concurrency_lease_ms),
            quota_lease: config.lease,
            // Optimistic: the first call finds out.
            up: Arc::new(AtomicBool::new(true)),
        })
    }

    /// A handle for one command or pipeline; cheap to clone, multiplexed underneath.
    pub fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    /// The configured key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn policy(&self) -> FailurePolicy {
        self.policy
    }

    /// Lifetime of a concurrency lease (`concurrency_lease_ms`).
    pub fn lease_time(&self) -> Duration {
        self.lease
    }

    /// The `lease` settings: slices of large limits and budgets (`limits::lease`).
    pub fn quota_lease(&self) -> LeaseConfig {
        self.quota_lease
    }

    pub fn refresh_interval(&self) -> Duration {
        self.refresh
    }

    /// Whether the last call reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records a failed call. Returns true when this flips the state (log once, not per
    /// request).
    pub fn mark_down(&self) -> bool {
        self.up.swap(false, Ordering::Relaxed)
    }

    /// Records a successful call. Returns true when this flips the state.
    pub fn mark_up(&self) -> bool {
        !self.up.swap(true, Ordering::Relaxed)
    }

    /// One `PING`, bounded by the timeout; updates the health flag.
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn();
        let ok = tokio::time::timeout(
            self.timeout.max(Duration::from_millis(250)),
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if ok {
            self.mark_up();
        } else {
            self.mark_down();
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> RedisConfig {
        RedisConfig {
            url: SecretRef::Value(url.into()),
            key_prefix: default_key_prefix(),
            timeout_ms: default_timeout_ms(),
            failure_policy: FailurePolicy::Open,
            refresh_ms: default_refresh_ms(),
            concurrency_lease_ms: default_concurrency_lease_ms(),
            lease: LeaseConfig::default(),
        }
    }

    #[test]
    fn bad_settings_are_listed_without_echoing_the_url() {
        let mut c = config("http://user:hunter2@host");
        c.key_prefix = "has space".into();
        c.timeout_ms = 0;
        c.refresh_ms = 5;
        let problems = c.problems("redis");
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "redis.url",
                "redis.key_prefix",
                "redis.timeout_ms",
                "redis.refresh_ms"
            ]
        );
        assert!(problems.iter().all(|p| !p.message.contains("hunter2")));
        assert!(
            config("redis://127.0.0.1:6379")
                .problems("redis")
                .is_empty()
        );
    }

    #[test]
    fn yaml_defaults_apply() {
        let c: RedisConfig = serde_yaml_ng::from_str("url: { value: 'redis://h:1' }").unwrap();
        assert_eq!(c.key_prefix, "switchboard");
        assert_eq!(c.failure_policy, FailurePolicy::Open);
        let c: RedisConfig =
            serde_yaml_ng::from_str("url: { env: R }\nfailure_policy: closed").unwrap();
        assert_eq!(c.failure_policy, FailurePolicy::Closed);
        assert!(serde_yaml_ng::from_str::<RedisConfig>("url: { env: R }\nbogus: 1").is_err());
    }

    #[test]
    fn lease_settings_default_on_and_are_validated() {
        let c: RedisConfig = serde_yaml_ng::from_str("url: { value: 'redis://h:1' }").unwrap();
        assert_eq!(c.lease, LeaseConfig::default());
        assert!(c.lease.enabled && c.problems("redis").is_empty());
        let c: RedisConfig = serde_yaml_ng::from_str(
            "url: { value: 'redis://h:1' }\nlease: { fraction: 0.5, min_requests: 1, idle_ms: 0, max_age_ms: 99 }",
        )
        .unwrap();
        let paths: Vec<String> = c.problems("redis").into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "redis.lease.fraction",
                "redis.lease.min_requests",
                "redis.lease.idle_ms",
                "redis.lease.max_age_ms"
            ]
        );
        let off: RedisConfig =
            serde_yaml_ng::from_str("url: { env: R }\nlease: { enabled: false }").unwrap();
        assert!(!off.lease.enabled);
        assert_eq!(off.lease.fraction, LeaseConfig::default().fraction);
        assert!(
            serde_yaml_ng::from_str::<RedisConfig>("url: { env: R }\nlease: { bogus: 1 }").is_err()
        );
    }

    #[tokio::test]
    async fn an_unreachable_redis_marks_itself_down_and_recovers_nothing_by_itself() {
        // Port 1 refuses at once on loopback.
        let redis = SharedRedis::connect(&config("redis://127.0.0.1:1")).unwrap();
        assert!(redis.is_up());
        assert!(!redis.ping().await);
        assert!(!redis.is_up());
        assert!(redis.mark_up());
        assert!(!redis.mark_up());
    }
}
