//! Session affinity: sealed cookies and client-IP consistent hashing.
//!
//! **Cookie value**: `<upstream key>.<expiry>.<mac>`, all base64url / decimal.
//! The upstream key is HMAC(secret, "upstream:" + name) truncated to 8 bytes: a
//! stable id that does not reveal the upstream's name or address and is the same
//! on every instance with the same secret. The mac is HMAC-SHA256(secret, key +
//! "." + expiry), checked in constant time. A value that does not open (bad
//! shape, wrong mac, expired) is ignored, never an error.
//!
//! **Decision table** ([`decide`]):
//!
//! | cookie                     | upstream        | action              | result    |
//! |----------------------------|-----------------|---------------------|-----------|
//! | none                       | –               | balance, set cookie | `new`     |
//! | valid                      | eligible        | route there         | `hit`     |
//! | valid                      | not eligible    | balance, set cookie | `moved`   |
//! | invalid, expired or forged | –               | balance, set cookie | `invalid` |

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use pingora_ketama::{Bucket, Continuum};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Stable, opaque id of an upstream inside cookies.
pub type UpstreamKey = [u8; 8];

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("malformed sticky cookie")]
    Malformed,
    #[error("sticky cookie seal does not match")]
    BadSeal,
    #[error("sticky cookie expired")]
    Expired,
}

/// Seals and opens cookie values with one secret.
#[derive(Clone)]
pub struct Sealer {
    mac: HmacSha256,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer { .. }")
    }
}

impl Sealer {
    pub fn new(secret: &[u8]) -> Self {
        Sealer {
            mac: HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length"),
        }
    }

    /// The cookie id of the upstream called `name`.
    pub fn upstream_key(&self, name: &str) -> UpstreamKey {
        let mut mac = self.mac.clone();
        mac.update(b"upstream:");
        mac.update(name.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut key = [0u8; 8];
        key.copy_from_slice(&tag[..8]);
        key
    }

    fn tag(&self, key_b64: &str, expiry: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(key_b64.as_bytes());
        mac.update(b".");
        mac.update(expiry.as_bytes());
        mac
    }

    /// A cookie value naming `key`, valid until `expiry` (Unix seconds).
    pub fn seal(&self, key: &UpstreamKey, expiry: u64) -> String {
        let key_b64 = URL_SAFE_NO_PAD.encode(key);
        let expiry = expiry.to_string();
        let tag = self.tag(&key_b64, &expiry).finalize().into_bytes();
        format!("{key_b64}.{expiry}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Opens a cookie value at `now` (Unix seconds).
    pub fn open(&self, value: &str, now: u64) -> Result<UpstreamKey, CookieError> {
        let mut parts = value.split('.');
        let (Some(key_b64), Some(expiry), Some(tag_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CookieError::Malformed);
        };
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| CookieError::Malformed)?;
        self.tag(key_b64, expiry)
            .verify_slice(&tag)
            .map_err(|_| CookieError::BadSeal)?;
        let expiry: u64 = expiry.parse().map_err(|_| CookieError::Malformed)?;
        if expiry <= now {
            return Err(CookieError::Expired);
        }
        let key = URL_SAFE_NO_PAD
            .decode(key_b64)
            .map_err(|_| CookieError::Malformed)?;
        key.try_into().map_err(|_| CookieError::Malformed)
    }
}

/// A cookie value that opened, remembered for the connection that sent it:
/// a keep-alive connection presents the same value with every request, and
/// its seal need not be checked again (its expiry still is).
#[derive(Debug, Clone)]
pub struct OpenedCookie {
    value: String,
    key: UpstreamKey,
    expiry: u64,
}

impl Sealer {
    /// [`Sealer::open`], remembering a value that opens in `memo` and
    /// answering from it when the same value comes again.
    pub fn open_remembered(
        &self,
        value: &str,
        now: u64,
        memo: &mut Option<OpenedCookie>,
    ) -> Result<UpstreamKey, CookieError> {
        if let Some(m) = memo.as_ref().filter(|m| m.value == value) {
            return if m.expiry > now {
                Ok(m.key)
            } else {
                Err(CookieError::Expired)
            };
        }
        let key = self.open(value, now)?;
        let expiry = value
            .split('.')
            .nth(1)
            .and_then(|e| e.parse().ok())
            .ok_or(CookieError::Malformed)?;
        *memo = Some(OpenedCookie {
            value: value.to_string(),
            key,
            expiry,
        });
        Ok(key)
    }
}

/// The value of cookie `name` among a request's `Cookie` header values.
pub fn find_cookie<'a>(headers: impl Iterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    headers
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Outcome counted in `hlb_sticky_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyResult {
    Hit,
    New,
    Moved,
    Invalid,
}

impl StickyResult {
    pub fn as_str(self) -> &'static str {
        match self {
            StickyResult::Hit => "hit",
            StickyResult::New => "new",
            StickyResult::Moved => "moved",
            StickyResult::Invalid => "invalid",
        }
    }

    pub const ALL: [StickyResult; 4] = [
        StickyResult::Hit,
        StickyResult::New,
        StickyResult::Moved,
        StickyResult::Invalid,
    ];
}

/// What to do with a request, given its cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send to this upstream id; no new cookie.
    Route(usize),
    /// Balance normally and set a cookie for the upstream chosen.
    Balance(StickyResult),
}

/// The cookie decision table. `cookie` is what opening the request's cookie gave
/// (None: no cookie); `lookup` maps a key to an upstream id; `eligible` says
/// whether that upstream may take the request (it may take a breaker probe, so it
/// is asked at most once).
pub fn decide(
    cookie: Option<Result<UpstreamKey, CookieError>>,
    lookup: impl Fn(&UpstreamKey) -> Option<usize>,
    eligible: impl FnOnce(usize) -> bool,
) -> Decision {
    match cookie {
        None => Decision::Balance(StickyResult::New),
        Some(Err(_)) => Decision::Balance(StickyResult::Invalid),
        Some(Ok(key)) => match lookup(&key) {
            // A key for an upstream this instance does not have: treat as moved.
            None => Decision::Balance(StickyResult::Moved),
            Some(id) if eligible(id) => Decision::Route(id),
            Some(_) => Decision::Balance(StickyResult::Moved),
        },
    }
}

/// Client-IP mode: a Ketama ring over the upstreams (by address and weight), the
/// same on every instance with the same upstream list.
pub struct IpHash {
    ring: Continuum,
    by_addr: HashMap<SocketAddr, usize>,
    count: usize,
}

impl std::fmt::Debug for IpHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IpHash {{ {} upstreams }}", self.count)
    }
}

impl IpHash {
    /// `upstreams`: (address, weight) by id.
    pub fn new(upstreams: &[(SocketAddr, u32)]) -> Self {
        let buckets: Vec<Bucket> = upstreams
            .iter()
            .map(|(a, w)| Bucket::new(*a, (*w).max(1)))
            .collect();
        let mut by_addr = HashMap::new();
        for (id, (a, _)) in upstreams.iter().enumerate() {
            by_addr.entry(*a).or_insert(id);
        }
        IpHash {
            ring: Continuum::new(&buckets),
            by_addr,
            count: upstreams.len(),
        }
    }

    /// Walks the ring from `ip`'s point: returns the first upstream `accept`
    /// takes, and whether it is the key's own (first) upstream.
    pub fn select(
        &self,
        ip: IpAddr,
        mut accept: impl FnMut(usize) -> bool,
    ) -> Option<(usize, bool)> {
        let key = ip.to_string();
        let mut seen = vec![false; self.count];
        let mut distinct = 0;
        let mut first = true;
        for addr in self.ring.node_iter(key.as_bytes()) {
            let Some(&id) = self.by_addr.get(addr) else {
                continue;
            };
            if seen[id] {
                continue;
            }
            if accept(id) {
                return Some((id, first));
            }
            first = false;
            seen[id] = true;
            distinct += 1;
            if distinct == self.by_addr.len() {
                return None;
            }
        }
        None
    }
}

/// The client address to key on: the socket's peer, unless that peer is a
/// trusted proxy, in which case the right-most `X-Forwarded-For` entry that is
/// not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return peer;
    }
    let chain: Vec<IpAddr> = forwarded_for
        .iter()
        .flat_map(|h| h.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_mapped_address_is_the_ipv4_client() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_ip(mapped, &[], &[]), v4);
        let proxy: ipnet::IpNet = "10.0.0.0/8".parse().unwrap();
        let behind = client_ip(
            "::ffff:10.0.0.1".parse().unwrap(),
            &["::ffff:192.0.2.7"],
            &[proxy],
        );
        assert_eq!(
            behind, v4,
            "a mapped trusted proxy is trusted, its client mapped too"
        );
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn seal_open_round_trip() {
        let s = Sealer::new(b"a secret of sixteen+ bytes");
        let key = s.upstream_key("s1");
        let v = s.seal(&key, NOW + 60);
        assert_eq!(s.open(&v, NOW), Ok(key));
        assert!(!v.contains("s1"), "the name must not show: {v}");
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        let a = Sealer::new(b"0123456789abcdef");
        let b = Sealer::new(b"0123456789abcdef");
        assert_eq!(a.upstream_key("s1"), b.upstream_key("s1"));
        assert_ne!(a.upstream_key("s1"), a.upstream_key("s2"));
    }

    #[test]
    fn tampering_with_any_byte_is_refused() {
        let s = Sealer::new(b"0123456789abcdef");
        let v = s.seal(&s.upstream_key("s1"), NOW + 60);
        let bytes = v.as_bytes();
        for i in 0..bytes.len() {
            for replacement in [b'A', b'0', b'.', b'_'] {
                if bytes[i] == replacement {
                    continue;
                }
                let mut forged = bytes.to_vec();
                forged[i] = replacement;
                let forged = String::from_utf8(forged).unwrap();
                assert!(s.open(&forged, NOW).is_err(), "accepted {forged}");
            }
        }
        assert!(s.open(&format!("{v}x"), NOW).is_err());
        assert!(s.open(&v[..v.len() - 1], NOW).is_err());
    }

    #[test]
    fn expired_and_foreign_cookies_are_refused() {
        let s = Sealer::new(b"0123456789abcdef");
        let v = s.seal(&s.upstream_key("s1"), NOW);
        assert_eq!(s.open(&v, NOW), Err(CookieError::Expired));
        let other = Sealer::new(b"fedcba9876543210");
        let v = s.seal(&s.upstream_key("s1"), NOW + 60);
        assert_eq!(other.open(&v, NOW), Err(CookieError::BadSeal));
        assert_eq!(s.open("", NOW), Err(CookieError::Malformed));
        assert_eq!(s.open("a.b", NOW), Err(CookieError::Malformed));
    }

    #[test]
    fn a_remembered_cookie_is_not_rechecked_but_still_expires() {
        let s = Sealer::new(b"0123456789abcdef");
        let key = s.upstream_key("s1");
        let v = s.seal(&key, NOW + 60);
        let mut memo = None;
        assert_eq!(s.open_remembered(&v, NOW, &mut memo), Ok(key));
        assert!(memo.is_some());
        // Answered from the memo, even by a sealer that could not open it...
        let other = Sealer::new(b"fedcba9876543210");
        assert_eq!(other.open_remembered(&v, NOW, &mut memo), Ok(key));
        // ... but only for the very same value, and only until it expires.
        let forged = v.replace('.', ".1");
        assert!(s.open_remembered(&forged, NOW, &mut memo).is_err());
        assert_eq!(
            s.open_remembered(&v, NOW + 60, &mut memo),
            Err(CookieError::Expired)
        );
        // A value that does not open is not remembered.
        let mut empty = None;
        assert!(s.open_remembered("a.b.c", NOW, &mut empty).is_err());
        assert!(empty.is_none());
    }

    #[test]
    fn decision_table() {
        let key = [1u8; 8];
        let lookup = |k: &UpstreamKey| (*k == key).then_some(3);
        assert_eq!(
            decide(None, lookup, |_| true),
            Decision::Balance(StickyResult::New)
        );
        assert_eq!(decide(Some(Ok(key)), lookup, |_| true), Decision::Route(3));
        assert_eq!(
            decide(Some(Ok(key)), lookup, |_| false),
            Decision::Balance(StickyResult::Moved)
        );
        assert_eq!(
            decide(Some(Ok([2u8; 8])), lookup, |_| true),
            Decision::Balance(StickyResult::Moved)
        );
        assert_eq!(
            decide(Some(Err(CookieError::BadSeal)), lookup, |_| true),
            Decision::Balance(StickyResult::Invalid)
        );
    }

    #[test]
    fn finds_the_cookie_among_others() {
        let headers = ["a=1; HLB_STICKY=xyz.1.abc", "b=2"];
        assert_eq!(
            find_cookie(headers.iter().copied(), "HLB_STICKY"),
            Some("xyz.1.abc")
        );
        assert_eq!(find_cookie(headers.iter().copied(), "HLB"), None);
    }

    fn ring(n: usize) -> Vec<(SocketAddr, u32)> {
        (0..n)
            .map(|i| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 80)), 1))
            .collect()
    }

    #[test]
    fn removing_one_of_n_moves_only_its_keys() {
        let n = 5;
        let hash = IpHash::new(&ring(n));
        let ips: Vec<IpAddr> = (0..5000u32)
            .map(|i| IpAddr::from([100, (i >> 16) as u8, (i >> 8) as u8, i as u8]))
            .collect();
        let before: Vec<usize> = ips
            .iter()
            .map(|ip| hash.select(*ip, |_| true).unwrap().0)
            .collect();
        let gone = 2;
        let mut moved = 0;
        for (ip, b) in ips.iter().zip(&before) {
            let (after, own) = hash.select(*ip, |id| id != gone).unwrap();
            if *b == gone {
                assert!(!own);
                moved += 1;
            } else {
                assert_eq!(after, *b, "a key of a remaining upstream moved");
                assert!(own);
            }
        }
        // About 1/n of the keys were on the removed upstream.
        let share = moved as f64 / ips.len() as f64;
        assert!((0.12..0.28).contains(&share), "{share}");
    }

    #[test]
    fn nothing_acceptable_gives_none() {
        let hash = IpHash::new(&ring(3));
        assert_eq!(hash.select("1.2.3.4".parse().unwrap(), |_| false), None);
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(peer, &["198.51.100.1"], &trusted), peer);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &["198.51.100.1, 10.9.9.9"], &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &[], &trusted), proxy);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Changing any byte of a sealed value to anything else, or cutting it,
        /// never yields a cookie that opens.
        #[test]
        fn a_modified_value_never_opens(
            name in "[a-z0-9]{1,12}",
            pos in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let s = Sealer::new(b"property-test-secret-0123456789");
            let v = s.seal(&s.upstream_key(&name), 1_900_000_000);
            prop_assert!(s.open(&v, 1_800_000_000).is_ok());
            let mut bytes = v.clone().into_bytes();
            let i = pos.index(bytes.len());
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            if let Ok(forged) = String::from_utf8(bytes) {
                prop_assert!(s.open(&forged, 1_800_000_000).is_err(), "opened {}", forged);
            }
            let shorter = &v[..cut.index(v.len())];
            prop_assert!(s.open(shorter, 1_800_000_000).is_err());
        }
    }
}
