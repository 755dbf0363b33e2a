//! The answers the balancer gives itself rather than an upstream: the fast 503
//! when no upstream can take a request, the 429s of a rate limit and of too
//! many requests in flight, the 404 when no route matches, a route's
//! redirect, and Pingora's error answers. Each carries the request's id.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;

use crate::trace::REQUEST_ID;

/// Body of the 503 sent when no upstream can take the request.
pub const NO_UPSTREAM_BODY: &str = "503 Service Unavailable: no upstream available\n";

/// Body of the 503 sent when every upstream is at its concurrency limit.
const OVERLOADED_BODY: &str =
    "503 Service Unavailable: every upstream is at its concurrency limit\n";

/// Body of a rate limit's 429.
const TOO_MANY_BODY: &str = "429 Too Many Requests: over this client's rate limit\n";

/// Body of the 429 for a client with too many requests in flight.
const IN_FLIGHT_BODY: &str =
    "429 Too Many Requests: too many requests in flight from this client\n";

/// Body of the 403 for a client a route's `access` does not admit.
const FORBIDDEN_BODY: &str = "403 Forbidden: this address may not use this route\n";

/// Body of the 401 for a request without a valid user and password.
const UNAUTHORIZED_BODY: &str = "401 Unauthorized: this route needs a user and password\n";

/// Body of the 503 when too many passwords wait to be checked.
const BUSY_BODY: &str = "503 Service Unavailable: too many passwords to check; come back\n";

/// Body of the 404 when no route matches.
const NO_ROUTE_BODY: &str = "404 Not Found: no route for this host and path\n";

/// A short plain-text answer that is not to be cached, asking the client to
/// come back in `retry_after` seconds.
fn plain(code: u16, body: &str, retry_after: u64, request_id: &str) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(code, Some(5))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("retry-after", retry_after.to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    if !request_id.is_empty() {
        resp.insert_header(REQUEST_ID, request_id)?;
    }
    Ok(resp)
}

/// The fast 503 with `Retry-After: 1`, sent at once.
pub async fn unavailable(session: &mut Session, request_id: &str) -> Result<()> {
    let resp = plain(503, NO_UPSTREAM_BODY, 1, request_id)?;
    session
        .as_downstream_mut()
        .write_error_response(resp, Bytes::from_static(NO_UPSTREAM_BODY.as_bytes()))
        .await
}

/// The 503 for a request no upstream has room for, with `Retry-After: 1`;
/// the connection stays open.
pub async fn overloaded(session: &mut Session, request_id: &str) -> Result<()> {
    short(session, 503, OVERLOADED_BODY, 1, request_id).await
}

/// A 429 for a client over `lb.rate_limit`; the connection stays open.
pub async fn too_many(session: &mut Session, retry_after: u64, request_id: &str) -> Result<()> {
    short(session, 429, TOO_MANY_BODY, retry_after, request_id).await
}

/// A 429 for a client with `lb.limits.max_connections_per_client` requests
/// in flight.
pub async fn too_many_in_flight(session: &mut Session, request_id: &str) -> Result<()> {
    short(session, 429, IN_FLIGHT_BODY, 1, request_id).await
}

async fn short(
    session: &mut Session,
    code: u16,
    body: &'static str,
    retry_after: u64,
    request_id: &str,
) -> Result<()> {
    let resp = plain(code, body, retry_after, request_id)?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await
}

/// The 404 for a request no route matches; the connection stays open.
pub async fn no_route(session: &mut Session, request_id: &str) -> Result<()> {
    refusal(session, 404, NO_ROUTE_BODY, request_id).await
}

/// The 403 for a client a route's `access` does not admit; the connection
/// stays open.
pub async fn forbidden(session: &mut Session, request_id: &str) -> Result<()> {
    refusal(session, 403, FORBIDDEN_BODY, request_id).await
}

/// The 401 asking for a user and password of `realm` (the route's name).
pub async fn unauthorized(session: &mut Session, realm: &str, request_id: &str) -> Result<()> {
    let realm = realm.replace(['"', '\\'], "");
    let challenge = format!("Basic realm=\"{realm}\", charset=\"UTF-8\"");
    refusal_with(
        session,
        (401, UNAUTHORIZED_BODY),
        Some(("www-authenticate", challenge)),
        request_id,
    )
    .await
}

/// A 503 when passwords queue to be checked: the client comes back.
pub async fn too_busy(session: &mut Session, request_id: &str) -> Result<()> {
    short(session, 503, BUSY_BODY, 1, request_id).await
}

/// A short plain-text answer of our own, with nothing to come back for.
async fn refusal(
    session: &mut Session,
    code: u16,
    body: &'static str,
    request_id: &str,
) -> Result<()> {
    refusal_with(session, (code, body), None, request_id).await
}

/// [`refusal`] with one more header.
async fn refusal_with(
    session: &mut Session,
    (code, body): (u16, &'static str),
    extra: Option<(&'static str, String)>,
    request_id: &str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(code, Some(5))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    if let Some((name, value)) = extra {
        resp.insert_header(name, value)?;
    }
    if !request_id.is_empty() {
        resp.insert_header(REQUEST_ID, request_id)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await
}

/// A route's `forward_auth` service could not say (`why`): 502.
pub async fn auth_failed(session: &mut Session, why: &str, request_id: &str) -> Result<()> {
    let body = format!("502 Bad Gateway: the authorization service failed: {why}\n");
    let mut resp = ResponseHeader::build(502, Some(4))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    if !request_id.is_empty() {
        resp.insert_header(REQUEST_ID, request_id)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// A route's `forward_auth` service's own answer, passed to the client.
pub async fn passed(
    session: &mut Session,
    (status, headers, body): (http::StatusCode, http::HeaderMap, Bytes),
    request_id: &str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 2))?;
    for (name, value) in &headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    if !request_id.is_empty() {
        resp.insert_header(REQUEST_ID, request_id)?;
    }
    session
        .write_response_header(Box::new(resp), body.is_empty())
        .await?;
    if !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// A route's redirect to `location` with `status` (301, 302, 303, 307, 308).
pub async fn redirect(
    session: &mut Session,
    status: u16,
    location: &str,
    request_id: &str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::LOCATION, location)?;
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    if !request_id.is_empty() {
        resp.insert_header(REQUEST_ID, request_id)?;
    }
    session.write_response_header(Box::new(resp), true).await
}

/// Pingora's error answer for `code`, with the request id.
pub async fn error(session: &mut Session, code: u16, request_id: &str) -> Result<()> {
    let mut resp = pingora::protocols::http::error_resp::gen_error_response(code);
    if !request_id.is_empty() {
        resp.insert_header(REQUEST_ID, request_id)?;
    }
    session
        .as_downstream_mut()
        .write_error_response(resp, Bytes::new())
        .await
}
