//! Fake Azure Instance Metadata Service identity endpoint and Azure Arc `himds`, over plain HTTP.
//!
//! Both hand out opaque tokens recorded in a [`TokenAuthority`] that [`crate::vault::FakeVault`] checks, so a
//! test proves the client fetched a token for the right resource and used it before it expired. They answer
//! the way the real endpoints do: 400 without `Metadata: true`, 400 for an unknown identity, scripted
//! 404/410/429/5xx, and for Arc the 401 `Basic realm=<key file>` challenge.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::httpserver::{
    self, HttpServer, Outcome, Reply, ReplyQueue, Request, Response, random_hex, unix_now,
};

/// What the authority knows about a token it issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    /// The resource (audience) the token was requested for, as sent.
    pub resource: String,
    /// Client id of the identity it was issued to.
    pub client_id: String,
    /// When it stops being accepted.
    pub expires_at: SystemTime,
}

/// Why a vault refused a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRejection {
    /// Not issued by this authority (or revoked).
    Unknown,
    /// Issued, but past its expiry.
    Expired,
    /// Issued for another resource.
    WrongResource {
        /// The resource it was issued for.
        issued_for: String,
    },
}

/// Shared register of the tokens the fake identity endpoints issued; clone it freely (an `Arc` inside).
#[derive(Clone, Default)]
pub struct TokenAuthority {
    inner: Arc<Mutex<HashMap<String, IssuedToken>>>,
}

impl fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TokenAuthority({} tokens)",
            self.inner.lock().unwrap().len()
        )
    }
}

/// Normalises a resource/audience for comparison: lower case, no `/.default` scope suffix, no trailing `/`.
pub fn normalize_resource(r: &str) -> String {
    let r = r.trim().to_ascii_lowercase();
    let r = r.strip_suffix("/.default").unwrap_or(&r);
    r.trim_end_matches('/').to_string()
}

impl TokenAuthority {
    /// An empty authority.
    pub fn new() -> TokenAuthority {
        TokenAuthority::default()
    }

    /// Issues a fresh random token (JWT-shaped, opaque) for `resource` and `client_id`.
    pub fn issue(&self, resource: &str, client_id: &str, lifetime: Duration) -> String {
        let b64 = |n: usize| {
            (0..n)
                .map(|_| {
                    const A: &[u8] =
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                    A[fastrand::usize(..A.len())] as char
                })
                .collect::<String>()
        };
        let token = format!(
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{}.{}",
            b64(120),
            b64(86)
        );
        self.inner.lock().unwrap().insert(
            token.clone(),
            IssuedToken {
                resource: resource.to_string(),
                client_id: client_id.to_string(),
                expires_at: SystemTime::now() + lifetime,
            },
        );
        token
    }

    /// Checks `token` for use against `resource` (compared with [`normalize_resource`]).
    pub fn check(&self, token: &str, resource: &str) -> Result<IssuedToken, TokenRejection> {
        let map = self.inner.lock().unwrap();
        let t = map.get(token).ok_or(TokenRejection::Unknown)?;
        if SystemTime::now() >= t.expires_at {
            return Err(TokenRejection::Expired);
        }
        if normalize_resource(&t.resource) != normalize_resource(resource) {
            return Err(TokenRejection::WrongResource {
                issued_for: t.resource.clone(),
            });
        }
        Ok(t.clone())
    }

    /// Looks a token up without checking it.
    pub fn get(&self, token: &str) -> Option<IssuedToken> {
        self.inner.lock().unwrap().get(token).cloned()
    }

    /// Makes every token issued so far expired (the vault then answers 401 `TokenExpired`).
    pub fn expire_all(&self) {
        let past = SystemTime::now() - Duration::from_secs(1);
        for t in self.inner.lock().unwrap().values_mut() {
            t.expires_at = past;
        }
    }

    /// Forgets every token (the vault then answers 401 as for a token from another issuer).
    pub fn revoke_all(&self) {
        self.inner.lock().unwrap().clear();
    }

    /// Every token issued and not revoked.
    pub fn tokens(&self) -> Vec<String> {
        self.inner.lock().unwrap().keys().cloned().collect()
    }
}

/// One request the fake identity endpoint saw.
#[derive(Clone, Debug)]
pub struct ImdsRequestRecord {
    /// When it arrived.
    pub at: Instant,
    /// Method.
    pub method: String,
    /// Path and query as sent.
    pub path_and_query: String,
    /// Whether `Metadata: true` was present.
    pub metadata_header: bool,
    /// The `Authorization` header (Arc), if any.
    pub authorization: Option<String>,
    /// Status sent; 0 when the connection was dropped or left hanging ([`Reply::Hang`]).
    pub status: u16,
}

/// Counters of a [`FakeImds`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImdsStats {
    /// Requests to the token path.
    pub token_requests: u64,
    /// Tokens issued (200 replies).
    pub tokens_issued: u64,
    /// Arc 401 challenges sent (key files written).
    pub arc_challenges: u64,
}

/// A user-assigned identity on the fake VM.
struct UserIdentity {
    client_id: String,
    object_id: String,
    resource_id: String,
}

struct ImdsState {
    /// Where key files are written, and the folder the challenge names them in (Azure Arc only).
    arc_key_dir: Option<(PathBuf, PathBuf)>,
    arc_keys: HashSet<String>,
    system_client_id: Option<String>,
    user_identities: Vec<UserIdentity>,
    lifetime: Duration,
    script: ReplyQueue,
    stats: ImdsStats,
    log: Vec<ImdsRequestRecord>,
}

/// Fake IMDS (`FakeImds::start`) or Azure Arc himds (`FakeImds::start_arc`) token endpoint.
///
/// Serves `GET /metadata/identity/oauth2/token`. Defaults: a system-assigned identity with a random client id,
/// token lifetime 24 h. Stops on drop.
pub struct FakeImds {
    server: HttpServer,
    state: Arc<Mutex<ImdsState>>,
    tokens: TokenAuthority,
}

/// The token path both IMDS and Arc serve.
pub const TOKEN_PATH: &str = "/metadata/identity/oauth2/token";

impl FakeImds {
    /// Starts a fake IMDS on `bind` (e.g. `169.254.169.254:80` inside the test namespace, or `127.0.0.1:0`).
    pub fn start(bind: SocketAddr, tokens: TokenAuthority) -> io::Result<FakeImds> {
        FakeImds::start_inner(bind, tokens, None)
    }

    /// Starts a fake Azure Arc himds on `bind` (e.g. `127.0.0.1:40342`), writing challenge key files into
    /// `key_dir` (created if missing; the real agent uses `/var/opt/azcmagent/tokens`).
    pub fn start_arc(
        bind: SocketAddr,
        tokens: TokenAuthority,
        key_dir: &Path,
    ) -> io::Result<FakeImds> {
        FakeImds::start_arc_in(bind, tokens, key_dir, key_dir)
    }

    /// [`FakeImds::start_arc`] for a client that sees the key folder at another path than this process: key
    /// files are written into `key_dir` and the challenge names them under `announced_dir` (a test machine's
    /// `/var/opt/azcmagent/tokens`, which this process reaches through `/proc/<pid>/root`).
    pub fn start_arc_in(
        bind: SocketAddr,
        tokens: TokenAuthority,
        key_dir: &Path,
        announced_dir: &Path,
    ) -> io::Result<FakeImds> {
        std::fs::create_dir_all(key_dir)?;
        FakeImds::start_inner(
            bind,
            tokens,
            Some((key_dir.to_path_buf(), announced_dir.to_path_buf())),
        )
    }

    fn start_inner(
        bind: SocketAddr,
        tokens: TokenAuthority,
        arc: Option<(PathBuf, PathBuf)>,
    ) -> io::Result<FakeImds> {
        let state = Arc::new(Mutex::new(ImdsState {
            arc_key_dir: arc,
            arc_keys: HashSet::new(),
            system_client_id: Some(random_guid()),
            user_identities: Vec::new(),
            lifetime: Duration::from_secs(24 * 3600),
            script: ReplyQueue::default(),
            stats: ImdsStats::default(),
            log: Vec::new(),
        }));
        let handler = {
            let state = state.clone();
            let tokens = tokens.clone();
            Arc::new(move |req: &Request| handle(&state, &tokens, req))
        };
        let server = HttpServer::start(bind, None, handler, None)?;
        Ok(FakeImds {
            server,
            state,
            tokens,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The token authority this endpoint issues into.
    pub fn tokens(&self) -> &TokenAuthority {
        &self.tokens
    }

    /// Client id of the system-assigned identity, if one is assigned.
    pub fn system_client_id(&self) -> Option<String> {
        self.state.lock().unwrap().system_client_id.clone()
    }

    /// Assigns (`Some(client_id)`) or removes (`None`) the system-assigned identity.
    pub fn set_system_identity(&self, client_id: Option<&str>) {
        self.state.lock().unwrap().system_client_id = client_id.map(str::to_string);
    }

    /// Assigns a user-assigned identity, requested with `client_id=<id>` (IMDS only; Arc refuses `client_id`).
    /// It gets a random object id and a resource ID named after its client id (see [`FakeImds::add_user_identity_ids`]).
    pub fn add_user_identity(&self, client_id: &str) {
        let resource_id = format!(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/\
             Microsoft.ManagedIdentity/userAssignedIdentities/id-{client_id}"
        );
        self.add_user_identity_ids(client_id, &random_guid(), &resource_id);
    }

    /// Assigns a user-assigned identity with all three of its names, as IMDS accepts them: `client_id`,
    /// `object_id` (GUIDs, any case) and `msi_res_id` (the ARM resource ID, any case).
    pub fn add_user_identity_ids(&self, client_id: &str, object_id: &str, resource_id: &str) {
        self.state
            .lock()
            .unwrap()
            .user_identities
            .push(UserIdentity {
                client_id: client_id.to_ascii_lowercase(),
                object_id: object_id.to_ascii_lowercase(),
                resource_id: resource_id.to_string(),
            });
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state.lock().unwrap().lifetime = lifetime;
    }

    /// Queues replies consumed one per request (to any path) before normal handling.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Counters.
    pub fn stats(&self) -> ImdsStats {
        self.state.lock().unwrap().stats.clone()
    }

    /// Every request seen, in order.
    pub fn requests(&self) -> Vec<ImdsRequestRecord> {
        self.state.lock().unwrap().log.clone()
    }

    /// Zeroes the counters and clears the request log.
    pub fn reset_stats(&self) {
        let mut s = self.state.lock().unwrap();
        s.stats = ImdsStats::default();
        s.log.clear();
    }
}

fn random_guid() -> String {
    let h = random_hex(32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn error(status: u16, code: &str, description: &str) -> Response {
    Response::json(
        status,
        &json!({"error": code, "error_description": description}),
    )
    .with_header("Server", "IMDS/150.870.65.1544")
}

fn handle(state: &Mutex<ImdsState>, tokens: &TokenAuthority, req: &Request) -> Outcome {
    let scripted = {
        let mut s = state.lock().unwrap();
        if req.path() == TOKEN_PATH {
            s.stats.token_requests += 1;
        }
        s.script.pop()
    };
    let mut body_delay = None;
    let outcome = match scripted {
        None | Some(Reply::Normal) => Outcome::Respond(token_reply(state, tokens, req)),
        Some(Reply::Drop) => Outcome::Drop,
        Some(Reply::Hang) => Outcome::Hang,
        Some(Reply::Delay { delay }) => {
            std::thread::sleep(delay);
            Outcome::Respond(token_reply(state, tokens, req))
        }
        Some(Reply::SlowBody { delay }) => {
            body_delay = Some(delay);
            Outcome::Respond(token_reply(state, tokens, req))
        }
        Some(Reply::Status(code)) => Outcome::Respond(status_reply(code)),
        Some(Reply::Throttle { retry_after }) => Outcome::Respond(
            status_reply(429).with_header("Retry-After", httpserver::retry_after_secs(retry_after)),
        ),
        Some(Reply::ThrottleHttpDate { retry_after }) => Outcome::Respond(
            status_reply(429).with_header("Retry-After", httpserver::retry_after_date(retry_after)),
        ),
        Some(Reply::Raw {
            status,
            headers,
            body,
        }) => Outcome::Respond(Response {
            status,
            headers,
            body,
            body_delay: None,
        }),
    };
    let outcome = match outcome {
        Outcome::Respond(mut r) => {
            if r.body_delay.is_none() {
                r.body_delay = body_delay;
            }
            Outcome::Respond(r)
        }
        o => o,
    };
    let status = match &outcome {
        Outcome::Respond(r) => r.status,
        Outcome::Drop | Outcome::Hang => 0,
    };
    let mut s = state.lock().unwrap();
    if status == 200 && req.path() == TOKEN_PATH {
        s.stats.tokens_issued += 1;
    }
    s.log.push(ImdsRequestRecord {
        at: Instant::now(),
        method: req.method.clone(),
        path_and_query: req.target.clone(),
        metadata_header: req
            .header("metadata")
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        authorization: req.header("authorization").map(str::to_string),
        status,
    });
    outcome
}

fn status_reply(code: u16) -> Response {
    match code {
        404 => error(404, "not_found", "Identity endpoint is not available yet"),
        410 => error(410, "gone", "IMDS is being updated; retry later"),
        429 => error(429, "too_many_requests", "Too many requests"),
        400 => error(400, "invalid_request", "Bad request"),
        c if c >= 500 => error(
            c,
            "unknown_error",
            "An unexpected error occured while fetching the AAD token.",
        ),
        c => error(c, "unknown_error", httpserver::reason(c)),
    }
}

fn token_reply(state: &Mutex<ImdsState>, tokens: &TokenAuthority, req: &Request) -> Response {
    if req.path() != TOKEN_PATH {
        return Response {
            status: 404,
            headers: vec![("Content-Type".into(), "text/plain; charset=utf-8".into())],
            body: b"Not Found".to_vec(),
            body_delay: None,
        };
    }
    if req.method != "GET" {
        return error(405, "invalid_request", "Method not allowed");
    }
    if req.header("x-forwarded-for").is_some() {
        return error(
            400,
            "invalid_request",
            "Requests through a proxy are not allowed",
        );
    }
    let metadata = req
        .header("metadata")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !metadata {
        return error(
            400,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    let arc_dir = state.lock().unwrap().arc_key_dir.clone();
    let api_version = req.query("api-version");
    let Some(api_version) = api_version else {
        return error(
            400,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    };
    let known: &[&str] = if arc_dir.is_some() {
        &["2019-08-15", "2019-11-01", "2020-06-01"]
    } else {
        &[
            "2018-02-01",
            "2019-08-01",
            "2019-11-01",
            "2020-06-01",
            "2021-02-01",
            "2021-12-13",
        ]
    };
    if !known.contains(&api_version.as_str()) {
        return error(
            400,
            "invalid_request",
            &format!(
                "Invalid api-version '{api_version}'. Supported: {}",
                known.join(", ")
            ),
        );
    }
    let Some(resource) = req.query("resource").filter(|r| !r.is_empty()) else {
        return error(
            400,
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    let client_id = req.query("client_id");
    if let Some(dir) = arc_dir {
        if client_id.is_some()
            || req.query("object_id").is_some()
            || req.query("msi_res_id").is_some()
        {
            return error(
                400,
                "invalid_request",
                "User assigned identities are not supported on Azure Arc-enabled servers",
            );
        }
        match req.header("authorization") {
            None => return arc_challenge(state, &dir),
            Some(auth) => {
                let secret = auth
                    .strip_prefix("Basic ")
                    .or_else(|| auth.strip_prefix("basic "))
                    .unwrap_or("");
                if !state.lock().unwrap().arc_keys.contains(secret) {
                    return error(401, "unauthorized_client", "Invalid authorization key")
                        .with_header("WWW-Authenticate", "Basic realm=");
                }
            }
        }
    }
    let object_id = req.query("object_id");
    let resource_id = req.query("msi_res_id");
    let (identity, lifetime) = {
        let s = state.lock().unwrap();
        let user = |pick: &dyn Fn(&UserIdentity) -> bool| {
            s.user_identities
                .iter()
                .find(|u| pick(u))
                .map(|u| u.client_id.clone())
        };
        let identity = match (&client_id, &object_id, &resource_id) {
            (Some(c), _, _) => user(&|u| u.client_id.eq_ignore_ascii_case(c)).or_else(|| {
                s.system_client_id
                    .as_deref()
                    .filter(|sys| sys.eq_ignore_ascii_case(c))
                    .map(|_| c.clone())
            }),
            (None, Some(o), _) => user(&|u| u.object_id.eq_ignore_ascii_case(o)),
            (None, None, Some(r)) => user(&|u| u.resource_id.eq_ignore_ascii_case(r)),
            (None, None, None) => match (&s.system_client_id, s.user_identities.as_slice()) {
                (Some(sys), _) => Some(sys.clone()),
                // Without a system-assigned identity IMDS uses the only user-assigned one, and refuses to
                // guess between several.
                (None, [only]) => Some(only.client_id.clone()),
                (None, []) => None,
                (None, _) => {
                    return error(
                        400,
                        "invalid_request",
                        "Multiple user assigned identities exist, please specify the clientId / resourceId of \
                         the identity in the token request",
                    );
                }
            },
        };
        (identity, s.lifetime)
    };
    let Some(identity) = identity else {
        return error(400, "invalid_request", "Identity not found");
    };
    let token = tokens.issue(&resource, &identity, lifetime);
    let now = unix_now();
    let secs = lifetime.as_secs() as i64;
    Response::json(
        200,
        &json!({
            "access_token": token,
            "client_id": identity,
            "expires_in": secs.to_string(),
            "expires_on": (now + secs).to_string(),
            "ext_expires_in": secs.to_string(),
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}

fn arc_challenge(state: &Mutex<ImdsState>, dirs: &(PathBuf, PathBuf)) -> Response {
    let secret = random_hex(64);
    let name = format!("{}.key", random_hex(32));
    let path = dirs.0.join(&name);
    let written = (|| -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(secret.as_bytes())
    })();
    if let Err(e) = written {
        return error(500, "unknown_error", &format!("cannot write key file: {e}"));
    }
    let mut s = state.lock().unwrap();
    s.arc_keys.insert(secret);
    s.stats.arc_challenges += 1;
    error(401, "unauthorized_client", "Authorization header missing").with_header(
        "WWW-Authenticate",
        format!("Basic realm={}", dirs.1.join(&name).display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_normalise() {
        for r in [
            "https://vault.azure.net",
            "https://vault.azure.net/",
            "https://Vault.azure.net/.default",
        ] {
            assert_eq!(normalize_resource(r), "https://vault.azure.net");
        }
    }

    #[test]
    fn authority_checks_resource_and_expiry() {
        let a = TokenAuthority::new();
        let t = a.issue("https://vault.azure.net", "cid", Duration::from_secs(60));
        assert!(a.check(&t, "https://vault.azure.net/").is_ok());
        assert_eq!(
            a.check(&t, "https://vault.azure.cn"),
            Err(TokenRejection::WrongResource {
                issued_for: "https://vault.azure.net".into()
            })
        );
        assert_eq!(
            a.check("other", "https://vault.azure.net"),
            Err(TokenRejection::Unknown)
        );
        a.expire_all();
        assert_eq!(
            a.check(&t, "https://vault.azure.net"),
            Err(TokenRejection::Expired)
        );
    }
}
