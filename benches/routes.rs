//! What finding a request's route costs: the catch-all of a file without
//! routes, ten mixed routes, and a thousand host routes (exact hosts are
//! found through a map, so the thousandth costs what the first does), with
//! the host read and normalized as the request path does.
//! `cargo bench --bench routes`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use hybrid_lb::config::Config;
use hybrid_lb::route::{pattern, RequestFacts, RouteTable};

fn table(routes: &str) -> RouteTable {
    let mut yaml = String::from(
        "lb:\n  upstreams: [{ name: d, addr: '127.0.0.1:9001' }]\n  pools:\n    \
         web: { upstreams: [{ name: w, addr: '127.0.0.1:9002' }] }\n",
    );
    if !routes.is_empty() {
        yaml.push_str("  routes:\n");
        yaml.push_str(routes);
    } else {
        yaml = yaml.replace(
            "  pools:\n    web: { upstreams: [{ name: w, addr: '127.0.0.1:9002' }] }\n",
            "",
        );
    }
    RouteTable::new(Config::parse(&yaml).expect("config").0.lb.routes)
}

fn find(t: &RouteTable, authority: &str, path: &str, headers: &HeaderMap) -> Option<usize> {
    let host = t.uses_host().then(|| pattern::normalize_host(authority));
    t.find(&RequestFacts {
        method: &Method::GET,
        host: host.as_deref(),
        path,
        headers,
    })
}

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let none = table("");
    c.bench_function("routes/catch-all (no lb.routes)", |b| {
        b.iter(|| {
            find(
                &none,
                black_box("127.0.0.1:8080"),
                black_box("/api/items"),
                &headers,
            )
        })
    });
    let mixed = table(
        "    - { name: canary, match: { host: api.example.com, headers: { X-Canary: '1' } }, pool: web }
    - { name: v1, match: { host: api.example.com, path_prefix: /v1, methods: [GET, POST] }, pool: web }
    - { name: v2, match: { host: api.example.com, path_prefix: /v2 }, pool: web }
    - { name: admin, match: { host: admin.example.com }, pool: web }
    - { name: static, match: { path_prefix: /static }, pool: web }
    - { name: old, match: { host: old.example.com }, redirect: { to: 'https://www.example.com' } }
    - { name: www, match: { host: www.example.com }, pool: web }
    - { name: wild, match: { host: '*.example.org' }, pool: web }
    - { name: img, match: { path_prefix: /img }, pool: web }
    - { name: rest, pool: default }
",
    );
    c.bench_function("routes/10 mixed, the 7th matches", |b| {
        b.iter(|| {
            find(
                &mixed,
                black_box("WWW.example.com:443"),
                black_box("/index.html"),
                &headers,
            )
        })
    });
    let mut many = String::new();
    for i in 0..1000 {
        many.push_str(&format!(
            "    - {{ name: h{i}, match: {{ host: h{i}.example.com }}, pool: web }}\n"
        ));
    }
    many.push_str("    - { name: rest, pool: default }\n");
    let many = table(&many);
    c.bench_function("routes/1000 host routes, the 1000th matches", |b| {
        b.iter(|| {
            find(
                &many,
                black_box("h999.example.com"),
                black_box("/"),
                &headers,
            )
        })
    });
    c.bench_function(
        "routes/1000 host routes, none matches: the catch-all",
        |b| {
            b.iter(|| {
                find(
                    &many,
                    black_box("other.example.com"),
                    black_box("/"),
                    &headers,
                )
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
