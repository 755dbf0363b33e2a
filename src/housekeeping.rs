//! The balancer's background loops (health checks, weights, discovery, the
//! dashboard's ticker, …) on one runtime thread. Pingora gives every
//! background service a runtime and a thread of its own; a dozen of them
//! idle would cost a thread stack, a timer and I/O driver, and the
//! allocator's per-thread pages each, for loops that mostly sleep. A loop
//! added here must not block (the access log's writer, which writes files,
//! keeps a thread of its own).

use async_trait::async_trait;
use futures_util::future::join_all;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

type Loop = Box<dyn BackgroundService + Send + Sync>;

/// Loops run side by side as one Pingora background service; it ends when
/// every loop has (each watches the shutdown on its own).
#[derive(Default)]
pub struct Housekeeping {
    loops: Vec<Loop>,
}

impl Housekeeping {
    pub fn add(&mut self, service: impl BackgroundService + Send + Sync + 'static) {
        self.loops.push(Box::new(service));
    }
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, shutdown: ShutdownWatch) {
        join_all(self.loops.iter().map(|l| l.start(shutdown.clone()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts itself started, then waits for the shutdown.
    struct Counting(Arc<AtomicUsize>);

    #[async_trait]
    impl BackgroundService for Counting {
        async fn start(&self, mut shutdown: ShutdownWatch) {
            self.0.fetch_add(1, Ordering::SeqCst);
            let _ = shutdown.changed().await;
        }
    }

    #[tokio::test]
    async fn every_loop_runs_and_all_end_on_shutdown() {
        let started = Arc::new(AtomicUsize::new(0));
        let mut h = Housekeeping::default();
        for _ in 0..3 {
            h.add(Counting(started.clone()));
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let run = tokio::spawn(async move { h.start(rx).await });
        let all_started = async {
            while started.load(Ordering::SeqCst) < 3 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), all_started)
            .await
            .expect("every loop started");
        assert!(!run.is_finished(), "ended before the shutdown");
        tx.send(true).unwrap();
        run.await.unwrap();
    }
}
