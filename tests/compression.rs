//! End to end: a route's `compress` in front of nginx serving real files.
//! The client's q-values choose gzip, br or zstd, the body decodes to what
//! nginx sent, `Vary: Accept-Encoding` is added and a strong ETag weakened;
//! short, binary, already-encoded and `no-transform` answers, HEAD requests
//! and routes without `compress` pass untouched.

mod common;

use std::io::Read;

use common::nginx::Nginx;
use common::*;

/// A JSON document of about 20 KB, compressible as real API answers are.
fn document() -> String {
    let items: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"name\":\"item-{i}\",\"price\":{}.{:02},\"tags\":[\"a\",\"b{}\"]}}",
                i * 7 % 100,
                i % 100,
                i % 13
            )
        })
        .collect();
    let text = format!("[{}]", items.join(","));
    assert!(text.len() > 12_000, "{}", text.len());
    text
}

struct Site {
    _nginx: Nginx,
    lb: Lb,
    json: String,
    png: Vec<u8>,
}

async fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let json = document();
    std::fs::write(www.join("data.json"), &json).unwrap();
    std::fs::write(www.join("small.json"), "{\"short\":true}").unwrap();
    let png: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("pic.png"), &png).unwrap();
    let port = free_port();
    let servers = format!(
        "  server {{\n    listen 127.0.0.1:{port};\n    root {www};\n    \
         types {{ application/json json; image/png png; }}\n    \
         location /pre/ {{ alias {www}/; gzip on; gzip_proxied any; gzip_types application/json; gzip_min_length 0; }}\n    \
         location /fixed/ {{ alias {www}/; add_header Cache-Control \"public, no-transform\"; }}\n  }}\n",
        www = www.display()
    );
    let nginx = Nginx::start(dir, &servers, &[port]).await;
    let lb = Lb::start(&format!(
        "  upstreams:\n    - {{ name: nginx, addr: \"127.0.0.1:{port}\" }}\n  routes:
    - {{ name: raw, match: {{ path_prefix: /raw }}, pool: default, strip_prefix: /raw }}
    - {{ name: site, match: {{}}, pool: default, compress: true }}\n"
    ))
    .await;
    Site {
        _nginx: nginx,
        lb,
        json,
        png,
    }
}

/// The answer's status, headers and raw body to a request with `ae` as its
/// Accept-Encoding (none when None).
async fn fetch(
    lb: &Lb,
    path: &str,
    ae: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = reqwest::Client::new().get(lb.url(path));
    if let Some(ae) = ae {
        req = req.header("accept-encoding", ae);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(body).unwrap(),
        other => panic!("unexpected coding {other}"),
    }
    out
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_gets_the_coding_it_values_most_and_the_same_document() {
    let s = site().await;
    for (ae, want) in [
        ("gzip", "gzip"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip;q=1.0, br;q=0.5, zstd;q=0.8", "gzip"),
        ("br;q=0.9, gzip;q=0.5", "br"),
        ("zstd;q=0, br;q=0, *;q=0.3", "gzip"),
    ] {
        let (status, h, body) = fetch(&s.lb, "/data.json", Some(ae)).await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "content-encoding"), Some(want), "for {ae}");
        assert_eq!(header(&h, "vary"), Some("Accept-Encoding"), "for {ae}");
        assert!(
            h.get("content-length").is_none(),
            "the length is not known ahead"
        );
        let etag = header(&h, "etag").unwrap();
        assert!(
            etag.starts_with("W/\""),
            "a strong ETag is weakened: {etag}"
        );
        assert!(
            body.len() * 4 < s.json.len(),
            "{want}: {} of {} bytes",
            body.len(),
            s.json.len()
        );
        assert_eq!(decode(want, &body), s.json.as_bytes(), "for {ae}");
    }
    // Three of the five went out in gzip; each is counted once its log
    // phase is done, just after the client has its last byte.
    let series =
        |stage: &str| format!("hlb_compression_bytes_total{{coding=\"gzip\",stage=\"{stage}\"}}");
    let whole = 3.0 * s.json.len() as f64;
    let lb = &s.lb;
    wait_for("three gzip answers counted", || async {
        metric_value(&lb.metrics().await, &series("in")) == Some(whole)
    })
    .await;
    let after = metric_value(&lb.metrics().await, &series("out")).unwrap();
    assert!(after > 0.0 && after * 4.0 < whole, "{after} of {whole}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_accepts_no_coding_gets_the_document_as_it_is_and_still_a_vary() {
    let s = site().await;
    for ae in [
        None,
        Some("identity"),
        Some("gzip;q=0"),
        Some("deflate"),
        Some("*;q=0"),
    ] {
        let (status, h, body) = fetch(&s.lb, "/data.json", ae).await;
        assert_eq!(status, 200);
        assert!(h.get("content-encoding").is_none(), "for {ae:?}");
        assert_eq!(header(&h, "vary"), Some("Accept-Encoding"), "for {ae:?}");
        assert_eq!(body, s.json.as_bytes(), "for {ae:?}");
        let len = s.json.len().to_string();
        assert_eq!(header(&h, "content-length"), Some(len.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_binary_encoded_and_no_transform_answers_pass_untouched() {
    let s = site().await;
    let all = Some("gzip, br, zstd");
    // Under a kibibyte.
    let (_, h, body) = fetch(&s.lb, "/small.json", all).await;
    assert!(h.get("content-encoding").is_none());
    assert!(h.get("vary").is_none());
    assert_eq!(body, b"{\"short\":true}");
    // Not text.
    let (_, h, body) = fetch(&s.lb, "/pic.png", all).await;
    assert!(h.get("content-encoding").is_none());
    assert_eq!(body, s.png);
    // The upstream said no-transform.
    let (_, h, body) = fetch(&s.lb, "/fixed/data.json", all).await;
    assert!(h.get("content-encoding").is_none());
    assert_eq!(body, s.json.as_bytes());
    // Encoded by the upstream already (nginx's own gzip): passed as it is,
    // not compressed twice.
    let (_, h, body) = fetch(&s.lb, "/pre/data.json", all).await;
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &body), s.json.as_bytes());
    // A route without `compress`.
    let (_, h, body) = fetch(&s.lb, "/raw/data.json", all).await;
    assert!(h.get("content-encoding").is_none());
    assert!(h.get("vary").is_none());
    assert_eq!(body, s.json.as_bytes());
    // A HEAD request: the length of the identity body, no body.
    let resp = reqwest::Client::new()
        .head(s.lb.url("/data.json"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-encoding").is_none());
    let len = s.json.len().to_string();
    assert_eq!(header(resp.headers(), "content-length"), Some(len.as_str()));
    // An HTTP/1.0 client cannot take chunks: its answer stays whole.
    let mut raw = tokio::net::TcpStream::connect(s.lb.proxy).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(b"GET /data.json HTTP/1.0\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    raw.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(text.ends_with(&s.json), "the document whole");
    // Several answers on one kept connection, compressed and not in turn,
    // each whole.
    let client = reqwest::Client::new();
    for i in 0..6 {
        let (path, ae) = if i % 2 == 0 {
            ("/data.json", "gzip")
        } else {
            ("/small.json", "gzip")
        };
        let resp = client
            .get(s.lb.url(path))
            .header("accept-encoding", ae)
            .send()
            .await
            .unwrap();
        let coded = resp.headers().get("content-encoding").is_some();
        let body = resp.bytes().await.unwrap();
        if i % 2 == 0 {
            assert!(coded);
            assert_eq!(decode("gzip", &body), s.json.as_bytes());
        } else {
            assert!(!coded);
            assert_eq!(&body[..], b"{\"short\":true}");
        }
    }
}
