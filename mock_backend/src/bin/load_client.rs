//! `load-client URL --rate 2000 --seconds 10 [--timeout-ms 10000] [--max-outstanding 4000]`
//!
//! Offers a fixed rate of GETs whatever the answers take (open loop, as
//! users arrive), so an overloaded system cannot slow the offered load down
//! by answering late, and reports served (2xx) and refused (503) requests
//! apart: how many, and how long each kind took. One JSON line on stdout.
//! Meant for loopback targets only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "load-client")]
struct Args {
    url: String,
    /// Requests a second, started on schedule.
    #[arg(long)]
    rate: u32,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// A request unanswered this long counts as timed out.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Requests not started because this many were already outstanding
    /// are counted as `not_sent` (the client's own limit).
    #[arg(long, default_value_t = 4000)]
    max_outstanding: usize,
}

#[derive(Default)]
struct Tally {
    served: Vec<f64>,
    refused: Vec<f64>,
    other: u64,
    errors: u64,
    retry_after: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let host = args
        .url
        .strip_prefix("http://")
        .and_then(|r| r.split([':', '/']).next())
        .unwrap_or("");
    if !(host.starts_with("127.") || host == "localhost") {
        eprintln!(
            "load-client: only loopback targets are allowed: {}",
            args.url
        );
        std::process::exit(2);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .pool_max_idle_per_host(args.max_outstanding)
        .build()
        .expect("client");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let outstanding = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let total = u64::from(args.rate) * args.seconds;
    let start = Instant::now();
    let mut not_sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        let at = start + Duration::from_secs_f64(n as f64 / f64::from(args.rate));
        tokio::time::sleep_until(at.into()).await;
        if outstanding.load(std::sync::atomic::Ordering::Relaxed) >= args.max_outstanding {
            not_sent += 1;
            continue;
        }
        outstanding.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (client, url, tally, outstanding) = (
            client.clone(),
            args.url.clone(),
            tally.clone(),
            outstanding.clone(),
        );
        tasks.spawn(async move {
            let sent = Instant::now();
            let answer = client.get(&url).send().await;
            let answer = match answer {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let retry_after = r.headers().contains_key("retry-after");
                    r.bytes().await.map(|_| (status, retry_after))
                }
                Err(e) => Err(e),
            };
            let ms = sent.elapsed().as_secs_f64() * 1000.0;
            let mut t = tally.lock().unwrap();
            match answer {
                Ok((200..=299, _)) => t.served.push(ms),
                Ok((502 | 503, ra)) => {
                    t.refused.push(ms);
                    t.retry_after += u64::from(ra);
                }
                Ok(_) => t.other += 1,
                Err(e) => {
                    if t.errors < 3 {
                        eprintln!("load-client: {e:?}");
                    }
                    t.errors += 1
                }
            }
            drop(t);
            outstanding.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = args.seconds as f64;
    let mut t = tally.lock().unwrap();
    let pct = |v: &mut Vec<f64>, p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        (v[i] * 1000.0).round() / 1000.0
    };
    let served = t.served.len();
    let refused = t.refused.len();
    let line = serde_json::json!({
        "offered": total,
        "not_sent": not_sent,
        "served": served,
        "goodput_per_sec": (served as f64 / elapsed).round(),
        "served_p50_ms": pct(&mut t.served, 0.50),
        "served_p99_ms": pct(&mut t.served, 0.99),
        "served_max_ms": pct(&mut t.served, 1.0),
        "refused": refused,
        "refused_with_retry_after": t.retry_after,
        "refused_p50_ms": pct(&mut t.refused, 0.50),
        "refused_p99_ms": pct(&mut t.refused, 0.99),
        "other_status": t.other,
        "errors": t.errors,
    });
    println!("{line}");
}
