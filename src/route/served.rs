//! Each route as it serves: its own rate limit (`rate_limit`, per client
//! address), and its series `hlb_route_requests_total{route,code}` and
//! `hlb_route_duration_seconds{route}`.

use std::time::Duration;

use prometheus::Histogram;

use super::RouteTable;
use crate::config::RouteConfig;
use crate::metrics::{ByCode, Metrics};
use crate::rate_limit::RateLimiter;

/// One route's running parts.
#[derive(Debug)]
pub struct Served {
    pub limiter: Option<RateLimiter>,
    /// Its `access.basic_auth`, with the file in force.
    pub basic_auth: Option<super::basic_auth::BasicAuth>,
    /// Its `access.forward_auth`, with its pooled connections.
    pub forward_auth: Option<super::forward_auth::ForwardAuth>,
    /// `hlb_forward_auth_total{route,result}` of it: pass, answer, failed.
    pub auth_results: Option<[prometheus::IntCounter; 3]>,
    /// None for the implicit catch-all, which keeps no series.
    series: Option<Series>,
    /// Its match in words, for the dashboard.
    pub described: String,
}

#[derive(Debug)]
struct Series {
    duration: Histogram,
    codes: ByCode,
}

impl Served {
    /// Counts one answer and how long it took.
    pub fn record(&self, status: u16, took: Duration) {
        if let Some(s) = &self.series {
            s.codes.inc(status);
            s.duration.observe(took.as_secs_f64());
        }
    }

    /// Answers so far (as `totals().0`, read from one atomic: the
    /// histogram's count, which every answer adds to).
    pub fn answered(&self) -> u64 {
        self.series
            .as_ref()
            .map_or(0, |s| s.duration.get_sample_count())
    }

    /// Answers so far, and of those the server errors (5xx, or none at all).
    pub fn totals(&self) -> (u64, u64) {
        let Some(s) = &self.series else {
            return (0, 0);
        };
        s.codes
            .counts()
            .iter()
            .fold((0, 0), |(all, errors), (code, n)| {
                let failed = *code >= 500 || *code == 0;
                (all + n, errors + if failed { *n } else { 0 })
            })
    }

    /// Its request-time histogram's buckets (none for the implicit route).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.series
            .as_ref()
            .map_or_else(Vec::new, |s| crate::metrics::buckets(&s.duration))
    }
}

fn forward_auth(r: &RouteConfig) -> Option<&crate::config::ForwardAuthConfig> {
    r.access.as_ref().and_then(|a| a.forward_auth.as_ref())
}

/// The route table and each route's running parts, by index.
#[derive(Debug)]
pub struct Routes {
    pub table: RouteTable,
    served: Vec<Served>,
}

impl Routes {
    pub fn new(routes: Vec<RouteConfig>, metrics: &Metrics) -> Self {
        let served = routes
            .iter()
            .map(|r| Served {
                limiter: r.rate_limit.as_ref().map(RateLimiter::new),
                basic_auth: r
                    .access
                    .as_ref()
                    .and_then(|a| a.basic_auth.as_deref())
                    .map(|p| super::basic_auth::BasicAuth::load(p, &r.name)),
                forward_auth: forward_auth(r)
                    .map(|f| super::forward_auth::ForwardAuth::new(f, r.connect_timeout)),
                auth_results: forward_auth(r).map(|_| {
                    ["pass", "answer", "failed"].map(|result| {
                        metrics
                            .forward_auth_total
                            .with_label_values(&[&r.name, result])
                    })
                }),
                series: (!r.implicit).then(|| Series {
                    duration: metrics.route_duration_seconds.with_label_values(&[&r.name]),
                    codes: ByCode::new(&metrics.route_requests_total, &[&r.name]),
                }),
                described: super::describe(&r.matches),
            })
            .collect();
        Routes {
            table: RouteTable::new(routes),
            served,
        }
    }

    pub fn route(&self, i: usize) -> &RouteConfig {
        &self.table.routes()[i]
    }

    pub fn served(&self, i: usize) -> &Served {
        &self.served[i]
    }

    /// Every route's running parts.
    pub fn all_served(&self) -> &[Served] {
        &self.served
    }
}
