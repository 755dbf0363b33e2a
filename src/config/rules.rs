//! What an upstream's name and address may be, checked alike whatever names
//! it: the config file, etcd, the admin API. Names go into admin URLs,
//! metric labels and cookies; an address must be one a connection can be
//! made to.

use std::net::{IpAddr, SocketAddr};

/// The longest upstream name.
pub const MAX_NAME: usize = 64;

/// Whether `name` may name an upstream: 1 to 64 letters, digits, `-`, `_`
/// or `.`, and not `.` or `..` (it is a path segment of the admin API).
pub fn upstream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("must be 1 to {MAX_NAME} characters"));
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
    {
        return Err(format!(
            "`{name}` may hold only letters, digits, `-`, `_` and `.`"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a name"));
    }
    Ok(())
}

/// Whether `addr` is one an upstream can be reached at: a port, and an
/// address of one host (not 0.0.0.0 or ::, not a broadcast or multicast
/// address).
pub fn upstream_addr(addr: SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Err(format!("`{addr}`: port 0 is not a port to connect to"));
    }
    let ip = addr.ip().to_canonical();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(format!("`{}` is not the address of one host", addr.ip()));
    }
    Ok(())
}

/// Whether `addr` is one of this balancer's own listeners (`own`): an
/// upstream there would send every request round in a loop. A listener on
/// 0.0.0.0 or :: takes the loopback addresses and the unspecified one for
/// its port.
pub fn is_own(addr: SocketAddr, own: &[SocketAddr]) -> bool {
    let ip = addr.ip().to_canonical();
    own.iter().any(|l| {
        l.port() == addr.port()
            && (l.ip().to_canonical() == ip
                || (l.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_are_checked() {
        for ok in ["s1", "api.v2", "a_b-c", &"x".repeat(64)] {
            assert!(upstream_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "a@b", &"x".repeat(65), "é"] {
            assert!(upstream_name(bad).is_err(), "{bad}");
        }
        for ok in ["127.0.0.1:80", "10.0.0.7:8080", "[::1]:443"] {
            assert!(upstream_addr(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1:0",
            "0.0.0.0:80",
            "255.255.255.255:80",
            "224.0.0.1:80",
            "[::]:80",
            "[::ffff:0.0.0.0]:80",
        ] {
            assert!(upstream_addr(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_upstream_at_our_own_listener_is_ours() {
        let own: Vec<SocketAddr> = vec![
            "0.0.0.0:8080".parse().unwrap(),
            "127.0.0.1:5000".parse().unwrap(),
        ];
        let is = |a: &str| is_own(a.parse().unwrap(), &own);
        assert!(is("127.0.0.1:8080") && is("127.0.0.9:8080") && is("[::ffff:127.0.0.1]:8080"));
        assert!(is("127.0.0.1:5000"));
        assert!(!is("127.0.0.2:5000") && !is("127.0.0.1:9000") && !is("10.0.0.7:8080"));
    }
}
