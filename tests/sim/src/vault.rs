//! Fake Azure Key Vault data plane (secrets), over TLS, serving several vaults chosen by the `Host` header.
//!
//! It is deliberately as strict as the real service: 401 challenges for requests without a token (and for
//! tokens the fake IMDS did not issue for the vault's resource), 403 `ForbiddenByRbac`, 404 `SecretNotFound`,
//! 400 without `api-version`, 429 + `Retry-After`, paging with `nextLink` (with `:443`, as the service writes
//! it), 32-hex versions. Every request is logged with the token it carried, so tests can prove that no token
//! ever went to a host that should not get one.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::httpserver::{
    self, HandshakeHook, HttpServer, Outcome, Reply, ReplyQueue, Request, Response, random_hex,
    unix_now,
};
use crate::imds::{TokenAuthority, TokenRejection, normalize_resource};

/// Tenant id used in challenges unless set with [`FakeVault::set_tenant`].
pub const DEFAULT_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

/// API versions the fake accepts (others get 400, as the real service answers).
pub const API_VERSIONS: &[&str] = &[
    "2016-10-01",
    "7.0",
    "7.1",
    "7.2",
    "7.3",
    "7.4",
    "7.5",
    "7.6",
    "2025-07-01",
    "2026-04-01",
];

/// A secret version to store. Build with [`SecretValue::plain`], [`SecretValue::pem`] or
/// [`SecretValue::pkcs12`], then adjust fields.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue {
    /// The secret value as Key Vault returns it (base64 PFX for PKCS#12, PEM text for PEM).
    pub value: String,
    /// `contentType`, omitted from JSON when `None`.
    pub content_type: Option<String>,
    /// `managed: true` (and a `kid`) for certificate-backed secrets.
    pub managed: bool,
    /// `attributes.enabled`; getting a disabled version gives 403 `SecretDisabled`.
    pub enabled: bool,
    /// `attributes.exp`, Unix seconds.
    pub exp: Option<i64>,
    /// `attributes.nbf`, Unix seconds.
    pub nbf: Option<i64>,
    /// `tags`, omitted from JSON when empty.
    pub tags: BTreeMap<String, String>,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field(
                "value",
                &format_args!("<{} bytes redacted>", self.value.len()),
            )
            .field("content_type", &self.content_type)
            .field("managed", &self.managed)
            .field("enabled", &self.enabled)
            .field("exp", &self.exp)
            .field("nbf", &self.nbf)
            .field("tags", &self.tags)
            .finish()
    }
}

impl SecretValue {
    /// A plain (not certificate-backed) secret without content type.
    pub fn plain(value: impl Into<String>) -> SecretValue {
        SecretValue {
            value: value.into(),
            content_type: None,
            managed: false,
            enabled: true,
            exp: None,
            nbf: None,
            tags: BTreeMap::new(),
        }
    }

    /// A certificate-backed secret in PEM form (`application/x-pem-file`, managed).
    pub fn pem(pem: impl Into<String>) -> SecretValue {
        SecretValue {
            content_type: Some("application/x-pem-file".into()),
            managed: true,
            ..SecretValue::plain(pem)
        }
    }

    /// A certificate-backed secret in PKCS#12 form: `pfx_der` is base64-encoded (`application/x-pkcs12`).
    pub fn pkcs12(pfx_der: &[u8]) -> SecretValue {
        SecretValue {
            content_type: Some("application/x-pkcs12".into()),
            managed: true,
            ..SecretValue::plain(base64::engine::general_purpose::STANDARD.encode(pfx_der))
        }
    }
}

/// What the 401 challenge names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChallengeResource {
    /// `resource="<url>"`, e.g. `https://vault.azure.net`.
    Resource(String),
    /// `scope="<url>"`, e.g. `https://vault.azure.net/.default`.
    Scope(String),
}

impl ChallengeResource {
    /// The audience a token must have to be accepted.
    pub fn audience(&self) -> String {
        match self {
            ChallengeResource::Resource(r) | ChallengeResource::Scope(r) => normalize_resource(r),
        }
    }
}

/// One request the fake saw.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// When it arrived.
    pub at: Instant,
    /// `Host` header without port (falls back to SNI), lower case.
    pub vault_host: String,
    /// The SNI name of the TLS connection.
    pub sni: Option<String>,
    /// Method.
    pub method: String,
    /// Path and query as sent.
    pub path_and_query: String,
    /// The bearer token sent, if any.
    pub bearer_token: Option<String>,
    /// Status sent; 0 when the connection was dropped or left hanging ([`Reply::Hang`]).
    pub status: u16,
}

/// Counters of a [`FakeVault`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VaultStats {
    /// All requests.
    pub requests: u64,
    /// Requests carrying an `Authorization: Bearer` token (valid or not).
    pub requests_with_token: u64,
    /// Requests per vault host.
    pub requests_per_vault: BTreeMap<String, u64>,
    /// Requests per `"<host><path>"` (query removed).
    pub requests_per_path: BTreeMap<String, u64>,
    /// Completed TLS handshakes (full and resumed).
    pub tls_handshakes: u64,
    /// Of those, handshakes that resumed an earlier session (cheap: no certificate sent or verified).
    pub tls_resumed_handshakes: u64,
    /// Completed TLS handshakes per SNI name (`""` when the client sent none).
    pub tls_handshakes_per_sni: BTreeMap<String, u64>,
    /// Failed TLS handshakes (e.g. the client refused the certificate).
    pub tls_handshake_failures: u64,
}

#[derive(Clone)]
struct Version {
    version: String,
    value: SecretValue,
    created: i64,
    updated: i64,
}

struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

#[derive(Default)]
struct Vault {
    secrets: HashMap<String, Vec<Version>>,
    deny_all: bool,
    denied: std::collections::HashSet<String>,
    challenge: Option<ChallengeResource>,
    tenant: Option<String>,
    script: ReplyQueue,
    secret_scripts: HashMap<String, ReplyQueue>,
    bucket: Option<Bucket>,
}

#[derive(Default)]
struct State {
    vaults: HashMap<String, Vault>,
    latency: Duration,
    stats: VaultStats,
    log: Vec<RequestRecord>,
}

/// Fake Key Vault server. Stops on drop.
///
/// Every vault host is served: a host never configured behaves like an empty vault whose challenge names the
/// resource derived from its DNS suffix (`https://vault.azure.net` for anything that is not a known sovereign
/// suffix — which is what a malicious host would claim).
pub struct FakeVault {
    server: HttpServer,
    state: Arc<Mutex<State>>,
}

/// The challenge resource a vault host gets by default.
pub fn default_resource(host: &str) -> String {
    for suffix in [
        "vault.azure.cn",
        "vault.usgovcloudapi.net",
        "vault.microsoftazure.de",
        "vault.azure.net",
    ] {
        if host.ends_with(&format!(".{suffix}")) {
            return format!("https://{suffix}");
        }
    }
    "https://vault.azure.net".to_string()
}

impl FakeVault {
    /// Starts serving HTTPS on `bind` with `tls` (see [`crate::tls::TestCa::server_config`]), accepting
    /// tokens registered in `tokens`.
    pub fn start(
        bind: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        tokens: TokenAuthority,
    ) -> io::Result<FakeVault> {
        let state: Arc<Mutex<State>> = Arc::default();
        let handler = {
            let state = state.clone();
            Arc::new(move |req: &Request| handle(&state, &tokens, req))
        };
        let hook: HandshakeHook = {
            let state = state.clone();
            Arc::new(move |r: Result<httpserver::Handshake<'_>, &str>| {
                let mut s = state.lock().unwrap();
                match r {
                    Ok(httpserver::Handshake { sni, resumed }) => {
                        s.stats.tls_handshakes += 1;
                        s.stats.tls_resumed_handshakes += u64::from(resumed);
                        *s.stats
                            .tls_handshakes_per_sni
                            .entry(sni.unwrap_or("").to_string())
                            .or_default() += 1;
                    }
                    Err(_) => s.stats.tls_handshake_failures += 1,
                }
            })
        };
        let server = HttpServer::start(bind, Some(tls), handler, Some(hook))?;
        Ok(FakeVault { server, state })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    fn with_vault<T>(&self, host: &str, f: impl FnOnce(&mut Vault) -> T) -> T {
        let mut s = self.state.lock().unwrap();
        f(s.vaults.entry(host.to_ascii_lowercase()).or_default())
    }

    /// Adds a new version of secret `name` in vault `vault_host` (e.g. `myvault.vault.azure.net`); it becomes
    /// the latest. Returns the version (32 lower-case hex).
    pub fn put_secret(&self, vault_host: &str, name: &str, value: SecretValue) -> String {
        let version = random_hex(32);
        self.put_secret_version(vault_host, name, &version, value);
        version
    }

    /// Adds `version` (32 lower-case hex) of secret `name`, as [`FakeVault::put_secret`] does with a version of
    /// its own: for a vault that outlives the fake (a test machine reboots, and a new fake serves the vault's
    /// versions as they were).
    pub fn put_secret_version(
        &self,
        vault_host: &str,
        name: &str,
        version: &str,
        value: SecretValue,
    ) {
        assert!(
            version.len() == 32
                && version
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "a Key Vault version is 32 lower-case hex digits: {version:?}"
        );
        let version = version.to_string();
        let now = unix_now();
        self.with_vault(vault_host, |v| {
            v.secrets
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push(Version {
                    version: version.clone(),
                    value,
                    created: now,
                    updated: now,
                })
        });
    }

    /// Enables or disables one version (the real service answers 403 `SecretDisabled` for a disabled one).
    pub fn set_enabled(&self, vault_host: &str, name: &str, version: &str, enabled: bool) {
        self.with_vault(vault_host, |v| {
            if let Some(ver) = v
                .secrets
                .get_mut(&name.to_ascii_lowercase())
                .and_then(|vs| vs.iter_mut().find(|x| x.version == version))
            {
                ver.value.enabled = enabled;
                ver.updated = unix_now();
            }
        })
    }

    /// Deletes a secret with all its versions (later gets answer 404).
    pub fn delete_secret(&self, vault_host: &str, name: &str) {
        self.with_vault(vault_host, |v| v.secrets.remove(&name.to_ascii_lowercase()));
    }

    /// Denies the caller access (403 `ForbiddenByRbac`) to secret `name`, or with `None` to the whole vault.
    pub fn deny(&self, vault_host: &str, name: Option<&str>) {
        self.with_vault(vault_host, |v| match name {
            None => v.deny_all = true,
            Some(n) => {
                v.denied.insert(n.to_ascii_lowercase());
            }
        })
    }

    /// Undoes [`FakeVault::deny`].
    pub fn allow(&self, vault_host: &str, name: Option<&str>) {
        self.with_vault(vault_host, |v| match name {
            None => v.deny_all = false,
            Some(n) => {
                v.denied.remove(&n.to_ascii_lowercase());
            }
        })
    }

    /// Queues replies for any request to `vault_host`, consumed one per request before normal handling
    /// (before the token check). Secret-specific scripts ([`FakeVault::script_secret`]) are consumed first.
    pub fn script(&self, vault_host: &str, replies: impl IntoIterator<Item = Reply>) {
        self.with_vault(vault_host, |v| v.script.extend(replies))
    }

    /// Queues replies for requests naming secret `name` (any version, or its version list) in `vault_host`.
    pub fn script_secret(
        &self,
        vault_host: &str,
        name: &str,
        replies: impl IntoIterator<Item = Reply>,
    ) {
        self.with_vault(vault_host, |v| {
            v.secret_scripts
                .entry(name.to_ascii_lowercase())
                .or_default()
                .extend(replies)
        })
    }

    /// Sets what the 401 challenge of `vault_host` names (and so which token audience it accepts).
    pub fn set_challenge(&self, vault_host: &str, resource: ChallengeResource) {
        self.with_vault(vault_host, |v| v.challenge = Some(resource))
    }

    /// Sets the tenant id the challenge's `authorization=` URL names.
    pub fn set_tenant(&self, vault_host: &str, tenant: &str) {
        self.with_vault(vault_host, |v| v.tenant = Some(tenant.to_string()))
    }

    /// Adds `latency` before every request is handled (all vaults; cumulative).
    pub fn add_latency(&self, latency: Duration) {
        self.state.lock().unwrap().latency += latency;
    }

    /// Sets the delay added before every reply (replacing what [`FakeVault::add_latency`] added).
    pub fn set_latency(&self, latency: Duration) {
        self.state.lock().unwrap().latency = latency;
    }

    /// Token-bucket throttle for `vault_host`: `burst` requests at once, refilled at `rate_per_sec`; an empty
    /// bucket gives 429 `Throttled` with `Retry-After`. Applied after scripted replies, before the token check.
    pub fn throttle(&self, vault_host: &str, rate_per_sec: f64, burst: u32) {
        self.with_vault(vault_host, |v| {
            v.bucket = Some(Bucket {
                rate: rate_per_sec,
                burst: f64::from(burst),
                tokens: f64::from(burst),
                last: Instant::now(),
            })
        })
    }

    /// Leaves the TLS handshake of the next `connections` new connections hanging (any vault host: the
    /// handshake comes before the request names one). See [`HttpServer::stall_handshakes`].
    pub fn stall_handshakes(&self, connections: u64) {
        self.server.stall_handshakes(connections);
    }

    /// How many connections had their handshake stalled so far.
    pub fn stalled_handshakes(&self) -> u64 {
        self.server.stalled_handshakes()
    }

    /// Removes the throttle of `vault_host`.
    pub fn unthrottle(&self, vault_host: &str) {
        self.with_vault(vault_host, |v| v.bucket = None)
    }

    /// Counters.
    pub fn stats(&self) -> VaultStats {
        self.state.lock().unwrap().stats.clone()
    }

    /// Every request seen, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.lock().unwrap().log.clone()
    }

    /// The requests for secret `name` (any version, any vault), in order.
    pub fn secret_requests(&self, name: &str) -> Vec<RequestRecord> {
        let prefix = format!("/secrets/{name}/");
        let s = self.state.lock().unwrap();
        s.log
            .iter()
            .filter(|r| r.path_and_query.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// Zeroes the counters and clears the request log.
    pub fn reset_stats(&self) {
        let mut s = self.state.lock().unwrap();
        s.stats = VaultStats::default();
        s.log.clear();
    }
}

fn kv_error(status: u16, code: &str, message: &str) -> Response {
    with_service_headers(Response::json(
        status,
        &json!({"error": {"code": code, "message": message}}),
    ))
}

fn with_service_headers(r: Response) -> Response {
    r.with_header("Cache-Control", "no-cache")
        .with_header("Pragma", "no-cache")
        .with_header("Expires", "-1")
        .with_header("x-ms-keyvault-region", "westeurope")
        .with_header("x-ms-request-id", random_uuid())
        .with_header("x-ms-keyvault-service-version", "1.9.2164.1")
        .with_header(
            "x-ms-keyvault-network-info",
            "conn_type=Ipv4;addr=127.0.0.1;act_addr_fam=InterNetwork;",
        )
        .with_header(
            "Strict-Transport-Security",
            "max-age=31536000;includeSubDomains",
        )
        .with_header("X-Content-Type-Options", "nosniff")
}

fn random_uuid() -> String {
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

fn status_reply(code: u16) -> Response {
    match code {
        401 => kv_error(
            401,
            "Unauthorized",
            "AKV10000: Request is missing a Bearer or PoP token.",
        ),
        403 => kv_error(
            403,
            "Forbidden",
            "Caller is not authorized to perform action on resource.",
        ),
        404 => kv_error(404, "NotFound", "The requested resource was not found."),
        408 => kv_error(408, "RequestTimeout", "The request timed out."),
        429 => throttled(Duration::from_secs(1), false),
        500 => kv_error(
            500,
            "InternalServerError",
            "An unexpected error occurred. Please retry later.",
        ),
        502 => kv_error(
            502,
            "BadGateway",
            "The gateway did not receive a valid response.",
        ),
        503 => kv_error(
            503,
            "ServiceUnavailable",
            "The service is unavailable. Please retry later.",
        ),
        504 => kv_error(504, "GatewayTimeout", "The gateway timed out."),
        c => kv_error(c, "Error", httpserver::reason(c)),
    }
}

fn throttled(retry_after: Duration, http_date: bool) -> Response {
    let value = if http_date {
        httpserver::retry_after_date(retry_after)
    } else {
        httpserver::retry_after_secs(retry_after)
    };
    kv_error(
        429,
        "Throttled",
        "Request was not processed because too many requests were received. Reason: A single client has exceeded the number of requests allowed for this vault. Please retry after the time given in Retry-After.",
    )
    .with_header("Retry-After", value)
}

/// The secret name a path refers to, if it is a `/secrets/<name>...` path.
fn secret_of_path(path: &str) -> Option<String> {
    let mut segs = path.trim_start_matches('/').split('/');
    (segs.next() == Some("secrets")).then(|| segs.next().unwrap_or("").to_ascii_lowercase())
}

fn handle(state: &Mutex<State>, tokens: &TokenAuthority, req: &Request) -> Outcome {
    let latency = state.lock().unwrap().latency;
    if !latency.is_zero() {
        std::thread::sleep(latency);
    }
    let host = req.host().unwrap_or_default();
    let bearer = req.header("authorization").and_then(|a| {
        let (scheme, tok) = a.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| tok.trim().to_string())
    });
    let scripted = {
        let mut s = state.lock().unwrap();
        let v = s.vaults.entry(host.clone()).or_default();
        let secret = secret_of_path(req.path());
        let from_secret = secret
            .and_then(|n| v.secret_scripts.get_mut(&n))
            .and_then(ReplyQueue::pop);
        from_secret.or_else(|| v.script.pop())
    };
    let outcome = match scripted {
        None | Some(Reply::Normal) => Outcome::Respond(normal(state, tokens, req, &host, &bearer)),
        Some(Reply::Drop) => Outcome::Drop,
        Some(Reply::Hang) => Outcome::Hang,
        Some(Reply::Status(c)) => Outcome::Respond(status_reply(c)),
        Some(Reply::Throttle { retry_after }) => Outcome::Respond(throttled(retry_after, false)),
        Some(Reply::ThrottleHttpDate { retry_after }) => {
            Outcome::Respond(throttled(retry_after, true))
        }
        Some(Reply::Delay { delay }) => {
            std::thread::sleep(delay);
            Outcome::Respond(normal(state, tokens, req, &host, &bearer))
        }
        Some(Reply::SlowBody { delay }) => {
            let mut r = normal(state, tokens, req, &host, &bearer);
            r.body_delay = Some(delay);
            Outcome::Respond(r)
        }
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
    let status = match &outcome {
        Outcome::Respond(r) => r.status,
        Outcome::Drop | Outcome::Hang => 0,
    };
    let mut s = state.lock().unwrap();
    s.stats.requests += 1;
    if bearer.is_some() {
        s.stats.requests_with_token += 1;
    }
    *s.stats.requests_per_vault.entry(host.clone()).or_default() += 1;
    *s.stats
        .requests_per_path
        .entry(format!("{host}{}", req.path()))
        .or_default() += 1;
    s.log.push(RequestRecord {
        at: Instant::now(),
        vault_host: host,
        sni: req.sni.clone(),
        method: req.method.clone(),
        path_and_query: req.target.clone(),
        bearer_token: bearer,
        status,
    });
    outcome
}

fn normal(
    state: &Mutex<State>,
    tokens: &TokenAuthority,
    req: &Request,
    host: &str,
    bearer: &Option<String>,
) -> Response {
    let mut s = state.lock().unwrap();
    let v = s.vaults.entry(host.to_string()).or_default();

    if let Some(b) = &mut v.bucket {
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * b.rate).min(b.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
        } else {
            let wait = if b.rate > 0.0 {
                (1.0 - b.tokens) / b.rate
            } else {
                60.0
            };
            return throttled(Duration::from_secs_f64(wait.max(0.001)), false);
        }
    }

    let challenge = v
        .challenge
        .clone()
        .unwrap_or_else(|| ChallengeResource::Resource(default_resource(host)));
    let tenant = v
        .tenant
        .clone()
        .unwrap_or_else(|| DEFAULT_TENANT.to_string());
    let www = match &challenge {
        ChallengeResource::Resource(r) => format!(
            "Bearer authorization=\"https://login.microsoftonline.com/{tenant}\", resource=\"{r}\""
        ),
        ChallengeResource::Scope(sc) => format!(
            "Bearer authorization=\"https://login.microsoftonline.com/{tenant}\", scope=\"{sc}\""
        ),
    };
    let unauthorized =
        |msg: &str| kv_error(401, "Unauthorized", msg).with_header("WWW-Authenticate", www.clone());
    let Some(token) = bearer else {
        return unauthorized("AKV10000: Request is missing a Bearer or PoP token.");
    };
    let audience = challenge.audience();
    match tokens.check(token, &audience) {
        Ok(_) => {}
        Err(TokenRejection::Unknown) => {
            return unauthorized(&format!(
                "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{tenant}/, found an issuer this service does not trust."
            ));
        }
        Err(TokenRejection::Expired) => {
            return unauthorized("[TokenExpired] Error validating token: 'S2S12086'.");
        }
        Err(TokenRejection::WrongResource { issued_for }) => {
            return unauthorized(&format!(
                "AKV10022: Invalid audience. Expected {audience}, found: {issued_for}."
            ));
        }
    }

    let api_version = req.query("api-version");
    let Some(api_version) = api_version.filter(|a| !a.is_empty()) else {
        return kv_error(
            400,
            "BadParameter",
            "The request URI contains an invalid parameter: api-version is missing.",
        );
    };
    if !API_VERSIONS.contains(&api_version.as_str()) {
        return kv_error(
            400,
            "BadParameter",
            &format!(
                "The specified version ({api_version}) is not recognized. Consider using the latest supported version (2026-04-01)."
            ),
        );
    }

    let path = req.path();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let segs: Vec<&str> = match segs.as_slice() {
        [rest @ .., ""] if rest.len() >= 2 => rest.to_vec(),
        _ => segs,
    };
    if segs.first() != Some(&"secrets") || !(2..=3).contains(&segs.len()) {
        return kv_error(
            404,
            "NotFound",
            &format!("The requested path {path} was not found."),
        );
    }
    if req.method != "GET" {
        return kv_error(
            405,
            "BadRequest",
            &format!("Method {} is not allowed.", req.method),
        );
    }
    let name = segs[1].to_ascii_lowercase();
    if name.is_empty()
        || name.len() > 127
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return kv_error(
            400,
            "BadParameter",
            &format!("The request URI contains an invalid name: {}", segs[1]),
        );
    }
    let vault_name = host.split('.').next().unwrap_or(host).to_string();
    let listing = segs.get(2) == Some(&"versions");
    if v.deny_all || v.denied.contains(&name) {
        let action = if listing { "readMetadata" } else { "getSecret" };
        let body = json!({"error": {
            "code": "Forbidden",
            "message": format!(
                "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: appid=00000000-0000-0000-0000-000000000000;oid=00000000-0000-0000-0000-000000000000;iss=https://sts.windows.net/{tenant}/\r\nAction: 'Microsoft.KeyVault/vaults/secrets/{action}/action'\r\nResource: '/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg/providers/microsoft.keyvault/vaults/{vault_name}/secrets/{name}'\r\nAssignment: (not found)\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\nVault: {vault_name};location=westeurope\r\n"
            ),
            "innererror": {"code": "ForbiddenByRbac"}
        }});
        return with_service_headers(Response::json(403, &body));
    }
    let port = req
        .header("host")
        .and_then(|h| h.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(443);
    let base = format!("https://{host}");
    let not_found = |what: &str| {
        kv_error(
            404,
            "SecretNotFound",
            &format!(
                "A secret with (name/id) {what} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
            ),
        )
    };
    let Some(versions) = v.secrets.get(&name) else {
        return not_found(segs[1]);
    };
    if listing {
        let maxresults = match req.query("maxresults") {
            None => 25,
            Some(m) => match m.parse::<usize>() {
                Ok(n) if (1..=25).contains(&n) => n,
                _ => {
                    return kv_error(
                        400,
                        "BadParameter",
                        &format!("Invalid value for maxresults: {m}. It must be between 1 and 25."),
                    );
                }
            },
        };
        let offset = match req.query("$skiptoken") {
            None => 0,
            Some(t) => match decode_skiptoken(&t) {
                Some(o) => o,
                None => return kv_error(400, "BadParameter", "The skip token is invalid."),
            },
        };
        let page: Vec<Value> = versions
            .iter()
            .skip(offset)
            .take(maxresults)
            .map(|ver| item_json(&base, segs[1], ver, false))
            .collect();
        let next = offset + page.len();
        let next_link = if next < versions.len() {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("api-version", &api_version);
            q.append_pair("$skiptoken", &encode_skiptoken(next));
            if req.query("maxresults").is_some() {
                q.append_pair("maxresults", &maxresults.to_string());
            }
            Value::String(format!(
                "https://{host}:{port}/secrets/{}/versions?{}",
                segs[1],
                q.finish()
            ))
        } else {
            Value::Null
        };
        return with_service_headers(Response::json(
            200,
            &json!({"value": page, "nextLink": next_link}),
        ));
    }
    let found = match segs.get(2) {
        None => versions.last(),
        Some(ver) => versions
            .iter()
            .find(|x| x.version == ver.to_ascii_lowercase()),
    };
    let Some(found) = found else {
        return not_found(&format!("{}/{}", segs[1], segs[2]));
    };
    if !found.value.enabled {
        let body = json!({"error": {
            "code": "Forbidden",
            "message": "Operation get is not allowed on a disabled secret.",
            "innererror": {"code": "SecretDisabled"}
        }});
        return with_service_headers(Response::json(403, &body));
    }
    with_service_headers(Response::json(200, &item_json(&base, segs[1], found, true)))
}

fn item_json(base: &str, name: &str, ver: &Version, bundle: bool) -> Value {
    let mut attributes = serde_json::Map::new();
    attributes.insert("enabled".into(), ver.value.enabled.into());
    if let Some(nbf) = ver.value.nbf {
        attributes.insert("nbf".into(), nbf.into());
    }
    if let Some(exp) = ver.value.exp {
        attributes.insert("exp".into(), exp.into());
    }
    attributes.insert("created".into(), ver.created.into());
    attributes.insert("updated".into(), ver.updated.into());
    attributes.insert("recoveryLevel".into(), "Recoverable+Purgeable".into());
    attributes.insert("recoverableDays".into(), 90.into());
    let mut o = serde_json::Map::new();
    if bundle {
        o.insert("value".into(), ver.value.value.clone().into());
    }
    if let Some(ct) = &ver.value.content_type {
        o.insert("contentType".into(), ct.clone().into());
    }
    o.insert(
        "id".into(),
        format!("{base}/secrets/{name}/{}", ver.version).into(),
    );
    if ver.value.managed {
        o.insert("managed".into(), true.into());
    }
    o.insert("attributes".into(), Value::Object(attributes));
    if !ver.value.tags.is_empty() {
        o.insert("tags".into(), json!(ver.value.tags));
    }
    if bundle && ver.value.managed {
        o.insert(
            "kid".into(),
            format!("{base}/keys/{name}/{}", ver.version).into(),
        );
    }
    Value::Object(o)
}

fn encode_skiptoken(offset: usize) -> String {
    let raw = format!(
        "{{\"NextMarker\":\"2!{}!MDAwMDI1IXNlY3JldC92ZXJzaW9ucyE-\",\"Offset\":{offset}}}",
        random_hex(8)
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_skiptoken(t: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    v.get("Offset")?.as_u64().map(|o| o as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skiptoken_round_trips_and_rejects_garbage() {
        assert_eq!(decode_skiptoken(&encode_skiptoken(25)), Some(25));
        assert_eq!(decode_skiptoken("not a token"), None);
    }

    #[test]
    fn default_resource_follows_the_cloud() {
        assert_eq!(
            default_resource("a.vault.azure.net"),
            "https://vault.azure.net"
        );
        assert_eq!(
            default_resource("a.vault.azure.cn"),
            "https://vault.azure.cn"
        );
        assert_eq!(
            default_resource("a.vault.usgovcloudapi.net"),
            "https://vault.usgovcloudapi.net"
        );
        // A host that is no vault claims the public resource, as an attacker would.
        assert_eq!(
            default_resource("vault.evil.example"),
            "https://vault.azure.net"
        );
    }

    #[test]
    fn secret_values_redact_debug() {
        let d = format!("{:?}", SecretValue::plain("hunter2"));
        assert!(!d.contains("hunter2"), "{d}");
    }
}
