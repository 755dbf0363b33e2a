//! Certificates ordered and renewed by ACME (RFC 8555, on `instant-acme`):
//! `schedule` says when (two thirds into a certificate's life, backing off
//! after failures), `order` talks to the ACME server, `challenges` answers
//! its HTTP-01 and TLS-ALPN-01 checks, `store` keeps the account and
//! certificates (a directory, or etcd for a fleet, where one instance orders
//! under a lock and the others serve what it stored), and `service` runs it.

pub mod challenges;
pub mod order;
pub mod schedule;
pub mod service;
pub mod store;

use std::path::PathBuf;

/// `lb.tls.acme`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The ACME server's directory URL.
    pub directory: String,
    pub email: Option<String>,
    /// Lower-case; one certificate carries them all.
    pub domains: Vec<String>,
    pub challenge: Challenge,
    pub storage: Storage,
    /// A CA to trust for the ACME server itself (a private one: step-ca,
    /// Pebble); else the system's roots.
    pub directory_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// Answered on the plain listeners (the server connects to port 80).
    Http01,
    /// Answered in the TLS handshake (port 443).
    TlsAlpn01,
}

/// Where the account and certificates are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    Dir(PathBuf),
    /// Under `{prefix}acme/` of `lb.etcd`.
    Etcd,
}

/// Where a certificate's renewal stands, for the dashboard.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub domains: Vec<String>,
    pub directory: String,
    /// The certificate's issuer (its common name), once there is one.
    pub issuer: Option<String>,
    /// Seconds since the Unix epoch.
    pub not_after: Option<i64>,
    /// When it is renewed, seconds since the Unix epoch.
    pub renew_at: Option<i64>,
    /// `ok`, `failed`, or `served` (stored by another instance of the fleet).
    pub last_result: Option<String>,
    pub last_error: Option<String>,
    /// When the last order ended, seconds since the Unix epoch.
    pub last_at: Option<f64>,
    /// When the next attempt is due after a failure.
    pub retry_at: Option<f64>,
}
