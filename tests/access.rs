//! End to end: a route's access control by client address. `allow` admits
//! only the addresses listed, `deny` refuses its own even when allowed, and
//! the client is the real one: the connection's peer, or the client a
//! trusted proxy names (`X-Forwarded-For` from `trusted_proxies`, a PROXY
//! protocol header from `proxy_protocol.trusted`). Refused: our 403, the
//! connection kept, nothing sent upstream.

mod common;

use std::net::IpAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn status_from(lb: &Lb, from: [u8; 4], path: &str, xff: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::builder()
        .local_address(IpAddr::from(from))
        .build()
        .unwrap();
    let mut req = client.get(lb.url(path));
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_admit_by_the_real_clients_address() {
    let up = mock("up").await;
    let lb = Lb::start(&format!(
        "  trusted_proxies: [\"127.0.0.9\"]\n  proxy_protocol: {{ trusted: [\"127.0.0.8\"] }}\n  \
         upstreams:\n{}  routes:
    - {{ name: admin, match: {{ path_prefix: /admin }}, pool: default, access: {{ allow: [\"127.0.0.2\", \"203.0.113.0/24\"], deny: [\"203.0.113.66\"] }} }}
    - {{ name: public, match: {{ path_prefix: / }}, pool: default, access: {{ deny: [\"127.0.0.3\"] }} }}\n",
        upstreams_yaml(&[("up", up.addr(), 1)])
    ))
    .await;

    assert_eq!(
        status_from(&lb, [127, 0, 0, 2], "/admin/x", None).await.0,
        200
    );
    let (code, body) = status_from(&lb, [127, 0, 0, 1], "/admin/x", None).await;
    assert_eq!(code, 403);
    assert!(body.contains("may not use this route"), "{body}");
    // A forwarded-for header counts only from a trusted proxy.
    assert_eq!(
        status_from(&lb, [127, 0, 0, 1], "/admin/x", Some("203.0.113.5"))
            .await
            .0,
        403
    );
    assert_eq!(
        status_from(&lb, [127, 0, 0, 9], "/admin/x", Some("203.0.113.5"))
            .await
            .0,
        200
    );
    assert_eq!(
        status_from(&lb, [127, 0, 0, 9], "/admin/x", Some("203.0.113.66"))
            .await
            .0,
        403,
        "denied though in an allowed network"
    );
    assert_eq!(status_from(&lb, [127, 0, 0, 1], "/page", None).await.0, 200);
    assert_eq!(status_from(&lb, [127, 0, 0, 3], "/page", None).await.0, 403);

    // The client a PROXY protocol header names, on one kept connection:
    // refused, then a request the same client may make.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.8:0".parse().unwrap()).unwrap();
    let mut s = socket.connect(lb.proxy).await.unwrap();
    let port = lb.proxy.port();
    s.write_all(
        format!(
            "PROXY TCP4 203.0.113.66 127.0.0.1 1 {port}\r\nGET /admin/x HTTP/1.1\r\nHost: a\r\n\r\n\
             GET /page HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    assert!(read.is_ok());
    let text = String::from_utf8_lossy(&out);
    let statuses: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect();
    assert_eq!(
        statuses,
        ["HTTP/1.1 403 Forbidden", "HTTP/1.1 200 OK"],
        "{text}"
    );

    // Nothing refused reached the upstream: four requests were let through.
    wait_for("the four admitted requests", || {
        let n = up.served("GET");
        assert!(n <= 4, "the upstream saw {n}");
        async move { n == 4 }
    })
    .await;
}

/// An htpasswd line for `user` as `htpasswd -B` writes it (`$2y$`), at a low
/// cost so the test is quick.
fn htpasswd_line(user: &str, password: &str) -> String {
    let parts = bcrypt::hash_with_result(password, 4).unwrap();
    format!(
        "{user}:{}\n",
        parts.format_for_version(bcrypt::Version::TwoY)
    )
}

async fn get_as(lb: &Lb, path: &str, user_pass: Option<(&str, &str)>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(lb.url(path));
    if let Some((u, p)) = user_pass {
        req = req.basic_auth(u, Some(p));
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_asks_checks_and_follows_its_file() {
    let up = mock("up").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, htpasswd_line("alice", "first pass")).unwrap();
    let body = format!(
        "  upstreams:\n{}  routes:
    - {{ name: private, match: {{ path_prefix: /private }}, pool: default, access: {{ basic_auth: \"{}\" }} }}
    - {{ name: public, pool: default }}\n",
        upstreams_yaml(&[("up", up.addr(), 1)]),
        file.display()
    );
    let lb = Lb::start(&body).await;

    let asked = get_as(&lb, "/private/a", None).await;
    assert_eq!(asked.status(), 401);
    assert_eq!(
        asked.headers()["www-authenticate"],
        "Basic realm=\"private\", charset=\"UTF-8\""
    );
    assert_eq!(
        get_as(&lb, "/private/a", Some(("alice", "wrong")))
            .await
            .status(),
        401
    );
    assert_eq!(
        get_as(&lb, "/private/a", Some(("mallory", "first pass")))
            .await
            .status(),
        401
    );
    assert_eq!(
        get_as(&lb, "/private/a", Some(("alice", "first pass")))
            .await
            .status(),
        200
    );
    assert_eq!(get_as(&lb, "/elsewhere", None).await.status(), 200);
    // Nothing refused went upstream.
    wait_for("the two admitted requests", || {
        let n = up.served("GET");
        assert!(n <= 2, "the upstream saw {n}");
        async move { n == 2 }
    })
    .await;

    // A new password in the file is in force within a few seconds; the old
    // one is not.
    std::fs::write(&file, htpasswd_line("alice", "second pass")).unwrap();
    wait_for("the new password", || {
        let lb = &lb;
        async move {
            get_as(lb, "/private/a", Some(("alice", "second pass")))
                .await
                .status()
                == 200
        }
    })
    .await;
    assert_eq!(
        get_as(&lb, "/private/a", Some(("alice", "first pass")))
            .await
            .status(),
        401
    );

    // A broken rewrite is refused with an event; the file before stays.
    std::fs::write(&file, "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
    wait_for("an event refusing the broken file", || {
        let lb = &lb;
        async move {
            let events = lb.state().await["events"].clone();
            events.as_array().unwrap().iter().any(|e| {
                e["kind"] == "basic_auth"
                    && e["detail"].as_str().unwrap().contains("stays in force")
            })
        }
    })
    .await;
    assert_eq!(
        get_as(&lb, "/private/a", Some(("alice", "second pass")))
            .await
            .status(),
        200
    );

    // A file of old hashes is refused at load, naming the key.
    let out = check_config(&config_yaml(free_port(), free_port(), &body));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lb.routes[0].access.basic_auth") && err.contains("neither bcrypt nor argon2"),
        "{err}"
    );
}
