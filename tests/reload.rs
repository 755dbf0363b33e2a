//! End to end: zero-downtime reload through Pingora's upgrade (`-u`, then SIGQUIT
//! to the old process), a refused bad config, and a graceful stop.

mod common;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Kills a process started by the test when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    failed: AtomicU64,
}

/// A client loop until `stop`: `fresh` opens a new connection per request.
fn client(
    url: String,
    fresh: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if fresh {
            builder = builder.pool_max_idle_per_host(0);
        }
        let client = builder.build().unwrap();
        while !stop.load(Ordering::Relaxed) {
            tally.sent.fetch_add(1, Ordering::Relaxed);
            match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => {
                    let _ = r.bytes().await;
                }
                Ok(r) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("{url}: status {}", r.status());
                }
                Err(e) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("{url}: {e:?}");
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// Starts `hybrid-lb -u` on `yaml` beside `old` and waits until it is at the
/// upgrade socket for the old process's listeners (SIGQUIT to `old` next).
async fn start_upgrade(old: &Lb, yaml: &str, proxy: u16) -> Guard {
    let path = old.dir.path().join("v2.yaml");
    fs::write(&path, yaml).unwrap();
    let log = fs::File::create(old.dir.path().join("new.log")).unwrap();
    let new = Guard(
        Command::new(binary())
            .args(["-u", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let sock = format!("/tmp/hybrid-lb-test-{proxy}.sock");
    wait_for("the new process's upgrade socket", || async {
        std::path::Path::new(&sock).exists()
    })
    .await;
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_request_and_applies_new_weights() {
    let (a, b) = (mock("a").await, mock("b").await);
    let (proxy, dashboard) = (free_port(), free_port());
    let v1 = config_yaml(
        proxy,
        dashboard,
        &format!(
            "  algorithm: weighted\n  upstreams:\n{}",
            upstreams_yaml(&[("a", a.addr(), 1), ("b", b.addr(), 1)])
        ),
    );
    let mut old = Lb::launch(&v1, proxy, dashboard).await;

    let stop = Arc::new(AtomicBool::new(false));
    let proxy_tally = Arc::new(Tally::default());
    let dash_tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for fresh in [false, false, true, true] {
        tasks.push(client(
            old.url("/"),
            fresh,
            stop.clone(),
            proxy_tally.clone(),
        ));
    }
    for fresh in [false, true] {
        tasks.push(client(
            old.url_dashboard("/api/state"),
            fresh,
            stop.clone(),
            dash_tally.clone(),
        ));
    }
    wait_for("traffic", || async {
        proxy_tally.sent.load(Ordering::Relaxed) > 200
    })
    .await;

    // The new config: b's weight triples.
    let v2 = v1.replace(
        &format!("name: b, addr: \"{}\", weight: 1", b.addr()),
        &format!("name: b, addr: \"{}\", weight: 3", b.addr()),
    );
    assert_ne!(v1, v2);
    let new = start_upgrade(&old, &v2, proxy).await;
    let reload_at = Instant::now();
    old.signal("QUIT");
    let status = old.wait_exit().await;
    eprintln!(
        "old process exited ({status}) {:?} after SIGQUIT",
        reload_at.elapsed()
    );
    // Keep the load on the new process a moment longer.
    let after = proxy_tally.sent.load(Ordering::Relaxed);
    wait_for("traffic after the reload", || async {
        proxy_tally.sent.load(Ordering::Relaxed) > after + 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (sent, failed) = (
        proxy_tally.sent.load(Ordering::Relaxed),
        proxy_tally.failed.load(Ordering::Relaxed),
    );
    let (dsent, dfailed) = (
        dash_tally.sent.load(Ordering::Relaxed),
        dash_tally.failed.load(Ordering::Relaxed),
    );
    eprintln!("across the reload: proxy {sent} requests, {failed} failed; dashboard {dsent} requests, {dfailed} failed");
    assert_eq!(
        failed,
        0,
        "proxy requests failed across the reload:\n{}",
        old.log()
    );
    assert_eq!(dfailed, 0, "dashboard requests failed across the reload");

    // The new process serves, with the new weights.
    let state = old.state().await;
    assert_eq!(state["upstreams"][1]["base_weight"], 3, "{state}");
    assert!(
        state["events"].as_array().unwrap().iter().any(
            |e| e["kind"] == "reload" && e["detail"].as_str().unwrap().starts_with("took over")
        ),
        "{state}"
    );
    let client = reqwest::Client::new();
    let mut to_b = 0;
    for _ in 0..40 {
        let resp = client.get(old.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        if backend_of(&resp) == "b" {
            to_b += 1;
        }
    }
    assert_eq!(to_b, 30);
    drop(new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_new_config_never_takes_over() {
    let a = mock("a").await;
    let (proxy, dashboard) = (free_port(), free_port());
    let good = config_yaml(
        proxy,
        dashboard,
        &format!("  upstreams:\n{}", upstreams_yaml(&[("a", a.addr(), 1)])),
    );
    let old = Lb::launch(&good, proxy, dashboard).await;
    let bad = good.replace("weight: 1", "weight: 0");
    let bad_path = old.dir.path().join("bad.yaml");
    fs::write(&bad_path, &bad).unwrap();
    let out = Command::new(binary())
        .arg("-u")
        .arg("-c")
        .arg(&bad_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = bad.lines().position(|l| l.contains("weight: 0")).unwrap() + 1;
    assert!(
        stderr.contains(&format!(
            "lb.upstreams[0].weight: must be at least 1 (line {line})"
        )),
        "{stderr}"
    );
    // The old process was not touched.
    for _ in 0..20 {
        assert_eq!(reqwest::get(old.url("/")).await.unwrap().status(), 200);
    }
    assert_eq!(old.state().await["upstreams"][0]["base_weight"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish() {
    let slow = mock_with(
        "slow",
        mock_backend::Behaviour {
            latency_ms: 2000,
            health_latency: false,
            ..Default::default()
        },
    )
    .await;
    let (proxy, dashboard) = (free_port(), free_port());
    let yaml = config_yaml(
        proxy,
        dashboard,
        &format!(
            "  upstreams:\n{}",
            upstreams_yaml(&[("slow", slow.addr(), 1)])
        ),
    )
    .replace("grace_period_seconds: 1", "grace_period_seconds: 4");
    let mut lb = Lb::launch(&yaml, proxy, dashboard).await;
    let url = lb.url("/");
    let request = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) });
    wait_for("the request in flight", || async {
        lb.upstream_state("slow").await["inflight"] == 1
    })
    .await;
    let stopped_at = Instant::now();
    lb.signal("TERM");
    let status = request
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(status, 200);
    eprintln!(
        "in-flight request finished {:?} after SIGTERM",
        stopped_at.elapsed()
    );
    assert!(lb.wait_exit().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_routes_and_pools_under_load_losing_nothing() {
    let (w, a) = (mock("w").await, mock("a").await);
    let (proxy, dashboard) = (free_port(), free_port());
    let pool = |name: &str, addr| {
        format!("    {name}:\n      upstreams:\n        - {{ name: {name}1, addr: \"{addr}\" }}\n")
    };
    // v1: every request to pool web.
    let v1 = config_yaml(
        proxy,
        dashboard,
        &format!(
            "  pools:\n{}  routes:\n    - {{ name: all, pool: web }}\n",
            pool("web", w.addr())
        ),
    );
    let mut old = Lb::launch(&v1, proxy, dashboard).await;
    // v2: /api to a new pool, the prefix stripped; the rest as before.
    let v2 = config_yaml(
        proxy,
        dashboard,
        &format!(
            "  pools:\n{}{}  routes:\n    - {{ name: api, match: {{ path_prefix: /api }}, pool: api, strip_prefix: /api }}\n    - {{ name: all, pool: web }}\n",
            pool("web", w.addr()),
            pool("api", a.addr())
        ),
    );
    // A bad routes section is refused and changes nothing.
    let bad = v2.replace("pool: api,", "pool: apj,");
    let bad_path = old.dir.path().join("bad.yaml");
    fs::write(&bad_path, &bad).unwrap();
    let out = Command::new(binary())
        .args(["-u", "-c"])
        .arg(&bad_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lb.routes[0].pool: no pool named `apj`"),
        "{stderr}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for (path, fresh) in [
        ("/", false),
        ("/api/x", false),
        ("/", true),
        ("/api/y", true),
    ] {
        tasks.push(client(old.url(path), fresh, stop.clone(), tally.clone()));
    }
    wait_for("traffic", || async {
        tally.sent.load(Ordering::Relaxed) > 200
    })
    .await;
    let new = start_upgrade(&old, &v2, proxy).await;
    old.signal("QUIT");
    old.wait_exit().await;
    let after = tally.sent.load(Ordering::Relaxed);
    wait_for("traffic after the reload", || async {
        tally.sent.load(Ordering::Relaxed) > after + 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (sent, failed) = (
        tally.sent.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    eprintln!("across the routes reload: {sent} requests, {failed} failed");
    assert_eq!(
        failed,
        0,
        "requests failed across the reload:\n{}",
        old.log()
    );
    // The new routes serve.
    let r = reqwest::get(old.url("/api/items")).await.unwrap();
    assert_eq!(backend_of(&r), "a");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["path"], "/items");
    assert_eq!(backend_of(&reqwest::get(old.url("/")).await.unwrap()), "w");
    drop(new);
}

/// The reload recipe as the README writes it.
fn readme_recipe() -> String {
    let readme = include_str!("../README.md");
    let after = readme
        .split("<!-- reload recipe")
        .nth(1)
        .expect("the README marks its reload recipe");
    let block = after.split("```sh\n").nth(1).expect("a sh block");
    block.split("```").next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_reload_recipe_works_as_typed_from_a_foreground_process() {
    let a = mock("a").await;
    let (proxy, dashboard) = (free_port(), free_port());
    let yaml = config_yaml(
        proxy,
        dashboard,
        &format!("  upstreams:\n{}", upstreams_yaml(&[("a", a.addr(), 1)])),
    );
    // The running process, in the foreground as the quick start runs it.
    let mut old = Lb::launch(&yaml, proxy, dashboard).await;
    // Where the recipe is typed: `conf/lb.yaml` and `hybrid-lb` on the PATH;
    // the only change to the recipe is the test's own pid file.
    let cwd = tempfile::tempdir().unwrap();
    fs::create_dir(cwd.path().join("conf")).unwrap();
    fs::write(cwd.path().join("conf/lb.yaml"), &yaml).unwrap();
    let bin = cwd.path().join("bin");
    fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(binary(), bin.join("hybrid-lb")).unwrap();
    let pid_file = format!("/tmp/hybrid-lb-test-{proxy}.pid");
    let recipe = readme_recipe().replace("/tmp/hybrid-lb.pid", &pid_file);
    assert!(recipe.contains("kill -QUIT"), "{recipe}");
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let tasks: Vec<_> = [false, true]
        .into_iter()
        .map(|fresh| client(old.url("/"), fresh, stop.clone(), tally.clone()))
        .collect();
    wait_for("traffic", || async {
        tally.sent.load(Ordering::Relaxed) > 100
    })
    .await;
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // (Into files: the daemon keeps what it inherits open.)
    let (out, err) = (cwd.path().join("recipe.out"), cwd.path().join("recipe.err"));
    let status = Command::new("sh")
        .arg("-c")
        .arg(&recipe)
        .current_dir(cwd.path())
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the recipe failed:\n{recipe}\n{}",
        fs::read_to_string(&err).unwrap_or_default()
    );
    old.wait_exit().await;
    // The daemon that took over wrote its pid; it is stopped at the end.
    let new_pid: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, old.pid());
    // Stopped however the test ends.
    struct Daemon(u32);
    impl Drop for Daemon {
        fn drop(&mut self) {
            signal(self.0, "INT");
        }
    }
    let _daemon = Daemon(new_pid);
    let after = tally.sent.load(Ordering::Relaxed);
    wait_for("traffic after the reload", || async {
        tally.sent.load(Ordering::Relaxed) > after + 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let failed = tally.failed.load(Ordering::Relaxed);
    assert_eq!(failed, 0, "requests failed across the reload");
}
