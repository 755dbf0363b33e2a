//! `hybrid-lb -t --explain "GET https://api.example.com/v1/users"` and
//! `GET /api/explain`: the route a request would take, its pool, and why
//! each route before it did not match.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Serialize;

use super::{mismatch, pattern, RequestFacts, RouteTable};
use crate::config::{PoolConfig, RouteAction};

/// The verdict on one request.
#[derive(Debug, Serialize, PartialEq)]
pub struct Explanation {
    pub method: String,
    pub host: Option<String>,
    pub path: String,
    /// The route taken; None: our 404.
    pub route: Option<String>,
    /// Its pool, or where it redirects.
    pub pool: Option<String>,
    pub redirect: Option<String>,
    /// Each earlier route, and why it did not match.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Skipped {
    pub route: String,
    pub why: String,
}

/// A request as written by a person: `[METHOD] URL [Header: value]...`,
/// the URL absolute (`https://host/path`) or a path alone.
pub fn parse_request(text: &str) -> Result<(Method, String, HeaderMap), String> {
    let mut words = text.split_whitespace();
    let first = words
        .next()
        .ok_or("an empty request; write e.g. \"GET https://api.example.com/v1/users\"")?;
    let (method, url) = if first.contains('/') {
        (Method::GET, first.to_string())
    } else {
        let method = Method::from_bytes(first.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("`{first}` is not an HTTP method"))?;
        let url = words.next().ok_or("a method but no URL")?;
        (method, url.to_string())
    };
    let mut headers = HeaderMap::new();
    let rest: Vec<&str> = words.collect();
    for pair in rest.join(" ").split(',').filter(|p| !p.trim().is_empty()) {
        let (name, value) = pair
            .split_once(':')
            .ok_or_else(|| format!("`{}` is not `Header: value`", pair.trim()))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("`{}` is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("`{}` is not a header value", value.trim()))?;
        headers.append(name, value);
    }
    Ok((method, url, headers))
}

/// Explains `method url` with `headers` against `table`.
pub fn explain(
    table: &RouteTable,
    pools: &[PoolConfig],
    method: &Method,
    url: &str,
    headers: &HeaderMap,
) -> Result<Explanation, String> {
    let uri: http::Uri = url.parse().map_err(|_| {
        format!("`{url}` is not a URL; write e.g. https://api.example.com/v1/users")
    })?;
    let host = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .map(|h| pattern::normalize_host(&h).into_owned());
    let path = uri.path().to_string();
    let facts = RequestFacts {
        method,
        host: host.as_deref(),
        path: &path,
        headers,
    };
    let found = table.find(&facts);
    let until = found.unwrap_or(table.routes().len());
    let skipped = table.routes()[..until]
        .iter()
        .map(|r| Skipped {
            route: r.name.clone(),
            why: mismatch(&r.matches, &facts).unwrap_or_else(|| "matched".into()),
        })
        .collect();
    let route = found.map(|i| &table.routes()[i]);
    let (pool, redirect) = match route.map(|r| &r.action) {
        Some(RouteAction::Pool(i)) => (pools.get(*i).map(|p| p.name.clone()), None),
        Some(RouteAction::Redirect { to, status }) => (None, Some(format!("{status} {to}"))),
        None => (None, None),
    };
    Ok(Explanation {
        method: method.to_string(),
        host,
        path,
        route: route.map(|r| r.name.clone()),
        pool,
        redirect,
        skipped,
    })
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self.host.as_deref().unwrap_or("(no host)");
        writeln!(f, "{} {} {}", self.method, host, self.path)?;
        for s in &self.skipped {
            writeln!(f, "  route {}: no, {}", s.route, s.why)?;
        }
        match (&self.route, &self.pool, &self.redirect) {
            (Some(route), Some(pool), _) => write!(f, "  route {route}: yes, to pool {pool}"),
            (Some(route), _, Some(to)) => write!(f, "  route {route}: yes, redirect {to}"),
            _ => write!(f, "  no route matches: 404"),
        }
    }
}
