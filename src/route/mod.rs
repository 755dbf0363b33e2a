//! The route table: which route a request takes (first match in file order,
//! exact hosts found through a map so a thousand host routes cost what one
//! does), why each earlier route did not match (`explain`), and what a route
//! does to the request and its answer (`rewrite`).

pub mod access;
pub mod basic_auth;
pub mod compress;
pub mod explain;
pub mod forward_auth;
pub mod htpasswd;
pub mod pattern;
pub mod rewrite;
pub mod served;

use std::collections::HashMap;

use http::{HeaderMap, Method};

use crate::config::{MatchConfig, RouteConfig};
use pattern::HostPattern;

/// What matching looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    /// Lowercase, without port (`pattern::normalize_host`); None when the
    /// request names no host.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// The routes of one config, ready to match.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<RouteConfig>,
    /// Routes by exact host, each list in file order.
    by_host: HashMap<String, Vec<usize>>,
    /// Routes without an exact host (wildcard or none), in file order.
    others: Vec<usize>,
    /// Whether any route looks at the host.
    hosts: bool,
}

impl RouteTable {
    pub fn new(routes: Vec<RouteConfig>) -> Self {
        let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
        let mut others = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match &r.matches.host {
                Some(HostPattern::Exact(name)) => by_host.entry(name.clone()).or_default().push(i),
                _ => others.push(i),
            }
        }
        let hosts = routes.iter().any(|r| r.matches.host.is_some());
        RouteTable {
            routes,
            by_host,
            others,
            hosts,
        }
    }

    /// Whether any route looks at the host (else it need not be read).
    pub fn uses_host(&self) -> bool {
        self.hosts
    }

    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }

    /// The index of the first route `req` matches.
    pub fn find(&self, req: &RequestFacts) -> Option<usize> {
        let exact: &[usize] = match req.host {
            Some(h) if !self.by_host.is_empty() => self.by_host.get(h).map_or(&[], Vec::as_slice),
            _ => &[],
        };
        // The two lists in file order, merged, so the first match wins.
        let (mut a, mut b) = (exact.iter().peekable(), self.others.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => return None,
            };
            let i = *next?;
            if mismatch(&self.routes[i].matches, req).is_none() {
                return Some(i);
            }
        }
    }
}

/// A match in words (`host api.example.com, path /v1`).
pub fn describe(m: &MatchConfig) -> String {
    let mut parts = Vec::new();
    if let Some(host) = &m.host {
        parts.push(format!("host {host}"));
    }
    if let Some(prefix) = &m.path_prefix {
        parts.push(format!(
            "path {}",
            if prefix.is_empty() { "/" } else { prefix }
        ));
    }
    if let Some(methods) = &m.methods {
        let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
        parts.push(format!("methods {}", names.join(",")));
    }
    for (name, cond) in &m.headers {
        parts.push(format!("header {name} {cond}"));
    }
    if parts.is_empty() {
        "everything".into()
    } else {
        parts.join(", ")
    }
}

/// Why `m` does not match `req`, or None when it does.
pub fn mismatch(m: &MatchConfig, req: &RequestFacts) -> Option<String> {
    if let Some(pattern) = &m.host {
        if !req.host.is_some_and(|h| pattern.matches(h)) {
            return Some(format!(
                "host {} is not {pattern}",
                req.host.unwrap_or("(none)")
            ));
        }
    }
    if let Some(prefix) = &m.path_prefix {
        if !pattern::path_has_prefix(prefix, req.path) {
            let shown = if prefix.is_empty() { "/" } else { prefix };
            return Some(format!("path {} is not under {shown}", req.path));
        }
    }
    if let Some(methods) = &m.methods {
        if !methods.contains(req.method) {
            let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
            return Some(format!(
                "method {} is not one of {}",
                req.method,
                names.join(", ")
            ));
        }
    }
    for (name, cond) in &m.headers {
        let values = req.headers.get_all(name).iter().map(|v| v.as_bytes());
        if !cond.holds(values) {
            return Some(format!("header {name} is not {cond}"));
        }
    }
    None
}

#[cfg(test)]
mod tests;
