//! `POST /api/demo/{name}/{action}`: the demo controls, answered only while the
//! config's demo upstreams run. No token is needed (they change only
//! in-process mock backends), but the request must be JSON, which a page on
//! another site cannot send without the browser asking first.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::App;
use crate::demo_controls::DemoError;

pub async fn control(
    State(app): State<App>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send Content-Type: application/json\n",
        )
            .into_response();
    }
    match app.state.demo.apply(&name, &action) {
        Ok(done) => {
            app.state.events.push(
                Some(&name),
                "demo",
                format!("made {action} by the dashboard's demo controls"),
            );
            (
                StatusCode::OK,
                Json(serde_json::json!({ "name": name, "action": done })),
            )
                .into_response()
        }
        Err(e @ DemoError::Unknown(_)) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
        Err(e @ DemoError::BadAction(_)) => {
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
    }
}
