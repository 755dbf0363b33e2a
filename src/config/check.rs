//! Reads one value of the raw file into its validated form, recording a problem
//! (with the key's line) when it does not fit.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::lines::LineIndex;
use super::schema::RawSize;
use super::Problem;

/// Collects problems with their lines while the raw file is checked.
pub(super) struct Checker<'a> {
    pub index: &'a LineIndex,
    pub problems: Vec<Problem>,
}

impl Checker<'_> {
    pub fn fail(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_string(),
            message: message.into(),
            line: self.index.line_of(key),
        });
    }

    /// Two keys that go together (a user and its password, a certificate
    /// and its key): both, neither, or a problem on the one missing.
    pub fn pair<'v>(
        &mut self,
        (a_key, a): (&str, &'v Option<String>),
        (b_key, b): (&str, &'v Option<String>),
    ) -> Result<Option<(&'v String, &'v String)>, ()> {
        match (a, b) {
            (Some(a), Some(b)) => Ok(Some((a, b))),
            (None, None) => Ok(None),
            (Some(_), None) => {
                self.fail(b_key, format!("needed with {a_key}"));
                Err(())
            }
            (None, Some(_)) => {
                self.fail(a_key, format!("needed with {b_key}"));
                Err(())
            }
        }
    }

    pub fn duration(&mut self, key: &str, text: &str) -> Duration {
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() => {
                self.fail(key, "must be greater than zero");
                Duration::ZERO
            }
            Ok(d) => d,
            Err(e) => {
                self.fail(
                    key,
                    format!("`{text}` is not a duration ({e}); write e.g. 500ms, 5s, 1h"),
                );
                Duration::ZERO
            }
        }
    }

    /// A duration where zero means off.
    /// The CIDRs (or single addresses) listed under `key`.
    pub fn cidrs(&mut self, key: &str, raw: &[String]) -> Vec<ipnet::IpNet> {
        let mut nets = Vec::new();
        for (i, p) in raw.iter().enumerate() {
            let parsed = p
                .parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => nets.push(net),
                Err(_) => self.fail(
                    &format!("{key}[{i}]"),
                    format!("`{p}` is not a CIDR or an IP address, e.g. 10.0.0.0/8"),
                ),
            }
        }
        nets
    }

    pub fn duration_or_zero(&mut self, key: &str, text: &str) -> Duration {
        match humantime::parse_duration(text.trim()) {
            Ok(d) => d,
            Err(_) if text.trim() == "0" => Duration::ZERO,
            Err(e) => {
                self.fail(
                    key,
                    format!("`{text}` is not a duration ({e}); write e.g. 0s (off), 30s, 2m"),
                );
                Duration::ZERO
            }
        }
    }

    /// A duration that must be a whole number of seconds (for timers that count
    /// seconds); a fraction is refused rather than cut.
    pub fn whole_seconds(&mut self, key: &str, text: &str) -> Duration {
        let d = self.duration(key, text);
        if d.subsec_nanos() != 0 {
            self.fail(
                key,
                format!("`{text}` is not a whole number of seconds; write e.g. 1s, 10s"),
            );
        }
        d
    }

    pub fn addr(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Some(a);
        }
        // host:port with a name: resolved once, at load time.
        let named = text
            .rsplit_once(':')
            .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        match text.to_socket_addrs().map(|mut it| it.next()) {
            Ok(Some(a)) if named.is_some() => Some(a),
            Err(e) if named.is_some() => {
                let host = named.map_or("", |(h, _)| h);
                self.fail(
                    key,
                    format!(
                        "`{host}` did not resolve ({e}); write a name this machine resolves, \
                         or an IP address"
                    ),
                );
                None
            }
            _ => {
                self.fail(
                    key,
                    format!("`{text}` is not an address; write host:port, e.g. 127.0.0.1:9001"),
                );
                None
            }
        }
    }

    pub fn size(&mut self, key: &str, raw: &RawSize) -> u64 {
        let parsed = match raw {
            RawSize::Bytes(n) if *n > 0 => Ok(*n as u64),
            RawSize::Bytes(_) => Err("must be greater than zero".to_string()),
            RawSize::Text(t) => t
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|_| format!("`{t}` is not a size; write bytes or e.g. 32KiB, 10MB")),
        };
        match parsed {
            Ok(0) => {
                self.fail(key, "must be greater than zero");
                0
            }
            Ok(n) => n,
            Err(e) => {
                self.fail(key, e);
                0
            }
        }
    }

    pub fn at_least(&mut self, key: &str, value: i64, min: i64) -> i64 {
        if value < min {
            self.fail(key, format!("must be at least {min}"));
            min
        } else {
            value
        }
    }
}
