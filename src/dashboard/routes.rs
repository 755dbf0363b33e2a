//! `GET /api/routes` and `GET /api/explain`: the route table as it serves
//! (each route's match, pool, requests/s, error rate and p99 over the last
//! few seconds, and its totals), and the route
//! a request would take, with why each earlier one did not match.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::derived::Derived;
use super::App;
use crate::config::RouteAction;
use crate::state::SharedState;

/// One route as it serves.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteSnapshot {
    pub name: String,
    /// The match in words (`host api.example.com, path /v1`).
    #[serde(rename = "match")]
    pub matches: String,
    pub pool: Option<String>,
    pub redirect: Option<String>,
    pub requests_total: u64,
    /// Answers with a 5xx status.
    pub errors_total: u64,
    /// Over the last few seconds.
    pub rps: f64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
}

/// Every route of the file, in file order, with `derived` rates by index.
pub fn routes(state: &SharedState, derived: &[Derived]) -> Vec<RouteSnapshot> {
    let none = Derived::default();
    let pools = &state.config.lb.pools;
    state
        .routes
        .table
        .routes()
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.implicit)
        .map(|(i, r)| {
            let (requests_total, errors_total) = state.routes.served(i).totals();
            let d = derived.get(i).unwrap_or(&none);
            let (pool, redirect) = match &r.action {
                RouteAction::Pool(p) => (pools.get(*p).map(|p| p.name.clone()), None),
                RouteAction::Redirect { to, status } => (None, Some(format!("{status} {to}"))),
            };
            RouteSnapshot {
                name: r.name.clone(),
                matches: state.routes.served(i).described.clone(),
                pool,
                redirect,
                requests_total,
                errors_total,
                rps: (d.rps * 10.0).round() / 10.0,
                error_rate: (d.error_rate * 1e4).round() / 1e4,
                p99_ms: d.p99,
            }
        })
        .collect()
}

/// `GET /api/routes`: as the snapshot has them.
pub(super) async fn api_routes(State(app): State<App>) -> Response {
    let routes = app.hub.snapshot(&app.state).routes;
    Json(serde_json::json!({ "routes": routes })).into_response()
}

/// `GET /api/explain?method=GET&url=https://api.example.com/v1/users`
/// (`headers=X-Canary: 1, Cookie: a=b` optional).
pub(super) async fn api_explain(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(url) = q.get("url") else {
        return (
            StatusCode::BAD_REQUEST,
            "give url=, e.g. /api/explain?method=GET&url=https://api.example.com/v1/users\n",
        )
            .into_response();
    };
    let method = q.get("method").map_or("GET", String::as_str);
    let headers = q.get("headers").map_or("", String::as_str);
    let request = format!("{method} {url} {headers}");
    let explained = crate::route::explain::parse_request(&request).and_then(|(m, u, h)| {
        crate::route::explain::explain(
            &app.state.routes.table,
            &app.state.config.lb.pools,
            &m,
            &u,
            &h,
        )
    });
    match explained {
        Ok(e) => Json(e).into_response(),
        Err(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    }
}
