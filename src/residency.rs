//! Keeps the long-running processes' resident memory to the pages they use. When a process touches one page of
//! a file mapping (its own code, libc's), the kernel's fault-around maps up to 64 KiB around it, so a process that
//! runs a little of a large binary has most of it resident: the supervisor, which runs only its wait loop, showed
//! 1.4 MiB of kvvm's code and 1 MiB of libc's. [`map_only_what_is_used`] marks every clean read-only file mapping
//! `MADV_RANDOM` (no read-ahead) and drops what is mapped (`MADV_DONTNEED`; the pages stay in the page cache and
//! come back on a minor fault when used again).
//!
//! Only private, non-writable, file-backed mappings without a single anonymous (copied-on-write) page are
//! touched: dropping those loses nothing, since every page equals the file's. Relocated data (RELRO), `.data`,
//! the heap and stacks are never touched.
//!
//! The kernel still maps file pages in 64 KiB windows around each fault (fault-around ignores the advice on
//! Linux 6.x), so a process that runs little of the binary has most of it resident again after a cycle: the
//! poller calls [`map_only_what_is_used`] again each time it has saved its state with no check running, before
//! it waits (and the supervisor after it started a poller). The next cycle maps the pages it runs again with
//! minor faults, from the page cache (`make bench` reports them per cycle).

/// See the module documentation. Failures (no `/proc`, a kernel that refuses the advice) only mean the
/// process keeps the pages it has; they are not errors.
pub fn map_only_what_is_used() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut clean: Vec<(usize, usize)> = Vec::new();
    // The mapping being read, if it qualifies so far: (start, end).
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(range) = mapping_header(line) {
            if let Some(done) = current.take() {
                clean.push(done);
            }
            current = range;
        } else if let Some(value) = line.strip_prefix("Anonymous:")
            && value.trim() != "0 kB"
        {
            current = None;
        }
    }
    clean.extend(current);
    drop(smaps);
    for (start, end) in clean {
        let (addr, len) = (start as *mut libc::c_void, end - start);
        // SAFETY: the range is one of this process's own mappings, private, read-only and with no page that
        // differs from the file: MADV_RANDOM only changes read-ahead, and MADV_DONTNEED on such a mapping
        // only unmaps pages that the next access maps again, with the same content, from the page cache.
        unsafe {
            if libc::madvise(addr, len, libc::MADV_RANDOM) == 0 {
                libc::madvise(addr, len, libc::MADV_DONTNEED);
            }
        }
    }
}

/// For a mapping header line of `/proc/self/smaps` (`start-end perms offset dev inode path`): `Some(range)` if
/// it is a private, non-writable mapping of a file, `Some(None)` for any other mapping, `None` for other lines.
#[allow(clippy::option_option)]
fn mapping_header(line: &str) -> Option<Option<(usize, usize)>> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?.as_bytes();
    if perms.len() != 4 {
        return None;
    }
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("");
    let eligible = perms[1] == b'-'
        && perms[3] == b'p'
        && inode != "0"
        && path.starts_with('/')
        && end > start;
    Some(eligible.then_some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_read_only_file_mappings_qualify() {
        let text = "55d0c0000000-55d0c0200000 r-xp 00001000 08:01 1234 /usr/bin/kvvm";
        assert_eq!(
            mapping_header(text),
            Some(Some((0x55d0c0000000, 0x55d0c0200000)))
        );
        for other in [
            "55d0c0000000-55d0c0200000 rw-p 00001000 08:01 1234 /usr/bin/kvvm",
            "55d0c0000000-55d0c0200000 r--s 00001000 08:01 1234 /dev/shm/x",
            "7ffd1000-7ffd3000 rw-p 00000000 00:00 0 [stack]",
            "7ffd1000-7ffd3000 r-xp 00000000 00:00 0 [vdso]",
            "7ffd1000-7ffd3000 r--p 00000000 00:00 0",
        ] {
            assert_eq!(mapping_header(other), Some(None), "{other}");
        }
        for not_a_header in [
            "Rss:                 892 kB",
            "VmFlags: rd ex mr mw me",
            "Anonymous: 0 kB",
        ] {
            assert_eq!(mapping_header(not_a_header), None, "{not_a_header}");
        }
    }

    #[test]
    fn the_process_runs_on_after_its_pages_are_dropped() {
        map_only_what_is_used();
        // Code, read-only data and libc all fault back in.
        let s: String = (0..1000).map(|i| format!("{i}")).collect();
        assert!(s.len() > 1000);
        assert_eq!(std::env::consts::OS, "linux");
    }

    #[test]
    fn the_pages_can_be_dropped_again_after_each_burst_of_work() {
        for round in 0..3 {
            let sums: Vec<usize> = (0..4)
                .map(|i| std::thread::spawn(move || (0..10_000).map(|n| n * i).sum::<usize>()))
                .map(|t| t.join().expect("thread"))
                .collect();
            map_only_what_is_used();
            assert_eq!(sums[1], 49_995_000, "round {round}");
        }
    }
}
