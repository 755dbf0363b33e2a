//! Routes and pools end to end: requests sent by host, path, method and
//! header to their pools; a prefix stripped; headers set and removed both
//! ways; a redirect; our 404; per-route rate limits and timeouts; each pool's
//! drains and stickiness its own; `--explain` and `/api/explain`.

mod common;

use std::time::Duration;

use common::*;
use mock_backend::Behaviour;

const TOKEN: &str = "t0ken";

/// A client that sends `Host` as given and never follows redirects.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(lb: &Lb, host: &str, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().get(lb.url(path)).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_and_header_routes_send_each_request_to_its_pool() {
    let (web1, api1, def) = (mock("web1").await, mock("api1").await, mock("def").await);
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let lb = Lb::start(&format!(
        "  upstreams:\n{}  pools:\n    web:\n      upstreams:\n{}    api:\n      upstreams:\n{}  routes:
    - {{ name: canary, match: {{ host: api.test, headers: {{ X-Canary: '1' }} }}, pool: web }}
    - name: api
      match: {{ host: API.test, path_prefix: /v1/ }}
      pool: api
      strip_prefix: /v1
      request_headers: {{ set: {{ X-Env: prod }}, remove: [X-Debug] }}
      response_headers: {{ set: {{ X-Route: api }}, remove: [Content-Type] }}
    - {{ name: old, match: {{ host: old.test }}, redirect: {{ to: 'https://www.test{{uri}}', status: 301 }} }}
    - {{ name: site, match: {{ host: '*.test' }}, pool: web }}
    - {{ name: rest, match: {{ path_prefix: /default }}, pool: default }}
  access_log: {{ path: \"{}\" }}\n",
        upstreams_yaml(&[("def", def.addr(), 1)]),
        upstreams_yaml(&[("web1", web1.addr(), 1)]).replace("    - ", "        - "),
        upstreams_yaml(&[("api1", api1.addr(), 1)]).replace("    - ", "        - "),
        log_path.display(),
    ))
    .await;

    // Host (any case, any port) and prefix: the api pool, the prefix gone,
    // the route's request headers set and removed.
    let r = get(
        &lb,
        "api.TEST:8080",
        "/v1/_mock/echo",
        &[("x-debug", "1"), ("x-env", "dev")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(backend_of(&r), "api1");
    assert_eq!(r.headers()["x-route"], "api");
    assert!(
        r.headers().get("content-type").is_none(),
        "removed on the way back"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["headers"]["x-env"], "prod");
    assert!(body["headers"].get("x-debug").is_none(), "{body}");
    let r = get(&lb, "api.test", "/v1/users?id=7", &[]).await;
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["server"], "api1");
    assert_eq!(body["path"], "/users");
    // Whole segments only: /v10 is not under /v1 and falls to the wildcard.
    assert_eq!(backend_of(&get(&lb, "api.test", "/v10", &[]).await), "web1");
    // The header canary goes first.
    let r = get(&lb, "api.test", "/v1/users", &[("x-canary", "1")]).await;
    assert_eq!(backend_of(&r), "web1");
    // A wildcard host.
    assert_eq!(backend_of(&get(&lb, "www.test", "/", &[]).await), "web1");
    // A redirect carries the path and query.
    let r = get(&lb, "old.test", "/a/b?c=1", &[]).await;
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "https://www.test/a/b?c=1");
    // No route: our own 404, with a short body, the connection kept.
    let r = get(&lb, "elsewhere.example", "/x", &[]).await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("no route"));
    // The default pool behind its own route.
    assert_eq!(
        backend_of(&get(&lb, "elsewhere.example", "/default/x", &[]).await),
        "def"
    );

    // Each route's series, and the routes table.
    let metrics = lb.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "hlb_route_requests_total{code=\"200\",route=\"api\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "hlb_route_requests_total{code=\"301\",route=\"old\"}"
        ),
        Some(1.0)
    );
    assert!(
        metrics.contains("hlb_route_duration_seconds_count{route=\"site\"} 2"),
        "{metrics}"
    );
    let routes: serde_json::Value = reqwest::get(lb.url_dashboard("/api/routes"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let routes = routes["routes"].as_array().unwrap();
    let names: Vec<&str> = routes.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["canary", "api", "old", "site", "rest"]);
    assert_eq!(routes[1]["pool"], "api");
    assert_eq!(routes[1]["requests_total"], 2);
    // The state lists every pool with its upstreams.
    let state = lb.state().await;
    let pools: Vec<&str> = state["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(pools, ["default", "web", "api"]);
    assert_eq!(state["pools"][2]["upstreams"][0]["name"], "api1");

    // Explained by the dashboard, as by `-t --explain`.
    let e: serde_json::Value = reqwest::get(lb.url_dashboard(
        "/api/explain?method=GET&url=https://api.test/v1/users&headers=X-Canary:%200",
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(e["route"], "api");
    assert_eq!(e["pool"], "api");
    assert_eq!(e["skipped"][0]["why"], "header x-canary is not = \"1\"");

    // The access log names the route and the pool.
    wait_for("access log lines with routes", || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        async move { text.contains("\"route\":\"api\"") && text.contains("\"pool\":\"api\"") }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_on_the_command_line_names_the_route_and_why_not_the_others() {
    let yaml = config_yaml(
        free_port(),
        free_port(),
        "  pools:
    api: { upstreams: [{ name: a, addr: '127.0.0.1:9003' }] }
    web: { upstreams: [{ name: w, addr: '127.0.0.1:9002' }] }
  routes:
    - { name: web, match: { host: www.example.com }, pool: web }
    - { name: api-v1, match: { host: api.example.com, path_prefix: /v1, methods: [GET] }, pool: api }
",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.yaml");
    std::fs::write(&path, yaml).unwrap();
    let run = |request: &str| {
        std::process::Command::new(binary())
            .args(["-t", "-c"])
            .arg(&path)
            .args(["--explain", request])
            .output()
            .unwrap()
    };
    let out = run("GET https://api.example.com/v1/users");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("route web: no, host api.example.com is not www.example.com"),
        "{text}"
    );
    assert!(text.contains("route api-v1: yes, to pool api"), "{text}");
    let out = run("DELETE https://api.example.com/v1/users");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("method DELETE is not one of GET"), "{text}");
    assert!(text.contains("no route matches: 404"), "{text}");
    let out = run("GET not a url at all");
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_rate_limit_and_timeout_are_its_own() {
    let slow = mock_with(
        "slow",
        Behaviour {
            latency_ms: 600,
            health_latency: false,
            ..Behaviour::default()
        },
    )
    .await;
    let lb = Lb::start(&format!(
        "  upstreams:\n{}  routes:
    - {{ name: short, match: {{ path_prefix: /short }}, pool: default, timeouts: {{ read: 150ms }} }}
    - {{ name: limited, match: {{ path_prefix: /limited }}, pool: default,
        rate_limit: {{ requests_per_sec: 0.1, burst: 2 }} }}
    - {{ name: rest, pool: default }}\n",
        upstreams_yaml(&[("slow", slow.addr(), 1)])
    ))
    .await;
    let host = "any.test";
    // The short route's read timeout: a 504; the same upstream answers the
    // rest in its own time.
    let (short, rest) = tokio::join!(get(&lb, host, "/short", &[]), get(&lb, host, "/other", &[]));
    assert_eq!(short.status(), 504);
    assert_eq!(rest.status(), 200);
    // Two at once, then the limited route refuses this client...
    for _ in 0..2 {
        assert_eq!(get(&lb, host, "/limited", &[]).await.status(), 200);
    }
    let r = get(&lb, host, "/limited", &[]).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // ...while every other route still serves it.
    assert_eq!(get(&lb, host, "/other", &[]).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_in_one_pool_leaves_the_other_untouched() {
    let (w1, w2, a1) = (mock("w1").await, mock("w2").await, mock("a1").await);
    let lb = Lb::start_with(
        &format!(
            "  pools:\n    web:\n      upstreams:\n{}    api:\n      upstreams:\n{}  routes:
    - {{ match: {{ host: api.test }}, pool: api }}
    - {{ pool: web }}\n",
            upstreams_yaml(&[("w1", w1.addr(), 1), ("w2", w2.addr(), 1)])
                .replace("    - ", "        - "),
            upstreams_yaml(&[("a1", a1.addr(), 1)]).replace("    - ", "        - "),
        ),
        &format!("  admin_token: {TOKEN}\n"),
    )
    .await;
    let admin = |method: reqwest::Method, path: &str| {
        client()
            .request(method, lb.url_dashboard(path))
            .bearer_auth(TOKEN)
    };
    // The unprefixed paths are `default`'s, which has no w1.
    let r = admin(reqwest::Method::POST, "/api/upstreams/w1/drain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = admin(reqwest::Method::POST, "/api/pools/nope/upstreams/w1/drain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("no pool named `nope`"));
    let r = admin(reqwest::Method::POST, "/api/pools/web/upstreams/w1/drain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let row: serde_json::Value = r.json().await.unwrap();
    assert_eq!(row["drained"], true);
    for _ in 0..10 {
        assert_eq!(backend_of(&get(&lb, "www.test", "/", &[]).await), "w2");
        assert_eq!(backend_of(&get(&lb, "api.test", "/", &[]).await), "a1");
    }
    // Added at run time to one pool; a name another pool holds is refused.
    let a2 = mock("a2").await;
    let body = serde_json::json!({ "name": "a2", "addr": a2.addr().to_string() });
    let r = admin(reqwest::Method::POST, "/api/pools/api/upstreams")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let body = serde_json::json!({ "name": "w2", "addr": a2.addr().to_string() });
    let r = admin(reqwest::Method::POST, "/api/pools/api/upstreams")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let lb_ref = &lb;
    wait_for("a2 taking api requests", || async move {
        backend_of(&get(lb_ref, "api.test", "/", &[]).await) == "a2"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_belongs_to_its_pool() {
    let (a1, a2, b1, b2) = (
        mock("a1").await,
        mock("a2").await,
        mock("b1").await,
        mock("b2").await,
    );
    let pool = |ups: &str| {
        format!(
            "      sticky: {{ mode: cookie, cookie_name: S, secret: 0123456789abcdef0123 }}\n      upstreams:\n{}",
            ups.replace("    - ", "        - ")
        )
    };
    let lb = Lb::start(&format!(
        "  pools:\n    a:\n{}    b:\n{}  routes:
    - {{ match: {{ host: a.test }}, pool: a }}
    - {{ match: {{ host: b.test }}, pool: b }}\n",
        pool(&upstreams_yaml(&[
            ("a1", a1.addr(), 1),
            ("a2", a2.addr(), 1)
        ])),
        pool(&upstreams_yaml(&[
            ("b1", b1.addr(), 1),
            ("b2", b2.addr(), 1)
        ])),
    ))
    .await;
    let cookie_of = |r: &reqwest::Response| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                v.split(';')
                    .next()
                    .filter(|p| p.starts_with("S="))
                    .map(str::to_string)
            })
    };
    let r = get(&lb, "a.test", "/", &[]).await;
    let cookie = cookie_of(&r).expect("a sticky cookie from pool a");
    let first = backend_of(&r);
    // Honoured by its own pool...
    for _ in 0..5 {
        let r = get(&lb, "a.test", "/", &[("cookie", &cookie)]).await;
        assert_eq!(backend_of(&r), first);
        assert!(cookie_of(&r).is_none());
    }
    // ...and not opened by the other, which balances and sets its own.
    let r = get(&lb, "b.test", "/", &[("cookie", &cookie)]).await;
    assert!(backend_of(&r).starts_with('b'));
    assert!(cookie_of(&r).is_some_and(|c| c != cookie));
    let metrics = lb.metrics().await;
    assert_eq!(
        metric_value(&metrics, "hlb_sticky_total{result=\"invalid\"}"),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_each_pool_the_routes_and_explains() {
    let (w1, a1, a2) = (mock("w1").await, mock("a1").await, mock("a2").await);
    let lb = Lb::start_with(
        &format!(
            "  pools:\n    web:\n      upstreams:\n{}    api:\n      upstreams:\n{}  routes:
    - {{ name: api, match: {{ path_prefix: /api }}, pool: api, strip_prefix: /api }}
    - {{ name: site, pool: web }}\n",
            upstreams_yaml(&[("w1", w1.addr(), 1)]).replace("    - ", "        - "),
            upstreams_yaml(&[("a1", a1.addr(), 1), ("a2", a2.addr(), 1)])
                .replace("    - ", "        - "),
        ),
        &format!("  admin_token: {TOKEN}\n"),
    )
    .await;
    // Some traffic to both pools, so the charts and the routes table move.
    for _ in 0..10 {
        assert_eq!(reqwest::get(lb.url("/api/x")).await.unwrap().status(), 200);
        assert_eq!(reqwest::get(lb.url("/")).await.unwrap().status(), 200);
    }
    let url = lb.url_dashboard("/");
    browser_script(
        "routes.mjs",
        &[&url, TOKEN, "api", "a2"],
        Duration::from_secs(90),
    )
    .await;
    // The empty `default` no route uses is not shown.
    let state = lb.state().await;
    let names: Vec<&str> = state["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "api"]);
    assert_eq!(state["pools"][1]["upstreams"][1]["drained"], true);
    // The routes' recent rates are in the state too, under traffic.
    let lb_ref = &lb;
    wait_for("the api route's rate and p99", || async move {
        let r = reqwest::get(lb_ref.url("/api/x")).await.unwrap();
        assert_eq!(r.status(), 200);
        let route = &lb_ref.state().await["routes"][0];
        route["p99_ms"].as_f64().is_some() && route["rps"].as_f64() > Some(0.0)
    })
    .await;
}
