//! What the request path costs per request, per algorithm: pick an upstream
//! from the table in force (eligibility and P2C cost included), then record
//! the outcome (breaker and latency estimate), as one answered request does.
//! With 2, 100 and 1,000 upstreams; with a second thread doing the same at
//! once; and with breakers open and half-open. `cargo bench --bench selection`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hybrid_lb::config::Config;
use hybrid_lb::state::SharedState;
use hybrid_lb::weights;

fn state(algorithm: &str, n: usize) -> SharedState {
    let mut yaml = format!(
        "lb:\n  algorithm: {algorithm}\n  circuit_breaker: {{ fail_threshold: 1, open_time: 1h, max_open_time: 1h }}\n  upstreams:\n"
    );
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
    for (i, u) in state.pool().table().upstreams().iter().enumerate() {
        u.observe_latency(0.001 * (1 + i % 40) as f64, false, now);
    }
    weights::tick(state.pool(), now);
    state
}

/// One request's work on the pool: pick over the published set, then
/// record a success.
fn request(s: &SharedState) -> Option<usize> {
    let now = Instant::now();
    let table = s.pool().current(now);
    let picked = s.pool().pick(&table, |_| false, now).map(|p| p.index);
    if let Some(i) = picked {
        let u = &table.upstreams()[i];
        u.observe_latency(0.002, false, now);
        u.record(true, false, now);
    }
    picked
}

const ALGORITHMS: [&str; 4] = ["round_robin", "weighted", "dynamic", "p2c"];

fn single(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    for algorithm in ALGORITHMS {
        for n in [2usize, 100, 1000] {
            let s = state(algorithm, n);
            group.bench_with_input(BenchmarkId::new(algorithm, n), &n, |b, _| {
                b.iter(|| black_box(request(&s)))
            });
        }
    }
    group.finish();
}

/// The same with a second thread making requests on the same table.
fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("contended");
    for algorithm in ALGORITHMS {
        let s = Arc::new(state(algorithm, 3));
        group.bench_function(algorithm, |b| {
            b.iter_custom(|iters| {
                let stop = Arc::new(AtomicBool::new(false));
                let other = {
                    let (s, stop) = (s.clone(), stop.clone());
                    std::thread::spawn(move || {
                        // Bounded: stops when told, or after a minute at most.
                        let end = Instant::now() + Duration::from_secs(60);
                        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                            black_box(request(&s));
                        }
                    })
                };
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(request(&s));
                }
                let took = start.elapsed();
                stop.store(true, Ordering::Relaxed);
                let _ = other.join();
                took
            })
        });
    }
    group.finish();
}

/// 100 upstreams: a third with breakers open, a third half-open with their
/// probe out, a third closed.
fn breakers(c: &mut Criterion) {
    let mut group = c.benchmark_group("breakers");
    for algorithm in ALGORITHMS {
        let s = state(algorithm, 100);
        let now = Instant::now();
        let table = s.pool().table();
        for (i, u) in table.upstreams().iter().enumerate() {
            match i % 3 {
                0 => u.record(false, false, now),
                1 => {
                    u.record(false, false, now);
                    // Past the open time, a request claims the probe.
                    let _ = u.claim_probe(now + Duration::from_secs(3601));
                }
                _ => {}
            }
        }
        group.bench_function(algorithm, |b| b.iter(|| black_box(request(&s))));
    }
    group.finish();
}

criterion_group!(benches, single, contended, breakers);
criterion_main!(benches);
