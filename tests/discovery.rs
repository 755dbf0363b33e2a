//! End to end against a real DNS server (dnsmasq, started here on an ephemeral
//! port): `dns:` members follow the A records, `srv:` members follow SRV
//! targets, weights and priorities, and a bad answer never empties a group.
//! Backends share one port on several loopback addresses, as a service's
//! replicas do on several hosts.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mock_backend::{Behaviour, BehaviourPatch, MockServer};

/// A dnsmasq answering only from its own records, with a one-second TTL.
struct Dnsmasq {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Dnsmasq {
    /// Serves `hosts` (hosts-file lines) plus `extra` dnsmasq options.
    async fn start(hosts: &str, extra: &[String]) -> Dnsmasq {
        let dir = tempfile::tempdir().unwrap();
        // dnsmasq reads its files as the user it drops to.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let port = free_udp_port();
        let mut d = Dnsmasq {
            child: None,
            port,
            dir,
            extra: extra.to_vec(),
        };
        d.set_hosts(hosts);
        d.run().await;
        d
    }

    fn hosts_path(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// Replaces the records (atomically, as a deploy tool would).
    fn set_hosts(&self, hosts: &str) {
        let tmp = self.dir.path().join("hosts.new");
        std::fs::write(&tmp, hosts).unwrap();
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::fs::rename(&tmp, self.hosts_path()).unwrap();
    }

    /// Replaces the records and has dnsmasq re-read them.
    fn change_hosts(&self, hosts: &str) {
        self.set_hosts(hosts);
        signal(self.child.as_ref().unwrap().id(), "HUP");
    }

    /// Starts dnsmasq; a port found free can be taken before dnsmasq binds
    /// it (it then exits at once), so up to five ports are tried.
    async fn run(&mut self) {
        // Debian puts it in /usr/sbin, which a user's PATH may not hold.
        let program = ["/usr/sbin/dnsmasq", "/usr/local/sbin/dnsmasq"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("dnsmasq");
        for _ in 0..5 {
            let mut child = Command::new(program)
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--local-ttl=1",
                    "--local=/test/",
                    "--pid-file=",
                    &format!("--port={}", self.port),
                    &format!("--addn-hosts={}", self.hosts_path().display()),
                ])
                .args(&self.extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dnsmasq (Debian: dnsmasq-base) must be installed");
            let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
            let start = std::time::Instant::now();
            let up = loop {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break true;
                }
                if child.try_wait().unwrap().is_some() || start.elapsed() > DEADLINE {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            if up {
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            self.port = free_udp_port();
        }
        panic!("dnsmasq did not start on five ports");
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A UDP port nothing holds (bound once, then released).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Mock backends named `names`, all on one port, on 127.0.0.2, .3, …
async fn replicas(names: &[&str]) -> Vec<MockServer> {
    for _ in 0..20 {
        let first = MockServer::start(
            SocketAddr::from(([127, 0, 0, 2], 0)),
            names[0],
            Behaviour::default(),
        )
        .await
        .unwrap();
        let port = first.addr().port();
        let mut all = vec![first];
        for (i, name) in names.iter().enumerate().skip(1) {
            let addr = SocketAddr::from(([127, 0, 0, 2 + i as u8], port));
            match MockServer::start(addr, name, Behaviour::default()).await {
                Ok(m) => all.push(m),
                Err(_) => break,
            }
        }
        if all.len() == names.len() {
            return all;
        }
    }
    panic!("no port free on every loopback address");
}

const QUICK_CHECKS: &str =
    "  health_check: { interval: 200ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }\n";

fn discovery_yaml(dns: &Dnsmasq) -> String {
    format!(
        "  discovery: {{ resolvers: [\"127.0.0.1:{}\"], refresh: 500ms }}\n",
        dns.port
    )
}

/// Sends `n` requests; which backend answered each (an error counts as "").
async fn spread(lb: &Lb, n: usize) -> HashMap<String, usize> {
    let client = reqwest::Client::new();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let name = match client.get(lb.url("/")).send().await {
            Ok(r) if r.status() == 200 => backend_of(&r),
            _ => String::new(),
        };
        *seen.entry(name).or_insert(0) += 1;
    }
    seen
}

/// The names of the upstreams in the table, sorted.
async fn names(lb: &Lb) -> Vec<String> {
    let state = lb.state().await;
    let mut names: Vec<String> = state["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// A client sending requests one after another until stopped; counts failures.
fn request_stream(
    lb: &Lb,
) -> (
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let url = lb.url("/");
    let (s, n, f) = (stop.clone(), sent.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let client = reqwest::Client::new();
        // Bounded: at most 60 s of requests.
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while !s.load(Ordering::Relaxed) && std::time::Instant::now() < until {
            let ok = matches!(client.get(&url).send().await, Ok(r) if r.status() == 200);
            n.fetch_add(1, Ordering::Relaxed);
            if !ok {
                f.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (stop, sent, failed, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_members_follow_the_records_and_a_bad_answer_keeps_the_last_good_set() {
    let backends = replicas(&["r2", "r3", "r4"]).await;
    let port = backends[0].addr().port();
    let dns = Dnsmasq::start("127.0.0.2 api.test\n127.0.0.3 api.test\n", &[]).await;
    let lb = Lb::start(&format!(
        "  algorithm: round_robin\n{QUICK_CHECKS}{}  upstreams:\n    - {{ name: api, dns: \"api.test:{port}\" }}\n",
        discovery_yaml(&dns)
    ))
    .await;
    let m2 = format!("api@127.0.0.2:{port}");
    let m3 = format!("api@127.0.0.3:{port}");
    let m4 = format!("api@127.0.0.4:{port}");
    // Resolved before serving: both records are upstreams at once.
    assert_eq!(names(&lb).await, [m2.clone(), m3.clone()]);
    let seen = spread(&lb, 20).await;
    assert_eq!(
        (seen.get("r2"), seen.get("r3")),
        (Some(&10), Some(&10)),
        "{seen:?}"
    );

    let (stop, sent, failed, stream) = request_stream(&lb);
    // A record replaced: .3 leaves, .4 joins once its health checks pass.
    dns.change_hosts("127.0.0.2 api.test\n127.0.0.4 api.test\n");
    let lb_ref = &lb;
    let (m2c, m4c) = (m2.clone(), m4.clone());
    wait_for("the table to follow the records", || {
        let (m2, m4) = (m2c.clone(), m4c.clone());
        async move {
            names(lb_ref).await == [m2, m4.clone()]
                && lb_ref.upstream_state(&m4).await["health"] == "up"
        }
    })
    .await;
    let seen = spread(&lb, 20).await;
    assert_eq!(
        seen.get("r3"),
        None,
        "a removed upstream got requests: {seen:?}"
    );
    // (The request stream shares the rotation: near 10:10, not at it.)
    assert!(
        seen.get("r2") >= Some(&5) && seen.get("r4") >= Some(&5),
        "{seen:?}"
    );
    let events = lb.state().await["events"].to_string();
    assert!(
        events.contains(&format!("added by dns api.test:{port}")),
        "{events}"
    );
    assert!(
        events.contains(&format!("removed by dns api.test:{port}")),
        "{events}"
    );
    let metrics = lb.metrics().await;
    assert!(
        !metrics.contains(&format!("upstream=\"{m3}\"")),
        "series of a removed upstream remain"
    );
    assert!(
        metrics.contains("hlb_discovery_updates_total{result=\"changed\",source=\"dns\"}"),
        "{metrics}"
    );

    // An empty answer is refused: the last good set keeps serving.
    dns.change_hosts("");
    wait_for("the empty answer refused", || async move {
        lb_ref
            .metrics()
            .await
            .contains("hlb_discovery_updates_total{result=\"refused\",source=\"dns\"}")
    })
    .await;
    assert_eq!(names(&lb).await, [m2.clone(), m4.clone()]);
    let events = lb.state().await["events"].to_string();
    assert!(events.contains("answer refused"), "{events}");

    // No DNS server at all: still the last good set.
    let mut dns = dns;
    dns.stop();
    let refused = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("hlb_discovery_updates_total{result=\"refused\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = refused(&lb.metrics().await);
    wait_for("a timed-out answer refused", || async move {
        refused(&lb_ref.metrics().await) > before
    })
    .await;
    assert_eq!(names(&lb).await, [m2, m4]);
    let seen = spread(&lb, 20).await;
    assert_eq!(
        seen.get(""),
        None,
        "requests failed with DNS down: {seen:?}"
    );

    stop.store(true, Ordering::Relaxed);
    stream.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 20);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed while the set changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_flipping_between_working_addresses_costs_no_request() {
    // One record at a time, flipping between two working addresses (DNS
    // round robin answering a rotating subset): the new member takes
    // requests at once, so nothing is lost while the old one leaves.
    let backends = replicas(&["r2", "r3"]).await;
    let port = backends[0].addr().port();
    let dns = Dnsmasq::start("127.0.0.2 flip.test\n", &[]).await;
    let lb = Lb::start(&format!(
        "  algorithm: round_robin\n{QUICK_CHECKS}{}  upstreams:\n    - {{ name: flip, dns: \"flip.test:{port}\" }}\n",
        discovery_yaml(&dns)
    ))
    .await;
    let (stop, sent, failed, stream) = request_stream(&lb);
    let lb_ref = &lb;
    for i in 0..4 {
        let addr = if i % 2 == 0 { "127.0.0.3" } else { "127.0.0.2" };
        dns.change_hosts(&format!("{addr} flip.test\n"));
        let want = format!("flip@{addr}:{port}");
        wait_for("the flip taken", || {
            let want = want.clone();
            async move { names(lb_ref).await == [want] }
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    stream.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 20);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed while the name flipped"
    );
    let events = lb.state().await["events"].to_string();
    assert!(!events.contains("right after it joined"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_members_take_their_weights_and_only_the_preferred_priority_serves() {
    let backends = replicas(&["a", "b", "backup"]).await;
    let port = backends[0].addr().port();
    let srv = |target: &str, priority: u16, weight: u16| {
        format!("--srv-host=_web._tcp.svc.test,{target},{port},{priority},{weight}")
    };
    let dns = Dnsmasq::start(
        "127.0.0.2 a.test\n127.0.0.3 b.test\n127.0.0.4 c.test\n",
        &[
            srv("a.test", 10, 3),
            srv("b.test", 10, 1),
            srv("c.test", 20, 0),
        ],
    )
    .await;
    let lb = Lb::start(&format!(
        "  algorithm: weighted\n{QUICK_CHECKS}{}  upstreams:\n    - {{ name: web, srv: \"_web._tcp.svc.test\" }}\n",
        discovery_yaml(&dns)
    ))
    .await;
    let backup = format!("web@127.0.0.4:{port}");
    assert_eq!(
        names(&lb).await,
        [
            format!("web@127.0.0.2:{port}"),
            format!("web@127.0.0.3:{port}"),
            backup.clone()
        ]
    );
    // SRV weight 0 counts as 1.
    assert_eq!(lb.upstream_state(&backup).await["base_weight"], 1);
    let lb_ref = &lb;
    let b = backup.clone();
    wait_for("the backup held in standby", || {
        let b = b.clone();
        async move {
            let events = lb_ref.state().await["events"].to_string();
            events.contains("standby") && lb_ref.upstream_state(&b).await["health"] == "up"
        }
    })
    .await;
    let seen = spread(&lb, 40).await;
    assert_eq!(
        seen.get("backup"),
        None,
        "the lower priority served: {seen:?}"
    );
    assert_eq!(
        (seen.get("a"), seen.get("b")),
        (Some(&30), Some(&10)),
        "{seen:?}"
    );

    // The preferred priority goes down: the backup takes over.
    let down = BehaviourPatch {
        healthy: Some(false),
        ..Default::default()
    };
    backends[0].set(&down).unwrap();
    backends[1].set(&down).unwrap();
    wait_for("the backup to take over", || async move {
        spread(lb_ref, 5).await.get("backup") == Some(&5)
    })
    .await;
    // And steps back when a preferred target is healthy again.
    backends[1]
        .set(&BehaviourPatch {
            healthy: Some(true),
            ..Default::default()
        })
        .unwrap();
    wait_for("the preferred priority to serve again", || async move {
        spread(lb_ref, 5).await.get("b") == Some(&5)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_pool_follows_its_own_dns_entry() {
    // Pool api follows api.test; the default pool keeps its file upstream
    // and never sees api's members.
    let backends = replicas(&["r2", "r3"]).await;
    let port = backends[0].addr().port();
    let web = mock("web").await;
    let dns = Dnsmasq::start("127.0.0.2 api.test\n", &[]).await;
    let lb = Lb::start(&format!(
        "{QUICK_CHECKS}{}  upstreams:\n{}  pools:\n    api:\n      algorithm: round_robin\n      \
         upstreams:\n        - {{ name: api, dns: \"api.test:{port}\" }}\n  routes:\n    \
         - {{ match: {{ path_prefix: /api }}, pool: api }}\n    - {{ pool: default }}\n",
        discovery_yaml(&dns),
        upstreams_yaml(&[("web", web.addr(), 1)]),
    ))
    .await;
    let in_pool = |state: serde_json::Value, pool: &str| -> Vec<String> {
        let pools = state["pools"].as_array().cloned().unwrap_or_default();
        let mut names: Vec<String> = pools
            .iter()
            .filter(|p| p["name"] == pool)
            .flat_map(|p| p["upstreams"].as_array().cloned().unwrap_or_default())
            .map(|u| u["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        in_pool(lb.state().await, "api"),
        [format!("api@127.0.0.2:{port}")]
    );
    dns.change_hosts("127.0.0.2 api.test\n127.0.0.3 api.test\n");
    let lb_ref = &lb;
    wait_for("api's second member", || async move {
        in_pool(lb_ref.state().await, "api").len() == 2
    })
    .await;
    assert_eq!(in_pool(lb.state().await, "default"), ["web"]);
    // Both members take api's requests; the rest go to web.
    let lb_ref = &lb;
    wait_for("requests to both api members", || async move {
        let c = reqwest::Client::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            let r = c.get(lb_ref.url("/api/x")).send().await.unwrap();
            seen.insert(backend_of(&r));
        }
        seen.len() == 2 && seen.contains("r2") && seen.contains("r3")
    })
    .await;
    assert_eq!(backend_of(&reqwest::get(lb.url("/")).await.unwrap()), "web");
}
