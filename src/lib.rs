//! kvvm: the Key Vault VM extension for Linux. The binary (`src/main.rs`) dispatches on the waagent verb; this
//! library holds one module per concern so each can be tested on its own (the README's module map says what
//! each owns and what it may call).
//!
//! **The face.** The modules are private and this file chooses what the library shows, the way rustls does:
//! the binary, the integration tests (`tests/`) and the fuzz targets (`fuzz/`) are its only users, so the face
//! is what they need, re-exported at the root. With `unreachable_pub` and `missing_docs` on, the compiler sees
//! every item nobody reaches (dead code that a `pub mod` would hide) and every public item without a doc.
//!
//! Three modules stay public as units, because their items are named for the module and read best through it:
//! [`commands`] (what the binary runs: the waagent verbs and the other commands), [`settings`] (the
//! KeyVaultForLinux schema: `settings::Settings`, `settings::parse_settings_file`) and [`metrics`] (the
//! metrics file: `metrics::render`, `metrics::write`). [`parse`] gathers, for the fuzz targets, every parser of
//! input from outside kvvm's trust.

#![warn(missing_docs)]
#![warn(unreachable_pub)]
// Windows (issue 25): the whole product builds for Windows too, where certificates go into a certificate store
// (`platform::windows`) and the worker is a Windows service; what exists only on Linux (the store folder,
// the supervisor, `residency`) is in `linux_only!`.

/// Items that exist only on Linux: the store folder and the supervisor, which Windows does in its own way.
macro_rules! linux_only {
    ($($item:item)*) => { $( #[cfg(unix)] $item )* };
}

mod certificate;
mod files;
mod fluentd;
mod handler;
mod hook;
mod host;
mod http;
mod identity;
mod keeper;
mod logging;
pub mod metrics;
mod names;
mod notify;
mod platform;
mod report;
mod schedule;
pub mod settings;
mod state;
mod status;
mod sync;
mod vault;

pub use certificate::{CertificateBundle, CertificateError, ContentKind};
pub use fluentd::{FluentdConfig, FluentdLogger, QUEUE_CAPACITY};
pub use handler::HandlerEnvironment;
pub use hook::Hook;
pub use host::{HostError, SERVICE_LOG_DIR, SERVICE_SETTINGS, SERVICE_STATE_DIR, Service};
pub use http::{CHECK_DEADLINE, CONNECTIONS_PER_HOST, Deadline, RetryPolicy, Stop};
pub use identity::{Identity, IdentityError, UserIdentity, read_arc_key};
pub use names::{LinkName, SecretRef, Version};
pub use platform::keep_alive::FAILURE_MARK;
pub use schedule::Pace;
pub use state::{CertStatus, CertificateState, WorkerState};
pub use sync::{KnownOwned, SyncOptions, check_all};
pub use vault::{SecretBundle, SecretKind, VaultClient, VaultError};

pub mod commands;
mod worker;

// The binary: it dispatches to `commands`; these are what it names besides, and the types of the public
// functions the tests call.
pub use worker::{WorkerError, certificate_states};

linux_only! {
    mod residency;
    mod store;
    mod supervisor;

    // The layers the tests drive one by one.
    pub use platform::users::PrincipalKind;
    pub use store::{
        FolderFile, Install, Installed, LEGACY_LOCK_FILE, Principal, Store, StoreError, TEMP_PREFIX,
        lock_file_name, lock_folder, resolve_principals,
    };
}

/// Every parser of input from outside kvvm's trust, each a function of the bytes alone, so the fuzz targets
/// (`fuzz/harness.rs`) can drive them: Key Vault's secret bundles, error bodies and `WWW-Authenticate`
/// challenges, the identity endpoint's token replies and Azure Arc's `Basic realm=` challenge, and Fluentd
/// acknowledgements. The settings file's parser is [`settings::parse_settings_file`], and
/// `HandlerEnvironment.json`'s is [`HandlerEnvironment::parse`].
pub mod parse {
    pub use crate::fluentd::parse_ack;
    pub use crate::host::parse_service_settings;
    pub use crate::identity::{basic_realm, parse_token};
    pub use crate::vault::{Challenge, kv_error, parse_bundle, parse_challenge, token_allowed};
}
