//! Sharing deployment state through Redis, off the request path.
//!
//! One background task per process. Every `redis.refresh_ms` it sends one pipeline with one
//! script call per deployment; each call, on that deployment's own hash
//! (`<prefix>:fleet:{<deployment id>}`, one key so that it works on Redis Cluster too):
//!
//! 1. adds this replica's requests, tokens and failures since the last tick to the minute's
//!    totals (`m`, `rq`, `tk`, `fl`; a new minute starts them again);
//! 2. sets this replica's in-flight count (`if:<replica>`) and latency/TTFT averages
//!    (`lat:<replica>`), stamped with the time, and drops fields of replicas gone quiet;
//! 3. applies this replica's breaker changes to `until` (an opening only ever lengthens it; a
//!    closing applies only to the episode it closes) and, for a half-open breaker that a
//!    request here wanted to probe, claims the cluster's single probe (`probe`);
//! 4. stores the last permanent error an upstream answered (`err`, once per error) and the
//!    upstream's latest quota reading (`q`), for the control plane's health API;
//! 5. returns the whole hash, from which the task sets the local cache.
//!
//! When Redis fails, the task flips [`SharedRedis`]'s flag (logging once), and every
//! deployment decides on its own numbers again until a later tick succeeds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use switchboard_shared::fleet_keys::{deployment_state, prefix_index};

use super::DeploymentState;
use super::breaker::unix_ms;
use super::load::{ClusterLoad, LATENCY_STALE_MS, minute_of};
use super::prefix::PrefixIndex;
use crate::shared_redis::SharedRedis;

const SCRIPT: &str = r"
local k = KEYS[1]
local replica = ARGV[1]
local now = tonumber(ARGV[2])
local minute = tonumber(ARGV[3])
local stale = tonumber(ARGV[14])
local m = tonumber(redis.call('HGET', k, 'm') or '0')
if minute > m then
  redis.call('HSET', k, 'm', minute, 'rq', 0, 'tk', 0, 'fl', 0)
  m = minute
end
if minute == m then
  redis.call('HINCRBY', k, 'rq', ARGV[4])
  redis.call('HINCRBY', k, 'tk', ARGV[5])
  redis.call('HINCRBY', k, 'fl', ARGV[6])
end
redis.call('HSET', k, 'if:' .. replica, ARGV[7] .. ':' .. now,
  'lat:' .. replica, ARGV[8] .. ':' .. ARGV[9] .. ':' .. ARGV[10] .. ':' .. ARGV[11])
local until_ms = tonumber(redis.call('HGET', k, 'until') or '0')
local open = tonumber(ARGV[12])
local close = tonumber(ARGV[13])
if close > 0 and until_ms == close then
  until_ms = 0
  redis.call('HSET', k, 'until', 0)
  redis.call('HDEL', k, 'probe')
end
if open > until_ms then
  until_ms = open
  redis.call('HSET', k, 'until', open)
  redis.call('HDEL', k, 'probe')
end
if ARGV[15] == '1' and until_ms > 0 and until_ms <= now then
  local probe = redis.call('HGET', k, 'probe')
  local claim = true
  if probe then
    local ep, at = string.match(probe, '^(%d+):(%d+):')
    if tonumber(ep) == until_ms and now - tonumber(at) < tonumber(ARGV[16]) then
      claim = false
    end
  end
  if claim then
    redis.call('HSET', k, 'probe', until_ms .. ':' .. now .. ':' .. replica)
  end
end
local all = redis.call('HGETALL', k)
for i = 1, #all, 2 do
  local f = all[i]
  if string.sub(f, 1, 3) == 'if:' then
    local at = tonumber(string.match(all[i + 1], ':(%d+)$') or '0')
    if now - at > stale * 30 then
      redis.call('HDEL', k, f, 'lat:' .. string.sub(f, 4))
    end
  end
end
if ARGV[17] ~= '' then redis.call('HSET', k, 'err', ARGV[17]) end
if ARGV[18] ~= '' then redis.call('HSET', k, 'q', ARGV[18]) end
redis.call('PEXPIRE', k, 3600000)
return all
";

/// How long a probe claim holds before another replica may claim it.
const PROBE_CLAIM_MS: u64 = 30_000;
/// Entries kept in each model's prefix stream (approximately; each holds one tick's keys).
const PREFIX_STREAM_LEN: u64 = 2_000;
/// Stream entries read per model per tick.
const PREFIX_READ_COUNT: u64 = 200;

/// What the task syncs, read from the serving catalog each tick. `fleet` sits below the
/// catalog (the catalog holds each deployment's [`DeploymentState`]), so the catalog is
/// reached through this trait, which the server implements for it.
pub trait Synced: Send + Sync + 'static {
    /// Every deployment's id and state.
    fn deployments(&self) -> Vec<(&str, &Arc<DeploymentState>)>;
    /// Every model with a prefix index (the `prefix_affinity` strategy).
    fn prefix_models(&self) -> Vec<PrefixModel<'_>>;
}

/// One `prefix_affinity` model, as [`share_prefixes`] needs it.
#[derive(Debug)]
pub struct PrefixModel<'a> {
    pub name: &'a str,
    pub index: &'a PrefixIndex,
    /// The model's deployment ids, in the order the index numbers them.
    pub deployments: Vec<&'a str>,
}

/// Starts the task that keeps the deployments of the serving catalog (`current()`, `None`
/// before the first snapshot) in sync with Redis.
pub fn spawn<C: Synced>(
    current: impl Fn() -> Option<Arc<C>> + Send + 'static,
    redis: SharedRedis,
) -> tokio::task::JoinHandle<()> {
    let replica = uuid::Uuid::now_v7().simple().to_string();
    tokio::spawn(async move {
        let script = Script::new(SCRIPT);
        let mut cursors: HashMap<String, String> = HashMap::new();
        let mut ticker = tokio::time::interval(redis.refresh_interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(catalog) = current() else {
                continue;
            };
            let deployments = catalog.deployments();
            if deployments.is_empty() {
                continue;
            }
            tick(&redis, &script, &replica, &deployments).await;
            if redis.is_up() {
                share_prefixes(&redis, &catalog.prefix_models(), &mut cursors).await;
            }
        }
    })
}

/// One exchange with Redis for every deployment. Public for tests.
pub async fn tick(
    redis: &SharedRedis,
    script: &Script,
    replica: &str,
    deployments: &[(&str, &Arc<DeploymentState>)],
) {
    let now = unix_ms();
    let stale_ms = u64::try_from(redis.refresh_interval().as_millis())
        .unwrap_or(1000)
        .max(100)
        * 10;
    let mut pipe = redis::pipe();
    let mut pending = Vec::with_capacity(deployments.len());
    for (id, state) in deployments {
        let flush = state.load.take_flush();
        let (open, close) = state.breaker.take_pending();
        let wants_probe = state.breaker.take_probe_wish();
        pending.push((flush, open, close, wants_probe));
        pipe.cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(1)
            .arg(deployment_state(redis.prefix(), id))
            .arg(replica)
            .arg(now)
            .arg(minute_of(now))
            .arg(flush.requests)
            .arg(flush.tokens)
            .arg(flush.failures)
            .arg(flush.inflight)
            .arg(flush.latency.to_string())
            .arg(flush.latency_at_ms)
            .arg(flush.ttft.to_string())
            .arg(flush.ttft_at_ms)
            .arg(open)
            .arg(close)
            .arg(stale_ms)
            .arg(if wants_probe { "1" } else { "0" })
            .arg(PROBE_CLAIM_MS)
            .arg(state.take_unsent_error().unwrap_or_default())
            .arg(
                state
                    .quota
                    .reading()
                    .map(|q| q.encode())
                    .unwrap_or_default(),
            );
    }
    let mut conn = redis.conn();
    let deadline = redis.timeout().max(Duration::from_millis(200));
    let mut result =
        tokio::time::timeout(deadline, pipe.query_async::<Vec<Vec<String>>>(&mut conn)).await;
    if let Ok(Err(e)) = &result
        && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
    {
        // First use on this server (or after a restart): load the script and try again.
        // The counts were taken already, so the retry sends the same pipeline.
        if script.load_async(&mut conn).await.is_ok() {
            result =
                tokio::time::timeout(deadline, pipe.query_async::<Vec<Vec<String>>>(&mut conn))
                    .await;
        }
    }
    match result {
        Ok(Ok(hashes)) if hashes.len() == deployments.len() => {
            if redis.mark_up() {
                tracing::info!("shared deployment state: Redis reachable again");
            }
            for ((_, state), fields) in deployments.iter().zip(&hashes) {
                let view = read_hash(fields, replica, now, stale_ms);
                state.load.apply_cluster(&view.load);
                state
                    .breaker
                    .apply_cluster(view.open_until_ms, view.probe_is_ours);
            }
        }
        other => {
            if redis.mark_down() {
                let reason = match other {
                    Err(_) => "timed out".to_owned(),
                    Ok(Err(e)) => e.category().to_owned(),
                    Ok(Ok(_)) => "unexpected answer".to_owned(),
                };
                tracing::warn!(
                    reason,
                    "shared deployment state: Redis unreachable; routing on this replica's own view"
                );
            }
            for ((_, state), (_, open, close, wants_probe)) in deployments.iter().zip(pending) {
                state.breaker.restore_pending(open, close);
                if wants_probe {
                    state.breaker.wish_probe();
                }
                state.breaker.go_local();
                state.load.go_local();
            }
        }
    }
}

/// Sends this replica's new prefix-index entries to each `prefix_affinity` model's stream
/// (`<prefix>:pfx:{<model>}`, capped) and learns the entries written since the last read.
/// `cursors` holds the last stream id read per model.
pub async fn share_prefixes(
    redis: &SharedRedis,
    models: &[PrefixModel<'_>],
    cursors: &mut HashMap<String, String>,
) {
    if models.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    for model in models {
        let key = prefix_index(redis.prefix(), model.name);
        let entries = model.index.drain();
        if !entries.is_empty() {
            let cmd = pipe
                .cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(PREFIX_STREAM_LEN)
                .arg("*");
            for (block_key, d) in entries {
                let id = model.deployments.get(usize::from(d)).copied().unwrap_or("");
                cmd.arg(format!("{block_key:x}")).arg(id);
            }
            pipe.ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(3_600_000).ignore();
        }
        let from = cursors
            .get(model.name)
            .map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        pipe.cmd("XRANGE")
            .arg(&key)
            .arg(from)
            .arg("+")
            .arg("COUNT")
            .arg(PREFIX_READ_COUNT);
    }
    let mut conn = redis.conn();
    let deadline = redis.timeout().max(Duration::from_millis(200));
    type Entries = Vec<(String, Vec<String>)>;
    let Ok(Ok(read)) =
        tokio::time::timeout(deadline, pipe.query_async::<Vec<Entries>>(&mut conn)).await
    else {
        return; // best effort: the breaker/load sync reports Redis health
    };
    for (model, entries) in models.iter().zip(read) {
        for (id, fields) in &entries {
            for pair in fields.chunks_exact(2) {
                let (Ok(block_key), Some(d)) = (
                    u64::from_str_radix(&pair[0], 16),
                    model.deployments.iter().position(|dep| *dep == pair[1]),
                ) else {
                    continue;
                };
                model.index.learn(block_key, d);
            }
            cursors.insert(model.name.to_owned(), id.clone());
        }
    }
}

/// The parts of a deployment's hash this replica uses.
#[derive(Debug, Default, PartialEq)]
pub struct HashView {
    pub load: ClusterLoad,
    pub open_until_ms: u64,
    pub probe_is_ours: bool,
}

/// Reads a flat `HGETALL` answer.
pub fn read_hash(fields: &[String], replica: &str, now_ms: u64, stale_ms: u64) -> HashView {
    let mut v = HashView::default();
    let mut probe: Option<(u64, bool)> = None;
    let num = |s: &str| s.parse::<u64>().unwrap_or(0);
    for pair in fields.chunks_exact(2) {
        let (name, value) = (pair[0].as_str(), pair[1].as_str());
        match name {
            "m" => v.load.minute = num(value),
            "rq" => v.load.requests = num(value),
            "tk" => v.load.tokens = num(value),
            "fl" => v.load.failures = num(value),
            "until" => v.open_until_ms = num(value),
            "probe" => {
                let mut parts = value.splitn(3, ':');
                let episode = parts.next().map_or(0, num);
                let _claimed_at = parts.next();
                probe = Some((episode, parts.next() == Some(replica)));
            }
            _ => {
                if let Some(who) = name.strip_prefix("if:") {
                    let Some((n, at)) = value.split_once(':') else {
                        continue;
                    };
                    if who != replica && now_ms.saturating_sub(num(at)) <= stale_ms {
                        v.load.others_inflight += num(n);
                    }
                } else if let Some(who) = name.strip_prefix("lat:") {
                    if who == replica {
                        continue;
                    }
                    let parts: Vec<&str> = value.split(':').collect();
                    if let [lat, lat_at, ttft, ttft_at] = parts[..] {
                        let fresh = |at: &str| now_ms.saturating_sub(num(at)) <= LATENCY_STALE_MS;
                        if let Ok(x) = lat.parse::<f64>()
                            && x > 0.0
                            && fresh(lat_at)
                        {
                            v.load.others_latency_sum += x;
                            v.load.others_latency_n += 1;
                        }
                        if let Ok(x) = ttft.parse::<f64>()
                            && x > 0.0
                            && fresh(ttft_at)
                        {
                            v.load.others_ttft_sum += x;
                            v.load.others_ttft_n += 1;
                        }
                    }
                }
            }
        }
    }
    // A claim counts only for the episode in `until` (a claim of an older one is stale).
    v.probe_is_ours =
        probe.is_some_and(|(episode, ours)| ours && episode != 0 && episode == v.open_until_ms);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(items: &[&str]) -> Vec<String> {
        items.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn reads_other_replicas_and_ignores_itself_and_the_stale() {
        let now = 1_000_000;
        let fields = s(&[
            "m",
            "16",
            "rq",
            "12",
            "tk",
            "3400",
            "fl",
            "2",
            "if:me",
            "5:999990",
            "if:r2",
            "3:999990",
            "if:r3",
            "7:900000",
            "lat:me",
            "100:999000:0:0",
            "lat:r2",
            "300:999000:50:999000",
            "until",
            "999500",
            "probe",
            "999500:999600:me",
        ]);
        let v = read_hash(&fields, "me", now, 2_000);
        assert_eq!(v.load.minute, 16);
        assert_eq!(
            (v.load.requests, v.load.tokens, v.load.failures),
            (12, 3400, 2)
        );
        assert_eq!(v.load.others_inflight, 3, "own and stale replicas left out");
        assert_eq!(
            (v.load.others_latency_sum, v.load.others_latency_n),
            (300.0, 1)
        );
        assert_eq!((v.load.others_ttft_sum, v.load.others_ttft_n), (50.0, 1));
        assert_eq!(v.open_until_ms, 999_500);
        assert!(v.probe_is_ours);
        let v = read_hash(&fields, "r2", now, 2_000);
        assert!(!v.probe_is_ours);
        assert_eq!(v.load.others_inflight, 5);
    }

    /// Against the real Redis (`REDIS_URL`, default local), under a key prefix of its own.
    #[tokio::test]
    async fn a_tick_publishes_reads_back_and_forgets_replicas_gone_quiet() {
        use crate::shared_redis::{FailurePolicy, RedisConfig};
        use switchboard_shared::secret::SecretRef;
        let url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let prefix = format!("sbtest-sync-{}", uuid::Uuid::now_v7().simple());
        let redis = SharedRedis::connect(&RedisConfig {
            url: SecretRef::Value(url),
            key_prefix: prefix.clone(),
            timeout_ms: 500,
            failure_policy: FailurePolicy::Open,
            refresh_ms: 100,
            concurrency_lease_ms: 15_000,
            lease: Default::default(),
        })
        .unwrap();
        let key = deployment_state(&prefix, "d1");
        let mut conn = redis.conn();
        // A replica that stopped publishing an hour ago, and one publishing now.
        let now = unix_ms();
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg("if:gone")
            .arg(format!("7:{}", now - 3_600_000))
            .arg("lat:gone")
            .arg("900:0:0:0")
            .arg("if:peer")
            .arg(format!("2:{now}"))
            .arg("lat:peer")
            .arg(format!("300:{now}:0:0"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let state = Arc::new(DeploymentState::new());
        state.load.record_request(now);
        state.load.record_tokens(40, now);
        state.load.record_latency(100.0, now);
        state.breaker.open(Duration::from_secs(60));
        let error = switchboard_shared::fleet_keys::PermanentError {
            at_ms: now,
            status: 404,
            kind: "model_not_found".into(),
            message: "The model `gpt-9` does not exist".into(),
        };
        let period = Duration::from_secs(60);
        state.record(
            super::super::Outcome::Permanent {
                period,
                error: &error,
            },
            None,
        );
        let script = Script::new(SCRIPT);
        tick(&redis, &script, "me", &[("d1", &state)]).await;
        assert!(redis.is_up());
        assert_eq!(state.load.inflight(), 2, "the peer's, not the gone one's");
        assert_eq!(state.load.latency_ms(now), Some(200.0), "(100 + 300) / 2");
        let minute = state.load.this_minute(now);
        assert_eq!((minute.requests, minute.tokens), (1, 40));
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!fields.contains_key("if:gone") && !fields.contains_key("lat:gone"));
        assert!(fields.contains_key("if:me") && fields.contains_key("lat:me"));
        assert!(
            fields["until"].parse::<u64>().unwrap() > now,
            "the opening was written"
        );
        assert_eq!(
            fields["err"],
            error.encode(),
            "the permanent error was written"
        );
        let _: () = redis::cmd("HDEL")
            .arg(&key)
            .arg("err")
            .query_async(&mut conn)
            .await
            .unwrap();
        tick(&redis, &script, "me", &[("d1", &state)]).await;
        let err: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("err")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(err, None, "an error is sent once, not every tick");
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    #[test]
    fn a_probe_claimed_for_an_older_episode_is_not_ours() {
        let fields = s(&["probe", "5:6:me", "until", "9"]);
        assert!(!read_hash(&fields, "me", 10, 1000).probe_is_ours);
    }
}
