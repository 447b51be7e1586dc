//! Managed-identity tokens, from the VM's Instance Metadata Service or from an Azure Arc machine's himds.
//!
//! Tokens are cached per resource and reused until five minutes before they expire, so a steady worker asks
//! IMDS nothing at all between refreshes. IMDS is never reached through a proxy. The Arc flow reads a secret
//! key file that himds names in its challenge; kvvm only reads it from the directory the Arc agent owns.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use url::Url;
use zeroize::Zeroizing;

use crate::http::{self, FailureKind, RetryPolicy, Route, Stop};

/// Where IMDS serves tokens on every Azure VM.
pub const IMDS_TOKEN_URL: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// The folder where the Azure Arc agent writes the key files its challenge names.
pub const ARC_KEY_DIR: &str = "/var/opt/azcmagent/tokens";
/// himds listens on this port on Azure Arc machines.
pub const ARC_PORT: u16 = 40342;
/// Largest Arc key file kvvm reads (the agent writes a few dozen bytes).
pub const ARC_KEY_MAX: u64 = 4096;
const IMDS_API_VERSION: &str = "2018-02-01";
const ARC_API_VERSION: &str = "2020-06-01";
/// A cached token is refreshed once less than this remains.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// A bearer token. Its `Debug` never shows the secret, and the memory is wiped when dropped.
#[derive(Clone)]
pub struct AccessToken {
    secret: Zeroizing<String>,
    expires_on: SystemTime,
}

impl AccessToken {
    /// The token itself, for an `Authorization` header and nothing else.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// When the token expires.
    pub fn expires_on(&self) -> SystemTime {
        self.expires_on
    }

    fn fresh(&self, now: SystemTime) -> bool {
        self.expires_on
            .duration_since(now)
            .is_ok_and(|left| left > REFRESH_BEFORE)
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// IMDS answered 400: the identity does not exist on this machine.
    #[error(
        "the managed identity endpoint {endpoint} refused a token for {identity} (HTTP 400: {detail}): the \
         identity is missing or not assigned to this VM. Assign a system-assigned identity to the VM or scale \
         set, or assign the user-assigned identity and set msiClientId to its client id"
    )]
    NotAssigned {
        endpoint: String,
        identity: String,
        detail: String,
    },
    /// The endpoint refused for a reason retrying cannot fix.
    #[error(
        "the managed identity endpoint {endpoint} refused a token for {identity} (HTTP {status}: {detail})"
    )]
    Refused {
        endpoint: String,
        identity: String,
        status: u16,
        detail: String,
    },
    /// Every attempt failed with a transient error.
    #[error(
        "the managed identity endpoint {endpoint} gave no token after {attempts} attempt(s) over {seconds} s; \
         last: {last}. {hint}"
    )]
    GaveUp {
        endpoint: String,
        attempts: u32,
        seconds: u64,
        last: String,
        hint: &'static str,
    },
    /// A 200 answer that is not a token.
    #[error(
        "the managed identity endpoint {endpoint} answered 200 without a usable token: {detail}"
    )]
    BadToken { endpoint: String, detail: String },
    /// himds challenged without naming a key file.
    #[error(
        "the Azure Arc identity endpoint {endpoint} answered 401 without a 'Basic realm=<key file>' challenge \
         ({header}); is msiEndpoint really the Arc agent's (http://localhost:40342/metadata/identity)?"
    )]
    ArcChallenge { endpoint: String, header: String },
    /// himds named a key file kvvm will not read.
    #[error(
        "the Azure Arc identity endpoint named the key file '{path}', which kvvm will not read: {problem}. Only \
         a '.key' file directly in {dir}, at most 4096 bytes, is accepted; check that msiEndpoint points at the \
         local Arc agent"
    )]
    ArcKeyPath {
        path: String,
        dir: String,
        problem: String,
    },
    /// The Arc key file could not be read.
    #[error(
        "cannot read the Azure Arc key file '{path}': {source}; kvvm must run as root to read the Arc agent's keys"
    )]
    ArcKeyRead {
        path: String,
        source: std::io::Error,
    },
    /// Arc machines have no user-assigned identities.
    #[error(
        "msiClientId is '{client_id}', but the Azure Arc identity endpoint {endpoint} serves only the machine's \
         own (system-assigned) identity; remove msiClientId from the settings"
    )]
    ArcUserAssigned { client_id: String, endpoint: String },
    /// The worker is stopping.
    #[error("stopped while waiting for a managed identity token")]
    Cancelled,
}

impl IdentityError {
    /// A short fixed reason for the status file.
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityError::NotAssigned { .. } => "identity-not-assigned",
            IdentityError::Refused { .. } => "identity-refused",
            IdentityError::GaveUp { .. } => "identity-unavailable",
            IdentityError::BadToken { .. } => "identity-bad-token",
            IdentityError::ArcChallenge { .. } => "arc-challenge",
            IdentityError::ArcKeyPath { .. } => "arc-key-path",
            IdentityError::ArcKeyRead { .. } => "arc-key-read",
            IdentityError::ArcUserAssigned { .. } => "arc-user-assigned",
            IdentityError::Cancelled => "cancelled",
        }
    }
}

/// The machine's managed identity: one per worker, shared by its threads.
pub struct Identity {
    token_url: Url,
    arc: bool,
    client_id: Option<String>,
    arc_key_dir: PathBuf,
    agent: ureq::Agent,
    policy: RetryPolicy,
    cache: Mutex<HashMap<String, AccessToken>>,
    /// Held while a token is being fetched, so threads that need one at the same time ask IMDS once.
    fetching: Mutex<()>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The identity behind `msiEndpoint` (default: IMDS) and `msiClientId` (default: system-assigned).
    ///
    /// `msiEndpoint` may name the identity root (`…/metadata/identity`) or the token path
    /// (`…/metadata/identity/oauth2/token`); both appear in Microsoft's documentation. An endpoint on port
    /// 40342 is Azure Arc's himds.
    pub fn new(endpoint: Option<&Url>, client_id: Option<&str>) -> Result<Identity, IdentityError> {
        let mut token_url = match endpoint {
            Some(url) => url.clone(),
            None => Url::parse(IMDS_TOKEN_URL).expect("constant URL"),
        };
        let path = token_url.path().trim_end_matches('/').to_string();
        if path.ends_with("/metadata/identity") || path.is_empty() {
            let base = if path.is_empty() {
                "/metadata/identity".to_string()
            } else {
                path
            };
            token_url.set_path(&format!("{base}/oauth2/token"));
        }
        token_url.set_query(None);
        token_url.set_fragment(None);
        let arc = token_url.port_or_known_default() == Some(ARC_PORT);
        if arc && let Some(id) = client_id {
            return Err(IdentityError::ArcUserAssigned {
                client_id: id.to_string(),
                endpoint: token_url.to_string(),
            });
        }
        let policy = RetryPolicy::IDENTITY;
        let agent =
            http::agent(route_for(&token_url), &policy).expect("direct agents need no roots");
        Ok(Identity {
            token_url,
            arc,
            client_id: client_id.map(str::to_string),
            arc_key_dir: PathBuf::from(ARC_KEY_DIR),
            agent,
            policy,
            cache: Mutex::new(HashMap::new()),
            fetching: Mutex::new(()),
        })
    }

    /// Where Azure Arc key files are accepted from (default [`ARC_KEY_DIR`]).
    pub fn with_arc_key_dir(mut self, dir: impl Into<PathBuf>) -> Identity {
        self.arc_key_dir = dir.into();
        self
    }

    /// Replaces the retry policy (default [`RetryPolicy::IDENTITY`]).
    pub fn with_policy(mut self, policy: RetryPolicy) -> Identity {
        self.agent =
            http::agent(route_for(&self.token_url), &policy).expect("direct agents need no roots");
        self.policy = policy;
        self
    }

    /// The token URL requests go to (without query).
    pub fn token_url(&self) -> &Url {
        &self.token_url
    }

    /// Which identity this is, in words, for messages.
    pub fn describe(&self) -> String {
        match &self.client_id {
            Some(id) => format!("the user-assigned identity with client id {id} (msiClientId)"),
            None => "the system-assigned identity".to_string(),
        }
    }

    /// A token for `resource` (e.g. `https://vault.azure.net`), from the cache while it has more than five
    /// minutes left.
    pub fn token(&self, resource: &str, stop: &Stop) -> Result<AccessToken, IdentityError> {
        let key = resource.trim_end_matches('/').to_string();
        if let Some(t) = self.cached(&key) {
            return Ok(t);
        }
        let _one_at_a_time = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = self.cached(&key) {
            return Ok(t);
        }
        let token = self.fetch(&key, stop)?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, token.clone());
        Ok(token)
    }

    /// Drops the cached token for `resource` (the vault rejected it).
    pub fn forget(&self, resource: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(resource.trim_end_matches('/'));
    }

    fn cached(&self, key: &str) -> Option<AccessToken> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|t| t.fresh(SystemTime::now()))
            .cloned()
    }

    fn request_url(&self, resource: &str) -> String {
        let mut url = self.token_url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair(
                "api-version",
                if self.arc {
                    ARC_API_VERSION
                } else {
                    IMDS_API_VERSION
                },
            );
            q.append_pair("resource", resource);
            if let Some(id) = &self.client_id {
                q.append_pair("client_id", id);
            }
        }
        url.into()
    }

    fn fetch(&self, resource: &str, stop: &Stop) -> Result<AccessToken, IdentityError> {
        let url = self.request_url(resource);
        let endpoint = self.token_url.to_string();
        let started = Instant::now();
        let mut attempts = 0u32;
        let mut basic: Option<Zeroizing<String>> = None;
        loop {
            attempts += 1;
            let mut headers = vec![("Metadata", "true")];
            if let Some(b) = &basic {
                headers.push(("Authorization", b.as_str()));
            }
            let (last, retry_after) = match http::get(&self.agent, &url, &headers) {
                Ok(reply) => match reply.status {
                    200 => return parse_token(&reply.body, &endpoint),
                    401 if basic.is_none() => {
                        let key = self.arc_key(reply.www_authenticate.as_deref(), &endpoint)?;
                        basic = Some(Zeroizing::new(format!("Basic {}", key.as_str())));
                        // The challenge is part of the protocol, not a failure: ask again at once.
                        continue;
                    }
                    400 => {
                        return Err(IdentityError::NotAssigned {
                            endpoint,
                            identity: self.describe(),
                            detail: error_detail(&reply.body),
                        });
                    }
                    404 | 410 | 429 | 500..=599 => (
                        format!("HTTP {} ({})", reply.status, error_detail(&reply.body)),
                        reply.retry_after,
                    ),
                    status => {
                        return Err(IdentityError::Refused {
                            endpoint,
                            identity: self.describe(),
                            status,
                            detail: error_detail(&reply.body),
                        });
                    }
                },
                Err(f) if f.kind.is_transient() => (describe_failure(&f), None),
                Err(f) => {
                    return Err(IdentityError::GaveUp {
                        endpoint,
                        attempts,
                        seconds: started.elapsed().as_secs(),
                        last: describe_failure(&f),
                        hint: self.hint(),
                    });
                }
            };
            let wait = self.policy.wait(attempts, retry_after);
            if !self.policy.allows(attempts, started, wait) {
                return Err(IdentityError::GaveUp {
                    endpoint,
                    attempts,
                    seconds: started.elapsed().as_secs(),
                    last,
                    hint: self.hint(),
                });
            }
            log::debug!("managed identity endpoint: {last}; retrying in {wait:?}");
            if !stop.pause(wait) {
                return Err(IdentityError::Cancelled);
            }
        }
    }

    fn hint(&self) -> &'static str {
        if self.arc {
            "Check that the Azure Connected Machine agent (himds) is running: azcmagent show"
        } else {
            "IMDS answers only inside an Azure VM, at 169.254.169.254 without a proxy; on an Azure Arc machine \
             set msiEndpoint to http://localhost:40342/metadata/identity"
        }
    }

    /// Reads the key file an Arc challenge names, refusing anything outside the Arc agent's key folder.
    fn arc_key(
        &self,
        header: Option<&str>,
        endpoint: &str,
    ) -> Result<Zeroizing<String>, IdentityError> {
        let realm = header
            .and_then(basic_realm)
            .ok_or_else(|| IdentityError::ArcChallenge {
                endpoint: endpoint.to_string(),
                header: match header {
                    Some(h) => format!("WWW-Authenticate: {h}"),
                    None => "no WWW-Authenticate header".to_string(),
                },
            })?;
        read_arc_key(Path::new(&realm), &self.arc_key_dir)
    }
}

/// The `realm` of a `Basic realm=<path>` challenge (quoted or not).
fn basic_realm(header: &str) -> Option<String> {
    let (scheme, rest) = header.trim().split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let (name, value) = rest.trim().split_once('=')?;
    if !name.trim().eq_ignore_ascii_case("realm") {
        return None;
    }
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    (!value.is_empty()).then(|| value.to_string())
}

/// Reads an Arc key file: a regular `.key` file directly in `dir`, not a symlink, at most [`ARC_KEY_MAX`] bytes.
pub fn read_arc_key(path: &Path, dir: &Path) -> Result<Zeroizing<String>, IdentityError> {
    let refuse = |problem: &str| IdentityError::ArcKeyPath {
        path: path.display().to_string(),
        dir: dir.display().to_string(),
        problem: problem.to_string(),
    };
    if !path.is_absolute() {
        return Err(refuse("it is not an absolute path"));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(refuse("it contains '.' or '..'"));
    }
    if path.extension().is_none_or(|e| e != "key") {
        return Err(refuse("its name does not end in '.key'"));
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    let same_dir = match (parent.canonicalize(), dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same_dir {
        return Err(refuse("it is not directly in the Arc agent's key folder"));
    }
    let read_error = |source| IdentityError::ArcKeyRead {
        path: path.display().to_string(),
        source,
    };
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                refuse("it is a symbolic link")
            } else {
                read_error(e)
            }
        })?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    if meta.len() > ARC_KEY_MAX {
        return Err(refuse(&format!("it is {} bytes long", meta.len())));
    }
    let mut contents = Zeroizing::new(String::new());
    file.take(ARC_KEY_MAX + 1)
        .read_to_string(&mut contents)
        .map_err(read_error)?;
    if contents.len() as u64 > ARC_KEY_MAX {
        return Err(refuse("it grew past 4096 bytes while being read"));
    }
    Ok(contents)
}

fn parse_token(body: &[u8], endpoint: &str) -> Result<AccessToken, IdentityError> {
    let bad = |detail: &str| IdentityError::BadToken {
        endpoint: endpoint.to_string(),
        detail: detail.to_string(),
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| bad("the body is not JSON"))?;
    let secret = value
        .get("access_token")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("no access_token"))?;
    let number = |key: &str| {
        value.get(key).and_then(|v| match v {
            serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
            serde_json::Value::Number(n) => n.as_u64(),
            _ => None,
        })
    };
    let now = SystemTime::now();
    let expires_on = match (number("expires_on"), number("expires_in")) {
        (Some(on), _) => UNIX_EPOCH + Duration::from_secs(on),
        (None, Some(secs)) => now + Duration::from_secs(secs),
        (None, None) => return Err(bad("neither expires_on nor expires_in")),
    };
    Ok(AccessToken {
        secret: Zeroizing::new(secret.to_string()),
        expires_on,
    })
}

/// `error: error_description` from an identity error body, or the start of the body.
fn error_detail(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let code = v.get("error").and_then(|e| e.as_str()).unwrap_or("");
        let text = v
            .get("error_description")
            .and_then(|e| e.as_str())
            .unwrap_or("");
        if !code.is_empty() || !text.is_empty() {
            return format!("{code}: {text}")
                .trim_matches([':', ' '])
                .to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.chars().take(200).collect();
    if text.trim().is_empty() {
        "no body".to_string()
    } else {
        text.trim().to_string()
    }
}

fn describe_failure(f: &http::Failure) -> String {
    let what = match f.kind {
        FailureKind::Dns => "name resolution failed",
        FailureKind::Connect => "no connection",
        FailureKind::Tls => "TLS failed",
        FailureKind::Timeout => "timed out",
        FailureKind::Broken => "connection broken",
        FailureKind::TooLarge => "answer too large",
    };
    format!("{what} ({})", f.detail)
}

/// Identity endpoints never go through a proxy; a plain `http://` one (IMDS, Azure Arc) needs no trust store.
fn route_for(token_url: &Url) -> Route {
    if token_url.scheme() == "http" {
        Route::DirectPlain
    } else {
        Route::Direct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        let token_url = |e: &str| {
            Identity::new(Some(&Url::parse(e).unwrap()), None)
                .unwrap()
                .token_url()
                .to_string()
        };
        assert_eq!(
            token_url("http://169.254.169.254/metadata/identity"),
            IMDS_TOKEN_URL
        );
        assert_eq!(
            token_url("http://169.254.169.254/metadata/identity/"),
            IMDS_TOKEN_URL
        );
        assert_eq!(
            token_url("http://169.254.169.254/metadata/identity/oauth2/token"),
            IMDS_TOKEN_URL
        );
        assert_eq!(
            token_url("http://169.254.169.254"),
            "http://169.254.169.254/metadata/identity/oauth2/token"
        );
        assert_eq!(
            token_url("http://localhost:40342/metadata/identity"),
            "http://localhost:40342/metadata/identity/oauth2/token"
        );
        let default = Identity::new(None, None).unwrap();
        assert_eq!(default.token_url().as_str(), IMDS_TOKEN_URL);
        assert!(!default.arc);
    }

    #[test]
    fn query_names_resource_and_client() {
        let id = Identity::new(None, Some("c7373ae5-91c2-4165-8ab6-7381d6e75619")).unwrap();
        assert_eq!(
            id.request_url("https://vault.azure.net"),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=c7373ae5-91c2-4165-8ab6-7381d6e75619"
        );
        let arc = Identity::new(
            Some(&Url::parse("http://localhost:40342/metadata/identity").unwrap()),
            None,
        )
        .unwrap();
        assert!(
            arc.request_url("https://vault.azure.net")
                .contains("api-version=2020-06-01")
        );
    }

    #[test]
    fn arc_refuses_a_client_id() {
        let e = Identity::new(
            Some(&Url::parse("http://localhost:40342/metadata/identity").unwrap()),
            Some("c7373ae5-91c2-4165-8ab6-7381d6e75619"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "msiClientId is 'c7373ae5-91c2-4165-8ab6-7381d6e75619', but the Azure Arc identity endpoint \
             http://localhost:40342/metadata/identity/oauth2/token serves only the machine's own \
             (system-assigned) identity; remove msiClientId from the settings"
        );
    }

    #[test]
    fn realms() {
        assert_eq!(
            basic_realm("Basic realm=/var/opt/azcmagent/tokens/a.key").as_deref(),
            Some("/var/opt/azcmagent/tokens/a.key")
        );
        assert_eq!(
            basic_realm("basic  realm=\"/x/y.key\"").as_deref(),
            Some("/x/y.key")
        );
        assert_eq!(basic_realm("Bearer realm=/x"), None);
        assert_eq!(basic_realm("Basic"), None);
        assert_eq!(basic_realm("Basic realm="), None);
    }

    #[test]
    fn token_bodies() {
        let t = parse_token(
            br#"{"access_token":"abc","expires_on":"1900000000","expires_in":"86399","token_type":"Bearer"}"#,
            "e",
        )
        .unwrap();
        assert_eq!(t.secret(), "abc");
        assert_eq!(
            t.expires_on(),
            UNIX_EPOCH + Duration::from_secs(1_900_000_000)
        );
        assert!(!format!("{t:?}").contains("abc"));
        let t = parse_token(br#"{"access_token":"abc","expires_in":3600}"#, "e").unwrap();
        assert!(t.fresh(SystemTime::now()));
        let e = parse_token(br#"{"expires_in":3600}"#, "e").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the managed identity endpoint e answered 200 without a usable token: no access_token"
        );
        let stale = parse_token(br#"{"access_token":"x","expires_in":"200"}"#, "e").unwrap();
        assert!(!stale.fresh(SystemTime::now()), "under 5 minutes left");
    }

    #[test]
    fn error_details() {
        assert_eq!(
            error_detail(
                br#"{"error":"invalid_request","error_description":"Identity not found"}"#
            ),
            "invalid_request: Identity not found"
        );
        assert_eq!(error_detail(b""), "no body");
        assert_eq!(error_detail(b"oops"), "oops");
    }
}
