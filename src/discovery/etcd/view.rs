//! The fleet's shared state as read from etcd, and how it merges into this
//! instance's pools: etcd's upstreams beside the config file's (an etcd entry
//! of a file entry's name wins), the operator's overrides on top. The
//! unprefixed `upstreams/` and `overrides/` are the pool `default`'s; a named
//! pool's are under `pools/{pool}/`. Pure: the service feeds it etcd's keys
//! and applies what it returns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{self, UpstreamConfig, DEFAULT_POOL};
use crate::pool::compose::EtcdSet;

/// The keys under `lb.etcd.prefix`.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Upstreams,
    Overrides,
    Instances,
}

impl Section {
    const ALL: [Section; 3] = [Section::Upstreams, Section::Overrides, Section::Instances];

    fn dir(self) -> &'static str {
        match self {
            Section::Upstreams => "upstreams/",
            Section::Overrides => "overrides/",
            Section::Instances => "instances/",
        }
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of `name` in `section` of `pool` (instances belong to no
    /// pool: give `default`).
    pub fn key(&self, section: Section, pool: &str, name: &str) -> String {
        if pool == DEFAULT_POOL || section == Section::Instances {
            format!("{}{}{name}", self.prefix, section.dir())
        } else {
            format!("{}pools/{pool}/{}{name}", self.prefix, section.dir())
        }
    }

    /// The section, pool and name of `key`, if it is one of ours.
    pub fn parse<'k>(&self, key: &'k str) -> Option<(Section, &'k str, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?;
        let (pool, rest, sections) = match rest.strip_prefix("pools/") {
            Some(in_pool) => {
                let (pool, rest) = in_pool.split_once('/')?;
                (pool, rest, &Section::ALL[..2])
            }
            None => (DEFAULT_POOL, rest, &Section::ALL[..]),
        };
        if pool.is_empty() {
            return None;
        }
        sections.iter().find_map(|s| {
            let name = rest.strip_prefix(s.dir())?;
            (!name.is_empty() && !name.contains('/')).then_some((*s, pool, name))
        })
    }
}

/// `{prefix}overrides/{name}`: an operator's drain or weight, for every
/// instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl Override {
    pub fn parse(value: &[u8]) -> Result<Override, String> {
        let o: Override = serde_json::from_slice(value)
            .map_err(|e| format!("expected {{\"drained\": true|false, \"weight\": N}}: {e}"))?;
        match o.weight {
            Some(w) if !(1..=10_000).contains(&w) => {
                Err("weight must be between 1 and 10000".into())
            }
            _ => Ok(o),
        }
    }
}

/// `{prefix}instances/{id}`: a live instance (its key is leased).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    #[serde(default)]
    pub id: String,
    pub listen: Vec<String>,
    pub dashboard: String,
    /// RFC 3339.
    pub started: String,
}

/// One pool's part of the view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolView {
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub overrides: BTreeMap<String, Override>,
}

/// Everything read under the prefix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// By pool name (`default` for the unprefixed keys).
    pub pools: BTreeMap<String, PoolView>,
    pub instances: BTreeMap<String, Instance>,
}

impl View {
    /// `pool`'s part (empty if etcd has none).
    pub fn pool(&self, pool: &str) -> std::borrow::Cow<'_, PoolView> {
        match self.pools.get(pool) {
            Some(p) => std::borrow::Cow::Borrowed(p),
            None => std::borrow::Cow::Owned(PoolView::default()),
        }
    }

    /// Takes a key's new value; an entry that does not parse is left out
    /// (an earlier good value of it too) and the reason returned.
    pub fn put(&mut self, keys: &Keys, key: &str, value: &[u8]) -> Result<(), String> {
        let Some((section, pool, name)) = keys.parse(key) else {
            return Ok(());
        };
        let parsed = match section {
            Section::Upstreams => config::upstream_entry(name, value).map(|u| {
                let pool = self.pools.entry(pool.into()).or_default();
                pool.upstreams.insert(name.into(), u);
            }),
            Section::Overrides => Override::parse(value).map(|o| {
                let pool = self.pools.entry(pool.into()).or_default();
                pool.overrides.insert(name.into(), o);
            }),
            Section::Instances => serde_json::from_slice::<Instance>(value)
                .map_err(|e| e.to_string())
                .map(|mut i| {
                    i.id = name.into();
                    self.instances.insert(name.into(), i);
                }),
        };
        parsed.inspect_err(|_| self.delete(keys, key))
    }

    pub fn delete(&mut self, keys: &Keys, key: &str) {
        let Some((section, pool, name)) = keys.parse(key) else {
            return;
        };
        match section {
            Section::Instances => drop(self.instances.remove(name)),
            _ => {
                if let Some(p) = self.pools.get_mut(pool) {
                    match section {
                        Section::Upstreams => drop(p.upstreams.remove(name)),
                        _ => drop(p.overrides.remove(name)),
                    }
                    if p.upstreams.is_empty() && p.overrides.is_empty() {
                        self.pools.remove(pool);
                    }
                }
            }
        }
    }
}

/// What `view` wants of `pool`: its entries, and its overrides' weights.
pub fn wanted(view: &View, pool: &str) -> EtcdSet {
    let p = view.pool(pool);
    EtcdSet {
        upstreams: p.upstreams.clone(),
        weights: p
            .overrides
            .iter()
            .filter_map(|(name, o)| Some((name.clone(), o.weight?)))
            .collect(),
    }
}

/// Whether the overrides drain `name` in `pool`.
pub fn drained(view: &View, pool: &str, name: &str) -> bool {
    view.pools
        .get(pool)
        .and_then(|p| p.overrides.get(name))
        .and_then(|o| o.drained)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new("/lb/")
    }

    fn up(name: &str, port: u16, weight: u32) -> UpstreamConfig {
        UpstreamConfig::new(name, ([127, 0, 0, 1], port).into(), weight)
    }

    fn view_of(entries: &[(&str, &str)]) -> View {
        let mut v = View::default();
        for (k, val) in entries {
            v.put(&keys(), k, val.as_bytes()).unwrap();
        }
        v
    }

    #[test]
    fn keys_name_their_section() {
        let k = keys();
        assert_eq!(
            k.key(Section::Overrides, "default", "s1"),
            "/lb/overrides/s1"
        );
        assert_eq!(
            k.key(Section::Overrides, "api", "s1"),
            "/lb/pools/api/overrides/s1"
        );
        assert_eq!(
            k.parse("/lb/upstreams/s4"),
            Some((Section::Upstreams, "default", "s4"))
        );
        assert_eq!(
            k.parse("/lb/pools/api/upstreams/s4"),
            Some((Section::Upstreams, "api", "s4"))
        );
        assert_eq!(
            k.parse("/lb/instances/a-1"),
            Some((Section::Instances, "default", "a-1"))
        );
        assert_eq!(k.parse("/lb/upstreams/"), None);
        assert_eq!(k.parse("/lb/upstreams/a/b"), None);
        assert_eq!(k.parse("/lb/pools/api/instances/x"), None);
        assert_eq!(k.parse("/lb/pools//upstreams/x"), None);
        assert_eq!(k.parse("/other/upstreams/s4"), None);
    }

    #[test]
    fn values_are_checked_as_the_file_checks_them() {
        let mut v = View::default();
        let k = keys();
        v.put(
            &k,
            "/lb/upstreams/s4",
            br#"{"addr": "127.0.0.1:9004", "weight": 3}"#,
        )
        .unwrap();
        assert_eq!(v.pool("default").upstreams["s4"], up("s4", 9004, 3));
        for (bad, why) in [
            (&br#"{"addr": "nowhere:x"}"#[..], "addr"),
            (br#"{"addr": "127.0.0.1:1", "weight": 0}"#, "weight"),
            (br#"{"addr": "127.0.0.1:1", "colour": 1}"#, "colour"),
            (br#"{"dns": "api.internal:80"}"#, "dns"),
            (br#"{"name": "x", "addr": "127.0.0.1:1"}"#, "name"),
            (b"[1]", "object"),
        ] {
            let err = v.put(&k, "/lb/upstreams/s4", bad).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        // A refused value also takes the earlier good one out.
        assert!(v.pool("default").upstreams.is_empty());
        assert!(v.put(&k, "/lb/overrides/s1", br#"{"weight": 0}"#).is_err());
        assert!(v
            .put(&k, "/lb/overrides/s1", br#"{"drain": true}"#)
            .is_err());
        v.put(&k, "/lb/overrides/s1", br#"{"drained": true}"#)
            .unwrap();
        assert!(drained(&v, "default", "s1"));
        assert!(!drained(&v, "api", "s1"));
        v.put(&k, "/lb/pools/api/overrides/s1", br#"{"drained": true}"#)
            .unwrap();
        assert!(drained(&v, "api", "s1"));
        v.delete(&k, "/lb/overrides/s1");
        assert!(!drained(&v, "default", "s1"));
    }

    #[test]
    fn a_view_wants_its_entries_and_its_override_weights() {
        let v = view_of(&[
            (
                "/lb/upstreams/s3",
                r#"{"addr": "127.0.0.1:3", "weight": 2}"#,
            ),
            ("/lb/overrides/s1", r#"{"weight": 9, "drained": false}"#),
            ("/lb/overrides/s2", r#"{"drained": true}"#),
            ("/lb/pools/api/upstreams/a9", r#"{"addr": "127.0.0.1:9"}"#),
        ]);
        let w = wanted(&v, "default");
        assert_eq!(w.upstreams["s3"], up("s3", 3, 2));
        assert_eq!(w.weights.len(), 1, "a drain alone sets no weight");
        assert_eq!(w.weights["s1"], 9);
        let api = wanted(&v, "api");
        assert_eq!(api.upstreams.keys().collect::<Vec<_>>(), ["a9"]);
        assert!(wanted(&v, "web").upstreams.is_empty());
    }
}
