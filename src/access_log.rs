//! The access log (`lb.access_log`): one JSON object per request, written off
//! the request path. The proxy hands each request's [`Record`] to a bounded
//! channel without waiting (a full channel drops the line and counts it); a
//! background service formats and writes them, and reopens its file on
//! SIGUSR1 or once it has been moved away, so logrotate needs no
//! `copytruncate`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::mpsc;

/// Records the channel holds before lines are dropped.
pub const CAPACITY: usize = 16_384;

/// How often the file is flushed and checked for having been moved.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How often the writer takes what has queued up. It sleeps in between rather
/// than waiting on the queue, so that handing a record over never has to wake
/// it (measured: waking it for each request cost more than the rest of the
/// log together).
const DRAIN_EVERY: Duration = Duration::from_millis(25);

/// What one request's phases learn for its log line (and its request id,
/// logged or not).
#[derive(Debug, Default)]
pub struct RequestInfo {
    pub started: Option<std::time::Instant>,
    pub request_id: crate::trace::RequestId,
    /// Tries made (a fresh connection after a stale pooled one counts).
    pub attempts: u32,
    /// The last try's time to its response header.
    pub upstream_ms: Option<f64>,
    pub sticky: Option<crate::sticky::StickyResult>,
}

impl RequestInfo {
    /// The record of a finished request. `status` is 0 when nothing was answered.
    pub fn record(
        &self,
        req: &pingora::http::RequestHeader,
        client: Option<IpAddr>,
        status: u16,
        upstream: Option<&str>,
        bytes: usize,
        now: std::time::Instant,
    ) -> Record {
        let host = req
            .uri
            .host()
            .or_else(|| req.headers.get("host").and_then(|h| h.to_str().ok()))
            .unwrap_or("");
        Record {
            time: SystemTime::now(),
            client,
            method: req.method.as_str().to_string(),
            host: host.to_string(),
            path: req.uri.path().to_string(),
            status,
            upstream: upstream.map(str::to_string),
            attempts: self.attempts,
            duration_ms: self
                .started
                .map(|t| round_ms(now.saturating_duration_since(t)))
                .unwrap_or(0.0),
            upstream_ms: self.upstream_ms,
            bytes,
            request_id: self.request_id.to_string(),
            sticky: self.sticky.map(|s| s.as_str()),
            route: None,
            pool: None,
        }
    }
}

/// Milliseconds with three decimals.
pub fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// One request, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// RFC 3339, milliseconds, UTC (formatted by the writer).
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub client: Option<IpAddr>,
    pub method: String,
    pub host: String,
    /// The path, without the query (which often carries secrets).
    pub path: String,
    /// 0 when the client went away before any answer.
    pub status: u16,
    /// The upstream of the last try, if any was made.
    pub upstream: Option<String>,
    pub attempts: u32,
    pub duration_ms: f64,
    /// Time to the last try's response header.
    pub upstream_ms: Option<f64>,
    /// Response body bytes sent to the client.
    pub bytes: usize,
    pub request_id: String,
    /// `hit`, `new`, `moved` or `invalid` with sticky sessions on.
    pub sticky: Option<&'static str>,
    /// The route the request took (None: no route matched) and its pool.
    pub route: Option<String>,
    pub pool: Option<String>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// The request path's end of the log.
#[derive(Debug)]
pub struct AccessLog {
    path: String,
    tx: mpsc::Sender<Record>,
    rx: Mutex<Option<mpsc::Receiver<Record>>>,
    dropped: IntCounter,
}

impl AccessLog {
    /// A log to `path` ("-": stdout); `dropped` counts lines lost to a full
    /// channel.
    pub fn new(path: &str, dropped: IntCounter) -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        AccessLog {
            path: path.to_string(),
            tx,
            rx: Mutex::new(Some(rx)),
            dropped,
        }
    }

    /// Hands `record` to the writer; never waits.
    pub fn log(&self, record: Record) {
        if self.tx.try_send(record).is_err() {
            self.dropped.inc();
        }
    }
}

/// Where lines go.
enum Output {
    Stdout(std::io::Stdout),
    File {
        path: PathBuf,
        out: BufWriter<File>,
        /// Device and inode opened: a different one at `path` means it moved.
        id: (u64, u64),
    },
}

impl Output {
    fn open(path: &str) -> std::io::Result<Output> {
        if path == "-" {
            return Ok(Output::Stdout(std::io::stdout()));
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let meta = file.metadata()?;
        Ok(Output::File {
            path: PathBuf::from(path),
            out: BufWriter::with_capacity(64 * 1024, file),
            id: (meta.dev(), meta.ino()),
        })
    }

    fn write(&mut self, record: &Record) {
        fn line(mut w: impl Write, record: &Record) -> std::io::Result<()> {
            serde_json::to_writer(&mut w, record)?;
            w.write_all(b"\n")
        }
        let written = match self {
            Output::Stdout(s) => line(s.lock(), record),
            Output::File { out, .. } => line(out, record),
        };
        if let Err(e) = written {
            log::warn!("access log: {e}");
        }
    }

    fn flush(&mut self) {
        let flushed = match self {
            Output::Stdout(s) => s.lock().flush(),
            Output::File { out, .. } => out.flush(),
        };
        if let Err(e) = flushed {
            log::warn!("access log: {e}");
        }
    }

    /// Whether the file at our path is no longer the one written to.
    fn moved(&self) -> bool {
        match self {
            Output::Stdout(_) => false,
            Output::File { path, id, .. } => std::fs::metadata(path)
                .map(|m| (m.dev(), m.ino()) != *id)
                .unwrap_or(true),
        }
    }

    /// Opens the path afresh; on failure keeps writing where it was.
    fn reopen(&mut self) {
        let Output::File { path, .. } = self else {
            return;
        };
        let path = path.display().to_string();
        self.flush();
        match Output::open(&path) {
            Ok(next) => *self = next,
            Err(e) => log::warn!("access log: cannot reopen {path}: {e}"),
        }
    }
}

/// Writes the log; a Pingora background service.
pub struct AccessLogService {
    log: Arc<AccessLog>,
}

impl AccessLogService {
    pub fn new(log: Arc<AccessLog>) -> Self {
        AccessLogService { log }
    }
}

#[async_trait]
impl BackgroundService for AccessLogService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut rx) = self.log.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let mut out = match Output::open(&self.log.path) {
            Ok(o) => o,
            Err(e) => {
                log::error!("access log: cannot open {}: {e}", self.log.path);
                return;
            }
        };
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
        let mut check = tokio::time::interval(CHECK_EVERY);
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = drain.tick() => {
                    let mut wrote = false;
                    while let Ok(r) = rx.try_recv() {
                        out.write(&r);
                        wrote = true;
                    }
                    if wrote {
                        out.flush();
                    }
                }
                Some(()) = async { usr1.as_mut()?.recv().await } => out.reopen(),
                _ = check.tick() => {
                    out.flush();
                    if out.moved() {
                        out.reopen();
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        // What the last requests left in the channel.
        while let Ok(r) = rx.try_recv() {
            out.write(&r);
        }
        out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH,
            client: Some([127, 0, 0, 1].into()),
            method: "GET".into(),
            host: "example.test".into(),
            path: format!("/{n}"),
            status: 200,
            upstream: Some("a".into()),
            attempts: 1,
            duration_ms: 1.5,
            upstream_ms: Some(1.2),
            bytes: 10,
            request_id: "id".into(),
            sticky: None,
            route: Some("api".into()),
            pool: Some("api".into()),
        }
    }

    #[test]
    fn a_full_channel_drops_and_counts_instead_of_waiting() {
        let dropped = IntCounter::new("t", "t").unwrap();
        let log = AccessLog::new("-", dropped.clone());
        for n in 0..CAPACITY + 5 {
            log.log(record(n));
        }
        assert_eq!(dropped.get(), 5);
    }

    #[test]
    fn lines_are_json_and_a_moved_file_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut out = Output::open(path.to_str().unwrap()).unwrap();
        out.write(&record(1));
        out.flush();
        assert!(!out.moved());
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        assert!(out.moved());
        out.reopen();
        out.write(&record(2));
        out.flush();
        let old = std::fs::read_to_string(dir.path().join("access.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(old.trim()).unwrap();
        assert_eq!(v["path"], "/1");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(new.trim()).unwrap()["path"],
            "/2"
        );
    }
}
