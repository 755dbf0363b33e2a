//! Cost of choosing an upstream, per algorithm, with 2, 100 and 1,000 upstreams:
//! the selection the proxy runs per request (eligibility check and P2C cost
//! included). `cargo bench --bench selection`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hybrid_lb::breaker::Admission;
use hybrid_lb::config::Config;
use hybrid_lb::state::SharedState;

fn state(algorithm: &str, n: usize) -> SharedState {
    let mut yaml = format!("lb:\n  algorithm: {algorithm}\n  upstreams:\n");
    for i in 0..n {
        let weight = 1 + (i * 7) % 10;
        yaml.push_str(&format!(
            "    - {{ name: u{i}, addr: \"127.0.0.1:{}\", weight: {weight} }}\n",
            10_000 + i
        ));
    }
    let state = SharedState::new(Config::parse(&yaml).expect("config").0);
    // Give every upstream a latency estimate, a spread of 1 to 40 ms.
    let now = Instant::now();
    for i in 0..n {
        state.observe_latency(i, 0.001 * (1 + i % 40) as f64, false, now);
    }
    state.refresh_weights(now);
    state
}

fn selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    for algorithm in ["round_robin", "weighted", "dynamic", "p2c"] {
        for n in [2usize, 100, 1000] {
            let s = state(algorithm, n);
            group.bench_with_input(BenchmarkId::new(algorithm, n), &n, |b, _| {
                b.iter(|| {
                    let now = Instant::now();
                    black_box(s.balancer.select(
                        |id| s.admit(id, now) != Admission::Refused,
                        |id| s.cost(id, now),
                    ))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, selection);
criterion_main!(benches);
