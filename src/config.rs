//! The config file: one YAML document holding Pingora's server keys at the top level
//! and our `lb:`, `dashboard:` and `demo:` sections beside them.
//!
//! The `Raw*` structs are the user's schema (serde, unknown keys refused); [`Config`]
//! is the validated form the code uses. Every error names the key and its line.

mod acme;
mod check;
mod error;
mod etcd;
mod inherit;
mod limits;
mod lines;
mod pools;
mod route_schema;
mod routes;
pub mod rules;
mod schema;
mod unknown;
mod upstreams;
mod validate;

use std::net::SocketAddr;
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use serde::{Deserialize, Serialize};

pub use error::{ConfigError, Problem};
use lines::LineIndex;
pub use pools::{PoolConfig, DEFAULT_POOL};
pub use routes::{
    AccessConfig, ForwardAuthConfig, HeaderEdits, MatchConfig, RouteAction, RouteConfig,
};

/// Selection algorithm (`lb.algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Every upstream in turn, weights ignored.
    RoundRobin,
    /// Smooth weighted round robin over the base weights.
    Weighted,
    /// Smooth weighted round robin over weights scaled by measured latency.
    #[default]
    Dynamic,
    /// Power of two choices by latency × load.
    P2c,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::Weighted => "weighted",
            Algorithm::Dynamic => "dynamic",
            Algorithm::P2c => "p2c",
        }
    }

    /// Whether it weighs upstreams by measured latency (and so sidelines slow
    /// ones).
    pub fn is_latency_aware(self) -> bool {
        matches!(self, Algorithm::Dynamic | Algorithm::P2c)
    }
}

/// Session affinity (`lb.sticky.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StickyMode {
    #[default]
    Off,
    Cookie,
    Ip,
}

impl StickyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StickyMode::Off => "off",
            StickyMode::Cookie => "cookie",
            StickyMode::Ip => "ip",
        }
    }
}

// ---------------------------------------------------------------------------
// The validated form.

/// The whole validated file.
#[derive(Debug, Clone)]
pub struct Config {
    pub lb: LbConfig,
    pub dashboard: DashboardConfig,
    pub demo: Option<DemoConfig>,
}

impl Config {
    /// Every address this balancer listens on: the proxy's, the HTTPS ones
    /// and the dashboard's. No upstream may be one of them.
    pub fn own_addrs(&self) -> Vec<SocketAddr> {
        let mut own = self.lb.listen.clone();
        own.extend(self.lb.tls.iter().flat_map(|t| t.listen.iter().copied()));
        own.push(self.dashboard.listen);
        own
    }
}

#[derive(Debug, Clone)]
pub struct LbConfig {
    pub listen: Vec<SocketAddr>,
    /// HTTP/2 with prior knowledge on the plain listeners, beside HTTP/1.1.
    pub h2c: bool,
    /// `lb.proxy_protocol.trusted`: the peers whose connections begin with
    /// a PROXY protocol header (v1 or v2) carrying the client's address;
    /// None: off.
    pub proxy_protocol: Option<Vec<ipnet::IpNet>>,
    pub tls: Option<TlsConfig>,
    /// Peers whose forwarding headers (`X-Forwarded-*`, `X-Real-IP`,
    /// `Forwarded`) are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub discovery: DiscoveryConfig,
    /// `lb.timeouts`: the `default` pool's, and the frontend's bound on a
    /// closing HTTP/2 connection's streams.
    pub timeouts: TimeoutsConfig,
    /// Every pool; the first is `default` (`lb.upstreams` with `lb`'s
    /// policy keys), empty when the file names none and routes do not use it.
    pub pools: Vec<PoolConfig>,
    /// First match wins; without `lb.routes`, one catch-all to `default`.
    pub routes: Vec<RouteConfig>,
    pub limits: LimitsConfig,
    /// Per-client request rate (`lb.rate_limit`); None: off.
    pub rate_limit: Option<RateLimitConfig>,
    /// Where the access log goes (`lb.access_log.path`, "-": stdout); None: off.
    pub access_log: Option<String>,
    /// The fleet's shared store (`lb.etcd`); None: this instance stands alone.
    pub etcd: Option<EtcdConfig>,
}

/// `lb.etcd`: where the fleet keeps its upstreams, overrides and instances.
#[derive(Clone, PartialEq)]
pub struct EtcdConfig {
    /// `host:port` or `http://host:port`, as etcd-client takes them.
    pub endpoints: Vec<String>,
    /// Every key lives under it; ends with `/`.
    pub prefix: String,
    /// This instance's name under `{prefix}instances/`.
    pub id: String,
    /// etcd's user and password, if it has authentication on.
    pub auth: Option<(String, String)>,
    /// TLS to etcd (`lb.etcd.tls`), read at load.
    pub tls: Option<EtcdTls>,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("id", &self.id)
            .field("user", &self.auth.as_ref().map(|(u, _)| u))
            .field("tls", &self.tls)
            .finish()
    }
}

/// `lb.etcd.tls: { ca, cert, key }` as PEM: the CA that signs etcd's
/// certificate, and a client certificate if etcd asks for one.
#[derive(Clone, PartialEq)]
pub struct EtcdTls {
    pub ca: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

/// `lb.rate_limit`: requests a client address may make.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Sustained requests per second.
    pub requests_per_sec: f64,
    /// Requests it may make at once after a quiet spell (at least
    /// `requests_per_sec`).
    pub burst: f64,
}

/// Limits on what a client may send (`lb.limits`).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Request line plus headers; larger requests get 431.
    pub max_header_bytes: u64,
    /// Request body; larger bodies get 413.
    pub max_body: u64,
    /// How long a request header may take to arrive whole, from the
    /// connection's start (whole seconds).
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection waits for its next request.
    pub keepalive_timeout: Duration,
    /// Client connections open at once on the proxy listeners; more are
    /// closed at once.
    pub max_connections: usize,
    /// Whether the file sets `max_connections` (else it is the default, and
    /// fitting it to the open-file limit is no news).
    pub max_connections_set: bool,
    /// Of those, how many one client address may hold; also how many
    /// requests it may have in flight at once, HTTP/2 streams included.
    pub max_connections_per_client: usize,
    /// How long a write to a client may wait (nginx's `send_timeout`): a
    /// client, or an HTTP/2 stream, that stops reading is cut after it.
    pub send_timeout: Duration,
    /// Upstreams one pool may hold, from every source together.
    pub max_upstreams: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// The `dns:` or `srv:` entry it was discovered from, if any.
    pub group: Option<String>,
    /// SRV priority within its group: lower is preferred; 0 otherwise.
    pub priority: u16,
    /// How to speak to it.
    pub protocol: UpstreamProtocol,
}

impl UpstreamConfig {
    /// A plain HTTP/1.1 upstream named by the operator (config or admin API).
    pub fn new(name: impl Into<String>, addr: SocketAddr, weight: u32) -> Self {
        UpstreamConfig {
            name: name.into(),
            addr,
            weight,
            group: None,
            priority: 0,
            protocol: UpstreamProtocol::default(),
        }
    }
}

/// How an upstream is spoken to: HTTP/2 (`h2: true`, h2c without TLS) and
/// TLS (`tls:`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamProtocol {
    pub h2: bool,
    pub tls: Option<UpstreamTls>,
}

/// `tls: { sni, verify, ca }` of an upstream.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// The name sent by SNI and checked against its certificate.
    pub sni: String,
    /// Verify its certificate (against `ca`, or the system's roots); off only
    /// when `verify: false` is written out.
    pub verify: bool,
    pub ca_path: Option<std::path::PathBuf>,
    /// `ca`'s certificates, loaded with the config.
    pub ca: Option<std::sync::Arc<pingora::protocols::tls::CaType>>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        (&self.sni, self.verify, &self.ca_path) == (&other.sni, other.verify, &other.ca_path)
    }
}

/// Where a discovered group's members come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverySource {
    /// `dns: "host:port"`: one upstream per A/AAAA record, on `port`.
    Dns { host: String, port: u16 },
    /// `srv: "_svc._tcp.domain"`: targets, ports, weights and priorities.
    Srv { name: String },
}

impl DiscoverySource {
    /// `dns` or `srv`: the label of its metrics and events.
    pub fn kind(&self) -> &'static str {
        match self {
            DiscoverySource::Dns { .. } => "dns",
            DiscoverySource::Srv { .. } => "srv",
        }
    }
}

impl std::fmt::Display for DiscoverySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoverySource::Dns { host, port } => write!(f, "{host}:{port}"),
            DiscoverySource::Srv { name } => f.write_str(name),
        }
    }
}

/// An upstream entry with `dns:` or `srv:`: a group whose members follow DNS.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveredGroup {
    pub name: String,
    pub source: DiscoverySource,
    /// Each member's weight (`dns:`); SRV records carry their own.
    pub weight: u32,
    /// How each member is spoken to.
    pub protocol: UpstreamProtocol,
}

/// `lb.discovery`.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Name servers to ask; empty means the system's (`/etc/resolv.conf`).
    pub resolvers: Vec<SocketAddr>,
    /// Re-resolve at least this often (sooner when the answer's TTL is shorter).
    pub refresh: Duration,
}

#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: usize,
    pub unhealthy_threshold: usize,
}

/// What a failed attempt may be retried on (`lb.retry_on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    /// The connection could not be made (any method: nothing was sent).
    pub connect: bool,
    /// The connection broke before an answer (idempotent requests only).
    pub reset: bool,
    /// Answers with these statuses (idempotent requests only).
    pub statuses: Vec<u16>,
}

/// `lb.retry_budget`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    pub ratio: f64,
    pub min_per_sec: f64,
}

/// `lb.concurrency`: overload protection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConcurrencyConfig {
    /// Each upstream's concurrency limit is learned from its latency; a
    /// request finding every upstream at its limit waits in a short queue.
    pub adaptive: bool,
    /// The longest a request waits there before its 503 (zero: none).
    pub queue_timeout: Duration,
}

/// `lb.outlier`: failure-rate ejection (Envoy's outlier detection).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierConfig {
    /// Ejected when at least this share of its attempts failed in an interval.
    pub failure_rate: f64,
    /// Attempts an upstream needs in an interval to be judged.
    pub min_requests: u64,
    pub interval: Duration,
    /// The first ejection's length; each repeat doubles it.
    pub ejection_time: Duration,
    /// At most this share of the upstreams out at once; 0 turns ejection off.
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub fail_threshold: u32,
    pub open_time: Duration,
    pub max_open_time: Duration,
    pub failure_status: Vec<u16>,
}

#[derive(Debug, Clone)]
pub struct DynamicWeightsConfig {
    pub half_life: Duration,
    pub interval: Duration,
    pub min_factor: f64,
}

#[derive(Debug, Clone)]
pub struct StickyConfig {
    pub mode: StickyMode,
    pub cookie_name: String,
    pub max_age: Duration,
    /// From `lb.sticky.secret`, else `HLB_STICKY_SECRET` (read by [`Config::load`]).
    pub secret: Option<String>,
}

/// Sticky secrets shorter than this are refused.
pub const MIN_SECRET_LEN: usize = 16;

/// Environment variable that may hold the sticky secret.
pub const SECRET_ENV: &str = "HLB_STICKY_SECRET";

#[derive(Debug, Clone)]
pub struct TimeoutsConfig {
    pub connect: Duration,
    pub read: Duration,
}

/// `lb.tls`: the HTTPS listeners.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    /// Picked by SNI against the names each carries; the first is the default.
    pub certificates: Vec<CertificatePaths>,
    /// Offer HTTP/2 by ALPN beside HTTP/1.1.
    pub http2: bool,
    pub min_version: TlsVersion,
    /// The plain listeners answer 308 to `https://`.
    pub redirect_http: bool,
    /// Client certificates asked for, verified against a CA.
    pub client_auth: Option<crate::tls::client_cert::ClientAuth>,
    /// Certificates ordered and renewed by ACME.
    pub acme: Option<crate::acme::AcmeConfig>,
}

pub use crate::tls::pem::CertificatePaths;

/// The lowest TLS version a client may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub listen: SocketAddr,
    pub admin_token: Option<String>,
    /// Host names the dashboard answers to, besides IP addresses and
    /// `localhost` (lowercase): other names are refused, so a DNS-rebinding
    /// page cannot read it.
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub backends: Vec<DemoBackend>,
    pub traffic_rps: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct DemoBackend {
    pub name: String,
    pub port: u16,
    pub error_rate: f64,
    pub latency_ms: u64,
    pub jitter_ms: u64,
    pub healthy: bool,
}

impl Config {
    /// Reads and validates `path`; also checks Pingora's own keys in the same file.
    pub fn load(path: &str) -> Result<(Config, ServerConf), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::single("", format!("cannot read {path}: {e}"), None))?;
        let (mut config, server) = Self::parse(&text)?;
        if let Ok(secret) = std::env::var(SECRET_ENV) {
            if secret.len() < MIN_SECRET_LEN {
                return Err(ConfigError::single(
                    SECRET_ENV,
                    format!("must be at least {MIN_SECRET_LEN} bytes"),
                    None,
                ));
            }
            for pool in &mut config.lb.pools {
                pool.sticky.secret.get_or_insert_with(|| secret.clone());
            }
        }
        Ok((config, server))
    }

    /// Parses and validates a whole config file's text.
    pub fn parse(text: &str) -> Result<(Config, ServerConf), ConfigError> {
        let server: ServerConf =
            serde_yaml::from_str(text).map_err(|e| ConfigError::from_serde_in(e, Some(text)))?;
        let server = server
            .validate()
            .map_err(|e| ConfigError::single("", e.to_string(), None))?;
        let index = LineIndex::new(text);
        let top_level = validate::check_top_level(&index);
        let (raw, unknown_keys) = unknown::read(text, &index).map_err(|mut e| {
            e.problems.extend(top_level.clone());
            e.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            e
        })?;
        let mut c = check::Checker {
            index: &index,
            problems: unknown_keys,
        };
        c.problems.extend(top_level);
        let config = validate::validate(raw, &mut c);
        inherit::once(&mut c.problems);
        if c.problems.is_empty() {
            Ok((config, server))
        } else {
            c.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            Err(ConfigError {
                problems: c.problems,
            })
        }
    }
}

/// One upstream entry given as JSON outside the file (an etcd value): the
/// fields of an `lb.upstreams` entry without its name, checked as the file's
/// are. Only `addr` entries: DNS groups come from the file.
pub fn upstream_entry(name: &str, json: &[u8]) -> Result<UpstreamConfig, String> {
    let mut value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    let Some(fields) = value.as_object_mut() else {
        return Err(
            "expected an object such as {\"addr\": \"10.0.0.7:8080\", \"weight\": 1}".into(),
        );
    };
    if fields.contains_key("name") {
        return Err("`name` is the key's last part; leave it out of the value".into());
    }
    fields.insert("name".into(), name.into());
    let raw: schema::RawUpstream = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if raw.addr.is_none() {
        return Err("needs `addr` (ip:port); dns and srv entries belong in the config file".into());
    }
    let index = LineIndex::new("");
    let mut c = check::Checker {
        index: &index,
        problems: Vec::new(),
    };
    let (mut upstreams, _) = upstreams::upstreams("lb", std::slice::from_ref(&raw), true, &mut c);
    if let Some(p) = c.problems.first() {
        let key = p
            .key
            .trim_start_matches("lb.upstreams[0]")
            .trim_start_matches('.');
        return Err(if key.is_empty() {
            p.message.clone()
        } else {
            format!("{key}: {}", p.message)
        });
    }
    upstreams.pop().ok_or_else(|| "no upstream in it".into())
}

#[cfg(test)]
mod tests;
