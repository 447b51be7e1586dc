//! Key Vault data-plane client: reads one secret (the certificate's latest or pinned version) the way the Azure
//! SDKs do. The first request to a vault carries no token; the vault's 401 challenge names the resource to get
//! a token for, and kvvm sends that token only over https to a host inside the resource's domain, so a crafted
//! vault URL cannot harvest it. Throttling (`Retry-After`) holds back every request to that vault, not just
//! the one that was refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use url::Url;
use zeroize::Zeroizing;

use crate::http::{self, Attempt, Deadline, Ended, FailureKind, RetryPolicy, Route, Stop, Verdict};
use crate::identity::{AccessToken, Identity, IdentityError};
use crate::names::Version;

/// The Key Vault REST API version kvvm speaks.
pub(crate) const API_VERSION: &str = "7.4";

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Tokens only travel over https.
    #[error(
        "the vault URL {url} is not https; kvvm sends tokens only over https (use https://<vault>.vault.azure.net)"
    )]
    NotHttps {
        /// The vault URL as configured.
        url: String,
    },
    /// The challenge names a resource whose domain the vault host is not in.
    #[error(
        "the vault at '{vault_host}' asked for a token for '{resource}', but '{vault_host}' does not end with \
         '.{resource_host}'; kvvm sent no token. Check the vault URL in observedCertificates (Key Vault hosts \
         look like <name>.vault.azure.net)"
    )]
    ResourceMismatch {
        /// The vault's host name.
        vault_host: String,
        /// The resource the challenge names.
        resource: String,
        /// That resource's host, whose domain the vault host must be in.
        resource_host: String,
    },
    /// A 401 whose challenge kvvm cannot read.
    #[error(
        "the vault at '{vault_host}' answered 401 with a challenge kvvm cannot use ({header}); is this really an \
         Azure Key Vault URL?"
    )]
    BadChallenge {
        /// The vault's host name.
        vault_host: String,
        /// The `WWW-Authenticate` header it sent, or that it sent none.
        header: String,
    },
    /// 403: the identity may not read the secret.
    #[error(
        "access to secret '{secret}' in vault '{vault}' was denied to {identity} (HTTP 403 {code}); grant it the \
         'Key Vault Secrets User' role on the vault (Azure RBAC), or the 'get' secret permission in the vault's \
         access policy"
    )]
    Forbidden {
        /// The vault's name (the first label of its host).
        vault: String,
        /// The secret's (certificate's) name.
        secret: String,
        /// The identity the token is for.
        identity: String,
        /// Key Vault's error code from the body (`innererror.code` preferred), if any.
        code: String,
    },
    /// 404: no such secret (or version).
    #[error(
        "{what} was not found in vault '{vault}' (HTTP 404 {code}); check the certificate name and version in \
         the observedCertificates URL, and that the certificate exists in that vault"
    )]
    NotFound {
        /// The vault's name (the first label of its host).
        vault: String,
        /// The secret's (certificate's) name.
        secret: String,
        /// The secret, or the pinned version of it, that was asked for.
        what: String,
        /// Key Vault's error code from the body (`innererror.code` preferred), if any.
        code: String,
    },
    /// 401 although a freshly fetched token was sent.
    #[error(
        "vault '{vault}' rejected a fresh token of {identity} (HTTP 401: {detail}); check that the vault is in the \
         same Microsoft Entra tenant as the identity"
    )]
    Unauthorized {
        /// The vault's name (the first label of its host).
        vault: String,
        /// The identity the token is for.
        identity: String,
        /// What went wrong, as the lower layer put it.
        detail: String,
    },
    /// Any other refusal.
    #[error(
        "vault '{vault}' refused to return secret '{secret}' (HTTP {status} {code}: {message})"
    )]
    Status {
        /// The vault's name (the first label of its host).
        vault: String,
        /// The secret's (certificate's) name.
        secret: String,
        /// The HTTP status.
        status: u16,
        /// Key Vault's error code from the body (`innererror.code` preferred), if any.
        code: String,
        /// Key Vault's error message from the body.
        message: String,
    },
    /// Every attempt got a transient answer (408, 429, 5xx, broken connection).
    #[error(
        "vault '{vault}' did not return secret '{secret}' after {attempts} attempt(s) over {seconds} s; last: {last}"
    )]
    GaveUp {
        /// The vault's name (the first label of its host).
        vault: String,
        /// The secret's (certificate's) name.
        secret: String,
        /// Attempts made.
        attempts: u32,
        /// Seconds spent on them.
        seconds: u64,
        /// What the last attempt saw (a status or a connection failure).
        last: String,
    },
    /// The check's deadline passed without an answer (every try hung, or the last one did).
    #[error(
        "vault '{vault}' did not answer for secret '{secret}' within {seconds} s ({attempts} attempt(s); last: \
         {last}); check the network path from the VM to the vault: network security groups and firewalls, the \
         vault's private endpoint and its DNS, and HTTPS_PROXY / NO_PROXY if traffic goes through a proxy"
    )]
    Timeout {
        /// The vault's name (the first label of its host).
        vault: String,
        /// The secret's (certificate's) name.
        secret: String,
        /// Attempts made.
        attempts: u32,
        /// Seconds spent on them.
        seconds: u64,
        /// What the last attempt saw (a status or a connection failure).
        last: String,
    },
    /// The vault host name does not resolve.
    #[error(
        "cannot resolve the vault host '{host}' ({detail}); check the vault name in observedCertificates. For a \
         vault behind a private endpoint, the VM's DNS must resolve it to the private address \
         (privatelink.vaultcore.azure.net zone); if the VM reaches the internet through a proxy, set HTTPS_PROXY"
    )]
    Dns {
        /// The vault's host name.
        host: String,
        /// What went wrong, as the lower layer put it.
        detail: String,
    },
    /// No connection to the vault host.
    #[error(
        "cannot connect to the vault host '{host}' ({detail}); check network security groups and firewalls, the \
         vault's network rules and private endpoints, and HTTPS_PROXY / NO_PROXY"
    )]
    Connect {
        /// The vault's host name.
        host: String,
        /// What went wrong, as the lower layer put it.
        detail: String,
    },
    /// The TLS handshake failed.
    #[error(
        "TLS with the vault host '{host}' failed ({detail}); kvvm trusts the operating system's certificate store \
         ({store}): if a proxy inspects TLS, add its CA there (the next check reads the store again)",
        store = crate::platform::paths::TRUST_STORE
    )]
    Tls {
        /// The vault's host name.
        host: String,
        /// What went wrong, as the lower layer put it.
        detail: String,
    },
    /// A 200 answer that is not a secret bundle.
    #[error("vault '{vault}' returned an unusable answer for secret '{secret}': {detail}")]
    BadBundle {
        /// The vault's name (the first label of its host).
        vault: String,
        /// The secret's (certificate's) name.
        secret: String,
        /// What went wrong, as the lower layer put it.
        detail: String,
    },
    /// No token.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The client could not be set up (no trust store).
    #[error(transparent)]
    Http(#[from] http::HttpError),
    /// The worker is stopping.
    #[error("stopped while reading from the vault")]
    Cancelled,
}

impl VaultError {
    /// A short fixed reason for the status file.
    pub fn reason(&self) -> &'static str {
        match self {
            VaultError::NotHttps { .. } => "vault-not-https",
            VaultError::ResourceMismatch { .. } => "vault-resource-mismatch",
            VaultError::BadChallenge { .. } => "vault-bad-challenge",
            VaultError::Forbidden { .. } => "vault-forbidden",
            VaultError::NotFound { .. } => "secret-not-found",
            VaultError::Unauthorized { .. } => "vault-unauthorized",
            VaultError::Status { .. } => "vault-refused",
            VaultError::GaveUp { .. } => "vault-unavailable",
            VaultError::Timeout { .. } => "vault-timeout",
            VaultError::Dns { .. } => "vault-dns",
            VaultError::Connect { .. } => "vault-connect",
            VaultError::Tls { .. } => "vault-tls",
            VaultError::BadBundle { .. } => "vault-bad-bundle",
            VaultError::Identity(e) => e.reason(),
            VaultError::Http(e) => e.reason(),
            VaultError::Cancelled => "cancelled",
        }
    }
}

/// What a secret holds, from its content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// A certificate as base64 PFX (`application/x-pkcs12`).
    Pkcs12,
    /// A certificate as PEM (`application/x-pem-file`).
    Pem,
    /// Anything else: a plain secret, which kvvm ignores.
    NotACertificate,
}

/// A secret as Key Vault returns it. The value is wiped from memory when dropped and never shown by `Debug`.
pub struct SecretBundle {
    /// `https://<vault>/secrets/<name>/<version>`.
    pub(crate) id: String,
    /// The version, in lower case.
    pub version: Version,
    value: Zeroizing<String>,
    /// `contentType`, if any.
    pub(crate) content_type: Option<String>,
    /// Whether Key Vault manages it for a certificate.
    pub managed: bool,
    /// `attributes.exp` (Unix seconds).
    pub expires: Option<i64>,
}

impl std::fmt::Debug for SecretBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBundle")
            .field("id", &self.id)
            .field("content_type", &self.content_type)
            .field("managed", &self.managed)
            .field("value", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl SecretBundle {
    /// The secret's value (base64 PFX or PEM text for certificates).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// What the value holds.
    pub fn kind(&self) -> SecretKind {
        let ct = self
            .content_type
            .as_deref()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match ct.as_str() {
            "application/x-pkcs12" => SecretKind::Pkcs12,
            "application/x-pem-file" => SecretKind::Pem,
            _ => SecretKind::NotACertificate,
        }
    }
}

/// What a vault's challenge asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The resource to get a token for, e.g. `https://vault.azure.net`.
    pub resource: String,
    /// Its host, e.g. `vault.azure.net`.
    pub resource_host: String,
}

/// Parses a `WWW-Authenticate: Bearer …` challenge: `resource=` or `scope=` (`…/.default`), quoted or not.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut resource = None;
    let mut scope = None;
    for part in split_params(params) {
        let Some((name, value)) = part.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value)
            .to_string();
        match name.trim().to_ascii_lowercase().as_str() {
            "resource" => resource = Some(value),
            "scope" => scope = Some(value),
            _ => {}
        }
    }
    let resource = resource.or_else(|| {
        scope.map(|s| {
            s.split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches("/.default")
                .to_string()
        })
    })?;
    let resource = resource.trim_end_matches('/').to_string();
    let url = Url::parse(&resource).ok()?;
    let resource_host = url.host_str()?.to_ascii_lowercase();
    Some(Challenge {
        resource,
        resource_host,
    })
}

/// Splits challenge parameters on commas outside quotes.
fn split_params(params: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in params.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&params[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&params[start..]);
    parts
}

/// Whether a token for `challenge` may be sent to `vault_host` (the SDKs' rule).
pub fn token_allowed(vault_host: &str, challenge: &Challenge) -> bool {
    let host = vault_host.to_ascii_lowercase();
    host.ends_with(&format!(".{}", challenge.resource_host))
}

/// The Key Vault client of one worker, shared by its threads.
pub struct VaultClient {
    /// Replaced by [`VaultClient::release_connections`]; requests clone it (an `Arc` inside).
    agent: Mutex<ureq::Agent>,
    identity: Arc<Identity>,
    policy: RetryPolicy,
    challenges: Mutex<HashMap<String, Challenge>>,
    /// Per vault host: no request before this instant (the vault's `Retry-After`).
    held_until: Mutex<HashMap<String, Instant>>,
    /// Requests sent, per (vault host, HTTP status or failure kind), for the metrics.
    requests: Mutex<std::collections::BTreeMap<(String, String), u64>>,
    /// A TLS handshake failed: the next request first reads the trust store again (a CA may have been added,
    /// a proxy's CA installed), rather than wait for a restart.
    reread_roots: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// What a retryable attempt saw.
struct Transient {
    last: String,
    failure: Option<http::Failure>,
}

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.last)
    }
}

/// One `get_secret` call: what it asks for and what it has learnt so far.
struct SecretRequest<'a> {
    host: String,
    vault: String,
    name: &'a str,
    version: Option<&'a Version>,
    url: String,
    token: Option<AccessToken>,
    refreshed: bool,
}

impl VaultClient {
    /// Closes the idle connections (and forgets their TLS sessions) by starting a fresh connection pool: the
    /// worker calls it before a wait longer than servers keep idle connections open, so it does not hold dead
    /// connections and their buffers for an hour.
    pub fn release_connections(&self) {
        match http::agent(Route::Environment, &self.policy) {
            Ok(fresh) => *self.agent.lock().unwrap_or_else(|e| e.into_inner()) = fresh,
            Err(e) => log::warn!("keeping the idle vault connections: {e}"),
        }
    }

    /// A client whose tokens come from `identity`, with [`RetryPolicy::VAULT`].
    pub fn new(identity: Arc<Identity>) -> Result<VaultClient, http::HttpError> {
        VaultClient::with_policy(identity, RetryPolicy::VAULT)
    }

    fn agent(&self) -> ureq::Agent {
        self.agent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A client with its own retry policy.
    pub fn with_policy(
        identity: Arc<Identity>,
        policy: RetryPolicy,
    ) -> Result<VaultClient, http::HttpError> {
        Ok(VaultClient {
            agent: Mutex::new(http::agent(Route::Environment, &policy)?),
            identity,
            policy,
            challenges: Mutex::new(HashMap::new()),
            held_until: Mutex::new(HashMap::new()),
            requests: Mutex::default(),
            reread_roots: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The identity tokens come from.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Reads secret `name` from the vault at `vault_url`: its latest version, or `version` if pinned.
    ///
    /// The whole check, the token it may need included, ends by `deadline` (normally
    /// [`http::CHECK_DEADLINE`] from now): each try gets the policy's per-try limit or what is left, whichever
    /// is less, and no wait runs past it. A check the deadline cuts off fails with [`VaultError::Timeout`].
    pub fn get_secret(
        &self,
        vault_url: &Url,
        name: &str,
        version: Option<&Version>,
        deadline: Deadline,
        stop: &Stop,
    ) -> Result<SecretBundle, VaultError> {
        if vault_url.scheme() != "https" {
            return Err(VaultError::NotHttps {
                url: vault_url.to_string(),
            });
        }
        let host = vault_url
            .host_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let vault = host.split('.').next().unwrap_or(&host).to_string();
        let origin = match vault_url.port() {
            Some(port) => format!("https://{host}:{port}"),
            None => format!("https://{host}"),
        };
        let url = format!(
            "{origin}/secrets/{name}/{}?api-version={API_VERSION}",
            version.map_or("", Version::as_str)
        );
        let mut req = SecretRequest {
            host,
            vault,
            name,
            version,
            url,
            token: None,
            refreshed: false,
        };
        if self
            .reread_roots
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            self.release_connections();
        }
        let what = format!("vault {}, secret {name}", req.vault);
        let ended = http::retry(&what, &self.policy, deadline, stop, |attempt| {
            self.attempt(&mut req, attempt, stop)
        });
        let (host, vault, secret) = (req.host, req.vault, name.to_string());
        ended.map_err(|ended| match ended {
            Ended::Failed(e) => e,
            Ended::Stopped => VaultError::Cancelled,
            Ended::TimedOut {
                attempts,
                elapsed,
                last,
            } => match last {
                // An error answer, or a name or connection failure, says more than "no answer in time".
                Some(last)
                    if last
                        .failure
                        .as_ref()
                        .is_none_or(|f| f.kind != FailureKind::Timeout) =>
                {
                    gave_up(host, vault, secret, attempts, elapsed, last)
                }
                last => VaultError::Timeout {
                    vault,
                    secret,
                    attempts,
                    seconds: deadline.seconds(),
                    last: last.map_or_else(|| "no answer".to_string(), |t| t.last),
                },
            },
            Ended::GaveUp {
                attempts,
                elapsed,
                last,
            } => gave_up(host, vault, secret, attempts, elapsed, last),
        })
    }

    /// One try, classified with Key Vault's code set: 401 is the challenge (answered at once, and a rejected
    /// token is refreshed once), 403 and 404 are final with a hint, 408, 429, 5xx and connection failures are
    /// retried, TLS failures are final.
    fn attempt(
        &self,
        req: &mut SecretRequest<'_>,
        attempt: &Attempt,
        stop: &Stop,
    ) -> Verdict<SecretBundle, VaultError, Transient> {
        if let Err(e) = self.wait_out_hold(req, attempt, stop) {
            return Verdict::Fail(e);
        }
        let challenge = self.challenge(req.host.as_str());
        if let Err(e) = self.authorize(req, challenge.as_ref(), attempt, stop) {
            return Verdict::Fail(e);
        }
        match self.send(req, attempt) {
            Ok(reply) => self.judge(req, challenge.as_ref(), &reply),
            Err(verdict) => verdict,
        }
    }

    /// Waits out a `Retry-After` the vault gave for its host, or fails when it reaches past the deadline.
    fn wait_out_hold(
        &self,
        req: &SecretRequest<'_>,
        attempt: &Attempt,
        stop: &Stop,
    ) -> Result<(), VaultError> {
        let held = self.held_for(req.host.as_str());
        if held.is_zero() {
            return Ok(());
        }
        if held >= attempt.deadline().left() {
            return Err(VaultError::GaveUp {
                vault: req.vault.clone(),
                secret: req.name.to_string(),
                attempts: attempt.number() - 1,
                seconds: attempt.elapsed().as_secs(),
                last: format!(
                    "the vault asked for no requests during the next {} s (Retry-After), past this \
                     check's deadline",
                    held.as_secs_f64().ceil()
                ),
            });
        }
        if !stop.pause(held) {
            return Err(VaultError::Cancelled);
        }
        Ok(())
    }

    /// Gets a token for the host's challenge when the request has none, if the challenge's resource may have
    /// one; without a challenge yet, the request goes without (and the vault answers with one).
    fn authorize(
        &self,
        req: &mut SecretRequest<'_>,
        challenge: Option<&Challenge>,
        attempt: &Attempt,
        stop: &Stop,
    ) -> Result<(), VaultError> {
        let Some(ch) = challenge else {
            return Ok(());
        };
        if req.token.is_some() {
            return Ok(());
        }
        let host = req.host.as_str();
        if !token_allowed(host, ch) {
            return Err(VaultError::ResourceMismatch {
                vault_host: host.to_string(),
                resource: ch.resource.clone(),
                resource_host: ch.resource_host.clone(),
            });
        }
        req.token = Some(
            self.identity
                .token(&ch.resource, attempt.deadline(), stop)?,
        );
        Ok(())
    }

    /// Sends the request (with its token, if it has one) and counts the answer; a failure to get one is a
    /// verdict already: TLS and oversized answers fail, the rest is retried.
    fn send(
        &self,
        req: &SecretRequest<'_>,
        attempt: &Attempt,
    ) -> Result<http::Reply, Verdict<SecretBundle, VaultError, Transient>> {
        let host = req.host.as_str();
        let bearer = req
            .token
            .as_ref()
            .map(|t| Zeroizing::new(format!("Bearer {}", t.secret())));
        let mut headers = Vec::new();
        if let Some(b) = &bearer {
            headers.push(("Authorization", b.as_str()));
        }
        let reply = http::get(&self.agent(), &req.url, &headers, attempt.timeout());
        self.count(host, &reply);
        reply.map_err(|f| match f.kind {
            FailureKind::Tls => {
                self.reread_roots
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Verdict::Fail(VaultError::Tls {
                    host: host.to_string(),
                    detail: f.detail,
                })
            }
            FailureKind::TooLarge => Verdict::Fail(VaultError::BadBundle {
                vault: req.vault.clone(),
                secret: req.name.to_string(),
                detail: format!("the answer is larger than {} bytes", http::BODY_LIMIT),
            }),
            _ => Verdict::Retry {
                last: Transient {
                    last: f.detail.clone(),
                    failure: Some(f),
                },
                retry_after: None,
            },
        })
    }

    /// What the vault's answer means: the status table.
    fn judge(
        &self,
        req: &mut SecretRequest<'_>,
        challenge: Option<&Challenge>,
        reply: &http::Reply,
    ) -> Verdict<SecretBundle, VaultError, Transient> {
        let (vault, name) = (req.vault.clone(), req.name.to_string());
        match reply.status {
            200 => match parse_bundle(&reply.body, &vault, &name) {
                Ok(bundle) => Verdict::Done(bundle),
                Err(e) => Verdict::Fail(e),
            },
            401 => self.unauthorized(req, challenge, reply),
            403 => Verdict::Fail(VaultError::Forbidden {
                vault,
                secret: name,
                identity: self.identity.describe(),
                code: kv_error(&reply.body).0,
            }),
            404 => {
                let what = match req.version {
                    Some(v) => format!("version {v} of secret '{name}'"),
                    None => format!("secret '{name}'"),
                };
                Verdict::Fail(VaultError::NotFound {
                    vault,
                    secret: name,
                    what,
                    code: kv_error(&reply.body).0,
                })
            }
            408 | 429 | 500..=599 => {
                if let Some(after) = reply.retry_after {
                    self.hold_for(req.host.as_str(), after);
                }
                let (code, message) = kv_error(&reply.body);
                Verdict::Retry {
                    last: Transient {
                        last: format!("HTTP {} {code}: {message}", reply.status),
                        failure: None,
                    },
                    retry_after: reply.retry_after,
                }
            }
            status => {
                let (code, message) = kv_error(&reply.body);
                Verdict::Fail(VaultError::Status {
                    vault,
                    secret: name,
                    status,
                    code,
                    message,
                })
            }
        }
    }

    /// A 401: learn the challenge it carries and ask again, once more with a fresh token if the one sent was
    /// refused; a second refusal fails.
    fn unauthorized(
        &self,
        req: &mut SecretRequest<'_>,
        challenge: Option<&Challenge>,
        reply: &http::Reply,
    ) -> Verdict<SecretBundle, VaultError, Transient> {
        let host = req.host.as_str();
        let header = reply.www_authenticate.clone().unwrap_or_default();
        match parse_challenge(&header) {
            Some(ch) => {
                self.challenges
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(host.to_string(), ch);
            }
            None if challenge.is_none() => {
                return Verdict::Fail(VaultError::BadChallenge {
                    vault_host: host.to_string(),
                    header: if header.is_empty() {
                        "no WWW-Authenticate header".to_string()
                    } else {
                        format!("WWW-Authenticate: {header}")
                    },
                });
            }
            None => {}
        }
        if req.token.take().is_some() {
            if req.refreshed {
                return Verdict::Fail(VaultError::Unauthorized {
                    vault: req.vault.clone(),
                    identity: self.identity.describe(),
                    detail: kv_error(&reply.body).1,
                });
            }
            // The token may have been revoked or issued for another tenant: drop it and try once more with a
            // fresh one.
            if let Some(ch) = challenge {
                self.identity.forget(&ch.resource);
            }
            req.refreshed = true;
        }
        Verdict::Again
    }

    /// Requests sent so far: (vault host, HTTP status code or failure kind such as `connect`, count).
    pub fn request_counts(&self) -> Vec<(String, String, u64)> {
        let counts = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .map(|((host, code), n)| (host.clone(), code.clone(), *n))
            .collect()
    }

    fn count(&self, host: &str, reply: &Result<http::Reply, http::Failure>) {
        let code = match reply {
            Ok(r) => r.status.to_string(),
            Err(f) => f.kind.code().to_string(),
        };
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((host.to_string(), code))
            .or_default() += 1;
    }

    fn challenge(&self, host: &str) -> Option<Challenge> {
        self.challenges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .cloned()
    }

    /// Records that `host` asked for no requests during `after`.
    fn hold_for(&self, host: &str, after: Duration) {
        let until = Instant::now() + after;
        let mut held = self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        let entry = held.entry(host.to_string()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }

    /// How long requests to `host` are still held back by its `Retry-After`.
    pub fn held_for(&self, host: &str) -> Duration {
        let held = self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&host.to_ascii_lowercase())
            .map(|until| until.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }
}

/// The error for a check whose retries all failed: a name or connection failure says so, anything else
/// gives the last answer.
fn gave_up(
    host: String,
    vault: String,
    secret: String,
    attempts: u32,
    elapsed: Duration,
    last: Transient,
) -> VaultError {
    match last.failure {
        Some(f) if f.kind == FailureKind::Dns => VaultError::Dns {
            host,
            detail: f.detail,
        },
        Some(f) if f.kind == FailureKind::Connect => VaultError::Connect {
            host,
            detail: f.detail,
        },
        _ => VaultError::GaveUp {
            vault,
            secret,
            attempts,
            seconds: elapsed.as_secs(),
            last: last.last,
        },
    }
}

/// `(code, message)` of a Key Vault error body (`innererror.code` preferred, as it is the precise one).
pub fn kv_error(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let err = &v["error"];
    let code = err["innererror"]["code"]
        .as_str()
        .or_else(|| err["code"].as_str())
        .unwrap_or("")
        .to_string();
    let message = err["message"]
        .as_str()
        .map(|m| m.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            text.chars()
                .take(200)
                .collect::<String>()
                .trim()
                .to_string()
        });
    (code, message)
}

/// Reads Key Vault's answer to a secret GET (a secret bundle), for vault `vault` and secret `name`.
pub fn parse_bundle(body: &[u8], vault: &str, name: &str) -> Result<SecretBundle, VaultError> {
    let bad = |detail: String| VaultError::BadBundle {
        vault: vault.to_string(),
        secret: name.to_string(),
        detail,
    };
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("not JSON ({e})")))?;
    let id = v["id"]
        .as_str()
        .ok_or_else(|| bad("no 'id'".to_string()))?
        .to_string();
    let last = id.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let Some(version) = Version::parse(&last.to_ascii_lowercase()) else {
        return Err(bad(format!(
            "its id '{id}' does not end in a 32-hex-digit version"
        )));
    };
    let value = v["value"]
        .as_str()
        .ok_or_else(|| bad("no 'value' (is the secret disabled?)".to_string()))?;
    let attributes = &v["attributes"];
    Ok(SecretBundle {
        id: id.clone(),
        version,
        value: Zeroizing::new(value.to_string()),
        content_type: v["contentType"].as_str().map(str::to_string),
        managed: v["managed"].as_bool().unwrap_or(false),
        expires: attributes["exp"].as_i64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_in_every_form() {
        let kv = Some(Challenge {
            resource: "https://vault.azure.net".into(),
            resource_host: "vault.azure.net".into(),
        });
        for header in [
            r#"Bearer authorization="https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47", resource="https://vault.azure.net""#,
            r#"Bearer authorization=https://login.microsoftonline.com/t, resource=https://vault.azure.net"#,
            r#"Bearer authorization="https://login.microsoftonline.com/t", scope="https://vault.azure.net/.default""#,
            r#"bearer scope=https://vault.azure.net/.default,authorization_uri="https://x/y""#,
            r#"Bearer resource="https://vault.azure.net/""#,
        ] {
            assert_eq!(parse_challenge(header), kv, "{header}");
        }
        let cn = parse_challenge(r#"Bearer authorization="https://login.chinacloudapi.cn/t", resource="https://vault.azure.cn""#).unwrap();
        assert_eq!(cn.resource_host, "vault.azure.cn");
        assert_eq!(parse_challenge("Basic realm=x"), None);
        assert_eq!(parse_challenge("Bearer authorization=\"x\""), None);
        assert_eq!(parse_challenge("Bearer resource=\"not a url\""), None);
    }

    #[test]
    fn token_only_inside_the_resource_domain() {
        let ch = parse_challenge("Bearer resource=\"https://vault.azure.net\"").unwrap();
        assert!(token_allowed("myvault.vault.azure.net", &ch));
        assert!(token_allowed("MyVault.Vault.Azure.Net", &ch));
        assert!(!token_allowed("vault.azure.net", &ch));
        assert!(!token_allowed("vault.azure.net.evil.com", &ch));
        assert!(!token_allowed("myvaultvault.azure.net", &ch));
        assert!(!token_allowed("vault.evil.com", &ch));
    }

    #[test]
    fn kinds_from_content_type() {
        let bundle = |ct: Option<&str>| SecretBundle {
            id: String::new(),
            version: Version::parse(&"0".repeat(32)).unwrap(),
            value: Zeroizing::new(String::new()),
            content_type: ct.map(str::to_string),
            managed: true,
            expires: None,
        };
        assert_eq!(
            bundle(Some("application/x-pkcs12")).kind(),
            SecretKind::Pkcs12
        );
        assert_eq!(
            bundle(Some("Application/X-PEM-File; charset=utf-8")).kind(),
            SecretKind::Pem
        );
        assert_eq!(
            bundle(Some("text/plain")).kind(),
            SecretKind::NotACertificate
        );
        assert_eq!(bundle(None).kind(), SecretKind::NotACertificate);
        assert!(!format!("{:?}", bundle(None)).contains("value: \"\""));
    }

    #[test]
    fn bundles_are_checked() {
        let ok = br#"{"value":"abc","contentType":"application/x-pem-file","id":"https://v.vault.azure.net/secrets/c/0123456789abcdef0123456789ABCDEF","managed":true,"attributes":{"enabled":true,"exp":1900000000}}"#;
        let b = parse_bundle(ok, "v", "c").unwrap();
        assert_eq!(b.version, "0123456789abcdef0123456789abcdef");
        assert_eq!(b.value(), "abc");
        assert_eq!(b.expires, Some(1_900_000_000));
        let e = parse_bundle(
            br#"{"value":"x","id":"https://v.vault.azure.net/secrets/c/../../etc"}"#,
            "v",
            "c",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "vault 'v' returned an unusable answer for secret 'c': its id 'https://v.vault.azure.net/secrets/c/../../etc' does not end in a 32-hex-digit version"
        );
        let e = parse_bundle(b"<html>", "v", "c").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("vault 'v' returned an unusable answer for secret 'c': not JSON")
        );
    }

    #[test]
    fn error_bodies() {
        let body = br#"{"error":{"code":"Forbidden","message":"Caller is not authorized.\r\nMore","innererror":{"code":"ForbiddenByRbac"}}}"#;
        assert_eq!(
            kv_error(body),
            (
                "ForbiddenByRbac".to_string(),
                "Caller is not authorized.".to_string()
            )
        );
        assert_eq!(kv_error(b""), (String::new(), String::new()));
    }
}
