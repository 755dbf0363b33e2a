//! `lb.routes`: checked into [`RouteConfig`]s. First match wins, in file
//! order; a route that an earlier one always matches, an unknown pool, a pool
//! no route sends to, two routes of one name, `redirect` with `pool`, and a
//! header that is not valid HTTP are each refused by key and line.

use std::collections::HashSet;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::check::Checker;
use super::schema::{RawForwardAuth, RawHeaderEdits, RawHeaderMatch, RawRoute};
use super::RateLimitConfig;
use crate::route::pattern::{self, HeaderCond, HostPattern};

/// One route, checked.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub matches: MatchConfig,
    pub action: RouteAction,
    /// Taken off the front of the path before it goes upstream (normalized).
    pub strip_prefix: Option<String>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    /// This route's own `timeouts`, over its pool's.
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub rate_limit: Option<RateLimitConfig>,
    /// Who may use it, by the client's address; None: anyone.
    pub access: Option<AccessConfig>,
    /// Text answers compressed (gzip, br or zstd) for clients that accept it.
    pub compress: bool,
    /// The catch-all of a file without `lb.routes`: it keeps no series of
    /// its own (they would repeat `hlb_requests_total`) and is not listed.
    pub implicit: bool,
}

/// A route's `access`: a client in `deny` is refused; with `allow` given,
/// so is every client not in it; with `basic_auth`, a request without a
/// user and password of that htpasswd file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccessConfig {
    pub allow: Vec<ipnet::IpNet>,
    pub deny: Vec<ipnet::IpNet>,
    pub basic_auth: Option<std::path::PathBuf>,
    pub forward_auth: Option<ForwardAuthConfig>,
}

/// `access.forward_auth`: each request is first put to `url` (its headers,
/// no body); a 2xx lets it through with `copy_headers` taken from that
/// answer, any other answer goes back to the client as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardAuthConfig {
    pub url: String,
    pub copy_headers: Vec<HeaderName>,
    /// For the whole exchange with the service.
    pub timeout: Duration,
}

/// What a matching request gets.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    /// Proxied to the pool at this index of `lb.pools`.
    Pool(usize),
    /// Answered with a redirect to `to` (`{uri}` there is the request's
    /// path and query).
    Redirect { to: String, status: u16 },
}

/// `match`: every part given must hold; none given matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MatchConfig {
    pub host: Option<HostPattern>,
    /// Normalized (see `pattern::normalize_prefix`).
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<(HeaderName, HeaderCond)>,
}

impl MatchConfig {
    /// Whether every request `later` matches, this matches too: then a
    /// route with `later` after one with this can never be reached.
    pub fn covers(&self, later: &MatchConfig) -> bool {
        let host = match (&self.host, &later.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a.covers(b),
        };
        let path = match (&self.path_prefix, &later.path_prefix) {
            (None, _) => true,
            (Some(a), None) => a.is_empty(),
            (Some(a), Some(b)) => pattern::path_has_prefix(a, b),
        };
        let methods = match (&self.methods, &later.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
        };
        let headers = self.headers.iter().all(|(name, cond)| {
            later
                .headers
                .iter()
                .any(|(n, c)| n == name && cond.covers(c))
        });
        host && path && methods && headers
    }
}

/// `request_headers` / `response_headers`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// Checks `lb.routes` against the pools' names (`pools[i]` is pool `i`).
/// Without routes, one catch-all route to `default`.
pub(super) fn routes(
    raw: Option<&[RawRoute]>,
    pools: &[String],
    c: &mut Checker,
) -> Vec<RouteConfig> {
    let Some(raw) = raw else {
        if pools.len() > 1 {
            c.fail(
                "lb.pools",
                "named pools need lb.routes to send requests to them",
            );
        }
        return vec![catch_all()];
    };
    if raw.is_empty() {
        c.fail("lb.routes", "needs at least one route (or leave it out)");
    }
    let mut names = HashSet::new();
    let mut used = vec![false; pools.len()];
    let mut checked: Vec<RouteConfig> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("lb.routes[{i}]");
        let name = r.name.as_deref().map(str::trim).unwrap_or_default();
        let name = if name.is_empty() {
            format!("route{}", i + 1)
        } else {
            name.to_string()
        };
        if let Err(why) = super::rules::upstream_name(&name) {
            c.fail(
                &format!("{key}.name"),
                why.replace("an upstream", "a route"),
            );
        } else if !names.insert(name.clone()) {
            c.fail(
                &format!("{key}.name"),
                format!("a second route named `{name}`"),
            );
        }
        let matches = match_config(&format!("{key}.match"), r, c);
        let action = match (&r.pool, &r.redirect) {
            (Some(_), Some(_)) => {
                c.fail(&key, "has both pool and redirect; give one");
                None
            }
            (None, None) => {
                c.fail(&key, "needs a pool to send to, or a redirect");
                None
            }
            (Some(pool), None) => match pools.iter().position(|p| p == pool.trim()) {
                Some(index) => {
                    used[index] = true;
                    Some(RouteAction::Pool(index))
                }
                None => {
                    c.fail(
                        &format!("{key}.pool"),
                        format!(
                            "no pool named `{}` (pools: {})",
                            pool.trim(),
                            pools.join(", ")
                        ),
                    );
                    None
                }
            },
            (None, Some(redirect)) => {
                let status = redirect.status;
                if ![301, 302, 303, 307, 308].contains(&status) {
                    c.fail(
                        &format!("{key}.redirect.status"),
                        "must be 301, 302, 303, 307 or 308",
                    );
                }
                let to = redirect.to.trim();
                if to.is_empty() || HeaderValue::from_str(to).is_err() {
                    c.fail(
                        &format!("{key}.redirect.to"),
                        "must be a URL, e.g. https://www.example.com{uri}",
                    );
                }
                Some(RouteAction::Redirect {
                    to: to.to_string(),
                    status: status.clamp(301, 308) as u16,
                })
            }
        };
        if let Some(earlier) = checked.iter().find(|e| e.matches.covers(&matches)) {
            c.fail(
                &format!("{key}.match"),
                format!(
                    "can never match: route `{}` before it matches every request it would",
                    earlier.name
                ),
            );
        }
        let strip_prefix = r.strip_prefix.as_deref().map(|p| {
            if !p.starts_with('/') {
                c.fail(&format!("{key}.strip_prefix"), "must start with /");
            }
            pattern::normalize_prefix(p)
        });
        let timeouts = r.timeouts.as_ref();
        let route = RouteConfig {
            name,
            matches,
            action: action.unwrap_or(RouteAction::Pool(0)),
            strip_prefix,
            request_headers: edits(&format!("{key}.request_headers"), &r.request_headers, c),
            response_headers: edits(&format!("{key}.response_headers"), &r.response_headers, c),
            connect_timeout: timeouts
                .and_then(|t| t.connect.as_deref())
                .map(|t| c.duration(&format!("{key}.timeouts.connect"), t)),
            read_timeout: timeouts
                .and_then(|t| t.read.as_deref())
                .map(|t| c.duration(&format!("{key}.timeouts.read"), t)),
            rate_limit: r
                .rate_limit
                .as_ref()
                .map(|l| super::limits::rate_limit(&format!("{key}.rate_limit"), l, c)),
            access: r.access.as_ref().map(|a| {
                if a.allow.is_empty()
                    && a.deny.is_empty()
                    && a.basic_auth.is_none()
                    && a.forward_auth.is_none()
                {
                    c.fail(
                        &format!("{key}.access"),
                        "give `allow` (only these clients), `deny` (not these), `basic_auth` \
                         (an htpasswd file), `forward_auth` (a service to ask), or some of them",
                    );
                }
                AccessConfig {
                    allow: c.cidrs(&format!("{key}.access.allow"), &a.allow),
                    deny: c.cidrs(&format!("{key}.access.deny"), &a.deny),
                    basic_auth: a.basic_auth.as_ref().map(|p| {
                        let path = std::path::PathBuf::from(p);
                        let read = std::fs::read_to_string(&path)
                            .map_err(|e| e.to_string())
                            .and_then(|t| crate::route::htpasswd::Htpasswd::parse(&t));
                        match read {
                            Ok(users) if users.is_empty() => c.fail(
                                &format!("{key}.access.basic_auth"),
                                format!("{p}: no users (write them with `htpasswd -B`)"),
                            ),
                            Ok(_) => {}
                            Err(e) => {
                                c.fail(&format!("{key}.access.basic_auth"), format!("{p}: {e}"))
                            }
                        }
                        path
                    }),
                    forward_auth: a
                        .forward_auth
                        .as_ref()
                        .map(|f| forward_auth(&format!("{key}.access.forward_auth"), f, c)),
                }
            }),
            compress: r.compress,
            implicit: false,
        };
        checked.push(route);
    }
    for (pool, used) in pools.iter().zip(used) {
        // `default` may stand empty (etcd may fill it): unused, it is quiet.
        if !used && pool != super::DEFAULT_POOL {
            c.fail(
                &format!("lb.pools.{pool}"),
                "no route sends requests to this pool",
            );
        }
    }
    checked
}

fn forward_auth(key: &str, f: &RawForwardAuth, c: &mut Checker) -> ForwardAuthConfig {
    let url = f.url.trim();
    match url.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() => {}
        _ => c.fail(
            &format!("{key}.url"),
            "must be an http:// or https:// URL, e.g. http://127.0.0.1:4181/auth",
        ),
    }
    let copy_headers = f
        .copy_headers
        .iter()
        .enumerate()
        .filter_map(
            |(i, name)| match HeaderName::from_bytes(name.trim().as_bytes()) {
                Ok(n) if !crate::forwarding::is_framing_or_hop(&n) => Some(n),
                Ok(_) => {
                    c.fail(
                        &format!("{key}.copy_headers[{i}]"),
                        format!("{name} is about the connection or its framing, not the request"),
                    );
                    None
                }
                Err(_) => {
                    c.fail(
                        &format!("{key}.copy_headers[{i}]"),
                        format!("{name:?} is not a header name"),
                    );
                    None
                }
            },
        )
        .collect();
    let timeout = f.timeout.as_deref().map_or(DEFAULT_AUTH_TIMEOUT, |t| {
        c.duration(&format!("{key}.timeout"), t)
    });
    ForwardAuthConfig {
        url: url.to_string(),
        copy_headers,
        timeout,
    }
}

/// How long a request may wait on its forward-auth service, unless told.
const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The route of a file without `lb.routes`: everything to `default`.
fn catch_all() -> RouteConfig {
    RouteConfig {
        name: super::DEFAULT_POOL.into(),
        matches: MatchConfig::default(),
        action: RouteAction::Pool(0),
        strip_prefix: None,
        request_headers: HeaderEdits::default(),
        response_headers: HeaderEdits::default(),
        connect_timeout: None,
        read_timeout: None,
        rate_limit: None,
        access: None,
        compress: false,
        implicit: true,
    }
}

fn match_config(key: &str, r: &RawRoute, c: &mut Checker) -> MatchConfig {
    let m = &r.matches;
    let host = m.host.as_deref().and_then(|h| match HostPattern::parse(h) {
        Ok(p) => Some(p),
        Err(why) => {
            c.fail(&format!("{key}.host"), why);
            None
        }
    });
    let path_prefix = m.path_prefix.as_deref().map(|p| {
        if !p.starts_with('/') {
            c.fail(&format!("{key}.path_prefix"), "must start with /");
        }
        pattern::normalize_prefix(p)
    });
    let methods = m.methods.as_ref().map(|methods| {
        if methods.is_empty() {
            c.fail(&format!("{key}.methods"), "needs at least one method");
        }
        methods
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let upper = name.trim().to_ascii_uppercase();
                let ok = !upper.is_empty() && upper.bytes().all(|b| b.is_ascii_uppercase());
                match Method::from_bytes(upper.as_bytes()) {
                    Ok(method) if ok => Some(method),
                    _ => {
                        c.fail(
                            &format!("{key}.methods[{i}]"),
                            format!("`{name}` is not an HTTP method"),
                        );
                        None
                    }
                }
            })
            .collect()
    });
    let headers = m
        .headers
        .iter()
        .filter_map(|(name, cond)| {
            let hkey = format!("{key}.headers.{name}");
            let name = header_name(&hkey, name, c)?;
            let cond = match cond {
                RawHeaderMatch::Present(true) => HeaderCond::Present,
                RawHeaderMatch::Present(false) => HeaderCond::Absent,
                RawHeaderMatch::Value(v) => {
                    header_value(&hkey, v, c)?;
                    HeaderCond::Equals(v.clone())
                }
            };
            Some((name, cond))
        })
        .collect();
    MatchConfig {
        host,
        path_prefix,
        methods,
        headers,
    }
}

fn edits(key: &str, raw: &RawHeaderEdits, c: &mut Checker) -> HeaderEdits {
    let set = raw
        .set
        .iter()
        .filter_map(|(name, value)| {
            let k = format!("{key}.set.{name}");
            Some((header_name(&k, name, c)?, header_value(&k, value, c)?))
        })
        .collect();
    let remove = raw
        .remove
        .iter()
        .enumerate()
        .filter_map(|(i, name)| header_name(&format!("{key}.remove[{i}]"), name, c))
        .collect();
    HeaderEdits { set, remove }
}

fn header_name(key: &str, name: &str, c: &mut Checker) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.trim().as_bytes()) {
        Ok(n) => Some(n),
        Err(_) => {
            c.fail(key, format!("`{name}` is not a valid HTTP header name"));
            None
        }
    }
}

fn header_value(key: &str, value: &str, c: &mut Checker) -> Option<HeaderValue> {
    match HeaderValue::from_str(value) {
        Ok(v) => Some(v),
        Err(_) => {
            c.fail(
                key,
                format!("{value:?} is not a valid HTTP header value (no control characters)"),
            );
            None
        }
    }
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
