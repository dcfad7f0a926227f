//! What keeps a login flood from taking the control plane down: fixed-window rate limits per
//! account and per client IP, and a cap on password checks running at once (each argon2id
//! check holds 19 MiB, so 500 parallel checks would hold ~10 GB). Both are per replica and in
//! memory; a refusal is a 429 with `Retry-After`, answered before any hashing starts, and
//! counted in `switchboard_login_refusals_total{reason}`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{Error, Result};
use crate::config::AdminAuthSettings;

/// The rate limits' window.
const WINDOW: Duration = Duration::from_secs(60);
/// Entries kept per limiter before expired ones are swept (bounds memory under a spray of
/// distinct emails or addresses).
const SWEEP_AT: usize = 10_000;

/// Counts per key in fixed one-minute windows.
#[derive(Debug)]
struct Windows {
    limit: u32,
    entries: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Windows {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one attempt for `key`; `Err(seconds to wait)` when the window is full.
    fn hit(&self, key: &str, now: Instant) -> std::result::Result<(), u64> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= SWEEP_AT {
            entries.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let entry = entries.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            let left = WINDOW.saturating_sub(now.duration_since(entry.0));
            return Err(left.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(())
    }
}

/// The login guard of one replica (shared by all its requests).
#[derive(Debug)]
pub struct LoginGuard {
    per_account: Windows,
    per_ip: Windows,
    checks: Arc<Semaphore>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

/// A running password check's place: held until the hash is checked, even if the request that
/// started it has gone.
#[derive(Debug)]
pub struct CheckSlot {
    _permit: OwnedSemaphorePermit,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for CheckSlot {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn refused(reason: &'static str, detail: &'static str, retry_after_secs: u64) -> Error {
    crate::metrics::count(
        crate::metrics::LOGIN_REFUSALS_TOTAL,
        Some(("reason", reason)),
    );
    tracing::warn!(reason, "login refused");
    Error::TooManyRequests {
        detail,
        retry_after_secs,
    }
}

impl LoginGuard {
    pub fn new(settings: &AdminAuthSettings) -> Self {
        let cap = usize::try_from(settings.max_concurrent_password_checks.max(1)).unwrap_or(1);
        Self {
            per_account: Windows::new(settings.login_per_account_per_minute),
            per_ip: Windows::new(settings.login_per_ip_per_minute),
            checks: Arc::new(Semaphore::new(cap)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            peak: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Counts an attempt for `email` (any case) and, when known, the client's address; 429
    /// when either is over its limit.
    pub fn admit(&self, email: &str, ip: Option<IpAddr>) -> Result<()> {
        let now = Instant::now();
        if let Some(ip) = ip
            && let Err(wait) = self.per_ip.hit(&ip.to_string(), now)
        {
            return Err(refused(
                "ip",
                "too many login attempts from this address; retry later",
                wait,
            ));
        }
        let account = email.trim().to_lowercase();
        self.per_account.hit(&account, now).map_err(|wait| {
            refused(
                "account",
                "too many login attempts for this account; retry later",
                wait,
            )
        })
    }

    /// A place for one password check, or 429 at once when every place is taken (never a
    /// queue: waiting requests would hold memory too).
    pub fn check_slot(&self) -> Result<CheckSlot> {
        let permit =
            self.checks.clone().try_acquire_owned().map_err(|_| {
                refused("busy", "too many logins in progress; retry in a second", 1)
            })?;
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Ok(CheckSlot {
            _permit: permit,
            in_flight: self.in_flight.clone(),
        })
    }

    /// The most password checks that ever ran at once on this replica.
    pub fn peak_checks(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_its_limit_then_refuses_until_it_rolls_over() {
        let w = Windows::new(2);
        let t0 = Instant::now();
        assert!(w.hit("a", t0).is_ok());
        assert!(w.hit("a", t0).is_ok());
        let wait = w.hit("a", t0).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(w.hit("b", t0).is_ok(), "keys are independent");
        assert!(w.hit("a", t0 + WINDOW).is_ok(), "a new window");
    }

    #[test]
    fn slots_are_capped_and_given_back() {
        let guard = LoginGuard::new(&AdminAuthSettings {
            max_concurrent_password_checks: 2,
            ..AdminAuthSettings::default()
        });
        let a = guard.check_slot().unwrap();
        let _b = guard.check_slot().unwrap();
        assert!(matches!(
            guard.check_slot(),
            Err(Error::TooManyRequests { .. })
        ));
        drop(a);
        assert!(guard.check_slot().is_ok());
        assert_eq!(guard.peak_checks(), 2);
    }
}
