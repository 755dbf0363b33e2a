use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::config::Config;

fn table(routes: &str) -> (RouteTable, Vec<crate::config::PoolConfig>) {
    let text = format!(
        "lb:\n  upstreams: [{{ name: d, addr: '127.0.0.1:9001' }}]\n  pools:\n    \
         web: {{ upstreams: [{{ name: w, addr: '127.0.0.1:9002' }}] }}\n    \
         api: {{ upstreams: [{{ name: a, addr: '127.0.0.1:9003' }}] }}\n  routes:\n{routes}"
    );
    let (config, _) = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (RouteTable::new(config.lb.routes), config.lb.pools)
}

fn find(
    t: &RouteTable,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Option<String> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let host = pattern::normalize_host(host).into_owned();
    let facts = RequestFacts {
        method: &method,
        host: Some(&host),
        path,
        headers: &h,
    };
    t.find(&facts).map(|i| t.routes()[i].name.clone())
}

#[test]
fn the_first_match_wins_in_file_order() {
    let (t, _) = table(
        "    - { name: canary, match: { host: api.example.com, headers: { X-Canary: '1' } }, pool: web }\n    \
         - { name: api-v1, match: { host: api.example.com, path_prefix: /v1, methods: [GET, post] }, pool: api }\n    \
         - { name: wild, match: { host: '*.example.com' }, pool: web }\n    \
         - { name: exact-after-wild, match: { host: www.example.org }, pool: web }\n    \
         - { name: rest, match: {}, pool: default }\n",
    );
    let cases = [
        (
            "GET",
            "api.example.com",
            "/v1/users",
            vec![("x-canary", "1")],
            "canary",
        ),
        ("GET", "API.example.com:8443", "/v1/users", vec![], "api-v1"),
        ("POST", "api.example.com", "/v1", vec![], "api-v1"),
        ("DELETE", "api.example.com", "/v1/x", vec![], "wild"),
        ("GET", "api.example.com", "/v10", vec![], "wild"),
        ("GET", "www.example.com", "/", vec![], "wild"),
        ("GET", "www.example.org", "/", vec![], "exact-after-wild"),
        ("GET", "other.test", "/", vec![], "rest"),
    ];
    for (method, host, path, headers, want) in cases {
        assert_eq!(
            find(&t, method, host, path, &headers).as_deref(),
            Some(want),
            "{method} {host}{path}"
        );
    }
}

#[test]
fn no_match_is_none() {
    let (t, _) = table(
        "    - { name: w, match: { host: www.example.com }, pool: web }\n    \
         - { name: a, match: { path_prefix: /api }, pool: api }\n",
    );
    assert_eq!(find(&t, "GET", "x.test", "/", &[]), None);
    assert_eq!(
        find(&t, "GET", "x.test", "/api/v", &[]).as_deref(),
        Some("a")
    );
}

#[test]
fn a_thousand_host_routes_look_up_by_map() {
    let mut routes = String::new();
    for i in 0..1000 {
        let pool = if i % 2 == 0 { "web" } else { "api" };
        routes.push_str(&format!(
            "    - {{ name: h{i}, match: {{ host: h{i}.example.com }}, pool: {pool} }}\n"
        ));
    }
    routes.push_str("    - { name: rest, match: {}, pool: default }\n");
    let (t, _) = table(&routes);
    assert_eq!(
        find(&t, "GET", "h999.example.com", "/", &[]).as_deref(),
        Some("h999")
    );
    assert_eq!(
        find(&t, "GET", "h1000.example.com", "/", &[]).as_deref(),
        Some("rest")
    );
    assert_eq!(t.others.len(), 1);
}

#[test]
fn explain_says_why_each_earlier_route_did_not_match() {
    let (t, pools) = table(
        "    - { name: canary, match: { headers: { X-Canary: '1' } }, pool: web }\n    \
         - { name: old, match: { host: old.example.com }, redirect: { to: 'https://www.example.com{uri}' } }\n    \
         - { name: api, match: { host: api.example.com, path_prefix: /v1/ }, pool: api }\n    \
         - { name: rest, match: {}, pool: default }\n",
    );
    let (method, url, headers) =
        explain::parse_request("GET https://api.example.com/v1/users").unwrap();
    let e = explain::explain(&t, &pools, &method, &url, &headers).unwrap();
    assert_eq!(e.route.as_deref(), Some("api"));
    assert_eq!(e.pool.as_deref(), Some("api"));
    assert_eq!(e.skipped.len(), 2);
    assert_eq!(e.skipped[0].why, "header x-canary is not = \"1\"");
    assert_eq!(
        e.skipped[1].why,
        "host api.example.com is not old.example.com"
    );
    let text = e.to_string();
    assert!(text.contains("route api: yes, to pool api"), "{text}");

    let (method, url, headers) = explain::parse_request("http://old.example.com/a?b=1").unwrap();
    let e = explain::explain(&t, &pools, &method, &url, &headers).unwrap();
    assert_eq!(
        e.redirect.as_deref(),
        Some("308 https://www.example.com{uri}")
    );

    let (method, url, headers) =
        explain::parse_request("POST https://api.example.com/v2 X-Canary: 1").unwrap();
    assert_eq!(method, Method::POST);
    let e = explain::explain(&t, &pools, &method, &url, &headers).unwrap();
    assert_eq!(e.route.as_deref(), Some("canary"));
    assert!(explain::parse_request("").is_err());
    assert!(explain::parse_request("G@T /x").is_err());
}
