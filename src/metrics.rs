//! Every Prometheus metric of hybrid-lb, defined once, in one registry shared by
//! the proxy, the background tasks and the dashboard's `/metrics`.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The registry and its metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Responses from upstreams, by upstream and status code.
    pub requests_total: IntCounterVec,
    /// Time from choosing an upstream to the end of its response.
    pub request_duration_seconds: HistogramVec,
    /// Requests in progress per upstream.
    pub upstream_inflight: IntGaugeVec,
    /// 1 when active health checks pass, 0 when they fail.
    pub upstream_up: IntGaugeVec,
    /// 1 while ejected for its failure rate (`lb.outlier`).
    pub upstream_ejected: IntGaugeVec,
    /// 1 while sidelined for its latency (no client requests; probes only).
    pub upstream_sidelined: IntGaugeVec,
    /// Client requests copied to a sidelined upstream to measure it.
    pub mirrored_total: IntCounterVec,
    /// Each upstream's concurrency limit (`concurrency.adaptive`).
    pub upstream_concurrency_limit: IntGaugeVec,
    /// How long requests waited in a pool's queue for a place.
    pub queue_wait_seconds: HistogramVec,
    /// Requests answered 503 because every upstream of the pool was at its
    /// concurrency limit.
    pub overload_refused_total: IntCounterVec,
    /// Body bytes of compressed answers, by coding, before (`in`) and after
    /// (`out`) compression: what `compress` saved.
    pub compression_bytes_total: IntCounterVec,
    /// Requests put to a route's `access.forward_auth` service, by what it
    /// said: `pass` (2xx), `answer` (passed to the client), `failed`.
    pub forward_auth_total: IntCounterVec,
    /// ACME orders by result: `ok`, `failed`.
    pub acme_orders_total: IntCounterVec,
    /// The typical response time of its health checks, seconds.
    pub upstream_probe_seconds: GaugeVec,
    /// 0 closed, 1 half-open, 2 open.
    pub upstream_breaker_state: IntGaugeVec,
    /// Selection weight by kind: `base` (the operator's) or `effective` (in force).
    pub upstream_weight: GaugeVec,
    /// Peak EWMA of response time, in seconds.
    pub upstream_latency_ewma_seconds: GaugeVec,
    /// Sticky routing outcomes: hit, new, moved, invalid.
    pub sticky_total: IntCounterVec,
    /// Failed attempts retried on another upstream, by the upstream that
    /// failed and why (`connect`, `reset`, `status`).
    pub retries_total: IntCounterVec,
    /// Requests answered 503 because no upstream was eligible.
    pub no_upstream_total: IntCounter,
    /// Requests refused with 429 by `lb.rate_limit`.
    pub rate_limited_total: IntCounter,
    pub client_requests_refused_total: IntCounter,
    /// Access log lines lost because the writer fell behind.
    pub access_log_dropped_total: IntCounter,
    /// 1 while a session to `lb.etcd` is up.
    pub etcd_connected: IntGauge,
    /// Retries not made because the retry budget was spent.
    pub retry_budget_exhausted_total: IntCounter,
    /// Client connections open, by listener (`proxy`, `dashboard`).
    pub connections: IntGaugeVec,
    /// Connections closed at once for a cap, by listener and reason.
    pub connections_refused: IntCounterVec,
    /// Connections closed because a request header did not arrive whole in time.
    pub header_timeouts_total: IntCounter,
    /// Connections answered 431 while their header was read, past
    /// `lb.limits.max_header_bytes`.
    pub headers_too_large_total: IntCounter,
    /// DNS answers for discovered groups, by source (`dns`, `srv`) and
    /// result (`changed`, `unchanged`, `refused`).
    pub discovery_updates_total: IntCounterVec,
    /// TLS handshakes by negotiated version (`TLSv1.3`, …), or `failed`.
    pub tls_handshakes_total: IntCounterVec,
    /// Client connections by listener (`plain`, `tls`) and protocol (`h1`, `h2`).
    pub downstream_connections_total: IntCounterVec,
    /// Connections' PROXY protocol headers by result (`carried`, `local`,
    /// `plain`; closed: `untrusted`, `invalid`, `late`).
    pub proxy_protocol_total: IntCounterVec,
    /// Answers to clients by route and status (`none`: no route matched).
    pub route_requests_total: IntCounterVec,
    /// Time from request to answer, by route.
    pub route_duration_seconds: HistogramVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new("hlb_requests_total", "Responses from upstreams"),
            &["pool", "upstream", "code"],
        )
        .expect("metric");
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hlb_request_duration_seconds",
                "Upstream response time in seconds",
            )
            .buckets(request_duration_seconds_buckets()),
            &["pool", "upstream"],
        )
        .expect("metric");
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("metric")
        };
        let upstream_inflight = gauge(
            "hlb_upstream_inflight",
            "Requests in progress per upstream",
            &["pool", "upstream"],
        );
        let upstream_up = gauge(
            "hlb_upstream_up",
            "1 when the upstream passes active health checks",
            &["pool", "upstream"],
        );
        let upstream_breaker_state = gauge(
            "hlb_upstream_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            &["pool", "upstream"],
        );
        let upstream_weight = GaugeVec::new(
            Opts::new(
                "hlb_upstream_weight",
                "Selection weight: base (configured) or effective (in force)",
            ),
            &["pool", "upstream", "kind"],
        )
        .expect("metric");
        let upstream_latency_ewma_seconds = GaugeVec::new(
            Opts::new(
                "hlb_upstream_latency_ewma_seconds",
                "Peak EWMA of upstream response time in seconds",
            ),
            &["pool", "upstream"],
        )
        .expect("metric");
        let sticky_total = IntCounterVec::new(
            Opts::new("hlb_sticky_total", "Sticky routing outcomes"),
            &["result"],
        )
        .expect("metric");
        let retries_total = IntCounterVec::new(
            Opts::new(
                "hlb_retries_total",
                "Failed attempts retried on another upstream, by why: connect, reset, status",
            ),
            &["pool", "upstream", "reason"],
        )
        .expect("metric");
        let rate_limited_total = IntCounter::new(
            "hlb_rate_limited_total",
            "Requests refused with 429 because their client was over lb.rate_limit",
        )
        .expect("metric");
        let client_requests_refused_total = IntCounter::new(
            "hlb_client_requests_refused_total",
            "Requests refused with 429 because their client had \
             lb.limits.max_connections_per_client requests in flight (HTTP/2 streams each count)",
        )
        .expect("metric");
        let access_log_dropped_total = IntCounter::new(
            "hlb_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind",
        )
        .expect("metric");
        let etcd_connected = IntGauge::new(
            "hlb_etcd_connected",
            "1 while this instance is connected to lb.etcd and watching it",
        )
        .expect("metric");
        let no_upstream_total = IntCounter::new(
            "hlb_no_upstream_total",
            "Requests answered 503 because no upstream was eligible",
        )
        .expect("metric");

        let connections = gauge(
            "hlb_connections",
            "Client connections open, by listener",
            &["listener"],
        );
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "hlb_connections_refused_total",
                "Connections closed at once for a connection cap",
            ),
            &["listener", "reason"],
        )
        .expect("metric");
        let header_timeouts_total = IntCounter::new(
            "hlb_header_timeouts_total",
            "Connections closed because a request header did not arrive whole within lb.limits.header_timeout",
        )
        .expect("metric");
        let headers_too_large_total = IntCounter::new(
            "hlb_headers_too_large_total",
            "Connections answered 431 and closed while reading a request header past lb.limits.max_header_bytes",
        )
        .expect("metric");

        let discovery_updates_total = IntCounterVec::new(
            Opts::new(
                "hlb_discovery_updates_total",
                "DNS answers for discovered upstream groups, by source and result",
            ),
            &["source", "result"],
        )
        .expect("metric");

        let tls_handshakes_total = IntCounterVec::new(
            Opts::new(
                "hlb_tls_handshakes_total",
                "TLS handshakes on the HTTPS listeners by negotiated version, or failed",
            ),
            &["version"],
        )
        .expect("metric");
        let downstream_connections_total = IntCounterVec::new(
            Opts::new(
                "hlb_downstream_connections_total",
                "Client connections by listener kind and protocol",
            ),
            &["listener", "protocol"],
        )
        .expect("metric");

        let proxy_protocol_total = IntCounterVec::new(
            Opts::new(
                "hlb_proxy_protocol_total",
                "Client connections under lb.proxy_protocol by what they began with",
            ),
            &["result"],
        )
        .expect("metric");

        let upstream_ejected = IntGaugeVec::new(
            Opts::new(
                "hlb_upstream_ejected",
                "1 while the upstream is ejected for its failure rate",
            ),
            &["pool", "upstream"],
        )
        .expect("metric");

        let upstream_sidelined = IntGaugeVec::new(
            Opts::new(
                "hlb_upstream_sidelined",
                "1 while the upstream is too slow to get client requests; copies of them measure it",
            ),
            &["pool", "upstream"],
        )
        .expect("metric");

        let mirrored_total = IntCounterVec::new(
            Opts::new(
                "hlb_mirrored_total",
                "copies of client requests sent to a sidelined upstream to measure it (answers discarded)",
            ),
            &["pool", "upstream"],
        )
        .expect("metric");

        let upstream_concurrency_limit = IntGaugeVec::new(
            Opts::new(
                "hlb_upstream_concurrency_limit",
                "Requests the upstream may have at once, learned from its latency",
            ),
            &["pool", "upstream"],
        )
        .expect("metric");
        let queue_wait_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hlb_queue_wait_seconds",
                "Time a request waited for a place with every upstream at its limit",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["pool"],
        )
        .expect("metric");
        let overload_refused_total = IntCounterVec::new(
            Opts::new(
                "hlb_overload_refused_total",
                "Requests answered 503 with every upstream of the pool at its concurrency limit",
            ),
            &["pool"],
        )
        .expect("metric");
        let compression_bytes_total = IntCounterVec::new(
            Opts::new(
                "hlb_compression_bytes_total",
                "Body bytes of compressed answers before (in) and after (out) compression",
            ),
            &["coding", "stage"],
        )
        .expect("metric");
        let forward_auth_total = IntCounterVec::new(
            Opts::new(
                "hlb_forward_auth_total",
                "Requests put to a route's forward_auth service, by its verdict",
            ),
            &["route", "result"],
        )
        .expect("metric");
        let acme_orders_total = IntCounterVec::new(
            Opts::new("hlb_acme_orders_total", "ACME certificate orders by result"),
            &["result"],
        )
        .expect("metric");

        let upstream_probe_seconds = GaugeVec::new(
            Opts::new(
                "hlb_upstream_probe_seconds",
                "Typical response time of the upstream's health checks",
            ),
            &["pool", "upstream"],
        )
        .expect("metric");

        let route_requests_total = IntCounterVec::new(
            Opts::new(
                "hlb_route_requests_total",
                "Answers to clients by route and status",
            ),
            &["route", "code"],
        )
        .expect("metric");
        let route_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hlb_route_duration_seconds",
                "Time from a request's start to its answer's end, by route",
            )
            .buckets(request_duration_seconds_buckets()),
            &["route"],
        )
        .expect("metric");
        let retry_budget_exhausted_total = IntCounter::new(
            "hlb_retry_budget_exhausted_total",
            "Retries not made because lb.retry_budget was spent",
        )
        .expect("metric");

        for c in [
            Box::new(requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration_seconds.clone()),
            Box::new(upstream_inflight.clone()),
            Box::new(upstream_up.clone()),
            Box::new(upstream_ejected.clone()),
            Box::new(upstream_sidelined.clone()),
            Box::new(mirrored_total.clone()),
            Box::new(upstream_concurrency_limit.clone()),
            Box::new(queue_wait_seconds.clone()),
            Box::new(overload_refused_total.clone()),
            Box::new(compression_bytes_total.clone()),
            Box::new(forward_auth_total.clone()),
            Box::new(acme_orders_total.clone()),
            Box::new(upstream_probe_seconds.clone()),
            Box::new(upstream_breaker_state.clone()),
            Box::new(upstream_weight.clone()),
            Box::new(upstream_latency_ewma_seconds.clone()),
            Box::new(sticky_total.clone()),
            Box::new(retries_total.clone()),
            Box::new(no_upstream_total.clone()),
            Box::new(rate_limited_total.clone()),
            Box::new(client_requests_refused_total.clone()),
            Box::new(access_log_dropped_total.clone()),
            Box::new(etcd_connected.clone()),
            Box::new(retry_budget_exhausted_total.clone()),
            Box::new(connections.clone()),
            Box::new(connections_refused.clone()),
            Box::new(header_timeouts_total.clone()),
            Box::new(headers_too_large_total.clone()),
            Box::new(discovery_updates_total.clone()),
            Box::new(tls_handshakes_total.clone()),
            Box::new(downstream_connections_total.clone()),
            Box::new(proxy_protocol_total.clone()),
            Box::new(crate::logging::header_aborts().clone()),
            Box::new(route_requests_total.clone()),
            Box::new(route_duration_seconds.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests_total,
            request_duration_seconds,
            upstream_inflight,
            upstream_up,
            upstream_ejected,
            upstream_sidelined,
            mirrored_total,
            upstream_concurrency_limit,
            queue_wait_seconds,
            overload_refused_total,
            compression_bytes_total,
            forward_auth_total,
            acme_orders_total,
            upstream_probe_seconds,
            upstream_breaker_state,
            upstream_weight,
            upstream_latency_ewma_seconds,
            sticky_total,
            retries_total,
            no_upstream_total,
            rate_limited_total,
            client_requests_refused_total,
            access_log_dropped_total,
            etcd_connected,
            retry_budget_exhausted_total,
            connections,
            connections_refused,
            header_timeouts_total,
            headers_too_large_total,
            discovery_updates_total,
            tls_handshakes_total,
            downstream_connections_total,
            proxy_protocol_total,
            route_requests_total,
            route_duration_seconds,
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// One series' counters by status code (`{..., code}`), each resolved once,
/// the first time its code is seen, so the request path does not format a
/// label per answer.
#[derive(Debug)]
pub struct ByCode {
    vec: IntCounterVec,
    /// The labels before `code`.
    labels: Vec<String>,
    seen: arc_swap::ArcSwap<Vec<(u16, IntCounter)>>,
}

impl ByCode {
    pub fn new(vec: &IntCounterVec, labels: &[&str]) -> Self {
        ByCode {
            vec: vec.clone(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            seen: Default::default(),
        }
    }

    pub fn inc(&self, status: u16) {
        if let Some((_, c)) = self.seen.load().iter().find(|(s, _)| *s == status) {
            c.inc();
            return;
        }
        let code = status.to_string();
        let mut labels: Vec<&str> = self.labels.iter().map(String::as_str).collect();
        labels.push(&code);
        let counter = self.vec.with_label_values(&labels);
        counter.inc();
        self.seen.rcu(|codes| {
            let mut codes = Vec::clone(codes);
            if !codes.iter().any(|(s, _)| *s == status) {
                codes.push((status, counter.clone()));
            }
            codes
        });
    }

    /// Each code seen so far with its count.
    pub fn counts(&self) -> Vec<(u16, u64)> {
        self.seen
            .load()
            .iter()
            .map(|(s, c)| (*s, c.get()))
            .collect()
    }

    /// The codes seen so far.
    pub fn codes(&self) -> Vec<u16> {
        self.seen.load().iter().map(|(s, _)| *s).collect()
    }

    /// Removes every series this counted into.
    pub fn retire(&self) {
        for code in self.codes() {
            let code = code.to_string();
            let mut labels: Vec<&str> = self.labels.iter().map(String::as_str).collect();
            labels.push(&code);
            let _ = self.vec.remove_label_values(&labels);
        }
    }
}

/// A histogram's buckets: each upper bound with its cumulative count.
pub fn buckets(h: &prometheus::Histogram) -> Vec<(f64, u64)> {
    use prometheus::core::Metric;
    h.metric()
        .get_histogram()
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect()
}

/// Histogram buckets of request times, in seconds.
fn request_duration_seconds_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
        0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
    ]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
