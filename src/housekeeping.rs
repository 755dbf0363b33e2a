//! The balancer's background loops (health checks, weights, discovery, the
//! dashboard's ticker, …) on one runtime thread. Pingora gives every
//! background service a runtime and a thread of its own; a dozen of them
//! idle would cost a thread stack, a timer and I/O driver, and the
//! allocator's per-thread pages each, for loops that mostly sleep. A loop
//! added here must not block: file reads go to `spawn_blocking` (certificate
//! rotation) or a thread of their own (the access log's writer).
//!
//! Each loop is supervised: one that panics is started again after a short
//! pause, with an event, and the others run on untouched.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::events::Events;

type Loop = Arc<dyn BackgroundService + Send + Sync>;

/// How long a loop that panicked waits before it starts again, so one that
/// panics at once cannot spin.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// Loops run side by side as one Pingora background service; it ends when
/// every loop has (each watches the shutdown on its own).
pub struct Housekeeping {
    loops: Vec<(String, Loop)>,
    events: Arc<Events>,
}

impl Housekeeping {
    pub fn new(events: Arc<Events>) -> Self {
        Housekeeping {
            loops: Vec::new(),
            events,
        }
    }

    /// Adds a loop; `name` says which in the event if it ever panics.
    pub fn add(&mut self, name: &str, service: impl BackgroundService + Send + Sync + 'static) {
        self.loops.push((name.to_string(), Arc::new(service)));
    }
}

/// Runs `l` until it returns, starting it again each time it panics.
async fn supervise(name: String, l: Loop, shutdown: ShutdownWatch, events: Arc<Events>) {
    loop {
        let (run, watch) = (l.clone(), shutdown.clone());
        match tokio::spawn(async move { run.start(watch).await }).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                let detail = format!("the {name} loop panicked; started again");
                log::error!("{detail}");
                events.push(None, "housekeeping", detail);
            }
            Err(_) => return,
        }
        let mut watch = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(RESTART_AFTER) => {}
            _ = watch.changed() => return,
        }
    }
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, shutdown: ShutdownWatch) {
        join_all(self.loops.iter().map(|(name, l)| {
            supervise(
                name.clone(),
                l.clone(),
                shutdown.clone(),
                self.events.clone(),
            )
        }))
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts itself started, then waits for the shutdown.
    struct Counting(Arc<AtomicUsize>);

    #[async_trait]
    impl BackgroundService for Counting {
        async fn start(&self, mut shutdown: ShutdownWatch) {
            self.0.fetch_add(1, Ordering::SeqCst);
            let _ = shutdown.changed().await;
        }
    }

    /// Panics the first time it starts, then behaves.
    struct PanicsOnce(Arc<AtomicUsize>);

    #[async_trait]
    impl BackgroundService for PanicsOnce {
        async fn start(&self, mut shutdown: ShutdownWatch) {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("first start");
            }
            let _ = shutdown.changed().await;
        }
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let wait = async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("{what}"));
    }

    #[tokio::test]
    async fn every_loop_runs_and_all_end_on_shutdown() {
        let started = Arc::new(AtomicUsize::new(0));
        let mut h = Housekeeping::new(Arc::new(Events::default()));
        for _ in 0..3 {
            h.add("counting", Counting(started.clone()));
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let run = tokio::spawn(async move { h.start(rx).await });
        until("every loop started", || started.load(Ordering::SeqCst) == 3).await;
        assert!(!run.is_finished(), "ended before the shutdown");
        tx.send(true).unwrap();
        run.await.unwrap();
    }

    #[tokio::test]
    async fn a_loop_that_panics_is_started_again_and_the_others_run_on() {
        let (started, others) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let events = Arc::new(Events::default());
        let mut h = Housekeeping::new(events.clone());
        h.add("flaky", PanicsOnce(started.clone()));
        h.add("steady", Counting(others.clone()));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let run = tokio::spawn(async move { h.start(rx).await });
        until("the panicked loop started again", || {
            started.load(Ordering::SeqCst) == 2
        })
        .await;
        assert_eq!(others.load(Ordering::SeqCst), 1, "the other loop untouched");
        let e = &events.newest_first()[0];
        assert_eq!(e.kind, "housekeeping");
        assert!(e.detail.contains("flaky loop panicked"), "{}", e.detail);
        tx.send(true).unwrap();
        run.await.unwrap();
    }
}
