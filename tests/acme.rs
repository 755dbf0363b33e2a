//! End to end against a real ACME server (Pebble, its validations reaching
//! the balancer's own ports): a certificate for two names ordered at start
//! over HTTP-01 and over TLS-ALPN-01 and served; renewed before it ends
//! without a failed request; ordered once by a fleet of two on one etcd and
//! served by both; and a start with Pebble down, serving the certificate
//! stored while ordering retries until Pebble is back.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::acme::{https_get, names, Pebble};
use common::*;

/// A balancer on `plain` and `tls` ordering for a.test and b.test from
/// `pebble` with `challenge`, keeping what it orders in `storage`.
async fn balancer(
    pebble: &Pebble,
    (plain, tls): (u16, u16),
    challenge: &str,
    storage: &Path,
    extra: &str,
) -> Lb {
    let acme = format!(
        "challenge: {challenge}, storage: \"{}\", domains: [a.test, b.test]",
        storage.display()
    );
    balancer_with(pebble, (plain, tls), &acme, extra).await
}

/// A balancer on `plain` and `tls` ordering from `pebble` with `acme` keys.
async fn balancer_with(pebble: &Pebble, (plain, tls): (u16, u16), acme: &str, extra: &str) -> Lb {
    let up = mock("up").await;
    let dashboard = free_port();
    let yaml = config_yaml(
        plain,
        dashboard,
        &format!(
            "  tls:\n    listen: [\"127.0.0.1:{tls}\"]\n    acme: {{ directory: \"{}\", directory_ca: \"{}\", \
             email: ops@example.com, {acme} }}\n{extra}  upstreams:\n{}",
            pebble.directory(),
            pebble.ca.display(),
            upstreams_yaml(&[("up", up.addr(), 1)])
        ),
    );
    std::mem::forget(up);
    Lb::launch(&yaml, plain, dashboard).await
}

/// Waits for `lb`'s first certificate, which must come without a failed
/// order (on a busy machine an order can take seconds).
async fn ordered(lb: &Lb, pebble: &Pebble) {
    let start = Instant::now();
    while orders(lb, "ok").await < 1.0 {
        let failed = orders(lb, "failed").await;
        assert!(
            failed == 0.0 && start.elapsed() < Duration::from_secs(90),
            "no certificate ({failed} failed orders): {}\n{}",
            lb.state().await["events"],
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The dashboard's entry for the ACME certificate.
async fn acme_entry(lb: &Lb) -> serde_json::Value {
    let state = lb.state().await;
    state["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cert"] == "ACME")
        .cloned()
        .unwrap()
}

async fn orders(lb: &Lb, result: &str) -> f64 {
    metric_value(
        &lb.metrics().await,
        &format!("hlb_acme_orders_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

async fn issued_and_served(challenge: &str) {
    let (plain, tls) = (free_port(), free_port());
    let pebble = Pebble::start(plain, tls, 3600).await;
    let storage = tempfile::tempdir().unwrap();
    let lb = balancer(&pebble, (plain, tls), challenge, storage.path(), "").await;
    ordered(&lb, &pebble).await;
    let root = pebble.root().await;
    let addr = SocketAddr::from(([127, 0, 0, 1], tls));
    for name in ["a.test", "b.test"] {
        let (status, leaf) = https_get(addr, name, &root).await.unwrap();
        assert_eq!(status, 200);
        let mut served = names(&leaf);
        served.sort();
        assert_eq!(served, ["a.test", "b.test"]);
    }
    // The dashboard says who issued it and when it renews.
    let cert = acme_entry(&lb).await;
    assert!(
        cert["issuer"]
            .as_str()
            .is_some_and(|i| i.contains("Pebble")),
        "{cert}"
    );
    assert_eq!(cert["acme"]["last_result"], "ok", "{cert}");
    assert!(cert["acme"]["renew_at"].as_i64().is_some(), "{cert}");
    // Stored: the account and the certificate.
    let files: Vec<String> = walk(storage.path());
    assert!(
        files.iter().any(|f| f.starts_with("accounts/")),
        "{files:?}"
    );
    assert!(files.iter().any(|f| f.starts_with("certs/")), "{files:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["accounts", "certs"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for e in entries.flatten() {
                out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_two_names_is_ordered_over_http_01_and_served() {
    issued_and_served("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_two_names_is_ordered_over_tls_alpn_01_and_served() {
    issued_and_served("tls-alpn-01").await;
}

/// Waits up to `limit` for `cond`, which (unlike `wait_for`'s) may take
/// longer than the common deadline: a renewal, a backoff.
async fn within<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_without_a_failed_request() {
    let (plain, tls) = (free_port(), free_port());
    // 30 s certificates: renewed 20 s into their life.
    let pebble = Pebble::start(plain, tls, 30).await;
    let storage = tempfile::tempdir().unwrap();
    let lb = balancer(&pebble, (plain, tls), "http-01", storage.path(), "").await;
    ordered(&lb, &pebble).await;
    let root = pebble.root().await;
    let addr = SocketAddr::from(([127, 0, 0, 1], tls));
    let (_, first) = https_get(addr, "a.test", &root).await.unwrap();
    // New connections all along, each verified, until a renewed one serves.
    let mut served = 0;
    let start = Instant::now();
    loop {
        let (status, leaf) = https_get(addr, "a.test", &root)
            .await
            .unwrap_or_else(|e| panic!("a request failed during renewal: {e}"));
        assert_eq!(status, 200);
        served += 1;
        if leaf != first {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not renewed within 60 s: {}",
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served > 10, "{served}");
    assert!(orders(&lb, "ok").await >= 2.0);
    assert_eq!(orders(&lb, "failed").await, 0.0);
    let events = lb.state().await["events"].to_string();
    assert!(
        events.contains("certificate for a.test, b.test issued"),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_acme_server_down_the_stored_certificate_serves_while_ordering_retries() {
    let (plain, tls) = (free_port(), free_port());
    let mut pebble = Pebble::start(plain, tls, 3600).await;
    let storage = tempfile::tempdir().unwrap();
    let first = balancer(&pebble, (plain, tls), "http-01", storage.path(), "").await;
    ordered(&first, &pebble).await;
    let old_root = pebble.root().await;
    drop(first);
    pebble.stop();

    // Started again wanting one more name, with the ACME server down.
    let acme = format!(
        "challenge: http-01, storage: \"{}\", domains: [a.test, b.test, c.test]",
        storage.path().display()
    );
    let lb = balancer_with(&pebble, (plain, tls), &acme, "").await;
    let addr = SocketAddr::from(([127, 0, 0, 1], tls));
    let lb_ref = &lb;
    wait_for("an order failing", || async move {
        orders(lb_ref, "failed").await >= 1.0
    })
    .await;
    let (status, leaf) = https_get(addr, "a.test", &old_root).await.unwrap();
    assert_eq!(status, 200, "the stored certificate serves");
    assert!(!names(&leaf).contains(&"c.test".to_string()));
    let cert = acme_entry(&lb).await;
    assert_eq!(cert["acme"]["last_result"], "failed", "{cert}");
    assert!(cert["acme"]["retry_at"].as_f64().is_some(), "{cert}");

    // Back (a new root, and the account forgotten): the next try orders.
    pebble.run().await;
    within(
        "an order after the server is back",
        Duration::from_secs(60),
        || async move { orders(lb_ref, "ok").await >= 1.0 },
    )
    .await;
    let root = pebble.root().await;
    let (status, leaf) = https_get(addr, "c.test", &root).await.unwrap();
    assert_eq!(status, 200);
    assert!(names(&leaf).contains(&"c.test".to_string()));
}

/// Which instance of a [`Fleet`] Pebble's validations reach.
enum Reached {
    A,
    B,
}

/// Two balancers on one etcd under `prefix`, ordering with `acme_a` and
/// `acme_b`, and the Pebble they order from.
struct Fleet {
    a: Lb,
    b: Lb,
    pebble: Pebble,
    /// Their HTTPS ports.
    tls: (u16, u16),
    _etcd: common::etcd::Etcd,
}

impl Fleet {
    async fn start(reached: Reached, prefix: &str, acme_a: &str, acme_b: &str) -> Fleet {
        let etcd = common::etcd::Etcd::start().await;
        let a_ports = (free_port(), free_port());
        let b_ports = (free_port(), free_port());
        let (plain, tls) = match reached {
            Reached::A => a_ports,
            Reached::B => b_ports,
        };
        let pebble = Pebble::start(plain, tls, 3600).await;
        let fleet = |id: &str| {
            format!(
                "  etcd: {{ endpoints: [\"{}\"], prefix: \"{prefix}\", id: {id} }}\n",
                etcd.endpoint()
            )
        };
        let (fleet_a, fleet_b) = (fleet("a"), fleet("b"));
        let (a, b) = tokio::join!(
            balancer_with(&pebble, a_ports, acme_a, &fleet_a),
            balancer_with(&pebble, b_ports, acme_b, &fleet_b),
        );
        Fleet {
            a,
            b,
            pebble,
            tls: (a_ports.1, b_ports.1),
            _etcd: etcd,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_two_on_etcd_orders_once_and_both_serve() {
    // Pebble's validations all reach instance a, whichever instance orders.
    let acme = "challenge: http-01, domains: [a.test, b.test]";
    let f = Fleet::start(Reached::A, "/acme-fleet/", acme, acme).await;
    let (a, b, pebble, tls_a, tls_b) = (&f.a, &f.b, &f.pebble, f.tls.0, f.tls.1);
    let root = pebble.root().await;
    for tls in [tls_a, tls_b] {
        let addr = SocketAddr::from(([127, 0, 0, 1], tls));
        within(
            "the fleet's certificate served",
            Duration::from_secs(60),
            || async {
                https_get(addr, "b.test", &root)
                    .await
                    .is_ok_and(|(status, _)| status == 200)
            },
        )
        .await;
    }
    // Given time for a second order to show, were one made.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ok = orders(a, "ok").await + orders(b, "ok").await;
    assert_eq!(ok, 1.0, "exactly one order for the fleet");
    let failed = orders(a, "failed").await + orders(b, "failed").await;
    assert_eq!(
        failed,
        0.0,
        "{}\n{}",
        a.state().await["events"],
        b.state().await["events"]
    );
    let (_, leaf_a) = https_get(SocketAddr::from(([127, 0, 0, 1], tls_a)), "a.test", &root)
        .await
        .unwrap();
    let (_, leaf_b) = https_get(SocketAddr::from(([127, 0, 0, 1], tls_b)), "a.test", &root)
        .await
        .unwrap();
    assert_eq!(leaf_a, leaf_b, "both serve the one certificate");
}

/// Instance a orders for a.test; every validation reaches instance b (on
/// its own order for c.test), which answers a's challenges from etcd.
async fn validated_through_another_instance(challenge: &str) {
    let acme_a = format!("challenge: {challenge}, domains: [a.test]");
    let acme_b = format!("challenge: {challenge}, domains: [c.test]");
    let prefix = format!("/acme-{challenge}/");
    let f = Fleet::start(Reached::B, &prefix, &acme_a, &acme_b).await;
    let (a, b, pebble, tls_a) = (&f.a, &f.b, &f.pebble, f.tls.0);
    within("both orders done", Duration::from_secs(60), || async move {
        orders(a, "ok").await >= 1.0 && orders(b, "ok").await >= 1.0
    })
    .await;
    let root = pebble.root().await;
    let (status, leaf) = https_get(SocketAddr::from(([127, 0, 0, 1], tls_a)), "a.test", &root)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(names(&leaf), ["a.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_01_validation_reaching_another_instance_is_answered_from_etcd() {
    validated_through_another_instance("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_alpn_01_validation_reaching_another_instance_is_answered_from_etcd() {
    validated_through_another_instance("tls-alpn-01").await;
}

#[test]
fn acme_settings_that_cannot_work_are_named_by_key() {
    let yaml = config_yaml(
        free_port(),
        free_port(),
        &format!(
            "  tls:\n    listen: [\"127.0.0.1:{}\"]\n    acme: {{ directory: \"http://acme.example/dir\", \
             domains: [\"*.example.com\", \"10.0.0.1\", ok.example.com], challenge: dns-01 }}\n  \
             upstreams: [{{ name: a, addr: \"127.0.0.1:9\" }}]\n",
            free_port()
        ),
    );
    let out = check_config(&yaml);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    for key in [
        "lb.tls.acme.directory",
        "lb.tls.acme.domains[0]",
        "lb.tls.acme.domains[1]",
        "lb.tls.acme.challenge",
        "lb.tls.acme.storage",
    ] {
        assert!(text.contains(key), "{key} not named:\n{text}");
    }
    assert!(!text.contains("lb.tls.acme.domains[2]"), "{text}");
    // Names from the routes when none are listed; none there either: said.
    let yaml = config_yaml(
        free_port(),
        free_port(),
        &format!(
            "  tls:\n    listen: [\"127.0.0.1:{}\"]\n    acme: {{ storage: /tmp }}\n  \
             upstreams: [{{ name: a, addr: \"127.0.0.1:9\" }}]\n",
            free_port()
        ),
    );
    let out = check_config(&yaml);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("lb.tls.acme.domains"), "{text}");
}
