//! The process allocator (mimalloc) and what it does with memory that tensors free.
//!
//! Tensor code allocates and frees many large buffers per step; glibc's allocator returns them
//! to the kernel each time (page faults and TLB shootdowns were ~25% of a training step in
//! `perf`). mimalloc reuses them, but by default still returns ("purges") memory that stayed free
//! for a second: a training step then keeps faulting in fresh, zeroed pages for buffers it had a
//! step earlier (`perf`: 10% of a `train_lora` step in the kernel's `clear_page`).

use libmimalloc_sys::{mi_option_set, mi_option_t};

/// The global allocator of the `prefine` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's `mi_option_purge_delay` (`mimalloc.h`): milliseconds before free memory goes
/// back to the OS, -1 for never. `libmimalloc-sys` names no constant for it; the test below
/// checks that this index behaves as that option.
const PURGE_DELAY: mi_option_t = 15;

/// Keeps freed memory committed for reuse for the rest of the process (mimalloc's purge delay
/// -1). For compute commands: the process's memory then stays at its peak working set instead
/// of being returned and faulted back in step after step (`train_lora` +4.5% tokens/s, peak RSS
/// +5-8%). `serve`, long-lived and idle between requests, keeps the default.
pub fn keep_freed_memory() {
    set_purge_delay(-1);
}

fn set_purge_delay(ms: std::ffi::c_long) {
    // SAFETY: setting a mimalloc option is thread-safe and takes effect at the next purge
    // decision; any value is valid for this option.
    unsafe { mi_option_set(PURGE_DELAY, ms) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident set size of this process in bytes (`/proc/self/statm`).
    fn rss_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// RSS before and after allocating, touching and freeing 64 MiB, then forcing a collection.
    fn rss_drop_after_free() -> isize {
        const LEN: usize = 64 << 20;
        let mut buf = vec![0u8; LEN];
        for i in (0..LEN).step_by(4096) {
            buf[i] = 1;
        }
        std::hint::black_box(&buf);
        let held = rss_bytes();
        drop(buf);
        // SAFETY: a forced collection is always allowed.
        unsafe { libmimalloc_sys::mi_collect(true) };
        held as isize - rss_bytes() as isize
    }

    /// With purging immediate, freed memory leaves the process; after `keep_freed_memory` it
    /// stays (so `PURGE_DELAY` is the purge-delay option of the linked mimalloc).
    #[test]
    fn keep_freed_memory_stops_returning_memory_to_the_os() {
        set_purge_delay(0);
        let returned = rss_drop_after_free();
        assert!(
            returned > 48 << 20,
            "immediate purge: only {returned} bytes returned"
        );
        keep_freed_memory();
        let returned = rss_drop_after_free();
        assert!(returned < 8 << 20, "purging off: {returned} bytes returned");
    }
}
