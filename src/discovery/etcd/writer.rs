//! The admin API's changes when etcd is configured: written to etcd, never
//! applied here directly, so every instance (this one included) takes them
//! from its watch. Each write is a compare-and-swap, so two operators' edits
//! of one upstream's override do not overwrite each other.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use super::view::{Override, Section};
use super::Fleet;

/// Why a write did not happen.
#[derive(Debug, PartialEq)]
pub enum WriteError {
    /// No session to etcd now.
    Unreachable(String),
    /// `add` of a name etcd holds already.
    Taken,
}

/// Tries before a contended override write gives up.
const TRIES: usize = 5;

impl Fleet {
    fn writer(&self) -> Result<Client, WriteError> {
        self.client()
            .ok_or_else(|| WriteError::Unreachable("not connected to etcd".into()))
    }

    /// Edits `{prefix}[pools/{pool}/]overrides/{name}`; an override left
    /// empty is deleted.
    pub async fn edit_override(
        &self,
        pool: &str,
        name: &str,
        edit: impl Fn(&mut Override),
    ) -> Result<(), WriteError> {
        let mut client = self.writer()?;
        let key = self.keys.key(Section::Overrides, pool, name);
        let unreachable = |e: etcd_client::Error| WriteError::Unreachable(e.to_string());
        for _ in 0..TRIES {
            let got = client.get(key.as_str(), None).await.map_err(unreachable)?;
            let (mut o, revision) = match got.kvs().first() {
                Some(kv) => (
                    Override::parse(kv.value()).unwrap_or_default(),
                    kv.mod_revision(),
                ),
                None => (Override::default(), 0),
            };
            edit(&mut o);
            let write = if o == Override::default() {
                TxnOp::delete(key.as_str(), None)
            } else {
                let value = serde_json::to_vec(&o).unwrap_or_default();
                TxnOp::put(key.as_str(), value, None)
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([write]);
            if client.txn(txn).await.map_err(unreachable)?.succeeded() {
                return Ok(());
            }
        }
        Err(WriteError::Unreachable(format!(
            "{key} kept changing under {TRIES} tries"
        )))
    }

    /// Creates `{prefix}[pools/{pool}/]upstreams/{name}` with `value`,
    /// unless it exists.
    pub async fn add_upstream(
        &self,
        pool: &str,
        name: &str,
        value: Vec<u8>,
    ) -> Result<(), WriteError> {
        let mut client = self.writer()?;
        let key = self.keys.key(Section::Upstreams, pool, name);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        match client.txn(txn).await {
            Ok(r) if r.succeeded() => Ok(()),
            Ok(_) => Err(WriteError::Taken),
            Err(e) => Err(WriteError::Unreachable(e.to_string())),
        }
    }

    /// Deletes `{prefix}[pools/{pool}/]upstreams/{name}` and its override.
    pub async fn remove_upstream(&self, pool: &str, name: &str) -> Result<(), WriteError> {
        let mut client = self.writer()?;
        let txn = Txn::new().and_then([
            TxnOp::delete(self.keys.key(Section::Upstreams, pool, name), None),
            TxnOp::delete(self.keys.key(Section::Overrides, pool, name), None),
        ]);
        client
            .txn(txn)
            .await
            .map(|_| ())
            .map_err(|e| WriteError::Unreachable(e.to_string()))
    }
}
