//! The set a pool's table is replaced with, composed from what each of its
//! sources wants. A source (the config file, DNS, etcd, the admin API) never
//! edits the table or another source's set: it changes its own part of
//! [`Desired`], and [`compose`] (pure) says how the parts combine. Identity
//! is the name throughout.
//!
//! | source   | adds                           | same name as an earlier source | weight                |
//! |----------|--------------------------------|--------------------------------|-----------------------|
//! | file     | its entries, in file order     | –                              | its own               |
//! | DNS      | each group's members           | skipped                        | the answer's          |
//! | etcd     | its entries                    | replaces it in place           | an override's, first  |
//! | admin    | upstreams added at run time    | replaces it in place           | one it set, next      |
//!
//! The admin API's removals take any name out last.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::UpstreamConfig;

/// What etcd wants: its entries, and the weights its overrides set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EtcdSet {
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub weights: BTreeMap<String, u32>,
}

/// What the admin API (without etcd) wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdminSet {
    /// Upstreams added at run time, in the order they came.
    pub added: Vec<UpstreamConfig>,
    /// Names taken out.
    pub removed: BTreeSet<String>,
    /// Weights set, by name.
    pub weights: BTreeMap<String, u32>,
}

impl AdminSet {
    /// Adds (or puts back) `c`.
    pub fn add(&mut self, c: UpstreamConfig) {
        self.removed.remove(&c.name);
        self.weights.remove(&c.name);
        self.added.retain(|a| a.name != c.name);
        self.added.push(c);
    }

    /// Takes `name` out, whichever source named it.
    pub fn remove(&mut self, name: &str) {
        self.added.retain(|a| a.name != name);
        self.weights.remove(name);
        self.removed.insert(name.to_string());
    }
}

/// Every source's wanted set for one pool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// The config file's entries by address (a `dns:` or `srv:` entry is a
    /// group, whose members are in `dns`).
    pub file: Vec<UpstreamConfig>,
    /// Each discovered group's members from its last good answer, in the
    /// file's order of groups.
    pub dns: Vec<(String, Vec<UpstreamConfig>)>,
    pub etcd: EtcdSet,
    pub admin: AdminSet,
}

impl Desired {
    /// The sets of a config's upstreams as read at start: entries of a group
    /// are that group's members, the others the file's.
    pub fn from_start(upstreams: &[UpstreamConfig], groups: &[String]) -> Self {
        let mut d = Desired {
            file: upstreams
                .iter()
                .filter(|u| u.group.is_none())
                .cloned()
                .collect(),
            ..Desired::default()
        };
        for g in groups {
            let members = upstreams
                .iter()
                .filter(|u| u.group.as_deref() == Some(g.as_str()))
                .cloned()
                .collect();
            d.dns.push((g.clone(), members));
        }
        d
    }

    /// Whether their composition names `name`.
    pub fn names(&self, name: &str) -> bool {
        compose(self).iter().any(|c| c.name == name)
    }

    /// The members `group` has now.
    pub fn members(&self, group: &str) -> &[UpstreamConfig] {
        self.dns
            .iter()
            .find(|(g, _)| g == group)
            .map_or(&[], |(_, m)| m.as_slice())
    }

    /// Puts `group`'s members from a new good answer.
    pub fn set_members(&mut self, group: &str, members: Vec<UpstreamConfig>) {
        match self.dns.iter_mut().find(|(g, _)| g == group) {
            Some((_, m)) => *m = members,
            None => self.dns.push((group.to_string(), members)),
        }
    }
}

/// The set the table is replaced with.
pub fn compose(d: &Desired) -> Vec<UpstreamConfig> {
    let mut out: Vec<UpstreamConfig> = Vec::new();
    let put = |out: &mut Vec<UpstreamConfig>, c: &UpstreamConfig, replace: bool| match out
        .iter_mut()
        .find(|o| o.name == c.name)
    {
        Some(o) if replace => *o = c.clone(),
        Some(_) => {}
        None => out.push(c.clone()),
    };
    for c in &d.file {
        put(&mut out, c, false);
    }
    for (_, members) in &d.dns {
        for m in members {
            put(&mut out, m, false);
        }
    }
    for c in d.etcd.upstreams.values() {
        put(&mut out, c, true);
    }
    for c in &d.admin.added {
        put(&mut out, c, true);
    }
    out.retain(|c| !d.admin.removed.contains(&c.name));
    for c in &mut out {
        if let Some(&w) = d
            .etcd
            .weights
            .get(&c.name)
            .or_else(|| d.admin.weights.get(&c.name))
        {
            c.weight = w;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(name: &str, port: u16, weight: u32) -> UpstreamConfig {
        UpstreamConfig::new(name, ([127, 0, 0, 1], port).into(), weight)
    }

    fn member(group: &str, port: u16, weight: u32) -> UpstreamConfig {
        let mut c = up(&format!("{group}@127.0.0.1:{port}"), port, weight);
        c.group = Some(group.to_string());
        c
    }

    fn names(set: &[UpstreamConfig]) -> Vec<(String, u16, u32)> {
        set.iter()
            .map(|c| (c.name.clone(), c.addr.port(), c.weight))
            .collect()
    }

    fn n(name: &str, port: u16, weight: u32) -> (String, u16, u32) {
        (name.to_string(), port, weight)
    }

    #[test]
    fn each_source_adds_in_turn_and_the_later_ones_replace_by_name() {
        let mut d = Desired {
            file: vec![up("s1", 1, 1), up("s2", 2, 1)],
            ..Desired::default()
        };
        d.set_members("api", vec![member("api", 10, 2), member("api", 11, 2)]);
        assert_eq!(
            names(&compose(&d)),
            [
                n("s1", 1, 1),
                n("s2", 2, 1),
                n("api@127.0.0.1:10", 10, 2),
                n("api@127.0.0.1:11", 11, 2)
            ]
        );
        // etcd replaces the file's s2 in place and adds s3.
        d.etcd.upstreams.insert("s2".into(), up("s2", 22, 3));
        d.etcd.upstreams.insert("s3".into(), up("s3", 3, 1));
        let set = compose(&d);
        assert_eq!(set[1], up("s2", 22, 3));
        assert_eq!(set[4].name, "s3");
        // The admin API adds s4, and replaces s1 after taking it out.
        d.admin.add(up("s4", 4, 1));
        d.admin.remove("s1");
        assert!(compose(&d).iter().all(|c| c.name != "s1"));
        d.admin.add(up("s1", 100, 5));
        let set = compose(&d);
        assert_eq!(set[0], up("s1", 100, 5), "in the file's place");
        assert_eq!(set.last().unwrap().name, "s4");
        // etcd lets s2 go: the file's entry is back.
        d.etcd.upstreams.remove("s2");
        assert_eq!(compose(&d)[1], up("s2", 2, 1));
    }

    #[test]
    fn weights_an_override_then_the_admin_apis_then_the_entrys_own() {
        let mut d = Desired {
            file: vec![up("s1", 1, 4)],
            ..Desired::default()
        };
        d.set_members("api", vec![member("api", 10, 5)]);
        d.admin.weights.insert("s1".into(), 7);
        assert_eq!(compose(&d)[0].weight, 7);
        d.etcd.weights.insert("s1".into(), 9);
        d.etcd.weights.insert("api@127.0.0.1:10".into(), 1);
        let set = compose(&d);
        assert_eq!((set[0].weight, set[1].weight), (9, 1));
        // The overrides go: the admin API's weight for s1, the answer's for
        // the member.
        d.etcd.weights.clear();
        let set = compose(&d);
        assert_eq!((set[0].weight, set[1].weight), (7, 5));
        d.admin.weights.clear();
        assert_eq!(compose(&d)[0].weight, 4);
    }

    #[test]
    fn a_group_keeps_its_place_and_the_file_wins_a_name_it_shares() {
        let mut d = Desired {
            file: vec![up("api@127.0.0.1:10", 99, 1)],
            ..Desired::default()
        };
        d.set_members("api", vec![member("api", 10, 2), member("api", 11, 2)]);
        let set = compose(&d);
        assert_eq!(set.len(), 2);
        assert_eq!(set[0].addr.port(), 99, "the file's entry stands");
        d.set_members("api", vec![member("api", 12, 2)]);
        assert_eq!(
            names(&compose(&d)),
            [n("api@127.0.0.1:10", 99, 1), n("api@127.0.0.1:12", 12, 2)]
        );
    }

    #[test]
    fn the_start_splits_a_configs_upstreams_by_group() {
        let upstreams = vec![up("s1", 1, 1), member("api", 10, 2), up("s2", 2, 1)];
        let d = Desired::from_start(&upstreams, &["api".to_string(), "grpc".to_string()]);
        assert_eq!(names(&d.file), [n("s1", 1, 1), n("s2", 2, 1)]);
        assert_eq!(d.members("api").len(), 1);
        assert!(d.members("grpc").is_empty());
        assert_eq!(compose(&d).len(), 3);
    }
}
