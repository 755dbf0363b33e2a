//! End to end: a route's `access.forward_auth`, with nginx as the
//! authorization service. A request it answers 2xx goes upstream with the
//! `copy_headers` of that answer (a client's own removed); a 401 or a
//! redirect to a login page goes back to the client as nginx gave it, and
//! nothing reaches the upstream; a service that cannot be reached is our
//! 502. The service sees where the request was going.

mod common;

use common::nginx::Nginx;
use common::*;

/// nginx as the service: `Bearer good` passes (naming the user, and what
/// it was told of the request), `Bearer login` is sent to a login page,
/// anything else gets a 401 with a challenge.
fn service(port: u16) -> String {
    format!(
        "  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      \
         if ($http_authorization = \"Bearer good\") {{\n        \
         add_header X-Auth-User alice always;\n        \
         add_header X-Auth-Saw \"$http_x_forwarded_method $http_x_forwarded_host $http_x_forwarded_uri $http_x_forwarded_for\" always;\n        \
         return 204;\n      }}\n      \
         if ($http_authorization = \"Bearer login\") {{\n        \
         return 302 https://login.example.com/?rd=$http_x_forwarded_uri;\n      }}\n      \
         add_header WWW-Authenticate 'Bearer realm=\"shop\"' always;\n      \
         return 401 \"token needed\\n\";\n    }}\n  }}\n"
    )
}

struct Site {
    lb: Lb,
    _nginx: Nginx,
}

async fn site() -> Site {
    let port = free_port();
    let nginx = Nginx::start(tempfile::tempdir().unwrap(), &service(port), &[port]).await;
    let up = mock("up").await;
    let lb = Lb::start(&format!(
        "  upstreams:\n{}  routes:
    - {{ name: limited, match: {{ path_prefix: /limited }}, pool: default, rate_limit: {{ requests_per_sec: 1, burst: 1 }}, access: {{ forward_auth: {{ url: \"http://127.0.0.1:{port}/check\" }} }} }}
    - {{ name: down, match: {{ path_prefix: /down }}, pool: default, access: {{ forward_auth: {{ url: \"http://{}/\", timeout: 2s }} }} }}
    - {{ name: shop, match: {{}}, pool: default, access: {{ forward_auth: {{ url: \"http://127.0.0.1:{port}/check\", copy_headers: [X-Auth-User, X-Auth-Saw] }} }} }}\n",
        upstreams_yaml(&[("up", up.addr(), 1)]),
        refused_addr()
    ))
    .await;
    std::mem::forget(up);
    Site { lb, _nginx: nginx }
}

async fn upstream_answers(lb: &Lb) -> f64 {
    metric_value(
        &lb.metrics().await,
        "hlb_requests_total{code=\"200\",pool=\"default\",upstream=\"up\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_request_carries_the_services_headers_upstream() {
    let s = site().await;
    let resp = reqwest::Client::new()
        .get(s.lb.url("/_mock/echo?item=7"))
        .header("host", "shop.example")
        .header("authorization", "Bearer good")
        .header("x-auth-user", "mallory")
        .header("x_auth_user", "mallory")
        // Naming them hop-by-hop must not strip what the service set.
        .header("connection", "keep-alive, X-Auth-User, X-Auth-Saw")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    let h = &echo["headers"];
    assert_eq!(
        h["x-auth-user"], "alice",
        "the service's, not the client's: {h}"
    );
    assert_eq!(
        h["x-auth-saw"], "GET shop.example /_mock/echo?item=7 127.0.0.1",
        "{h}"
    );
    assert_eq!(h["authorization"], "Bearer good");
    assert!(
        h.get("x_auth_user").is_none(),
        "an underscore spelling passed: {h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_or_a_login_redirect_goes_to_the_client_and_nothing_upstream() {
    let s = site().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client.get(s.lb.url("/orders")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"shop\"");
    assert!(resp.headers().get("x-request-id").is_some());
    assert_eq!(resp.text().await.unwrap(), "token needed\n");

    // A request with a body is refused as well, the connection usable.
    let resp = client
        .post(s.lb.url("/orders"))
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let resp = client
        .get(s.lb.url("/cart?x=1"))
        .header("authorization", "Bearer login")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(
        resp.headers()["location"],
        "https://login.example.com/?rd=/cart?x=1"
    );
    assert_eq!(upstream_answers(&s.lb).await, 0.0, "nothing went upstream");

    let metrics = s.lb.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "hlb_forward_auth_total{result=\"answer\",route=\"shop\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_cannot_be_reached_is_a_502_and_the_balancer_serves_on() {
    let s = site().await;
    let resp = reqwest::get(s.lb.url("/down/x")).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().contains("cannot connect"));
    let resp = reqwest::Client::new()
        .get(s.lb.url("/_mock/echo"))
        .header("authorization", "Bearer good")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_request_never_reaches_the_service() {
    let s = site().await;
    let client = reqwest::Client::new();
    let mut limited = 0;
    for _ in 0..6 {
        let resp = client.get(s.lb.url("/limited/x")).send().await.unwrap();
        if resp.status() == 429 {
            limited += 1;
        } else {
            assert_eq!(resp.status(), 401, "the service's answer");
        }
    }
    assert!(limited >= 3, "{limited}");
    let metrics = s.lb.metrics().await;
    let asked = metric_value(
        &metrics,
        "hlb_forward_auth_total{result=\"answer\",route=\"limited\"}",
    )
    .unwrap_or(0.0);
    assert_eq!(asked, f64::from(6 - limited), "{metrics}");
}

#[test]
fn a_bad_service_url_or_header_is_named_by_key() {
    let yaml = config_yaml(
        free_port(),
        free_port(),
        "  upstreams: [{ name: a, addr: \"127.0.0.1:9\" }]\n  routes:
    - { name: r, match: {}, pool: default, access: { forward_auth: { url: \"auth.local/check\", copy_headers: [\"X-User\", \"Content-Length\", \"bad name\"] } } }\n",
    );
    let out = check_config(&yaml);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("lb.routes[0].access.forward_auth.url"),
        "{text}"
    );
    assert!(
        text.contains("lb.routes[0].access.forward_auth.copy_headers[1]"),
        "{text}"
    );
    assert!(
        text.contains("lb.routes[0].access.forward_auth.copy_headers[2]"),
        "{text}"
    );
}
