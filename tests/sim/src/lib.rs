//! Test doubles that behave like the real services kvvm talks to: the Linux guest agent (waagent), the Azure
//! Instance Metadata Service / Azure Arc identity endpoint, and Azure Key Vault. Used by kvvm's integration
//! tests in-process, and by `make demo` through the `kvvm-sim` binary.

pub mod httpserver;
pub mod imds;
pub mod netns;
pub mod pki;
pub mod tls;
pub mod vault;
pub mod waagent;
