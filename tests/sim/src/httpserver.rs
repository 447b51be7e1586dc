//! A small HTTP/1.1 server shared by the fake Key Vault (over TLS) and the fake IMDS (plain HTTP).
//!
//! Written by hand rather than pulled from a framework so that the fakes control every byte the client sees:
//! they can drop a connection without answering, stall a body, or send a malformed reply, which is exactly
//! what the client's retry and timeout code must survive. One thread per connection, keep-alive, bodies
//! framed by `Content-Length` only (what Key Vault and IMDS clients send).

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// A scripted reply, consumed one per request before the service's normal handling.
///
/// Shared by [`crate::vault::FakeVault::script`] and [`crate::imds::FakeImds::script`]; each service renders
/// [`Reply::Status`] with its own error body format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Handle the request normally (useful to place a scripted reply second in the queue).
    Normal,
    /// Answer with this status and the service's error body for it (e.g. 500, 503, 404, 410).
    Status(u16),
    /// 429 with `Retry-After: <whole seconds>`.
    Throttle {
        /// Value of the header, rounded up to whole seconds.
        retry_after: Duration,
    },
    /// 429 with `Retry-After: <HTTP-date now + retry_after>`.
    ThrottleHttpDate {
        /// Delay from now that the date encodes.
        retry_after: Duration,
    },
    /// Close the connection without sending a byte of the response.
    Drop,
    /// Read the request and never answer: the connection stays open, silent, until the client goes away or
    /// the server stops (a vault or IMDS that accepted the request and hangs).
    Hang,
    /// Handle normally, but send the body only `delay` after the headers.
    SlowBody {
        /// Pause between the header block and the body.
        delay: Duration,
    },
    /// Wait `delay` before handling the request normally (a slow server, for per-try timeouts).
    Delay {
        /// Pause before anything is sent.
        delay: Duration,
    },
    /// Send exactly this status, these headers and this body (for malformed-reply tests).
    Raw {
        /// Status code.
        status: u16,
        /// Extra headers (`Content-Length` is added).
        headers: Vec<(String, String)>,
        /// Body bytes.
        body: Vec<u8>,
    },
}

/// A parsed HTTP request.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target as sent, e.g. `/secrets/c1?api-version=7.4`.
    pub target: String,
    /// Header names and values in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body (empty unless `Content-Length` said otherwise).
    pub body: Vec<u8>,
    /// The TLS server name the client sent (SNI), if any.
    pub sni: Option<String>,
    /// Remote address.
    pub peer: SocketAddr,
}

impl Request {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path part of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Decoded query parameters in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        match self.target.split_once('?') {
            Some((_, q)) => url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            None => Vec::new(),
        }
    }

    /// First decoded query parameter with this name (case-sensitive, as the services are).
    pub fn query(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The `Host` header without any port, lower-cased; falls back to SNI.
    pub fn host(&self) -> Option<String> {
        let h = self
            .header("host")
            .map(str::to_string)
            .or_else(|| self.sni.clone())?;
        let h = match h.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.is_empty() => {
                name
            }
            _ => h.as_str(),
        };
        Some(h.to_ascii_lowercase())
    }
}

/// A response to send.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers other than `Content-Length`, `Date` and `Connection`, which the server adds.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// If set, the server sends the header block, waits this long, then sends the body.
    pub body_delay: Option<Duration>,
}

impl Response {
    /// A JSON response (`Content-Type: application/json; charset=utf-8`).
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![(
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: serde_json::to_vec(value).expect("JSON values serialize"),
            body_delay: None,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// What the handler wants done with a request.
#[derive(Debug)]
pub enum Outcome {
    /// Send this response.
    Respond(Response),
    /// Close the connection without answering.
    Drop,
    /// Keep the connection open without answering until the client closes it or the server stops.
    Hang,
}

/// The request handler a service installs.
pub type Handler = Arc<dyn Fn(&Request) -> Outcome + Send + Sync>;
/// What a completed TLS handshake was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake<'a> {
    /// The SNI name the client sent.
    pub sni: Option<&'a str>,
    /// The client resumed an earlier session (no certificate sent or verified).
    pub resumed: bool,
}

/// Called after every TLS handshake (`Ok`) or with the failure text (`Err`).
pub type HandshakeHook = Arc<dyn Fn(Result<Handshake<'_>, &str>) + Send + Sync>;

type Conns = Arc<Mutex<std::collections::HashMap<u64, TcpStream>>>;

/// A running server; stops accepting and closes open connections on drop.
pub struct HttpServer {
    addr: SocketAddr,
    /// The listening socket (a second handle), shut down on drop to end the accept loop's wait.
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    conns: Conns,
    accept: Option<JoinHandle<()>>,
    stalls: Arc<Stalls>,
}

/// Connections whose TLS handshake the server leaves hanging.
#[derive(Default)]
struct Stalls {
    /// How many of the next connections to stall.
    pending: AtomicU64,
    /// How many were stalled so far.
    stalled: AtomicU64,
}

impl HttpServer {
    /// Binds `bind` and serves each connection on its own thread, over TLS if `tls` is given.
    pub fn start(
        bind: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: Handler,
        on_handshake: Option<HandshakeHook>,
    ) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let handle = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Conns = Arc::default();
        let stalls: Arc<Stalls> = Arc::default();
        let accept = {
            let stop = stop.clone();
            let conns = conns.clone();
            let stalls = stalls.clone();
            std::thread::Builder::new()
                .name(format!("kvvm-sim-accept-{addr}"))
                .spawn(move || {
                    let mut next_id = 0u64;
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let _ = stream.set_nodelay(true);
                        let Ok(clone) = stream.try_clone() else {
                            continue;
                        };
                        next_id += 1;
                        let id = next_id;
                        conns.lock().unwrap().insert(id, clone);
                        let handler = handler.clone();
                        let tls = tls.clone();
                        let hook = on_handshake.clone();
                        let conns = conns.clone();
                        // Only TLS connections have a handshake to stall.
                        let stall = tls.is_some()
                            && stalls
                                .pending
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                        if stall {
                            stalls.stalled.fetch_add(1, Ordering::SeqCst);
                        }
                        let _ = std::thread::Builder::new()
                            .name("kvvm-sim-conn".into())
                            .spawn(move || {
                                if stall {
                                    // Accepted, and the ClientHello is left unanswered.
                                    hang(stream);
                                } else {
                                    serve_connection(stream, tls, handler, hook);
                                }
                                // Close for real: the clone kept for shutdown-on-drop holds the socket open.
                                if let Some(s) = conns.lock().unwrap().remove(&id) {
                                    let _ = s.shutdown(Shutdown::Both);
                                }
                            });
                    }
                })?
        };
        Ok(HttpServer {
            addr,
            listener: handle,
            stop,
            conns,
            accept: Some(accept),
            stalls,
        })
    }

    /// The bound address (useful when binding port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Leaves the TLS handshake of the next `connections` new connections hanging: the server accepts the TCP
    /// connection, reads nothing, answers nothing, until the client goes away or the server stops. (A
    /// handshake comes before any request, so this is per connection, not a scripted [`Reply`].)
    pub fn stall_handshakes(&self, connections: u64) {
        self.stalls.pending.fetch_add(connections, Ordering::SeqCst);
    }

    /// How many connections had their handshake stalled so far.
    pub fn stalled_handshakes(&self) -> u64 {
        self.stalls.stalled.load(Ordering::SeqCst)
    }
}

/// Keeps a connection open and silent until the peer closes it or the server shuts it down; anything the peer
/// sends is read and ignored.
fn hang<S: Read>(mut stream: S) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop wherever the listener is: shutting a listening socket down ends a blocked
        // accept (Linux), also when it listens in another network namespace (a test machine's, gone since),
        // where the connection below could not reach it.
        // SAFETY: shutdown on a socket this server owns; the fd stays open until `listener` drops.
        unsafe {
            libc::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&self.listener),
                libc::SHUT_RDWR,
            );
        }
        let wake = if self.addr.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), self.addr.port())
        } else {
            self.addr
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for (_, s) in self.conns.lock().unwrap().drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn serve_connection(
    mut tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Handler,
    hook: Option<HandshakeHook>,
) {
    let peer = match tcp.peer_addr() {
        Ok(p) => p,
        Err(_) => return,
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(120)));
    match tls {
        None => serve_stream(tcp, None, peer, &handler),
        Some(cfg) => {
            let Ok(mut conn) = rustls::ServerConnection::new(cfg) else {
                return;
            };
            while conn.is_handshaking() {
                if let Err(e) = conn.complete_io(&mut tcp) {
                    if let Some(h) = &hook {
                        h(Err(&e.to_string()));
                    }
                    return;
                }
            }
            let sni = conn.server_name().map(|s| s.to_ascii_lowercase());
            if let Some(h) = &hook {
                h(Ok(Handshake {
                    sni: sni.as_deref(),
                    resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                }));
            }
            serve_stream(rustls::StreamOwned::new(conn, tcp), sni, peer, &handler);
        }
    }
}

fn serve_stream<S: Read + Write>(
    stream: S,
    sni: Option<String>,
    peer: SocketAddr,
    handler: &Handler,
) {
    let mut reader = BufReader::new(stream);
    loop {
        let req = match read_request(&mut reader, sni.clone(), peer) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(_) => {
                let resp = Response {
                    status: 400,
                    headers: vec![],
                    body: b"Bad Request".to_vec(),
                    body_delay: None,
                };
                let _ = write_response(reader.get_mut(), &resp, true);
                return;
            }
        };
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        match handler(&req) {
            Outcome::Drop => return,
            Outcome::Hang => {
                hang(reader);
                return;
            }
            Outcome::Respond(resp) => {
                if write_response(reader.get_mut(), &resp, close).is_err() || close {
                    return;
                }
            }
        }
    }
}

/// At most this many headers per request (more is a 400).
const MAX_HEADERS: usize = 200;

/// Reads one request: the header block line by line up to its empty line (so nothing of a pipelined next
/// request is consumed), parsed by `httparse`, then a `Content-Length` body. `Ok(None)`: the client closed the
/// connection between requests.
fn read_request<R: BufRead>(
    r: &mut R,
    sni: Option<String>,
    peer: SocketAddr,
) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    // Skip blank lines between pipelined requests (RFC 9112 §2.2).
    loop {
        head.clear();
        if r.read_until(b'\n', &mut head)? == 0 {
            return Ok(None);
        }
        if !head.trim_ascii().is_empty() {
            break;
        }
    }
    loop {
        let start = head.len();
        if r.read_until(b'\n', &mut head)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "eof in headers",
            ));
        }
        if matches!(&head[start..], b"\n" | b"\r\n") {
            break;
        }
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("incomplete request head".into())),
        Err(e) => return Err(bad(format!("bad request head: {e}"))),
    }
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| bad("a header value is not UTF-8".into()))
    };
    let method = parsed.method.unwrap_or_default().to_string();
    let target = parsed.path.unwrap_or_default().to_string();
    let headers = parsed
        .headers
        .iter()
        .map(|h| Ok((h.name.to_string(), text(h.value)?.trim().to_string())))
        .collect::<io::Result<Vec<_>>>()?;
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>())
        .transpose()
        .map_err(|_| bad("bad content-length".into()))?
        .unwrap_or(0);
    let mut body = vec![0; len.min(16 << 20)];
    r.read_exact(&mut body)?;
    Ok(Some(Request {
        method,
        target,
        headers,
        body,
        sni,
        peer,
    }))
}

fn write_response<W: Write>(w: &mut W, resp: &Response, close: bool) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Date: {}\r\nContent-Length: {}\r\n",
        httpdate::fmt_http_date(SystemTime::now()),
        resp.body.len()
    ));
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    match resp.body_delay {
        None => {
            let mut all = head.into_bytes();
            all.extend_from_slice(&resp.body);
            w.write_all(&all)?;
        }
        Some(d) => {
            w.write_all(head.as_bytes())?;
            w.flush()?;
            std::thread::sleep(d);
            w.write_all(&resp.body)?;
        }
    }
    w.flush()
}

/// The standard reason phrase for a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// A queue of scripted replies.
#[derive(Default, Debug)]
pub(crate) struct ReplyQueue(VecDeque<Reply>);

impl ReplyQueue {
    pub(crate) fn extend(&mut self, replies: impl IntoIterator<Item = Reply>) {
        self.0.extend(replies);
    }
    pub(crate) fn pop(&mut self) -> Option<Reply> {
        self.0.pop_front()
    }
}

/// `Retry-After` value in whole seconds, rounded up.
pub(crate) fn retry_after_secs(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.to_string()
}

/// `Retry-After` value as an HTTP date `d` from now.
pub(crate) fn retry_after_date(d: Duration) -> String {
    httpdate::fmt_http_date(SystemTime::now() + d)
}

/// Unix seconds now.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `n` random lower-case hex digits.
pub(crate) fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap())
        .collect()
}
