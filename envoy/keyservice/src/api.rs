//! The JSON API: contract v1 (called by keygate), Event Staff's token API (reached through
//! keygate, which verified the caller's key and passes it on as `x-keygate-*` headers) and the
//! operator's admin API (`--admin-token`).
//!
//! Errors on `/v1/keys/*` are `{"error": "..."}` as the contract says; elsewhere RFC 9457
//! `application/problem+json` with `type` `urn:keyservice:problem:<slug>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::app::App;
use crate::auth;
use crate::model::{
    now_s, sha256_hex, Account, KeyRecord, Kind, RateLimit, State as KeyState, User,
};
use crate::store::{KeyChange, KeyFilter, StoreError, FEED_PAGE};

pub const CONTRACT: u64 = 1;
pub const VALID_CACHE_TTL_S: i64 = 60;
pub const REFUSAL_CACHE_TTL_S: i64 = 10;
pub const PERSONAL_LIFETIME_S: i64 = 86_400;
pub const DAY_S: i64 = 86_400;
pub const MAX_BODY_BYTES: usize = 1 << 20;
const PROBLEM_BASE: &str = "urn:keyservice:problem:";

/// An answer other than success.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub slug: &'static str,
    pub detail: String,
    pub headers: Vec<(header::HeaderName, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            slug,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }
}

pub fn bad_request(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad-request", detail)
}

pub fn not_found(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not-found", detail)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Db(m) => {
                eprintln!("keyservice: database error: {m}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database failed; try again",
                )
            }
        }
    }
}

type ApiResult = Result<Response, ApiError>;

fn with_no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub fn json_response(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    with_no_store(r)
}

fn ok_json<T: Serialize>(status: StatusCode, v: &T) -> ApiResult {
    Ok(json_response(
        status,
        serde_json::to_vec(v).unwrap_or_default(),
        "application/json",
    ))
}

fn error_response(e: ApiError, contract: bool) -> Response {
    let mut r = if contract {
        json_response(
            e.status,
            serde_json::to_vec(&json!({"error": e.detail})).unwrap_or_default(),
            "application/json",
        )
    } else {
        let title = e.status.canonical_reason().unwrap_or("Error");
        let body = json!({"type": format!("{PROBLEM_BASE}{}", e.slug), "title": title,
                          "status": e.status.as_u16(), "detail": e.detail});
        json_response(
            e.status,
            serde_json::to_vec(&body).unwrap_or_default(),
            "application/problem+json",
        )
    };
    for (k, v) in e.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

// --------------------------------------------------------------------------------------------
// Routing
// --------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Verify,
    Revocations,
    Login,
    ListBusiness,
    CreateBusiness,
    RevokeAllBusiness,
    RevokeBusiness,
    RotateBusiness,
    RevokePersonal,
    RevokeAllPersonal,
    ListNamed,
    CreateNamed,
    RevokeNamed,
    RotateNamed,
    AdminCreateKey,
    AdminRevoke,
    AdminDisable,
    AdminUpdateKey,
    AdminCreateAccount,
    AdminListAccounts,
    AdminDisableAccount,
    AdminCreateUser,
    AdminListUsers,
    AdminDisableUser,
    AdminUsage,
    Metrics,
    Ingest,
}

impl Action {
    fn admin(self) -> bool {
        matches!(
            self,
            Action::AdminCreateKey
                | Action::AdminRevoke
                | Action::AdminDisable
                | Action::AdminUpdateKey
                | Action::AdminCreateAccount
                | Action::AdminListAccounts
                | Action::AdminDisableAccount
                | Action::AdminCreateUser
                | Action::AdminListUsers
                | Action::AdminDisableUser
                | Action::AdminUsage
        )
    }
}

fn key_id_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The routes matching `path`: (method, action, path parameter).
fn routes_for(path: &str) -> Vec<(Method, Action, Option<String>)> {
    use Action::*;
    let p = |m: Method, a: Action| (m, a, None);
    match path {
        "/v1/keys/verify" => vec![p(Method::POST, Verify)],
        "/v1/keys/revocations" => vec![p(Method::GET, Revocations)],
        "/v1/auth/login" => vec![p(Method::POST, Login)],
        "/v1/tokens/business" => vec![
            p(Method::GET, ListBusiness),
            p(Method::POST, CreateBusiness),
            p(Method::DELETE, RevokeAllBusiness),
        ],
        "/v1/tokens/personal" => vec![p(Method::DELETE, RevokePersonal)],
        "/v1/tokens/personal/all" => vec![p(Method::DELETE, RevokeAllPersonal)],
        "/v1/tokens/named" => vec![p(Method::GET, ListNamed), p(Method::POST, CreateNamed)],
        "/admin/keys" => vec![p(Method::POST, AdminCreateKey)],
        "/admin/revoke" => vec![p(Method::POST, AdminRevoke)],
        "/admin/disable" => vec![p(Method::POST, AdminDisable)],
        "/admin/update-key" => vec![p(Method::POST, AdminUpdateKey)],
        "/admin/accounts" => vec![
            p(Method::GET, AdminListAccounts),
            p(Method::POST, AdminCreateAccount),
        ],
        "/admin/accounts/disable" => vec![p(Method::POST, AdminDisableAccount)],
        "/admin/users" => vec![
            p(Method::GET, AdminListUsers),
            p(Method::POST, AdminCreateUser),
        ],
        "/admin/users/disable" => vec![p(Method::POST, AdminDisableUser)],
        "/admin/usage" => vec![p(Method::GET, AdminUsage)],
        "/metrics" => vec![p(Method::GET, Metrics)],
        // OTLP/HTTP logs: Envoy's OpenTelemetry access logger, or a collector (crate::ingest)
        "/v1/logs" => vec![p(Method::POST, Ingest)],
        _ => {
            let with_id = |prefix: &str, suffix: &str| {
                path.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_suffix(suffix))
                    .filter(|id| key_id_ok(id))
                    .map(str::to_string)
            };
            if let Some(id) = with_id("/v1/tokens/business/", "/rotate") {
                vec![(Method::POST, RotateBusiness, Some(id))]
            } else if let Some(id) = with_id("/v1/tokens/named/", "/rotate") {
                vec![(Method::POST, RotateNamed, Some(id))]
            } else if let Some(id) = with_id("/v1/tokens/business/", "") {
                vec![(Method::DELETE, RevokeBusiness, Some(id))]
            } else if let Some(id) = with_id("/v1/tokens/named/", "") {
                vec![(Method::DELETE, RevokeNamed, Some(id))]
            } else {
                vec![]
            }
        }
    }
}

/// A request as the handlers see it.
pub struct Call {
    pub headers: HeaderMap,
    pub query: String,
    pub body: Vec<u8>,
    pub peer: Option<SocketAddr>,
}

/// The fallback handler: every path the dashboard does not serve.
pub async fn handle(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    let (parts, body) = req.into_parts();
    let raw_path = parts.uri.path();
    let path = if raw_path.len() > 1 {
        match raw_path.trim_end_matches('/') {
            "" => "/",
            p => p,
        }
    } else {
        "/"
    }
    .to_string();
    let contract = path.starts_with("/v1/keys/");
    if app.verbose {
        eprintln!("keyservice: {} {}", parts.method, path);
    }
    let candidates: Vec<_> = routes_for(&path)
        .into_iter()
        .filter(|(_, a, _)| !a.admin() || app.admin_token_hash.is_some())
        .collect();
    let found = candidates
        .iter()
        .find(|(m, _, _)| *m == parts.method)
        .map(|(_, a, id)| (*a, id.clone()));
    match found {
        Some((Action::Verify, _)) => app.metrics.count_verify(),
        Some((Action::Revocations, _)) => app.metrics.count_revocations(),
        _ => {}
    }
    let max_body = if matches!(found, Some((Action::Ingest, _))) {
        crate::ingest::MAX_EXPORT_BYTES
    } else {
        MAX_BODY_BYTES
    };
    // at most INGEST_SLOTS exports are read at once: more are refused before their bodies are;
    // an export without the token is refused before it may hold a slot
    let ingest = matches!(found, Some((Action::Ingest, _)));
    let _slot = if ingest {
        let token = parts.headers.get("x-keyservice-ingest-token");
        if !app.history.token_ok(token.map(|v| v.as_bytes())) {
            app.history
                .counters
                .exports_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return ingest_refused(crate::ingest::Refused::Token);
        }
        match app.history.slots.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => {
                app.history
                    .counters
                    .exports_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return ingest_refused(crate::ingest::Refused::Busy);
            }
        }
    } else {
        None
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = match declared {
        // refused before reading: a client announcing too much is not waited for
        Some(n) if n > max_body as u64 => Err(()),
        // an export holds one of the few slots while it is read: a sender that dribbles it
        // loses it after READ_DEADLINE
        _ if ingest => tokio::time::timeout(
            crate::ingest::READ_DEADLINE,
            axum::body::to_bytes(body, max_body),
        )
        .await
        .map_err(|_| ())
        .and_then(|r| r.map_err(|_| ())),
        _ => axum::body::to_bytes(body, max_body).await.map_err(|_| ()),
    };
    let body = match body {
        Ok(b) => b.to_vec(),
        Err(()) => {
            let mut r = error_response(
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    format!("the body exceeds {max_body} bytes"),
                ),
                contract,
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    let Some((action, id)) = found else {
        let e = if candidates.is_empty() {
            not_found(format!("no endpoint at {path}"))
        } else {
            let mut allowed: Vec<&str> = candidates.iter().map(|(m, _, _)| m.as_str()).collect();
            allowed.sort_unstable();
            allowed.dedup();
            let mut e = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{} is not allowed here", parts.method),
            );
            e.headers.push((header::ALLOW, allowed.join(", ")));
            e
        };
        return error_response(e, contract);
    };
    let call = Call {
        headers: parts.headers,
        query: parts.uri.query().unwrap_or("").to_string(),
        body,
        peer: Some(peer),
    };
    let result = if action.admin() {
        match require_admin(&app, &call.headers) {
            Ok(()) => dispatch(&app, action, id, call).await,
            Err(e) => Err(e),
        }
    } else {
        dispatch(&app, action, id, call).await
    };
    match result {
        Ok(r) => r,
        Err(e) => error_response(e, contract),
    }
}

async fn dispatch(app: &App, action: Action, id: Option<String>, c: Call) -> ApiResult {
    use Action::*;
    let id = id.unwrap_or_default();
    match action {
        Verify => verify(app, &c).await,
        Revocations => revocations(app, &c).await,
        Login => login(app, &c).await,
        ListBusiness => list_keys(app, &c, Kind::Business).await,
        CreateBusiness => create_business(app, &c).await,
        RevokeAllBusiness => revoke_all(app, &c, Kind::Business).await,
        RevokeBusiness => revoke_one(app, &c, Kind::Business, &id).await,
        RotateBusiness => rotate(app, &c, Kind::Business, &id).await,
        RevokePersonal => revoke_personal(app, &c).await,
        RevokeAllPersonal => revoke_all(app, &c, Kind::Personal).await,
        ListNamed => list_keys(app, &c, Kind::Named).await,
        CreateNamed => create_named(app, &c).await,
        RevokeNamed => revoke_one(app, &c, Kind::Named, &id).await,
        RotateNamed => rotate(app, &c, Kind::Named, &id).await,
        AdminCreateKey => admin_create_key(app, &c).await,
        AdminRevoke => admin_revoke(app, &c).await,
        AdminDisable => admin_disable(app, &c).await,
        AdminUpdateKey => admin_update_key(app, &c).await,
        AdminCreateAccount => admin_create_account(app, &c).await,
        AdminListAccounts => admin_list_accounts(app).await,
        AdminDisableAccount => admin_disable_account(app, &c).await,
        AdminCreateUser => admin_create_user(app, &c).await,
        AdminListUsers => admin_list_users(app, &c).await,
        AdminDisableUser => admin_disable_user(app, &c).await,
        Metrics => Ok(json_response(
            StatusCode::OK,
            format!("{}{}", app.metrics.prometheus(), app.history.prometheus()).into_bytes(),
            "text/plain; version=0.0.4",
        )),
        Ingest => Ok(ingest(app, &c)),
        AdminUsage => crate::usage::admin_usage(app, &c).await,
    }
}

/// `POST /v1/logs`: an OTLP export of access-log records (`crate::ingest`).
fn ingest(app: &App, c: &Call) -> Response {
    let h = |n: &str| c.headers.get(n).and_then(|v| v.to_str().ok());
    match crate::ingest::accept(
        &app.history,
        c.headers
            .get("x-keyservice-ingest-token")
            .map(|v| v.as_bytes()),
        h("content-type"),
        h("content-encoding"),
        &c.body,
        crate::model::now_s().saturating_mul(1000),
    ) {
        Ok(body) => json_response(StatusCode::OK, body, "application/x-protobuf"),
        Err(e) => {
            if e != crate::ingest::Refused::Full {
                app.history
                    .counters
                    .exports_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            ingest_refused(e)
        }
    }
}

fn ingest_refused(e: crate::ingest::Refused) -> Response {
    use crate::ingest::Refused;
    let (status, text) = match e {
        Refused::Token => (
            StatusCode::FORBIDDEN,
            "a valid x-keyservice-ingest-token header is required".to_string(),
        ),
        Refused::MediaType => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "OTLP/HTTP protobuf only: content-type application/x-protobuf, no content-encoding"
                .to_string(),
        ),
        Refused::Body(m) => (StatusCode::BAD_REQUEST, m),
        Refused::Busy | Refused::Full => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the history queue is full; the records were dropped (counted)".to_string(),
        ),
    };
    let mut r = json_response(status, text.into_bytes(), "text/plain; charset=utf-8");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn require_admin(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get("x-admin-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    // compare digests: the comparison's time says nothing about the token
    let ok = app
        .admin_token_hash
        .as_ref()
        .is_some_and(|want| *want == sha256_hex(given));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a valid x-admin-token header is required",
        ))
    }
}

// --------------------------------------------------------------------------------------------
// Input validation (request bodies are untrusted JSON)
// --------------------------------------------------------------------------------------------

pub fn parse_object(body: &[u8], allow_empty: bool) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        if allow_empty {
            return Ok(Map::new());
        }
        return Err(bad_request("a JSON object body is required"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad_request("the body must be a JSON object")),
        Err(_) => Err(bad_request("the body is not valid JSON")),
    }
}

/// Strings that keygate passes on in headers and checks: no control characters.
fn clean(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

pub fn opt_str(
    o: &Map<String, Value>,
    name: &str,
    max_len: usize,
) -> Result<Option<String>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => {
            if s.chars().count() > max_len {
                Err(bad_request(format!(
                    "`{name}` must be at most {max_len} characters"
                )))
            } else if !clean(s) {
                Err(bad_request(format!(
                    "`{name}` must not hold control characters"
                )))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(_) => Err(bad_request(format!("`{name}` must be a non-empty string"))),
    }
}

pub fn req_str(o: &Map<String, Value>, name: &str, max_len: usize) -> Result<String, ApiError> {
    opt_str(o, name, max_len)?.ok_or_else(|| bad_request(format!("`{name}` is required")))
}

pub fn opt_int(
    o: &Map<String, Value>,
    name: &str,
    lo: i64,
    hi: i64,
) -> Result<Option<i64>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if (lo..=hi).contains(&v) => Ok(Some(v)),
            Some(_) => Err(bad_request(format!("`{name}` must be {lo} to {hi}"))),
            None if n.is_u64() => Err(bad_request(format!("`{name}` must be {lo} to {hi}"))),
            None => Err(bad_request(format!("`{name}` must be an integer"))),
        },
        Some(_) => Err(bad_request(format!("`{name}` must be an integer"))),
    }
}

pub fn req_int(o: &Map<String, Value>, name: &str, lo: i64, hi: i64) -> Result<i64, ApiError> {
    opt_int(o, name, lo, hi)?.ok_or_else(|| bad_request(format!("`{name}` is required")))
}

fn opt_bool(o: &Map<String, Value>, name: &str, default: bool) -> Result<bool, ApiError> {
    match o.get(name) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad_request(format!("`{name}` must be a boolean"))),
    }
}

/// Scope tokens as keygate accepts them (RFC 6749: visible ASCII but space, `"` and `\`).
fn parse_scopes(v: &Value) -> Result<Vec<String>, ApiError> {
    let err = || {
        bad_request("`scopes` must be a list of at most 128 scope tokens (visible ASCII; no space, quote or backslash)")
    };
    let Value::Array(items) = v else {
        return Err(err());
    };
    if items.len() > 128 {
        return Err(err());
    }
    items
        .iter()
        .map(|s| match s {
            Value::String(s)
                if !s.is_empty()
                    && s.len() <= 256
                    && s.bytes().all(|c| {
                        c == 0x21 || (0x23..=0x5b).contains(&c) || (0x5d..=0x7e).contains(&c)
                    }) =>
            {
                Ok(s.clone())
            }
            _ => Err(err()),
        })
        .collect()
}

fn parse_resources(v: &Value) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let err = || {
        bad_request(
            "`resources` must be an object of at most 32 names -> lists of at most 1024 strings",
        )
    };
    let Value::Object(m) = v else {
        return Err(err());
    };
    if m.len() > 32 {
        return Err(err());
    }
    let mut out = BTreeMap::new();
    for (k, vals) in m {
        let Value::Array(vals) = vals else {
            return Err(err());
        };
        if vals.len() > 1024 || k.len() > 256 || !clean(k) {
            return Err(err());
        }
        let list = vals
            .iter()
            .map(|x| match x {
                Value::String(s) if s.len() <= 256 && clean(s) => Ok(s.clone()),
                _ => Err(err()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(k.clone(), list);
    }
    Ok(out)
}

fn parse_ratelimit(v: Option<&Value>) -> Result<Option<RateLimit>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            let unknown: Vec<&str> = m
                .keys()
                .map(String::as_str)
                .filter(|k| !["requests", "window_s", "burst"].contains(k))
                .collect();
            if !unknown.is_empty() {
                return Err(bad_request(format!(
                    "`ratelimit` has unknown members: {}",
                    unknown.join(", ")
                )));
            }
            let requests = req_int(m, "requests", 1, 1_000_000_000)?;
            let window_s = opt_int(m, "window_s", 1, 31_536_000)?.unwrap_or(60);
            let burst = opt_int(m, "burst", 1, 1_000_000_000)?.unwrap_or(requests);
            Ok(Some(RateLimit {
                requests: requests as u64,
                window_s: window_s as u64,
                burst: burst as u64,
            }))
        }
        Some(_) => Err(bad_request(
            "`ratelimit` must be null or an object {requests, window_s, burst}",
        )),
    }
}

// --------------------------------------------------------------------------------------------
// Contract v1
// --------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct ValidAnswer<'a> {
    contract: u64,
    valid: bool,
    code: &'static str,
    key_id: &'a str,
    subject: &'a str,
    account: &'a str,
    plan: &'a str,
    scopes: &'a [String],
    expires_at: Option<i64>,
    ratelimit: Option<RateLimit>,
    resources: &'a BTreeMap<String, Vec<String>>,
    cache_ttl_s: i64,
}

#[derive(Serialize)]
struct Refusal<'a> {
    contract: u64,
    valid: bool,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    cache_ttl_s: i64,
}

mod admin;
mod contract;
mod tokens;
pub use admin::*;
pub use contract::*;
pub use tokens::*;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
