//! The user's schema of `lb.routes` and of a rate limit (`lb.rate_limit`,
//! and each route's), as serde reads them; `routes.rs` checks them.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub requests_per_sec: f64,
    pub burst: Option<f64>,
}

/// One entry of `lb.routes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: RawMatch,
    pub pool: Option<String>,
    pub redirect: Option<RawRedirect>,
    pub strip_prefix: Option<String>,
    #[serde(default)]
    pub request_headers: RawHeaderEdits,
    #[serde(default)]
    pub response_headers: RawHeaderEdits,
    pub timeouts: Option<RawRouteTimeouts>,
    pub rate_limit: Option<RawRateLimit>,
    pub access: Option<RawAccess>,
    #[serde(default)]
    pub compress: bool,
}

/// A route's `access`: who may use it, by the client's address.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    pub basic_auth: Option<String>,
    pub forward_auth: Option<RawForwardAuth>,
}

/// `access.forward_auth`: a service asked about each request first.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForwardAuth {
    pub url: String,
    #[serde(default)]
    pub copy_headers: Vec<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatch {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, RawHeaderMatch>,
}

/// A header's value to match exactly, or `true` (present) / `false` (absent).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawHeaderMatch {
    Present(bool),
    Value(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedirect {
    pub to: String,
    #[serde(default = "default_redirect_status")]
    pub status: i64,
}

pub(super) fn default_redirect_status() -> i64 {
    308
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderEdits {
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouteTimeouts {
    pub connect: Option<String>,
    pub read: Option<String>,
}
