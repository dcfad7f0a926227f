//! Session affinity's memory: which deployment each recent `x-session-id` of a model used.
//!
//! Runtime state of a model, like its rotation and metrics, so it lives in the catalog's
//! [`super::ModelEntry`] and starts empty with each catalog; [`crate::selectors`] turns the
//! header into a session hash and the forward loop reads and writes the table. A small
//! direct-mapped table of atomics per model: bounded, lock-free, entries expire after
//! [`SESSION_TTL_SECONDS`], and a colliding session evicts the older one.

use std::sync::atomic::{AtomicU64, Ordering};

/// How long a session remembers its deployment after its last request.
pub const SESSION_TTL_SECONDS: u32 = 1800;
/// Slots of the affinity table of each model.
const AFFINITY_SLOTS: usize = 4096;

/// Session → deployment, bounded and lock-free: each slot packs 24 bits of the session hash,
/// the deployment's index + 1 (8 bits) and the expiry in Unix seconds (32 bits).
#[derive(Debug)]
pub struct SessionAffinity {
    slots: Box<[AtomicU64]>,
}

impl Default for SessionAffinity {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionAffinity {
    /// An empty table (each model of a new catalog starts with one).
    pub fn new() -> Self {
        let slots = (0..AFFINITY_SLOTS).map(|_| AtomicU64::new(0));
        Self {
            slots: slots.collect(),
        }
    }

    fn slot(&self, session: u64) -> (&AtomicU64, u64) {
        let index = (session as usize) % self.slots.len();
        let tag = (session >> 40) & 0xFF_FFFF;
        (&self.slots[index], tag)
    }

    /// The deployment index this session last used, if remembered and not expired.
    pub fn get(&self, session: u64, now_s: u32) -> Option<usize> {
        let (slot, tag) = self.slot(session);
        let v = slot.load(Ordering::Relaxed);
        let (stored_tag, index, expires) = (v >> 40, (v >> 32) & 0xFF, v as u32);
        (v != 0 && stored_tag == tag && index != 0 && now_s < expires).then(|| index as usize - 1)
    }

    /// Remembers that this session used deployment `index`.
    pub fn set(&self, session: u64, index: usize, now_s: u32) {
        if index >= 0xFF {
            return;
        }
        let (slot, tag) = self.slot(session);
        let expires = u64::from(now_s.saturating_add(SESSION_TTL_SECONDS));
        slot.store(
            (tag << 40) | ((index as u64 + 1) << 32) | expires,
            Ordering::Relaxed,
        );
    }
}

/// Unix seconds, for session expiry.
pub fn unix_seconds(now_ms: u64) -> u32 {
    u32::try_from(now_ms / 1000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_remembers_expires_and_tells_sessions_apart() {
        let a = SessionAffinity::new();
        let s1 = 0xABCD_EF01_2345_6789u64;
        assert_eq!(a.get(s1, 100), None);
        a.set(s1, 3, 100);
        assert_eq!(a.get(s1, 100), Some(3));
        assert_eq!(a.get(s1, 100 + SESSION_TTL_SECONDS), None, "expired");
        // Same slot, other session: not mistaken for s1, and it evicts s1.
        let s2 = s1 ^ (1 << 50);
        assert_eq!(a.get(s2, 100), None);
        a.set(s2, 1, 100);
        assert_eq!(a.get(s2, 100), Some(1));
        assert_eq!(a.get(s1, 100), None);
    }
}
