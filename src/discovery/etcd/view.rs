//! The fleet's shared state as read from etcd, and how it merges into this
//! instance's upstream table: etcd's upstreams beside the config file's (an
//! etcd entry of a file entry's name wins), the operator's overrides on top.
//! Pure: the service feeds it etcd's keys and applies what it returns.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::{self, UpstreamConfig};

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

    pub fn key(&self, section: Section, name: &str) -> String {
        format!("{}{}{name}", self.prefix, section.dir())
    }

    /// The section and name of `key`, if it is one of ours.
    pub fn parse<'k>(&self, key: &'k str) -> Option<(Section, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?;
        Section::ALL.into_iter().find_map(|s| {
            let name = rest.strip_prefix(s.dir())?;
            (!name.is_empty() && !name.contains('/')).then_some((s, name))
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

/// Everything read under the prefix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub overrides: BTreeMap<String, Override>,
    pub instances: BTreeMap<String, Instance>,
}

impl View {
    /// Takes a key's new value; an entry that does not parse is left out
    /// (an earlier good value of it too) and the reason returned.
    pub fn put(&mut self, keys: &Keys, key: &str, value: &[u8]) -> Result<(), String> {
        let Some((section, name)) = keys.parse(key) else {
            return Ok(());
        };
        let parsed = match section {
            Section::Upstreams => config::upstream_entry(name, value).map(|u| {
                self.upstreams.insert(name.into(), u);
            }),
            Section::Overrides => Override::parse(value).map(|o| {
                self.overrides.insert(name.into(), o);
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
        match keys.parse(key) {
            Some((Section::Upstreams, name)) => drop(self.upstreams.remove(name)),
            Some((Section::Overrides, name)) => drop(self.overrides.remove(name)),
            Some((Section::Instances, name)) => drop(self.instances.remove(name)),
            None => {}
        }
    }
}

/// What the last merge put in force, so the next can take it back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Upstreams etcd supplied.
    pub upstreams: BTreeSet<String>,
    /// Upstreams whose weight an override set.
    pub weighted: BTreeSet<String>,
}

/// Merges `view` into the table's `configs`: etcd's upstreams replace or
/// join the table's; those etcd no longer names leave it, or go back to the
/// file's entry of that name (`file`); override weights are set and, when an
/// override goes, the entry's own weight comes back. Returns the names of
/// file entries etcd now shadows (for an event) and what is in force.
pub fn merge(
    configs: &mut Vec<UpstreamConfig>,
    file: &[UpstreamConfig],
    view: &View,
    last: &Applied,
) -> (Vec<String>, Applied) {
    let mut shadowed = Vec::new();
    // Entries etcd dropped: back to the file's, or out.
    for name in last
        .upstreams
        .iter()
        .filter(|n| !view.upstreams.contains_key(*n))
    {
        let restored = file.iter().find(|f| &f.name == name);
        match (configs.iter().position(|c| &c.name == name), restored) {
            (Some(i), Some(f)) => configs[i] = f.clone(),
            (Some(i), None) => drop(configs.remove(i)),
            (None, Some(f)) => configs.push(f.clone()),
            (None, None) => {}
        }
    }
    for (name, entry) in &view.upstreams {
        match configs.iter_mut().find(|c| &c.name == name) {
            Some(c) => {
                if !last.upstreams.contains(name) && file.iter().any(|f| &f.name == name) {
                    shadowed.push(name.clone());
                }
                *c = entry.clone();
            }
            None => configs.push(entry.clone()),
        }
    }
    // Weights: an override's, else the entry's own (etcd's or the file's).
    let mut weighted = BTreeSet::new();
    for c in configs.iter_mut() {
        let own = view
            .upstreams
            .get(&c.name)
            .or_else(|| file.iter().find(|f| f.name == c.name))
            .map(|e| e.weight);
        match view.overrides.get(&c.name).and_then(|o| o.weight) {
            Some(w) => {
                c.weight = w;
                weighted.insert(c.name.clone());
            }
            None if last.weighted.contains(&c.name) => {
                if let Some(w) = own {
                    c.weight = w;
                }
            }
            None => {}
        }
    }
    let applied = Applied {
        upstreams: view.upstreams.keys().cloned().collect(),
        weighted,
    };
    (shadowed, applied)
}

/// Whether the overrides drain `name`.
pub fn drained(view: &View, name: &str) -> bool {
    view.overrides
        .get(name)
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
        assert_eq!(k.key(Section::Overrides, "s1"), "/lb/overrides/s1");
        assert_eq!(
            k.parse("/lb/upstreams/s4"),
            Some((Section::Upstreams, "s4"))
        );
        assert_eq!(
            k.parse("/lb/instances/a-1"),
            Some((Section::Instances, "a-1"))
        );
        assert_eq!(k.parse("/lb/upstreams/"), None);
        assert_eq!(k.parse("/lb/upstreams/a/b"), None);
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
        assert_eq!(v.upstreams["s4"], up("s4", 9004, 3));
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
        assert!(v.upstreams.is_empty());
        assert!(v.put(&k, "/lb/overrides/s1", br#"{"weight": 0}"#).is_err());
        assert!(v
            .put(&k, "/lb/overrides/s1", br#"{"drain": true}"#)
            .is_err());
        v.put(&k, "/lb/overrides/s1", br#"{"drained": true}"#)
            .unwrap();
        assert!(drained(&v, "s1"));
        v.delete(&k, "/lb/overrides/s1");
        assert!(!drained(&v, "s1"));
    }

    #[test]
    fn etcd_upstreams_join_and_shadow_the_files_then_give_way() {
        let file = vec![up("s1", 1, 1), up("s2", 2, 1)];
        let mut configs = file.clone();
        let v = view_of(&[
            (
                "/lb/upstreams/s2",
                r#"{"addr": "127.0.0.1:22", "weight": 2}"#,
            ),
            ("/lb/upstreams/s3", r#"{"addr": "127.0.0.1:3"}"#),
        ]);
        let (shadowed, applied) = merge(&mut configs, &file, &v, &Applied::default());
        assert_eq!(shadowed, ["s2"]);
        assert_eq!(configs, [up("s1", 1, 1), up("s2", 22, 2), up("s3", 3, 1)]);
        // The same view again: nothing new is shadowed, nothing changes.
        let (shadowed, again) = merge(&mut configs, &file, &v, &applied);
        assert!(shadowed.is_empty());
        assert_eq!(again, applied);
        assert_eq!(configs, [up("s1", 1, 1), up("s2", 22, 2), up("s3", 3, 1)]);
        // etcd empties: s2 is the file's again, s3 goes.
        let (_, applied) = merge(&mut configs, &file, &View::default(), &applied);
        assert_eq!(configs, file);
        assert_eq!(applied, Applied::default());
    }

    #[test]
    fn override_weights_hold_until_the_override_goes() {
        let file = vec![up("s1", 1, 4)];
        let mut configs = file.clone();
        let v = view_of(&[("/lb/overrides/s1", r#"{"weight": 9, "drained": false}"#)]);
        let (_, applied) = merge(&mut configs, &file, &v, &Applied::default());
        assert_eq!(configs[0].weight, 9);
        let (_, applied) = merge(&mut configs, &file, &View::default(), &applied);
        assert_eq!(configs[0].weight, 4);
        assert!(applied.weighted.is_empty());
        // Upstreams from elsewhere (DNS) keep the weight they have.
        let mut configs = vec![up("api@10.0.0.1:80", 80, 5)];
        merge(&mut configs, &file, &View::default(), &applied);
        assert_eq!(configs[0].weight, 5);
    }
}
