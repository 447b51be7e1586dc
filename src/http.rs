//! The one place that knows how kvvm speaks HTTP: `ureq` over `rustls` with the ring provider (the smallest in
//! code and in pages touched; P-521 keys from Key Vault are matched without it, see [`crate::certificate`]),
//! trusting the operating system's certificate store only, with one named [`RetryPolicy`] per service. There is deliberately no switch that turns certificate checks off.
//!
//! Two routes exist: [`Route::Direct`] for the identity endpoints (IMDS and Azure Arc must never be reached
//! through a proxy) and [`Route::Environment`] for Key Vault, which honours `HTTPS_PROXY` / `NO_PROXY` the way
//! curl does. An [`ureq::Agent`] keeps connections alive, so a poll cycle costs one TLS handshake per vault.
//!
//! [`retry`] is the one retry loop: the identity and vault modules only classify each answer ([`Verdict`]).
//! Every attempt has a deadline that covers connect, TLS, headers and body (the policy's per-try limit, or less
//! when the caller's [`Deadline`] is nearer), so a server that accepts a connection and never answers costs
//! one per-try limit, never a stalled worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::CertificateDer;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// What a request may cost, for one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Limit for one attempt: connect, send, and read the whole response.
    pub per_try_timeout: Duration,
    /// Wait before the first retry; each further retry doubles it (with jitter).
    pub first_backoff: Duration,
    /// Longest wait between two attempts, unless the server's `Retry-After` asks for more.
    pub max_backoff: Duration,
    /// No new attempt starts once this much time has passed since the first.
    pub total: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// IMDS and Azure Arc: retried on 404, 410, 429 and 5xx. IMDS answers 410 for up to 70 s while it is being
    /// updated, so the budget is longer than that: a token fetch runs on its own thread with this budget and
    /// is not bounded by the deadline of the check that needed it (see the `identity` module).
    /// Enough attempts that even the shortest jittered waits add up to more than those 70 s.
    pub const IDENTITY: RetryPolicy = RetryPolicy {
        per_try_timeout: Duration::from_secs(10),
        first_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(16),
        total: Duration::from_secs(100),
        max_attempts: 16,
    };

    /// Key Vault: retried on 408, 429 and 5xx and on connection failures, as the Azure SDKs do. A try gets
    /// 20 s; the whole check is bounded by [`CHECK_DEADLINE`] as well.
    pub const VAULT: RetryPolicy = RetryPolicy {
        per_try_timeout: Duration::from_secs(20),
        first_backoff: Duration::from_millis(800),
        max_backoff: Duration::from_secs(30),
        total: CHECK_DEADLINE,
        max_attempts: 5,
    };

    /// The wait before retry number `retry` (1 for the first retry): exponential, capped, with "equal jitter"
    /// (between half and all of the exponential value) so clients that failed together do not retry together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .first_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        let capped = exp.min(self.max_backoff);
        let half = capped / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// The wait before retry number `retry` given the server's `Retry-After`, which is never undercut.
    pub fn wait(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.backoff(retry);
        match retry_after {
            Some(after) => after.max(backoff),
            None => backoff,
        }
    }

    /// Whether another attempt, after waiting `wait`, still fits the policy.
    pub fn allows(&self, attempts_made: u32, started: Instant, wait: Duration) -> bool {
        attempts_made < self.max_attempts && started.elapsed() + wait <= self.total
    }
}

/// How long one certificate check may take in all: every attempt, every wait between them and the wait for a
/// token included. Well under any polling interval, so a vault that hangs costs a cycle one minute per
/// certificate at most, and the other certificates go on meanwhile.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(60);

/// The instant by which something must be over, and how long it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    start: Instant,
    end: Instant,
}

impl Deadline {
    /// A deadline `length` from now.
    pub fn after(length: Duration) -> Deadline {
        let start = Instant::now();
        Deadline {
            start,
            end: start + length,
        }
    }

    /// The instant it passes.
    pub fn instant(self) -> Instant {
        self.end
    }

    /// Time left (zero once passed).
    pub fn left(self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    /// Whether it has passed.
    pub fn passed(self) -> bool {
        Instant::now() >= self.end
    }

    /// Time since it was set.
    pub fn elapsed(self) -> Duration {
        self.start.elapsed()
    }

    /// How long it was given, in whole seconds (rounded), for messages.
    pub fn seconds(self) -> u64 {
        ((self.end - self.start) + Duration::from_millis(500)).as_secs()
    }
}

/// What one attempt came to, as the service that made it judges the answer.
#[derive(Debug)]
pub(crate) enum Verdict<T, E, L> {
    /// The result.
    Done(T),
    /// A final answer that retrying cannot change.
    Fail(E),
    /// A transient failure: try again after the policy's backoff, never sooner than `retry_after`.
    Retry {
        /// What this attempt saw, for the message if it was the last.
        last: L,
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// A step of the protocol (an authentication challenge answered): ask again at once. It counts as an
    /// attempt but waits for nothing.
    Again,
}

/// Why [`retry`] ended without a result.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended<E, L> {
    /// The service said the answer was final.
    Failed(E),
    /// The policy's attempts or its total budget ran out, each attempt failing transiently.
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time since the first.
        elapsed: Duration,
        /// What the last one saw.
        last: L,
    },
    /// The caller's deadline came before a result: no attempt or wait runs past it.
    TimedOut {
        /// Attempts made.
        attempts: u32,
        /// Time since the first.
        elapsed: Duration,
        /// What the last one saw (`None` if none failed transiently).
        last: Option<L>,
    },
    /// A stop was requested.
    Stopped,
}

/// One attempt inside [`retry`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attempt {
    number: u32,
    per_try: Duration,
    started: Instant,
    deadline: Deadline,
}

impl Attempt {
    /// 1 for the first attempt.
    pub(crate) fn number(&self) -> u32 {
        self.number
    }

    /// The time this attempt's request may take, counted from now: the policy's per-try limit, or what is
    /// left before the deadline if that is less (never zero, so a request always gets a clean timeout error).
    pub(crate) fn timeout(&self) -> Duration {
        self.per_try
            .min(self.deadline.left())
            .max(Duration::from_millis(1))
    }

    /// The deadline of the whole operation (for waits inside an attempt, such as for a token).
    pub(crate) fn deadline(&self) -> Deadline {
        self.deadline
    }

    /// Time since the first attempt started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The retry loop every service uses: calls `attempt` until it gives a result or a final failure, waiting
/// between transient failures as `policy` says (never less than the server's `Retry-After`), and stops when
/// the policy's attempts or budget run out, when the next wait would pass `deadline`, or when `stop` is raised.
/// `what` names the operation in the log line written before each retry.
pub(crate) fn retry<T, E, L: std::fmt::Display>(
    what: &dyn std::fmt::Display,
    policy: &RetryPolicy,
    deadline: Deadline,
    stop: &Stop,
    mut attempt: impl FnMut(&Attempt) -> Verdict<T, E, L>,
) -> Result<T, Ended<E, L>> {
    let started = Instant::now();
    let mut number = 0u32;
    let mut last = None;
    loop {
        if stop.requested() {
            return Err(Ended::Stopped);
        }
        if deadline.passed() {
            return Err(Ended::TimedOut {
                attempts: number,
                elapsed: started.elapsed(),
                last,
            });
        }
        number += 1;
        let this = Attempt {
            number,
            per_try: policy.per_try_timeout,
            started,
            deadline,
        };
        let (seen, retry_after) = match attempt(&this) {
            Verdict::Done(value) => return Ok(value),
            Verdict::Fail(e) => return Err(Ended::Failed(e)),
            Verdict::Again => continue,
            Verdict::Retry { last, retry_after } => (last, retry_after),
        };
        let wait = policy.wait(number, retry_after);
        if wait >= deadline.left() {
            return Err(Ended::TimedOut {
                attempts: number,
                elapsed: started.elapsed(),
                last: Some(seen),
            });
        }
        if !policy.allows(number, started, wait) {
            return Err(Ended::GaveUp {
                attempts: number,
                elapsed: started.elapsed(),
                last: seen,
            });
        }
        log::info!("{what}: {seen}; retrying in {} ms", wait.as_millis());
        last = Some(seen);
        if !stop.pause(wait) {
            return Err(Ended::Stopped);
        }
    }
}

/// Whether traffic may go through a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Never through a proxy (IMDS, Azure Arc): a proxy would see the token, and IMDS refuses proxied requests.
    Direct,
    /// [`Route::Direct`] for a plain `http://` endpoint (IMDS and Azure Arc are): no trust store is loaded.
    DirectPlain,
    /// Through the proxy the environment names (`ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY`; `NO_PROXY` exempts
    /// hosts), as curl and the Azure SDKs do.
    Environment,
}

/// Largest response body kvvm reads. A secret is at most 25 KiB in Key Vault; a token reply a few KiB.
pub(crate) const BODY_LIMIT: u64 = 1024 * 1024;

/// Why a request got no HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The host name does not resolve.
    Dns,
    /// No connection could be made (refused, unreachable, or the connect timed out).
    Connect,
    /// The TLS handshake failed (typically: the server's certificate is not trusted).
    Tls,
    /// Connected, but no complete answer arrived in time.
    Timeout,
    /// The connection broke, or the answer was not valid HTTP.
    Broken,
    /// The answer's body is larger than [`BODY_LIMIT`].
    TooLarge,
}

impl FailureKind {
    /// A short fixed name (`dns`, `connect`, `tls`, `timeout`, `broken`, `too-large`), e.g. a metrics label.
    pub(crate) fn code(self) -> &'static str {
        match self {
            FailureKind::Dns => "dns",
            FailureKind::Connect => "connect",
            FailureKind::Tls => "tls",
            FailureKind::Timeout => "timeout",
            FailureKind::Broken => "broken",
            FailureKind::TooLarge => "too-large",
        }
    }

    /// Whether trying again may help.
    pub(crate) fn is_transient(self) -> bool {
        !matches!(self, FailureKind::Tls | FailureKind::TooLarge)
    }
}

/// A request that got no usable HTTP answer.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{detail}")]
pub(crate) struct Failure {
    /// What went wrong.
    pub kind: FailureKind,
    /// The transport's own description (never contains request headers).
    pub detail: String,
}

/// Errors setting up HTTP.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The operating system's trust store has no usable certificate.
    #[error(
        "no trusted root certificates found in the operating system's store ({detail}); install the \
         ca-certificates package, or point SSL_CERT_FILE / SSL_CERT_DIR at a CA bundle"
    )]
    NoTrustedRoots { detail: String },
}

impl HttpError {
    /// A short fixed reason for the status file.
    pub fn reason(&self) -> &'static str {
        match self {
            HttpError::NoTrustedRoots { .. } => "no-trusted-roots",
        }
    }
}

/// An HTTP answer, whatever its status.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    /// The status code.
    pub status: u16,
    /// The `WWW-Authenticate` header.
    pub www_authenticate: Option<String>,
    /// The `Retry-After` header, parsed relative to when the answer arrived.
    pub retry_after: Option<Duration>,
    /// The body (at most [`BODY_LIMIT`] bytes).
    pub body: Vec<u8>,
}

/// The operating system's trusted roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` override the default locations),
/// read each time an agent is built (once per worker, and again when it drops its idle connections), so an
/// updated trust store is picked up and no second copy stays in memory.
fn os_roots() -> Result<Vec<CertificateDer<'static>>, String> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        Err(if errors.is_empty() {
            "the store is empty".to_string()
        } else {
            errors.join("; ")
        })
    } else {
        Ok(found.certs)
    }
}

/// An agent for one service. Keep it for the life of the worker: it holds the connection pool.
pub(crate) fn agent(route: Route, policy: &RetryPolicy) -> Result<ureq::Agent, HttpError> {
    let roots = match route {
        Route::DirectPlain => Vec::new(),
        Route::Direct => os_roots().unwrap_or_default(),
        Route::Environment => os_roots().map_err(|detail| HttpError::NoTrustedRoots { detail })?,
    };
    let certs: Vec<Certificate<'static>> = roots
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    drop(roots);
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::new_with_certs(&certs))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    let proxy = match route {
        Route::Direct | Route::DirectPlain => None,
        Route::Environment => ureq::Proxy::try_from_env(),
    };
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(tls)
        .proxy(proxy)
        .user_agent(concat!("kvvm/", env!("CARGO_PKG_VERSION")))
        .timeout_global(Some(policy.per_try_timeout))
        .timeout_connect(Some(policy.per_try_timeout.min(CONNECT_TIMEOUT)))
        .max_idle_connections_per_host(CONNECTIONS_PER_HOST)
        .max_idle_connections(MAX_IDLE_CONNECTIONS)
        // Servers close idle connections within minutes; keeping them longer only holds memory.
        .max_idle_age(MAX_IDLE_AGE)
        // Key Vault and IMDS send about 1 KiB of headers and bodies of a few KiB (read in a stream into a
        // capped buffer), so ureq's 128 KiB buffers would only cost memory: a TLS connection holds two pairs
        // of them (one over TCP, one over the TLS stream), kept while it waits in the pool. The input buffer
        // holds the response head (at most 8 KiB); rustls reads and writes TLS records through the TCP pair
        // in pieces.
        .max_response_header_size(8 * 1024)
        .input_buffer_size(8 * 1024)
        // The request head carries the bearer token (a managed identity's is 1.5–3 KiB).
        .output_buffer_size(8 * 1024)
        .build();
    Ok(ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        CachedResolver::default(),
    ))
}

/// How long a name's addresses are reused before it is looked up again.
const NAME_TTL: Duration = Duration::from_secs(30);

/// ureq's resolver, with the answers kept for [`NAME_TTL`]. ureq resolves the host before it looks in its pool
/// for an idle connection, and with a timeout set its resolver starts a thread for every lookup: a request on
/// a pooled connection cost a thread and a `getaddrinfo` (`/etc/hosts`, `nsswitch.conf`, the nscd socket)
/// each time, most of a cycle's CPU. Only successful lookups are kept, so a name that fails is asked again
/// on the next try; a name whose addresses change (a private endpoint moved) is followed within
/// [`NAME_TTL`]. (`ureq::unversioned` is outside ureq's semver promise: Cargo.lock pins the version.)
#[derive(Debug, Default)]
struct CachedResolver {
    lookup: ureq::unversioned::resolver::DefaultResolver,
    known: Mutex<HashMap<String, (Instant, ureq::unversioned::resolver::ResolvedSocketAddrs)>>,
}

impl ureq::unversioned::resolver::Resolver for CachedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let key = uri
            .authority()
            .map(|a| format!("{}|{a}", uri.scheme_str().unwrap_or_default()))
            .unwrap_or_default();
        let known = |map: &mut HashMap<_, (Instant, _)>| {
            map.retain(|_, (at, _): &mut (Instant, _)| at.elapsed() < NAME_TTL);
            map.get(&key).map(|(_, addrs)| addrs).cloned()
        };
        if let Some(addrs) = known(&mut self.known.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(addrs);
        }
        let addrs = self.lookup.resolve(uri, config, timeout)?;
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

/// Connections a poll cycle opens to one host at most (`sync` keeps to it), and so the idle ones kept
/// per host: the next round or cycle reuses them instead of handshaking again.
pub const CONNECTIONS_PER_HOST: usize = 4;
/// Idle connections kept overall (several vaults).
pub(crate) const MAX_IDLE_CONNECTIONS: usize = 32;
/// How long an idle connection is kept for the next request.
pub(crate) const MAX_IDLE_AGE: Duration = Duration::from_secs(300);

/// One GET that may take `timeout` in all (connect, TLS handshake, response headers and body): the answer,
/// whatever its status, or why there was none.
pub(crate) fn get(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Reply, Failure> {
    // The agent's own limit is the policy's per-try limit. A request-level configuration only when less is
    // left: ureq 3.5 builds a new rustls configuration (with an empty session cache) for every connection a
    // request-level configuration opens, so using one always would end TLS session resumption.
    let agent_limit = agent.config().timeouts().global;
    let mut request = if agent_limit.is_some_and(|limit| timeout >= limit) {
        agent.get(url)
    } else {
        agent
            .get(url)
            .config()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(CONNECT_TIMEOUT)))
            .build()
    };
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request
        .call()
        .map_err(|e| failure(e, timeout, "no answer"))?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let www_authenticate = header("www-authenticate");
    let retry_after = header("retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT)
        .read_to_vec()
        .map_err(|e| failure(e, timeout, "the headers came, but not the whole body"))?;
    Ok(Reply {
        status,
        www_authenticate,
        retry_after,
        body,
    })
}

/// A connection attempt gets at most this long, even when the try has more.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Seconds (or milliseconds, under one second) for messages.
fn human(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{} s", (d + Duration::from_millis(500)).as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// `stage` says how far the request got when a timeout cut it off.
fn failure(e: ureq::Error, timeout: Duration, stage: &str) -> Failure {
    use ureq::Error as E;
    let kind = match &e {
        E::HostNotFound => FailureKind::Dns,
        E::ConnectionFailed => FailureKind::Connect,
        E::Timeout(ureq::Timeout::Resolve) => FailureKind::Dns,
        E::Timeout(ureq::Timeout::Connect) => FailureKind::Connect,
        E::Timeout(_) => FailureKind::Timeout,
        E::Rustls(_) | E::Tls(_) | E::Pem(_) => FailureKind::Tls,
        E::BodyExceedsLimit(_) => FailureKind::TooLarge,
        E::Io(io) => io_kind(io),
        _ => FailureKind::Broken,
    };
    let detail = match kind {
        FailureKind::Timeout => format!("{stage} within {} ({e})", human(timeout)),
        _ => e.to_string(),
    };
    Failure { kind, detail }
}

fn io_kind(io: &std::io::Error) -> FailureKind {
    use std::io::ErrorKind as K;
    if io
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
    {
        return FailureKind::Tls;
    }
    // std reports getaddrinfo failures as uncategorised errors with this text.
    if io.to_string().contains("failed to lookup address") {
        return FailureKind::Dns;
    }
    match io.kind() {
        K::ConnectionRefused | K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
            FailureKind::Connect
        }
        K::TimedOut | K::WouldBlock => FailureKind::Timeout,
        K::InvalidData if io.to_string().contains("certificate") => FailureKind::Tls,
        _ => FailureKind::Broken,
    }
}

/// Parses `Retry-After`: delta-seconds or an HTTP date (RFC 9110 §10.2.3). A date in the past means "now".
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    // HTTP dates have whole-second resolution: round up so the wait is never shorter than asked.
    Some(
        at.duration_since(now)
            .map(|d| {
                if d.subsec_nanos() > 0 {
                    Duration::from_secs(d.as_secs() + 1)
                } else {
                    d
                }
            })
            .unwrap_or_default(),
    )
}

/// A stop request shared by the worker's threads: waits end as soon as it is raised (a condition variable, so a
/// thread waiting out a `Retry-After` sleeps until then rather than waking to look).
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<StopFlag>);

#[derive(Debug, Default)]
struct StopFlag {
    raised: AtomicBool,
    lock: std::sync::Mutex<()>,
    woken: std::sync::Condvar,
}

impl Stop {
    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.0.raised.load(Ordering::Relaxed)
    }

    /// Raises the flag and ends every [`Stop::pause`] under way.
    pub fn request(&self) {
        self.0.raised.store(true, Ordering::Relaxed);
        let _held = self.0.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.0.woken.notify_all();
    }

    /// Sleeps `how_long` unless a stop is requested first; returns false if it was.
    pub fn pause(&self, how_long: Duration) -> bool {
        let deadline = Instant::now() + how_long;
        let mut held = self.0.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // Read under the lock `request` takes before it wakes us: a request cannot slip between the test
            // and the wait.
            if self.requested() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            held = self
                .0
                .woken
                .wait_timeout(held, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(7)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_never_undercuts_retry_after() {
        let p = RetryPolicy::VAULT;
        for retry in 1..10 {
            let b = p.backoff(retry);
            let exp = p.first_backoff * (1 << (retry - 1));
            let cap = exp.min(p.max_backoff);
            assert!(b >= cap / 2 && b <= cap, "retry {retry}: {b:?} vs {cap:?}");
        }
        for after in [0u64, 1, 5, 60, 300] {
            let after = Duration::from_secs(after);
            assert!(p.wait(1, Some(after)) >= after);
        }
    }

    #[test]
    fn budget_counts_attempts_and_time() {
        let p = RetryPolicy::VAULT;
        let start = Instant::now();
        assert!(p.allows(1, start, Duration::from_secs(1)));
        assert!(!p.allows(p.max_attempts, start, Duration::ZERO));
        assert!(!p.allows(1, start, p.total + Duration::from_secs(1)));
    }

    /// A quick policy for the loop's tests: waits of 10–20 ms unless a `Retry-After` asks for more.
    const QUICK: RetryPolicy = RetryPolicy {
        per_try_timeout: Duration::from_secs(5),
        first_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(20),
        total: Duration::from_secs(30),
        max_attempts: 50,
    };

    type Scripted = Verdict<&'static str, &'static str, String>;

    fn retryable(n: u32) -> Scripted {
        Verdict::Retry {
            last: format!("failure {n}"),
            retry_after: None,
        }
    }

    #[test]
    fn two_retryable_failures_then_success() {
        let mut calls = Vec::new();
        let out = retry(
            &"test",
            &QUICK,
            Deadline::after(Duration::from_secs(30)),
            &Stop::default(),
            |a| {
                calls.push(a.number());
                if a.number() < 3 {
                    retryable(a.number())
                } else {
                    Verdict::Done("token")
                }
            },
        );
        assert_eq!(out, Ok("token"));
        assert_eq!(calls, [1, 2, 3]);
    }

    #[test]
    fn a_final_failure_stops_at_once() {
        let mut calls = 0;
        let out: Result<&str, _> = retry(
            &"test",
            &QUICK,
            Deadline::after(Duration::from_secs(30)),
            &Stop::default(),
            |_| {
                calls += 1;
                Verdict::<&str, &str, String>::Fail("forbidden")
            },
        );
        assert_eq!(out, Err(Ended::Failed("forbidden")));
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_challenge_step_is_asked_again_at_once_and_counted() {
        let mut calls = Vec::new();
        let out = retry(
            &"test",
            &QUICK,
            Deadline::after(Duration::from_secs(30)),
            &Stop::default(),
            |a| {
                calls.push(a.number());
                if a.number() == 1 {
                    Verdict::Again
                } else {
                    Verdict::<_, &str, String>::Done("secret")
                }
            },
        );
        assert_eq!(out, Ok("secret"));
        assert_eq!(calls, [1, 2]);
    }

    #[test]
    fn the_policy_gives_up_after_its_attempts_with_the_last_failure() {
        let out: Result<&str, _> = retry(
            &"test",
            &RetryPolicy {
                max_attempts: 4,
                ..QUICK
            },
            Deadline::after(Duration::from_secs(30)),
            &Stop::default(),
            |a| retryable(a.number()),
        );
        match out {
            Err(Ended::GaveUp { attempts, last, .. }) => {
                assert_eq!((attempts, last.as_str()), (4, "failure 4"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_is_never_undercut_by_the_loop() {
        let mut starts = Vec::new();
        let out = retry(
            &"test",
            &QUICK,
            Deadline::after(Duration::from_secs(30)),
            &Stop::default(),
            |a| {
                starts.push(Instant::now());
                if a.number() == 1 {
                    Verdict::Retry {
                        last: "429".to_string(),
                        retry_after: Some(Duration::from_millis(400)),
                    }
                } else {
                    Verdict::<_, &str, String>::Done("ok")
                }
            },
        );
        assert_eq!(out, Ok("ok"));
        assert!(starts[1] - starts[0] >= Duration::from_millis(400));
    }

    #[test]
    fn the_deadline_stops_new_attempts_and_bounds_each_try() {
        let deadline = Deadline::after(Duration::from_millis(300));
        let mut tries = Vec::new();
        let out: Result<&str, _> = retry(&"test", &QUICK, deadline, &Stop::default(), |a| {
            let now = Instant::now();
            tries.push((now, a.timeout()));
            // Each attempt "hangs" for its whole timeout, as a server that never answers makes it.
            std::thread::sleep(a.timeout().min(Duration::from_millis(100)));
            retryable(a.number())
        });
        match out {
            Err(Ended::TimedOut {
                attempts,
                last: Some(last),
                ..
            }) => {
                assert_eq!(attempts as usize, tries.len());
                assert_eq!(last, format!("failure {attempts}"));
            }
            other => panic!("{other:?}"),
        }
        assert!(tries.len() >= 2, "{tries:?}");
        assert!((tries.len() as u32) < QUICK.max_attempts);
        for (started, timeout) in &tries {
            assert!(
                *started < deadline.instant(),
                "an attempt began after the deadline"
            );
            assert!(
                *started + *timeout <= deadline.instant() + Duration::from_millis(1),
                "a try may run past the deadline: {timeout:?}"
            );
            assert!(*timeout <= QUICK.per_try_timeout);
        }
    }

    #[test]
    fn a_retry_after_beyond_the_deadline_ends_the_loop_without_waiting_for_it() {
        let mut calls = 0;
        let out: Result<&str, _> = retry(
            &"test",
            &QUICK,
            Deadline::after(Duration::from_secs(2)),
            &Stop::default(),
            |_| -> Scripted {
                calls += 1;
                Verdict::Retry {
                    last: "429".to_string(),
                    retry_after: Some(Duration::from_secs(600)),
                }
            },
        );
        assert!(
            matches!(out, Err(Ended::TimedOut { attempts: 1, .. })),
            "{out:?}"
        );
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_stop_ends_the_loop() {
        let stop = Stop::default();
        let out: Result<&str, _> = retry(
            &"test",
            &QUICK,
            Deadline::after(Duration::from_secs(30)),
            &stop,
            |a| {
                if a.number() == 2 {
                    stop.request();
                }
                retryable(a.number())
            },
        );
        assert_eq!(out, Err(Ended::Stopped));
    }

    #[test]
    fn the_identity_budget_rides_out_70_seconds_of_410() {
        // Even if every jittered wait comes out at its shortest (half the exponential value), the attempts the
        // policy allows keep going for longer than IMDS answers 410 while it updates.
        let p = RetryPolicy::IDENTITY;
        let shortest: Duration = (1..p.max_attempts)
            .map(|retry| (p.first_backoff * (1 << (retry - 1).min(16))).min(p.max_backoff) / 2)
            .sum();
        assert!(shortest > Duration::from_secs(70), "{shortest:?}");
        assert!(p.total > Duration::from_secs(70));
        assert!(RetryPolicy::VAULT.per_try_timeout < CHECK_DEADLINE);
    }

    #[test]
    fn stop_cuts_a_pause_short() {
        let stop = Stop::default();
        assert!(stop.pause(Duration::from_millis(1)));
        stop.request();
        let t = Instant::now();
        assert!(!stop.pause(Duration::from_secs(60)));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_stop_from_another_thread_ends_a_pause_under_way() {
        let stop = Stop::default();
        let other = stop.clone();
        let t = Instant::now();
        let raiser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.request();
        });
        assert!(!stop.pause(Duration::from_secs(600)));
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the pause ran its course"
        );
        raiser.join().unwrap();
    }
}
