//! `lb.pools` and `lb.routes`: what a pool takes from `lb`, and every
//! problem of a routes section named by key and line.

use super::super::*;

const POOLS: &str = "lb:
  retries: 2
  health_check: { interval: 2s }
  upstreams: [{ name: d, addr: '127.0.0.1:9001' }]
  pools:
    web:
      sticky: { mode: cookie }
      upstreams: [{ name: w, addr: '127.0.0.1:9002' }]
    api:
      algorithm: p2c
      retries: 0
      health_check: { path: /status }
      upstreams: [{ name: a, addr: '127.0.0.1:9003' }]
";

fn problems(routes: &str) -> Vec<String> {
    let text = format!("{POOLS}  routes:\n{routes}");
    match Config::parse(&text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn pools_take_lbs_keys_they_do_not_give() {
    let text = format!(
        "{POOLS}  routes:\n    - {{ match: {{ host: web.test }}, pool: web }}\n    \
         - {{ match: {{ host: api.test }}, pool: api }}\n    - {{ pool: default }}\n"
    );
    let (c, _) = Config::parse(&text).unwrap();
    let names: Vec<&str> = c.lb.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["default", "web", "api"],
        "file order, default first"
    );
    let (web, api) = (&c.lb.pools[1], &c.lb.pools[2]);
    assert_eq!(web.retries, 2);
    assert_eq!(api.retries, 0);
    assert_eq!(api.algorithm, Algorithm::P2c);
    assert_eq!(api.health_check.path, "/status");
    assert_eq!(api.health_check.interval, std::time::Duration::from_secs(2));
    assert_eq!(web.sticky.mode, StickyMode::Cookie);
    // A pool's cookie is its own unless named.
    assert_eq!(web.sticky.cookie_name, "HLB_STICKY_web");
    assert_eq!(c.lb.pools[0].sticky.cookie_name, "HLB_STICKY");
    assert_eq!(c.lb.routes.len(), 3);
    assert_eq!(c.lb.routes[2].name, "route3");
}

#[test]
fn without_routes_everything_goes_to_default() {
    let (c, _) =
        Config::parse("lb:\n  upstreams: [{ name: d, addr: '127.0.0.1:9001' }]\n").unwrap();
    assert_eq!(c.lb.routes.len(), 1);
    assert_eq!(c.lb.routes[0].action, RouteAction::Pool(0));
    assert_eq!(c.lb.routes[0].matches, MatchConfig::default());
}

#[test]
fn an_unknown_pool_and_an_unused_one_are_named() {
    let p =
        problems("    - { name: a, match: { host: web.test }, pool: wbe }\n    - { pool: api }\n");
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].starts_with("lb.pools.web: no route sends requests to this pool (line 6)"),
        "{p:?}"
    );
    assert!(
        p[1].contains("lb.routes[0].pool: no pool named `wbe` (pools: default, web, api)"),
        "{p:?}"
    );
}

#[test]
fn named_pools_without_routes_are_refused() {
    let text = POOLS.to_string();
    let e = Config::parse(&text).unwrap_err();
    assert!(
        e.to_string()
            .contains("lb.pools: named pools need lb.routes"),
        "{e}"
    );
}

#[test]
fn a_route_an_earlier_one_always_matches_is_refused() {
    let p = problems(
        "    - { name: all-web, match: { host: '*.example.com' }, pool: web }\n    \
         - { name: api, match: { host: api.example.com, path_prefix: /v1 }, pool: api }\n    \
         - { name: rest, match: {}, pool: default }\n    \
         - { name: late, match: { methods: [GET] }, pool: api }\n",
    );
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].contains("lb.routes[1].match: can never match: route `all-web` before it"),
        "{p:?}"
    );
    assert!(
        p[1].contains("lb.routes[3].match: can never match: route `rest`"),
        "{p:?}"
    );
}

#[test]
fn narrower_earlier_routes_leave_later_ones_reachable() {
    let text = format!(
        "{POOLS}  routes:\n    \
         - {{ name: canary, match: {{ host: api.test, headers: {{ X-Canary: '1' }} }}, pool: web }}\n    \
         - {{ name: v1, match: {{ host: api.test, path_prefix: /v1, methods: [GET] }}, pool: api }}\n    \
         - {{ name: api, match: {{ host: api.test }}, pool: api }}\n    \
         - {{ name: rest, match: {{ path_prefix: / }}, pool: default }}\n"
    );
    Config::parse(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn names_actions_and_headers_are_checked() {
    let p = problems(
        "    - { name: a, match: { host: web.test }, pool: web }\n    \
         - { name: a, match: { host: api.test }, pool: api, redirect: { to: 'https://x' } }\n    \
         - { name: b, match: { host: 'x.test:80', headers: { 'Bad Header': '1' } }, pool: api }\n    \
         - { name: c, match: { host: c.test }, redirect: { to: 'https://c', status: 200 } }\n    \
         - { name: d, match: { host: d.test, methods: [G3T] }, pool: default,\n        \
             request_headers: { set: { X-Ok: \"a\\nb\" } }, strip_prefix: v1 }\n",
    );
    let joined = p.join("\n");
    for want in [
        "lb.routes[1].name: a second route named `a`",
        "lb.routes[1]: has both pool and redirect",
        "lb.routes[2].match.host: `x.test:80` is not a host name",
        "lb.routes[2].match.headers.Bad Header: `Bad Header` is not a valid HTTP header name",
        "lb.routes[3].redirect.status: must be 301, 302, 303, 307 or 308",
        "lb.routes[4].match.methods[0]: `G3T` is not an HTTP method",
        "lb.routes[4].request_headers.set.X-Ok: \"a\\nb\" is not a valid HTTP header value",
        "lb.routes[4].strip_prefix: must start with /",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
    // Each with its line.
    assert!(p.iter().all(|l| l.contains("(line ")), "{joined}");
}

#[test]
fn a_pools_own_problem_is_named_under_the_pool_and_an_inherited_one_once() {
    let text = "lb:
  health_check: { interval: fivesec }
  upstreams: [{ name: d, addr: '127.0.0.1:9001' }]
  pools:
    web:
      retries: -1
      upstreams: [{ name: d, addr: '127.0.0.1:9002' }]
  routes:
    - { match: { host: web.test }, pool: web }
    - { pool: default }
";
    let e = Config::parse(text).unwrap_err();
    let p: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p[0].starts_with("lb.health_check.interval:"), "{p:?}");
    assert!(
        p[1].starts_with("lb.pools.web.retries: must be at least 0 (line 6)"),
        "{p:?}"
    );
    assert!(
        p[2].contains("upstream `d` is also in pool `default`"),
        "{p:?}"
    );
}

#[test]
fn a_routes_access_names_the_bad_address_and_wants_a_list() {
    let p = problems(
        "    - { match: { host: web.test }, pool: web, access: { allow: [10.0.0.0/8, office] } }\n    \
         - { match: { host: api.test }, pool: api, access: {} }\n    - { pool: default }\n",
    );
    assert!(
        p[0].starts_with("lb.routes[0].access.allow[1]: `office` is not a CIDR"),
        "{p:?}"
    );
    assert!(
        p[1].starts_with("lb.routes[1].access: give `allow`"),
        "{p:?}"
    );
    assert_eq!(p.len(), 2, "{p:?}");
}
