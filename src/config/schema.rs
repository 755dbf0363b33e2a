//! The user's schema: what the YAML file may hold, as serde reads it. Unknown
//! keys are refused; defaults live here. Validation into the types the code uses
//! is `validate.rs`'s job.

use serde::Deserialize;

pub(super) use super::route_schema::*;
use super::{Algorithm, StickyMode, TlsVersion};

#[derive(Debug, Deserialize)]
pub(super) struct RawFile {
    pub lb: RawLb,
    #[serde(default)]
    pub dashboard: RawDashboard,
    pub demo: Option<RawDemo>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLb {
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    #[serde(default)]
    pub h2c: bool,
    pub proxy_protocol: Option<RawProxyProtocol>,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub discovery: RawDiscovery,
    #[serde(default)]
    pub health_check: RawHealthCheck,
    #[serde(default)]
    pub circuit_breaker: RawBreaker,
    #[serde(default)]
    pub outlier: RawOutlier,
    #[serde(default)]
    pub dynamic_weights: RawDynamicWeights,
    #[serde(default)]
    pub sticky: RawSticky,
    #[serde(default = "default_retries")]
    pub retries: i64,
    #[serde(default = "default_slow_start")]
    pub slow_start: String,
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RawRetryOn>,
    #[serde(default)]
    pub retry_budget: RawRetryBudget,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub concurrency: RawConcurrency,
    #[serde(default)]
    pub limits: RawLimits,
    pub rate_limit: Option<RawRateLimit>,
    pub access_log: Option<RawAccessLog>,
    pub etcd: Option<RawEtcd>,
    /// Named pools, each with `lb`'s policy keys merged under its own (see
    /// `inherit.rs`).
    #[serde(default)]
    pub pools: std::collections::BTreeMap<String, RawPool>,
    pub routes: Option<Vec<RawRoute>>,
}

/// One named pool: its upstreams and every policy key, `lb`'s where the
/// pool gives none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub health_check: RawHealthCheck,
    #[serde(default)]
    pub circuit_breaker: RawBreaker,
    #[serde(default)]
    pub outlier: RawOutlier,
    #[serde(default)]
    pub dynamic_weights: RawDynamicWeights,
    #[serde(default)]
    pub sticky: RawSticky,
    #[serde(default = "default_retries")]
    pub retries: i64,
    #[serde(default = "default_slow_start")]
    pub slow_start: String,
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RawRetryOn>,
    #[serde(default)]
    pub retry_budget: RawRetryBudget,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub concurrency: RawConcurrency,
    /// A named pool's own (`lb.proxy_protocol` is the listeners'): the
    /// PROXY protocol header its upstreams are sent, `v1` or `v2`.
    pub proxy_protocol: Option<String>,
}

/// The policy keys a pool takes from `lb` when it does not give them.
pub(super) const POLICY_KEYS: [&str; 12] = [
    "algorithm",
    "health_check",
    "circuit_breaker",
    "outlier",
    "dynamic_weights",
    "sticky",
    "retries",
    "slow_start",
    "retry_on",
    "retry_budget",
    "timeouts",
    "concurrency",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcd {
    pub endpoints: Vec<String>,
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    pub id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<RawEtcdTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcdTls {
    pub ca: String,
    pub cert: Option<String>,
    pub key: Option<String>,
}

pub(super) fn default_etcd_prefix() -> String {
    "/hybrid-lb/".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccessLog {
    pub path: String,
}

/// A size: bytes as an integer, or a string such as `32KiB`, `10MB`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    pub max_header_bytes: RawSize,
    pub max_body: RawSize,
    pub header_timeout: String,
    pub keepalive_timeout: String,
    pub max_connections: i64,
    pub max_connections_per_client: i64,
    pub send_timeout: String,
    pub max_upstreams: i64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_header_bytes: RawSize::Text("32KiB".into()),
            max_body: RawSize::Text("10MiB".into()),
            header_timeout: "10s".into(),
            keepalive_timeout: "60s".into(),
            max_connections: 10_000,
            max_connections_per_client: 1_000,
            send_timeout: "60s".into(),
            max_upstreams: 10_000,
        }
    }
}

pub(super) fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8080".into()]
}
/// `connect`, `reset`, or a status.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawRetryOn {
    Status(i64),
    Word(String),
}

pub(super) fn default_retry_on() -> Vec<RawRetryOn> {
    vec![
        RawRetryOn::Word("connect".into()),
        RawRetryOn::Word("reset".into()),
        RawRetryOn::Status(502),
        RawRetryOn::Status(503),
        RawRetryOn::Status(504),
    ]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRetryBudget {
    pub ratio: f64,
    pub min_per_sec: f64,
}

impl Default for RawRetryBudget {
    fn default() -> Self {
        RawRetryBudget {
            ratio: 0.2,
            min_per_sec: 10.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxyProtocol {
    pub trusted: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConcurrency {
    pub adaptive: bool,
    pub queue_timeout: String,
}

impl Default for RawConcurrency {
    fn default() -> Self {
        RawConcurrency {
            adaptive: false,
            queue_timeout: "10ms".into(),
        }
    }
}

pub(super) fn default_slow_start() -> String {
    "0s".into()
}

pub(super) fn default_retries() -> i64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub name: String,
    /// Exactly one of `addr`, `dns` and `srv`.
    pub addr: Option<String>,
    pub dns: Option<String>,
    pub srv: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: i64,
    #[serde(default)]
    pub h2: bool,
    pub tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    pub sni: Option<String>,
    pub verify: Option<bool>,
    pub ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDiscovery {
    pub resolvers: Vec<String>,
    pub refresh: String,
}

impl Default for RawDiscovery {
    fn default() -> Self {
        RawDiscovery {
            resolvers: Vec::new(),
            refresh: "5s".into(),
        }
    }
}

pub(super) fn default_weight() -> i64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHealthCheck {
    pub path: String,
    pub interval: String,
    pub timeout: String,
    pub healthy_threshold: i64,
    pub unhealthy_threshold: i64,
}

impl Default for RawHealthCheck {
    fn default() -> Self {
        RawHealthCheck {
            path: "/health".into(),
            interval: "5s".into(),
            timeout: "1s".into(),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBreaker {
    pub fail_threshold: i64,
    pub open_time: String,
    pub max_open_time: String,
    pub failure_status: Vec<i64>,
}

impl Default for RawBreaker {
    fn default() -> Self {
        RawBreaker {
            fail_threshold: 3,
            open_time: "5s".into(),
            max_open_time: "60s".into(),
            failure_status: vec![502, 503, 504],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawOutlier {
    pub failure_rate: f64,
    pub min_requests: i64,
    pub interval: String,
    pub ejection_time: String,
    pub max_ejection_percent: i64,
}

impl Default for RawOutlier {
    fn default() -> Self {
        RawOutlier {
            failure_rate: 0.3,
            min_requests: 20,
            interval: "10s".into(),
            ejection_time: "30s".into(),
            max_ejection_percent: 50,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDynamicWeights {
    pub half_life: String,
    pub interval: String,
    pub min_factor: f64,
}

impl Default for RawDynamicWeights {
    fn default() -> Self {
        RawDynamicWeights {
            half_life: "5s".into(),
            interval: "1s".into(),
            min_factor: 0.2,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSticky {
    pub mode: StickyMode,
    pub cookie_name: String,
    pub max_age: String,
    pub secret: Option<String>,
    /// Moved to `lb.trusted_proxies`: read only to say so.
    pub trusted_proxies: Option<serde_yaml::Value>,
}

impl Default for RawSticky {
    fn default() -> Self {
        RawSticky {
            mode: StickyMode::Off,
            cookie_name: "HLB_STICKY".into(),
            max_age: "1h".into(),
            secret: None,
            trusted_proxies: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTimeouts {
    pub connect: String,
    pub read: String,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts {
            connect: "1s".into(),
            read: "30s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDashboard {
    pub listen: String,
    pub admin_token: Option<String>,
    pub hosts: Vec<String>,
}

impl Default for RawDashboard {
    fn default() -> Self {
        RawDashboard {
            listen: "127.0.0.1:5000".into(),
            admin_token: None,
            hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDemo {
    #[serde(default)]
    pub backends: Vec<RawDemoBackend>,
    #[serde(default)]
    pub traffic_rps: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDemoBackend {
    pub name: String,
    pub port: i64,
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default)]
    pub latency_ms: i64,
    #[serde(default)]
    pub jitter_ms: i64,
    #[serde(default = "yes")]
    pub healthy: bool,
}

pub(super) fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    #[serde(default = "default_tls_listen")]
    pub listen: Vec<String>,
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    #[serde(default = "default_true")]
    pub http2: bool,
    #[serde(default)]
    pub min_version: TlsVersion,
    #[serde(default)]
    pub redirect_http: bool,
    pub client_auth: Option<RawClientAuth>,
    pub acme: Option<RawAcme>,
}

/// `lb.tls.acme`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    pub directory: Option<String>,
    pub email: Option<String>,
    #[serde(default)]
    pub domains: Vec<String>,
    pub challenge: Option<String>,
    pub storage: Option<String>,
    pub directory_ca: Option<String>,
}

/// `lb.tls.client_auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientAuth {
    pub ca: String,
    #[serde(default = "default_true")]
    pub required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub cert: String,
    pub key: String,
}

pub(super) fn default_tls_listen() -> Vec<String> {
    vec!["0.0.0.0:8443".into()]
}

pub(super) fn default_true() -> bool {
    true
}
