//! The `Via` header (RFC 9110 §7.6.3): every request sent upstream carries
//! this balancer's entry, under a pseudonym of its own (random per process,
//! so two balancers in a chain are not mistaken for one), and a request that
//! comes back carrying that entry has gone round in a loop: it is answered
//! 508 at once instead of being sent round again.

use http::{HeaderMap, HeaderValue, Version};
use pingora::http::RequestHeader;

/// This process's entry in `Via`.
#[derive(Debug, Clone)]
pub struct Via {
    pseudonym: String,
    /// The entry for a request that came in over HTTP/1.0, 1.1, 2 and 3,
    /// made once: the request path only clones one.
    entries: [HeaderValue; 4],
}

impl Default for Via {
    fn default() -> Self {
        let pseudonym = format!("hybrid-lb-{:08x}", rand::random::<u32>());
        let entries = ["1.0", "1.1", "2", "3"].map(|protocol| {
            HeaderValue::from_str(&format!("{protocol} {pseudonym}"))
                .expect("a pseudonym of hex digits is a header value")
        });
        Via { pseudonym, entries }
    }
}

impl Via {
    /// Whether a request's `Via` headers name this process: a loop.
    pub fn is_loop(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(http::header::VIA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|entry| entry.split_whitespace().nth(1))
            .any(|by| by == self.pseudonym)
    }

    /// Adds this process's entry after any the request carries, naming the
    /// protocol the request came in with.
    pub fn add(&self, req: &mut RequestHeader, version: Version) -> pingora::Result<()> {
        let entry = match version {
            Version::HTTP_10 => 0,
            Version::HTTP_2 => 2,
            Version::HTTP_3 => 3,
            _ => 1,
        };
        req.append_header(http::header::VIA, self.entries[entry].clone())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_own_entry_coming_back_is_a_loop_and_others_are_not() {
        let via = Via::default();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("via", "1.1 edge, 2 other-proxy (comment)")
            .unwrap();
        assert!(!via.is_loop(&req.headers), "other proxies in the chain");
        via.add(&mut req, Version::HTTP_2).unwrap();
        let values: Vec<&str> = req
            .headers
            .get_all("via")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(values.len(), 2);
        assert_eq!(values[1], format!("2 {}", via.pseudonym));
        assert!(via.is_loop(&req.headers));
        assert!(!Via::default().is_loop(&req.headers), "another instance");
    }
}
