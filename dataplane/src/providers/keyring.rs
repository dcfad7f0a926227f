//! Several credentials for one provider: an adaptor over one adaptor per key.
//!
//! A provider with `api_keys` gets one ordinary adaptor per key (so every provider kind
//! supports several keys without knowing it) wrapped in a [`KeyRing`]. Each attempt picks an
//! available key by weight. When the upstream answers 429 for a key, that key is left alone
//! until its `Retry-After` (or the upstream's reported reset); when it answers 401/403, the
//! key is taken out for [`REJECTED_KEY_OUT`] and an error is logged once — naming the key by
//! its index, never by its value. In both cases the same attempt goes on at once with another
//! available key, so the deployment only sees the upstream's refusal (and cools down) when no
//! key is left.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};

use super::{ProviderAdaptor, SendError, UpstreamRequest, UpstreamResponse, Verdict};
use crate::fleet::unix_ms;

/// How long a key whose credential the upstream rejects stays out.
pub const REJECTED_KEY_OUT: Duration = Duration::from_secs(300);
/// How long a rate-limited key rests when the upstream says nothing about when to return.
const RATE_LIMITED_DEFAULT: Duration = Duration::from_secs(10);
/// Most keys per provider (the attempt keeps a bit set of the keys it tried).
pub const MAX_KEYS: usize = 64;

/// One credential and its state.
#[derive(Debug)]
struct KeySlot {
    adaptor: Arc<dyn ProviderAdaptor>,
    weight: u32,
    /// Unix ms until which this key is not used; 0: available.
    out_until_ms: AtomicU64,
    /// Set once the rejection of this key has been logged (until it serves again).
    alerted: AtomicBool,
}

/// An adaptor spreading a provider's traffic over several keys.
#[derive(Debug)]
pub struct KeyRing {
    provider: String,
    keys: Vec<KeySlot>,
}

impl KeyRing {
    /// `keys`: each key's adaptor and weight (at most [`MAX_KEYS`]; more are ignored).
    pub fn new(provider: &str, keys: Vec<(Arc<dyn ProviderAdaptor>, u32)>) -> Self {
        Self {
            provider: provider.to_owned(),
            keys: keys
                .into_iter()
                .take(MAX_KEYS)
                .map(|(adaptor, weight)| KeySlot {
                    adaptor,
                    weight: weight.max(1),
                    out_until_ms: AtomicU64::new(0),
                    alerted: AtomicBool::new(false),
                })
                .collect(),
        }
    }

    /// A key not yet tried by this attempt: by weight among the available ones, else the one
    /// back soonest (the upstream then decides).
    fn pick(&self, tried: u64, now_ms: u64) -> Option<usize> {
        let untried = |i: &usize| tried & (1 << i) == 0;
        let available: Vec<usize> = (0..self.keys.len())
            .filter(untried)
            .filter(|&i| self.keys[i].out_until_ms.load(Ordering::Relaxed) <= now_ms)
            .collect();
        if available.is_empty() {
            return if tried == 0 {
                (0..self.keys.len())
                    .min_by_key(|&i| self.keys[i].out_until_ms.load(Ordering::Relaxed))
            } else {
                None
            };
        }
        let total: u64 = available
            .iter()
            .map(|&i| u64::from(self.keys[i].weight))
            .sum();
        let mut point = fastrand::u64(0..total.max(1));
        for &i in &available {
            let w = u64::from(self.keys[i].weight);
            if point < w {
                return Some(i);
            }
            point -= w;
        }
        available.last().copied()
    }

    fn rest(&self, i: usize, period: Duration, now_ms: u64) {
        let until = now_ms.saturating_add(u64::try_from(period.as_millis()).unwrap_or(u64::MAX));
        self.keys[i]
            .out_until_ms
            .fetch_max(until, Ordering::Relaxed);
    }

    /// Whether another key than those tried is available now.
    fn another_available(&self, tried: u64, now_ms: u64) -> bool {
        (0..self.keys.len()).any(|i| {
            tried & (1 << i) == 0 && self.keys[i].out_until_ms.load(Ordering::Relaxed) <= now_ms
        })
    }
}

impl ProviderAdaptor for KeyRing {
    fn send<'a>(
        &'a self,
        request: &'a UpstreamRequest<'a>,
    ) -> BoxFuture<'a, Result<UpstreamResponse, SendError>> {
        async move {
            let mut tried = 0u64;
            loop {
                let now = unix_ms();
                let Some(i) = self.pick(tried, now) else {
                    return Err(SendError::Transport); // unreachable: the first pick always finds one
                };
                tried |= 1 << i;
                let key = &self.keys[i];
                let response = key.adaptor.send(request).await?;
                match key.adaptor.classify(response.status, &response.headers) {
                    Verdict::RateLimited { retry_after } => {
                        let reset = retry_after
                            .or_else(|| {
                                key.adaptor
                                    .rate_limits(&response.headers)
                                    .and_then(|q| q.exhausted_reset())
                            })
                            .unwrap_or(RATE_LIMITED_DEFAULT);
                        self.rest(i, reset, now);
                        tracing::warn!(
                            provider = %self.provider,
                            key_index = i,
                            rest_ms = u64::try_from(reset.as_millis()).unwrap_or(u64::MAX),
                            "upstream rate limited one of the provider's keys; using the others"
                        );
                    }
                    Verdict::CredentialRejected => {
                        self.rest(i, REJECTED_KEY_OUT, now);
                        if !key.alerted.swap(true, Ordering::Relaxed) {
                            tracing::error!(
                                provider = %self.provider,
                                key_index = i,
                                status = response.status.as_u16(),
                                out_seconds = REJECTED_KEY_OUT.as_secs(),
                                "the upstream rejected one of the provider's keys; taking it out"
                            );
                        }
                    }
                    _ => {
                        if key.alerted.load(Ordering::Relaxed) {
                            key.alerted.store(false, Ordering::Relaxed);
                        }
                        return Ok(response);
                    }
                }
                if !self.another_available(tried, unix_ms()) {
                    return Ok(response); // every key refused: the deployment decides
                }
            }
        }
        .boxed()
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        match self.keys.first() {
            Some(k) => k.adaptor.classify(status, headers),
            None => super::classify_http(status, headers),
        }
    }

    fn rate_limits(&self, headers: &HeaderMap) -> Option<crate::fleet::UpstreamRateLimits> {
        self.keys.first()?.adaptor.rate_limits(headers)
    }

    fn key_adaptors(&self) -> Option<Vec<Arc<dyn ProviderAdaptor>>> {
        Some(self.keys.iter().map(|k| Arc::clone(&k.adaptor)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Endpoint;
    use crate::request::RequestView;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;

    /// Answers every request with one status, counting them.
    #[derive(Debug)]
    struct Fixed {
        status: u16,
        sent: AtomicUsize,
    }

    impl ProviderAdaptor for Fixed {
        fn send<'a>(
            &'a self,
            _request: &'a UpstreamRequest<'a>,
        ) -> BoxFuture<'a, Result<UpstreamResponse, SendError>> {
            self.sent.fetch_add(1, Ordering::Relaxed);
            let mut headers = HeaderMap::new();
            if self.status == 429 {
                headers.insert(http::header::RETRY_AFTER, "30".parse().unwrap());
            }
            let response = UpstreamResponse {
                status: StatusCode::from_u16(self.status).unwrap(),
                headers,
                body: http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
            };
            async move { Ok(response) }.boxed()
        }
    }

    fn fixed(status: u16) -> Arc<Fixed> {
        Arc::new(Fixed {
            status,
            sent: AtomicUsize::new(0),
        })
    }

    async fn send(ring: &KeyRing) -> u16 {
        let view = RequestView::parse(bytes::Bytes::from_static(br#"{"model":"m"}"#)).unwrap();
        let request = UpstreamRequest {
            endpoint: Endpoint::ChatCompletions,
            view: &view,
            upstream_model_json: b"\"u\"",
            upstream_model: "u",
            request_id: "r",
            native_responses: false,
        };
        ring.send(&request).await.unwrap().status.as_u16()
    }

    /// Sends `n` attempts through the ring; each must be answered with a 200.
    async fn all_served(ring: &KeyRing, n: usize) {
        for i in 0..n {
            assert_eq!(send(ring).await, 200, "attempt {i}: another key answers");
        }
    }

    fn ring(keys: &[(&Arc<Fixed>, u32)]) -> KeyRing {
        KeyRing::new(
            "p",
            keys.iter()
                .map(|(a, w)| (Arc::clone(*a) as Arc<dyn ProviderAdaptor>, *w))
                .collect(),
        )
    }

    #[tokio::test]
    async fn traffic_follows_the_weights() {
        let (a, b) = (fixed(200), fixed(200));
        all_served(&ring(&[(&a, 1), (&b, 3)]), 4000).await;
        let share = b.sent.load(Ordering::Relaxed) as f64 / 4000.0;
        assert!((share - 0.75).abs() < 0.04, "{share}");
    }

    #[tokio::test]
    async fn a_rate_limited_key_rests_and_the_attempt_moves_on() {
        let (limited, good) = (fixed(429), fixed(200));
        // The other key answers in the same attempt.
        all_served(&ring(&[(&limited, 100), (&good, 1)]), 50).await;
        assert_eq!(
            limited.sent.load(Ordering::Relaxed),
            1,
            "left alone until reset"
        );
        assert_eq!(good.sent.load(Ordering::Relaxed), 50);
    }

    #[tokio::test]
    async fn a_rejected_key_is_taken_out_while_the_others_serve() {
        let (rejected, good) = (fixed(401), fixed(200));
        let r = ring(&[(&rejected, 100), (&good, 1)]);
        all_served(&r, 50).await;
        assert_eq!(rejected.sent.load(Ordering::Relaxed), 1);
        assert!(r.keys[0].alerted.load(Ordering::Relaxed), "alerted once");
    }

    #[tokio::test]
    async fn when_every_key_refuses_the_refusal_reaches_the_deployment() {
        let (a, b) = (fixed(429), fixed(401));
        let r = ring(&[(&a, 1), (&b, 1)]);
        let status = send(&r).await;
        assert!(status == 429 || status == 401, "{status}");
        assert_eq!(
            a.sent.load(Ordering::Relaxed) + b.sent.load(Ordering::Relaxed),
            2,
            "each key tried once"
        );
    }
}
