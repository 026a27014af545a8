//! The VM's heap: a few size classes of recently freed blocks in front of wasi-libc's `malloc`
//! (natively, in the tests, in front of std's allocator).
//!
//! A request allocates and frees the same few small blocks every time: the context, the host's
//! copies of the header map and of two properties, a shared-data bucket, a header value. Inside
//! the VM `malloc` (wasi-libc's dlmalloc) costs about 120 Wasm operations to allocate
//! and 70 to free one: a fifth of the filter's work on a request. Here a block of a class
//! recently freed is handed out again from a list, a handful of operations each way.
//!
//! Hand-written because no maintained allocator does this for `wasm32` in fewer operations:
//! Talc, the one built for Wasm, measured more operations per request than dlmalloc here, and
//! a module larger by 5 KiB.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::ptr;

#[cfg(not(target_family = "wasm"))]
use std::alloc::System as Backing;

/// Where blocks come from and large ones go inside the VM: wasi-libc's `malloc` (Doug Lea's), as
/// under std, which the VM no longer links. Hand-written because the `dlmalloc` crate, the
/// maintained alternative, measured about 250 more Wasm operations per request.
#[cfg(target_family = "wasm")]
struct Backing;

#[cfg(target_family = "wasm")]
unsafe extern "C" {
    fn malloc(size: usize) -> *mut u8;
    fn aligned_alloc(align: usize, size: usize) -> *mut u8;
    fn free(block: *mut u8);
}

/// The alignment every `malloc` block has on wasm32 (wasi-libc's `MALLOC_ALIGNMENT`).
#[cfg(target_family = "wasm")]
const MALLOC_ALIGN: usize = 8;

// SAFETY: `malloc`/`aligned_alloc` return blocks of at least the size and alignment asked (or
// null), and `free` takes any of them back; `realloc` is `GlobalAlloc`'s (alloc, copy, free).
#[cfg(target_family = "wasm")]
unsafe impl GlobalAlloc for Backing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C calls; `aligned_alloc` with a power-of-two alignment.
        unsafe {
            if layout.align() <= MALLOC_ALIGN {
                malloc(layout.size())
            } else {
                aligned_alloc(layout.align(), layout.size())
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from `malloc` or `aligned_alloc` above.
        unsafe { free(ptr) }
    }
}

/// Block sizes, each class serving the requests up to its size.
const CLASSES: [usize; 8] = [16, 32, 64, 128, 256, 512, 1024, 2048];
/// Blocks kept per class; beyond it a freed block goes back to `Backing`. At most 64 KiB
/// kept in all, so a burst of large requests does not hold memory for good.
const KEPT_PER_CLASS: usize = 16;
/// The alignment every class block has: `malloc`'s own, where a larger one would take
/// `aligned_alloc`.
const ALIGN: usize = 8;

/// Recently freed blocks by class, each list linked through the blocks' first word.
pub struct SizeClasses {
    free: [Cell<*mut u8>; CLASSES.len()],
    kept: [Cell<usize>; CLASSES.len()],
}

// SAFETY: a proxy-wasm VM runs one thread; nothing else can reach the lists.
unsafe impl Sync for SizeClasses {}

impl SizeClasses {
    pub const fn new() -> Self {
        Self {
            free: [const { Cell::new(ptr::null_mut()) }; CLASSES.len()],
            kept: [const { Cell::new(0) }; CLASSES.len()],
        }
    }
}

impl Default for SizeClasses {
    fn default() -> Self {
        Self::new()
    }
}

/// The class serving `layout`, with the layout its blocks are allocated with.
fn class(layout: Layout) -> Option<(usize, Layout)> {
    if layout.align() > ALIGN || layout.size() == 0 {
        return None;
    }
    let class = CLASSES.iter().position(|&size| layout.size() <= size)?;
    let block = Layout::from_size_align(*CLASSES.get(class)?, ALIGN).ok()?;
    Some((class, block))
}

// SAFETY: every block handed out is one `Backing` made with the class's layout, which
// fits any layout of that class; a block is on a list only between its dealloc and the next
// alloc of its class, so it is never handed out twice.
unsafe impl GlobalAlloc for SizeClasses {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((class, block)) = class(layout) else {
            // SAFETY: forwarded as given.
            return unsafe { Backing.alloc(layout) };
        };
        let (Some(free), Some(kept)) = (self.free.get(class), self.kept.get(class)) else {
            return ptr::null_mut();
        };
        let head = free.get();
        if head.is_null() {
            // SAFETY: a class layout has a non-zero size.
            return unsafe { Backing.alloc(block) };
        }
        // SAFETY: a listed block holds the next block's address in its first word, written
        // (aligned: blocks are `ALIGN`-aligned) by `dealloc`.
        free.set(unsafe { head.cast::<*mut u8>().read() });
        kept.set(kept.get() - 1);
        head
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((class, block)) = class(layout) else {
            // SAFETY: allocated by `Backing` with this layout (`alloc` above).
            return unsafe { Backing.dealloc(ptr, layout) };
        };
        let (Some(free), Some(kept)) = (self.free.get(class), self.kept.get(class)) else {
            return;
        };
        if kept.get() >= KEPT_PER_CLASS {
            // SAFETY: every block of a class comes from `Backing` with the class's layout.
            return unsafe { Backing.dealloc(ptr, block) };
        }
        // SAFETY: the block is at least 16 bytes, aligned to `ALIGN`, and no longer in use.
        unsafe { ptr.cast::<*mut u8>().write(free.get()) };
        free.set(ptr);
        kept.set(kept.get() + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Allocates `layout` from `heap`, fills it with `byte` and returns it.
    fn filled(heap: &SizeClasses, layout: Layout, byte: u8) -> *mut u8 {
        // SAFETY: a non-zero layout; the block is written within its size.
        unsafe {
            let block = heap.alloc(layout);
            assert!(!block.is_null());
            assert_eq!(block as usize % layout.align(), 0, "{layout:?}");
            block.write_bytes(byte, layout.size());
            block
        }
    }

    #[test]
    fn freed_blocks_serve_their_class_again_and_live_blocks_never_overlap() {
        let heap = SizeClasses::new();
        let layouts: Vec<Layout> = [1, 8, 16, 17, 100, 256, 257, 2048, 2049, 10_000]
            .iter()
            .flat_map(|&size| [1, 8, 64].map(|align| Layout::from_size_align(size, align).unwrap()))
            .collect();
        for round in 0..3u8 {
            let live: Vec<(*mut u8, Layout, u8)> = layouts
                .iter()
                .enumerate()
                .map(|(i, &layout)| {
                    let byte = round.wrapping_mul(31).wrapping_add(i as u8);
                    (filled(&heap, layout, byte), layout, byte)
                })
                .collect();
            // Every block still holds its own bytes: none was handed out twice.
            for &(block, layout, byte) in &live {
                // SAFETY: `block` is live and `layout.size()` bytes long.
                let bytes = unsafe { std::slice::from_raw_parts(block, layout.size()) };
                assert!(bytes.iter().all(|&b| b == byte), "{layout:?}");
            }
            for (block, layout, _) in live {
                // SAFETY: allocated above with this layout, freed once.
                unsafe { heap.dealloc(block, layout) };
            }
        }
        // A freed small block is the next one of its class.
        let layout = Layout::from_size_align(40, 8).unwrap();
        let first = filled(&heap, layout, 1);
        // SAFETY: allocated above with this layout.
        unsafe { heap.dealloc(first, layout) };
        assert_eq!(filled(&heap, Layout::from_size_align(64, 4).unwrap(), 2), first);
    }

    #[test]
    fn at_most_a_bounded_number_of_blocks_is_kept() {
        let heap = SizeClasses::new();
        let layout = Layout::from_size_align(100, 8).unwrap();
        let blocks: Vec<*mut u8> = (0..KEPT_PER_CLASS + 10).map(|_| filled(&heap, layout, 0)).collect();
        for block in blocks {
            // SAFETY: allocated above with this layout, freed once.
            unsafe { heap.dealloc(block, layout) };
        }
        let (class, _) = class(layout).unwrap();
        assert_eq!(heap.kept[class].get(), KEPT_PER_CLASS);
        assert_eq!(class_of(Layout::from_size_align(16, 16).unwrap()), None, "alignment above the classes'");
        assert_eq!(class_of(Layout::from_size_align(2049, 1).unwrap()), None, "larger than the classes");
        assert_eq!(class_of(Layout::from_size_align(0, 1).unwrap()), None);
    }

    fn class_of(layout: Layout) -> Option<usize> {
        class(layout).map(|(class, _)| class)
    }
}
