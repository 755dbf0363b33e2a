//! A plain Pingora round-robin proxy: the reference hybrid-lb's benchmark measures
//! itself against (`loadtest/bench.sh`). Pingora's own LoadBalancer, no metrics,
//! no health checks, nothing of ours on the request path.
//!
//! `PLAIN_LISTEN=127.0.0.1:8081 PLAIN_UPSTREAMS=127.0.0.1:9001,127.0.0.1:9002 \
//!  cargo run --release --example plain_pingora -- -c pingora.yaml`

use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Plain(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Plain {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let upstream = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::explain(HTTPStatus(503), "no upstream"))?;
        Ok(Box::new(HttpPeer::new(upstream, false, String::new())))
    }
}

fn main() {
    let listen = std::env::var("PLAIN_LISTEN").unwrap_or_else(|_| "127.0.0.1:8081".into());
    let upstreams = std::env::var("PLAIN_UPSTREAMS").expect("PLAIN_UPSTREAMS=host:port,...");
    let mut server = Server::new(Some(Opt::parse_args())).expect("server");
    server.bootstrap();
    let lb = LoadBalancer::try_from_iter(upstreams.split(',')).expect("upstreams");
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Plain(Arc::new(lb)));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
