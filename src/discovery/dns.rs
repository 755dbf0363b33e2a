//! Asking DNS, on hickory-resolver: a `dns:` entry's A and AAAA records, or
//! an `srv:` entry's SRV records and their targets' addresses. Answers are
//! cached no longer than `lb.discovery.refresh`, so a changed record is seen
//! within one refresh.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};

use super::Target;
use crate::config::{DiscoveryConfig, DiscoverySource};

/// How long one name server may take to answer one query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A good answer: the targets, and until when DNS says it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub targets: Vec<Target>,
    pub valid_until: Instant,
}

pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// A resolver on `lb.discovery.resolvers`, or the system's when empty.
    pub fn new(conf: &DiscoveryConfig) -> Result<Self, String> {
        let mut builder = if conf.resolvers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("reading the system's resolver config: {e}"))?
        } else {
            let servers: Vec<NameServerConfig> = conf
                .resolvers
                .iter()
                .flat_map(|&a| {
                    [
                        NameServerConfig::new(a, Protocol::Udp),
                        NameServerConfig::new(a, Protocol::Tcp),
                    ]
                })
                .collect();
            let config =
                ResolverConfig::from_parts(None, vec![], NameServerConfigGroup::from(servers));
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        };
        let opts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.positive_max_ttl = Some(conf.refresh);
        opts.negative_max_ttl = Some(conf.refresh);
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = 1;
        Ok(Resolver {
            inner: builder.build(),
        })
    }

    /// Asks for `source`'s targets; `weight` is each A/AAAA member's. An
    /// error or an empty answer is an `Err` saying why.
    pub async fn resolve(&self, source: &DiscoverySource, weight: u32) -> Result<Answer, String> {
        match source {
            DiscoverySource::Dns { host, port } => {
                let lookup = self.inner.lookup_ip(host.as_str()).await.map_err(why)?;
                let targets = lookup
                    .iter()
                    .map(|ip| Target {
                        addr: SocketAddr::new(ip, *port),
                        weight,
                        priority: 0,
                    })
                    .collect();
                non_empty(targets, lookup.valid_until())
            }
            DiscoverySource::Srv { name } => {
                let lookup = self.inner.srv_lookup(name.as_str()).await.map_err(why)?;
                let mut valid_until = lookup.as_lookup().valid_until();
                let mut targets = Vec::new();
                let mut unresolved = Vec::new();
                for srv in lookup.iter() {
                    // "." as the target: the service is decidedly not there.
                    if srv.target().is_root() {
                        continue;
                    }
                    match self.inner.lookup_ip(srv.target().clone()).await {
                        Ok(ips) => {
                            valid_until = valid_until.min(ips.valid_until());
                            targets.extend(ips.iter().map(|ip| Target {
                                addr: SocketAddr::new(ip, srv.port()),
                                // RFC 2782: weight 0 is the smallest share.
                                weight: u32::from(srv.weight()).max(1),
                                priority: srv.priority(),
                            }))
                        }
                        Err(e) => unresolved.push(format!("{}: {}", srv.target(), why(e))),
                    }
                }
                if targets.is_empty() && !unresolved.is_empty() {
                    return Err(unresolved.join("; "));
                }
                non_empty(targets, valid_until)
            }
        }
    }
}

fn non_empty(targets: Vec<Target>, valid_until: Instant) -> Result<Answer, String> {
    if targets.is_empty() {
        Err("the answer holds no records".into())
    } else {
        Ok(Answer {
            targets,
            valid_until,
        })
    }
}

fn why(e: ResolveError) -> String {
    if e.is_no_records_found() {
        "no records (NXDOMAIN or an empty answer)".into()
    } else {
        e.to_string()
    }
}
