//! Giving an idle process's freed memory back to the system.
//!
//! `rk3sd agent` runs on glibc's malloc (the binary picks the allocator
//! per role before its first allocation). glibc returns freed memory only
//! from the top of its heaps; pages freed in the middle stay resident
//! until `malloc_trim` hands them back. A kubelet's sync pass allocates
//! and frees a runtime listing and every pod's status each second, so
//! without a trim the agent held the high-water mark of its busiest pass
//! (about 4 MiB more at 100 pods; docs/benchmarks.md).

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether this process allocates with glibc's malloc. Read by the
/// binary's global allocator on every call, so it is set once, before the
/// first allocation, and never changed.
static SYSTEM_MALLOC: AtomicBool = AtomicBool::new(false);

/// Called by the binary before its first allocation when it picks glibc's
/// malloc over mimalloc.
pub fn use_system_malloc() {
    SYSTEM_MALLOC.store(true, Ordering::Relaxed);
}

/// Whether glibc's malloc was picked: [`release_freed`] trims only then
/// (mimalloc purges by itself).
#[inline]
pub fn on_system_malloc() -> bool {
    SYSTEM_MALLOC.load(Ordering::Relaxed)
}

/// After a burst of work: return the free pages inside the heaps.
/// It walks glibc's free lists, a fraction of a millisecond for an agent.
pub fn release_freed() {
    if on_system_malloc() {
        // SAFETY: malloc_trim only releases memory no allocation uses.
        unsafe { libc::malloc_trim(0) };
    }
}
