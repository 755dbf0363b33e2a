//! `hybrid-lb -c conf/lb.yaml`: Pingora's flags, our config, then run.

use pingora::server::configuration::Opt;
use pingora::server::Server;

use hybrid_lb::config::Config;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    hybrid_lb::memory::init();
    hybrid_lb::logging::init();
    let mut opt = Opt::parse_args();
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
    if opt.test {
        println!("hybrid-lb: {path} is valid");
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
    let how = if upgrade {
        "took over the listening sockets from the previous process"
    } else {
        "started"
    };
    state
        .events
        .push(None, "reload", format!("{how} with {path}"));
    server.run_forever();
}
