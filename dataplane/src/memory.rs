//! Giving the memory of a snapshot install back to the operating system.
//!
//! Reading and compiling a snapshot of 100,000 keys allocates, then frees, a few times what the
//! catalog keeps. The binary's allocator (mimalloc) returns freed pages to the system only after
//! a purge delay, and only from inside a later allocator call on the thread that owns them: a
//! data plane that went idle after an install — one with no traffic yet — kept tens to hundreds
//! of megabytes it no longer used, and how much depended on which thread had freed what.
//! [`release`] asks the allocator to give that memory back at once (`mi_collect`, through the
//! one-call crate `switchboard-alloc`): on the installing thread right away, and from a short-
//! lived thread of its own a few times after, for what is freed later elsewhere (the previous
//! catalog when its last request ends, a blocking thread's heap when tokio retires it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// After an install the allocator is asked again every [`AGAIN_EVERY`], [`ROUNDS`] times: past
/// the end of the requests that still hold the previous catalog, and past the end of a blocking
/// thread that ran the install (tokio keeps idle ones for 10 s).
const AGAIN_EVERY: Duration = Duration::from_millis(1_500);
const ROUNDS: usize = 10;

/// A thread is waiting to collect.
static WAITING: AtomicBool = AtomicBool::new(false);
/// An install asked for a release since the waiting thread began its round.
static AGAIN: AtomicBool = AtomicBool::new(false);

/// After an install: returns what the calling thread freed now, and starts (or renews) the
/// thread that collects again later. Returns at once.
pub fn release() {
    switchboard_alloc::collect();
    AGAIN.store(true, Ordering::SeqCst);
    if WAITING.swap(true, Ordering::SeqCst) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("memory-release".into())
        .spawn(|| {
            loop {
                AGAIN.store(false, Ordering::SeqCst);
                for _ in 0..ROUNDS {
                    // A thread of its own, not a runtime worker: sleeping blocks nothing.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(AGAIN_EVERY);
                    switchboard_alloc::collect();
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
