//! A fleet on a real etcd (Debian's `etcd-server`, started here on ephemeral
//! ports): two balancers agree on the upstream set and the operator's drains,
//! list each other, and ride out an etcd restart without a failed request.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::*;
use etcd_client::Client;

const TOKEN: &str = "fleet-token";

/// Runs `dashboard/tests/fleet.mjs` against `lb`'s dashboard: its fleet panel
/// must show `ids` and `state` (`connected` or `unreachable`).
async fn fleet_panel_shows(lb: &Lb, ids: &str, state: &str) {
    let url = lb.url_dashboard("/");
    browser_script("fleet.mjs", &[&url, ids, state], Duration::from_secs(60)).await;
}

/// A balancer in the fleet `prefix` on `etcd`, with the file upstream `file`.
async fn member(etcd: &Etcd, prefix: &str, id: &str, file: &mock_backend::MockServer) -> Lb {
    member_at(&etcd.endpoint(), prefix, id, file).await
}

/// [`member`] reaching etcd at `endpoint`.
async fn member_at(endpoint: &str, prefix: &str, id: &str, file: &mock_backend::MockServer) -> Lb {
    let body = format!(
        "  algorithm: round_robin\n  health_check: {{ interval: 200ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1 }}\n  \
         etcd: {{ endpoints: [\"{endpoint}\"], prefix: \"{prefix}\", id: {id} }}\n  upstreams:\n{}",
        upstreams_yaml(&[("s1", file.addr(), 1)])
    );
    Lb::start_with(&body, &format!("  admin_token: {TOKEN}\n")).await
}

/// A TCP relay in front of etcd that can be cut (every connection dropped,
/// new ones refused) and restored on the same port: an instance loses etcd
/// while the test can still write to it.
struct Relay {
    port: u16,
    target: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let mut relay = Relay {
            port: free_port(),
            target,
            task: None,
        };
        relay.restore().await;
        relay
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Drops the listener and every relayed connection (the JoinSet aborts
    /// its tasks when the accept task is aborted and dropped).
    async fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Puts an upstream entry `{"addr": addr}` at `key`.
async fn put_upstream(client: &mut Client, key: impl Into<Vec<u8>>, addr: std::net::SocketAddr) {
    let value = format!(r#"{{"addr": "{addr}"}}"#);
    client
        .put(key, value, None)
        .await
        .expect("put an upstream in etcd");
}

async fn fleet(lb: &Lb) -> serde_json::Value {
    reqwest::get(lb.url_dashboard("/api/fleet"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The upstream `name` in `lb`'s state, if present.
async fn find(lb: &Lb, name: &str) -> Option<serde_json::Value> {
    let state = lb.state().await;
    state["upstreams"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == name).cloned())
}

async fn admin(
    lb: &Lb,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .request(method, lb.url_dashboard(path))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    req.send().await.unwrap()
}

/// Waits until `lb` has `name` up, and reports how long it took.
async fn until_up(lb: &Lb, name: &str) -> Duration {
    let start = Instant::now();
    wait_for(&format!("{name} up at {}", lb.proxy), || async move {
        find(lb, name).await.is_some_and(|u| u["health"] == "up")
    })
    .await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_agree_on_upstreams_and_drains_through_etcd() {
    let etcd = Etcd::start().await;
    let (m1, m2, m3) = (mock("m1").await, mock("m2").await, mock("m3").await);
    let a = member(&etcd, "/agree/", "a", &m1).await;
    let b = member(&etcd, "/agree/", "b", &m1).await;

    // Each lists both, connected.
    for lb in [&a, &b] {
        wait_for("both instances in /api/fleet", || async move {
            let f = fleet(lb).await;
            let ids: Vec<&str> = f["instances"]
                .as_array()
                .map(|a| a.iter().filter_map(|i| i["id"].as_str()).collect())
                .unwrap_or_default();
            f["connected"] == true && ids == ["a", "b"]
        })
        .await;
    }
    fleet_panel_shows(&a, "a,b", "connected").await;
    let f = fleet(&a).await;
    let b_entry = f["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "b")
        .unwrap()
        .clone();
    assert_eq!(b_entry["listen"][0], format!("http://{}", b.proxy));
    assert_eq!(b_entry["dashboard"], format!("http://{}/", b.dashboard));
    assert!(b_entry["started"].as_str().unwrap().ends_with('Z'));

    // An upstream put in etcd reaches both, and takes their traffic.
    let mut client = etcd.client().await;
    let written = Instant::now();
    client
        .put(
            "/agree/upstreams/s2",
            format!(r#"{{"addr": "{}", "weight": 1}}"#, m2.addr()),
            None,
        )
        .await
        .unwrap();
    for lb in [&a, &b] {
        until_up(lb, "s2").await;
        let http = reqwest::Client::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            seen.insert(backend_of(&http.get(lb.url("/")).send().await.unwrap()));
        }
        assert!(
            seen.contains("m2"),
            "s2 took no traffic at {}: {seen:?}",
            lb.proxy
        );
    }
    eprintln!(
        "an etcd upstream was up on both instances {:?} after the write",
        written.elapsed()
    );

    // A value that does not parse is refused with an event; the rest stands.
    client
        .put("/agree/upstreams/broken", "{", None)
        .await
        .unwrap();
    wait_for("the refusal in b's events", || async {
        b.state().await["events"]
            .to_string()
            .contains("/agree/upstreams/broken refused")
    })
    .await;
    assert!(find(&b, "s2").await.is_some());

    // A drain through a's dashboard reaches b.
    let r = admin(&a, reqwest::Method::POST, "/api/upstreams/s2/drain", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["drained"],
        true
    );
    let drained = Instant::now();
    wait_for("b to drain s2", || async {
        find(&b, "s2").await.is_some_and(|u| u["drained"] == true)
    })
    .await;
    eprintln!(
        "a drain through a reached b {:?} after a's answer",
        drained.elapsed()
    );
    let http = reqwest::Client::new();
    for _ in 0..20 {
        let r = http.get(b.url("/")).send().await.unwrap();
        assert_eq!(
            backend_of(&r),
            "m1",
            "a drained upstream answered through b"
        );
    }
    let r = admin(
        &b,
        reqwest::Method::PUT,
        "/api/upstreams/s2/weight",
        Some(r#"{"weight": 7}"#),
    )
    .await;
    assert_eq!(r.status(), 200);
    wait_for("a to take b's weight", || async {
        find(&a, "s2").await.is_some_and(|u| u["base_weight"] == 7)
    })
    .await;
    let r = admin(&b, reqwest::Method::POST, "/api/upstreams/s2/enable", None).await;
    assert_eq!(r.status(), 200);
    wait_for("a to enable s2 again", || async {
        find(&a, "s2").await.is_some_and(|u| u["drained"] == false)
    })
    .await;

    // An add through b reaches a; a taken name is refused; a file upstream
    // is not etcd's to remove.
    let add = format!(r#"{{"name": "s3", "addr": "{}"}}"#, m3.addr());
    assert_eq!(
        admin(&b, reqwest::Method::POST, "/api/upstreams", Some(&add))
            .await
            .status(),
        201
    );
    until_up(&a, "s3").await;
    assert_eq!(
        admin(&a, reqwest::Method::POST, "/api/upstreams", Some(&add))
            .await
            .status(),
        409
    );
    let r = admin(&a, reqwest::Method::DELETE, "/api/upstreams/s1", None).await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("config file"));
    assert_eq!(
        admin(&a, reqwest::Method::DELETE, "/api/upstreams/s3", None)
            .await
            .status(),
        200
    );
    wait_for("b to lose s3", || async { find(&b, "s3").await.is_none() }).await;
    assert!(find(&b, "s1").await.is_some());

    // An etcd entry of a file entry's name replaces it; deleted, the file's
    // comes back.
    put_upstream(&mut client, "/agree/upstreams/s1", m3.addr()).await;
    wait_for("a's s1 to be etcd's", || async {
        find(&a, "s1")
            .await
            .is_some_and(|u| u["addr"] == m3.addr().to_string())
    })
    .await;
    // Removed through the admin API: 200 once the file's entry is back.
    let r = admin(&a, reqwest::Method::DELETE, "/api/upstreams/s1", None).await;
    assert_eq!(r.status(), 200);
    wait_for("a's s1 to be the file's again", || async {
        find(&a, "s1")
            .await
            .is_some_and(|u| u["addr"] == m1.addr().to_string())
    })
    .await;

    // An instance that stops leaves the fleet at once: its lease is revoked,
    // so its key is gone as it exits, long before the 10 s lease would lapse.
    let mut b = b;
    b.signal("TERM");
    b.wait_exit().await;
    let left = client.get("/agree/instances/b", None).await.unwrap();
    assert!(left.kvs().is_empty(), "b's key outlived it");
    wait_for("b gone from a's fleet", || async {
        fleet(&a).await["instances"]
            .as_array()
            .is_some_and(|i| i.len() == 1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_loses_no_request_and_the_watch_resumes() {
    let mut etcd = Etcd::start().await;
    let (m1, m2) = (mock("m1").await, mock("m2").await);
    let mut client = etcd.client().await;
    put_upstream(&mut client, "/restart/upstreams/s2", m2.addr()).await;
    let a = member(&etcd, "/restart/", "a", &m1).await;
    // Read at start: s2 serves from the first request.
    assert!(find(&a, "s2").await.is_some());
    until_up(&a, "s2").await;
    // Its session is up and has registered it before etcd goes away (the
    // read at start comes before either).
    wait_for("a's session up, with a registered", || async {
        let f = fleet(&a).await;
        f["connected"] == true
            && f["instances"]
                .as_array()
                .is_some_and(|i| i.iter().any(|x| x["id"] == "a"))
    })
    .await;

    // Clients keep asking while etcd goes away and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, sent, failed, url) = (stop.clone(), sent.clone(), failed.clone(), a.url("/"));
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                sent.fetch_add(1, Ordering::Relaxed);
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    etcd.stop();
    wait_for("a to see etcd gone", || async {
        fleet(&a).await["connected"] == false
    })
    .await;
    assert!(a.state().await["events"]
        .to_string()
        .contains("serving the last known state"));
    assert!(a.metrics().await.contains("hlb_etcd_connected 0"));
    fleet_panel_shows(&a, "a", "unreachable").await;
    let during = sent.load(Ordering::Relaxed);
    etcd.run().await;
    wait_for("a to reconnect", || async {
        fleet(&a).await["connected"] == true
    })
    .await;
    // The watch resumed: a drain written now is applied.
    let mut client = etcd.client().await;
    client
        .put("/restart/overrides/s2", r#"{"drained": true}"#, None)
        .await
        .unwrap();
    wait_for("the drain after the restart", || async {
        find(&a, "s2").await.is_some_and(|u| u["drained"] == true)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(
        sent > during && during > 0,
        "the load did not run through the outage"
    );
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across the etcd restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_over_tls_with_a_password_is_joined_and_a_wrong_password_is_told() {
    let etcd = Etcd::start_tls().await;
    let m1 = mock("m1").await;
    let mut client = etcd.client().await;
    put_upstream(&mut client, "/secure/upstreams/s2", m1.addr()).await;
    let _ = client.role_add("root").await;
    client.user_add("root", "rootpw", None).await.unwrap();
    client.user_grant_role("root", "root").await.unwrap();
    client.auth_enable().await.unwrap();
    let ca = etcd.tls.as_ref().unwrap().0.display().to_string();
    let body = |password: &str| {
        format!(
            "  etcd: {{ endpoints: [\"{}\"], prefix: /secure/, id: a, username: root, password: {password}, tls: {{ ca: \"{ca}\" }} }}\n  upstreams: []\n",
            etcd.endpoint()
        )
    };
    let a = Lb::start(&body("rootpw")).await;
    // Read at start over TLS, with the password: s2 is there already.
    assert!(find(&a, "s2").await.is_some());
    wait_for("a connected", || async {
        fleet(&a).await["connected"] == true
    })
    .await;
    assert_eq!(fleet(&a).await["instances"][0]["id"], "a");
    let wrong = Lb::start(&body("wrong")).await;
    wait_for("the refusal to show", || async {
        let f = fleet(&wrong).await;
        f["connected"] == false
            && f["error"]
                .as_str()
                .is_some_and(|e| e.contains("authentication failed"))
    })
    .await;
    assert!(find(&wrong, "s2").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_entry_written_at_run_time_is_checked_over_http2() {
    // A gRPC server speaks HTTP/2 only: checked over HTTP/1.1 it would stay
    // down, so its coming up shows the check took the entry's protocol.
    let (_reporter, service) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let etcd = Etcd::start().await;
    let m1 = mock("m1").await;
    let a = member(&etcd, "/h2/", "a", &m1).await;
    wait_for("a connected", || async {
        fleet(&a).await["connected"] == true
    })
    .await;
    let mut client = etcd.client().await;
    client
        .put(
            "/h2/upstreams/g",
            format!(r#"{{"addr": "{grpc}", "h2": true}}"#),
            None,
        )
        .await
        .unwrap();
    until_up(&a, "g").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_written_while_an_instance_is_cut_off_is_taken_when_it_is_back() {
    let etcd = Etcd::start().await;
    let (m1, m2) = (mock("m1").await, mock("m2").await);
    let mut client = etcd.client().await;
    for name in ["s2", "s3"] {
        put_upstream(&mut client, format!("/cut/upstreams/{name}"), m2.addr()).await;
    }
    let target: std::net::SocketAddr = etcd.endpoint().parse().unwrap();
    let mut relay = Relay::start(target).await;
    let a = member_at(&relay.endpoint(), "/cut/", "a", &m1).await;
    wait_for("a connected with s2 and s3", || async {
        fleet(&a).await["connected"] == true
            && find(&a, "s2").await.is_some()
            && find(&a, "s3").await.is_some()
    })
    .await;
    relay.cut().await;
    wait_for("a cut off", || async {
        fleet(&a).await["connected"] == false
    })
    .await;
    // Meanwhile: one entry deleted, one drained, one added.
    client.delete("/cut/upstreams/s2", None).await.unwrap();
    client
        .put("/cut/overrides/s3", r#"{"drained": true}"#, None)
        .await
        .unwrap();
    put_upstream(&mut client, "/cut/upstreams/s4", m2.addr()).await;
    // Still the last known state while cut off.
    assert!(find(&a, "s2").await.is_some());
    relay.restore().await;
    wait_for("a to take what was written meanwhile", || async {
        fleet(&a).await["connected"] == true
            && find(&a, "s2").await.is_none()
            && find(&a, "s3").await.is_some_and(|u| u["drained"] == true)
            && find(&a, "s4").await.is_some()
    })
    .await;
}

/// The upstream `name` of pool `pool` in `lb`'s state, if present.
async fn find_in(lb: &Lb, pool: &str, name: &str) -> Option<serde_json::Value> {
    let state = lb.state().await;
    let pools = state["pools"].as_array()?.clone();
    let p = pools.into_iter().find(|p| p["name"] == pool)?;
    p["upstreams"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == name).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pool_has_its_own_keys_in_etcd() {
    let etcd = Etcd::start().await;
    let (w1, a1, a2) = (mock("w1").await, mock("a1").await, mock("a2").await);
    let prefix = "/pools-fleet/";
    let body = |id: &str| {
        format!(
            "  health_check: {{ interval: 200ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1 }}\n  \
             etcd: {{ endpoints: [\"{}\"], prefix: \"{prefix}\", id: {id} }}\n  pools:\n    web:\n      upstreams:\n{}    api:\n      upstreams:\n{}  routes:\n    - {{ match: {{ host: api.test }}, pool: api }}\n    - {{ pool: web }}\n",
            etcd.endpoint(),
            upstreams_yaml(&[("w1", w1.addr(), 1)]).replace("    - ", "        - "),
            upstreams_yaml(&[("a1", a1.addr(), 1)]).replace("    - ", "        - "),
        )
    };
    let token = format!("  admin_token: {TOKEN}\n");
    let (one, two) = (
        Lb::start_with(&body("one"), &token).await,
        Lb::start_with(&body("two"), &token).await,
    );
    // An entry under the api pool's keys joins the api pool of both, and
    // no other pool.
    let mut client = etcd.client().await;
    put_upstream(
        &mut client,
        format!("{prefix}pools/api/upstreams/a2"),
        a2.addr(),
    )
    .await;
    for lb in [&one, &two] {
        wait_for("a2 in pool api", || async move {
            find_in(lb, "api", "a2")
                .await
                .is_some_and(|u| u["health"] == "up")
        })
        .await;
        assert!(find_in(lb, "web", "a2").await.is_none());
    }
    // A drain in the api pool, made on one instance, is written under the
    // pool's keys and drains it on both.
    let r = admin(
        &one,
        reqwest::Method::POST,
        "/api/pools/api/upstreams/a1/drain",
        None,
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let got = client
        .get(format!("{prefix}pools/api/overrides/a1"), None)
        .await
        .unwrap();
    assert_eq!(got.kvs().len(), 1, "the override is the api pool's");
    let two_ref = &two;
    wait_for("a1 drained on the other instance", || async move {
        find_in(two_ref, "api", "a1")
            .await
            .is_some_and(|u| u["drained"] == true)
    })
    .await;
    // Its requests go to a2 alone; the web pool is untouched.
    let c = reqwest::Client::new();
    for _ in 0..6 {
        let r = c
            .get(two.url("/"))
            .header("host", "api.test")
            .send()
            .await
            .unwrap();
        assert_eq!(backend_of(&r), "a2");
        assert_eq!(backend_of(&reqwest::get(two.url("/")).await.unwrap()), "w1");
    }
    // Removed through the admin API: gone from etcd and both instances.
    let r = admin(
        &two,
        reqwest::Method::DELETE,
        "/api/pools/api/upstreams/a2",
        None,
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for lb in [&one, &two] {
        wait_for("a2 gone", || async move {
            find_in(lb, "api", "a2").await.is_none()
        })
        .await;
    }
}
