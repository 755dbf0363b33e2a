//! Where ACME keeps its account, certificates and pending challenges: files
//! under `acme.storage`, or keys under `{prefix}acme/` in etcd for a fleet.
//! In etcd an order is made under a lock held on a lease, so one instance
//! orders and the rest read what it stored; a lock's holder that dies loses
//! it when its lease runs out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Client, GetOptions, LockOptions};
use tokio::sync::Mutex;

use crate::config::EtcdConfig;

/// The lock's lease: kept alive while the order runs, gone this long
/// after its holder is.
const LEASE_TTL: i64 = 30;
/// How long an instance waits for the lock before it leaves the order to
/// the instance holding it (and looks again at the next tick); under the
/// etcd client's own 2 s limit on a request, which would end it as an error.
const LOCK_WAIT: Duration = Duration::from_secs(1);

pub enum Store {
    Dir(PathBuf),
    Etcd {
        conf: Box<EtcdConfig>,
        prefix: String,
        client: Box<Mutex<Option<Client>>>,
    },
}

/// An order's lock; [`Lock::release`] it when done.
pub struct Lock {
    held: Option<(Client, Vec<u8>, i64, tokio::task::JoinHandle<()>)>,
}

impl Store {
    pub fn dir(path: &Path) -> Store {
        Store::Dir(path.to_path_buf())
    }

    pub fn etcd(conf: &EtcdConfig) -> Store {
        Store::Etcd {
            prefix: format!("{}acme/", conf.prefix),
            conf: Box::new(conf.clone()),
            client: Box::new(Mutex::new(None)),
        }
    }

    /// Whether other instances share it (then challenges are published for
    /// them, and orders locked).
    pub fn shared(&self) -> bool {
        matches!(self, Store::Etcd { .. })
    }

    async fn client(&self) -> Result<(Client, &str), String> {
        let Store::Etcd {
            conf,
            prefix,
            client,
        } = self
        else {
            unreachable!("only etcd has a client")
        };
        let mut held = client.lock().await;
        if held.is_none() {
            let c = crate::discovery::etcd::connect(conf)
                .await
                .map_err(|e| format!("etcd: {e}"))?;
            *held = Some(c);
        }
        Ok((held.clone().expect("set above"), prefix))
    }

    async fn forget_client(&self) {
        if let Store::Etcd { client, .. } = self {
            *client.lock().await = None;
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            Store::Dir(dir) => match tokio::fs::read(file(dir, key)?).await {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", file(dir, key)?.display())),
            },
            Store::Etcd { .. } => {
                let (mut c, prefix) = self.client().await?;
                match c.get(format!("{prefix}{key}"), None).await {
                    Ok(r) => Ok(r.kvs().first().map(|kv| kv.value().to_vec())),
                    Err(e) => {
                        self.forget_client().await;
                        Err(format!("etcd: {e}"))
                    }
                }
            }
        }
    }

    /// Every key under `under` (relative) with its value.
    pub async fn list(&self, under: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        match self {
            Store::Dir(dir) => {
                let mut out = Vec::new();
                let base = file(dir, under)?;
                let Ok(mut entries) = tokio::fs::read_dir(&base).await else {
                    return Ok(out);
                };
                while let Ok(Some(e)) = entries.next_entry().await {
                    let name = e.file_name().to_string_lossy().to_string();
                    if name.ends_with(".tmp") {
                        continue;
                    }
                    if let Ok(v) = tokio::fs::read(e.path()).await {
                        out.push((format!("{under}{name}"), v));
                    }
                }
                Ok(out)
            }
            Store::Etcd { .. } => {
                let (mut c, prefix) = self.client().await?;
                let r = c
                    .get(
                        format!("{prefix}{under}"),
                        Some(GetOptions::new().with_prefix()),
                    )
                    .await;
                match r {
                    Ok(r) => Ok(r
                        .kvs()
                        .iter()
                        .filter_map(|kv| {
                            let k = kv.key_str().ok()?.strip_prefix(prefix)?.to_string();
                            Some((k, kv.value().to_vec()))
                        })
                        .collect()),
                    Err(e) => {
                        self.forget_client().await;
                        Err(format!("etcd: {e}"))
                    }
                }
            }
        }
    }

    /// Stores `value` under `key`; a file is written whole (renamed into
    /// place) and readable by its owner only, as it may hold a private key.
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<(), String> {
        match self {
            Store::Dir(dir) => {
                let path = file(dir, key)?;
                let write = |path: PathBuf, value: Vec<u8>| -> std::io::Result<()> {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    let tmp = path.with_extension("tmp");
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(&value)?;
                    f.sync_all()?;
                    std::fs::rename(&tmp, &path)
                };
                let (p, v) = (path.clone(), value.to_vec());
                tokio::task::spawn_blocking(move || write(p, v))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{}: {e}", path.display()))
            }
            Store::Etcd { .. } => {
                let (mut c, prefix) = self.client().await?;
                if let Err(e) = c.put(format!("{prefix}{key}"), value, None).await {
                    self.forget_client().await;
                    return Err(format!("etcd: {e}"));
                }
                Ok(())
            }
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), String> {
        match self {
            Store::Dir(dir) => match tokio::fs::remove_file(file(dir, key)?).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            },
            Store::Etcd { .. } => {
                let (mut c, prefix) = self.client().await?;
                c.delete(format!("{prefix}{key}"), None)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("etcd: {e}"))
            }
        }
    }

    /// The fleet's lock on ordering `name`; None while another instance
    /// holds it. A directory is one instance's: no lock.
    pub async fn lock(&self, name: &str) -> Result<Option<Lock>, String> {
        if !self.shared() {
            return Ok(Some(Lock { held: None }));
        }
        let (mut c, prefix) = self.client().await?;
        let lease = c
            .lease_grant(LEASE_TTL, None)
            .await
            .map_err(|e| format!("etcd lease: {e}"))?
            .id();
        let (mut keeper, mut answers) = c
            .lease_keep_alive(lease)
            .await
            .map_err(|e| format!("etcd lease: {e}"))?;
        let alive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(LEASE_TTL as u64 / 3)).await;
                if keeper.keep_alive().await.is_err() || answers.message().await.is_err() {
                    return;
                }
            }
        });
        let wanted = c.lock(
            format!("{prefix}locks/{name}"),
            Some(LockOptions::new().with_lease(lease)),
        );
        match tokio::time::timeout(LOCK_WAIT, wanted).await {
            Ok(Ok(r)) => Ok(Some(Lock {
                held: Some((c, r.key().to_vec(), lease, alive)),
            })),
            failed => {
                alive.abort();
                // The waiting request's key goes with its lease.
                let _ = c.lease_revoke(lease).await;
                match failed {
                    Ok(Err(e)) => Err(format!("etcd lock: {e}")),
                    _ => Ok(None),
                }
            }
        }
    }
}

impl Lock {
    pub async fn release(self) {
        if let Some((mut c, key, lease, alive)) = self.held {
            alive.abort();
            let _ = c.unlock(key).await;
            let _ = c.lease_revoke(lease).await;
        }
    }
}

/// The file for `key` under `dir`; keys are ours, but a name from a domain
/// or a token must not climb out.
fn file(dir: &Path, key: &str) -> Result<PathBuf, String> {
    if key
        .split('/')
        .any(|part| part == ".." || part.starts_with('.') && part.len() > 1)
    {
        return Err(format!("{key}: not a storage key"));
    }
    Ok(dir.join(key))
}
