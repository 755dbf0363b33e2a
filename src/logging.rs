//! The process's logger: env_logger with one filter in front. Pingora logs
//! every client that goes away in the middle of its request header at ERROR;
//! that is the client's doing, and an attack makes tens of thousands of such
//! lines, so they are logged at debug and counted in
//! `hlb_client_header_aborts_total` instead. Pingora's connection pool also
//! logs at ERROR when a pooled connection it wanted was still held by its
//! idle watcher; it opens a new one instead, so that is logged at debug. And
//! a new process (`-u`) waiting for the running one's sockets is waiting,
//! not failing: logged at info.

use std::sync::LazyLock;

use log::{Level, Log, Metadata, Record};
use prometheus::IntCounter;

/// Clients that went away (or broke the connection) mid-header.
pub fn header_aborts() -> &'static IntCounter {
    static COUNTER: LazyLock<IntCounter> = LazyLock::new(|| {
        IntCounter::new(
            "hlb_client_header_aborts_total",
            "Client connections that ended in the middle of a request header",
        )
        .expect("metric")
    });
    &COUNTER
}

/// Whether a log record is Pingora reporting a client that went away while
/// its request header was being read (`handle_new_request`).
pub fn is_header_abort(level: Level, target: &str, message: &str) -> bool {
    level == Level::Error
        && ((target.starts_with("pingora_proxy")
            && message.starts_with("Fail to proxy:")
            && message.contains(", downstream session type:"))
            // An HTTP/2 client that left before or during its preface.
            || (target.starts_with("pingora_core") && message.starts_with("H2 handshake error")))
}

/// Whether a log record is Pingora's pool missing a pooled connection still
/// held by its idle watcher (harmless: it connects afresh).
pub fn is_pool_miss(level: Level, target: &str, message: &str) -> bool {
    level == Level::Error
        && target.starts_with("pingora_core::connectors")
        && message == "failed to acquire reusable stream"
}

/// Whether a log record is a new process (`-u`) still waiting for the
/// running one to hand its sockets over.
pub fn is_handover_wait(level: Level, target: &str, message: &str) -> bool {
    level == Level::Error
        && target.starts_with("pingora_core::server::transfer_fd")
        && message.starts_with("No incoming socket transfer")
}

struct Filtered {
    inner: env_logger::Logger,
}

impl Log for Filtered {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if record.level() == Level::Error && record.target().starts_with("pingora_") {
            let message = record.args().to_string();
            if is_handover_wait(record.level(), record.target(), &message) {
                self.inner.log(
                    &Record::builder()
                        .level(Level::Info)
                        .target(record.target())
                        .args(format_args!(
                            "waiting for the running process to hand its sockets over"
                        ))
                        .build(),
                );
                return;
            }
            let abort = is_header_abort(record.level(), record.target(), &message);
            if abort || is_pool_miss(record.level(), record.target(), &message) {
                if abort {
                    header_aborts().inc();
                }
                let debug = Metadata::builder()
                    .level(Level::Debug)
                    .target(record.target())
                    .build();
                if self.inner.enabled(&debug) {
                    self.inner.log(
                        &Record::builder()
                            .metadata(debug)
                            .args(format_args!("{message}"))
                            .module_path(record.module_path())
                            .file(record.file())
                            .line(record.line())
                            .build(),
                    );
                }
                return;
            }
        }
        self.inner.log(record);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the logger (`RUST_LOG`, default `info`).
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Filtered { inner })).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pingoras_mid_header_aborts_are_quieted() {
        let abort = "Fail to proxy: Downstream ConnectionClosed context: while reading request headers, downstream session type: HTTP/1.1";
        assert!(is_header_abort(Level::Error, "pingora_proxy", abort));
        assert!(!is_header_abort(Level::Warn, "pingora_proxy", abort));
        assert!(!is_header_abort(Level::Error, "hybrid_lb::proxy", abort));
        let upstream =
            "Fail to proxy: Upstream ConnectRefused, status: 502, tries: 1, retry: false, GET /";
        assert!(!is_header_abort(Level::Error, "pingora_proxy", upstream));
        let h2 = "H2 handshake error connection error detected: frame with invalid size";
        assert!(is_header_abort(Level::Error, "pingora_core::apps", h2));
        assert!(!is_header_abort(
            Level::Error,
            "pingora_core::connectors",
            "failed to acquire reusable stream"
        ));
        assert!(is_pool_miss(
            Level::Error,
            "pingora_core::connectors",
            "failed to acquire reusable stream"
        ));
        assert!(!is_pool_miss(
            Level::Error,
            "pingora_core::connectors",
            "other"
        ));
        assert!(is_handover_wait(
            Level::Error,
            "pingora_core::server::transfer_fd",
            "No incoming socket transfer, sleep 1s and try again"
        ));
        assert!(!is_handover_wait(
            Level::Error,
            "pingora_core::server::transfer_fd",
            "Error accepting socket transfer: EBADF"
        ));
    }
}
