//! How the poller's process is tuned for a life spent mostly waiting (Linux, glibc): one malloc arena, every
//! SIGSEGV fatal, and the memory a cycle used given back before each wait (see crate::residency).

/// The worker sleeps most of its life: one malloc arena (instead of one per thread that ever ran a check)
/// keeps its resident memory small.
pub(crate) fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator tuning and is thread-safe; called before the checks' threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // A fixed threshold (glibc's default 128 KiB, which otherwise grows to the largest block freed): the
        // big buffers of a cycle (the trust store read, the state file) are mapped and unmapped, not left
        // scattered in the heap between small blocks that outlive them.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Rust's runtime handles SIGSEGV and SIGBUS to report stack overflows, and lets a signal that is not a fault
/// of its own (one sent with `kill`, say) pass without effect the first time. A poller that gets one must end,
/// so that its supervisor restarts it and reports why, rather than run on in a state nobody can vouch for; a
/// stack overflow is then reported as SIGSEGV.
pub(crate) fn die_on_every_segfault() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for sig in [Signal::SIGSEGV, Signal::SIGBUS] {
        // SAFETY: the default disposition runs no handler of ours, so nothing can run in signal context.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
}

/// Before the worker waits: returns the memory a cycle or a save freed to the system, and unmaps the code they
/// ran (see crate::residency).
pub(crate) fn give_back_memory() {
    crate::residency::map_only_what_is_used();
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops the pages of code the process no longer runs (see crate::residency).
pub(crate) fn unmap_unused_code() {
    crate::residency::map_only_what_is_used();
}
