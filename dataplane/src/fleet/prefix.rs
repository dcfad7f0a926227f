//! The prefix index of the `prefix_affinity` strategy: which deployment last served a prompt
//! that starts like this one, so that its KV cache (vLLM, SGLang) is reused.
//!
//! The prompt (`messages` or `prompt`, as sent) is cut into blocks of `block_bytes`; block
//! `i`'s key chains the hash of every block up to it, so a key names a whole prefix. The chain
//! starts from the tenant's id: the index is partitioned by tenant, so no tenant can probe
//! (by latency or placement) whether another sent a prompt. After an
//! answer, every block key of its prompt points at the deployment that served it; a new
//! request walks its keys from the first and takes the deployment of the longest run found.
//!
//! The index is a fixed table of atomics (bounded, lock-free; a newer prefix that lands in an
//! occupied slot replaces the older one). A few keys of each answered prompt — at 1, 2, 4, 8,
//! ... blocks and the last — also go to a bounded lock-free queue that [`super::sync`] drains
//! into a capped Redis stream per model, and entries other replicas wrote come back the same
//! way, so a prefix served through one replica is found by all (to within a factor of two of
//! its length). Lookups walk from the longest key down, so a shared key needs no shorter ones.

use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;

/// Slots of the table of one model.
const SLOTS: usize = 16_384;
/// Most blocks hashed per prompt (longer prompts are matched on their first blocks).
pub const MAX_BLOCKS: usize = 256;
/// Recent entries waiting for the next sync.
const OUTBOX: usize = 4_096;

/// A fixed hasher, so the same prompt gives the same keys in every replica.
fn hash_block(previous: u64, block: &[u8]) -> u64 {
    // `DefaultHasher::new()` has fixed keys: replicas of one build agree on every key.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write_u64(previous);
    h.write(block);
    h.finish() | 1 // never 0, which marks an empty slot
}

/// The chained block keys of a prompt sent by `tenant`. The chain starts from the tenant's
/// id, so the same prompt from two tenants shares no key: one tenant's requests can never
/// land on (and so learn of, by timing or by the explain header) another's cached prefix.
pub fn block_keys(tenant: &str, prompt: &[u8], block_bytes: usize) -> Vec<u64> {
    let block_bytes = block_bytes.max(1);
    let mut keys = Vec::with_capacity((prompt.len() / block_bytes).min(MAX_BLOCKS));
    let mut previous = hash_block(0, tenant.as_bytes());
    for block in prompt.chunks_exact(block_bytes).take(MAX_BLOCKS) {
        previous = hash_block(previous, block);
        keys.push(previous);
    }
    keys
}

/// One model's prefix index.
#[derive(Debug)]
pub struct PrefixIndex {
    /// Key (high 56 bits) and deployment index + 1 (low 8 bits) per slot.
    slots: Box<[AtomicU64]>,
    /// `(key, deployment index)` recorded here and not yet sent to Redis.
    outbox: ArrayQueue<(u64, u8)>,
}

impl Default for PrefixIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl PrefixIndex {
    pub fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            outbox: ArrayQueue::new(OUTBOX),
        }
    }

    fn slot(&self, key: u64) -> &AtomicU64 {
        &self.slots[(key as usize) % self.slots.len()]
    }

    fn put(&self, key: u64, deployment: u8) {
        self.slot(key).store(
            (key & !0xFF) | (u64::from(deployment) + 1),
            Ordering::Relaxed,
        );
    }

    fn get(&self, key: u64) -> Option<usize> {
        let v = self.slot(key).load(Ordering::Relaxed);
        let index = (v & 0xFF) as usize;
        (index != 0 && v & !0xFF == key & !0xFF).then(|| index - 1)
    }

    /// The deployment that served the longest prefix of these keys, and how many blocks.
    pub fn longest(&self, keys: &[u64]) -> Option<(usize, usize)> {
        keys.iter()
            .enumerate()
            .rev()
            .find_map(|(i, key)| self.get(*key).map(|d| (d, i + 1)))
    }

    /// Records that `deployment` served a prompt with these keys.
    pub fn record(&self, keys: &[u64], deployment: usize) {
        let Ok(d) = u8::try_from(deployment) else {
            return;
        };
        if d == u8::MAX {
            return;
        }
        for (i, &key) in keys.iter().enumerate() {
            self.put(key, d);
            let blocks = i + 1;
            if blocks.is_power_of_two() || blocks == keys.len() {
                // Full: drop the oldest; sharing is best effort.
                self.outbox.force_push((key, d));
            }
        }
    }

    /// Entries to send to Redis.
    pub(super) fn drain(&self) -> Vec<(u64, u8)> {
        std::iter::from_fn(|| self.outbox.pop()).collect()
    }

    /// An entry another replica wrote.
    pub(super) fn learn(&self, key: u64, deployment: usize) {
        if let Ok(d) = u8::try_from(deployment)
            && d != u8::MAX
        {
            self.put(key, d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_chain_so_a_key_names_a_whole_prefix() {
        let a = block_keys("t", b"aaaabbbbcccc", 4);
        let b = block_keys("t", b"aaaabbbbdddd", 4);
        let c = block_keys("t", b"xxxxbbbbcccc", 4);
        assert_eq!(a.len(), 3);
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
        assert_ne!(a[1], c[1], "same block after a different start");
        assert_eq!(
            block_keys("t", b"abc", 4),
            Vec::<u64>::new(),
            "no full block"
        );
        let (one, two) = (
            block_keys("t1", b"aaaabbbb", 4),
            block_keys("t2", b"aaaabbbb", 4),
        );
        assert!(
            one.iter().all(|k| !two.contains(k)),
            "tenants share no prefix key"
        );
    }

    #[test]
    fn a_shared_long_key_is_found_without_its_shorter_ones() {
        let index = PrefixIndex::new();
        let keys = block_keys("t", &[3u8; 64], 8);
        index.learn(keys[7], 4);
        assert_eq!(index.longest(&keys), Some((4, 8)));
        assert_eq!(index.longest(&keys[..7]), None);
    }

    #[test]
    fn the_longest_served_prefix_wins() {
        let index = PrefixIndex::new();
        let short = block_keys("t", b"system--question", 8);
        let long = block_keys("t", b"system--question--answer", 8);
        assert_eq!(index.longest(&long), None);
        index.record(&short, 2);
        assert_eq!(index.longest(&long), Some((2, 2)));
        index.record(&long, 5);
        assert_eq!(index.longest(&long), Some((5, 3)));
        assert_eq!(
            index.drain().len(),
            5,
            "blocks 1 and 2, then 1, 2 and 3 (the last)"
        );
        assert!(index.drain().is_empty());
    }
}
