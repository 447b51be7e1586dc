//! How the poller's process is tuned for a life spent mostly waiting, on Windows. The Windows heap has no
//! per-thread arenas to limit, and an access violation already ends the process (the keeper then reports and
//! restarts it), so only giving memory back is left: before each wait, the heap's free blocks are coalesced and
//! released, and the pages the process no longer touches leave its working set (they come back, from memory,
//! at the next cycle: Windows keeps them on its standby list).

use windows_sys::Win32::System::Memory::{GetProcessHeap, HeapCompact};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, SetProcessWorkingSetSize};

/// Nothing to do: the Windows heap does not grow an arena per thread.
pub(crate) fn limit_malloc_arenas() {}

/// Nothing to do: on Windows an access violation or a stack overflow ends the process.
pub(crate) fn die_on_every_segfault() {}

/// Before the worker waits: the heap's free memory back to the system, and the working set trimmed.
pub(crate) fn give_back_memory() {
    // SAFETY: HeapCompact on the process heap, which lives as long as the process, has no other precondition.
    unsafe {
        HeapCompact(GetProcessHeap(), 0);
    }
    unmap_unused_code();
}

/// Takes the pages the process is not using out of its working set (Linux: drops the code it no longer runs).
pub(crate) fn unmap_unused_code() {
    // SAFETY: (-1, -1) on the current process's pseudo-handle asks Windows to trim the working set; no memory of
    // ours is touched.
    unsafe {
        SetProcessWorkingSetSize(GetCurrentProcess(), usize::MAX, usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_given_back_is_still_usable() {
        let kept = vec![7u8; 1 << 20];
        drop(vec![1u8; 8 << 20]);
        give_back_memory();
        assert!(kept.iter().all(|b| *b == 7));
    }
}
