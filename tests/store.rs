//! The certificate store: atomic installs, the link swap, idempotence, planted symlinks, crash leftovers,
//! retention, ACLs (checked with `getfacl` and by reading as another user, for groups too large for a 16 KiB
//! look-up buffer), a process killed at random instants while installing, and the store locks kept in kvvm's
//! state folder so that nothing but certificates and links is ever left in the store.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kvvm::{
    FolderFile, Install, LEGACY_LOCK_FILE, LinkName, PrincipalKind, SecretRef, Store, StoreError,
    TEMP_PREFIX, Version, lock_file_name, resolve_principals,
};

/// An `acls` entry as the settings give it: a user, a group, or both.
struct AclEntry {
    user: Option<String>,
    group: Option<String>,
}

/// Resolves the entries the way `sync` does before an install: each entry's user, then its group.
fn resolve(acls: &[AclEntry]) -> Result<Vec<kvvm::Principal>, StoreError> {
    resolve_principals(acls.iter().flat_map(|e| {
        let user = e.user.as_deref().map(|u| (PrincipalKind::User, u));
        let group = e.group.as_deref().map(|g| (PrincipalKind::Group, g));
        user.into_iter().chain(group)
    }))
}

/// The certificate most tests install: `web` of vault `myvault`.
fn web() -> SecretRef {
    SecretRef {
        vault: "myvault".into(),
        name: "web".into(),
    }
}

const V1: &str = "11111111111111111111111111111111";
const V2: &str = "22222222222222222222222222222222";
const V3: &str = "33333333333333333333333333333333";
const V4: &str = "44444444444444444444444444444444";

fn content(version: &str) -> Vec<u8> {
    // Large enough that a torn write would be visible.
    let mut c = format!("-----BEGIN CERTIFICATE-----\n{version}\n").into_bytes();
    c.extend(std::iter::repeat_n(b'A', 256 * 1024));
    c.extend(format!("\n-----END PRIVATE KEY-----\n{version}\n").into_bytes());
    c
}

fn install(store: &Store, version: &str, link: &str) -> Result<kvvm::Installed, StoreError> {
    install_with(store, version, link, &content(version), &[], 2)
}

fn install_with(
    store: &Store,
    version: &str,
    link: &str,
    pem: &[u8],
    acls: &[AclEntry],
    retained: u32,
) -> Result<kvvm::Installed, StoreError> {
    let acls = resolve(acls)?;
    store.install(&Install {
        secret: &web(),
        link_name: &LinkName::parse(link).expect("a plain file name"),
        version: &Version::parse(version).expect("32 hex digits"),
        pem,
        acls: &acls,
        retained_versions: retained,
        folder: &[],
    })
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Every name in the folder (nothing filtered: the store must hold only certificates and links).
fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    n.sort();
    n
}

/// A store folder and kvvm's lock folder (`<state>/store-locks`) side by side in one temp dir.
struct Fixture {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    locks: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let locks = tmp.path().join("state").join("store-locks");
        Fixture { tmp, dir, locks }
    }

    fn open(&self) -> Store {
        Store::open(&self.dir, &self.locks).unwrap()
    }
}

/// Whether every name is a link or a version file of `myvault.web` (or of one of `prefixes`).
fn only_certificates_and_links(dir: &Path, prefixes: &[&str]) -> bool {
    names(dir).iter().all(|n| {
        prefixes.iter().any(|p| {
            n == p
                || n.strip_prefix(p)
                    .and_then(|v| v.strip_prefix('.'))
                    .is_some_and(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        })
    })
}

#[test]
fn installs_a_0600_file_behind_a_relative_link_in_a_0700_folder() {
    let f = Fixture::new();
    let dir = f.tmp.path().join("a/b/store");
    let store = Store::open(&dir, &f.locks).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(dir.parent().unwrap()), 0o755);
    let done = install(&store, V1, "myvault.web").unwrap();
    assert!(done.written && done.link_changed);
    assert_eq!(done.file, dir.join(format!("myvault.web.{V1}")));
    assert_eq!(mode(&done.file), 0o600);
    assert_eq!(fs::read(&done.file).unwrap(), content(V1));
    assert_eq!(
        fs::read_link(&done.link).unwrap(),
        PathBuf::from(format!("myvault.web.{V1}"))
    );
    assert_eq!(fs::read(&done.link).unwrap(), content(V1));
    assert_eq!(
        store.current_version("myvault.web", &web()).as_deref(),
        Some(V1)
    );
    assert_eq!(
        names(&dir),
        vec!["myvault.web".to_string(), format!("myvault.web.{V1}")]
    );
}

#[test]
fn an_existing_open_folder_is_closed_to_0700() {
    let f = Fixture::new();
    fs::create_dir(&f.dir).unwrap();
    fs::set_permissions(&f.dir, fs::Permissions::from_mode(0o777)).unwrap();
    f.open();
    assert_eq!(mode(&f.dir), 0o700);
}

#[test]
fn a_relative_folder_or_a_file_in_the_way_is_refused() {
    let f = Fixture::new();
    let e = Store::open(Path::new("relative/store"), &f.locks).unwrap_err();
    assert!(e.to_string().contains("not an absolute path"), "{e}");
    let file = f.tmp.path().join("file");
    fs::write(&file, "x").unwrap();
    let e = Store::open(&file, &f.locks).unwrap_err();
    assert!(e.to_string().contains("is not a folder"), "{e}");
}

#[test]
fn installing_the_same_version_again_writes_nothing() {
    let f = Fixture::new();
    let store = f.open();
    let first = install(&store, V1, "myvault.web").unwrap();
    let before = fs::metadata(&first.file).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let again = install(&store, V1, "myvault.web").unwrap();
    assert!(!again.written && !again.link_changed, "{again:?}");
    let after = fs::metadata(&first.file).unwrap();
    assert_eq!(before.ino(), after.ino());
    assert_eq!(before.mtime_nsec(), after.mtime_nsec());
    // A damaged file with the same name is rewritten.
    fs::write(&first.file, b"truncated").unwrap();
    let repaired = install(&store, V1, "myvault.web").unwrap();
    assert!(repaired.written && !repaired.link_changed);
    assert_eq!(fs::read(&first.file).unwrap(), content(V1));
}

#[test]
fn rotation_moves_the_link_and_retention_keeps_current_and_previous() {
    let f = Fixture::new();
    let dir = f.dir.as_path();
    let store = f.open();
    install(&store, V1, "myvault.web").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let second = install(&store, V2, "myvault.web").unwrap();
    assert!(second.removed.is_empty());
    assert_eq!(fs::read(dir.join("myvault.web")).unwrap(), content(V2));
    std::thread::sleep(Duration::from_millis(20));
    let third = install(&store, V3, "myvault.web").unwrap();
    assert_eq!(third.removed, vec![dir.join(format!("myvault.web.{V1}"))]);
    assert_eq!(
        names(dir),
        vec![
            "myvault.web".to_string(),
            format!("myvault.web.{V2}"),
            format!("myvault.web.{V3}")
        ]
    );
    // Pinning back to an older version: it becomes current and is kept; the newest other stays as well.
    std::thread::sleep(Duration::from_millis(20));
    install(&store, V4, "myvault.web").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let pinned = install_with(&store, V2, "myvault.web", &content(V2), &[], 1).unwrap();
    assert_eq!(
        store.current_version("myvault.web", &web()).as_deref(),
        Some(V2)
    );
    assert_eq!(
        names(dir),
        vec!["myvault.web".to_string(), format!("myvault.web.{V2}")]
    );
    assert_eq!(pinned.removed.len(), 2);
    // Another certificate's files and foreign files are never touched.
    fs::write(dir.join(format!("myvault.other.{V1}")), "x").unwrap();
    fs::write(dir.join("notes.txt"), "x").unwrap();
    install_with(&store, V3, "myvault.web", &content(V3), &[], 1).unwrap();
    assert!(dir.join(format!("myvault.other.{V1}")).exists());
    assert!(dir.join("notes.txt").exists());
}

#[test]
fn a_custom_link_name_is_used_and_a_bad_one_refused() {
    let f = Fixture::new();
    let store = f.open();
    install(&store, V1, "web.pem").unwrap();
    assert_eq!(fs::read(f.dir.join("web.pem")).unwrap(), content(V1));
    // What is no plain file name is no LinkName at all (the settings refuse it as customSymbolicLinkName) ...
    for bad in ["../escape", "a/b", "", ".", ".."] {
        assert!(LinkName::parse(bad).is_none(), "{bad}");
    }
    // ... and no path is a Version.
    assert!(Version::parse("../../etc/passwd").is_none());
    // A plain name that is one of the installer's own is refused by the store.
    for bad in [".kvvm-tmp.x", ".kvvm.lock"] {
        let e = install(&store, V2, bad).unwrap_err();
        assert_eq!(e.reason(), "store-bad-name", "{bad}: {e}");
        assert!(e.to_string().contains("customSymbolicLinkName"), "{e}");
    }
    assert!(!f.dir.join(format!("myvault.web.{V2}")).exists());
}

#[test]
fn planted_symlinks_are_replaced_never_followed() {
    let f = Fixture::new();
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    let store = f.open();
    let file = f.dir.join(format!("myvault.web.{V1}"));
    std::os::unix::fs::symlink(&victim, &file).unwrap();
    std::os::unix::fs::symlink(&victim, f.dir.join("myvault.web")).unwrap();
    let done = install(&store, V1, "myvault.web").unwrap();
    assert!(done.written && done.link_changed);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    assert!(fs::symlink_metadata(&file).unwrap().is_file());
    assert_eq!(mode(&file), 0o600);
    assert_eq!(fs::read(f.dir.join("myvault.web")).unwrap(), content(V1));
    // A symlink at the lock file (in the state folder) is not followed either: the install stops.
    let f2 = Fixture::new();
    let store2 = f2.open();
    fs::create_dir_all(&f2.locks).unwrap();
    std::os::unix::fs::symlink(&victim, store2.lock_path()).unwrap();
    let e = install(&store2, V1, "myvault.web").unwrap_err();
    assert_eq!(e.reason(), "store-lock", "{e}");
    assert!(
        e.to_string().contains(&format!(
            "taking its lock {} failed",
            store2.lock_path().display()
        )),
        "{e}"
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    assert!(names(&f2.dir).is_empty(), "{:?}", names(&f2.dir));
}

#[test]
fn a_folder_at_the_link_path_is_reported() {
    let f = Fixture::new();
    let store = f.open();
    fs::create_dir(f.dir.join("myvault.web")).unwrap();
    let e = install(&store, V1, "myvault.web").unwrap_err();
    assert!(
        e.to_string().contains("myvault.web is a folder; remove it"),
        "{e}"
    );
}

#[test]
fn leftovers_of_an_interrupted_install_are_removed() {
    let f = Fixture::new();
    let store = f.open();
    let leftover = f
        .dir
        .join(format!("{TEMP_PREFIX}myvault.web.{V1}.0123456789abcdef"));
    fs::write(&leftover, "half").unwrap();
    std::os::unix::fs::symlink(
        "nowhere",
        f.dir
            .join(format!("{TEMP_PREFIX}myvault.web.fedcba9876543210")),
    )
    .unwrap();
    install(&store, V1, "myvault.web").unwrap();
    assert_eq!(
        names(&f.dir),
        vec!["myvault.web".to_string(), format!("myvault.web.{V1}")]
    );
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run_as(user: &str, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", user, "--"])
        .args(args)
        .output()
        .unwrap()
}

fn getfacl(path: &Path) -> String {
    let out = Command::new("getfacl")
        .args(["-cp"])
        .arg(path)
        .output()
        .expect("getfacl (apt package acl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn acls_give_the_listed_user_and_group_read_access_and_nobody_else() {
    if !root() {
        eprintln!("skipped: ACL tests read files as other users, which needs root");
        return;
    }
    // The store's parents must be traversable by the ACL users (documented in the README).
    let f = Fixture::new();
    fs::set_permissions(f.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = f.dir.clone();
    let store = f.open();
    let acls = [
        AclEntry {
            user: Some("nobody".into()),
            group: None,
        },
        AclEntry {
            user: None,
            group: Some("nogroup".into()),
        },
    ];
    let done = install_with(&store, V1, "myvault.web", &content(V1), &acls, 2).unwrap();
    let file_acl = getfacl(&done.file);
    for line in [
        "user::rw-",
        "user:nobody:r--",
        "group:nogroup:r--",
        "mask::r--",
        "other::---",
    ] {
        assert!(
            file_acl.lines().any(|l| l == line),
            "{line} missing in\n{file_acl}"
        );
    }
    let dir_acl = getfacl(&dir);
    for line in [
        "user:nobody:r-x",
        "group:nogroup:r-x",
        "mask::r-x",
        "other::---",
    ] {
        assert!(
            dir_acl.lines().any(|l| l == line),
            "{line} missing in\n{dir_acl}"
        );
    }
    let link = done.link.to_str().unwrap();
    let read = run_as("nobody", &["cat", link]);
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(read.stdout, content(V1));
    let denied = run_as("daemon", &["cat", link]);
    assert!(!denied.status.success(), "daemon must not read the key");

    // The next version gets the same ACL; reopening the store keeps the folder's ACL mask intact.
    let store = f.open();
    assert!(getfacl(&dir).lines().any(|l| l == "mask::r-x"));
    let next = install_with(&store, V2, "myvault.web", &content(V2), &acls, 2).unwrap();
    assert!(getfacl(&next.file).lines().any(|l| l == "user:nobody:r--"));
    let read = run_as("nobody", &["cat", link]);
    assert_eq!(read.stdout, content(V2));
}

#[test]
fn an_unknown_acl_user_or_group_is_an_error_and_nothing_is_written() {
    let f = Fixture::new();
    let store = f.open();
    let e = install_with(
        &store,
        V1,
        "myvault.web",
        &content(V1),
        &[AclEntry {
            user: Some("no-such-user-kvvm".into()),
            group: None,
        }],
        2,
    )
    .unwrap_err();
    assert_eq!(e.reason(), "acl-unknown-principal");
    assert!(
        e.to_string()
            .contains("user \"no-such-user-kvvm\" does not exist"),
        "{e}"
    );
    let e = install_with(
        &store,
        V1,
        "myvault.web",
        &content(V1),
        &[AclEntry {
            user: None,
            group: Some("no-such-group-kvvm".into()),
        }],
        2,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("group \"no-such-group-kvvm\" does not exist"),
        "{e}"
    );
    assert!(names(&f.dir).is_empty(), "{:?}", names(&f.dir));
}

#[test]
fn readers_always_see_a_complete_file_while_versions_rotate() {
    let f = Fixture::new();
    let store = f.open();
    install(&store, V1, "myvault.web").unwrap();
    let link = f.dir.join("myvault.web");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (a, b) = (content(V1), content(V2));
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let got = fs::read(&link).expect("the link always resolves");
                assert!(got == a || got == b, "torn read of {} bytes", got.len());
                reads += 1;
            }
            reads
        });
        for i in 0..200 {
            let v = if i % 2 == 0 { V2 } else { V1 };
            install_with(&store, v, "myvault.web", &content(v), &[], 5).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
}

const CHILD_ENV: &str = "KVVM_STORE_CRASH_CHILD_DIR";
/// The lock folder the crash children use (the parent's, so that its next install waits for theirs).
const LOCKS_ENV: &str = "KVVM_STORE_CRASH_LOCKS";

fn child_store(dir_env: &str) -> Option<Store> {
    let dir = std::env::var_os(dir_env)?;
    let locks = std::env::var_os(LOCKS_ENV).expect("the parent names the lock folder");
    Some(Store::open(Path::new(&dir), Path::new(&locks)).unwrap())
}

/// Not a test on its own: the child the crash test kills. It installs versions in a loop until killed.
#[test]
#[ignore = "run by killed_at_any_instant_the_old_version_stays_usable"]
fn crash_child() {
    let Some(store) = child_store(CHILD_ENV) else {
        return;
    };
    let versions = [V1, V2, V3, V4];
    for i in 0.. {
        let v = versions[i % versions.len()];
        install_with(&store, v, "myvault.web", &content(v), &[], 2).unwrap();
    }
}

#[test]
fn killed_at_any_instant_the_old_version_stays_usable() {
    let f = Fixture::new();
    let dir = f.dir.clone();
    let store = f.open();
    install(&store, V1, "myvault.web").unwrap();
    let valid: Vec<Vec<u8>> = [V1, V2, V3, V4].iter().map(|v| content(v)).collect();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut kills = 0;
    let mut leftovers_seen = 0;
    let mut seen = std::collections::HashSet::new();
    while kills < 40 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--ignored", "--nocapture"])
            .env(CHILD_ENV, &dir)
            .env(LOCKS_ENV, &f.locks)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(fastrand::u64(2_000..60_000)));
        child.kill().unwrap(); // SIGKILL: no cleanup runs
        child.wait().unwrap();
        kills += 1;
        let got = fs::read(dir.join("myvault.web")).expect("the link must resolve after a crash");
        assert!(
            valid.contains(&got),
            "after kill {kills}: the link shows a torn file ({} bytes)",
            got.len()
        );
        seen.insert(got);
        if names(&dir).iter().any(|n| n.starts_with(TEMP_PREFIX)) {
            leftovers_seen += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "crash test too slow"
        );
    }
    assert!(
        seen.len() > 1,
        "the child never got to install anything: the kills proved nothing"
    );
    // The next install cleans whatever the kills left: only certificates and the link remain.
    install(&store, V1, "myvault.web").unwrap();
    assert!(
        only_certificates_and_links(&dir, &["myvault.web"]),
        "{:?}",
        names(&dir)
    );
    eprintln!("{kills} kills, {leftovers_seen} left temp files behind");
}

const ONCE_ENV: &str = "KVVM_STORE_CRASH_ONCE_DIR";

/// Not a test on its own: installs V2 once into the folder the killing test names.
#[test]
#[ignore = "run by killed_at_each_file_operation_the_old_version_stays_usable"]
fn crash_child_once() {
    let Some(store) = child_store(ONCE_ENV) else {
        return;
    };
    // Keep one version: the install also deletes V1 (and the planted leftover), so unlink is exercised too.
    install_with(&store, V2, "myvault.web", &content(V2), &[], 1).unwrap();
}

/// Deterministic crashes: `strace` kills the installing process (SIGKILL, no cleanup) on entering the n-th
/// call of each system call the installer makes — open, write, fsync, lock, rename, symlink — for every n until
/// the install gets through. After each kill the link must show a complete old or new version, and the next
/// install must clean up what the dead one left.
#[test]
fn killed_at_each_file_operation_the_old_version_stays_usable() {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: strace is not installed (make deps installs it)");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let valid = [content(V1), content(V2)];
    let sets = [
        "openat,open,creat",
        "write,writev,pwrite64",
        "fsync,fdatasync",
        "flock",
        "rename,renameat,renameat2",
        "symlink,symlinkat",
        "unlink,unlinkat",
    ];
    for set in sets {
        let mut kills = 0;
        for n in 1.. {
            assert!(n < 400, "{set}: the install never got through");
            let f = Fixture::new();
            let dir = f.dir.clone();
            let store = f.open();
            install(&store, V1, "myvault.web").unwrap();
            fs::write(dir.join(format!("{TEMP_PREFIX}left.0000000000000000")), "x").unwrap();
            let out = Command::new("strace")
                .args([
                    "-f",
                    "-qq",
                    "-o",
                    "/dev/null",
                    "-e",
                    &format!("trace={set}"),
                ])
                .arg("-e")
                .arg(format!("inject={set}:signal=SIGKILL:when={n}"))
                .arg(&exe)
                .args([
                    "--exact",
                    "crash_child_once",
                    "--ignored",
                    "--test-threads=1",
                ])
                .env(ONCE_ENV, &dir)
                .env(LOCKS_ENV, &f.locks)
                .output()
                .unwrap();
            let got =
                fs::read(dir.join("myvault.web")).expect("the link must resolve after a crash");
            assert!(
                valid.contains(&got),
                "{set} #{n}: torn link target ({} bytes)",
                got.len()
            );
            let finished = out.status.success();
            if !finished {
                kills += 1;
            }
            // The next install repairs and cleans whatever the dead one left.
            install(&store, V2, "myvault.web").unwrap();
            assert_eq!(fs::read(dir.join("myvault.web")).unwrap(), content(V2));
            assert!(
                only_certificates_and_links(&dir, &["myvault.web"]),
                "{set} #{n}: only certificates and the link may remain: {:?}",
                names(&dir)
            );
            if finished {
                break;
            }
        }
        assert!(
            kills > 0,
            "{set}: strace never killed the child, so nothing was tested"
        );
        eprintln!("{set}: killed at each of {kills} calls, then the install got through");
    }
}

#[test]
fn the_store_holds_only_certificates_and_links_after_installs_rotation_retention_and_cleanup() {
    let f = Fixture::new();
    let store = f.open();
    install(&store, V1, "myvault.web").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    install(&store, V2, "myvault.web").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // Rotation with retention: V1 goes.
    let third = install(&store, V3, "myvault.web").unwrap();
    assert_eq!(third.removed.len(), 1);
    // Another certificate with a custom link name in the same folder.
    store
        .install(&Install {
            secret: &SecretRef {
                vault: "myvault".into(),
                name: "api".into(),
            },
            link_name: &LinkName::parse("api.pem").unwrap(),
            version: &Version::parse(V1).unwrap(),
            pem: &content(V1),
            acls: &[],
            retained_versions: 2,
            folder: &[],
        })
        .unwrap();
    // What a crash leaves, cleaned by the next install.
    fs::write(
        f.dir
            .join(format!("{TEMP_PREFIX}myvault.web.{V4}.0123456789abcdef")),
        "half",
    )
    .unwrap();
    install(&store, V4, "myvault.web").unwrap();
    assert_eq!(
        names(&f.dir),
        vec![
            "api.pem".to_string(),
            format!("myvault.api.{V1}"),
            "myvault.web".to_string(),
            format!("myvault.web.{V3}"),
            format!("myvault.web.{V4}"),
        ]
    );
    // The lock is in the state folder, and says which store it serialises.
    assert_eq!(names(&f.locks), vec![lock_file_name(&f.dir)]);
    assert_eq!(
        fs::read_to_string(f.locks.join(lock_file_name(&f.dir))).unwrap(),
        format!("{}\n", f.dir.display())
    );
    assert_eq!(mode(&f.locks), 0o700);
    assert_eq!(mode(&store.lock_path()), 0o600);
}

#[test]
fn a_lock_file_left_in_the_store_by_an_older_kvvm_is_removed_when_the_store_is_opened() {
    let f = Fixture::new();
    fs::create_dir(&f.dir).unwrap();
    fs::write(f.dir.join(LEGACY_LOCK_FILE), "").unwrap();
    fs::write(f.dir.join(format!("myvault.web.{V1}")), content(V1)).unwrap();
    std::os::unix::fs::symlink(format!("myvault.web.{V1}"), f.dir.join("myvault.web")).unwrap();
    let store = f.open();
    assert_eq!(
        names(&f.dir),
        vec!["myvault.web".to_string(), format!("myvault.web.{V1}")]
    );
    assert_eq!(
        store.current_version("myvault.web", &web()).as_deref(),
        Some(V1)
    );
    // A symlink there is unlinked, not followed.
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, f.dir.join(LEGACY_LOCK_FILE)).unwrap();
    let store = f.open();
    assert!(fs::symlink_metadata(f.dir.join(LEGACY_LOCK_FILE)).is_err());
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    install(&store, V2, "myvault.web").unwrap();
    assert!(only_certificates_and_links(&f.dir, &["myvault.web"]));
}

#[test]
fn two_stores_share_no_lock_and_one_folder_has_one_lock_whatever_its_path() {
    let f = Fixture::new();
    let a = f.open();
    let b_dir = f.tmp.path().join("other-store");
    let b = Store::open(&b_dir, &f.locks).unwrap();
    assert_ne!(a.lock_path(), b.lock_path());
    // The same folder reached through a symlink is the same store: one lock.
    fs::create_dir_all(&f.dir).unwrap();
    let alias = f.tmp.path().join("alias");
    std::os::unix::fs::symlink(&f.dir, &alias).unwrap();
    let a_again = Store::open(&alias, &f.locks).unwrap();
    assert_eq!(a_again.lock_path(), a.lock_path());

    // Another process holds A's lock (an install in progress there): B installs at once, A waits for it.
    install(&a, V1, "myvault.web").unwrap();
    let held = fs::File::open(a.lock_path()).unwrap();
    held.lock().unwrap();
    install(&b, V1, "myvault.web").unwrap();
    assert_eq!(fs::read(b_dir.join("myvault.web")).unwrap(), content(V1));
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            install(&a_again, V2, "myvault.web").unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !done.load(std::sync::atomic::Ordering::SeqCst),
            "the install into A did not wait for A's lock"
        );
        assert_eq!(fs::read(f.dir.join("myvault.web")).unwrap(), content(V1));
        held.unlock().unwrap();
        waiting.join().unwrap();
    });
    assert!(done.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(fs::read(f.dir.join("myvault.web")).unwrap(), content(V2));
    let mut locks = names(&f.locks);
    locks.sort();
    let mut expected = vec![lock_file_name(&f.dir), lock_file_name(&b_dir)];
    expected.sort();
    assert_eq!(locks, expected);
}

#[test]
fn lock_file_names_are_readable_bounded_and_distinct() {
    let name = lock_file_name(Path::new("/etc/ssl/kvvm"));
    assert!(name.starts_with("etc_ssl_kvvm."), "{name}");
    assert!(name.ends_with(".lock"), "{name}");
    assert_eq!(name, lock_file_name(Path::new("/etc/ssl/kvvm")), "stable");
    // Paths that read alike still get their own file.
    assert_ne!(
        lock_file_name(Path::new("/a/b_c")),
        lock_file_name(Path::new("/a_b/c"))
    );
    assert_ne!(
        lock_file_name(Path::new("/a b")),
        lock_file_name(Path::new("/a_b"))
    );
    assert!(lock_file_name(Path::new("/")).starts_with("root."));
    let long = format!("/{}", "x/".repeat(300));
    let name = lock_file_name(Path::new(&long));
    assert!(name.len() < 255, "{}", name.len());
    assert!(!name.contains('/'));
}

/// Appends `line` to a copy of `/etc/<file>` and bind-mounts the copy over it (in the test's own mount
/// namespace).
fn bind_extended(file: &str, line: &str, tmp: &Path) {
    let path = Path::new("/etc").join(file);
    let mut text = fs::read_to_string(&path).unwrap();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    let copy = tmp.join(file);
    fs::write(&copy, text).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("mount")
        .arg("--bind")
        .arg(&copy)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_group_with_thousands_of_members_and_a_user_with_a_huge_entry_get_their_acl() {
    kvvm_sim::netns::run_isolated(
        "a_group_with_thousands_of_members_and_a_user_with_a_huge_entry_get_their_acl",
        || {
            let f = Fixture::new();
            // Entries far above the 16 KiB a first getgrnam_r / getpwnam_r buffer holds.
            let members: Vec<String> = (0..4000).map(|i| format!("kvvm-member-{i:05}")).collect();
            let group_line = format!("kvvm-big:x:64999:{}", members.join(","));
            assert!(group_line.len() > 64 * 1024, "{}", group_line.len());
            bind_extended("group", &group_line, f.tmp.path());
            let user_line = format!(
                "kvvm-big-user:x:64998:64999:{}:/nonexistent:/usr/sbin/nologin",
                "G".repeat(40 * 1024)
            );
            bind_extended("passwd", &user_line, f.tmp.path());
            let getent = Command::new("getent")
                .args(["group", "kvvm-big"])
                .output()
                .unwrap();
            assert!(getent.status.success() && getent.stdout.len() > 64 * 1024);

            let store = f.open();
            let acls = [
                AclEntry {
                    user: Some("kvvm-big-user".into()),
                    group: None,
                },
                AclEntry {
                    user: None,
                    group: Some("kvvm-big".into()),
                },
            ];
            let done = install_with(&store, V1, "myvault.web", &content(V1), &acls, 2).unwrap();
            let file_acl = getfacl(&done.file);
            for line in ["user:kvvm-big-user:r--", "group:kvvm-big:r--"] {
                assert!(
                    file_acl.lines().any(|l| l == line),
                    "{line} missing in\n{file_acl}"
                );
            }
            let dir_acl = getfacl(&f.dir);
            assert!(
                dir_acl.lines().any(|l| l == "group:kvvm-big:r-x"),
                "{dir_acl}"
            );
            // A second install finds the existing entries (by name, through the same look-up) and adds none.
            let again = install_with(&store, V2, "myvault.web", &content(V2), &acls, 2).unwrap();
            let acl = getfacl(&again.file);
            assert_eq!(
                acl.lines()
                    .filter(|l| l.starts_with("group:kvvm-big:"))
                    .count(),
                1,
                "{acl}"
            );
            // A name that really does not exist is still reported as such.
            let e = install_with(
                &store,
                V3,
                "myvault.web",
                &content(V3),
                &[AclEntry {
                    user: None,
                    group: Some("kvvm-no-such-group".into()),
                }],
                2,
            )
            .unwrap_err();
            assert_eq!(e.reason(), "acl-unknown-principal", "{e}");
            assert!(e.to_string().contains("does not exist"), "{e}");
        },
    );
}

// ---------------------------------------------------------------------------------------------------------------
// additionalFormats: the version folder `<prefix>.<version>.d/` behind `<link>.d`.

const SPLIT: [&str; 4] = ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"];

/// The split files of a version: every file names its version, so a mixed pair is visible.
fn split_contents(version: &str) -> Vec<(&'static str, Vec<u8>)> {
    SPLIT
        .iter()
        .map(|name| {
            let mut c = format!("{name} {version}\n").into_bytes();
            c.extend(std::iter::repeat_n(b'B', 64 * 1024));
            (*name, c)
        })
        .collect()
}

fn install_folder(
    store: &Store,
    version: &str,
    acls: &[AclEntry],
    retained: u32,
) -> Result<kvvm::Installed, StoreError> {
    let files = split_contents(version);
    let folder: Vec<FolderFile<'_>> = files
        .iter()
        .map(|(name, content)| FolderFile {
            name,
            content,
            exact: true,
        })
        .collect();
    let acls = resolve(acls)?;
    store.install(&Install {
        secret: &web(),
        link_name: &LinkName::parse("myvault.web").unwrap(),
        version: &Version::parse(version).expect("32 hex digits"),
        pem: &content(version),
        acls: &acls,
        retained_versions: retained,
        folder: &folder,
    })
}

#[test]
fn a_version_folder_holds_0600_files_in_a_0700_folder_behind_the_d_link() {
    let f = Fixture::new();
    let store = f.open();
    let done = install_folder(&store, V1, &[], 2).unwrap();
    let link = f.dir.join("myvault.web.d");
    assert_eq!(done.folder.as_deref(), Some(link.as_path()));
    assert!(done.folder_changed && done.written && done.link_changed);
    assert_eq!(
        fs::read_link(&link).unwrap(),
        PathBuf::from(format!("myvault.web.{V1}.d"))
    );
    let folder = f.dir.join(format!("myvault.web.{V1}.d"));
    assert_eq!(mode(&folder), 0o700);
    let mut listed = names(&folder);
    listed.sort();
    let mut want: Vec<String> = SPLIT.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);
    for (name, content) in split_contents(V1) {
        assert_eq!(mode(&folder.join(name)), 0o600, "{name}");
        assert_eq!(fs::read(link.join(name)).unwrap(), content, "{name}");
    }
    assert!(store.folder_current("myvault.web", &web(), V1, &SPLIT));
    // The same version again changes nothing.
    let again = install_folder(&store, V1, &[], 2).unwrap();
    assert!(!again.folder_changed && !again.written && !again.link_changed);
    // A file missing from the folder (or a different file set) rebuilds it.
    fs::remove_file(folder.join("chain.pem")).unwrap();
    assert!(!store.folder_current("myvault.web", &web(), V1, &SPLIT));
    let repaired = install_folder(&store, V1, &[], 2).unwrap();
    assert!(repaired.folder_changed);
    assert_eq!(
        fs::read(link.join("chain.pem")).unwrap(),
        split_contents(V1)[1].1
    );
    // Nothing but the file, the folder and their links; no temp leftovers.
    assert_eq!(
        names(&f.dir),
        vec![
            "myvault.web".to_string(),
            format!("myvault.web.{V1}"),
            format!("myvault.web.{V1}.d"),
            "myvault.web.d".to_string(),
        ]
    );
}

#[test]
fn a_reader_inside_the_d_link_never_sees_one_versions_certificate_with_anothers_key() {
    use std::os::fd::AsRawFd;
    let f = Fixture::new();
    let store = f.open();
    install_folder(&store, V1, &[], 10).unwrap();
    let link = f.dir.join("myvault.web.d");
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut reads, mut versions) = (0, std::collections::HashSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // One resolution of the link, as `cd <link>.d` or opening the folder does.
                let dir = fs::File::open(&link).expect("the link always resolves");
                let base = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
                let cert = fs::read(base.join("cert.pem")).expect("cert.pem is there");
                let key = fs::read(base.join("privkey.pem")).expect("privkey.pem is there");
                let cert_version = String::from_utf8_lossy(&cert[9..41]).to_string();
                let key_version = String::from_utf8_lossy(&key[12..44]).to_string();
                assert_eq!(cert_version, key_version, "a mixed pair");
                versions.insert(cert_version);
                reads += 1;
            }
            (reads, versions.len())
        });
        for i in 0..120 {
            let v = [V2, V3, V4, V1][i % 4];
            install_folder(&store, v, &[], 10).unwrap();
            if i % 4 == 1 {
                // Rebuild one in place too: the folder is exchanged whole, never edited.
                fs::remove_file(f.dir.join(format!("myvault.web.{v}.d")).join("chain.pem"))
                    .unwrap();
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (reads, versions) = reader.join().unwrap();
        assert!(reads > 0);
        assert!(versions >= 1);
    });
}

#[test]
fn retention_removes_old_folders_with_their_files() {
    let f = Fixture::new();
    let store = f.open();
    install_folder(&store, V1, &[], 2).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    install_folder(&store, V2, &[], 2).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let third = install_folder(&store, V3, &[], 2).unwrap();
    let mut removed: Vec<String> = third
        .removed
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        vec![format!("myvault.web.{V1}"), format!("myvault.web.{V1}.d")]
    );
    assert_eq!(
        names(&f.dir),
        vec![
            "myvault.web".to_string(),
            format!("myvault.web.{V2}"),
            format!("myvault.web.{V2}.d"),
            format!("myvault.web.{V3}"),
            format!("myvault.web.{V3}.d"),
            "myvault.web.d".to_string(),
        ]
    );
}

#[test]
fn a_half_built_folder_and_a_planted_symlink_at_the_folder_path_are_dealt_with() {
    let f = Fixture::new();
    let store = f.open();
    install(&store, V1, "myvault.web").unwrap();
    // What a crash mid-build leaves: a temp folder with files in it.
    let half = f
        .dir
        .join(format!("{TEMP_PREFIX}myvault.web.{V2}.d.0123456789abcdef"));
    fs::create_dir(&half).unwrap();
    fs::write(half.join("cert.pem"), "half").unwrap();
    // A symlink planted where the folder goes, pointing somewhere it must never write.
    let elsewhere = f.tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, f.dir.join(format!("myvault.web.{V2}.d"))).unwrap();
    install_folder(&store, V2, &[], 5).unwrap();
    assert!(!half.exists(), "the half-built folder is removed");
    assert!(
        names(&elsewhere).is_empty(),
        "the planted link was not followed"
    );
    let folder = f.dir.join(format!("myvault.web.{V2}.d"));
    assert!(fs::symlink_metadata(&folder).unwrap().is_dir());
    assert_eq!(names(&folder).len(), 4);
}

#[test]
fn acls_grant_read_on_the_folders_files_and_traverse_on_the_folder() {
    if !root() {
        eprintln!("skipped: ACL tests read files as other users, which needs root");
        return;
    }
    let f = Fixture::new();
    fs::set_permissions(f.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let store = f.open();
    let acls = [AclEntry {
        user: Some("nobody".into()),
        group: None,
    }];
    install_folder(&store, V1, &acls, 2).unwrap();
    let folder = f.dir.join(format!("myvault.web.{V1}.d"));
    let dir_acl = getfacl(&folder);
    assert!(dir_acl.lines().any(|l| l == "user:nobody:r-x"), "{dir_acl}");
    assert!(dir_acl.lines().any(|l| l == "other::---"), "{dir_acl}");
    for name in SPLIT {
        let acl = getfacl(&folder.join(name));
        assert!(acl.lines().any(|l| l == "user:nobody:r--"), "{name}: {acl}");
    }
    let key = f.dir.join("myvault.web.d/privkey.pem");
    let read = run_as("nobody", &["cat", key.to_str().unwrap()]);
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(read.stdout, split_contents(V1)[3].1);
    let denied = run_as("daemon", &["cat", key.to_str().unwrap()]);
    assert!(!denied.status.success(), "daemon must not read the key");
    // The next version's folder gets the same grants.
    install_folder(&store, V2, &acls, 2).unwrap();
    let read = run_as("nobody", &["cat", key.to_str().unwrap()]);
    assert_eq!(read.stdout, split_contents(V2)[3].1);
}
