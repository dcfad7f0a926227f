//! Giving the memory of a snapshot install back to the operating system.
//!
//! Reading and compiling a snapshot of 100,000 keys allocates, then frees, a few times what the
//! catalog keeps. The binary's allocator (mimalloc) returns freed pages to the system only after
//! a purge delay (`MIMALLOC_PURGE_DELAY`, 1 s by default), and only from inside a later
//! allocator call that frees a page: a process that went idle after an install — a data plane
//! with no traffic yet — kept hundreds of megabytes resident that it no longer used. (The
//! workspace forbids `unsafe`, so `mi_collect` cannot be called.) [`release`] makes that later
//! call: a thread waits out the delay, then allocates and frees one large block, which is never
//! touched (so it costs no resident memory) and whose free lets the allocator purge what is
//! due. Under any other allocator it is a harmless allocation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The allocator is nudged every [`NUDGE_EVERY`], [`NUDGES`] times after an install: past
/// mimalloc's default purge delay (1 s) even when later frees (the snapshot's, the previous
/// catalog's) pushed it on, and past the end of a blocking thread that ran the install (tokio
/// keeps idle ones for 10 s; its pages are freed when it ends).
const NUDGE_EVERY: Duration = Duration::from_millis(1_500);
const NUDGES: usize = 10;

/// A block large enough to get a page of its own (a "huge" allocation in mimalloc), whose free
/// ends in the arena code that runs due purges.
const BLOCK_BYTES: usize = 64 << 20;

/// A thread is waiting to nudge.
static WAITING: AtomicBool = AtomicBool::new(false);
/// An install asked for a release since the waiting thread began its round.
static AGAIN: AtomicBool = AtomicBool::new(false);

/// After an install: lets the allocator return the install's freed memory (see the module
/// header). Returns at once; one short-lived thread of its own does the waiting (a nudge from
/// a runtime worker, the thread that did the install's frees, measured 90 MB resident at
/// 100,000 keys where a thread of its own left 47 MB), and goes around again for installs that
/// came while it waited.
pub fn release() {
    AGAIN.store(true, Ordering::SeqCst);
    if WAITING.swap(true, Ordering::SeqCst) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("memory-release".into())
        .spawn(|| {
            loop {
                AGAIN.store(false, Ordering::SeqCst);
                for _ in 0..NUDGES {
                    // A thread of its own, not a runtime worker: sleeping blocks nothing.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(NUDGE_EVERY);
                    nudge();
                }
                WAITING.store(false, Ordering::SeqCst);
                // An install in between either found this thread waiting (go around again)
                // or started a thread of its own.
                if !AGAIN.load(Ordering::SeqCst) || WAITING.swap(true, Ordering::SeqCst) {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        WAITING.store(false, Ordering::SeqCst);
        tracing::debug!(error = %e, "no thread to release memory after the install");
    }
}

/// One allocation and free of [`BLOCK_BYTES`], never written.
fn nudge() {
    let block: Vec<u8> = Vec::with_capacity(BLOCK_BYTES);
    drop(std::hint::black_box(block));
}
