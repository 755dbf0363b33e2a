//! Giving memory back after a burst. mimalloc schedules freed ranges to be
//! returned to the OS but returns them only when some thread next takes its
//! slow path, which an idle proxy never does; so a background thread asks it
//! every second. Transparent huge pages are off for the process (and for
//! mimalloc, by its `no_thp` build), since khugepaged would otherwise fill
//! returned ranges back in.

use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// How often due purges are run.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Turns transparent huge pages off for this process; call first thing.
pub fn init() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Runs mimalloc's due purges once a second.
pub struct MemoryService;

#[async_trait]
impl BackgroundService for MemoryService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(COLLECT_EVERY) => collect(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Called on a proxy worker thread when one of its connections ends: at most
/// once a second per thread, returns what that thread's own heap holds free
/// (which a collect on another thread cannot reach), so a burst of closed
/// connections gives its buffers back.
pub fn after_connection() {
    use std::cell::Cell;
    use std::time::Instant;
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| {
        let due = last
            .get()
            .is_none_or(|t| now.duration_since(t) >= COLLECT_EVERY);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        collect();
    }
}

fn collect() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: mi_collect may be called from any thread at any time; without
    // `force` it only returns what is already due.
    unsafe {
        libmimalloc_sys::mi_collect(false);
    }
}
