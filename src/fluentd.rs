//! Log records to a Fluentd (or Fluent Bit) collector with the Forward protocol, as the original extension's
//! `loggingSettings: {"logger": "fluentd", ...}` does. The collector is optional infrastructure: a down or slow
//! collector must never block or crash the worker, so records go through a bounded queue to one sender thread,
//! and what does not fit is dropped and counted (the count is written to the file log).
//!
//! Wire format (Forward protocol v1, Message mode): `[tag, EventTime, record, {"chunk": id}]`, where EventTime
//! is msgpack ext type 0 holding big-endian u32 seconds and u32 nanoseconds. The collector answers
//! `{"ack": id}`; a record is sent again on a new connection until it is acknowledged.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

/// How many records wait for the collector at most; beyond that new records are dropped.
pub const QUEUE_CAPACITY: usize = 1024;
/// Per-operation network timeout: connect, write, and waiting for an ack.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Attempts per record before it is dropped (so one poisonous record cannot wedge the queue).
const SEND_ATTEMPTS: u32 = 5;
/// Log target of this module's own records, which are never forwarded (the collector is what is failing).
pub(crate) const LOG_TARGET: &str = "kvvm::fluentd";

/// Where to send, and the tag (`servicename`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluentdConfig {
    /// The collector's host name or address.
    pub host: String,
    /// The collector's TCP port.
    pub port: u16,
    /// The tag of every record (the `servicename` setting).
    pub tag: String,
}

/// One log record as sent to the collector.
#[derive(Debug, Clone)]
struct Entry {
    at: SystemTime,
    level: &'static str,
    message: String,
}

/// Counters shared with the sender thread, for the file log and for tests.
#[derive(Debug, Default)]
pub struct FluentdStats {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub connects: AtomicU64,
}

/// A `log::Log` that forwards records to Fluentd without ever blocking the caller.
pub struct FluentdLogger {
    queue: SyncSender<Entry>,
    level: LevelFilter,
    stats: Arc<FluentdStats>,
}

impl FluentdLogger {
    /// Starts the sender thread. Nothing is connected until the first record arrives.
    pub fn start(config: FluentdConfig, level: LevelFilter) -> FluentdLogger {
        let (queue, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let stats = Arc::new(FluentdStats::default());
        let thread_stats = Arc::clone(&stats);
        thread::Builder::new()
            .name("fluentd".into())
            .spawn(move || Sender::new(config, thread_stats).run(rx))
            .expect("spawning a thread");
        FluentdLogger {
            queue,
            level,
            stats,
        }
    }

    /// The logger's counters (records sent, acknowledged, dropped), shared with its sender thread.
    pub fn stats(&self) -> Arc<FluentdStats> {
        Arc::clone(&self.stats)
    }
}

impl Log for FluentdLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // Our own complaints about the collector go to the file log only.
        metadata.level() <= self.level && metadata.target() != LOG_TARGET
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let entry = Entry {
            at: SystemTime::now(),
            level: record.level().as_str(),
            message: record.args().to_string(),
        };
        match self.queue.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush(&self) {}
}

impl simplelog::SharedLogger for FluentdLogger {
    fn level(&self) -> LevelFilter {
        self.level
    }

    fn config(&self) -> Option<&simplelog::Config> {
        None
    }

    fn as_log(self: Box<Self>) -> Box<dyn Log> {
        self
    }
}

struct Sender {
    config: FluentdConfig,
    stats: Arc<FluentdStats>,
    stream: Option<TcpStream>,
    backoff: Duration,
    chunk_counter: u64,
    reported_drops: u64,
}

impl Sender {
    fn new(config: FluentdConfig, stats: Arc<FluentdStats>) -> Sender {
        Sender {
            config,
            stats,
            stream: None,
            backoff: BACKOFF_MIN,
            chunk_counter: 0,
            reported_drops: 0,
        }
    }

    fn run(mut self, rx: Receiver<Entry>) {
        loop {
            let entry = match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(entry) => entry,
                Err(RecvTimeoutError::Timeout) => {
                    self.report_drops();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            self.deliver(&entry);
            self.report_drops();
        }
    }

    /// Sends one record until acknowledged, reconnecting with backoff; drops it after `SEND_ATTEMPTS`.
    fn deliver(&mut self, entry: &Entry) {
        self.chunk_counter += 1;
        let chunk = format!("kvvm-{}-{}", std::process::id(), self.chunk_counter);
        let frame = encode(&self.config.tag, entry, &chunk);
        for _ in 0..SEND_ATTEMPTS {
            match self.try_send(&frame, &chunk) {
                Ok(()) => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    self.backoff = BACKOFF_MIN;
                    return;
                }
                Err(_) => {
                    self.stream = None;
                    thread::sleep(self.backoff);
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn try_send(&mut self, frame: &[u8], chunk: &str) -> io::Result<()> {
        if self.stream.is_none() {
            self.stream = Some(self.connect()?);
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(frame)?;
        read_ack(stream, chunk)
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let addrs: Vec<SocketAddr> = (self.config.host.as_str(), self.config.port)
            .to_socket_addrs()?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
                Ok(stream) => {
                    stream.set_write_timeout(Some(IO_TIMEOUT))?;
                    stream.set_read_timeout(Some(IO_TIMEOUT))?;
                    let _ = stream.set_nodelay(true);
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Notes dropped records in the file log (not in Fluentd, which is the thing that is failing).
    fn report_drops(&mut self) {
        let dropped = self.stats.dropped.load(Ordering::Relaxed);
        if dropped > self.reported_drops {
            log::warn!(
                target: LOG_TARGET,
                "{} log record(s) could not be sent to Fluentd at {}:{} and were dropped",
                dropped - self.reported_drops,
                self.config.host,
                self.config.port
            );
            self.reported_drops = dropped;
        }
    }
}

/// Encodes `[tag, EventTime, {"level", "message", "pid"}, {"chunk": id}]`.
fn encode(tag: &str, entry: &Entry, chunk: &str) -> Vec<u8> {
    use rmp::encode::*;
    let mut buf = Vec::with_capacity(64 + entry.message.len());
    let since = entry.at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = u32::try_from(since.as_secs()).unwrap_or(u32::MAX);
    // Writing to a Vec cannot fail.
    let _ = write_array_len(&mut buf, 4);
    let _ = write_str(&mut buf, tag);
    let _ = write_ext_meta(&mut buf, 8, 0);
    buf.extend_from_slice(&seconds.to_be_bytes());
    buf.extend_from_slice(&since.subsec_nanos().to_be_bytes());
    let _ = write_map_len(&mut buf, 3);
    let _ = write_str(&mut buf, "level");
    let _ = write_str(&mut buf, entry.level);
    let _ = write_str(&mut buf, "message");
    let _ = write_str(&mut buf, &entry.message);
    let _ = write_str(&mut buf, "pid");
    let _ = write_uint(&mut buf, u64::from(std::process::id()));
    let _ = write_map_len(&mut buf, 1);
    let _ = write_str(&mut buf, "chunk");
    let _ = write_str(&mut buf, chunk);
    buf
}

/// Reads the collector's `{"ack": id}` answer and checks it acknowledges `chunk`.
fn read_ack(stream: &mut TcpStream, chunk: &str) -> io::Result<()> {
    let mut buf = Vec::with_capacity(64);
    let mut piece = [0u8; 256];
    loop {
        let n = stream.read(&mut piece)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "collector closed the connection",
            ));
        }
        buf.extend_from_slice(&piece[..n]);
        match parse_ack(&buf) {
            Some(ack) if ack == chunk => return Ok(()),
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "ack for another chunk",
                ));
            }
            None if buf.len() > 4096 => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "bad ack"));
            }
            None => {}
        }
    }
}

/// The chunk id of a Fluentd Forward acknowledgement (`{"ack": id}`, msgpack): a map of string keys to string
/// values; `None` until the bytes hold a whole one, or if they are something else.
pub fn parse_ack(bytes: &[u8]) -> Option<String> {
    use rmp::decode::{read_map_len, read_str_from_slice};
    let mut rest = bytes;
    let entries = read_map_len(&mut rest).ok()?;
    for _ in 0..entries {
        let (key, after_key) = read_str_from_slice(rest).ok()?;
        let (value, after_value) = read_str_from_slice(after_key).ok()?;
        if key == "ack" {
            return Some(value.to_string());
        }
        rest = after_value;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_time_is_ext_zero_with_seconds_and_nanos() {
        let entry = Entry {
            // 500 ns: Windows' clock counts in 100 ns steps.
            at: UNIX_EPOCH + Duration::new(1_700_000_000, 500),
            level: "INFO",
            message: "m".into(),
        };
        let frame = encode("akvvm_service", &entry, "c1");
        // fixarray(4), fixstr "akvvm_service", then fixext8 (0xd7) type 0.
        assert_eq!(frame[0], 0x94);
        let at = 1 + 1 + "akvvm_service".len();
        assert_eq!(&frame[at..at + 2], &[0xd7, 0x00]);
        assert_eq!(&frame[at + 2..at + 6], &1_700_000_000u32.to_be_bytes());
        assert_eq!(&frame[at + 6..at + 10], &500u32.to_be_bytes());
    }

    #[test]
    fn ack_parsing() {
        let mut buf = Vec::new();
        rmp::encode::write_map_len(&mut buf, 1).unwrap();
        rmp::encode::write_str(&mut buf, "ack").unwrap();
        rmp::encode::write_str(&mut buf, "kvvm-1-2").unwrap();
        assert_eq!(parse_ack(&buf).as_deref(), Some("kvvm-1-2"));
        assert_eq!(parse_ack(&buf[..buf.len() - 1]), None);
    }

    #[test]
    fn acks_in_other_shapes() {
        use rmp::encode::*;
        let map = |entries: &[(&[u8], &[u8])]| {
            let mut buf = Vec::new();
            write_map_len(&mut buf, entries.len() as u32).unwrap();
            for (key, value) in entries {
                buf.extend_from_slice(key);
                buf.extend_from_slice(value);
            }
            buf
        };
        let s = |text: &str| {
            let mut buf = Vec::new();
            write_str(&mut buf, text).unwrap();
            buf
        };
        // Other string entries first, and the long str8 form: found.
        let long = "k".repeat(40);
        assert_eq!(
            parse_ack(&map(&[(&s("x"), &s("y")), (&s("ack"), &s(&long))])).as_deref(),
            Some(long.as_str())
        );
        // The first "ack" counts.
        assert_eq!(
            parse_ack(&map(&[(&s("ack"), &s("a")), (&s("ack"), &s("b"))])).as_deref(),
            Some("a")
        );
        // No ack, a value that is not a string, a key that is not valid UTF-8, not a map: none.
        assert_eq!(parse_ack(&map(&[])), None);
        assert_eq!(parse_ack(&map(&[(&s("x"), &s("y"))])), None);
        assert_eq!(
            parse_ack(&map(&[(&s("x"), &[0x01]), (&s("ack"), &s("a"))])),
            None
        );
        assert_eq!(parse_ack(&map(&[(&s("ack"), &[0x01])])), None);
        assert_eq!(parse_ack(&map(&[(&[0xa1, 0xff], &s("a"))])), None);
        assert_eq!(parse_ack(&s("ack")), None);
        assert_eq!(parse_ack(&[]), None);
    }
}
