//! Keeps the long-running processes' resident memory to the pages they use. When a process touches one page of
//! a file mapping (its own code, libc's), the kernel's fault-around maps up to 64 KiB around it, so a process that
//! runs a little of a large binary has most of it resident: the supervisor, which runs only its wait loop, showed
//! 1.4 MiB of kvvm's code and 1 MiB of libc's. [`map_only_what_is_used`] marks every clean read-only mapping of
//! the executable and of the shared libraries `MADV_RANDOM` (no read-ahead) and drops what is mapped (`MADV_DONTNEED`; the pages stay in the page cache and
//! come back on a minor fault when used again).
//!
//! Only private, non-writable, file-backed mappings without a single anonymous (copied-on-write) page are
//! touched: dropping those loses nothing, since every page equals the file's. Relocated data (RELRO), `.data`,
//! the heap and stacks are never touched.
//!
//! The kernel still maps file pages in 64 KiB windows around each fault (fault-around ignores the advice on
//! Linux 6.x), so a process that runs little of the binary has most of it resident again after a cycle: the
//! poller calls [`map_only_what_is_used`] again each time it has saved its state with no check running, before
//! it waits (and the supervisor before each of its waits). The next cycle maps the pages it runs again with
//! minor faults, from the page cache (`make bench` reports them per cycle).
//!
//! [`POLLER_TUNABLES`] is the glibc tuning the supervisor starts the poller with.

use std::sync::OnceLock;

/// The environment variable that tunes glibc at process start (read once, before `main`).
pub(crate) const TUNABLES_VAR: &str = "GLIBC_TUNABLES";

/// What the poller is started with in [`TUNABLES_VAR`]: no cache of thread stacks. glibc keeps the stacks of
/// finished threads for reuse (up to 40 MiB of them), each with the 24 KiB it never gives back (the thread's
/// control block and its last frames); the poller runs each certificate check on a thread of its own, so a
/// cycle left up to twenty stacks cached, 0.3–0.5 MiB resident through the hour it waits. Without the cache a
/// stack is unmapped when its thread ends, at the cost of one `mmap` for the next thread. glibc before 2.34
/// ignores the name.
pub(crate) const POLLER_TUNABLES: &str = "glibc.pthread.stack_cache_size=0";

/// The value of [`TUNABLES_VAR`] for the poller: [`POLLER_TUNABLES`], then whatever this process was given (an
/// administrator's; later settings win in glibc, so theirs do).
pub(crate) fn poller_tunables() -> std::ffi::OsString {
    tunables_before(std::env::var_os(TUNABLES_VAR).as_deref())
}

/// For the commands the poller runs (post-install hooks): [`TUNABLES_VAR`] as the supervisor found it, without
/// [`POLLER_TUNABLES`] (`None`: unset).
pub(crate) fn tunables_for_commands() -> Option<std::ffi::OsString> {
    tunables_without_ours(std::env::var_os(TUNABLES_VAR).as_deref())
}

fn tunables_without_ours(value: Option<&std::ffi::OsStr>) -> Option<std::ffi::OsString> {
    let value = value?;
    let Some(rest) = value
        .as_encoded_bytes()
        .strip_prefix(POLLER_TUNABLES.as_bytes())
    else {
        return Some(value.to_os_string());
    };
    match rest.strip_prefix(b":") {
        Some(theirs) if !theirs.is_empty() => Some(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(theirs).to_os_string(),
        ),
        _ if rest.is_empty() || rest == b":" => None,
        _ => Some(value.to_os_string()),
    }
}

fn tunables_before(inherited: Option<&std::ffi::OsStr>) -> std::ffi::OsString {
    let mut value = std::ffi::OsString::from(POLLER_TUNABLES);
    if let Some(theirs) = inherited.filter(|v| !v.is_empty()) {
        value.push(":");
        value.push(theirs);
    }
    value
}

/// The mappings [`map_only_what_is_used`] drops, found by its first call: `(start, end)` of every clean
/// read-only mapping of the executable or of a shared library.
static LASTING: OnceLock<Vec<(usize, usize)>> = OnceLock::new();

/// See the module documentation. Failures (no `/proc`, a kernel that refuses the advice) only mean the
/// process keeps the pages it has; they are not errors.
///
/// The first call finds the mappings (and marks them `MADV_RANDOM`); later calls drop the same ranges without
/// reading `/proc` again. Only the executable's and shared libraries' mappings are recorded: they stay mapped
/// for the life of the process (glibc never unloads what ld.so loaded at start, nor the NSS modules it loads
/// later), so a recorded range can never have become another mapping by the time a later call, made while
/// other threads map and unmap memory, advises it.
pub(crate) fn map_only_what_is_used() {
    for &(start, end) in LASTING.get_or_init(lasting_mappings) {
        // SAFETY: the range is one of this process's executable or shared-library mappings, which are never
        // unmapped (see above): private, read-only and with no page that differs from the file. MADV_DONTNEED
        // on such a mapping only unmaps pages that the next access maps again, with the same content, from
        // the page cache.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// Reads `/proc/self/smaps` for the mappings [`LASTING`] holds, and marks each `MADV_RANDOM`.
fn lasting_mappings() -> Vec<(usize, usize)> {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return Vec::new();
    };
    let exe = std::fs::read_link("/proc/self/exe").ok();
    let lasting = |line: &str| {
        let path = line.split_whitespace().nth(5).unwrap_or("");
        is_shared_object(path) || exe.as_deref().is_some_and(|exe| exe.as_os_str() == path)
    };
    let mut clean: Vec<(usize, usize)> = Vec::new();
    // The mapping being read, if it qualifies so far: (start, end).
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(range) = mapping_header(line) {
            if let Some(done) = current.take() {
                clean.push(done);
            }
            current = range.filter(|_| lasting(line));
        } else if let Some(value) = line.strip_prefix("Anonymous:")
            && value.trim() != "0 kB"
        {
            current = None;
        }
    }
    clean.extend(current);
    for &(start, end) in &clean {
        // SAFETY: as in map_only_what_is_used; MADV_RANDOM only changes read-ahead.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
        }
    }
    clean
}

/// A shared library's path: its file name ends in `.so` or in `.so.` and a version (`libc.so.6`,
/// `libacl.so.1.1.2302`).
fn is_shared_object(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or("");
    name.match_indices(".so")
        .any(|(at, _)| match &name[at + 3..] {
            "" => true,
            version => {
                version.len() > 1
                    && version.starts_with('.')
                    && version[1..]
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b == b'.')
            }
        })
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
    fn the_poller_gets_no_stack_cache_and_keeps_an_administrators_tunables() {
        use std::ffi::OsStr;
        assert_eq!(tunables_before(None), "glibc.pthread.stack_cache_size=0");
        assert_eq!(
            tunables_before(Some(OsStr::new(""))),
            "glibc.pthread.stack_cache_size=0"
        );
        assert_eq!(
            tunables_before(Some(OsStr::new("glibc.malloc.check=3"))),
            "glibc.pthread.stack_cache_size=0:glibc.malloc.check=3"
        );
    }

    #[test]
    fn commands_get_the_tunables_the_supervisor_found() {
        use std::ffi::OsStr;
        for inherited in [None, Some("glibc.malloc.check=3")] {
            let ours = tunables_before(inherited.map(OsStr::new));
            assert_eq!(
                tunables_without_ours(Some(&ours)).as_deref(),
                inherited.map(OsStr::new)
            );
        }
        // Set by someone else entirely: left alone.
        assert_eq!(
            tunables_without_ours(Some(OsStr::new("glibc.pthread.stack_cache_size=0x10")))
                .as_deref(),
            Some(OsStr::new("glibc.pthread.stack_cache_size=0x10"))
        );
        assert_eq!(tunables_without_ours(None), None);
    }

    /// Anonymous read-write mappings of a thread stack's size or more: live and cached stacks.
    fn stack_sized_mappings() -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        maps.lines()
            .filter(|l| l.contains(" rw-p 00000000 00:00 0") && l.trim_end().ends_with(" 0"))
            .filter_map(|l| {
                let (start, end) = l.split_whitespace().next()?.split_once('-')?;
                let len =
                    usize::from_str_radix(end, 16).ok()? - usize::from_str_radix(start, 16).ok()?;
                (len >= 2 << 20).then_some(())
            })
            .count()
    }

    /// In a child process started by the test below: eight threads that end, then how many more stack-sized
    /// mappings there are than before.
    #[test]
    fn stacks_left_by_finished_threads() {
        if std::env::var_os("KVVM_TEST_STACKS_CHILD").is_none() {
            return;
        }
        let before = stack_sized_mappings();
        let threads: Vec<_> = (0..8)
            .map(|i| std::thread::spawn(move || std::hint::black_box(vec![i; 1000]).len()))
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        println!("stacks left: {}", stack_sized_mappings() - before);
    }

    #[test]
    fn without_the_stack_cache_finished_threads_leave_no_stacks() {
        let left = |tunables: Option<&str>| {
            let mut child = std::process::Command::new(std::env::current_exe().expect("exe"));
            child
                .args([
                    "--exact",
                    "residency::tests::stacks_left_by_finished_threads",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("KVVM_TEST_STACKS_CHILD", "1")
                .env_remove(TUNABLES_VAR);
            if let Some(t) = tunables {
                child.env(TUNABLES_VAR, t);
            }
            let out = child.output().expect("run the child");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{text}");
            text.lines()
                .find_map(|l| l.split_once("stacks left: ").map(|(_, n)| n))
                .unwrap_or_else(|| panic!("no count in {text}"))
                .trim()
                .parse::<usize>()
                .expect("a count")
        };
        // glibc caches them by default (the reason for POLLER_TUNABLES) ...
        assert!(left(None) > 0);
        // ... and unmaps each when its thread ends without the cache.
        assert_eq!(left(Some(POLLER_TUNABLES)), 0);
    }

    #[test]
    fn only_shared_libraries_count_as_shared_objects() {
        for yes in [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
            "/usr/lib/libacl.so",
            "/usr/lib/x86_64-linux-gnu/libacl.so.1.1.2302",
        ] {
            assert!(is_shared_object(yes), "{yes}");
        }
        for no in [
            "/usr/bin/kvvm",
            "/etc/ld.so.cache",
            "/usr/lib/locale/locale-archive",
            "/var/lib/x.sofa",
            "/usr/lib/libc.so.6 (deleted)",
            "/usr/lib/libx.so.",
            "",
        ] {
            assert!(!is_shared_object(no), "{no}");
        }
    }

    #[test]
    fn the_executable_and_libc_are_recorded_and_nothing_else() {
        map_only_what_is_used();
        let ranges = LASTING.get().expect("recorded by the first call");
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let exe = std::fs::read_link("/proc/self/exe").expect("exe");
        let path_of = |start: usize| {
            maps.lines()
                .find(|l| l.starts_with(&format!("{start:x}-")))
                .and_then(|l| l.split_whitespace().nth(5))
                .unwrap_or("")
                .to_string()
        };
        let paths: Vec<String> = ranges.iter().map(|&(start, _)| path_of(start)).collect();
        assert!(
            paths.iter().any(|p| exe.as_os_str() == p.as_str()),
            "{paths:?}"
        );
        assert!(paths.iter().any(|p| p.contains("libc.so")), "{paths:?}");
        assert!(
            paths
                .iter()
                .all(|p| exe.as_os_str() == p.as_str() || is_shared_object(p)),
            "{paths:?}"
        );
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
