//! Helpers for end-to-end tests: mock upstreams on ephemeral ports and the real
//! `hybrid-lb` binary started with a generated config.

#![allow(dead_code)]

pub mod acme;
pub mod etcd;
pub mod nginx;

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mock_backend::{Behaviour, MockServer};

/// How long anything in a test may take to become true.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds or `DEADLINE` passes.
pub async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port nothing listens on (bound once, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// An address that refuses connections.
pub fn refused_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Starts a mock upstream on an ephemeral port.
pub async fn mock(name: &str) -> MockServer {
    mock_with(name, Behaviour::default()).await
}

pub async fn mock_with(name: &str, behaviour: Behaviour) -> MockServer {
    MockServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), name, behaviour)
        .await
        .expect("mock upstream")
}

/// Upstreams `a` and `b` answering in `fast_ms`, and `slow` behaving as
/// `slow`; with their `lb.upstreams` list (weight 1 each).
pub async fn two_fast_one_slow(fast_ms: u64, slow: Behaviour) -> ([MockServer; 3], String) {
    let fast = Behaviour {
        latency_ms: fast_ms,
        ..Default::default()
    };
    let a = mock_with("a", fast.clone()).await;
    let b = mock_with("b", fast).await;
    let slow = mock_with("slow", slow).await;
    let yaml = upstreams_yaml(&[
        ("a", a.addr(), 1),
        ("b", b.addr(), 1),
        ("slow", slow.addr(), 1),
    ]);
    ([a, b, slow], yaml)
}

/// `(name, addr, weight)` rendered as the `lb.upstreams` list.
pub fn upstreams_yaml(upstreams: &[(&str, SocketAddr, u32)]) -> String {
    upstreams
        .iter()
        .map(|(n, a, w)| format!("    - {{ name: {n}, addr: \"{a}\", weight: {w} }}\n"))
        .collect()
}

/// A full config file: test-friendly Pingora keys, the given `lb:` body lines
/// (indented two spaces) and a dashboard on `dashboard`.
pub fn config_yaml(proxy: u16, dashboard: u16, lb_body: &str) -> String {
    config_yaml_with(proxy, dashboard, lb_body, "")
}

/// [`config_yaml`] with extra `dashboard:` lines (indented two spaces).
pub fn config_yaml_with(proxy: u16, dashboard: u16, lb_body: &str, dashboard_body: &str) -> String {
    format!(
        "version: 1\nthreads: 1\nwork_stealing: false\ngrace_period_seconds: 1\n\
         graceful_shutdown_timeout_seconds: 1\n\
         pid_file: /tmp/hybrid-lb-test-{proxy}.pid\n\
         upgrade_sock: /tmp/hybrid-lb-test-{proxy}.sock\n\
         lb:\n  listen: [\"127.0.0.1:{proxy}\"]\n{lb_body}\
         dashboard:\n  listen: \"127.0.0.1:{dashboard}\"\n{dashboard_body}"
    )
}

/// A running `hybrid-lb` process, killed on drop.
pub struct Lb {
    child: Child,
    pub proxy: SocketAddr,
    pub dashboard: SocketAddr,
    pub dir: tempfile::TempDir,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hybrid-lb"))
}

/// Runs `hybrid-lb -t -c` on `yaml`.
pub fn check_config(yaml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.yaml");
    fs::write(&path, yaml).unwrap();
    Command::new(binary())
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run hybrid-lb -t")
}

impl Lb {
    /// Starts hybrid-lb with `lb_body` as its `lb:` section and waits until the
    /// proxy accepts connections and the dashboard answers.
    pub async fn start(lb_body: &str) -> Lb {
        Self::start_with(lb_body, "").await
    }

    /// [`Lb::start`] with extra `dashboard:` lines.
    pub async fn start_with(lb_body: &str, dashboard_body: &str) -> Lb {
        // A port found free can be taken by another test's server before
        // hybrid-lb binds it: then start again on other ports.
        for _ in 0..5 {
            let proxy = free_port();
            let dashboard = free_port();
            let yaml = config_yaml_with(proxy, dashboard, lb_body, dashboard_body);
            if let Some(lb) = Self::try_launch(&yaml, proxy, dashboard).await {
                return lb;
            }
        }
        panic!("hybrid-lb found its ports taken five times over");
    }

    /// Starts hybrid-lb on a whole config file listening on `proxy` and `dashboard`.
    pub async fn launch(yaml: &str, proxy: u16, dashboard: u16) -> Lb {
        Self::try_launch(yaml, proxy, dashboard)
            .await
            .unwrap_or_else(|| panic!("ports {proxy} and {dashboard} are taken by another process"))
    }

    /// [`Lb::launch`], or None when another process holds one of the ports.
    async fn try_launch(yaml: &str, proxy: u16, dashboard: u16) -> Option<Lb> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lb.yaml");
        fs::write(&path, yaml).unwrap();
        let log = fs::File::create(dir.path().join("lb.log")).unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start hybrid-lb");
        let mut lb = Lb {
            child,
            proxy: SocketAddr::from(([127, 0, 0, 1], proxy)),
            dashboard: SocketAddr::from(([127, 0, 0, 1], dashboard)),
            dir,
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = lb.child.try_wait() {
                if lb.log().contains("Address already in use") {
                    return None;
                }
                panic!("hybrid-lb exited with {status}:\n{}", lb.log());
            }
            let up = TcpStream::connect(lb.proxy).is_ok()
                && reqwest::get(lb.url_dashboard("/api/state"))
                    .await
                    .is_ok_and(|r| r.status().is_success());
            if up {
                let pid = lb.child.id();
                if listens_on(pid, proxy) && listens_on(pid, dashboard) {
                    return Some(lb);
                }
                // Someone else answered on one of our ports.
                if !other_listener(pid, proxy) && !other_listener(pid, dashboard) {
                    // Not bound yet by anyone: keep waiting.
                } else {
                    return None;
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "hybrid-lb did not start:\n{}",
                lb.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`"TERM"`, `"QUIT"`, …) to the process.
    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    /// Waits for the process to exit, up to `DEADLINE`.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "hybrid-lb did not exit:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn url_dashboard(&self, path: &str) -> String {
        format!("http://{}{path}", self.dashboard)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("lb.log")).unwrap_or_default()
    }

    pub async fn state(&self) -> serde_json::Value {
        reqwest::get(self.url_dashboard("/api/state"))
            .await
            .expect("GET /api/state")
            .json()
            .await
            .expect("state is JSON")
    }

    /// `/metrics` in Prometheus text format.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url_dashboard("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Waits until the `upstreams[]` entry named `name` satisfies `pred` (counters
    /// are updated in the logging phase, just after the client has its answer).
    pub async fn wait_upstream(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let u = self.upstream_state(name).await;
            if pred(&u) {
                return u;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}: {u}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `upstreams[]` entry named `name` in `/api/state`.
    pub async fn upstream_state(&self, name: &str) -> serde_json::Value {
        let state = self.state().await;
        state["upstreams"]
            .as_array()
            .and_then(|a| a.iter().find(|u| u["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no upstream {name} in {state}"))
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends signal `name` to process `pid` with kill(1).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// The upstream that answered, from the mock's `X-Backend` header.
pub fn backend_of(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Inodes of the sockets listening on 127.0.0.1 or any address at `port`.
fn listening_inodes(port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN; inode is field 9.
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && f.get(3) == Some(&"0A") {
                if let Some(inode) = f.get(9) {
                    inodes.push(inode.to_string());
                }
            }
        }
    }
    inodes
}

/// The socket inodes process `pid` holds open.
fn socket_inodes(pid: u32) -> Vec<String> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            l.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect()
}

/// Whether process `pid` holds a socket listening on `port`.
fn listens_on(pid: u32, port: u16) -> bool {
    let mine = socket_inodes(pid);
    listening_inodes(port).iter().any(|i| mine.contains(i))
}

/// Whether a process other than `pid` listens on `port`.
fn other_listener(pid: u32, port: u16) -> bool {
    let mine = socket_inodes(pid);
    listening_inodes(port).iter().any(|i| !mine.contains(i))
}

/// Runs the dashboard's browser script `dashboard/tests/{script}` with `args`
/// under node, and fails the test with its output unless it passes within
/// `limit`.
pub async fn browser_script(script: &str, args: &[&str], limit: Duration) {
    let dashboard = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboard");
    let out = tokio::time::timeout(
        limit,
        tokio::process::Command::new("node")
            .arg(dashboard.join("tests").join(script))
            .args(args)
            .current_dir(&dashboard)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{script} within {limit:?}"))
    .expect("run node");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the series `series` (its name with labels, as rendered) in
/// Prometheus text `text`; None if it is absent.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Process `pid`'s resident memory, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}
