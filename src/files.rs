//! The file mechanics every layer shares, written once: a file replaced the crash-safe way (new temp file in the
//! same folder, fsync, rename, fsync the folder) and the lock files that serialise workers and installs. The
//! store, the waagent files (status, heartbeat, `mrseq`, state) and the supervisor all go through these, so a fix to one (a flag, an fsync) reaches every file kvvm writes.
//!
//! Errors are plain [`io::Error`]s: each caller wraps them in its own layer's error, naming its file.
//!
//! On Windows a file's access comes from its folder's ACL (there is no mode to give it), a planted symlink
//! needs a privilege kvvm's callers do not grant, and a rename is made durable by `MOVEFILE_WRITE_THROUGH`
//! instead of a folder fsync, which Windows has no call for.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// Creates `path` as a new file (`O_EXCL`: never an existing file, `O_NOFOLLOW`: never through a planted
/// symlink) with `mode` (less the umask) from its first byte, writes `contents`, lets `before_sync` act on the
/// still-open file's path (a store file gets its ACL there), and fsyncs it. I/O failures go through `io_err`.
/// The file is left in place on failure: the caller decides whether it is a temp file to remove.
pub(crate) fn write_new<E>(
    path: &Path,
    contents: &[u8],
    mode: u32,
    io_err: impl Fn(io::Error) -> E,
    before_sync: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(&io_err)?;
    file.write_all(contents).map_err(&io_err)?;
    before_sync(path)?;
    file.sync_all().map_err(&io_err)
}

/// Writes `contents` to the new file `temp` as [`write_new`] does and renames it over `target`, so readers see
/// the old file or the new one, never a part. A rename replaces whatever is at `target`: a planted symlink is
/// replaced, never followed. `temp` is removed on failure. The folder is not fsynced (see [`sync_folder`]):
/// the store fsyncs it once for several files.
pub(crate) fn replace_with<E>(
    temp: &Path,
    target: &Path,
    contents: &[u8],
    mode: u32,
    io_err: impl Fn(io::Error) -> E,
    before_sync: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let result = write_new(temp, contents, mode, &io_err, before_sync)
        .and_then(|()| rename(temp, target).map_err(&io_err));
    if result.is_err() {
        let _ = fs::remove_file(temp);
    }
    result
}

/// Renames `from` over `to` (replacing it) the way that survives a crash: on Linux a plain rename, which the
/// caller's [`sync_folder`] makes durable; on Windows with `MOVEFILE_WRITE_THROUGH`, which returns only once
/// the move is on disk.
fn rename(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(unix)]
    return fs::rename(from, to);
    #[cfg(windows)]
    {
        use std::os::windows::ffi::OsStrExt;
        use windows_sys::Win32::Storage::FileSystem::{
            MOVEFILE_REPLACE_EXISTING, MOVEFILE_WRITE_THROUGH, MoveFileExW,
        };
        let wide = |p: &Path| -> Vec<u16> {
            p.as_os_str()
                .encode_wide()
                .chain(std::iter::once(0))
                .collect()
        };
        let (from, to) = (wide(from), wide(to));
        // SAFETY: both are NUL-terminated UTF-16 paths that outlive the call.
        let ok = unsafe {
            MoveFileExW(
                from.as_ptr(),
                to.as_ptr(),
                MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Fsyncs a folder, so that the renames and new entries in it survive a crash. On Windows there is no such
/// call: [`rename`] wrote through already.
pub(crate) fn sync_folder(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    return File::open(dir)?.sync_all();
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Creates `dir` and its missing parents, each new one with `mode` (less the umask; on Windows it inherits its
/// parent's ACL).
pub(crate) fn create_folder(dir: &Path, mode: u32) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(mode);
    #[cfg(not(unix))]
    let _ = mode;
    builder.create(dir)
}

/// Writes a file the crash-safe way: a temp file beside it (`.<name>.tmp.<pid>.<random>`) with its final `mode`,
/// fsync, rename over `path`, fsync the folder.
pub(crate) fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{name}.tmp.{}.{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    replace_with(&temp, path, contents, mode, |e| e, |_| Ok(()))?;
    sync_folder(dir)
}

/// Removes the temp files [`write_atomically`] left in `dir` when its process was killed mid-write
/// (`.<name>.tmp.<pid>.<random>` whose pid no longer runs); the files they were for are untouched (the rename
/// never happened). Called by the one process that owns `dir` (the worker's keeper, at its start).
pub(crate) fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_file_pid) else {
            continue;
        };
        if !process_runs(pid) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether the process `pid` runs now.
pub(crate) fn process_runs(pid: u32) -> bool {
    #[cfg(unix)]
    {
        pid != 0 && Path::new("/proc").join(pid.to_string()).exists()
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::Foundation::{CloseHandle, STILL_ACTIVE};
        use windows_sys::Win32::System::Threading::{
            GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
        };
        // SAFETY: the handle is checked, read and closed once; `code` outlives the call.
        unsafe {
            let process = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
            if process.is_null() {
                return false;
            }
            let mut code = 0u32;
            let read = GetExitCodeProcess(process, &mut code);
            CloseHandle(process);
            read != 0 && code == STILL_ACTIVE as u32
        }
    }
}

/// The pid in a [`write_atomically`] temp file's name, if `name` is one.
fn temp_file_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp.")?;
    let (pid, random) = tail.split_once('.')?;
    (random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
    pid.parse().ok()
}

/// Opens (creating if needed) the lock file `path` for reading and writing, mode 0600, never through a symlink
/// (`O_NOFOLLOW`) and never truncated (it may hold a label); its folder is created 0700 first. The caller takes
/// the kernel lock on the returned file (`File::lock`, `File::try_lock`), which ends with the process.
pub(crate) fn open_lock(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        create_folder(dir, 0o700)?;
    }
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    options
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    options.open(path)
}

/// Opens the lock file `path` ([`open_lock`]) and takes its exclusive lock, trying for up to `patience` (a
/// holder that is exiting lets go within it); `None` when another process still holds it then.
pub(crate) fn try_lock_for(path: &Path, patience: Duration) -> io::Result<Option<File>> {
    let file = open_lock(path)?;
    let deadline = Instant::now() + patience;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(LOCK_RETRY)
            }
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// How often [`try_lock_for`] tries again.
const LOCK_RETRY: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_not_taken_and_a_released_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks").join("poller.lock");
        let held = try_lock_for(&path, Duration::ZERO).unwrap().expect("free");
        assert!(
            try_lock_for(&path, Duration::from_millis(30))
                .unwrap()
                .is_none()
        );
        drop(held);
        assert!(try_lock_for(&path, Duration::ZERO).unwrap().is_some());
    }

    #[test]
    fn this_process_runs_and_a_finished_one_does_not() {
        assert!(process_runs(std::process::id()));
        let exe = std::env::current_exe().unwrap();
        let mut child = std::process::Command::new(exe)
            .arg("--list")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_runs(pid));
        assert!(!process_runs(0));
    }
    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt;

    #[test]
    #[cfg(unix)]
    fn a_killed_writers_temp_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let dead = ".heartbeat.json.tmp.999999999.0123456789abcdef";
        let alive = format!(".state.json.tmp.{}.0123456789abcdef", std::process::id());
        for name in [
            dead,
            alive.as_str(),
            "state.json",
            ".state.json",
            "x.tmp.1.2",
            ".a.tmp.12.short",
        ] {
            fs::write(dir.path().join(name), "x").unwrap();
        }
        remove_stale_temp_files(dir.path());
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![
            alive,
            "state.json".into(),
            ".state.json".into(),
            "x.tmp.1.2".into(),
            ".a.tmp.12.short".into(),
        ];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    #[cfg(unix)]
    fn write_atomically_replaces_a_planted_symlink_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let path = dir.path().join("status.json");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_atomically(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_failed_write_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join("temp");
        let target = dir.path().join("sub").join("target");
        let e = replace_with(&temp, &target, b"x", 0o600, |e| e, |_| Ok(())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(!temp.exists());
    }

    #[test]
    #[cfg(unix)]
    fn open_lock_creates_its_folder_and_refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("locks").join("a.lock");
        let file = open_lock(&lock).unwrap();
        file.try_lock().unwrap();
        let meta = fs::metadata(&lock).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let planted = dir.path().join("locks").join("b.lock");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &planted).unwrap();
        assert!(open_lock(&planted).is_err());
        assert!(!dir.path().join("elsewhere").exists());
    }

    #[test]
    fn write_atomically_replaces_the_file_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        write_atomically(&path, b"old", 0o644).unwrap();
        write_atomically(&path, b"new", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["status.json"]);
    }

    #[test]
    fn a_lock_file_is_made_with_its_folder_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks").join("worker.lock");
        let first = open_lock(&path).unwrap();
        first.try_lock().unwrap();
        let second = open_lock(&path).unwrap();
        assert!(matches!(
            second.try_lock(),
            Err(fs::TryLockError::WouldBlock)
        ));
        drop(first);
        second.try_lock().unwrap();
    }
}
