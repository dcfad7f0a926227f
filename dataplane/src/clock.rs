//! The wall clock that budgets and spend records read.
//!
//! Budget periods are calendar periods, so whether a request lands before or after a reset
//! depends on the date. Production reads the system clock; tests move this one forward
//! ([`Clock::advance`]) to cross a period boundary without waiting for midnight. The offset is
//! one relaxed atomic load per read: nothing on the request path waits for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// The system clock plus an offset (zero unless a test advanced it). Clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Now, as budgets and spend records see it.
    pub fn now(&self) -> DateTime<Utc> {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        let now = Utc::now();
        if offset == 0 {
            return now;
        }
        now + chrono::Duration::milliseconds(offset)
    }

    /// Moves this clock (and every clone of it) forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_every_clone() {
        let clock = Clock::default();
        let other = clock.clone();
        let before = other.now();
        clock.advance(std::time::Duration::from_secs(86_400));
        let after = other.now();
        assert!(after - before >= chrono::Duration::seconds(86_400));
        assert!(after - before < chrono::Duration::seconds(86_460));
    }
}
