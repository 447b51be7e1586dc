//! kvvm: the Key Vault VM extension for Linux. The binary (`src/main.rs`) dispatches on the waagent verb; this
//! library holds one module per concern so each can be tested on its own.

pub mod certificate;
pub mod commands;
pub mod files;
pub mod fluentd;
pub mod handler;
pub mod hook;
pub mod http;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod residency;
pub mod schedule;
pub mod settings;
pub mod state;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod sync;
pub mod vault;
pub mod worker;
