//! Returning freed memory to the system now, not after the allocator's purge delay.
//!
//! The data plane's allocator is mimalloc. A snapshot install at 100,000 keys allocates and
//! frees a few times what the catalog keeps, and mimalloc returns freed pages only after a
//! delay and only from inside a later allocator call on the thread that owns them: a data
//! plane that went idle after an install kept tens to hundreds of megabytes it no longer used,
//! and how much depended on which thread freed what (docs/performance.md, "Memory at 100,000
//! keys"). mimalloc's `mi_collect(true)` does that work at once for the calling thread and
//! the shared arenas. It is a foreign call, which needs `unsafe`; the workspace forbids
//! `unsafe`, so this crate holds that one call and nothing else.
#![allow(unsafe_code)] // The one foreign call below; nothing else here.

// `mi_collect` is part of mimalloc's stable C API (mimalloc.h). `libmimalloc-sys` builds and
// links the library (the same one the `mimalloc` global allocator uses); its own declaration
// of this function sits behind a feature that pulls in a crate of C types, for one `bool`.
use libmimalloc_sys as _;

unsafe extern "C" {
    fn mi_collect(force: bool);
}

/// Frees what the calling thread's heap holds empty and returns due memory (this thread's
/// free pages and the shared arenas' free ranges) to the operating system now. Costs a walk
/// over the thread's heap: for after an install or a large free, not for the request path.
/// Harmless under another global allocator (mimalloc then simply has nothing to give back).
pub fn collect() {
    // SAFETY: `mi_collect` takes a plain `bool`, has no preconditions, and may be called from
    // any thread at any time (mimalloc.h); it only touches mimalloc's own state.
    unsafe { mi_collect(true) }
}

#[cfg(test)]
mod tests {
    /// The tests run under mimalloc, as the data plane does.
    #[global_allocator]
    static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

    /// Resident bytes of this process (Linux `/proc/self/statm`, pages of 4 KiB).
    fn resident() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[test]
    fn a_collection_gives_freed_small_blocks_back_at_once() {
        // 256 MB in 2 million small blocks, all written (so resident), then all freed: what a
        // snapshot's parse leaves behind, in miniature.
        let blocks: Vec<Box<[u8; 128]>> =
            (0..2_000_000).map(|i| Box::new([i as u8; 128])).collect();
        let before_free = resident();
        drop(std::hint::black_box(blocks));
        let freed = resident();
        super::collect();
        let collected = resident();
        eprintln!("resident: {before_free} with the blocks, {freed} freed, {collected} collected");
        // mimalloc keeps freed pages for its purge delay; the collection returns them now.
        assert!(
            collected + (128 << 20) < before_free,
            "resident {collected} after the collection, {before_free} with the blocks"
        );
    }
}
