//! The three things that differ between the platforms kvvm runs on, each behind one small interface, so that
//! `sync`, `worker`, `status` and `settings` are written once for all of them:
//!
//! * **(a) where installed certificates go** — [`CertificateDestination`]. Linux: the store folder, with
//!   version files, links and POSIX ACLs ([`Destination`] over `crate::store`). Windows: a certificate
//!   store ([`Destination`] over `windows::cert_store`).
//! * **(b) how the worker is kept alive** — [`keep_alive::KeepAlive`]. Linux: the `setsid` supervisor that
//!   `enable` starts, or systemd running `kvvm service` ([`Keeper`] is `crate::supervisor::Supervisor`).
//!   Windows: the Windows service `kvvm`, which the service control manager keeps running, and which keeps
//!   the poller running by the same rule (`crate::keeper`).
//! * **(c) the host's paths and users** — [`paths`] (the default store, the service's files, the Arc agent's
//!   key folder; waagent's folders come from its `HandlerEnvironment.json`) and [`users`] (uid/gid look-ups for
//!   `acls`).
//!
//! Beside them, [`process`]: how the long-running poller's process is tuned for a life spent waiting.
//!
//! Each interface lives in a module of its own that calls nothing of the platform's, and each platform
//! brings its implementation in a folder of its own (`linux/`, `windows/`), selected here and nowhere else.

mod destination;
pub(crate) mod keep_alive;

pub(crate) use destination::{CertificateDestination, DestinationOptions};

#[cfg(unix)]
mod linux;
#[cfg(unix)]
pub(crate) use linux::{
    Destination, DestinationError, KeepAliveError, Keeper, paths, process, users, vmapp,
};

// The store folder's naming scheme: the settings check names by it on every platform.
pub(crate) mod naming;
// What the store settings name on this platform (a folder, or a certificate store).
pub(crate) mod target;

#[cfg(windows)]
pub(crate) mod windows;
#[cfg(windows)]
pub(crate) use windows::{
    Destination, DestinationError, KeepAliveError, Keeper, paths, process, vmapp,
};
