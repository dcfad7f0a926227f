//! The state of each deployment that routing reads: load, latency, usage, breaker, quota.
//!
//! One [`DeploymentState`] per deployment, held in an `Arc` by the catalog and handed from
//! one catalog to the next by deployment id (a reload neither resets a latency nor forgets a
//! cooldown). Every part is atomics, written on the request path without locks:
//!
//! - [`breaker`]: closed → open → half-open with one probe; cooldowns and their timing.
//! - [`load`]: in flight, latency and TTFT averages, requests/tokens/failures this minute.
//! - [`quota`]: the upstream's own `x-ratelimit-remaining-*` for our account.
//! - [`prefix`]: which deployment last served a prompt prefix (the `prefix_affinity` strategy).
//! - [`sync`]: with Redis, a background task that publishes this replica's part in pipelined
//!   batches and reads back the cluster's every `redis.refresh_ms`. Requests never wait on it.

pub mod breaker;
pub mod load;
pub mod prefix;
pub mod quota;
pub mod sync;

pub use breaker::{Breaker, Gate, unix_ms};
pub use load::{InFlight, Load};
pub use quota::UpstreamQuota;

/// Everything known about one deployment's condition.
#[derive(Debug, Default)]
pub struct DeploymentState {
    pub breaker: Breaker,
    pub load: Load,
    pub quota: UpstreamQuota,
}

impl DeploymentState {
    pub fn new() -> Self {
        Self::default()
    }
}
