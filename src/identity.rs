//! Managed-identity tokens, from the VM's Instance Metadata Service or from an Azure Arc machine's himds.
//!
//! Tokens are cached per resource and reused until five minutes before they expire, so a steady worker asks
//! IMDS nothing at all between refreshes. IMDS is never reached through a proxy. The Arc flow reads a secret
//! key file that himds names in its challenge; kvvm only reads it from the directory the Arc agent owns.
//!
//! No caller ever waits behind another one's request: a fresh cached token is returned at once (so is one
//! that is due for refresh but still valid for minutes, while the refresh runs), and a fetch runs on a thread
//! of its own with the whole [`RetryPolicy::IDENTITY`] budget (100 s, enough to ride out the 70 s of 410
//! answers IMDS gives while it updates). Callers that need the token while it is being fetched wait for that
//! one fetch, but only until their own deadline (a certificate check's, [`http::CHECK_DEADLINE`]): the check
//! then fails with `identity-timeout`, the fetch goes on, and the next check gets its token.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use url::Url;
use zeroize::Zeroizing;

use crate::http::{self, Attempt, Deadline, Ended, FailureKind, RetryPolicy, Route, Stop, Verdict};
use crate::platform::paths::ARC_KEY_DIR;

/// Where IMDS serves tokens on every Azure VM.
pub(crate) const IMDS_TOKEN_URL: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// himds listens on this port on Azure Arc machines.
pub(crate) const ARC_PORT: u16 = 40342;
/// Largest Arc key file kvvm reads (the agent writes a few dozen bytes).
pub(crate) const ARC_KEY_MAX: u64 = 4096;
const IMDS_API_VERSION: &str = "2018-02-01";
const ARC_API_VERSION: &str = "2020-06-01";
/// A cached token is refreshed once less than this remains.
pub(crate) const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// While a refresh is under way, the old token is still handed out if more than this remains (more than a
/// whole check needs).
const STILL_USABLE: Duration = Duration::from_secs(2 * 60);

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
        self.left(now) > REFRESH_BEFORE
    }

    /// Whether it may still be sent while a fresh one is fetched in the background.
    fn usable(&self, now: SystemTime) -> bool {
        self.left(now) > STILL_USABLE
    }

    fn left(&self, now: SystemTime) -> Duration {
        self.expires_on.duration_since(now).unwrap_or_default()
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

/// A user-assigned identity, as `authenticationSettings` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserIdentity {
    /// `msiClientId`: the identity's client (application) id, a lower-case GUID.
    ClientId(String),
    /// `msiObjectId`: the identity's object (principal) id, a lower-case GUID.
    ObjectId(String),
    /// `msiResourceId`: `/subscriptions/…/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>`.
    ResourceId(String),
}

impl UserIdentity {
    /// The setting that names it.
    pub fn setting(&self) -> &'static str {
        match self {
            UserIdentity::ClientId(_) => "msiClientId",
            UserIdentity::ObjectId(_) => "msiObjectId",
            UserIdentity::ResourceId(_) => "msiResourceId",
        }
    }

    /// The query parameter IMDS takes it as.
    pub fn query_parameter(&self) -> &'static str {
        match self {
            UserIdentity::ClientId(_) => "client_id",
            UserIdentity::ObjectId(_) => "object_id",
            UserIdentity::ResourceId(_) => "msi_res_id",
        }
    }

    /// The id or resource ID.
    pub fn value(&self) -> &str {
        match self {
            UserIdentity::ClientId(v) | UserIdentity::ObjectId(v) | UserIdentity::ResourceId(v) => {
                v
            }
        }
    }
}

/// What IMDS's 400 asks the user to do. IMDS says "Multiple user assigned identities exist, please specify
/// the clientId / resourceId of the identity in the token request" when the VM has several user-assigned
/// identities and the request named none, and "Identity not found" when the named one (or the
/// system-assigned one) is not on the VM.
fn not_assigned_hint(body: &[u8], user: Option<&UserIdentity>) -> String {
    const LOOK_UP: &str =
        "look its client ID up with `az identity show -g <group> -n <name> --query clientId`";
    let lower = String::from_utf8_lossy(body).to_ascii_lowercase();
    if lower.contains("multiple user assigned identities") {
        return format!(
            "this VM has several user-assigned identities and the settings name none of them; add \
             authenticationSettings.msiClientId with the client ID of the identity that may read the vault ({LOOK_UP})"
        );
    }
    match user {
        Some(id) => format!(
            "{} is not assigned to this VM; assign that identity to the VM or scale set (az vm identity assign), or \
             fix authenticationSettings.{} ({LOOK_UP} and set msiClientId to it)",
            match id {
                UserIdentity::ClientId(v) => format!("the identity with client id {v}"),
                UserIdentity::ObjectId(v) => format!("the identity with object id {v}"),
                UserIdentity::ResourceId(v) => format!("the identity {v}"),
            },
            id.setting()
        ),
        None => format!(
            "the identity is missing or not assigned to this VM. Assign a system-assigned identity to the VM or \
             scale set, or assign the user-assigned identity and set authenticationSettings.msiClientId to its \
             client id ({LOOK_UP})"
        ),
    }
}

/// Why no token could be had. Every waiter of one fetch gets its outcome, hence `Clone` (and the
/// `io::Error` behind an `Arc`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    /// IMDS answered 400: the identity does not exist on this machine, or several do and none was named.
    #[error(
        "the managed identity endpoint {endpoint} refused a token for {identity} (HTTP 400: {detail}): {hint}"
    )]
    NotAssigned {
        /// The token URL asked.
        endpoint: String,
        /// The identity asked for (system-assigned, or the client, object or resource id).
        identity: String,
        /// IMDS's error and error description.
        detail: String,
        /// What to add or fix, from IMDS's error description and the identity asked for.
        hint: String,
    },
    /// The endpoint refused for a reason retrying cannot fix.
    #[error(
        "the managed identity endpoint {endpoint} refused a token for {identity} (HTTP {status}: {detail})"
    )]
    Refused {
        /// The token URL asked.
        endpoint: String,
        /// The identity asked for (system-assigned, or the client, object or resource id).
        identity: String,
        /// The HTTP status of the refusal.
        status: u16,
        /// The endpoint's error description, or the start of its body.
        detail: String,
    },
    /// Every attempt failed with a transient error.
    #[error(
        "the managed identity endpoint {endpoint} gave no token after {attempts} attempt(s) over {seconds} s; \
         last: {last}. {hint}"
    )]
    GaveUp {
        /// The token URL asked.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// Seconds spent on them.
        seconds: u64,
        /// What the last attempt saw (a status or a connection failure).
        last: String,
        /// What to check, for the kind of endpoint (IMDS or Azure Arc).
        hint: &'static str,
    },
    /// A 200 answer that is not a token.
    #[error(
        "the managed identity endpoint {endpoint} answered 200 without a usable token: {detail}"
    )]
    BadToken {
        /// The token URL asked.
        endpoint: String,
        /// What is wrong with the answer.
        detail: String,
    },
    /// himds challenged without naming a key file.
    #[error(
        "the Azure Arc identity endpoint {endpoint} answered 401 without a 'Basic realm=<key file>' challenge \
         ({header}); is msiEndpoint really the Arc agent's (http://localhost:40342/metadata/identity)?"
    )]
    ArcChallenge {
        /// The token URL asked.
        endpoint: String,
        /// The `WWW-Authenticate` header it sent, or that it sent none.
        header: String,
    },
    /// himds named a key file kvvm will not read.
    #[error(
        "the Azure Arc identity endpoint named the key file '{path}', which kvvm will not read: {problem}. Only \
         a '.key' file directly in {dir}, at most 4096 bytes, is accepted; check that msiEndpoint points at the \
         local Arc agent"
    )]
    ArcKeyPath {
        /// The path himds named.
        path: String,
        /// The only folder key files are read from.
        dir: String,
        /// Which rule the path breaks.
        problem: String,
    },
    /// The Arc key file could not be read.
    #[error(
        "cannot read the Azure Arc key file '{path}': {source}; kvvm must run as root to read the Arc agent's keys"
    )]
    ArcKeyRead {
        /// The key file.
        path: String,
        /// Why it could not be read.
        source: Arc<std::io::Error>,
    },
    /// Arc machines have no user-assigned identities.
    #[error(
        "{setting} is '{client_id}', but the Azure Arc identity endpoint {endpoint} serves only the machine's \
         own (system-assigned) identity; remove {setting} from the settings"
    )]
    ArcUserAssigned {
        /// The setting naming the identity (`msiClientId`, `msiObjectId` or `msiResourceId`).
        setting: &'static str,
        /// The identity it names.
        client_id: String,
        /// The Arc token URL.
        endpoint: String,
    },
    /// The caller's deadline passed while the token was still being fetched (the fetch goes on).
    #[error(
        "the managed identity endpoint {endpoint} gave no token within {seconds} s (kvvm keeps asking in the \
         background; last: {last}). {hint}"
    )]
    Timeout {
        /// The token URL being asked.
        endpoint: String,
        /// Seconds the caller waited.
        seconds: u64,
        /// What the fetch has seen so far.
        last: String,
        /// What to check, for the kind of endpoint (IMDS or Azure Arc).
        hint: &'static str,
    },
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
            IdentityError::Timeout { .. } => "identity-timeout",
            IdentityError::Cancelled => "cancelled",
        }
    }
}

/// The machine's managed identity: one per worker, shared by its threads.
pub struct Identity {
    endpoint: Endpoint,
    tokens: Arc<Mutex<HashMap<String, Slot>>>,
}

/// What a fetch needs, cloned onto the thread that runs it.
#[derive(Clone)]
struct Endpoint {
    token_url: Url,
    arc: bool,
    user: Option<UserIdentity>,
    arc_key_dir: PathBuf,
    agent: ureq::Agent,
    policy: RetryPolicy,
    /// Requests sent to the token endpoint (every try), for the metrics.
    requests: Arc<std::sync::atomic::AtomicU64>,
}

/// One resource's cached token and the fetch in progress, if any.
#[derive(Default)]
struct Slot {
    token: Option<AccessToken>,
    fetching: Option<Arc<Fetch>>,
}

/// A fetch in progress, shared by the callers waiting for it.
struct Fetch {
    started: Instant,
    state: Mutex<FetchState>,
    done: Condvar,
}

#[derive(Default)]
struct FetchState {
    /// What the latest failed attempt saw, for a waiter whose deadline passes.
    last: Option<String>,
    /// Callers waiting now.
    waiting: usize,
    outcome: Option<Result<AccessToken, IdentityError>>,
}

impl Fetch {
    fn new() -> Fetch {
        Fetch {
            started: Instant::now(),
            state: Mutex::new(FetchState::default()),
            done: Condvar::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, last: &str) {
        self.state().last = Some(last.to_string());
    }

    /// Hands the outcome to the waiters; true if there were none.
    fn finish(&self, outcome: Result<AccessToken, IdentityError>) -> bool {
        let mut state = self.state();
        state.outcome = Some(outcome);
        self.done.notify_all();
        state.waiting == 0
    }

    /// The fetch's outcome, or an error once `deadline` passes or `stop` is raised.
    fn wait(
        &self,
        deadline: Deadline,
        stop: &Stop,
        endpoint: &Endpoint,
    ) -> Result<AccessToken, IdentityError> {
        let mut state = self.state();
        state.waiting += 1;
        let outcome = loop {
            if let Some(outcome) = &state.outcome {
                break outcome.clone();
            }
            if stop.requested() {
                break Err(IdentityError::Cancelled);
            }
            let left = deadline.left();
            if left.is_zero() {
                break Err(IdentityError::Timeout {
                    endpoint: endpoint.token_url.to_string(),
                    seconds: self.started.elapsed().as_secs(),
                    last: state
                        .last
                        .clone()
                        .unwrap_or_else(|| "no answer yet".to_string()),
                    hint: endpoint.hint(),
                });
            }
            // Wake up now and then to notice a stop request.
            let slice = left.min(Duration::from_millis(50));
            state = self
                .done
                .wait_timeout(state, slice)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        state.waiting -= 1;
        outcome
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("token_url", &self.endpoint.token_url.as_str())
            .field("user", &self.endpoint.user)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The identity behind `msiEndpoint` (default: IMDS) and `msiClientId`, `msiObjectId` or `msiResourceId`
    /// (`None`: the system-assigned identity).
    ///
    /// `msiEndpoint` may name the identity root (`…/metadata/identity`) or the token path
    /// (`…/metadata/identity/oauth2/token`); both appear in Microsoft's documentation. An endpoint on port
    /// 40342 is Azure Arc's himds. IMDS gets `client_id`, `object_id` or `msi_res_id`; Azure Arc has no
    /// user-assigned identities, so any of them is refused there.
    pub fn for_user(
        endpoint: Option<&Url>,
        user: Option<&UserIdentity>,
    ) -> Result<Identity, IdentityError> {
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
        if arc && let Some(id) = user {
            return Err(IdentityError::ArcUserAssigned {
                setting: id.setting(),
                client_id: id.value().to_string(),
                endpoint: token_url.to_string(),
            });
        }
        let policy = RetryPolicy::IDENTITY;
        let agent =
            http::agent(route_for(&token_url), &policy).expect("direct agents need no roots");
        Ok(Identity {
            endpoint: Endpoint {
                token_url,
                arc,
                user: user.cloned(),
                arc_key_dir: PathBuf::from(ARC_KEY_DIR),
                agent,
                policy,
                requests: Arc::default(),
            },
            tokens: Arc::default(),
        })
    }

    /// Where Azure Arc key files are accepted from (default `/var/opt/azcmagent/tokens`, the Arc agent's).
    pub fn with_arc_key_dir(mut self, dir: impl Into<PathBuf>) -> Identity {
        self.endpoint.arc_key_dir = dir.into();
        self
    }

    /// Replaces the retry policy (default [`RetryPolicy::IDENTITY`]).
    pub fn with_policy(mut self, policy: RetryPolicy) -> Identity {
        self.endpoint.agent = http::agent(route_for(&self.endpoint.token_url), &policy)
            .expect("direct agents need no roots");
        self.endpoint.policy = policy;
        self
    }

    /// The token URL requests go to (without query).
    pub fn token_url(&self) -> &Url {
        &self.endpoint.token_url
    }

    /// How many requests this identity sent to its token endpoint (every try of every fetch).
    pub fn token_requests(&self) -> u64 {
        self.endpoint
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Which identity this is, in words, for messages.
    pub fn describe(&self) -> String {
        self.endpoint.describe()
    }

    /// A token for `resource` (e.g. `https://vault.azure.net`), from the cache while it has more than five
    /// minutes left — at once, whatever other fetches are in progress. Otherwise one fetch of that resource
    /// runs (this call starts it if none does), with the identity policy's own budget, going on after
    /// `deadline` if need be (its token is cached for the next caller). Meanwhile a cached token that is due
    /// for refresh but still valid for minutes is returned at once; without one, this call waits for the
    /// fetch until `deadline` at most.
    pub fn token(
        &self,
        resource: &str,
        deadline: Deadline,
        stop: &Stop,
    ) -> Result<AccessToken, IdentityError> {
        let key = resource.trim_end_matches('/').to_string();
        let (fetch, usable) = {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            let slot = tokens.entry(key.clone()).or_default();
            let now = SystemTime::now();
            if let Some(t) = slot.token.as_ref().filter(|t| t.fresh(now)) {
                return Ok(t.clone());
            }
            let usable = slot.token.as_ref().filter(|t| t.usable(now)).cloned();
            let fetch = match &slot.fetching {
                Some(fetch) => fetch.clone(),
                None => {
                    let fetch = Arc::new(Fetch::new());
                    slot.fetching = Some(fetch.clone());
                    drop(tokens);
                    self.start_fetch(key, fetch.clone());
                    fetch
                }
            };
            (fetch, usable)
        };
        match usable {
            Some(token) => Ok(token),
            None => fetch.wait(deadline, stop, &self.endpoint),
        }
    }

    /// Runs the fetch on its own thread (inline if no thread can be started), then caches the token and
    /// hands the outcome to every waiter.
    fn start_fetch(&self, key: String, fetch: Arc<Fetch>) {
        let job = FetchJob {
            endpoint: self.endpoint.clone(),
            tokens: self.tokens.clone(),
            key,
            fetch,
        };
        let inline = job.clone();
        let spawned = std::thread::Builder::new()
            .name("kvvm-identity".into())
            .spawn(move || job.run());
        if let Err(e) = spawned {
            log::warn!("cannot start a thread for the token fetch ({e}); fetching inline");
            inline.run();
        }
    }

    /// Drops the cached token for `resource` (the vault rejected it).
    pub fn forget(&self, resource: &str) {
        if let Some(slot) = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(resource.trim_end_matches('/'))
        {
            slot.token = None;
        }
    }

    #[cfg(test)]
    fn request_url(&self, resource: &str) -> String {
        self.endpoint.request_url(resource)
    }
}

/// One fetch and where its outcome goes.
#[derive(Clone)]
struct FetchJob {
    endpoint: Endpoint,
    tokens: Arc<Mutex<HashMap<String, Slot>>>,
    key: String,
    fetch: Arc<Fetch>,
}

impl FetchJob {
    fn run(self) {
        let outcome = self.endpoint.fetch(&self.key, &self.fetch);
        {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            let slot = tokens.entry(self.key.clone()).or_default();
            if slot
                .fetching
                .as_ref()
                .is_some_and(|f| Arc::ptr_eq(f, &self.fetch))
            {
                slot.fetching = None;
            }
            if let Ok(token) = &outcome {
                slot.token = Some(token.clone());
            }
        }
        let failure = outcome.as_ref().err().map(|e| e.to_string());
        let unheard = self.fetch.finish(outcome);
        if let Some(e) = failure
            && unheard
        {
            // Every caller stopped waiting: say here what became of the fetch.
            log::warn!("managed identity token for {}: {e}", self.key);
        }
    }
}

impl Endpoint {
    fn describe(&self) -> String {
        match &self.user {
            Some(UserIdentity::ClientId(id)) => {
                format!("the user-assigned identity with client id {id} (msiClientId)")
            }
            Some(UserIdentity::ObjectId(id)) => {
                format!("the user-assigned identity with object id {id} (msiObjectId)")
            }
            Some(UserIdentity::ResourceId(id)) => {
                format!("the user-assigned identity {id} (msiResourceId)")
            }
            None => "the system-assigned identity".to_string(),
        }
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
            if let Some(user) = &self.user {
                q.append_pair(user.query_parameter(), user.value());
            }
        }
        url.into()
    }

    /// One token fetch with the whole identity budget, noting each transient failure in `progress`.
    fn fetch(&self, resource: &str, progress: &Fetch) -> Result<AccessToken, IdentityError> {
        let url = self.request_url(resource);
        let endpoint = self.token_url.to_string();
        let what = format!("managed identity endpoint {endpoint}");
        let mut basic: Option<Zeroizing<String>> = None;
        let deadline = Deadline::after(self.policy.total);
        // Nobody stops a fetch: it is bounded by its budget, and waiters stop waiting on their own.
        let never = Stop::default();
        let ended = http::retry(&what, &self.policy, deadline, &never, |attempt| {
            let verdict = self.classify(attempt, &url, &endpoint, &mut basic);
            if let Verdict::Retry { last, .. } = &verdict {
                progress.note(last);
            }
            verdict
        });
        ended.map_err(|ended| match ended {
            Ended::Failed(e) => e,
            Ended::GaveUp {
                attempts,
                elapsed,
                last,
            }
            | Ended::TimedOut {
                attempts,
                elapsed,
                last: Some(last),
            } => IdentityError::GaveUp {
                endpoint: endpoint.clone(),
                attempts,
                seconds: elapsed.as_secs(),
                last,
                hint: self.hint(),
            },
            Ended::TimedOut {
                attempts, elapsed, ..
            } => IdentityError::GaveUp {
                endpoint: endpoint.clone(),
                attempts,
                seconds: elapsed.as_secs(),
                last: "no answer".to_string(),
                hint: self.hint(),
            },
            Ended::Stopped => IdentityError::Cancelled,
        })
    }

    /// IMDS's and Arc's code set: 200 is the token; Arc's first 401 names the key file to answer with; 400 means
    /// the identity is not there; 404, 410, 429, 5xx and connection failures are retried.
    fn classify(
        &self,
        attempt: &Attempt,
        url: &str,
        endpoint: &str,
        basic: &mut Option<Zeroizing<String>>,
    ) -> Verdict<AccessToken, IdentityError, String> {
        let mut headers = vec![("Metadata", "true")];
        if let Some(b) = basic.as_ref() {
            headers.push(("Authorization", b.as_str()));
        }
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reply = match http::get(&self.agent, url, &headers, attempt.timeout()) {
            Ok(reply) => reply,
            Err(f) if f.kind.is_transient() => {
                return Verdict::Retry {
                    last: describe_failure(&f),
                    retry_after: None,
                };
            }
            Err(f) => {
                return Verdict::Fail(IdentityError::GaveUp {
                    endpoint: endpoint.to_string(),
                    attempts: attempt.number(),
                    seconds: attempt.elapsed().as_secs(),
                    last: describe_failure(&f),
                    hint: self.hint(),
                });
            }
        };
        match reply.status {
            200 => match parse_token(&reply.body, endpoint) {
                Ok(token) => Verdict::Done(token),
                Err(e) => Verdict::Fail(e),
            },
            401 if basic.is_none() => {
                match self.arc_key(reply.www_authenticate.as_deref(), endpoint) {
                    Ok(key) => {
                        *basic = Some(Zeroizing::new(format!("Basic {}", key.as_str())));
                        // The challenge is part of the protocol, not a failure: ask again at once.
                        Verdict::Again
                    }
                    Err(e) => Verdict::Fail(e),
                }
            }
            400 => Verdict::Fail(IdentityError::NotAssigned {
                endpoint: endpoint.to_string(),
                identity: self.describe(),
                detail: error_detail(&reply.body),
                hint: not_assigned_hint(&reply.body, self.user.as_ref()),
            }),
            404 | 410 | 429 | 500..=599 => Verdict::Retry {
                last: format!("HTTP {} ({})", reply.status, error_detail(&reply.body)),
                retry_after: reply.retry_after,
            },
            status => Verdict::Fail(IdentityError::Refused {
                endpoint: endpoint.to_string(),
                identity: self.describe(),
                status,
                detail: error_detail(&reply.body),
            }),
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
/// The key file an Azure Arc `WWW-Authenticate: Basic realm=<path>` challenge names.
pub fn basic_realm(header: &str) -> Option<String> {
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

/// Reads an Arc key file: a regular `.key` file directly in `dir`, not a symlink, at most 4096 bytes.
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
        source: Arc::new(source),
    };
    let file = open_not_following(path).map_err(|e| match e {
        Opened::Link => refuse("it is a symbolic link"),
        Opened::Failed(e) => read_error(e),
    })?;
    let meta = file.metadata().map_err(read_error)?;
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link"));
    }
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

/// Why [`open_not_following`] did not open a file.
enum Opened {
    /// The path is a symbolic link.
    #[cfg_attr(
        windows,
        allow(
            dead_code,
            reason = "Windows opens the link itself, which the caller refuses"
        )
    )]
    Link,
    /// Anything else.
    Failed(std::io::Error),
}

/// Opens `path` for reading without following a symbolic link at its end (Linux: `O_NOFOLLOW`, and
/// `O_NONBLOCK` so a FIFO planted there cannot block; Windows: the link itself is opened, which the caller
/// then refuses).
fn open_not_following(path: &Path) -> Result<File, Opened> {
    let mut options = File::options();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK);
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        use windows_sys::Win32::Storage::FileSystem::FILE_FLAG_OPEN_REPARSE_POINT;
        options.custom_flags(FILE_FLAG_OPEN_REPARSE_POINT);
    }
    options.open(path).map_err(|e| {
        #[cfg(unix)]
        if e.raw_os_error() == Some(libc::ELOOP) {
            return Opened::Link;
        }
        Opened::Failed(e)
    })
}

/// Reads an IMDS or Azure Arc token reply (`access_token` and `expires_on` or `expires_in`, as strings or
/// numbers). A time that does not fit the clock is refused, not trusted.
pub fn parse_token(body: &[u8], endpoint: &str) -> Result<AccessToken, IdentityError> {
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
        (Some(on), _) => UNIX_EPOCH.checked_add(Duration::from_secs(on)),
        (None, Some(secs)) => now.checked_add(Duration::from_secs(secs)),
        (None, None) => return Err(bad("neither expires_on nor expires_in")),
    }
    .ok_or_else(|| bad("its expiry time is out of range"))?;
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
            Identity::for_user(Some(&Url::parse(e).unwrap()), None)
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
        let default = Identity::for_user(None, None).unwrap();
        assert_eq!(default.token_url().as_str(), IMDS_TOKEN_URL);
        assert!(!default.endpoint.arc);
    }

    #[test]
    fn query_names_resource_and_client() {
        let id = Identity::for_user(
            None,
            Some(&UserIdentity::ClientId(
                "c7373ae5-91c2-4165-8ab6-7381d6e75619".to_string(),
            )),
        )
        .unwrap();
        assert_eq!(
            id.request_url("https://vault.azure.net"),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=c7373ae5-91c2-4165-8ab6-7381d6e75619"
        );
        let arc = Identity::for_user(
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
        let e = Identity::for_user(
            Some(&Url::parse("http://localhost:40342/metadata/identity").unwrap()),
            Some(&UserIdentity::ClientId(
                "c7373ae5-91c2-4165-8ab6-7381d6e75619".to_string(),
            )),
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
