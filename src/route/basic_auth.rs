//! A route's `access.basic_auth` at run time: the htpasswd file in force,
//! read again when it changes (a broken rewrite keeps the one before, with
//! an event), and the check of a request's `Authorization: Basic`. Checking
//! a password is slow by design, so it runs on blocking threads, two at a
//! time at most; a credential that passed is remembered (by its SHA-256)
//! until the file changes, so a client's every request does not pay again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::htpasswd::Htpasswd;

/// Checks at once, at most: each takes a core for tens of milliseconds.
const CHECKS_AT_ONCE: usize = 2;
/// The longest a request waits for its turn to be checked.
const CHECK_WAIT: Duration = Duration::from_secs(5);
/// Credentials remembered at most (then forgotten all at once).
const REMEMBERED: usize = 4096;

/// What a request's credentials are worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// None, malformed, or wrong: 401.
    Fail,
    /// Too many checks waiting: 503, come back.
    Busy,
}

#[derive(Debug)]
pub struct BasicAuth {
    path: PathBuf,
    /// Named in `WWW-Authenticate` (the route's name).
    pub realm: String,
    file: ArcSwap<Htpasswd>,
    /// The SHA-256 of the file's bytes when last read (a file is small:
    /// reading it whole is how a change is told, whatever its timestamps).
    stamp: Mutex<Option<[u8; 32]>>,
    /// Bumped with every file read: remembered credentials are of one.
    generation: AtomicU64,
    passed: Mutex<HashSet<[u8; 32]>>,
    checking: Arc<Semaphore>,
}

fn stamp_of(path: &Path) -> Option<[u8; 32]> {
    let bytes = std::fs::read(path).ok()?;
    Some(Sha256::digest(bytes).into())
}

fn read(path: &Path) -> Result<Htpasswd, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Htpasswd::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl BasicAuth {
    /// The file at `path` for the route `realm`; if it cannot be read now
    /// (it was when the config was checked), nobody passes until it can.
    pub fn load(path: &Path, realm: &str) -> Self {
        let stamp = stamp_of(path);
        let file = read(path).unwrap_or_else(|e| {
            log::error!("access.basic_auth of route {realm}: {e}; refusing everyone until fixed");
            Htpasswd::default()
        });
        BasicAuth {
            path: path.to_path_buf(),
            realm: realm.to_string(),
            file: ArcSwap::from_pointee(file),
            stamp: Mutex::new(stamp),
            generation: AtomicU64::new(0),
            passed: Mutex::new(HashSet::new()),
            checking: Arc::new(Semaphore::new(CHECKS_AT_ONCE)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again if it changed: None if it did not, else the
    /// users now in force, or why the change was refused (the file before
    /// stays in force).
    pub fn reread(&self) -> Option<Result<usize, String>> {
        let now = stamp_of(&self.path);
        let mut stamp = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if now == *stamp {
            return None;
        }
        *stamp = now;
        drop(stamp);
        Some(read(&self.path).map(|file| {
            let users = file.len();
            self.file.store(Arc::new(file));
            self.generation.fetch_add(1, Ordering::Relaxed);
            self.passed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            users
        }))
    }

    /// Checks `authorization` (the request's header, if any).
    pub async fn check(&self, authorization: Option<&HeaderValue>) -> Verdict {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return Verdict::Fail;
        };
        let generation = self.generation.load(Ordering::Relaxed);
        let key: [u8; 32] = Sha256::new()
            .chain_update(generation.to_le_bytes())
            .chain_update(authorization.map_or(&[][..], |v| v.as_bytes()))
            .finalize()
            .into();
        if self.remembers(&key) {
            return Verdict::Pass;
        }
        let Ok(Ok(permit)) =
            tokio::time::timeout(CHECK_WAIT, self.checking.clone().acquire_owned()).await
        else {
            return Verdict::Busy;
        };
        let file = self.file.load_full();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            file.verify(&user, &password)
        })
        .await
        .unwrap_or(false);
        if !ok {
            return Verdict::Fail;
        }
        let mut passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        if passed.len() >= REMEMBERED {
            passed.clear();
        }
        passed.insert(key);
        Verdict::Pass
    }

    fn remembers(&self, key: &[u8; 32]) -> bool {
        self.passed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }
}

/// The user and password of an `Authorization: Basic` header.
fn credentials(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> HeaderValue {
        let b = base64::engine::general_purpose::STANDARD.encode(user_pass);
        HeaderValue::from_str(&format!("Basic {b}")).unwrap()
    }

    #[test]
    fn credentials_are_read_from_a_basic_header_only() {
        assert_eq!(
            credentials(&basic("alice:pa:ss")),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(credentials(&HeaderValue::from_static("Bearer abc")), None);
        assert_eq!(credentials(&HeaderValue::from_static("Basic !!!")), None);
        assert_eq!(credentials(&basic("no colon")), None);
    }

    #[tokio::test]
    async fn a_changed_file_is_taken_and_a_broken_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let write = |user: &str, pass: &str| {
            let h = bcrypt::hash(pass, 4).unwrap();
            std::fs::write(&path, format!("{user}:{h}\n")).unwrap();
        };
        write("alice", "one");
        let auth = BasicAuth::load(&path, "admin");
        assert_eq!(auth.check(Some(&basic("alice:one"))).await, Verdict::Pass);
        assert_eq!(
            auth.check(Some(&basic("alice:one"))).await,
            Verdict::Pass,
            "remembered"
        );
        assert_eq!(auth.check(Some(&basic("alice:two"))).await, Verdict::Fail);
        assert_eq!(auth.check(None).await, Verdict::Fail);
        assert_eq!(auth.reread(), None, "unchanged");
        write("alice", "two");
        assert_eq!(auth.reread(), Some(Ok(1)));
        assert_eq!(
            auth.check(Some(&basic("alice:one"))).await,
            Verdict::Fail,
            "forgotten"
        );
        assert_eq!(auth.check(Some(&basic("alice:two"))).await, Verdict::Pass);
        std::fs::write(&path, "alice:plaintext-password-here\n").unwrap();
        assert!(auth.reread().unwrap().is_err());
        assert_eq!(
            auth.check(Some(&basic("alice:two"))).await,
            Verdict::Pass,
            "kept"
        );
    }
}
