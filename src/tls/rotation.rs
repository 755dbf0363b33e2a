//! Certificate rotation: every second each pair's files are read again; when
//! they changed and the new pair checks out, it serves new connections from
//! then on. A pair that does not check out (a key for another certificate, a
//! truncated file) is refused with an event and the old pair stays; a tool
//! that renames the two files one after the other is given one more look
//! before its half-done state counts as broken. The files are read on a
//! blocking thread: a hung file system stalls this loop only, never the
//! health checks and the etcd keep-alive beside it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{from_pem, CertStore};
use crate::events::Events;

/// How often the files are looked at.
const POLL: Duration = Duration::from_secs(1);

/// What was last seen of one pair's files that did not check out.
#[derive(Default)]
struct Pending {
    seen: Option<(Vec<u8>, Vec<u8>)>,
    reported: bool,
}

#[derive(Clone)]
pub struct RotationService {
    store: Arc<CertStore>,
    events: Arc<Events>,
}

impl RotationService {
    pub fn new(store: Arc<CertStore>, events: Arc<Events>) -> Self {
        RotationService { store, events }
    }

    /// Looks at every pair once.
    fn look(&self, pending: &mut [Pending]) {
        let current = self.store.current();
        for (i, (loaded, pending)) in current.iter().zip(pending.iter_mut()).enumerate() {
            let paths = &loaded.paths;
            let (Ok(cert), Ok(key)) = (std::fs::read(&paths.cert), std::fs::read(&paths.key))
            else {
                // Mid-rename, or gone: keep serving what is loaded.
                continue;
            };
            if cert == loaded.cert_pem && key == loaded.key_pem {
                *pending = Pending::default();
                continue;
            }
            let files = format!("{} / {}", paths.cert.display(), paths.key.display());
            match from_pem(paths, cert.clone(), key.clone()) {
                Ok(next) => {
                    let detail = format!(
                        "{files}: new certificate for {} in force, expires {}",
                        next.names.join(", "),
                        expiry_text(next.not_after)
                    );
                    log::info!("tls: {detail}");
                    self.events.push(None, "tls", detail);
                    self.store.replace(i, next);
                    *pending = Pending::default();
                }
                Err(why) => {
                    let same = pending.seen.as_ref() == Some(&(cert.clone(), key.clone()));
                    if same && !pending.reported {
                        let detail = format!(
                            "{files}: replacement refused ({why}); the previous certificate stays"
                        );
                        log::warn!("tls: {detail}");
                        self.events.push(None, "tls", detail);
                        pending.reported = true;
                    } else if !same {
                        pending.seen = Some((cert, key));
                        pending.reported = false;
                    }
                }
            }
        }
    }
}

/// A Unix time as a UTC date and time.
pub fn expiry_text(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[async_trait]
impl BackgroundService for RotationService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut pending: Vec<Pending> = self
            .store
            .current()
            .iter()
            .map(|_| Pending::default())
            .collect();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
            let me = self.clone();
            let look = tokio::task::spawn_blocking(move || {
                me.look(&mut pending);
                pending
            });
            tokio::select! {
                done = look => match done {
                    Ok(p) => pending = p,
                    // A panic in the check is the loop's: its supervisor
                    // restarts it.
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CertificatePaths;
    use std::path::Path;

    fn write_pair(dir: &Path, name: &str, host: &str) -> CertificatePaths {
        let made = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
        let paths = CertificatePaths {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&paths.cert, made.cert.pem()).unwrap();
        std::fs::write(&paths.key, made.signing_key.serialize_pem()).unwrap();
        paths
    }

    #[test]
    fn a_changed_pair_is_taken_and_a_broken_one_refused_on_its_second_look() {
        let dir = tempfile::tempdir().unwrap();
        let live = write_pair(dir.path(), "live", "a.test");
        let store = Arc::new(CertStore::load_all(std::slice::from_ref(&live)).unwrap());
        let events = Arc::new(Events::default());
        let service = RotationService::new(store.clone(), events.clone());
        let mut pending = vec![Pending::default()];
        service.look(&mut pending);
        assert!(events.newest_first().is_empty(), "nothing changed");

        let next = write_pair(dir.path(), "next", "b.test");
        std::fs::rename(&next.cert, &live.cert).unwrap();
        std::fs::rename(&next.key, &live.key).unwrap();
        service.look(&mut pending);
        assert_eq!(store.current()[0].names, ["b.test"]);
        assert!(events.newest_first()[0]
            .detail
            .contains("new certificate for b.test"));

        // Half a rotation (a key of another pair) waits one look, then is refused.
        let other = write_pair(dir.path(), "other", "c.test");
        std::fs::rename(&other.key, &live.key).unwrap();
        service.look(&mut pending);
        assert_eq!(events.newest_first().len(), 1);
        service.look(&mut pending);
        assert!(events.newest_first()[0]
            .detail
            .contains("replacement refused"));
        assert_eq!(store.current()[0].names, ["b.test"], "the old pair stays");
    }
}
