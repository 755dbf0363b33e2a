//! Choosing the upstream for one try: stickiness first (a sealed cookie, or
//! the client address on the ring), else the pool's pick over its published
//! set, passing over upstreams already tried. A breaker probe that is due is
//! claimed after the choice, never during it. With concurrency limits, the
//! choice may be that every upstream it could go to is full (the request
//! then waits in the pool's queue). Also the client address as the request
//! path sees it, and the peer a try connects to.

use std::net::IpAddr;
use std::time::Instant;

use pingora::prelude::*;

use crate::forwarding::Client;
use crate::pool::Sticky;
use crate::pool::{self, Pick, Table};
use crate::sticky::{self, Decision, StickyResult};
use crate::upstream::Upstream;

use super::{Proxy, RequestCtx};

/// The choice for one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Choice {
    Picked(Pick),
    /// Every upstream it may go to is at its concurrency limit.
    Full,
    /// No upstream may be picked at all.
    Nothing,
}

impl Proxy {
    /// The choice for the next try over `table`.
    pub(super) fn pick(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        table: &Table,
        now: Instant,
    ) -> Choice {
        let first = ctx.retry.is_first();
        if first {
            if let Some(choice) = self.sticky_pick(session, ctx, table, now) {
                return choice;
            }
        } else if std::mem::take(&mut ctx.sticky_routed) {
            // The sticky upstream failed: the session moves.
            ctx.set_cookie = true;
            self.state.count_sticky(StickyResult::Moved);
            ctx.info.sticky = Some(StickyResult::Moved);
        }
        let retry = &ctx.retry;
        let pool = &self.state.pools[ctx.pool];
        let tried = |i| retry.has_tried(table, i);
        match pool.pick(table, tried, now) {
            Some(pick) => Choice::Picked(pick),
            None if pool.full(table, tried) => Choice::Full,
            None => Choice::Nothing,
        }
    }

    /// The sticky choice for a request's first try, if stickiness names an
    /// upstream that may be picked (and whose due probe, if any, this
    /// request claims), or `Full` if that upstream is at its concurrency
    /// limit (the session waits for it); otherwise None, and normal
    /// balancing follows.
    fn sticky_pick(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        table: &Table,
        now: Instant,
    ) -> Option<Choice> {
        let state = &self.state;
        let policy = &state.pools[ctx.pool].policy;
        let take = |index: usize| pool::claim(table, index, now).map(|probe| Pick { index, probe });
        match &policy.sticky {
            Sticky::Off => None,
            Sticky::Cookie(sealer) => {
                let headers = session.req_header().headers.get_all("cookie");
                let value = sticky::find_cookie(
                    headers.iter().filter_map(|v| v.to_str().ok()),
                    &policy.config.sticky.cookie_name,
                );
                let unix = crate::events::unix_time() as u64;
                let opened = value.map(|v| sealer.open_remembered(v, unix, &mut ctx.conn.cookie));
                let decision = sticky::decide(
                    opened,
                    |k| table.members.by_sticky_key(k),
                    |i| table.pickable(i),
                );
                let (pick, result) = match decision {
                    Decision::Route(i) if table.upstreams()[i].at_limit() => {
                        return Some(Choice::Full)
                    }
                    Decision::Route(i) => match take(i) {
                        Some(pick) => (Some(pick), StickyResult::Hit),
                        // Its probe went to another request: balance.
                        None => (None, StickyResult::Moved),
                    },
                    Decision::Balance(result) => (None, result),
                };
                state.count_sticky(result);
                ctx.info.sticky = Some(result);
                ctx.sticky_routed = pick.is_some();
                ctx.set_cookie = pick.is_none();
                pick.map(Choice::Picked)
            }
            Sticky::Ip => {
                let ring = table.members.ring.as_ref()?;
                let ip = self.client_ip(session, ctx)?;
                // Nothing pickable on the ring: nothing moved, nothing counted.
                let (i, own) = ring.select(ip, |i| table.pickable(i))?;
                if table.upstreams()[i].at_limit() {
                    return Some(Choice::Full);
                }
                let pick = take(i)?;
                let result = if own {
                    StickyResult::Hit
                } else {
                    StickyResult::Moved
                };
                state.count_sticky(result);
                ctx.info.sticky = Some(result);
                Some(Choice::Picked(pick))
            }
        }
    }

    /// The client at the other end of this request's connection.
    pub(super) fn client<'c>(
        &self,
        session: &Session,
        ctx: &'c mut RequestCtx,
    ) -> Option<&'c Client> {
        if ctx.conn.client.is_none() {
            // `::ffff:a.b.c.d` is the IPv4 client a.b.c.d wherever it is keyed.
            let ip = session
                .client_addr()
                .and_then(|a| a.as_inet())?
                .ip()
                .to_canonical();
            ctx.conn.client = Some(Client::new(ip, &self.state.config.lb.trusted_proxies));
        }
        ctx.conn.client.as_ref()
    }

    /// The client's address for IP stickiness and rate limits: the
    /// connection's peer, worked out once per connection; `X-Forwarded-For`
    /// is read only when that peer is a trusted proxy.
    pub(super) fn client_ip(&self, session: &Session, ctx: &mut RequestCtx) -> Option<IpAddr> {
        let client = self.client(session, ctx)?;
        if !client.trusted {
            return Some(client.ip);
        }
        let xff: Vec<&str> = session
            .req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Some(sticky::client_ip(
            client.ip,
            &xff,
            &self.state.config.lb.trusted_proxies,
        ))
    }

    /// The peer for `u`, with the route's (else the pool's) timeouts. Pingora keeps one read
    /// timeout for the life of the upstream connection; an upgrade request's
    /// is the larger of `timeouts.read` and `limits.keepalive_timeout`: it
    /// bounds the wait for the 101 (a hung upstream cannot hold the request,
    /// and its failure counts), and a tunnel may idle that long.
    pub(super) fn peer(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        u: &Upstream,
        upgrade: bool,
    ) -> Box<HttpPeer> {
        let (connect, read) = self.timeouts(ctx);
        let mut peer = crate::peer::peer(u.addr, &u.protocol);
        if let Some(version) = self.pool(ctx).config().send_proxy {
            let inet = |a: Option<&pingora::protocols::l4::socket::SocketAddr>| {
                a.and_then(|a| a.as_inet()).copied()
            };
            let addrs = inet(session.client_addr()).zip(inet(session.server_addr()));
            crate::send_proxy::SendProxy::apply(&mut peer, version, addrs, connect);
        }
        peer.options.connection_timeout = Some(connect);
        peer.options.read_timeout = Some(if upgrade {
            read.max(self.state.config.lb.limits.keepalive_timeout)
        } else {
            read
        });
        Box::new(peer)
    }
}
