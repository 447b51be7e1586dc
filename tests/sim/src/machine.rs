//! A whole Linux machine for tests that need the real service manager: systemd 252 booted as PID 1 of private
//! namespaces, on an overlay of the host's `/`. A test installs the .deb package in it, starts its systemd
//! service, SIGKILLs processes, "reboots" (boots again on the same [`Disk`]) and checks what survived — what
//! [`crate::netns`] cannot show, because there nothing restarts a unit or runs its `ExecStop=`.
//!
//! How (REFERENCE §6): `unshare --pid --mount --net --uts --ipc --cgroup` runs [`SETUP_SCRIPT`], which mounts
//! `overlay(lower=/, upper=Disk)` on a private directory, gives it its own `/proc`, `/sys`, `/dev`, cgroup
//! tree and empty tmpfs on `/run`, `/tmp`, `/var/tmp`, brings up `lo` with 169.254.169.254 (IMDS) on it, and
//! `exec chroot`s into systemd. Commands run inside through `nsenter -t <systemd> -a -r -w`.
//!
//! Why each piece, since every one of them was a way to damage the host or to flake:
//! - **Overlay + tmpfs on `/tmp`, own network.** Booted on the host's `/`, systemd-tmpfiles empties the host's
//!   `/tmp` and every unit the host has enabled starts on the host's network (seen).
//! - **Own cgroup (namespace).** The host's cgroup trees are shared by every machine of a parallel test run;
//!   each machine gets a child cgroup of ours in the cgroup v2 tree, made the root of a cgroup namespace, so
//!   its systemd (pure cgroup v2 inside, without controllers) sees only its own units.
//! - **Read-only `/sys` and `/proc/sys`, a private `/dev`, `container=` set.** As under systemd-nspawn:
//!   systemd then knows it runs in a container, skips the units that would set the host's clock, sysctls or
//!   devices, and cannot reach the host's disks or kernel log.
//! - **Masked units** ([`DEFAULT_MASKED`]): the units this host has enabled that would take the fake IMDS'
//!   port, run apt/dpkg (holding the lock a test's `dpkg -i` needs), or touch the host's disks.
//! - **Never left running.** The machine is SIGKILLed on drop (also when a test panics), `unshare
//!   --kill-child` kills it when `unshare` dies, and `unshare` is killed when the test process dies
//!   (`PR_SET_PDEATHSIG`, set from a thread that lives as long as the process).
//!
//! ```no_run
//! use kvvm_sim::machine::{self, Disk, Machine, Setup};
//! # fn main() -> std::io::Result<()> {
//! if let Some(why) = machine::unavailable() {
//!     println!("SKIP my_test: {why}");
//!     return Ok(());
//! }
//! let disk = Disk::new()?;
//! let m = Machine::boot(&disk, &Setup::new())?;
//! m.wait_booted(std::time::Duration::from_secs(30))?;
//! m.sh("echo hi > /var/lib/marker")?;
//! m.kill()?;
//! let m = Machine::boot(&disk, &Setup::new())?; // a reboot: /var/lib/marker is still there
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Units masked in every machine unless [`Setup::unmask`] lets one run, each because it would start (the host
/// has it enabled, or a test installs it) and then break a test or touch the outside:
/// - `nginx.service` binds port 80 on every address, 169.254.169.254:80 included, where the fake IMDS listens;
/// - `postgresql.service`, `postgresql@.service`: enabled here, slow to start, nothing of kvvm's;
/// - `walinuxagent.service`: the real guest agent would start provisioning on its own; tests that want it
///   unmask it and start it themselves;
/// - `getty.target`: gettys on the host's `tty1` / a `/dev/console` the machine does not have;
/// - `systemd-timesyncd.service` would set the host's clock (the clock is not namespaced), `systemd-pstore`
///   moves the host's pstore records, `systemd-modules-load` loads modules into the host's kernel;
/// - `e2scrub_reap.service`, `e2scrub_all.timer`, `fstrim.timer` work on the host's disks;
/// - `apt-daily.timer`, `apt-daily-upgrade.timer`, `dpkg-db-backup.timer`, `man-db.timer` run apt, dpkg or
///   man-db at boot or later, holding the dpkg lock a test's `dpkg -i` needs.
pub const DEFAULT_MASKED: &[&str] = &[
    "nginx.service",
    "postgresql.service",
    "postgresql@.service",
    "walinuxagent.service",
    "getty.target",
    "systemd-timesyncd.service",
    "systemd-pstore.service",
    "systemd-modules-load.service",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "fstrim.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "man-db.timer",
];

/// The value of `container=` in systemd's environment: what `systemd-detect-virt` reports inside
/// (`container-other`), so that units with `ConditionVirtualization=!container` stay off, as under nspawn.
pub const CONTAINER: &str = "kvvm-sim";

/// `PATH` of every command run inside (Debian's root `PATH`); the rest of their environment is `HOME=/root`,
/// `LANG=C.UTF-8`, `USER`/`LOGNAME=root`, `TERM=dumb`: none of the test process' own.
pub const INSIDE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The systemd binary booted (Debian's path; `/lib` is `/usr/lib` on a merged-/usr system).
const SYSTEMD: &str = "/lib/systemd/systemd";

/// Prefix of everything the harness creates on the host (temp dirs, cgroups), followed by the creating
/// process' pid, so a later process can remove what a killed one left ([`remove_stale`]).
const PREFIX: &str = "kvvm-machine-";

/// How long [`Machine::boot`] waits for systemd to be exec'd, and [`Machine::kill`] for it to be gone.
const PATIENCE: Duration = Duration::from_secs(20);

/// The launcher, run as `/bin/sh <file> launch CGROUP ROOT UPPER WORK CONTAINER SYSTEMD` on the host. Stage
/// `launch` moves itself into the machine's cgroup and becomes `unshare`, which runs stage `boot` as PID 1 of
/// the new namespaces: it builds the machine's root on ROOT and becomes systemd. The mounts exist only in the new
/// mount namespace and vanish with it.
pub const SETUP_SCRIPT: &str = r#"#!/bin/sh
# kvvm-sim machine launcher (tests/sim/src/machine.rs). Not for use on its own.
set -eu
stage=$1
shift
case "$stage" in
launch)
    cgroup=$1
    shift
    # The cgroup namespace unshare creates is rooted at the cgroup its caller is in.
    echo $$ > "$cgroup/cgroup.procs"
    exec unshare --pid --fork --kill-child=SIGKILL --mount --net --uts --ipc --cgroup \
        --propagation private /bin/sh "$0" boot "$@"
    ;;
boot) ;;
*) echo "machine launcher: unknown stage '$stage'" >&2; exit 2 ;;
esac
root=$1 upper=$2 work=$3 container=$4 systemd=$5

# Refuse to build anything in the host's namespaces (/proc is still the host's here: /proc/1 is its init).
for ns in mnt net; do
    if [ "$(readlink /proc/self/ns/$ns)" = "$(readlink /proc/1/ns/$ns)" ]; then
        echo "machine launcher: not in a private $ns namespace" >&2
        exit 2
    fi
done

mount -t overlay overlay -o "lowerdir=/,upperdir=$upper,workdir=$work" "$root"

mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
for p in sys sysrq-trigger; do
    [ -e "$root/proc/$p" ] || continue
    mount --bind "$root/proc/$p" "$root/proc/$p"
    mount -o remount,bind,ro "$root/proc/$p"
done
# A fresh sysfs shows this network namespace's devices only (lo); read-only like nspawn's.
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$root/sys/fs/cgroup"

mount -t tmpfs -o mode=755,nosuid tmpfs "$root/dev"
for n in null zero full random urandom tty; do
    : > "$root/dev/$n"
    mount --bind "/dev/$n" "$root/dev/$n"
done
mkdir -m 755 "$root/dev/pts"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5,nosuid,noexec devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mkdir -m 1777 "$root/dev/shm"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"

mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/var/tmp"

ip link set lo up
ip addr add 169.254.169.254/32 dev lo

exec /usr/bin/env -i container="$container" /usr/sbin/chroot "$root" "$systemd" --system
"#;

// ---------------------------------------------------------------------------------------------------------
// Availability

/// Why the harness cannot run here, if it cannot: not root, no `unshare`/`nsenter`/`ip`, no systemd at
/// `/lib/systemd/systemd`, no overlay or cgroup v2 support. Tests print `SKIP <name>: <why>` and return.
/// Checked once per process.
pub fn unavailable() -> Option<String> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(check_available).clone()
}

fn check_available() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (namespaces, mounts, cgroups)".into());
    }
    if !is_executable(Path::new(SYSTEMD)) {
        return Some(format!("no systemd at {SYSTEMD}"));
    }
    // The launcher's last step names them by path (`env -i` leaves no PATH to look chroot up in).
    for tool in ["/usr/bin/env", "/usr/sbin/chroot"] {
        if !is_executable(Path::new(tool)) {
            return Some(format!("no {tool}"));
        }
    }
    for tool in ["unshare", "nsenter", "ip", "timeout"] {
        if which(tool).is_none() {
            return Some(format!("no `{tool}` in PATH"));
        }
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for fstype in ["overlay", "cgroup2", "devpts", "tmpfs"] {
        if !filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fstype))
        {
            return Some(format!("the kernel has no {fstype} file system"));
        }
    }
    if let Err(e) = cgroup_base() {
        return Some(e.to_string());
    }
    match Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--net",
            "--uts",
            "--ipc",
            "--cgroup",
            "--propagation",
            "private",
            "true",
        ])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => Some(format!("cannot run unshare: {e}")),
        Ok(o) if !o.status.success() => Some(format!(
            "unshare --pid --mount --net --uts --ipc --cgroup failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    }
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| INSIDE_PATH.into());
    std::env::split_paths(&path)
        .chain(std::env::split_paths(INSIDE_PATH))
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

// ---------------------------------------------------------------------------------------------------------
// Disk

/// A persistent "disk" for a machine: the overlay's upper and work directories in a temporary directory.
/// Booting again on the same `Disk` is a reboot: the files written before are there, `/run` and `/tmp` are
/// fresh (tmpfs), and so is the journal (journald keeps it in `/run` unless `/var/log/journal` exists). Dropping
/// it deletes it; a machine still running on it keeps it until the machine is gone.
pub struct Disk {
    shared: Arc<DiskShared>,
}

struct DiskShared {
    dir: tempfile::TempDir,
    upper: PathBuf,
    work: PathBuf,
    /// Set while a machine runs on it: an upper dir serves one overlay at a time (the kernel would refuse
    /// the second mount with EBUSY; this says why earlier).
    in_use: AtomicBool,
}

impl Disk {
    /// An empty disk: the machine sees the host's `/` as it is until it writes.
    pub fn new() -> io::Result<Disk> {
        remove_stale();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-disk-", std::process::id()))
            .tempdir()
            .map_err(|e| with_context(e, "create a temporary directory for a machine's disk"))?;
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        for d in [&upper, &work] {
            fs::create_dir(d).map_err(|e| with_context(e, format!("create {}", d.display())))?;
        }
        // The upper dir's mode and owner are those of the machine's `/` (a TempDir is 0700): copy the host's.
        copy_attributes(Path::new("/"), &upper)?;
        Ok(Disk {
            shared: Arc::new(DiskShared {
                dir,
                upper,
                work,
                in_use: AtomicBool::new(false),
            }),
        })
    }

    /// The overlay's upper directory: every file the machine created or changed, at its path inside the
    /// machine below this one (readable also after the machine was killed). Files the machine deleted are
    /// whiteouts (character devices 0/0) here.
    pub fn upper(&self) -> &Path {
        &self.shared.upper
    }
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("dir", &self.shared.dir.path())
            .field("in_use", &self.shared.in_use.load(Ordering::SeqCst))
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Setup

/// What to put in place before a boot, written into the disk's upper directory (so it stays on the disk).
/// Applied at every [`Machine::boot`]: its files replace what the disk has at their paths; everything else
/// on the disk is left as the last boot left it.
#[derive(Debug, Clone)]
pub struct Setup {
    hosts: Vec<(String, String)>,
    ca_bundle: Option<String>,
    mask: BTreeSet<String>,
    unmask: BTreeSet<String>,
    files: Vec<(PathBuf, Vec<u8>, u32)>,
    enable: Vec<(String, String)>,
    remove: Vec<PathBuf>,
}

/// Files of the host that a machine does not have (removed in every machine, see [`Setup::remove`]):
/// `/usr/sbin/policy-rc.d`, which container images (this host's among them) ship so that no package starts a
/// service; on a VM there is none, and a package's `deb-systemd-invoke start` must start its unit.
pub const DEFAULT_REMOVED: &[&str] = &["/usr/sbin/policy-rc.d"];

impl Default for Setup {
    fn default() -> Setup {
        Setup::new()
    }
}

impl Setup {
    /// What a kvvm test machine needs: [`crate::netns::DEFAULT_HOSTS`] mapped to 127.0.0.1 in `/etc/hosts`,
    /// the test CA ([`crate::netns::test_ca`]) in the system CA bundle, [`DEFAULT_MASKED`] masked.
    pub fn new() -> Setup {
        let mut s = Setup::bare().ca_bundle(crate::netns::test_ca().ca_pem());
        for h in crate::netns::DEFAULT_HOSTS {
            s = s.host(h, "127.0.0.1");
        }
        s
    }

    /// Only [`DEFAULT_MASKED`] masked: the host's `/etc/hosts` and CA bundle as they are.
    pub fn bare() -> Setup {
        Setup {
            hosts: Vec::new(),
            ca_bundle: None,
            mask: DEFAULT_MASKED.iter().map(|u| u.to_string()).collect(),
            unmask: BTreeSet::new(),
            files: Vec::new(),
            enable: Vec::new(),
            remove: DEFAULT_REMOVED.iter().map(PathBuf::from).collect(),
        }
    }

    /// Removes the absolute path `inside` from the machine (an overlay whiteout in the disk): a file of the
    /// host the machine must not have.
    pub fn remove(mut self, inside: impl Into<PathBuf>) -> Setup {
        self.remove.push(inside.into());
        self
    }

    /// Maps `name` to `ip` in `/etc/hosts`. With any host given, `/etc/hosts` is the host's `localhost` lines
    /// and these mappings (later ones win, as in any hosts file).
    pub fn host(mut self, name: &str, ip: &str) -> Setup {
        self.hosts.push((name.to_string(), ip.to_string()));
        self
    }

    /// Trusts the certificates in `pem`: `/etc/ssl/certs/ca-certificates.crt` becomes the host's bundle with
    /// `pem` appended, and `pem` also goes to `/usr/local/share/ca-certificates/kvvm-sim.crt`, so it stays
    /// trusted when a package's maintainer script runs `update-ca-certificates`. Replaces an earlier call.
    pub fn ca_bundle(mut self, pem: &str) -> Setup {
        self.ca_bundle = Some(pem.to_string());
        self
    }

    /// Masks `unit` (a symlink to `/dev/null` in `/etc/systemd/system`): it does not start, even if wanted.
    pub fn mask(mut self, unit: &str) -> Setup {
        self.unmask.remove(unit);
        self.mask.insert(unit.to_string());
        self
    }

    /// Lets `unit` run: not masked by this setup, and a mask an earlier boot's setup left on the disk is
    /// removed (only a symlink to `/dev/null`: a mask the package made itself stays).
    pub fn unmask(mut self, unit: &str) -> Setup {
        self.mask.remove(unit);
        self.unmask.insert(unit.to_string());
        self
    }

    /// Writes `contents` to the absolute path `inside` with permission bits `mode`, owned by root. Missing
    /// parent directories get the owner and mode of the host's directory at that path (0755 root if the
    /// host has none).
    pub fn file(
        mut self,
        inside: impl Into<PathBuf>,
        contents: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Setup {
        self.files.push((inside.into(), contents.into(), mode));
        self
    }

    /// Enables `unit` for `multi-user.target`, as `systemctl enable` does for `WantedBy=multi-user.target`.
    pub fn enable(self, unit: &str) -> Setup {
        self.enable_for(unit, "multi-user.target")
    }

    /// Enables `unit` for `target`: a symlink `/etc/systemd/system/<target>.wants/<unit>` to the unit's file
    /// (in `/etc/systemd/system` when [`Setup::file`] writes it there or the host has it there, else in
    /// `/lib/systemd/system`).
    pub fn enable_for(mut self, unit: &str, target: &str) -> Setup {
        self.enable.push((unit.to_string(), target.to_string()));
        self
    }

    /// Writes it all into `upper`: removals, files, then `/etc/hosts` and the CA bundle, then masks and
    /// enablements.
    fn apply(&self, upper: &Path) -> io::Result<()> {
        for inside in &self.remove {
            whiteout(upper, inside)?;
        }
        for (inside, contents, mode) in &self.files {
            write_file(upper, inside, contents, *mode)?;
        }
        if !self.hosts.is_empty() {
            write_file(
                upper,
                Path::new("/etc/hosts"),
                self.hosts_file().as_bytes(),
                0o644,
            )?;
        }
        if let Some(pem) = &self.ca_bundle {
            let mut bundle = fs::read(crate::tls::SYSTEM_BUNDLE).unwrap_or_default();
            if !bundle.is_empty() && !bundle.ends_with(b"\n") {
                bundle.push(b'\n');
            }
            bundle.extend_from_slice(pem.as_bytes());
            write_file(upper, Path::new(crate::tls::SYSTEM_BUNDLE), &bundle, 0o644)?;
            write_file(
                upper,
                Path::new("/usr/local/share/ca-certificates/kvvm-sim.crt"),
                pem.as_bytes(),
                0o644,
            )?;
        }
        let units = Path::new("/etc/systemd/system");
        for unit in &self.mask {
            check_unit_name(unit)?;
            write_symlink(upper, &units.join(unit), Path::new("/dev/null"))?;
        }
        for unit in &self.unmask {
            check_unit_name(unit)?;
            let link = upper_path(upper, &units.join(unit))?;
            if fs::read_link(&link).is_ok_and(|t| t == Path::new("/dev/null")) {
                fs::remove_file(&link)
                    .map_err(|e| with_context(e, format!("unmask {unit} ({})", link.display())))?;
            }
        }
        for (unit, target) in &self.enable {
            check_unit_name(unit)?;
            check_unit_name(target)?;
            let in_etc = units.join(unit);
            let written = self.files.iter().any(|(p, _, _)| p == &in_etc);
            let file = if written || in_etc.exists() {
                in_etc
            } else {
                Path::new("/lib/systemd/system").join(unit)
            };
            write_symlink(
                upper,
                &units.join(format!("{target}.wants")).join(unit),
                &file,
            )?;
        }
        Ok(())
    }

    /// The host's `localhost` lines, then the mappings.
    fn hosts_file(&self) -> String {
        let host = fs::read_to_string("/etc/hosts").unwrap_or_default();
        let mut text: String = host
            .lines()
            .filter(|l| {
                let l = l.split('#').next().unwrap_or("");
                l.split_whitespace()
                    .skip(1)
                    .any(|n| n.contains("localhost") || n.starts_with("ip6-"))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if text.is_empty() {
            text.push_str("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n");
        }
        for (name, ip) in &self.hosts {
            text.push_str(&format!("{ip} {name}\n"));
        }
        text
    }
}

fn check_unit_name(unit: &str) -> io::Result<()> {
    if unit.is_empty() || unit.contains('/') || unit.starts_with('.') {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{unit:?} is not a systemd unit name"),
        ));
    }
    Ok(())
}

/// The host path in `upper` of the absolute path `inside` (no `..`, so nothing lands outside `upper`).
fn upper_path(upper: &Path, inside: &Path) -> io::Result<PathBuf> {
    let mut path = upper.to_path_buf();
    let mut components = inside.components();
    if components.next() != Some(Component::RootDir) {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{} is not an absolute path", inside.display()),
        ));
    }
    for c in components {
        match c {
            Component::Normal(n) => path.push(n),
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    ErrorKind::InvalidInput,
                    format!("{} must not contain `..`", inside.display()),
                ));
            }
        }
    }
    Ok(path)
}

/// Creates the directories of `inside_dir` missing in `upper`, each with the owner and mode of the host's
/// directory at that path: in an overlay the upper directory's attributes win, so a directory made with the
/// default 0755 would change, say, `/var/tmp` (1777) or `/etc/ssl/private` (0710) inside.
fn ensure_dir(upper: &Path, inside_dir: &Path) -> io::Result<()> {
    let mut host = PathBuf::from("/");
    let mut here = upper.to_path_buf();
    for c in upper_path(Path::new("/"), inside_dir)?.components().skip(1) {
        host.push(c);
        here.push(c);
        if here.is_dir() {
            continue;
        }
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&here)
            .map_err(|e| with_context(e, format!("create {}", here.display())))?;
        if host.is_dir() {
            copy_attributes(&host, &here)?;
        }
    }
    Ok(())
}

fn copy_attributes(from: &Path, to: &Path) -> io::Result<()> {
    let m = fs::metadata(from).map_err(|e| with_context(e, format!("stat {}", from.display())))?;
    std::os::unix::fs::chown(to, Some(m.uid()), Some(m.gid()))
        .map_err(|e| with_context(e, format!("chown {}", to.display())))?;
    fs::set_permissions(to, fs::Permissions::from_mode(m.mode() & 0o7777))
        .map_err(|e| with_context(e, format!("chmod {}", to.display())))
}

/// Removes a file or symlink at `path` (a directory there is an error: a setup never replaces one).
fn remove_entry(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(io::Error::new(
            ErrorKind::AlreadyExists,
            format!("{} is a directory on the disk", path.display()),
        )),
        Ok(_) => {
            fs::remove_file(path).map_err(|e| with_context(e, format!("remove {}", path.display())))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(with_context(e, format!("stat {}", path.display()))),
    }
}

/// Hides the lower layer's `inside` in the overlay: a 0/0 character device at its place in `upper` (what the
/// kernel itself writes when a file of the lower layer is deleted). Nothing to do when the host has no such
/// file.
fn whiteout(upper: &Path, inside: &Path) -> io::Result<()> {
    if fs::symlink_metadata(inside).is_err() {
        return Ok(());
    }
    let path = upper_path(upper, inside)?;
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_char_device() && meta.rdev() == 0 => return Ok(()),
        Ok(_) => fs::remove_file(&path)
            .map_err(|e| with_context(e, format!("remove {} for its whiteout", path.display())))?,
        Err(_) => {}
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))?;
    // SAFETY: a NUL-terminated path; mknod only creates the device node.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
        return Err(with_context(
            io::Error::last_os_error(),
            format!("whiteout {}", path.display()),
        ));
    }
    Ok(())
}

fn write_file(upper: &Path, inside: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let path = upper_path(upper, inside)?;
    if let Some(parent) = inside.parent() {
        ensure_dir(upper, parent)?;
    }
    // Not through a symlink the disk has there (a mask, or a link into the host's files).
    remove_entry(&path)?;
    fs::write(&path, contents).map_err(|e| with_context(e, format!("write {}", path.display())))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .map_err(|e| with_context(e, format!("chmod {}", path.display())))
}

fn write_symlink(upper: &Path, inside: &Path, target: &Path) -> io::Result<()> {
    let path = upper_path(upper, inside)?;
    if let Some(parent) = inside.parent() {
        ensure_dir(upper, parent)?;
    }
    remove_entry(&path)?;
    std::os::unix::fs::symlink(target, &path).map_err(|e| {
        with_context(
            e,
            format!("symlink {} -> {}", path.display(), target.display()),
        )
    })
}

// ---------------------------------------------------------------------------------------------------------
// Machine

/// A booted machine: systemd as PID 1 of its own pid, mount, network, UTS, IPC and cgroup namespaces, on an
/// overlay of the host's `/` whose changes go to a [`Disk`]. Dropping it kills it, as [`Machine::kill`] does.
pub struct Machine {
    disk: Arc<DiskShared>,
    /// `root/` (the overlay's mount point, in the machine's mount namespace only), the launcher script and
    /// `console.log` (the launcher's and systemd's stdout and stderr).
    dir: Option<tempfile::TempDir>,
    cgroup: Option<PathBuf>,
    unshare: Option<Child>,
    systemd: Option<Systemd>,
    stopped: bool,
}

/// systemd's process, held so that its pid cannot be confused with a later process of the same number.
struct Systemd {
    pid: u32,
    pidfd: OwnedFd,
    /// The machine's pid namespace, held open so its inode number (what identifies the machine's processes
    /// in `/proc`) is not reused by another namespace while this machine is compared against.
    _pid_ns: fs::File,
    pid_ns_ino: u64,
}

impl Machine {
    /// Applies `setup` to the disk, then boots on it; returns once systemd runs (its PID known), which is
    /// well before the machine is up: see [`Machine::wait_booted`]. Fails when a machine already runs on
    /// `disk`, when the harness is [`unavailable`], or when the launcher fails (the error has its output).
    pub fn boot(disk: &Disk, setup: &Setup) -> io::Result<Machine> {
        if let Some(why) = unavailable() {
            return Err(io::Error::new(
                ErrorKind::Unsupported,
                format!("cannot boot a machine here: {why}"),
            ));
        }
        if disk.shared.in_use.swap(true, Ordering::SeqCst) {
            return Err(io::Error::new(
                ErrorKind::ResourceBusy,
                "a machine already runs on this disk: kill it before booting again",
            ));
        }
        // From here on, dropping `m` releases the disk and undoes whatever was done.
        let mut m = Machine {
            disk: disk.shared.clone(),
            dir: None,
            cgroup: None,
            unshare: None,
            systemd: None,
            stopped: false,
        };
        setup
            .apply(&disk.shared.upper)
            .map_err(|e| with_context(e, "apply the machine's setup to its disk"))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-root-", std::process::id()))
            .tempdir()
            .map_err(|e| with_context(e, "create a temporary directory for a machine's root"))?;
        let root = dir.path().join("root");
        let script = dir.path().join("launcher.sh");
        let console = dir.path().join("console.log");
        m.dir = Some(dir);
        fs::create_dir(&root).map_err(|e| with_context(e, format!("create {}", root.display())))?;
        fs::write(&script, SETUP_SCRIPT)
            .map_err(|e| with_context(e, format!("write {}", script.display())))?;
        let out = fs::File::create(&console)
            .map_err(|e| with_context(e, format!("create {}", console.display())))?;
        let err = out.try_clone()?;
        let cgroup = new_cgroup()?;
        m.cgroup = Some(cgroup.clone());

        let mut cmd = Command::new("/bin/sh");
        cmd.arg(&script)
            .arg("launch")
            .arg(&cgroup)
            .arg(&root)
            .arg(&disk.shared.upper)
            .arg(&disk.shared.work)
            .arg(CONTAINER)
            .arg(SYSTEMD)
            .env_clear()
            .env("PATH", INSIDE_PATH)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        m.unshare = Some(spawn_launcher(cmd).map_err(|e| with_context(e, "start unshare"))?);
        m.systemd = Some(m.find_systemd()?);
        Ok(m)
    }

    /// Waits until the launcher's child (PID 1 of the new pid namespace) has exec'd systemd.
    fn find_systemd(&mut self) -> io::Result<Systemd> {
        let deadline = Instant::now() + PATIENCE;
        let unshare = self.unshare_pid()?;
        let mut found: Option<(u32, OwnedFd)> = None;
        let (pid, pidfd) = loop {
            if let Some(status) = self
                .unshare
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(io::Error::other(format!(
                    "the machine's launcher exited ({status}) before systemd ran; its output:\n{}",
                    self.console()
                )));
            }
            if found.is_none()
                && let Some(pid) = children(unshare).first().copied()
                // Gone already (the launcher failed): the next round sees unshare exit.
                && let Ok(fd) = pidfd_open(pid)
                // unshare forks once and reaps only when its child died: still its child, `fd` is that child.
                && children(unshare).contains(&pid)
            {
                found = Some((pid, fd));
            }
            if let Some((pid, fd)) = found.take() {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    break (pid, fd);
                }
                found = Some((pid, fd));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    format!(
                        "systemd did not start within {PATIENCE:?}; the launcher's output:\n{}",
                        self.console()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let ns_path = format!("/proc/{pid}/ns/pid");
        let pid_ns =
            fs::File::open(&ns_path).map_err(|e| with_context(e, format!("open {ns_path}")))?;
        let pid_ns_ino = pid_ns.metadata()?.ino();
        if !children(unshare).contains(&pid) {
            return Err(io::Error::other(format!(
                "systemd (pid {pid}) died right after it started; the launcher's output:\n{}",
                self.console()
            )));
        }
        Ok(Systemd {
            pid,
            pidfd,
            _pid_ns: pid_ns,
            pid_ns_ino,
        })
    }

    fn unshare_pid(&self) -> io::Result<u32> {
        self.unshare
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| io::Error::other("the machine's launcher is not running"))
    }

    fn systemd(&self) -> io::Result<&Systemd> {
        match &self.systemd {
            Some(s) if !self.stopped => Ok(s),
            _ => Err(io::Error::other("the machine is not running")),
        }
    }

    /// Waits until `systemctl is-system-running --wait` says the boot is over, at most `timeout`; returns the
    /// state when it is `running` or `degraded` (some unit failed: `systemctl --failed` says which). Any
    /// other state, or none by the deadline, is an error naming the failed units and the launcher's output.
    pub fn wait_booted(&self, timeout: Duration) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut state;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let secs = format!("{:.1}", left.as_secs_f64().max(0.1));
            let out = self.run(&["timeout", &secs, "systemctl", "is-system-running", "--wait"])?;
            state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            match state.as_str() {
                "running" | "degraded" => return Ok(state),
                // Before systemd's private bus is up systemctl cannot connect (and says `offline`).
                "" | "offline" | "initializing" | "starting" if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => break,
            }
        }
        Err(io::Error::new(
            ErrorKind::TimedOut,
            format!(
                "the machine (systemd pid {}) did not boot within {timeout:?}: state {state:?}\n\
                 systemctl --failed:\n{}\nlauncher output:\n{}",
                self.pid(),
                self.failed_units(),
                self.console()
            ),
        ))
    }

    /// `systemctl --failed` inside, or why it could not run.
    pub fn failed_units(&self) -> String {
        match self.run(&["systemctl", "--failed", "--no-pager", "--plain"]) {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("(cannot run systemctl --failed: {e})"),
        }
    }

    /// A command running `argv` inside the machine, not started: `nsenter -t <systemd> -a -r -w -- argv`, so
    /// in all its namespaces, with its root and cwd (`/`), and the environment described at [`INSIDE_PATH`].
    /// It stays in the test process' cgroup (systemd inside does not see it) and dies with the machine. The
    /// process started is `nsenter`, which waits for `argv` and exits with its status; killing `nsenter`
    /// leaves `argv` running inside.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid().to_string())
            .args(["-a", "-r", "-w", "--"])
            .args(argv)
            .env_clear()
            .envs([
                ("PATH", INSIDE_PATH),
                ("HOME", "/root"),
                ("LANG", "C.UTF-8"),
                ("USER", "root"),
                ("LOGNAME", "root"),
                ("TERM", "dumb"),
            ]);
        cmd
    }

    /// Runs `argv` inside ([`Machine::command`]), stdin empty, waits; its status, stdout and stderr. An error
    /// only when it could not be started, not when it failed.
    pub fn run(&self, argv: &[&str]) -> io::Result<Output> {
        self.systemd()?;
        self.command(argv)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| with_context(e, format!("run {argv:?} in the machine")))
    }

    /// Runs the shell script `script` inside (`/bin/sh -c script`), as [`Machine::run`].
    pub fn sh(&self, script: &str) -> io::Result<Output> {
        self.run(&["/bin/sh", "-c", script])
    }

    /// Starts `argv` inside without waiting ([`Machine::command`]): stdin empty, stdout and stderr piped
    /// (read them, or `wait_with_output`, so it does not block on a full pipe).
    pub fn spawn(&self, argv: &[&str]) -> io::Result<Child> {
        self.systemd()?;
        self.command(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| with_context(e, format!("start {argv:?} in the machine")))
    }

    /// Runs `f` on a new thread whose network namespace is the machine's (`setns` on
    /// `/proc/<systemd>/ns/net`) and returns its result; a panic in `f` is resumed here. Sockets made there
    /// stay in the machine's network after the thread ended, and threads `f` starts are in it too, so a test
    /// can serve the machine from its own process, e.g. start the fake IMDS on 169.254.169.254:80.
    pub fn in_network<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let s = self.systemd()?;
        let path = format!("/proc/{}/ns/net", s.pid);
        let ns = fs::File::open(&path).map_err(|e| with_context(e, format!("open {path}")))?;
        // Opened while systemd lived: then the file is its namespace, not a later process' of that pid.
        if !pidfd_alive(&s.pidfd) {
            return Err(io::Error::other("the machine died"));
        }
        let thread = std::thread::Builder::new()
            .name("machine-network".into())
            .spawn(move || {
                // SAFETY: `ns` is an open namespace file; setns changes only this thread's network.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(with_context(
                        io::Error::last_os_error(),
                        "enter the machine's network namespace",
                    ));
                }
                Ok(f())
            })
            .map_err(|e| with_context(e, "start a thread for the machine's network"))?;
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The host path of the path `inside` the machine, through systemd's root (`/proc/<pid>/root/…`), with
    /// all its mounts (`/run`, `/tmp`…). Valid while the machine runs; afterwards [`Disk::upper`] has what
    /// it wrote.
    pub fn path(&self, inside: &Path) -> PathBuf {
        let rel = inside.strip_prefix("/").unwrap_or(inside);
        PathBuf::from(format!("/proc/{}/root", self.pid())).join(rel)
    }

    /// systemd's pid as the host sees it (1 inside).
    pub fn pid(&self) -> u32 {
        self.systemd.as_ref().map_or(0, |s| s.pid)
    }

    /// The host pid of the process whose pid inside the machine is `inside` (e.g. a unit's `MainPID`).
    pub fn host_pid(&self, inside: u32) -> io::Result<u32> {
        let s = self.systemd()?;
        for pid in processes_in(s.pid_ns_ino) {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let ns_pid = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|p| p.parse::<u32>().ok());
            if ns_pid == Some(inside) {
                return Ok(pid);
            }
        }
        Err(io::Error::new(
            ErrorKind::NotFound,
            format!("no process {inside} in the machine"),
        ))
    }

    /// The journal of `unit` this boot (`journalctl -u unit --no-pager -o cat`), or why it could not be read.
    pub fn journal(&self, unit: &str) -> String {
        match self.run(&["journalctl", "-u", unit, "--no-pager", "-o", "cat"]) {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => format!(
                "(journalctl -u {unit} failed, {}: {})",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("(cannot run journalctl: {e})"),
        }
    }

    /// What the launcher and systemd wrote to their stdout and stderr (the launcher's errors; systemd logs
    /// to the journal).
    pub fn console(&self) -> String {
        self.dir
            .as_ref()
            .map(|d| fs::read_to_string(d.path().join("console.log")).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Stops it: SIGKILL to systemd (the pid namespace dies with its PID 1), waits for `unshare` to exit,
    /// then checks that nothing of the machine runs and no mount of its root is visible on the host, and
    /// removes its root directory and cgroup. The disk stays. The error says what was left (and was killed or
    /// kept). Also done on drop, which reports on stderr.
    pub fn kill(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut problems = Vec::new();
        if let Some(s) = &self.systemd
            && let Err(e) = pidfd_kill(&s.pidfd)
            && e.raw_os_error() != Some(libc::ESRCH)
        {
            problems.push(format!("SIGKILL to systemd (pid {}): {e}", s.pid));
        }
        let mut launcher_gone = true;
        if let Some(child) = self.unshare.as_mut() {
            let deadline = Instant::now() + PATIENCE;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline && self.systemd.is_some() => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Ok(None) => {
                        // No systemd to kill (boot failed early), or it would not die: kill-child does the
                        // rest when unshare dies.
                        if self.systemd.is_some() {
                            problems.push(format!(
                                "unshare (pid {}) still ran {PATIENCE:?} after systemd was killed",
                                child.id()
                            ));
                        }
                        let _ = child.kill();
                        if let Err(e) = child.wait() {
                            problems.push(format!("wait for unshare: {e}"));
                            launcher_gone = false;
                        }
                        break;
                    }
                    Err(e) => {
                        problems.push(format!("wait for unshare: {e}"));
                        launcher_gone = false;
                        break;
                    }
                }
            }
        }
        if let Some(s) = &self.systemd {
            // The kernel kills the whole namespace before its PID 1 is reaped: this finds nothing unless
            // that failed.
            let left = processes_in(s.pid_ns_ino);
            if !left.is_empty() {
                for pid in &left {
                    // SAFETY: kill has no memory preconditions; `pid` was in the machine's namespace.
                    unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
                }
                problems.push(format!(
                    "processes of the machine outlived it: {left:?} (killed)"
                ));
            }
        }
        if let Some(dir) = self.dir.take() {
            let root = dir.path().join("root");
            let mounts = mounts_under(&root);
            if mounts.is_empty() {
                if let Err(e) = fs::remove_dir(&root)
                    && e.kind() != ErrorKind::NotFound
                {
                    problems.push(format!("remove {}: {e}", root.display()));
                    let _ = dir.keep();
                }
            } else {
                problems.push(format!(
                    "mounts of the machine are visible on the host: {mounts:?} (kept {})",
                    dir.path().display()
                ));
                let _ = dir.keep();
            }
        }
        if let Some(cg) = self.cgroup.take()
            && let Err(e) = remove_cgroup(&cg, Duration::from_secs(5))
        {
            problems.push(format!("remove the machine's cgroup {}: {e}", cg.display()));
        }
        if launcher_gone {
            self.disk.in_use.store(false, Ordering::SeqCst);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "machine (systemd pid {}): {}",
                self.pid(),
                problems.join("; ")
            )))
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("kvvm_sim::machine: {e}");
        }
    }
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("pid", &self.pid())
            .field("disk", &self.disk.dir.path())
            .field("stopped", &self.stopped)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Processes, cgroups, mounts

/// Spawns `cmd` (the launcher) with `PR_SET_PDEATHSIG=SIGKILL`, from one thread that lives as long as the
/// process: the signal fires when the thread that forked the child ends, so forking from a test's thread
/// would kill the machine when that thread ends, even if the `Machine` was moved elsewhere.
fn spawn_launcher(mut cmd: Command) -> io::Result<Child> {
    type Job = (Command, Sender<io::Result<Child>>);
    static LAUNCHER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    let launcher = LAUNCHER.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("kvvm-machine-launcher".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = spawned {
            eprintln!("kvvm_sim::machine: cannot start the launcher thread: {e}");
        }
        Mutex::new(tx)
    });
    // SAFETY: the closure only calls prctl, which is async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = channel();
    launcher
        .lock()
        .map_err(|_| io::Error::other("the launcher thread's channel is poisoned"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the launcher thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the launcher thread is gone"))?
}

/// The children of `pid` (`/proc/<pid>/task/<pid>/children`, or a scan of `/proc` when the kernel lacks it).
fn children(pid: u32) -> Vec<u32> {
    if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    }
    all_pids()
        .into_iter()
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("PPid:"))
                        .and_then(|v| v.trim().parse::<u32>().ok())
                })
                == Some(pid)
        })
        .collect()
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Host pids of the processes in the pid namespace with inode `ns_ino`.
fn processes_in(ns_ino: u64) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| fs::metadata(format!("/proc/{p}/ns/pid")).is_ok_and(|m| m.ino() == ns_ino))
        .collect()
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(with_context(
            io::Error::last_os_error(),
            format!("pidfd_open({pid})"),
        ));
    }
    // SAFETY: `fd` is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

fn pidfd_signal(fd: &OwnedFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn pidfd_kill(fd: &OwnedFd) -> io::Result<()> {
    pidfd_signal(fd, libc::SIGKILL)
}

fn pidfd_alive(fd: &OwnedFd) -> bool {
    pidfd_signal(fd, 0).is_ok()
}

/// `/proc/self/mountinfo` entries: (mount root, mount point, fstype), with `\040`-style escapes undone.
fn mountinfo() -> Vec<(String, PathBuf, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let fstype = right.split(' ').next()?;
            Some((
                unescape(f.get(3)?),
                PathBuf::from(unescape(f.get(4)?)),
                fstype.to_string(),
            ))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir` in the host's (this process') mount namespace.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .map(|(_, point, _)| point)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// This process' cgroup in the cgroup v2 hierarchy, as a host directory: machines' cgroups go below it.
fn cgroup_base() -> io::Result<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| with_context(e, "read /proc/self/cgroup"))?;
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| io::Error::other("this process is in no cgroup v2 hierarchy"))?
        .trim()
        .to_string();
    for (mount_root, point, fstype) in mountinfo() {
        if fstype != "cgroup2" {
            continue;
        }
        let Ok(rel) = Path::new(&path).strip_prefix(&mount_root) else {
            continue;
        };
        let base = point.join(rel);
        if base.is_dir() {
            return Ok(base);
        }
    }
    Err(io::Error::other(
        "no cgroup v2 hierarchy is mounted (a machine's systemd runs on one)",
    ))
}

fn new_cgroup() -> io::Result<PathBuf> {
    let dir = cgroup_base()?.join(format!(
        "{PREFIX}{}-{}",
        std::process::id(),
        crate::httpserver::random_hex(8)
    ));
    fs::create_dir(&dir)
        .map_err(|e| with_context(e, format!("create cgroup {}", dir.display())))?;
    Ok(dir)
}

/// Removes the cgroup `dir` and every cgroup systemd made below it, deepest first (empty cgroups only: a
/// cgroup's files cannot be deleted, `rmdir` removes it). Retries for `patience` while the last processes
/// are released.
fn remove_cgroup(dir: &Path, patience: Duration) -> io::Result<()> {
    fn subdirs(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    subdirs(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let deadline = Instant::now() + patience;
    loop {
        let mut dirs = Vec::new();
        subdirs(dir, &mut dirs);
        let mut last = None;
        for d in &dirs {
            match fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => last = Some(with_context(e, format!("rmdir {}", d.display()))),
            }
        }
        match last {
            None => return Ok(()),
            Some(e) if Instant::now() > deadline => return Err(e),
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Removes, once per process, what test processes that died without dropping their machines left: temp
/// dirs and cgroups named `kvvm-machine-<pid>-…` of pids that no longer run. Their machines died with them
/// (`PR_SET_PDEATHSIG`, `--kill-child`), and with them their mounts.
fn remove_stale() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dead = |name: &str| {
            name.strip_prefix(PREFIX)
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| {
                    p != std::process::id() && !Path::new("/proc").join(p.to_string()).exists()
                })
        };
        if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !dead(&name) {
                    continue;
                }
                // A root dir only if its mount point is an empty dir again, never through a mount.
                let root = e.path().join("root");
                if name.contains("-root-") && root.exists() && fs::remove_dir(&root).is_err() {
                    continue;
                }
                let _ = fs::remove_dir_all(e.path());
            }
        }
        if let Ok(base) = cgroup_base()
            && let Ok(entries) = fs::read_dir(&base)
        {
            for e in entries.flatten() {
                if dead(&e.file_name().to_string_lossy()) {
                    let _ = remove_cgroup(&e.path(), Duration::ZERO);
                }
            }
        }
    });
}

fn with_context(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
