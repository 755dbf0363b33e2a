//! The admin API: drain, enable and weigh upstreams, and add or remove them at
//! run time, in the pool `default` (`/api/upstreams/…`) or a named one
//! (`/api/pools/{pool}/upstreams/…`). Every action needs `Authorization:
//! Bearer <dashboard.admin_token>` and is an event. Changes to the set go through the table's `replace`, so
//! upstreams that stay keep their state; they last until the next reload.
//! With `lb.etcd` each change is written to etcd instead, and every instance,
//! this one included, applies it from its watch; the answer waits (briefly)
//! until this instance has.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use log::info;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::App;
use crate::config::DEFAULT_POOL;
use crate::config::{rules, UpstreamConfig};
use crate::discovery::etcd::view::Override;
use crate::discovery::etcd::writer::WriteError;
use crate::discovery::etcd::Fleet;
use crate::pool::{EditError, Pool};
use crate::state::SharedState;
use crate::upstream::Upstream;

/// Weights the admin API accepts, as the config does.
const WEIGHTS: std::ops::RangeInclusive<i64> = 1..=10_000;

/// Why an admin call is refused.
#[derive(Debug)]
pub enum AdminError {
    /// No `dashboard.admin_token` configured: admin is disabled.
    Disabled,
    Unauthorized,
    UnknownPool(String),
    UnknownUpstream(String),
    TakenName(String),
    BadBody(String),
    /// etcd did not confirm the change (it may or may not have been made).
    Etcd(String),
    /// Removing an upstream etcd did not supply.
    NotFromEtcd(String),
    /// The pool holds `lb.limits.max_upstreams` already.
    Full(usize),
}

impl From<EditError<AdminError>> for AdminError {
    fn from(e: EditError<AdminError>) -> Self {
        match e {
            EditError::Refused(e) => e,
            EditError::OverCap { cap, .. } => AdminError::Full(cap),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (code, text) = match self {
            AdminError::Disabled => (
                StatusCode::FORBIDDEN,
                "admin actions are disabled: set dashboard.admin_token in the config".into(),
            ),
            AdminError::Unauthorized => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "a valid admin token is required\n",
                )
                    .into_response()
            }
            AdminError::UnknownPool(name) => {
                (StatusCode::NOT_FOUND, format!("no pool named `{name}`"))
            }
            AdminError::UnknownUpstream(name) => {
                (StatusCode::NOT_FOUND, format!("no upstream named `{name}`"))
            }
            AdminError::TakenName(name) => (
                StatusCode::CONFLICT,
                format!("an upstream named `{name}` exists already"),
            ),
            AdminError::BadBody(why) => (StatusCode::BAD_REQUEST, why),
            AdminError::Full(cap) => (
                StatusCode::CONFLICT,
                format!("the pool holds lb.limits.max_upstreams ({cap}) upstreams already"),
            ),
            AdminError::Etcd(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("etcd did not confirm the change ({why}); it may not have been made"),
            ),
            AdminError::NotFromEtcd(name) => (
                StatusCode::CONFLICT,
                format!("`{name}` comes from the config file or DNS, not etcd; remove it there"),
            ),
        };
        (code, format!("{text}\n")).into_response()
    }
}

/// Checks `Authorization: Bearer <token>` in constant time.
fn authorize(state: &SharedState, headers: &HeaderMap) -> Result<(), AdminError> {
    let token = state
        .config
        .dashboard
        .admin_token
        .as_deref()
        .ok_or(AdminError::Disabled)?;
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim());
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(AdminError::Unauthorized)
    }
}

/// How long a wrong or missing token waits for its 401, so tokens cannot
/// be tried at speed.
const WRONG_TOKEN_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// The answer to a refused admin request; a 401 only after a pause.
async fn refuse(e: AdminError) -> Response {
    if matches!(e, AdminError::Unauthorized) {
        tokio::time::sleep(WRONG_TOKEN_DELAY).await;
    }
    e.into_response()
}

/// The pool and upstream an admin path names: `{pool}` (else `default`)
/// and `{name}`.
struct Named {
    pool: Arc<Pool>,
    name: String,
}

impl Named {
    fn of(app: &App, path: &HashMap<String, String>) -> Result<Named, AdminError> {
        let pool = path.get("pool").map_or(DEFAULT_POOL, String::as_str);
        let pool = app
            .state
            .pool_named(pool)
            .cloned()
            .ok_or_else(|| AdminError::UnknownPool(pool.to_string()))?;
        let name = path.get("name").cloned().unwrap_or_default();
        Ok(Named { pool, name })
    }

    /// The upstream it names, in the table in force.
    fn upstream(&self) -> Option<Arc<Upstream>> {
        self.pool.load().members.get(&self.name).cloned()
    }

    /// The fleet, which shares every pool's changes.
    fn fleet<'a>(&self, app: &'a App) -> Option<&'a Arc<Fleet>> {
        app.state.fleet.as_ref()
    }
}

/// Authorizes and finds the pool and the upstream.
fn target(
    app: &App,
    headers: &HeaderMap,
    path: &HashMap<String, String>,
) -> Result<(Named, Arc<Upstream>), AdminError> {
    authorize(&app.state, headers)?;
    let named = Named::of(app, path)?;
    let u = named
        .upstream()
        .ok_or_else(|| AdminError::UnknownUpstream(named.name.clone()))?;
    Ok((named, u))
}

/// The upstream's row of a fresh snapshot, if it is in its pool's table.
fn row(app: &App, named: &Named) -> Option<super::snapshot::UpstreamSnapshot> {
    let snapshot = app.hub.snapshot(&app.state);
    snapshot
        .pools
        .into_iter()
        .find(|p| p.name == named.pool.name())
        .map_or(snapshot.upstreams, |p| p.upstreams)
        .into_iter()
        .find(|u| u.name == named.name)
}

/// The upstream's row of a fresh snapshot, as the answer.
fn upstream_json(app: &App, named: &Named, code: StatusCode) -> Response {
    match row(app, named) {
        Some(u) => (code, Json(u)).into_response(),
        None => AdminError::UnknownUpstream(named.name.clone()).into_response(),
    }
}

/// How long an answer waits for this instance to apply its own etcd write.
const APPLIED_WITHIN: Duration = Duration::from_secs(2);

/// Waits until `done` holds (this instance's watch applied the write), at
/// most [`APPLIED_WITHIN`].
async fn applied(done: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + APPLIED_WITHIN;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

fn from_etcd(e: WriteError, name: &str) -> AdminError {
    match e {
        WriteError::Unreachable(why) => AdminError::Etcd(why),
        WriteError::Taken => AdminError::TakenName(name.to_string()),
    }
}

/// The answer after an etcd write: the upstream's row once this instance has
/// applied it, else 202 (written; the watch has not brought it back yet).
async fn after_write(
    app: &App,
    named: &Named,
    code: StatusCode,
    done: impl Fn() -> bool,
) -> Response {
    let name = &named.name;
    if applied(done).await {
        upstream_json(app, named, code)
    } else {
        (
            StatusCode::ACCEPTED,
            format!("written to etcd; `{name}` is not applied here yet\n"),
        )
            .into_response()
    }
}

/// A drain, enable or weight through etcd: the override edited there, the
/// action an event, and the answer once this instance's `name` shows it.
async fn override_through_etcd(
    app: &App,
    fleet: &Fleet,
    named: &Named,
    peer: SocketAddr,
    what: String,
    edit: impl Fn(&mut Override),
    shows_it: impl Fn(&Upstream) -> bool,
) -> Response {
    let name = &named.name;
    if let Err(e) = fleet.edit_override(named.pool.name(), name, edit).await {
        return from_etcd(e, name).into_response();
    }
    event(app, name, what, peer);
    after_write(app, named, StatusCode::OK, || {
        named.upstream().is_some_and(|u| shows_it(&u))
    })
    .await
}

fn event(app: &App, name: &str, what: String, peer: SocketAddr) {
    info!("admin: upstream {name} {what} by {peer}");
    app.state
        .events
        .push(Some(name), "admin", format!("{what} by {}", peer.ip()));
}

async fn set_drained(
    app: App,
    peer: SocketAddr,
    headers: HeaderMap,
    path: HashMap<String, String>,
    drained: bool,
) -> Response {
    let (named, u) = match target(&app, &headers, &path) {
        Ok(t) => t,
        Err(e) => return refuse(e).await,
    };
    let action = if drained { "drained" } else { "enabled" };
    if let Some(fleet) = named.fleet(&app) {
        let edit = |o: &mut Override| o.drained = drained.then_some(true);
        let what = format!("{action} (through etcd)");
        return override_through_etcd(&app, fleet, &named, peer, what, edit, |u| {
            u.is_drained() == drained
        })
        .await;
    }
    let was = u.set_drained(drained);
    let change = if was == drained { " (no change)" } else { "" };
    event(&app, &named.name, format!("{action}{change}"), peer);
    upstream_json(&app, &named, StatusCode::OK)
}

/// `POST /api/[pools/{pool}/]upstreams/{name}/drain`.
pub async fn drain(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(path): Path<HashMap<String, String>>,
) -> Response {
    set_drained(app, peer, headers, path, true).await
}

/// `POST /api/[pools/{pool}/]upstreams/{name}/enable`.
pub async fn enable(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(path): Path<HashMap<String, String>>,
) -> Response {
    set_drained(app, peer, headers, path, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: i64,
}

fn weight(w: i64) -> Result<u32, AdminError> {
    if WEIGHTS.contains(&w) {
        Ok(w as u32)
    } else {
        Err(AdminError::BadBody(
            "weight must be between 1 and 10000".into(),
        ))
    }
}

pub async fn set_weight(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(path): Path<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let (named, u) = match target(&app, &headers, &path) {
        Ok(t) => t,
        Err(e) => return refuse(e).await,
    };
    let name = named.name.clone();
    let new = match serde_json::from_slice::<WeightBody>(&body) {
        Ok(b) => match weight(b.weight) {
            Ok(w) => w,
            Err(e) => return e.into_response(),
        },
        Err(e) => {
            return AdminError::BadBody(format!("expected {{\"weight\": N}}: {e}")).into_response()
        }
    };
    let old = u.base_weight();
    if let Some(fleet) = named.fleet(&app) {
        let what = format!("weight {old} → {new} (through etcd)");
        let edit = |o: &mut Override| o.weight = Some(new);
        return override_through_etcd(&app, fleet, &named, peer, what, edit, |u| {
            u.base_weight() == new
        })
        .await;
    }
    // The admin API's weight stands over the entry's own (a DNS member's
    // until its answer's weight changes); every upstream keeps its state.
    let edited = app.state.edit_pool(&named.pool, "admin", |d| {
        if !d.names(&name) {
            return Err(AdminError::UnknownUpstream(name.clone()));
        }
        d.admin.weights.insert(name.clone(), new);
        Ok(())
    });
    if let Err(e) = edited {
        return AdminError::from(e).into_response();
    }
    event(&app, &name, format!("weight {old} → {new}"), peer);
    upstream_json(&app, &named, StatusCode::OK)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    name: String,
    addr: String,
    #[serde(default = "one")]
    weight: i64,
}

fn one() -> i64 {
    1
}

/// Reads an add request's body into a config, or says what is wrong.
fn parse_add(body: &[u8]) -> Result<UpstreamConfig, AdminError> {
    let b: AddBody = serde_json::from_slice(body).map_err(|e| {
        AdminError::BadBody(format!(
            "expected {{\"name\": \"…\", \"addr\": \"ip:port\", \"weight\": N}}: {e}"
        ))
    })?;
    let name = b.name.trim();
    rules::upstream_name(name).map_err(|why| AdminError::BadBody(format!("name {why}")))?;
    let addr: SocketAddr = b.addr.trim().parse().map_err(|_| {
        AdminError::BadBody(format!(
            "`{}` is not an address; write ip:port, e.g. 10.0.0.7:8080",
            b.addr
        ))
    })?;
    rules::upstream_addr(addr).map_err(AdminError::BadBody)?;
    Ok(UpstreamConfig::new(name, addr, weight(b.weight)?))
}

/// `POST /api/[pools/{pool}/]upstreams`: adds an upstream; 201, 409 on a
/// taken name.
pub async fn add(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(path): Path<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = authorize(&app.state, &headers) {
        return refuse(e).await;
    }
    let mut named = match Named::of(&app, &path) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let new = match parse_add(&body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if rules::is_own(new.addr, &app.state.config.own_addrs()) {
        let why = format!(
            "{} is this balancer's own listener: requests would loop",
            new.addr
        );
        return AdminError::BadBody(why).into_response();
    }
    let name = new.name.clone();
    named.name = name.clone();
    // Names are unique across pools (they name metric series).
    if let Some(other) = app
        .state
        .pools
        .iter()
        .find(|p| !Arc::ptr_eq(p, &named.pool) && p.desired().names(&name))
    {
        let why = format!("pool `{}` has an upstream named `{name}`", other.name());
        return (StatusCode::CONFLICT, format!("{why}\n")).into_response();
    }
    if let Some(fleet) = named.fleet(&app) {
        if named.upstream().is_some() {
            return AdminError::TakenName(name).into_response();
        }
        let value = serde_json::json!({ "addr": new.addr.to_string(), "weight": new.weight });
        if let Err(e) = fleet
            .add_upstream(named.pool.name(), &name, value.to_string().into_bytes())
            .await
        {
            return from_etcd(e, &name).into_response();
        }
        event(
            &app,
            &name,
            format!("added at {} (through etcd)", new.addr),
            peer,
        );
        return after_write(&app, &named, StatusCode::CREATED, || {
            named.upstream().is_some()
        })
        .await;
    }
    let source = format!("admin {}", peer.ip());
    let edited = app.state.edit_pool(&named.pool, &source, |d| {
        if d.names(&new.name) {
            return Err(AdminError::TakenName(new.name));
        }
        d.admin.add(new);
        Ok(())
    });
    if let Err(e) = edited {
        return AdminError::from(e).into_response();
    }
    upstream_json(&app, &named, StatusCode::CREATED)
}

/// `DELETE /api/[pools/{pool}/]upstreams/{name}`: takes the upstream out of
/// the table at once; requests already on it finish normally.
pub async fn remove(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(path): Path<HashMap<String, String>>,
) -> Response {
    let named = match target(&app, &headers, &path) {
        Ok((named, _)) => named,
        Err(e) => return refuse(e).await,
    };
    let name = named.name.clone();
    let row = row(&app, &named);
    if let Some(fleet) = named.fleet(&app) {
        let pool = named.pool.name();
        if !fleet.owns(pool, &name) {
            return AdminError::NotFromEtcd(name).into_response();
        }
        if let Err(e) = fleet.remove_upstream(pool, &name).await {
            return from_etcd(e, &name).into_response();
        }
        event(&app, &name, "removed (through etcd)".into(), peer);
        // Gone, or the config file's entry of that name back in its place.
        if !applied(|| !fleet.owns(pool, &name)).await {
            return (
                StatusCode::ACCEPTED,
                format!("removed from etcd; `{name}` is not gone here yet\n"),
            )
                .into_response();
        }
        return (StatusCode::OK, Json(row)).into_response();
    }
    let source = format!("admin {}", peer.ip());
    let edited = app.state.edit_pool(&named.pool, &source, |d| {
        if !d.names(&name) {
            return Err(AdminError::UnknownUpstream(name.clone()));
        }
        d.admin.remove(&name);
        Ok(())
    });
    if let Err(e) = edited {
        return AdminError::from(e).into_response();
    }
    match row {
        Some(u) => (StatusCode::OK, Json(u)).into_response(),
        None => AdminError::UnknownUpstream(name).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_bodies_are_checked() {
        let ok = parse_add(br#"{"name":"s4","addr":"127.0.0.1:9004","weight":2}"#).unwrap();
        assert_eq!((ok.name.as_str(), ok.weight), ("s4", 2));
        assert_eq!(
            parse_add(br#"{"name":"s4","addr":"127.0.0.1:1"}"#)
                .unwrap()
                .weight,
            1
        );
        for bad in [
            &br#"{"name":"s4","addr":"nowhere"}"#[..],
            br#"{"name":"","addr":"127.0.0.1:1"}"#,
            br#"{"name":"a b","addr":"127.0.0.1:1"}"#,
            br#"{"name":"s4","addr":"127.0.0.1:1","weight":0}"#,
            br#"{"name":"s4","addr":"127.0.0.1:1","extra":1}"#,
            br#"{"name":"..","addr":"127.0.0.1:1"}"#,
            br#"{"name":".","addr":"127.0.0.1:1"}"#,
            br#"{"name":"s4","addr":"127.0.0.1:0"}"#,
            br#"{"name":"s4","addr":"0.0.0.0:80"}"#,
            br#"{"name":"s4","addr":"255.255.255.255:80"}"#,
            b"not json",
        ] {
            assert!(
                matches!(parse_add(bad), Err(AdminError::BadBody(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
