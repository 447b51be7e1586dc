//! Seam (c), users: the look-up of the users and groups `acls` names (passwd and group, through the name
//! service), for the POSIX ACLs the store grants.

use std::io;

/// Whether an `acls` principal is a user or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// A user (a passwd entry, or a numeric uid).
    User,
    /// A group (a group entry, or a numeric gid).
    Group,
}

impl PrincipalKind {
    /// The word the `acls` messages use.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Group => "group",
        }
    }
}

/// The largest user or group entry a look-up takes, in KiB: nix's `User::from_name` / `Group::from_name` start
/// with the system's suggested buffer and double it on `ERANGE` (a group with many members, a long GECOS field)
/// up to 1 MiB (glibc's own `getgrnam` grows without a cap).
const LOOKUP_LIMIT_KIB: usize = 1024;

/// Resolves a user (or group) name or numeric id to an id that exists on this machine: `Ok(None)` when there is
/// no such entry, `Err` when the look-up itself failed (the name service, or an entry above 1 MiB).
pub(crate) fn lookup(name: &str, kind: PrincipalKind) -> Result<Option<u32>, io::Error> {
    use nix::errno::Errno;
    let by_name = loop {
        let found = match kind {
            PrincipalKind::User => {
                nix::unistd::User::from_name(name).map(|u| u.map(|u| u.uid.as_raw()))
            }
            PrincipalKind::Group => {
                nix::unistd::Group::from_name(name).map(|g| g.map(|g| g.gid.as_raw()))
            }
        };
        match found {
            Ok(id) => break Ok(id),
            Err(Errno::ERANGE) => {
                break Err(io::Error::other(format!(
                    "its entry is larger than {LOOKUP_LIMIT_KIB} KiB"
                )));
            }
            Err(Errno::EINTR) => {}
            // What getpwnam_r(3) lists for "the name was not found" besides 0.
            Err(Errno::ENOENT | Errno::ESRCH | Errno::EBADF | Errno::EPERM) => break Ok(None),
            Err(errno) => break Err(io::Error::from(errno)),
        }
    };
    // A numeric id is taken as is (as setfacl does), even without a passwd entry.
    let numeric = name.parse::<u32>().ok();
    match by_name {
        Ok(Some(id)) => Ok(Some(id)),
        Ok(None) => Ok(numeric),
        Err(e) => numeric.map(Some).ok_or(e),
    }
}
