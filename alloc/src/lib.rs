//! mimalloc as the global allocator, asked the cheap way, and memory handed back on demand.
//!
//! **The allocator** ([`Mimalloc`]). The `mimalloc` crate's allocator passes every
//! allocation to `mi_malloc_aligned`, whatever its alignment. In mimalloc 3 that call takes
//! the fast path only when the page of the size class has a free block ready; otherwise it
//! goes on as an aligned allocation, and sizes that are not a power of two take the
//! over-allocating path (a larger block, in another size class). On the data plane's request
//! path that was about ten allocations a request at several hundred instructions each. Every
//! mimalloc block is aligned to a word (8 bytes), so an allocation that needs no more than
//! that is asked for with `mi_malloc`, whose slow path is the ordinary one; only larger
//! alignments go to the aligned calls.
//!
//! **Giving memory back** ([`collect`]). A snapshot install at 100,000 keys allocates and
//! frees a few times what the catalog keeps, and mimalloc returns freed pages only after a
//! delay and only from inside a later allocator call on the thread that owns them: a data
//! plane that went idle after an install kept tens to hundreds of megabytes it no longer used,
//! and how much depended on which thread freed what (docs/performance.md, "Memory at 100,000
//! keys"). mimalloc's `mi_collect(true)` does that work at once for the calling thread and
//! the shared arenas.
//!
//! Both are foreign calls, which need `unsafe`; the workspace forbids `unsafe`, so this crate
//! holds them and nothing else.
#![allow(unsafe_code)] // The foreign calls below; nothing else here.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

// `mi_collect` is part of mimalloc's stable C API (mimalloc.h). `libmimalloc-sys` builds and
// links the library; its own declaration of this function sits behind a feature that pulls in
// a crate of C types, for one `bool`.
unsafe extern "C" {
    fn mi_collect(force: bool);
}

/// The alignment of every block mimalloc hands out: one word (its size classes are whole
/// words, and a page's blocks start at a word boundary).
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc as a Rust global allocator: `#[global_allocator] static A: Mimalloc = Mimalloc;`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mimalloc;

// SAFETY: every method hands the layout's size (and, where it exceeds a word, its alignment)
// to the matching mimalloc call, which returns null or a block of at least that size at that
// alignment (mimalloc.h); blocks are freed with `mi_free`, which takes any mimalloc block.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl; the word-aligned case is any block.
        unsafe {
            if layout.align() <= WORD {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if layout.align() <= WORD {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from one of this allocator's calls (GlobalAlloc's contract).
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is a block of this allocator (GlobalAlloc's contract); the new block
        // keeps the old alignment, as in `alloc`.
        unsafe {
            if layout.align() <= WORD {
                mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
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
    use std::alloc::{GlobalAlloc, Layout};

    /// The tests run under this allocator, as the data plane does.
    #[global_allocator]
    static GLOBAL: super::Mimalloc = super::Mimalloc;

    /// Every size and alignment comes back aligned, zeroed when asked, and keeps its bytes
    /// through a reallocation — across size classes, both sides of the word, and past a page.
    #[test]
    fn blocks_have_the_asked_alignment_and_keep_their_bytes() {
        let allocator = super::Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 7, 8, 9, 16, 24, 40, 56, 100, 1000, 1 << 12, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; every block is freed with its layout below.
                unsafe {
                    let zeroed = allocator.alloc_zeroed(layout);
                    assert!(!zeroed.is_null());
                    assert_eq!(zeroed as usize % align, 0, "size {size}, align {align}");
                    assert!((0..size).all(|i| *zeroed.add(i) == 0));
                    let block = allocator.alloc(layout);
                    assert_eq!(block as usize % align, 0, "size {size}, align {align}");
                    for i in 0..size {
                        *block.add(i) = i as u8;
                    }
                    let grown = allocator.realloc(block, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "realloc {size}, align {align}");
                    assert!((0..size).all(|i| *grown.add(i) == i as u8));
                    allocator.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    allocator.dealloc(zeroed, layout);
                }
            }
        }
    }

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
