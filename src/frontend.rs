//! The proxy's connection loop: Pingora's HTTP/1 loop for a plain listener, with
//! one change — the first request on a new connection waits at most
//! `lb.limits.header_timeout` for each read of its header (Pingora's generic
//! loop fixes this at 60 s). Later requests on the connection wait at most
//! `keepalive_timeout`, set by the proxy's request filter.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use crate::proxy::Proxy;

pub struct Frontend {
    proxy: Arc<HttpProxy<Proxy>>,
    /// Seconds each read of a new connection's first request header may take.
    header_timeout: u64,
}

impl Frontend {
    pub fn new(proxy: HttpProxy<Proxy>, header_timeout: std::time::Duration) -> Self {
        Frontend {
            proxy: Arc::new(proxy),
            header_timeout: header_timeout.as_secs().max(1),
        }
    }
}

#[async_trait]
impl ServerApp for Frontend {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut session = ServerSession::new_http1(stream);
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(self.header_timeout));
        }
        let mut result = self.proxy.process_new_http(session, shutdown).await;
        while let Some((stream, persistent)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = persistent {
                settings.apply_to_session(&mut session);
            }
            result = self.proxy.process_new_http(session, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}
