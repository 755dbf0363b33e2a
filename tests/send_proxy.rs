//! End to end: a pool's `proxy_protocol: v1 | v2`, with nginx listening
//! with `proxy_protocol` as the upstream (it refuses a connection without
//! the header). nginx reports the client the header named: each client's
//! own, its connections never shared with another client; health checks
//! pass with a LOCAL (v1: UNKNOWN) header.

mod common;

use std::net::IpAddr;

use common::nginx::Nginx;
use common::*;

/// nginx on `v1` and `v2` ports, both behind PROXY protocol, answering with
/// the address the header named and the connection's own peer.
fn servers(v1: u16, v2: u16) -> String {
    [v1, v2]
        .map(|port| {
            format!(
                "  server {{\n    listen 127.0.0.1:{port} proxy_protocol;\n    \
                 location /health {{ return 200 \"ok\\n\"; }}\n    \
                 location / {{ return 200 \"$proxy_protocol_addr $remote_addr\\n\"; }}\n  }}\n"
            )
        })
        .concat()
}

async fn seen_by(lb: &Lb, from: [u8; 4], path: &str) -> String {
    let client = reqwest::Client::builder()
        .local_address(IpAddr::from(from))
        .build()
        .unwrap();
    let resp = client.get(lb.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_reaches_the_upstream_under_its_own_name() {
    let (v1, v2) = (free_port(), free_port());
    let _nginx = Nginx::start(tempfile::tempdir().unwrap(), &servers(v1, v2), &[v1, v2]).await;
    let checks = "health_check: { interval: 200ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1 }";
    let lb = Lb::start(&format!(
        "  upstreams: []\n  pools:
    one: {{ proxy_protocol: v1, {checks}, upstreams: [{{ name: n1, addr: \"127.0.0.1:{v1}\" }}] }}
    two: {{ proxy_protocol: v2, {checks}, upstreams: [{{ name: n2, addr: \"127.0.0.1:{v2}\" }}] }}
  routes:
    - {{ name: one, match: {{ path_prefix: /one }}, pool: one }}
    - {{ name: two, match: {{}}, pool: two }}\n"
    ))
    .await;
    // Checks that said nothing would be refused by nginx: both pass, and go
    // on passing.
    wait_for("both pools' health checks passing", || async {
        let state = lb.state().await;
        let pools = state["pools"].as_array().cloned().unwrap_or_default();
        pools.len() == 2
            && pools.iter().all(|p| {
                let u = &p["upstreams"][0];
                u["health"] == "up" && u["latency_ms"]["probe"].is_number()
            })
    })
    .await;
    for (path, from) in [
        ("/one", [127, 0, 0, 5]),
        ("/two", [127, 0, 0, 5]),
        ("/one", [127, 0, 0, 6]),
        ("/two", [127, 0, 0, 6]),
        ("/two", [127, 0, 0, 5]),
    ] {
        let seen = seen_by(&lb, from, path).await;
        let client = IpAddr::from(from).to_string();
        assert_eq!(
            seen,
            format!("{client} 127.0.0.1"),
            "{path} from {client}: the header names the client, the socket is the balancer's"
        );
    }
}

#[test]
fn only_v1_or_v2_is_sent() {
    let yaml = config_yaml(
        free_port(),
        free_port(),
        "  upstreams: []\n  pools:\n    p: { proxy_protocol: v3, upstreams: [{ name: a, addr: \"127.0.0.1:9\" }] }\n  \
         routes: [{ name: r, match: {}, pool: p }]\n",
    );
    let out = check_config(&yaml);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("lb.pools.p.proxy_protocol"), "{text}");
}
