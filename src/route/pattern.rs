//! What one route's `match` tests, each part pure: a host (exact or one-label
//! wildcard, case-insensitive, port ignored), a path prefix by whole
//! segments, a header's value or presence. Each part also says whether it
//! takes in every request another does (`covers`), so that a route an
//! earlier one always matches is refused.

/// `match.host`: `api.example.com`, or `*.example.com` (exactly one label
/// before the suffix), held lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its dot: `.example.com`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let (wild, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, text.clone()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || !name.split('.').all(label_ok) {
            return Err(format!(
                "`{text}` is not a host name; write e.g. api.example.com or *.example.com \
                 (no port, no scheme, a wildcard only as the whole first label)"
            ));
        }
        Ok(if wild {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name)
        })
    }

    /// Whether `host` (lowercase, without port) matches: a wildcard takes
    /// exactly one more label, as nginx's and Envoy's do.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }

    /// Whether every host `other` matches, this matches too.
    pub fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (a, b) if a == b => true,
            (HostPattern::Wildcard(_), HostPattern::Exact(name)) => self.matches(name),
            _ => false,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// The request's host as routes see it: lowercase, without port or a
/// trailing dot; borrowed when it is so already (the usual case), so the
/// request path does not allocate for it.
pub fn normalize_host(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = if authority.starts_with('[') {
        // An IPv6 literal: up to its bracket.
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                authority
            }
        })
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// `match.path_prefix`, held without a trailing `/` (`/` itself is empty):
/// `/v1` takes `/v1`, `/v1/` and `/v1/x`, never `/v10`.
pub fn normalize_prefix(prefix: &str) -> String {
    prefix.trim_end_matches('/').to_string()
}

/// Whether `path` starts with the (normalized) `prefix` by whole segments.
pub fn path_has_prefix(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

/// `path` with `prefix` (normalized) taken off the front, as `strip_prefix`
/// does; what is left always starts with `/`.
pub fn strip_path(prefix: &str, path: &str) -> Option<String> {
    if prefix.is_empty() || !path_has_prefix(prefix, path) {
        return None;
    }
    let rest = &path[prefix.len()..];
    Some(if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    })
}

/// One header condition of `match.headers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderCond {
    /// Present with exactly this value.
    Equals(String),
    Present,
    Absent,
}

impl HeaderCond {
    /// Whether the request's values of the header (none when absent) meet it.
    pub fn holds<'v>(&self, mut values: impl Iterator<Item = &'v [u8]>) -> bool {
        match self {
            HeaderCond::Equals(want) => values.any(|v| v == want.as_bytes()),
            HeaderCond::Present => values.next().is_some(),
            HeaderCond::Absent => values.next().is_none(),
        }
    }

    /// Whether every request `other` lets through, this does too.
    pub fn covers(&self, other: &HeaderCond) -> bool {
        match (self, other) {
            (a, b) if a == b => true,
            (HeaderCond::Present, HeaderCond::Equals(_)) => true,
            _ => false,
        }
    }
}

impl std::fmt::Display for HeaderCond {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderCond::Equals(v) => write!(f, "= {v:?}"),
            HeaderCond::Present => f.write_str("present"),
            HeaderCond::Absent => f.write_str("absent"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_exactly_or_by_one_wildcard_label() {
        let exact = HostPattern::parse("API.Example.com.").unwrap();
        let wild = HostPattern::parse("*.example.com").unwrap();
        for (pattern, host, want) in [
            (&exact, "api.example.com", true),
            (&exact, "www.example.com", false),
            (&wild, "api.example.com", true),
            (&wild, "example.com", false),
            (&wild, "a.b.example.com", false),
            (&wild, "xexample.com", false),
        ] {
            assert_eq!(pattern.matches(host), want, "{pattern} {host}");
        }
        assert!(wild.covers(&exact));
        assert!(!exact.covers(&wild));
        for bad in [
            "",
            "*",
            "a..b",
            "api.example.com:80",
            "http://x",
            "*.*.x",
            "a b",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_request_host_loses_its_port_and_case() {
        assert_eq!(normalize_host("API.example.com:8080"), "api.example.com");
        assert!(matches!(
            normalize_host("api.test:80"),
            std::borrow::Cow::Borrowed("api.test")
        ));
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let p = normalize_prefix("/v1/");
        for (path, want) in [
            ("/v1", true),
            ("/v1/", true),
            ("/v1/users", true),
            ("/v1?x=1", true),
            ("/v10", false),
            ("/v", false),
            ("/", false),
        ] {
            assert_eq!(path_has_prefix(&p, path), want, "{path}");
        }
        assert!(path_has_prefix(&normalize_prefix("/"), "/anything"));
        assert_eq!(strip_path("/v1", "/v1/users").as_deref(), Some("/users"));
        assert_eq!(strip_path("/v1", "/v1").as_deref(), Some("/"));
        assert_eq!(strip_path("/v1", "/v1?a=b").as_deref(), Some("/?a=b"));
        assert_eq!(strip_path("/v1", "/v10"), None);
    }

    #[test]
    fn header_conditions() {
        let v = |s: &'static str| std::iter::once(s.as_bytes());
        let none = || std::iter::empty::<&[u8]>();
        assert!(HeaderCond::Equals("1".into()).holds(v("1")));
        assert!(!HeaderCond::Equals("1".into()).holds(v("2")));
        assert!(!HeaderCond::Equals("1".into()).holds(none()));
        assert!(HeaderCond::Present.holds(v("")));
        assert!(!HeaderCond::Present.holds(none()));
        assert!(HeaderCond::Absent.holds(none()));
        assert!(HeaderCond::Present.covers(&HeaderCond::Equals("1".into())));
        assert!(!HeaderCond::Equals("1".into()).covers(&HeaderCond::Present));
        assert!(!HeaderCond::Absent.covers(&HeaderCond::Present));
    }
}
