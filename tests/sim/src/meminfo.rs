//! What a set of processes really holds in memory, for the benchmark's memory figures. VmRSS alone misleads in
//! both directions: summed over a supervisor and its poller it counts the pages of the binary they share twice,
//! and Pss splits shared libc pages with every other process on the machine, which hides them. The union of
//! the physical pages the set maps (`/proc/PID/pagemap`, PFNs readable by root) is what the set occupies: a page
//! shared by the two processes counts once, a libc page shared with the rest of the machine counts in full.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};

/// One mapping name's share of a process's resident memory (mappings with the same name added up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The file path, `[heap]`, `[stack]`, or `[anon]` for anonymous mappings without a name.
    pub name: String,
    /// Resident pages (KiB).
    pub rss_kib: u64,
    /// Proportional share (KiB).
    pub pss_kib: u64,
    /// Of `rss_kib`, anonymous pages (heap, stacks, copied-on-write data).
    pub anon_kib: u64,
}

/// The memory of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// `VmRSS` of `/proc/PID/status` (KiB).
    pub rss_kib: u64,
    /// Sum of `Pss` over its mappings (KiB).
    pub pss_kib: u64,
    /// Resident anonymous pages (KiB).
    pub anon_kib: u64,
    /// Resident file-backed pages, shared memory included (KiB): `RssFile` + `RssShmem`.
    pub file_kib: u64,
    /// Threads (`Threads:` of `/proc/PID/status`).
    pub threads: u64,
    /// Every mapping name with resident pages, largest `rss_kib` first.
    pub mappings: Vec<Mapping>,
}

/// The memory of a set of processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// Each process, in the order asked for.
    pub processes: Vec<Process>,
    /// Distinct physical pages present in any of the processes (KiB): the memory the set occupies.
    pub distinct_kib: u64,
    /// Of `distinct_kib`, anonymous pages private to one process.
    pub distinct_anon_kib: u64,
}

impl Set {
    /// Sum of VmRSS (KiB): pages shared by two processes of the set count twice.
    pub fn rss_kib(&self) -> u64 {
        self.processes.iter().map(|p| p.rss_kib).sum()
    }

    /// Sum of Pss (KiB).
    pub fn pss_kib(&self) -> u64 {
        self.processes.iter().map(|p| p.pss_kib).sum()
    }

    /// Sum of anonymous resident pages (KiB).
    pub fn anon_kib(&self) -> u64 {
        self.processes.iter().map(|p| p.anon_kib).sum()
    }

    /// Sum of file-backed resident pages (KiB).
    pub fn file_kib(&self) -> u64 {
        self.processes.iter().map(|p| p.file_kib).sum()
    }
}

/// Measures `pids`. Needs root for the distinct pages (the kernel hides PFNs from others): without it, that
/// part fails with `PermissionDenied`.
pub fn measure(pids: &[u32]) -> io::Result<Set> {
    let mut processes = Vec::new();
    let mut pages: HashSet<u64> = HashSet::new();
    let mut anon_pages: HashSet<u64> = HashSet::new();
    let page_kib = page_size() / 1024;
    for &pid in pids {
        processes.push(process(pid)?);
        present_pages(pid, &mut pages, &mut anon_pages)?;
    }
    Ok(Set {
        processes,
        distinct_kib: pages.len() as u64 * page_kib,
        distinct_anon_kib: anon_pages.len() as u64 * page_kib,
    })
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as u64
}

fn process(pid: u32) -> io::Result<Process> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut by_name: BTreeMap<String, Mapping> = BTreeMap::new();
    let mut name = String::new();
    for line in smaps.lines() {
        if let Some(header) = mapping_name(line) {
            name = header;
            continue;
        }
        let kib = |prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        let entry = by_name.entry(name.clone()).or_insert_with(|| Mapping {
            name: name.clone(),
            rss_kib: 0,
            pss_kib: 0,
            anon_kib: 0,
        });
        if let Some(v) = kib("Rss:") {
            entry.rss_kib += v;
        } else if let Some(v) = kib("Pss:") {
            entry.pss_kib += v;
        } else if let Some(v) = kib("Anonymous:") {
            entry.anon_kib += v;
        }
    }
    let mut mappings: Vec<Mapping> = by_name.into_values().filter(|m| m.rss_kib > 0).collect();
    mappings.sort_by(|a, b| b.rss_kib.cmp(&a.rss_kib).then(a.name.cmp(&b.name)));
    Ok(Process {
        pid,
        rss_kib: field("VmRSS:"),
        pss_kib: mappings.iter().map(|m| m.pss_kib).sum(),
        anon_kib: field("RssAnon:"),
        file_kib: field("RssFile:") + field("RssShmem:"),
        threads: field("Threads:"),
        mappings,
    })
}

/// For a mapping header line of smaps or maps (`start-end perms offset dev inode [path]`), its name.
fn mapping_name(line: &str) -> Option<String> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    u64::from_str_radix(start, 16).ok()?;
    u64::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    if perms.len() != 4 {
        return None;
    }
    let rest: Vec<&str> = fields.skip(3).collect();
    Some(if rest.is_empty() {
        "[anon]".to_string()
    } else {
        rest.join(" ")
    })
}

/// Adds the PFN of every present page of `pid` to `pages`, and those of private anonymous pages to `anon`.
fn present_pages(pid: u32, pages: &mut HashSet<u64>, anon: &mut HashSet<u64>) -> io::Result<()> {
    const PRESENT: u64 = 1 << 63;
    const FILE_OR_SHARED: u64 = 1 << 61;
    const PFN: u64 = (1 << 55) - 1;
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut pagemap = fs::File::open(format!("/proc/{pid}/pagemap"))?;
    let page = page_size();
    let mut saw_present = false;
    let mut saw_pfn = false;
    for line in maps.lines() {
        let Some(name) = mapping_name(line) else {
            continue;
        };
        // Kernel pages that no process's RSS counts.
        if matches!(name.as_str(), "[vvar]" | "[vvar_vclock]" | "[vsyscall]") {
            continue;
        }
        let Some((start, end)) = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'))
        else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let count = ((end - start) / page) as usize;
        let mut buf = vec![0u8; count * 8];
        pagemap.seek(SeekFrom::Start(start / page * 8))?;
        pagemap.read_exact(&mut buf)?;
        for entry in buf.chunks_exact(8) {
            let entry = u64::from_le_bytes(entry.try_into().expect("8 bytes"));
            if entry & PRESENT == 0 {
                continue;
            }
            saw_present = true;
            let pfn = entry & PFN;
            if pfn == 0 {
                continue;
            }
            saw_pfn = true;
            pages.insert(pfn);
            if entry & FILE_OR_SHARED == 0 {
                anon.insert(pfn);
            }
        }
    }
    if saw_present && !saw_pfn {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("/proc/{pid}/pagemap shows no page frame numbers: run as root"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_names() {
        assert_eq!(
            mapping_name("55d0c0000000-55d0c0200000 r-xp 00001000 08:01 1234 /usr/bin/kvvm")
                .as_deref(),
            Some("/usr/bin/kvvm")
        );
        assert_eq!(
            mapping_name("7ffd1000-7ffd3000 rw-p 00000000 00:00 0").as_deref(),
            Some("[anon]")
        );
        assert_eq!(
            mapping_name("7ffd1000-7ffd3000 rw-p 00000000 00:00 0 [stack]").as_deref(),
            Some("[stack]")
        );
        assert_eq!(mapping_name("Rss:                 892 kB"), None);
    }

    #[test]
    fn this_process_holds_its_own_pages() {
        let set = measure(&[std::process::id()]).expect("measure");
        let me = &set.processes[0];
        assert!(me.rss_kib > 0 && me.pss_kib > 0 && !me.mappings.is_empty());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Each present page once: never more than the RSS plus the pages that appeared meanwhile.
            assert!(set.distinct_kib > 0);
        }
    }
}
