//! The config file: one YAML document holding Pingora's server keys at the top level
//! and our `lb:`, `dashboard:` and `demo:` sections beside them.
//!
//! The `Raw*` structs are the user's schema (serde, unknown keys refused); [`Config`]
//! is the validated form the code uses. Every error names the key and its line.

mod lines;

use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use serde::{Deserialize, Serialize};

use lines::LineIndex;

/// One thing wrong with the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, as `lb.upstreams[1].weight`.
    pub key: String,
    pub message: String,
    pub line: Option<usize>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.key, self.message)?;
        }
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// Everything wrong with a config file, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(key: &str, message: impl Into<String>, line: Option<usize>) -> Self {
        ConfigError {
            problems: vec![Problem {
                key: key.to_string(),
                message: message.into(),
                line,
            }],
        }
    }

    /// serde_yaml's message already starts with the path; its " at line L column C"
    /// tail is rewritten into our " (line L)" form.
    fn from_serde(e: serde_yaml::Error) -> Self {
        let text = e.to_string();
        let text = match text.find(" at line ") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        let (key, message) = match text.split_once(": ") {
            Some((k, m)) if !k.contains(' ') => (k.to_string(), m.to_string()),
            _ => (String::new(), text),
        };
        ConfigError {
            problems: vec![Problem {
                key,
                message,
                line: e.location().map(|l| l.line()),
            }],
        }
    }
}

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
// The user's schema.

#[derive(Debug, Deserialize)]
struct RawFile {
    lb: RawLb,
    #[serde(default)]
    dashboard: RawDashboard,
    demo: Option<RawDemo>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLb {
    #[serde(default = "default_listen")]
    listen: Vec<String>,
    #[serde(default)]
    algorithm: Algorithm,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    #[serde(default)]
    health_check: RawHealthCheck,
    #[serde(default)]
    circuit_breaker: RawBreaker,
    #[serde(default)]
    dynamic_weights: RawDynamicWeights,
    #[serde(default)]
    sticky: RawSticky,
    #[serde(default = "default_retries")]
    retries: i64,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    limits: RawLimits,
}

/// A size: bytes as an integer, or a string such as `32KiB`, `10MB`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_header_bytes: RawSize,
    max_body: RawSize,
    header_timeout: String,
    keepalive_timeout: String,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_header_bytes: RawSize::Text("32KiB".into()),
            max_body: RawSize::Text("10MiB".into()),
            header_timeout: "10s".into(),
            keepalive_timeout: "60s".into(),
        }
    }
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8080".into()]
}
fn default_retries() -> i64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    addr: String,
    #[serde(default = "default_weight")]
    weight: i64,
}

fn default_weight() -> i64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHealthCheck {
    path: String,
    interval: String,
    timeout: String,
    healthy_threshold: i64,
    unhealthy_threshold: i64,
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
struct RawBreaker {
    fail_threshold: i64,
    open_time: String,
    max_open_time: String,
    failure_status: Vec<i64>,
}

impl Default for RawBreaker {
    fn default() -> Self {
        RawBreaker {
            fail_threshold: 3,
            open_time: "5s".into(),
            max_open_time: "60s".into(),
            failure_status: vec![500, 502, 503, 504],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDynamicWeights {
    half_life: String,
    interval: String,
    min_factor: f64,
}

impl Default for RawDynamicWeights {
    fn default() -> Self {
        RawDynamicWeights {
            half_life: "5s".into(),
            interval: "1s".into(),
            min_factor: 0.05,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSticky {
    mode: StickyMode,
    cookie_name: String,
    max_age: String,
    secret: Option<String>,
    trusted_proxies: Vec<String>,
}

impl Default for RawSticky {
    fn default() -> Self {
        RawSticky {
            mode: StickyMode::Off,
            cookie_name: "HLB_STICKY".into(),
            max_age: "1h".into(),
            secret: None,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTimeouts {
    connect: String,
    read: String,
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
struct RawDashboard {
    listen: String,
    admin_token: Option<String>,
}

impl Default for RawDashboard {
    fn default() -> Self {
        RawDashboard {
            listen: "127.0.0.1:5000".into(),
            admin_token: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDemo {
    #[serde(default)]
    backends: Vec<RawDemoBackend>,
    #[serde(default)]
    traffic_rps: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDemoBackend {
    name: String,
    port: i64,
    #[serde(default)]
    error_rate: f64,
    #[serde(default)]
    latency_ms: i64,
    #[serde(default)]
    jitter_ms: i64,
    #[serde(default = "yes")]
    healthy: bool,
}

fn yes() -> bool {
    true
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

#[derive(Debug, Clone)]
pub struct LbConfig {
    pub listen: Vec<SocketAddr>,
    pub algorithm: Algorithm,
    pub upstreams: Vec<UpstreamConfig>,
    pub health_check: HealthCheckConfig,
    pub circuit_breaker: BreakerConfig,
    pub dynamic_weights: DynamicWeightsConfig,
    pub sticky: StickyConfig,
    /// Extra attempts, each on another upstream, after a connect failure.
    pub retries: usize,
    pub timeouts: TimeoutsConfig,
    pub limits: LimitsConfig,
}

/// Limits on what a client may send (`lb.limits`).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Request line plus headers; larger requests get 431.
    pub max_header_bytes: u64,
    /// Request body; larger bodies get 413.
    pub max_body: u64,
    /// How long each read of a new connection's first request header may take
    /// (whole seconds).
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection waits for its next request.
    pub keepalive_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: usize,
    pub unhealthy_threshold: usize,
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
    pub trusted_proxies: Vec<ipnet::IpNet>,
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

#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub listen: SocketAddr,
    pub admin_token: Option<String>,
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

/// Collects problems with their lines while the raw file is checked.
struct Checker<'a> {
    index: &'a LineIndex,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn fail(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_string(),
            message: message.into(),
            line: self.index.line_of(key),
        });
    }

    fn duration(&mut self, key: &str, text: &str) -> Duration {
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() => {
                self.fail(key, "must be greater than zero");
                Duration::ZERO
            }
            Ok(d) => d,
            Err(e) => {
                self.fail(
                    key,
                    format!("`{text}` is not a duration ({e}); write e.g. 500ms, 5s, 1h"),
                );
                Duration::ZERO
            }
        }
    }

    fn addr(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Some(a);
        }
        // host:port with a name: resolved once, at load time.
        match text.to_socket_addrs().map(|mut it| it.next()) {
            Ok(Some(a)) if text.contains(':') => Some(a),
            _ => {
                self.fail(
                    key,
                    format!("`{text}` is not an address; write host:port, e.g. 127.0.0.1:9001"),
                );
                None
            }
        }
    }

    fn size(&mut self, key: &str, raw: &RawSize) -> u64 {
        let parsed = match raw {
            RawSize::Bytes(n) if *n > 0 => Ok(*n as u64),
            RawSize::Bytes(_) => Err("must be greater than zero".to_string()),
            RawSize::Text(t) => t
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|_| format!("`{t}` is not a size; write bytes or e.g. 32KiB, 10MB")),
        };
        match parsed {
            Ok(0) => {
                self.fail(key, "must be greater than zero");
                0
            }
            Ok(n) => n,
            Err(e) => {
                self.fail(key, e);
                0
            }
        }
    }

    fn at_least(&mut self, key: &str, value: i64, min: i64) -> i64 {
        if value < min {
            self.fail(key, format!("must be at least {min}"));
            min
        } else {
            value
        }
    }
}

impl Config {
    /// Reads and validates `path`; also checks Pingora's own keys in the same file.
    pub fn load(path: &str) -> Result<(Config, ServerConf), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::single("", format!("cannot read {path}: {e}"), None))?;
        let (mut config, server) = Self::parse(&text)?;
        if config.lb.sticky.secret.is_none() {
            if let Ok(secret) = std::env::var(SECRET_ENV) {
                if secret.len() < MIN_SECRET_LEN {
                    return Err(ConfigError::single(
                        SECRET_ENV,
                        format!("must be at least {MIN_SECRET_LEN} bytes"),
                        None,
                    ));
                }
                config.lb.sticky.secret = Some(secret);
            }
        }
        Ok((config, server))
    }

    /// Parses and validates a whole config file's text.
    pub fn parse(text: &str) -> Result<(Config, ServerConf), ConfigError> {
        let server: ServerConf = serde_yaml::from_str(text).map_err(ConfigError::from_serde)?;
        let server = server
            .validate()
            .map_err(|e| ConfigError::single("", e.to_string(), None))?;
        let raw: RawFile = serde_yaml::from_str(text).map_err(ConfigError::from_serde)?;
        let index = LineIndex::new(text);
        let mut c = Checker {
            index: &index,
            problems: Vec::new(),
        };
        check_top_level(&mut c);
        let config = validate(raw, &mut c);
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

/// Pingora ignores top-level keys it does not know; we refuse them, so that a typo
/// such as `dashbaord:` is not silently dropped.
fn check_top_level(c: &mut Checker) {
    let pingora_keys: HashSet<String> = match serde_yaml::to_value(ServerConf::default()) {
        Ok(serde_yaml::Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => HashSet::new(),
    };
    let keys: Vec<(String, usize)> = c.index.top_level_keys().to_vec();
    for (key, line) in keys {
        let ours = matches!(key.as_str(), "lb" | "dashboard" | "demo");
        if !ours && !pingora_keys.is_empty() && !pingora_keys.contains(&key) {
            c.problems.push(Problem {
                key: key.clone(),
                message:
                    "unknown key (ours are lb, dashboard, demo; the rest are Pingora's server keys)"
                        .into(),
                line: Some(line),
            });
        }
    }
}

fn validate(raw: RawFile, c: &mut Checker) -> Config {
    let lb = validate_lb(raw.lb, c);
    let d = raw.dashboard;
    let dashboard = DashboardConfig {
        listen: c
            .addr("dashboard.listen", &d.listen)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5000))),
        admin_token: d.admin_token.filter(|t| !t.is_empty()),
    };
    let demo = raw.demo.map(|d| validate_demo(d, c));
    Config {
        lb,
        dashboard,
        demo,
    }
}

fn validate_lb(raw: RawLb, c: &mut Checker) -> LbConfig {
    if raw.listen.is_empty() {
        c.fail("lb.listen", "needs at least one address");
    }
    let listen = raw
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, a)| c.addr(&format!("lb.listen[{i}]"), a))
        .collect();

    if raw.upstreams.is_empty() {
        c.fail("lb.upstreams", "needs at least one upstream");
    }
    let mut names = HashSet::new();
    let mut upstreams = Vec::new();
    for (i, u) in raw.upstreams.iter().enumerate() {
        let key = format!("lb.upstreams[{i}]");
        let name = u.name.trim();
        if name.is_empty() {
            c.fail(&format!("{key}.name"), "must not be empty");
        } else if !names.insert(name.to_string()) {
            c.fail(
                &format!("{key}.name"),
                format!("duplicate upstream name `{name}`"),
            );
        }
        let weight = c.at_least(&format!("{key}.weight"), u.weight, 1);
        if weight > 10_000 {
            c.fail(&format!("{key}.weight"), "must be at most 10000");
        }
        if let Some(addr) = c.addr(&format!("{key}.addr"), &u.addr) {
            upstreams.push(UpstreamConfig {
                name: name.to_string(),
                addr,
                weight: weight.min(10_000) as u32,
            });
        }
    }

    let h = raw.health_check;
    if !h.path.starts_with('/') {
        c.fail("lb.health_check.path", "must start with /");
    }
    let health_check = HealthCheckConfig {
        interval: c.duration("lb.health_check.interval", &h.interval),
        timeout: c.duration("lb.health_check.timeout", &h.timeout),
        healthy_threshold: c.at_least("lb.health_check.healthy_threshold", h.healthy_threshold, 1)
            as usize,
        unhealthy_threshold: c.at_least(
            "lb.health_check.unhealthy_threshold",
            h.unhealthy_threshold,
            1,
        ) as usize,
        path: h.path,
    };

    let b = raw.circuit_breaker;
    let open_time = c.duration("lb.circuit_breaker.open_time", &b.open_time);
    let max_open_time = c.duration("lb.circuit_breaker.max_open_time", &b.max_open_time);
    if max_open_time < open_time {
        c.fail(
            "lb.circuit_breaker.max_open_time",
            "must be at least open_time",
        );
    }
    let mut failure_status = Vec::new();
    for (i, s) in b.failure_status.iter().enumerate() {
        if (100..=599).contains(s) {
            failure_status.push(*s as u16);
        } else {
            c.fail(
                &format!("lb.circuit_breaker.failure_status[{i}]"),
                "must be an HTTP status between 100 and 599",
            );
        }
    }
    let circuit_breaker = BreakerConfig {
        fail_threshold: c.at_least("lb.circuit_breaker.fail_threshold", b.fail_threshold, 1) as u32,
        open_time,
        max_open_time,
        failure_status,
    };

    let w = raw.dynamic_weights;
    if !(w.min_factor > 0.0 && w.min_factor <= 1.0) {
        c.fail(
            "lb.dynamic_weights.min_factor",
            "must be greater than 0 and at most 1",
        );
    }
    let dynamic_weights = DynamicWeightsConfig {
        half_life: c.duration("lb.dynamic_weights.half_life", &w.half_life),
        interval: c.duration("lb.dynamic_weights.interval", &w.interval),
        min_factor: w.min_factor,
    };

    let s = raw.sticky;
    if s.cookie_name.is_empty()
        || !s
            .cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        c.fail(
            "lb.sticky.cookie_name",
            "must be letters, digits, `_` or `-`",
        );
    }
    if let Some(secret) = &s.secret {
        if secret.len() < MIN_SECRET_LEN {
            c.fail(
                "lb.sticky.secret",
                format!("must be at least {MIN_SECRET_LEN} bytes (a random string; `openssl rand -hex 32` makes one)"),
            );
        }
    }
    let mut trusted_proxies = Vec::new();
    for (i, p) in s.trusted_proxies.iter().enumerate() {
        let parsed = p
            .parse::<ipnet::IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => c.fail(
                &format!("lb.sticky.trusted_proxies[{i}]"),
                format!("`{p}` is not a CIDR or an IP address, e.g. 10.0.0.0/8"),
            ),
        }
    }
    let sticky = StickyConfig {
        mode: s.mode,
        cookie_name: s.cookie_name,
        max_age: c.duration("lb.sticky.max_age", &s.max_age),
        secret: s.secret,
        trusted_proxies,
    };

    let retries = c.at_least("lb.retries", raw.retries, 0) as usize;
    let timeouts = TimeoutsConfig {
        connect: c.duration("lb.timeouts.connect", &raw.timeouts.connect),
        read: c.duration("lb.timeouts.read", &raw.timeouts.read),
    };

    let limits = LimitsConfig {
        max_header_bytes: c.size("lb.limits.max_header_bytes", &raw.limits.max_header_bytes),
        max_body: c.size("lb.limits.max_body", &raw.limits.max_body),
        header_timeout: c.duration("lb.limits.header_timeout", &raw.limits.header_timeout),
        keepalive_timeout: c.duration("lb.limits.keepalive_timeout", &raw.limits.keepalive_timeout),
    };

    LbConfig {
        limits,
        listen,
        algorithm: raw.algorithm,
        upstreams,
        health_check,
        circuit_breaker,
        dynamic_weights,
        sticky,
        retries,
        timeouts,
    }
}

fn validate_demo(raw: RawDemo, c: &mut Checker) -> DemoConfig {
    let mut backends = Vec::new();
    for (i, b) in raw.backends.into_iter().enumerate() {
        let key = format!("demo.backends[{i}]");
        if !(1..=65535).contains(&b.port) {
            c.fail(&format!("{key}.port"), "must be a port between 1 and 65535");
        }
        if !(0.0..=1.0).contains(&b.error_rate) {
            c.fail(&format!("{key}.error_rate"), "must be between 0 and 1");
        }
        let latency_ms = c.at_least(&format!("{key}.latency_ms"), b.latency_ms, 0) as u64;
        let jitter_ms = c.at_least(&format!("{key}.jitter_ms"), b.jitter_ms, 0) as u64;
        backends.push(DemoBackend {
            name: b.name,
            port: b.port.clamp(1, 65535) as u16,
            error_rate: b.error_rate.clamp(0.0, 1.0),
            latency_ms,
            jitter_ms,
            healthy: b.healthy,
        });
    }
    if let Some(rps) = raw.traffic_rps {
        if !(0.0..=10_000.0).contains(&rps) {
            c.fail("demo.traffic_rps", "must be between 0 and 10000");
        }
    }
    DemoConfig {
        backends,
        traffic_rps: raw.traffic_rps,
    }
}

#[cfg(test)]
mod tests;
