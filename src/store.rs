//! The certificate store folder: one PEM file per version behind a stable symlink, written so that a crash at
//! any instant leaves the previous version fully usable.
//!
//! * The folder is created with mode 0700 (an existing one loses any group/other bits it has without an ACL).
//! * A version file is created 0600 from its first byte as a temp file in the same folder (`O_EXCL |
//!   O_NOFOLLOW`), gets its ACL, is fsynced and renamed over `<prefix>.<version>`; then the folder is fsynced.
//!   A rename replaces whatever is at the target — a planted symlink is replaced, never followed.
//! * The link is a relative symlink created under a temp name and renamed over the old one, so readers always
//!   see the old file or the new one.
//! * Installs into one folder are serialised with a lock file, which also makes it safe to delete temp files left
//!   by a crash. The lock lives in kvvm's state folder (`<state>/store-locks/`), one file per store keyed by the
//!   folder's real path, not in the store: users point stores at folders such as `/etc/ssl/...` and glob them,
//!   so nothing but certificates and links belongs there. An older kvvm's `.kvvm.lock` in the store is removed.
//! * Retention keeps the newest `retained_versions` files of a certificate (by modification time) and never
//!   the current one.
//! * `additionalFormats` add a folder per version, `<prefix>.<version>.d/` (0700, its files 0600), behind the
//!   link `<link>.d`. The folder is built completely under a temp name (every file fsynced, then the folder)
//!   before it is renamed into place and the link moves, so a reader going through `<link>.d/` sees one
//!   version's files, never one version's certificate with another's key. Retention removes old folders as it
//!   removes old files.

use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockWriteGuard};
use std::time::SystemTime;

use crate::files;
use crate::names::{LinkName, SecretRef, Version};
use crate::platform::naming::{FOLDER_SUFFIX, file_prefix};
use crate::platform::users::{PrincipalKind, lookup};

/// Prefix of every temp file and link the installer creates; anything with it is a crash leftover.
pub const TEMP_PREFIX: &str = ".kvvm-tmp.";
/// The subfolder of kvvm's state folder holding one lock file per store folder (see [`lock_folder`]).
pub(crate) const LOCKS_FOLDER: &str = "store-locks";
/// The lock file older versions of kvvm kept in the store folder itself; removed when the store is opened, and
/// never accepted as a link name.
pub const LEGACY_LOCK_FILE: &str = ".kvvm.lock";
/// Where the store locks are, given kvvm's state folder (`Extension::data_dir()`).
pub fn lock_folder(state_dir: &Path) -> PathBuf {
    state_dir.join(LOCKS_FOLDER)
}

/// The name of the lock file of the store whose real path is `canonical`: the path made readable (`/etc/ssl/kvvm`
/// → `etc_ssl_kvvm`), then a hash of its exact bytes so that paths that read alike (`/a/b_c`, `/a_b/c`) still
/// get their own lock. The hash is FNV-1a, fixed by its definition, so every version of kvvm picks the same file.
pub fn lock_file_name(canonical: &Path) -> String {
    let bytes = canonical.as_os_str().as_bytes();
    let mut readable: String = bytes
        .iter()
        .skip_while(|b| **b == b'/')
        .take(100)
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
                char::from(b)
            } else {
                '_'
            }
        })
        .collect();
    if readable.is_empty() {
        readable.push_str("root");
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{readable}.{hash:016x}.lock")
}

/// Held (shared) by every install in this process; [`quiesce`] takes it exclusively.
static FILE_OPERATIONS: RwLock<()> = RwLock::new(());

/// Waits for the installs in progress in this process to finish and keeps new ones from starting while the
/// guard lives: the worker takes it before exiting with requests still in flight, so no file operation is cut
/// short (although a cut would still leave the previous version usable).
pub(crate) fn quiesce() -> RwLockWriteGuard<'static, ()> {
    FILE_OPERATIONS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why the store could not be updated. What was installed before stays in place.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The folder is not an absolute path.
    #[error(
        "certificate store {path}: not an absolute path; set certificateStoreLocation to an absolute folder"
    )]
    NotAbsolute {
        /// The folder as configured.
        path: PathBuf,
    },
    /// The folder cannot be created or prepared.
    #[error("certificate store {path}: {action} failed: {source}; check the folder and the disk")]
    Folder {
        /// The store folder.
        path: PathBuf,
        /// What was being done, e.g. "creating it".
        action: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// Something that is not a folder is at the store path.
    #[error(
        "certificate store {path}: exists but is not a folder; remove it or choose another certificateStoreLocation"
    )]
    NotAFolder {
        /// The store folder.
        path: PathBuf,
    },
    /// A name would escape the folder or clash with the installer's own files.
    #[error("certificate store {path}: {what} {name:?} is not a plain file name; {fix}")]
    BadName {
        /// The store folder.
        path: PathBuf,
        /// Which name: "link name", "version", "file prefix".
        what: &'static str,
        /// The name as given.
        name: String,
        /// What to change.
        fix: &'static str,
    },
    /// Writing a file failed.
    #[error(
        "certificate store {path}: writing {file} failed: {source}; check free space and the folder's permissions"
    )]
    Write {
        /// The store folder.
        path: PathBuf,
        /// The file in it.
        file: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The store's lock file in kvvm's state folder cannot be created or locked.
    #[error(
        "certificate store {path}: taking its lock {lock} failed: {source}; store locks are kept in kvvm's state \
         folder beside the extension directories: make sure {LOCKS_FOLDER}/ there is a plain writable folder (not \
         a symlink or a file) and that the disk has space"
    )]
    Lock {
        /// The store folder.
        path: PathBuf,
        /// Its lock file.
        lock: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A directory is where the link or file must go.
    #[error(
        "certificate store {path}: {file} is a folder; remove it so the certificate can be installed there"
    )]
    InTheWay {
        /// The store folder.
        path: PathBuf,
        /// The name the folder holds.
        file: String,
    },
    /// An `acls` user does not exist on this machine.
    #[error(
        "acls: user {user:?} does not exist on this machine; create it or fix the certificate's acls setting"
    )]
    UnknownUser {
        /// The user's name.
        user: String,
    },
    /// An `acls` group does not exist on this machine.
    #[error(
        "acls: group {group:?} does not exist on this machine; create it or fix the certificate's acls setting"
    )]
    UnknownGroup {
        /// The group's name.
        group: String,
    },
    /// Looking a user or group up failed (not "not found": the name service itself, or an oversized entry).
    #[error(
        "acls: looking up {what} {name:?} failed: {source}; check /etc/nsswitch.conf and the {what} database \
         (getent {db} {name})",
        db = if *what == "group" { "group" } else { "passwd" }
    )]
    Lookup {
        /// "user" or "group".
        what: &'static str,
        /// The name looked up.
        name: String,
        /// What the look-up returned.
        #[source]
        source: io::Error,
    },
    /// Setting an ACL failed (e.g. the filesystem has no ACL support).
    #[error(
        "acls: setting the ACL of {file} failed: {source}; the filesystem must support POSIX ACLs (mount option acl)"
    )]
    Acl {
        /// The file or folder.
        file: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// A short fixed reason for the status file.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotAbsolute { .. } | Self::NotAFolder { .. } | Self::Folder { .. } => {
                "store-folder"
            }
            Self::BadName { .. } => "store-bad-name",
            Self::Write { .. } | Self::InTheWay { .. } => "store-write",
            Self::Lock { .. } => "store-lock",
            Self::UnknownUser { .. } | Self::UnknownGroup { .. } => "acl-unknown-principal",
            Self::Lookup { .. } => "acl-lookup-failed",
            Self::Acl { .. } => "acl-failed",
        }
    }
}

/// One version to install.
#[derive(Debug)]
pub struct Install<'a> {
    /// The certificate; its files are named after it (`<vault>.<certificate>.<version>`).
    pub secret: &'a SecretRef,
    /// The symlink's file name; the store refuses its own reserved names (temp files, the legacy lock).
    pub link_name: &'a LinkName,
    /// The Key Vault version.
    pub version: &'a Version,
    /// The file's content.
    pub pem: &'a [u8],
    /// Users and groups to give read access (empty: none), resolved beforehand by [`resolve_principals`] so
    /// that an unknown name fails before anything is written.
    pub acls: &'a [Principal],
    /// How many version files to keep (at least the current one).
    pub retained_versions: u32,
    /// The files of the version's folder `<prefix>.<version>.d/` behind the link `<link name>.d`; empty: no
    /// folder (`additionalFormats` not set).
    pub folder: &'a [FolderFile<'a>],
}

/// One file of a version's folder.
#[derive(Debug)]
pub struct FolderFile<'a> {
    /// Its plain file name (`cert.pem`, `certificate.pfx`, ...).
    pub name: &'static str,
    /// Its content.
    pub content: &'a [u8],
    /// Whether an existing file must hold exactly `content` to be kept. A PFX is written with a random salt,
    /// so two PFX files of the same version differ although either is right: an existing one is kept.
    pub exact: bool,
}

/// What to do about a link name the store refuses.
const LINK_NAME_FIX: &str = "set customSymbolicLinkName to a plain file name";

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The version's file.
    pub file: PathBuf,
    /// The link.
    pub link: PathBuf,
    /// The file was (re)written.
    pub written: bool,
    /// The link was created or moved.
    pub link_changed: bool,
    /// Older version files deleted by retention.
    pub removed: Vec<PathBuf>,
    /// The folder's link `<link name>.d`, when the install has a folder.
    pub folder: Option<PathBuf>,
    /// The folder was (re)built or its link moved.
    pub folder_changed: bool,
}

/// Where an installed version is found: its file, the link applications use, and the link to its folder when
/// `additionalFormats` gives it one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// `<store>/<prefix>.<version>`.
    pub file: PathBuf,
    /// `<store>/<link name>`.
    pub link: PathBuf,
    /// `<store>/<link name>.d`.
    pub folder: Option<PathBuf>,
}

/// An opened store folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// The real path of `dir` (symlinks resolved): what the lock is keyed by.
    real: PathBuf,
    /// The folder of store locks in kvvm's state folder.
    locks: PathBuf,
}

impl Store {
    /// Creates the folder if needed (0700; parents 0755) and makes sure only root can list it, unless it carries
    /// an ACL (then only "other" bits are cleared, so the ACL's mask stays intact). Installs lock a file in
    /// `locks` (kvvm's [`lock_folder`]), created when first needed; a `.kvvm.lock` an older kvvm left in the
    /// folder is removed.
    pub fn open(dir: &Path, locks: &Path) -> Result<Store, StoreError> {
        if !dir.is_absolute() {
            return Err(StoreError::NotAbsolute {
                path: dir.to_path_buf(),
            });
        }
        let folder_err = |action: &'static str| {
            let path = dir.to_path_buf();
            move |source| StoreError::Folder {
                path,
                action,
                source,
            }
        };
        if let Some(parent) = dir.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(folder_err("creating its parent folders"))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(folder_err("creating it")(e)),
        }
        let meta = fs::metadata(dir).map_err(folder_err("reading it"))?;
        if !meta.is_dir() {
            return Err(StoreError::NotAFolder {
                path: dir.to_path_buf(),
            });
        }
        let mode = meta.mode() & 0o7777;
        let wanted = wanted_mode(dir, mode);
        if mode != wanted {
            fs::set_permissions(dir, fs::Permissions::from_mode(wanted))
                .map_err(folder_err("setting its mode"))?;
        }
        let real = fs::canonicalize(dir).map_err(folder_err("resolving its real path"))?;
        remove_legacy_lock(dir);
        Ok(Store {
            dir: dir.to_path_buf(),
            real,
            locks: locks.to_path_buf(),
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `version` is installed and current in the store folder `dir`, as [`Store::open`] and
    /// [`Store::install`] leave it: the folder has its mode, the link `link_name` points at the regular file
    /// `<vault>.<secret>.<version>`, and — when `folder_names` is not empty — `<link_name>.d` points at that
    /// version's folder holding exactly those files. It only reads (nothing is created or repaired), so the
    /// check of an unchanged version costs a few system calls; `None` sends the caller to `open` and
    /// `install`, which put right whatever is not as it should be.
    pub fn installed(
        dir: &Path,
        link_name: &str,
        secret: &SecretRef,
        version: &str,
        folder_names: &[&str],
    ) -> Option<Placed> {
        let file_prefix = &file_prefix(secret);
        let meta = fs::metadata(dir).ok()?;
        let mode = meta.mode() & 0o7777;
        if !meta.is_dir() || mode != wanted_mode(dir, mode) {
            return None;
        }
        let file_name = format!("{file_prefix}.{version}");
        let link = dir.join(link_name);
        if fs::read_link(&link).ok()? != Path::new(&file_name) {
            return None;
        }
        let file = dir.join(&file_name);
        if !fs::symlink_metadata(&file).ok()?.is_file() {
            return None;
        }
        let folder = if folder_names.is_empty() {
            None
        } else {
            let view = Store {
                dir: dir.to_path_buf(),
                real: PathBuf::new(),
                locks: PathBuf::new(),
            };
            if !view.folder_current(link_name, secret, version, folder_names) {
                return None;
            }
            Some(dir.join(format!("{link_name}{FOLDER_SUFFIX}")))
        };
        Some(Placed { file, link, folder })
    }

    /// The version the link `link_name` points at, if it points at an existing version file of `secret`.
    pub fn current_version(&self, link_name: &str, secret: &SecretRef) -> Option<Version> {
        let file_prefix = &file_prefix(secret);
        let target = fs::read_link(self.dir.join(link_name)).ok()?;
        if target.components().count() != 1 {
            return None;
        }
        let version = version_of(target.as_os_str(), file_prefix)?;
        fs::symlink_metadata(self.dir.join(&target))
            .ok()
            .filter(|m| m.is_file())
            .map(|_| version)
    }

    /// Whether the link `<link_name>.d` points at the folder `<vault>.<secret>.<version>.d` and that folder
    /// holds exactly the regular files `names`.
    pub fn folder_current(
        &self,
        link_name: &str,
        secret: &SecretRef,
        version: &str,
        names: &[&str],
    ) -> bool {
        let file_prefix = file_prefix(secret);
        let dir_name = format!("{file_prefix}.{version}{FOLDER_SUFFIX}");
        let link = self.dir.join(format!("{link_name}{FOLDER_SUFFIX}"));
        if fs::read_link(link).ok().as_deref() != Some(Path::new(&dir_name)) {
            return false;
        }
        let dir = self.dir.join(&dir_name);
        let Ok(entries) = fs::read_dir(&dir) else {
            return false;
        };
        let mut found = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let plain = entry.file_type().is_ok_and(|t| t.is_file());
            if !plain || !names.iter().any(|n| OsStr::new(n) == name) {
                return false;
            }
            found += 1;
        }
        found == names.len()
    }

    /// Installs one version and points the link at it; see the module documentation for the guarantees.
    pub fn install(&self, req: &Install<'_>) -> Result<Installed, StoreError> {
        let prefix = file_prefix(req.secret);
        self.check_name("file prefix", &prefix, "this is a bug in kvvm")?;
        let link_name = req.link_name;
        self.not_reserved("link name", link_name, LINK_NAME_FIX)?;
        let file_name = format!("{prefix}.{}", req.version);
        if *link_name == file_name {
            return Err(self.bad_name(
                "link name",
                link_name,
                "choose a customSymbolicLinkName that is not a version file's name",
            ));
        }
        let folder_link = format!("{link_name}{FOLDER_SUFFIX}");
        if !req.folder.is_empty() {
            self.check_name(
                "link name",
                &folder_link,
                "set customSymbolicLinkName to a shorter plain file name",
            )?;
        }
        let acl = Grants(req.acls);

        let _in_process = FILE_OPERATIONS
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _lock = self.lock()?;
        self.clean_temp_files();

        let file = self.dir.join(&file_name);
        let link = self.dir.join(link_name.as_str());
        let written = if self.same_content(&file, req.pem) {
            acl.apply(&file, false)?;
            false
        } else {
            self.write_file(&file_name, req.pem, &acl)?;
            true
        };
        let dir_name = format!("{file_name}{FOLDER_SUFFIX}");
        let folder_written = if req.folder.is_empty() {
            false
        } else {
            self.install_folder(&dir_name, req.folder, &acl)?
        };
        if written || folder_written {
            // The new file and folder are durable before any link points at them.
            self.sync_dir()?;
        }
        let link_changed = match fs::read_link(&link) {
            Ok(target) if target.as_os_str() == OsStr::new(&file_name) => false,
            _ => {
                self.swap_link(link_name.as_str(), &file_name)?;
                true
            }
        };
        let folder_link_changed = !req.folder.is_empty()
            && match fs::read_link(self.dir.join(&folder_link)) {
                Ok(target) if target.as_os_str() == OsStr::new(&dir_name) => false,
                _ => {
                    self.swap_link(&folder_link, &dir_name)?;
                    true
                }
            };
        if link_changed || folder_link_changed {
            self.sync_dir()?;
        }
        acl.apply(&self.dir, true)?;
        let mut removed = self.retain(&prefix, &file_name, req.retained_versions);
        if !req.folder.is_empty() {
            removed.extend(self.retain_folders(&prefix, &dir_name, req.retained_versions));
        }
        Ok(Installed {
            file,
            link,
            written,
            link_changed,
            removed,
            folder: (!req.folder.is_empty()).then(|| self.dir.join(&folder_link)),
            folder_changed: folder_written || folder_link_changed,
        })
    }

    /// Makes `<dir_name>/` hold exactly `files` (see [`FolderFile::exact`]); returns whether it was rebuilt.
    /// A folder is never changed in place: a new one is built under a temp name, fsynced, and exchanged with
    /// the old one (or renamed into place), so a reader inside it sees the old files or the new ones.
    fn install_folder(
        &self,
        dir_name: &str,
        files: &[FolderFile<'_>],
        acl: &Grants<'_>,
    ) -> Result<bool, StoreError> {
        let target = self.dir.join(dir_name);
        if self.folder_matches(&target, files) {
            for f in files {
                acl.apply(&target.join(f.name), false)?;
            }
            acl.apply(&target, true)?;
            return Ok(false);
        }
        let temp = self.dir.join(self.temp_name(dir_name));
        let result = (|| {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&temp)
                .map_err(self.write_err(dir_name))?;
            for f in files {
                let shown = format!("{dir_name}/{}", f.name);
                files::write_new(
                    &temp.join(f.name),
                    f.content,
                    0o600,
                    |e| self.write_err(&shown)(e),
                    |path| acl.apply(path, false),
                )?;
            }
            acl.apply(&temp, true)?;
            files::sync_folder(&temp).map_err(self.write_err(dir_name))?;
            match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {
                    exchange(&temp, &target).map_err(self.write_err(dir_name))?;
                    // `temp` now names the old folder.
                    if let Err(e) = fs::remove_dir_all(&temp) {
                        log::warn!("cannot remove the replaced folder {}: {e}", temp.display());
                    }
                    Ok(())
                }
                Ok(_) => {
                    // A file or a planted symlink where the folder goes: unlinked, never followed.
                    fs::remove_file(&target).map_err(self.write_err(dir_name))?;
                    fs::rename(&temp, &target).map_err(self.write_err(dir_name))
                }
                Err(_) => fs::rename(&temp, &target).map_err(self.write_err(dir_name)),
            }
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&temp);
        }
        result.map(|()| true)
    }

    /// Whether `dir` is a real folder holding exactly `files` as regular files.
    fn folder_matches(&self, dir: &Path, files: &[FolderFile<'_>]) -> bool {
        if !fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
            return false;
        }
        let Ok(entries) = fs::read_dir(dir) else {
            return false;
        };
        if entries.count() != files.len() {
            return false;
        }
        files.iter().all(|f| {
            let path = dir.join(f.name);
            if f.exact {
                self.same_content(&path, f.content)
            } else {
                fs::symlink_metadata(&path)
                    .is_ok_and(|m| m.is_file() && m.len() > 0 && m.mode() & 0o7137 == 0)
            }
        })
    }

    fn bad_name(&self, what: &'static str, name: &str, fix: &'static str) -> StoreError {
        StoreError::BadName {
            path: self.dir.clone(),
            what,
            name: name.to_string(),
            fix,
        }
    }

    /// `name` as a [`LinkName`] that is none of the installer's own names (temp files, the legacy lock).
    fn check_name(
        &self,
        what: &'static str,
        name: &str,
        fix: &'static str,
    ) -> Result<LinkName, StoreError> {
        let name = LinkName::parse(name).ok_or_else(|| self.bad_name(what, name, fix))?;
        self.not_reserved(what, &name, fix)?;
        Ok(name)
    }

    /// Refuses the installer's own names (temp files, the legacy lock) as `name`.
    fn not_reserved(
        &self,
        what: &'static str,
        name: &LinkName,
        fix: &'static str,
    ) -> Result<(), StoreError> {
        if name.starts_with(TEMP_PREFIX) || *name == LEGACY_LOCK_FILE {
            return Err(self.bad_name(what, name, fix));
        }
        Ok(())
    }

    fn write_err(&self, file: &str) -> impl FnOnce(io::Error) -> StoreError {
        let path = self.dir.clone();
        let file = file.to_string();
        move |source| StoreError::Write { path, file, source }
    }

    /// The lock file of this store (in kvvm's state folder).
    pub fn lock_path(&self) -> PathBuf {
        self.locks.join(lock_file_name(&self.real))
    }

    /// Takes this store's lock, waiting for another install into the same folder (from any process) to finish.
    /// The lock file holds the store's real path, for whoever looks into the locks folder.
    fn lock(&self) -> Result<fs::File, StoreError> {
        let lock = self.lock_path();
        let err = |source| StoreError::Lock {
            path: self.dir.clone(),
            lock: lock.clone(),
            source,
        };
        let mut file = files::open_lock(&lock).map_err(err)?;
        file.lock().map_err(err)?;
        let mut label = self.real.as_os_str().as_bytes().to_vec();
        label.push(b'\n');
        let mut existing = Vec::new();
        if file.read_to_end(&mut existing).is_err() || existing != label {
            // Only a label: a failure to write it does not stop the install.
            let written = file.set_len(0).and_then(|()| file.write_all_at(&label, 0));
            if let Err(e) = written {
                log::warn!("cannot write the store path into {}: {e}", lock.display());
            }
        }
        Ok(file)
    }

    /// Deletes temp files and links a crashed install left (only called under the lock).
    fn clean_temp_files(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .as_bytes()
                .starts_with(TEMP_PREFIX.as_bytes())
            {
                // A half-built version folder is removed whole; anything else (files, links) is unlinked.
                let folder = entry.file_type().is_ok_and(|t| t.is_dir());
                let removed = if folder {
                    fs::remove_dir_all(entry.path())
                } else {
                    fs::remove_file(entry.path())
                };
                match removed {
                    Ok(()) => log::info!(
                        "removed {} left by an interrupted install",
                        entry.path().display()
                    ),
                    Err(e) => log::warn!("cannot remove {}: {e}", entry.path().display()),
                }
            }
        }
    }

    /// Whether `file` is a regular file (not a symlink) holding exactly `content`.
    fn same_content(&self, file: &Path, content: &[u8]) -> bool {
        let Ok(meta) = fs::symlink_metadata(file) else {
            return false;
        };
        if !meta.is_file() || meta.len() != content.len() as u64 || meta.mode() & 0o7137 != 0 {
            return false;
        }
        let Ok(mut f) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(file)
        else {
            return false;
        };
        let mut existing = zeroize::Zeroizing::new(Vec::with_capacity(content.len()));
        f.read_to_end(&mut existing).is_ok() && existing.as_slice() == content
    }

    fn temp_name(&self, what: &str) -> String {
        format!("{TEMP_PREFIX}{what}.{:016x}", fastrand::u64(..))
    }

    fn write_file(
        &self,
        file_name: &str,
        content: &[u8],
        acl: &Grants<'_>,
    ) -> Result<(), StoreError> {
        let target = self.dir.join(file_name);
        if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            return Err(StoreError::InTheWay {
                path: self.dir.clone(),
                file: file_name.to_string(),
            });
        }
        let temp = self.dir.join(self.temp_name(file_name));
        files::replace_with(
            &temp,
            &target,
            content,
            0o600,
            |e| self.write_err(file_name)(e),
            |path| acl.apply(path, false),
        )
    }

    fn swap_link(&self, link_name: &str, target: &str) -> Result<(), StoreError> {
        let link = self.dir.join(link_name);
        if fs::symlink_metadata(&link).is_ok_and(|m| m.is_dir()) {
            return Err(StoreError::InTheWay {
                path: self.dir.clone(),
                file: link_name.to_string(),
            });
        }
        let temp = self.dir.join(self.temp_name(link_name));
        std::os::unix::fs::symlink(target, &temp).map_err(self.write_err(link_name))?;
        fs::rename(&temp, &link).map_err(|e| {
            let _ = fs::remove_file(&temp);
            self.write_err(link_name)(e)
        })
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        files::sync_folder(&self.dir).map_err(self.write_err("."))
    }

    /// Deletes all but the newest `keep` version files of `prefix`; `current` is always kept.
    fn retain(&self, prefix: &str, current: &str, keep: u32) -> Vec<PathBuf> {
        self.prune(Versions::Files, prefix, current, keep)
    }

    /// Deletes all but the newest `keep` version folders (`<prefix>.<version>.d`) of `prefix`; `current` is
    /// always kept.
    fn retain_folders(&self, prefix: &str, current: &str, keep: u32) -> Vec<PathBuf> {
        self.prune(Versions::Folders, prefix, current, keep)
    }

    /// Retention for one kind of version entry: newest first by modification time, `current` always kept.
    fn prune(&self, kind: Versions, prefix: &str, current: &str, keep: u32) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut others: Vec<(SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                name.as_bytes() != current.as_bytes()
                    && match kind {
                        Versions::Files => version_of(&name, prefix).is_some(),
                        Versions::Folders => name
                            .to_str()
                            .and_then(|n| n.strip_suffix(FOLDER_SUFFIX))
                            .is_some_and(|n| version_of(OsStr::new(n), prefix).is_some()),
                    }
            })
            .filter_map(|e| {
                let meta = match kind {
                    Versions::Files => e.metadata().ok()?,
                    Versions::Folders => fs::symlink_metadata(e.path()).ok()?,
                };
                let wanted = match kind {
                    Versions::Files => meta.is_file(),
                    Versions::Folders => meta.is_dir(),
                };
                wanted.then(|| (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), e.path()))
            })
            .collect();
        others.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let keep_others = keep.max(1) as usize - 1;
        let mut removed = Vec::new();
        for (_, path) in others.into_iter().skip(keep_others) {
            let outcome = match kind {
                Versions::Files => fs::remove_file(&path),
                Versions::Folders => fs::remove_dir_all(&path),
            };
            match outcome {
                Ok(()) => removed.push(path),
                Err(e) => log::warn!("cannot remove old version {}: {e}", path.display()),
            }
        }
        removed
    }
}

/// The two kinds of version entries retention prunes.
#[derive(Debug, Clone, Copy)]
enum Versions {
    /// `<prefix>.<version>` files.
    Files,
    /// `<prefix>.<version>.d` folders (`additionalFormats`).
    Folders,
}

/// Swaps two paths atomically (`renameat2(RENAME_EXCHANGE)`, Linux 3.15+), through the system call because
/// the glibc wrapper is newer than the glibc kvvm is built against.
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let a = CString::new(a.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let b = CString::new(b.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes the `.kvvm.lock` an older kvvm kept in the store folder (it is ours: the name was never a valid link
/// name). Whatever it is, it is unlinked, never followed.
fn remove_legacy_lock(dir: &Path) {
    let legacy = dir.join(LEGACY_LOCK_FILE);
    match fs::remove_file(&legacy) {
        Ok(()) => log::info!(
            "removed {} left by an older kvvm (store locks now live in kvvm's state folder)",
            legacy.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove {}: {e}", legacy.display()),
    }
}

/// `<version>` when `name` is `<prefix>.<32 hex>`.
fn version_of(name: &OsStr, prefix: &str) -> Option<Version> {
    let name = name.to_str()?;
    Version::parse(name.strip_prefix(prefix)?.strip_prefix('.')?)
}

/// The mode a store folder whose mode is `mode` must have: 0700, or — when it carries an ACL — its group bits
/// kept (they are the ACL's mask) and "other" cleared. The ACL is looked up only when the mode is not 0700.
fn wanted_mode(dir: &Path, mode: u32) -> u32 {
    if mode != 0o700 && has_access_acl(dir) {
        mode & 0o770 | 0o700
    } else {
        0o700
    }
}

fn has_access_acl(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: both strings are NUL-terminated; a null buffer with size 0 only asks for the size.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n > 0
}

/// A user or group that exists on this machine, as [`resolve_principals`] found it: only built there, so an
/// [`Install`] never holds a name that was not looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    kind: PrincipalKind,
    name: String,
    id: u32,
}

impl Principal {
    /// User or group.
    pub fn kind(&self) -> PrincipalKind {
        self.kind
    }

    /// The name (or numeric id) as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The numeric uid or gid.
    pub fn id(&self) -> u32 {
        self.id
    }
}

/// Looks up every `(kind, name)` in order, failing on the first that does not exist ([`StoreError::UnknownUser`],
/// [`StoreError::UnknownGroup`]) or cannot be looked up ([`StoreError::Lookup`]). A name or numeric id is taken
/// as `setfacl` takes it; principals with the same kind and id are kept once.
pub fn resolve_principals<'a>(
    names: impl IntoIterator<Item = (PrincipalKind, &'a str)>,
) -> Result<Vec<Principal>, StoreError> {
    let mut resolved: Vec<Principal> = Vec::new();
    for (kind, name) in names {
        let id = lookup(name, kind)
            .map_err(|source| StoreError::Lookup {
                what: kind.word(),
                name: name.to_string(),
                source,
            })?
            .ok_or_else(|| match kind {
                PrincipalKind::User => StoreError::UnknownUser {
                    user: name.to_string(),
                },
                PrincipalKind::Group => StoreError::UnknownGroup {
                    group: name.to_string(),
                },
            })?;
        if !resolved.iter().any(|p| p.kind == kind && p.id == id) {
            resolved.push(Principal {
                kind,
                name: name.to_string(),
                id,
            });
        }
    }
    Ok(resolved)
}

/// The principals of one install, applied to each file and folder it writes.
struct Grants<'a>(&'a [Principal]);

impl Grants<'_> {
    /// Adds read (files) or read+execute (folders) for every principal to `path`'s access ACL, keeping its
    /// other entries; the mask is recomputed.
    fn apply(&self, path: &Path, folder: bool) -> Result<(), StoreError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let perms = if folder {
            exacl::Perm::READ | exacl::Perm::EXECUTE
        } else {
            exacl::Perm::READ
        };
        let err = |source| StoreError::Acl {
            file: path.to_path_buf(),
            source,
        };
        let mut entries = exacl::getfacl(path, exacl::AclOption::ACCESS_ACL).map_err(err)?;
        entries.retain(|e| e.kind != exacl::AclEntryKind::Mask);
        // Users first, then groups, as setfacl lists them.
        for kind in [PrincipalKind::User, PrincipalKind::Group] {
            let acl_kind = match kind {
                PrincipalKind::User => exacl::AclEntryKind::User,
                PrincipalKind::Group => exacl::AclEntryKind::Group,
            };
            for principal in self.0.iter().filter(|p| p.kind == kind) {
                let id = principal.id;
                // getfacl reports known ids by name; compare by resolving both.
                let existing = entries.iter_mut().find(|e| {
                    e.kind == acl_kind
                        && !e.name.is_empty()
                        && lookup(&e.name, kind).ok() == Some(Some(id))
                });
                match existing {
                    Some(e) => e.perms |= perms,
                    None => entries.push(match kind {
                        PrincipalKind::Group => {
                            exacl::AclEntry::allow_group(&id.to_string(), perms, None)
                        }
                        PrincipalKind::User => {
                            exacl::AclEntry::allow_user(&id.to_string(), perms, None)
                        }
                    }),
                }
            }
        }
        exacl::setfacl(&[path], &entries, exacl::AclOption::ACCESS_ACL).map_err(err)
    }
}
