//! `mock-backend PORT [--name NAME] [--error-rate 0.1] [--error-status 503] [--latency-ms 20] [--jitter-ms 5] [--unhealthy] [--instant-health] [--health-latency-ms 0] [--capacity N]`

use std::net::{IpAddr, SocketAddr};

use clap::Parser;
use mock_backend::{Behaviour, MockServer};

/// A mock HTTP upstream for hybrid-lb tests and demos.
#[derive(Parser, Debug)]
#[command(name = "mock-backend", version)]
struct Args {
    /// Port to listen on (0 picks a free one).
    port: u16,
    /// Name reported in answers and in the X-Backend header (default: mock-PORT).
    #[arg(long)]
    name: Option<String>,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Probability in [0, 1] that a request fails (with `--error-status`).
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    error_rate: f64,
    /// Status of a failed answer (a 5xx).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(500..=599))]
    error_status: u16,
    /// Delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Spread of the delay, in milliseconds (latency ± jitter).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Start with /health answering 503.
    #[arg(long)]
    unhealthy: bool,
    /// Answer /health without the latency of other paths.
    #[arg(long)]
    instant_health: bool,
    /// What /health waits, in milliseconds, besides (independent of
    /// --latency-ms).
    #[arg(long, default_value_t = 0)]
    health_latency_ms: u64,
    /// Requests served at once at full speed; beyond them each request in
    /// flight adds --latency-ms to a new one's wait (0: no limit).
    #[arg(long, default_value_t = 0)]
    capacity: u64,
}

fn rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("{r} is not between 0 and 1"))
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let behaviour = Behaviour {
        error_rate: args.error_rate,
        error_status: args.error_status,
        latency_ms: args.latency_ms,
        jitter_ms: args.jitter_ms,
        healthy: !args.unhealthy,
        health_latency: !args.instant_health,
        health_latency_ms: args.health_latency_ms,
        capacity: args.capacity,
    };
    let name = args.name.unwrap_or_else(|| format!("mock-{}", args.port));
    let addr = SocketAddr::new(args.host, args.port);
    let server = match MockServer::start(addr, &name, behaviour).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mock-backend: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("mock-backend {name} listening on {}", server.addr());
    tokio::select! {
        _ = server.wait() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
