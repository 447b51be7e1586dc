//! Windows: certificates go into a certificate store ([`cert_store`]). The worker's keep-alive (a Windows
//! service) and the host's paths come with the layers above them.

pub(crate) mod cert_store;
