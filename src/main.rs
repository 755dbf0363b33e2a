//! `hybrid-lb -c conf/lb.yaml`: Pingora's flags, our config, then run.

use pingora::server::configuration::Opt;
use pingora::server::Server;

use hybrid_lb::config::Config;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What `--help` says.
const HELP: &str = "\
hybrid-lb: an HTTP load balancer with a live dashboard

usage: hybrid-lb -c FILE [-t | -u | -d]

  -c, --conf FILE   the config (balancer, dashboard and Pingora keys in one YAML file)
  -t, --test        check the whole config, print the verdict and exit (non-zero if invalid)
      --explain REQ with -t: the route a request would take and why, e.g.
                    --explain 'GET https://api.example.com/v1/users' (headers after the
                    URL: 'GET /x X-Canary: 1, Cookie: a=b')
  -u, --upgrade     take the listening sockets over from a running instance (zero-downtime
                    reload), as one command:
                      hybrid-lb -t -c FILE && kill -QUIT $(cat PID_FILE) && hybrid-lb -u -d -c FILE
  -d, --daemon      run in the background (Pingora's daemon mode)
  -h, --help        this text
  -V, --version     the version

config sections: lb (listeners, TLS, upstreams, discovery, algorithm, health checks,
breaker, ejection, retries, sticky sessions, limits, rate limits, access log),
dashboard (address, admin token, hosts), demo (in-process mock upstreams).
See README.md and docs/; `hybrid-lb -t -c conf/lb.yaml` checks the default config.
signals: SIGQUIT hands over to an -u process; SIGTERM stops gracefully; SIGINT stops
at once; SIGUSR1 reopens the access log.
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return;
    }
    if args.iter().any(|a| a == "-V" || a == "--version") {
        println!("hybrid-lb {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    // `--explain REQ` is ours; the rest are Pingora's flags.
    let mut explain = None;
    let mut rest = vec![std::env::args().next().unwrap_or_default()];
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.strip_prefix("--explain") {
            Some("") => explain = Some(it.next().unwrap_or_default()),
            Some(v) if v.starts_with('=') => explain = Some(v[1..].to_string()),
            _ => rest.push(a),
        }
    }
    hybrid_lb::memory::init();
    hybrid_lb::logging::init();
    let mut opt = Opt::parse_from_args(rest);
    let Some(path) = opt.conf.take() else {
        eprintln!("hybrid-lb: no config file given; run `hybrid-lb -c conf/lb.yaml`");
        std::process::exit(2);
    };
    let (config, server_conf) = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hybrid-lb: {path} is not valid:");
            for problem in &e.problems {
                eprintln!("  {problem}");
            }
            std::process::exit(1);
        }
    };
    if let Some(request) = explain {
        match explain_request(&config, &request) {
            Ok(text) => println!("{text}"),
            Err(why) => {
                eprintln!("hybrid-lb: --explain: {why}");
                std::process::exit(2);
            }
        }
        return;
    }
    if opt.test {
        // Pingora's keys were checked with ours: nothing more to start.
        println!("hybrid-lb: {path} is valid");
        return;
    }
    let upgrade = opt.upgrade;
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    let state = match hybrid_lb::add_services(&mut server, config) {
        Ok(state) => state,
        Err(e) => {
            eprintln!("hybrid-lb: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let (kind, how) = if upgrade {
        (
            "reload",
            "took over the listening sockets from the previous process",
        )
    } else {
        ("start", "started")
    };
    state.events.push(None, kind, format!("{how} with {path}"));
    if !server.configuration.daemon {
        // Pingora writes `pid_file` only when it daemonizes; the reload
        // recipe reads it, so a process in the foreground writes it too.
        let pid_file = &server.configuration.pid_file;
        if let Err(e) = std::fs::write(pid_file, std::process::id().to_string()) {
            log::warn!("cannot write pid_file {pid_file}: {e}");
        }
    }
    server.run_forever();
}

/// `--explain REQ`: the route `REQ` takes under `config`, as text.
fn explain_request(config: &Config, request: &str) -> Result<String, String> {
    use hybrid_lb::route::{explain, RouteTable};
    let (method, url, headers) = explain::parse_request(request)?;
    let table = RouteTable::new(config.lb.routes.clone());
    let e = explain::explain(&table, &config.lb.pools, &method, &url, &headers)?;
    Ok(e.to_string())
}
