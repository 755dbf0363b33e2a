//! A named pool takes `lb`'s policy keys where it gives none, key by key: a
//! pool's `health_check: { path: /status }` keeps `lb`'s interval and
//! thresholds. Done on the YAML value before it is read, so that every pool
//! is read and checked whole, as `lb` itself is.

use serde_yaml::{Mapping, Value};

use super::error::Problem;
use super::schema::POLICY_KEYS;

/// Merges `lb`'s policy keys into each of `lb.pools`' entries.
pub(super) fn inherit(root: &mut Value) {
    let Some(lb) = root.get_mut("lb").and_then(Value::as_mapping_mut) else {
        return;
    };
    let inherited: Mapping = POLICY_KEYS
        .iter()
        .filter_map(|k| lb.get(*k).map(|v| (Value::from(*k), v.clone())))
        .collect();
    let Some(pools) = lb.get_mut("pools").and_then(Value::as_mapping_mut) else {
        return;
    };
    for (_, pool) in pools.iter_mut() {
        if let Some(pool) = pool.as_mapping_mut() {
            for (key, value) in &inherited {
                merge_into(pool, key, value);
            }
        }
    }
}

/// `base` under `key` unless `target` gives its own; maps are merged
/// field by field, anything else is the target's own when given.
fn merge_into(target: &mut Mapping, key: &Value, base: &Value) {
    match (target.get_mut(key), base) {
        (None, _) => {
            target.insert(key.clone(), base.clone());
        }
        (Some(Value::Mapping(own)), Value::Mapping(base)) => {
            for (k, v) in base {
                merge_into(own, k, v);
            }
        }
        (Some(_), _) => {}
    }
}

/// Drops the problems a pool has only because it inherited a value `lb`
/// already has the same problem with: each is reported once, at `lb`'s key.
pub(super) fn once(problems: &mut Vec<Problem>) {
    let lb: std::collections::HashSet<(String, String)> = problems
        .iter()
        .filter(|p| !p.key.starts_with("lb.pools."))
        .map(|p| (p.key.clone(), p.message.clone()))
        .collect();
    problems.retain(|p| {
        let Some(rest) = p.key.strip_prefix("lb.pools.") else {
            return true;
        };
        let own = match rest.split_once('.') {
            Some((_, key)) => format!("lb.{key}"),
            None => return true,
        };
        !lb.contains(&(own, p.message.clone()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_keeps_its_own_keys_and_takes_the_rest_from_lb() {
        let mut v: Value = serde_yaml::from_str(
            "lb:\n  algorithm: p2c\n  retries: 2\n  health_check: { path: /h, interval: 2s }\n  \
             upstreams: [{ name: a, addr: '127.0.0.1:1' }]\n  pools:\n    web:\n      retries: 0\n      \
             health_check: { path: /status }\n      upstreams: [{ name: w, addr: '127.0.0.1:2' }]\n",
        )
        .unwrap();
        inherit(&mut v);
        let web = &v["lb"]["pools"]["web"];
        assert_eq!(web["algorithm"], Value::from("p2c"));
        assert_eq!(web["retries"], Value::from(0));
        assert_eq!(web["health_check"]["path"], Value::from("/status"));
        assert_eq!(web["health_check"]["interval"], Value::from("2s"));
        // Upstreams are never inherited.
        assert_eq!(web["upstreams"].as_sequence().unwrap().len(), 1);
        assert_eq!(web["upstreams"][0]["name"], Value::from("w"));
    }

    #[test]
    fn an_inherited_problem_is_reported_once_at_lbs_key() {
        let p = |key: &str, message: &str| Problem {
            key: key.into(),
            message: message.into(),
            line: None,
        };
        let mut problems = vec![
            p("lb.health_check.interval", "bad"),
            p("lb.pools.web.health_check.interval", "bad"),
            p("lb.pools.web.health_check.timeout", "bad"),
        ];
        once(&mut problems);
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[1].key, "lb.pools.web.health_check.timeout");
    }
}
