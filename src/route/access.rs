//! A route's access control by client address (`access.allow`, `access.deny`;
//! `access.basic_auth` is `basic_auth`'s):
//! the client is the real one, after trusted proxies and the PROXY protocol.
//! A denied address is refused even when allowed; with `allow` given, an
//! address not in it is refused; a client whose address is unknown is refused.

use std::net::IpAddr;

use crate::config::AccessConfig;

/// Whether `client` may use a route with `access`.
pub fn permits(access: &AccessConfig, client: Option<IpAddr>) -> bool {
    let Some(ip) = client.map(|ip| ip.to_canonical()) else {
        return false;
    };
    let listed = |nets: &[ipnet::IpNet]| nets.iter().any(|n| n.contains(&ip));
    !listed(&access.deny) && (access.allow.is_empty() || listed(&access.allow))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(allow: &[&str], deny: &[&str]) -> AccessConfig {
        let nets = |v: &[&str]| v.iter().map(|n| n.parse().unwrap()).collect();
        AccessConfig {
            allow: nets(allow),
            deny: nets(deny),
            ..AccessConfig::default()
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn deny_wins_over_allow_and_allow_refuses_the_rest() {
        let a = access(&["10.0.0.0/8"], &["10.9.0.0/16"]);
        assert!(permits(&a, ip("10.1.2.3")));
        assert!(!permits(&a, ip("10.9.0.1")), "denied though allowed");
        assert!(!permits(&a, ip("192.0.2.1")), "not allowed");
        assert!(!permits(&a, None), "unknown client");
        let only_deny = access(&[], &["192.0.2.0/24"]);
        assert!(permits(&only_deny, ip("198.51.100.1")));
        assert!(!permits(&only_deny, ip("192.0.2.9")));
    }

    #[test]
    fn an_ipv4_client_seen_over_ipv6_is_the_ipv4_one() {
        let a = access(&["127.0.0.0/8"], &[]);
        assert!(permits(&a, ip("::ffff:127.0.0.1")));
        assert!(!permits(&access(&["::/0"], &[]), ip("::ffff:127.0.0.1")));
    }
}
