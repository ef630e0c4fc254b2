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
    // at most INGEST_SLOTS exports are read at once: more are refused before their bodies are
    let _slot = if matches!(found, Some((Action::Ingest, _))) {
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

/// The contract v1 verdict on a key record (None: no such key, or not for that user).
pub fn verdict_json(rec: Option<&KeyRecord>, user: Option<&str>, now: i64) -> Vec<u8> {
    let rec = rec.filter(|r| user.is_none() || user == r.user.as_deref());
    let Some(rec) = rec else {
        return serde_json::to_vec(&Refusal {
            contract: CONTRACT,
            valid: false,
            code: "NOT_FOUND",
            key_id: None,
            cache_ttl_s: REFUSAL_CACHE_TTL_S,
        })
        .unwrap_or_default();
    };
    let state = rec.state(now);
    if state != KeyState::Valid {
        return serde_json::to_vec(&Refusal {
            contract: CONTRACT,
            valid: false,
            code: state.code(),
            key_id: Some(&rec.id),
            cache_ttl_s: REFUSAL_CACHE_TTL_S,
        })
        .unwrap_or_default();
    }
    let ttl = match rec.expires_at {
        Some(e) => (e - now).clamp(1, VALID_CACHE_TTL_S),
        None => VALID_CACHE_TTL_S,
    };
    serde_json::to_vec(&ValidAnswer {
        contract: CONTRACT,
        valid: true,
        code: "VALID",
        key_id: &rec.id,
        subject: &rec.subject,
        account: &rec.account,
        plan: &rec.plan,
        scopes: &rec.scopes,
        expires_at: rec.expires_at,
        ratelimit: rec.ratelimit,
        resources: &rec.resources,
        cache_ttl_s: ttl,
    })
    .unwrap_or_default()
}

/// The verify request, read without building a JSON tree (the hot path).
#[derive(serde::Deserialize)]
struct VerifyRequest<'a> {
    #[serde(borrow)]
    key: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<std::borrow::Cow<'a, str>>,
}

async fn verify(app: &App, c: &Call) -> ApiResult {
    if c.body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad_request("a JSON object body is required"));
    }
    let req: VerifyRequest<'_> = serde_json::from_slice(&c.body).map_err(|_| {
        bad_request("the body must be a JSON object with `key` (a non-empty string) and `user` (a string or null)")
    })?;
    let secret = match &req.key {
        Some(s) if !s.is_empty() => s,
        _ => return Err(bad_request("`key` must be a non-empty string")),
    };
    let rec = app
        .store
        .key_by_hash(&sha256_hex(secret.as_bytes()))
        .await?;
    Ok(json_response(
        StatusCode::OK,
        verdict_json(rec.as_deref(), req.user.as_deref(), now_s()),
        "application/json",
    ))
}

fn query_int(query: &str, name: &str, default: i64, lo: i64, hi: i64) -> Result<i64, ApiError> {
    let value = query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim());
    let Some(v) = value else { return Ok(default) };
    let digits = v.strip_prefix('-').unwrap_or(v);
    let n = if (1..=19).contains(&digits.len()) && digits.bytes().all(|c| c.is_ascii_digit()) {
        v.parse::<i64>().ok()
    } else {
        None
    };
    match n {
        Some(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(bad_request(format!(
            "`{name}` must be an integer from {lo} to {hi}"
        ))),
    }
}

async fn revocations(app: &App, c: &Call) -> ApiResult {
    let since = query_int(&c.query, "since", -1, -1, 1 << 62)?;
    let limit = query_int(&c.query, "limit", FEED_PAGE as i64, 1, FEED_PAGE as i64)? as usize;
    app.store.promote_due(now_s()).await?;
    let current = app.store.revocation_cursor().await?;
    if since == -1 {
        return ok_json(
            StatusCode::OK,
            &json!({"contract": CONTRACT, "cursor": current, "revoked": [], "more": false}),
        );
    }
    let (rows, more) = app.store.revocations_since(since, limit).await?;
    // a cursor from the future (the database was replaced) is brought back to ours
    let cursor = rows.last().map_or(since.min(current), |r| r.seq);
    let revoked: Vec<Value> = rows
        .iter()
        .map(|r| json!({"key_hash": r.key_hash, "user": r.user, "key_id": r.key_id}))
        .collect();
    ok_json(
        StatusCode::OK,
        &json!({"contract": CONTRACT, "cursor": cursor, "more": more, "revoked": revoked}),
    )
}

// --------------------------------------------------------------------------------------------
// Event Staff's token API
// --------------------------------------------------------------------------------------------

fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
}

/// The live personal token keygate verified for this request (401 / 403 otherwise).
async fn caller(app: &App, c: &Call) -> Result<KeyRecord, ApiError> {
    let h = |n: &str| {
        c.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    };
    let (Some(key_id), Some(account)) = (h("x-keygate-key-id"), h("x-keygate-account")) else {
        return Err(unauthorized(
            "this endpoint needs a verified key (x-keygate-key-id and x-keygate-account are missing)",
        ));
    };
    let rec = app
        .store
        .key_by_id(key_id)
        .await?
        .filter(|r| r.account == account)
        .ok_or_else(|| unauthorized("the calling key is unknown"))?;
    if rec.state(now_s()) != KeyState::Valid {
        return Err(unauthorized("the calling key is no longer valid"));
    }
    if rec.kind != Kind::Personal {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this endpoint needs a personal access token (POST /v1/auth/login)",
        ));
    }
    Ok(rec)
}

/// The client address the login throttle counts: the peer, or the last hop of the configured
/// forwarding header (the address the trusted proxy saw).
pub fn client_address(app: &App, headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
    if let Some(h) = &app.cfg.client_ip_header {
        if let Some(last) = headers
            .get_all(h.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|v| !v.is_empty())
        {
            return last.chars().take(64).collect();
        }
    }
    peer.map(|p| p.ip().to_string()).unwrap_or_default()
}

/// Why a login failed.
pub enum LoginError {
    Invalid,
    Throttled(i64),
    Busy,
    Store(StoreError),
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> ApiError {
        match e {
            LoginError::Invalid => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid-credentials",
                "the email or password is incorrect",
            ),
            LoginError::Throttled(s) => {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "login-throttled",
                    "too many failed logins; try again later",
                );
                e.headers.push((header::RETRY_AFTER, s.to_string()));
                e
            }
            LoginError::Busy => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "too many logins at once; try again",
                );
                e.headers.push((header::RETRY_AFTER, "1".into()));
                e
            }
            LoginError::Store(e) => e.into(),
        }
    }
}

/// Checks an email and password (throttled per email and per client address, argon2id on a
/// bounded number of threads, the same work for an unknown email). The user on success.
pub async fn check_password(
    app: &App,
    email: &str,
    password: &str,
    client: &str,
) -> Result<User, LoginError> {
    let email = email.to_lowercase();
    let now = now_s();
    let by_email = format!("e:{}", sha256_hex(email.as_bytes()));
    let by_client = format!("c:{client}");
    {
        let mut t = app.throttle.lock().unwrap_or_else(|p| p.into_inner());
        t.check(&by_email, app.cfg.login_failures_per_email, now)
            .and_then(|()| t.check(&by_client, app.cfg.login_failures_per_client, now))
            .map_err(LoginError::Throttled)?;
    }
    let user = app
        .store
        .user_by_email(&email)
        .await
        .map_err(LoginError::Store)?;
    let phc = user
        .as_ref()
        .map_or_else(|| app.dummy_hash.clone(), |u| u.password_hash.clone());
    let permit = tokio::time::timeout(std::time::Duration::from_secs(5), app.hash_slots.acquire())
        .await
        .map_err(|_| LoginError::Busy)?
        .map_err(|_| LoginError::Busy)?;
    let pw = password.to_string();
    let ok = tokio::task::spawn_blocking(move || auth::verify_password(&pw, &phc))
        .await
        .unwrap_or(false);
    drop(permit);
    let account_ok = match &user {
        Some(u) => !app
            .store
            .account(&u.account)
            .await
            .map_err(LoginError::Store)?
            .is_some_and(|a| a.disabled),
        None => false,
    };
    match user {
        Some(u) if ok && !u.disabled && account_ok => Ok(u),
        _ => {
            let mut t = app.throttle.lock().unwrap_or_else(|p| p.into_inner());
            t.fail(&by_email, now);
            t.fail(&by_client, now);
            Err(LoginError::Invalid)
        }
    }
}

async fn account_plan(app: &App, account: &str) -> Result<Option<String>, ApiError> {
    Ok(app.store.account(account).await?.map(|a| a.plan))
}

/// Makes a key with a fresh secret (within the account's bound); the record and the secret.
pub async fn new_key(
    app: &App,
    kind: Kind,
    name: &str,
    account: &str,
    plan: &str,
    user: Option<&str>,
    expires_at: Option<i64>,
) -> Result<(KeyRecord, String), ApiError> {
    let now = now_s();
    if app.store.count_live_keys(account, now).await? >= app.cfg.max_keys_per_account {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too-many-keys",
            format!(
                "the account holds {} keys that work; revoke some first",
                app.cfg.max_keys_per_account
            ),
        ));
    }
    let rec = fresh_record(kind, name, account, plan, user, expires_at)?;
    let (rec, secret) = rec;
    app.store.insert_key(&rec, false).await?;
    Ok((rec, secret))
}

pub fn fresh_record(
    kind: Kind,
    name: &str,
    account: &str,
    plan: &str,
    user: Option<&str>,
    expires_at: Option<i64>,
) -> Result<(KeyRecord, String), ApiError> {
    let internal = |e: String| {
        eprintln!("keyservice: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal-error",
            "no randomness",
        )
    };
    let secret = auth::new_secret(kind).map_err(internal)?;
    let id = auth::new_key_id(kind).map_err(internal)?;
    let rec = KeyRecord {
        subject: user.map_or_else(|| id.clone(), str::to_string),
        id,
        kind,
        name: name.to_string(),
        key_hash: sha256_hex(secret.as_bytes()),
        hint: auth::hint(&secret),
        user: user.map(str::to_string),
        account: account.to_string(),
        plan: plan.to_string(),
        scopes: kind.default_scopes(),
        resources: BTreeMap::new(),
        ratelimit: None,
        created_at: now_s(),
        expires_at,
        revoked_at: None,
        disabled: false,
        replaced_by: None,
        account_disabled: false,
        user_disabled: false,
    };
    Ok((rec, secret))
}

async fn login(app: &App, c: &Call) -> ApiResult {
    let req = parse_object(&c.body, false)?;
    let email = req_str(&req, "email", 320)?;
    let password = req_str(&req, "password", 1024)?;
    let client = client_address(app, &c.headers, c.peer);
    let user = check_password(app, &email, &password, &client).await?;
    let plan = account_plan(app, &user.account)
        .await?
        .unwrap_or_else(|| "free".into());
    let (_, secret) = new_key(
        app,
        Kind::Personal,
        "personal access token",
        &user.account,
        &plan,
        Some(&user.name),
        Some(now_s() + PERSONAL_LIFETIME_S),
    )
    .await?;
    ok_json(
        StatusCode::OK,
        &json!({"success": true,
                "data": {"access_token": secret, "token_type": "Bearer", "expires_in": PERSONAL_LIFETIME_S},
                "message": "Successfully authenticated"}),
    )
}

async fn list_keys(app: &App, c: &Call, kind: Kind) -> ApiResult {
    let me = caller(app, c).await?;
    let user = (kind == Kind::Named)
        .then_some(me.user.as_deref())
        .flatten();
    if kind == Kind::Named && user.is_none() {
        return ok_json(StatusCode::OK, &json!({"success": true, "data": []}));
    }
    let keys = app
        .store
        .list_keys(&KeyFilter {
            account: &me.account,
            kind: Some(kind),
            user,
            include_revoked: false,
            limit: None,
        })
        .await?;
    let now = now_s();
    let data: Vec<Value> = keys
        .iter()
        .map(|k| match kind {
            Kind::Named => json!({"id": k.id, "name": k.name, "user": k.user, "created_at": k.created_at,
                                  "expires_at": k.expires_at, "expired": k.state(now) == KeyState::Expired,
                                  "revoked": false}),
            _ => json!({"id": k.id, "name": k.name, "created_at": k.created_at,
                        "expires_at": k.expires_at, "revoked": false}),
        })
        .collect();
    ok_json(StatusCode::OK, &json!({"success": true, "data": data}))
}

async fn create_business(app: &App, c: &Call) -> ApiResult {
    let me = caller(app, c).await?;
    let name = req_str(&parse_object(&c.body, false)?, "name", 100)?;
    let plan = account_plan(app, &me.account)
        .await?
        .unwrap_or(me.plan.clone());
    let (rec, secret) = new_key(app, Kind::Business, &name, &me.account, &plan, None, None).await?;
    ok_json(
        StatusCode::CREATED,
        &json!({"success": true, "data": {"id": rec.id, "name": rec.name, "key": secret, "created_at": rec.created_at}}),
    )
}

/// A key of `kind` that the caller may manage: the account's business key, or the caller's own
/// named token.
async fn owned(app: &App, me: &KeyRecord, kind: Kind, id: &str) -> Result<KeyRecord, ApiError> {
    let rec = app.store.key_by_id(id).await?;
    match rec {
        Some(r)
            if r.kind == kind
                && r.account == me.account
                && (kind != Kind::Named || r.user == me.user) =>
        {
            Ok(r)
        }
        _ => Err(not_found(match kind {
            Kind::Named => format!("no named token {id} of this user"),
            _ => format!("no business key {id} in this account"),
        })),
    }
}

async fn revoke_one(app: &App, c: &Call, kind: Kind, id: &str) -> ApiResult {
    let me = caller(app, c).await?;
    let rec = owned(app, &me, kind, id).await?;
    app.store.revoke(&rec.id, "revoked", now_s()).await?;
    ok_json(StatusCode::OK, &json!({"success": true}))
}

async fn revoke_all(app: &App, c: &Call, kind: Kind) -> ApiResult {
    let me = caller(app, c).await?;
    let n = app
        .store
        .revoke_all(&me.account, kind, None, now_s())
        .await?;
    ok_json(StatusCode::OK, &json!({"success": true, "revoked": n}))
}

async fn revoke_personal(app: &App, c: &Call) -> ApiResult {
    let me = caller(app, c).await?;
    app.store.revoke(&me.id, "revoked", now_s()).await?;
    ok_json(StatusCode::OK, &json!({"success": true}))
}

async fn create_named(app: &App, c: &Call) -> ApiResult {
    let me = caller(app, c).await?;
    let req = parse_object(&c.body, false)?;
    let name = req_str(&req, "name", 100)?;
    let days = req_int(&req, "lifetime_days", 1, app.cfg.max_named_lifetime_days)?;
    let Some(user) = me.user.clone() else {
        return Err(bad_request("the calling token has no user"));
    };
    let plan = account_plan(app, &me.account)
        .await?
        .unwrap_or(me.plan.clone());
    let (rec, secret) = new_key(
        app,
        Kind::Named,
        &name,
        &me.account,
        &plan,
        Some(&user),
        Some(now_s() + days * DAY_S),
    )
    .await?;
    ok_json(
        StatusCode::CREATED,
        &json!({"success": true, "data": {"id": rec.id, "name": rec.name, "key": secret, "user": rec.user,
                "created_at": rec.created_at, "expires_at": rec.expires_at}}),
    )
}

/// Rotation: a new key for the old one's name, kind, user and lifetime; the old one works until
/// `grace_s` from now (at most `--max-grace-s`; 0 = refused at once).
pub async fn rotate_key(
    app: &App,
    old: &KeyRecord,
    grace_s: i64,
) -> Result<(KeyRecord, String), ApiError> {
    let now = now_s();
    if old.state(now) != KeyState::Valid || old.replaced_by.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not-live",
            "only a key that works and was not rotated already can be regenerated",
        ));
    }
    let lifetime = old.expires_at.map(|e| e - old.created_at);
    let (mut rec, secret) = fresh_record(
        old.kind,
        &old.name,
        &old.account,
        &old.plan,
        old.user.as_deref(),
        lifetime.map(|l| now + l.max(1)),
    )?;
    rec.scopes = old.scopes.clone();
    rec.resources = old.resources.clone();
    rec.ratelimit = old.ratelimit;
    if !app.store.rotate(&old.id, &rec, now + grace_s, now).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not-live",
            "the key was revoked or rotated meanwhile",
        ));
    }
    Ok((rec, secret))
}

async fn rotate(app: &App, c: &Call, kind: Kind, id: &str) -> ApiResult {
    let me = caller(app, c).await?;
    let old = owned(app, &me, kind, id).await?;
    let req = parse_object(&c.body, true)?;
    let grace =
        opt_int(&req, "grace_s", 0, app.cfg.max_grace_s)?.unwrap_or(app.cfg.default_grace_s);
    let (rec, secret) = rotate_key(app, &old, grace).await?;
    ok_json(
        StatusCode::CREATED,
        &json!({"success": true, "data": {"id": rec.id, "name": rec.name, "key": secret, "user": rec.user,
                "created_at": rec.created_at, "expires_at": rec.expires_at,
                "replaces": old.id, "old_key_until": now_s() + grace}}),
    )
}

// --------------------------------------------------------------------------------------------
// Operator administration (--admin-token)
// --------------------------------------------------------------------------------------------

pub fn public(k: &KeyRecord) -> Value {
    json!({"id": k.id, "kind": k.kind.as_str(), "name": k.name, "user": k.user, "subject": k.subject,
           "account": k.account, "plan": k.plan, "scopes": k.scopes, "resources": k.resources,
           "ratelimit": k.ratelimit, "created_at": k.created_at, "expires_at": k.expires_at,
           "revoked": k.revoked_at.is_some(), "disabled": k.disabled})
}

pub fn user_public(u: &User) -> Value {
    json!({"name": u.name, "email": u.email, "account": u.account, "disabled": u.disabled,
           "created_at": u.created_at})
}

/// A key record from an import body: `key` (a secret, stored hashed) or `key_hash` (the hex
/// SHA-256 of one, from another system), and the key's fields. Used by the admin API and the CLI.
pub async fn import_record(app: &App, req: &Map<String, Value>) -> Result<KeyRecord, ApiError> {
    let secret = opt_str(req, "key", 4096)?;
    let given_hash = opt_str(req, "key_hash", 64)?;
    let (key_hash, hint) = match (secret, given_hash) {
        (Some(s), None) => (sha256_hex(s.as_bytes()), String::new()),
        (None, Some(h)) if crate::model::is_hex64(&h) => (h, String::new()),
        (None, Some(_)) => return Err(bad_request("`key_hash` must be 64 lowercase hex digits")),
        (None, None) => return Err(bad_request("`key` (or `key_hash`) is required")),
        (Some(_), Some(_)) => return Err(bad_request("give `key` or `key_hash`, not both")),
    };
    let kind = match req.get("kind") {
        None | Some(Value::Null) => Kind::Business,
        Some(Value::String(s)) => Kind::parse(s)
            .ok_or_else(|| bad_request("`kind` must be one of business, personal, named"))?,
        Some(_) => {
            return Err(bad_request(
                "`kind` must be one of business, personal, named",
            ))
        }
    };
    let id = match opt_str(req, "id", 64)? {
        Some(id) => id,
        None => auth::new_key_id(kind).map_err(|_| bad_request("no randomness"))?,
    };
    if !key_id_ok(&id) {
        return Err(bad_request(
            "`id` may hold only letters, digits, '_', '.' and '-'",
        ));
    }
    let account = req_str(req, "account", 100)?;
    let user = opt_str(req, "user", 100)?;
    if kind == Kind::Business && user.is_some() {
        return Err(bad_request("a business key has no `user`"));
    }
    if kind != Kind::Business && user.is_none() {
        return Err(bad_request(format!(
            "a {} key needs a `user`",
            kind.as_str()
        )));
    }
    let plan = match opt_str(req, "plan", 100)? {
        Some(p) => p,
        None => account_plan(app, &account)
            .await?
            .unwrap_or_else(|| "free".into()),
    };
    let disabled = opt_bool(req, "disabled", false)?;
    let scopes = match req.get("scopes") {
        None | Some(Value::Null) => kind.default_scopes(),
        Some(v) => parse_scopes(v)?,
    };
    let resources = match req.get("resources") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => parse_resources(v)?,
    };
    Ok(KeyRecord {
        name: opt_str(req, "name", 100)?.unwrap_or_else(|| id.clone()),
        subject: opt_str(req, "subject", 200)?
            .or_else(|| user.clone())
            .unwrap_or_else(|| id.clone()),
        id,
        kind,
        key_hash,
        hint,
        user,
        account,
        plan,
        scopes,
        resources,
        ratelimit: parse_ratelimit(req.get("ratelimit"))?,
        created_at: now_s(),
        expires_at: opt_int(req, "expires_at", 0, 1 << 53)?,
        revoked_at: None,
        disabled,
        replaced_by: None,
        account_disabled: false,
        user_disabled: false,
    })
}

async fn admin_create_key(app: &App, c: &Call) -> ApiResult {
    let req = parse_object(&c.body, false)?;
    let rec = import_record(app, &req).await?;
    app.store.insert_key(&rec, false).await?;
    ok_json(StatusCode::CREATED, &json!({"data": public(&rec)}))
}

async fn admin_revoke(app: &App, c: &Call) -> ApiResult {
    let id = req_str(&parse_object(&c.body, false)?, "id", 64)?;
    if app.store.key_by_id(&id).await?.is_none() {
        return Err(not_found(format!("no key {id}")));
    }
    let newly = app.store.revoke(&id, "revoked", now_s()).await?;
    ok_json(StatusCode::OK, &json!({"success": true, "revoked": newly}))
}

async fn admin_disable(app: &App, c: &Call) -> ApiResult {
    let req = parse_object(&c.body, false)?;
    let id = req_str(&req, "id", 64)?;
    let disabled = opt_bool(&req, "disabled", true)?;
    let rec = app
        .store
        .set_key_disabled(&id, disabled, now_s())
        .await?
        .ok_or_else(|| not_found(format!("no key {id}")))?;
    ok_json(
        StatusCode::OK,
        &json!({"success": true, "data": public(&rec)}),
    )
}

/// `POST /admin/update-key` `{"id", "plan"?, "account"?, "subject"?, "ratelimit"?}`: what the
/// key's verdict says from now on (keygate sees it when its cached verdict expires).
async fn admin_update_key(app: &App, c: &Call) -> ApiResult {
    let req = parse_object(&c.body, false)?;
    let id = req_str(&req, "id", 64)?;
    let unknown: Vec<&str> = req
        .keys()
        .map(String::as_str)
        .filter(|k| !["id", "plan", "account", "subject", "ratelimit"].contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(bad_request(format!(
            "unknown members: {}",
            unknown.join(", ")
        )));
    }
    let change = KeyChange {
        plan: opt_str(&req, "plan", 100)?,
        account: opt_str(&req, "account", 100)?,
        subject: opt_str(&req, "subject", 200)?,
        ratelimit: match req.get("ratelimit") {
            None => None,
            Some(v) => Some(parse_ratelimit(Some(v))?),
        },
    };
    let rec = app
        .store
        .update_key(&id, &change)
        .await?
        .ok_or_else(|| not_found(format!("no key {id}")))?;
    ok_json(StatusCode::OK, &json!({"data": public(&rec)}))
}

pub fn name_ok(s: &str) -> bool {
    (1..=100).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'@'))
}

async fn admin_create_account(app: &App, c: &Call) -> ApiResult {
    let req = parse_object(&c.body, false)?;
    let name = req_str(&req, "name", 100)?;
    if !name_ok(&name) {
        return Err(bad_request(
            "`name` may hold only letters, digits, '_', '.', '-' and '@'",
        ));
    }
    let plan = opt_str(&req, "plan", 100)?.unwrap_or_else(|| "free".into());
    let a = Account {
        name,
        plan,
        disabled: false,
        created_at: now_s(),
    };
    if !app.store.create_account(&a).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "that account exists",
        ));
    }
    ok_json(StatusCode::CREATED, &json!({"data": a}))
}

async fn admin_list_accounts(app: &App) -> ApiResult {
    let a = app.store.list_accounts(10_000).await?;
    ok_json(StatusCode::OK, &json!({"data": a}))
}

async fn admin_disable_account(app: &App, c: &Call) -> ApiResult {
    let req = parse_object(&c.body, false)?;
    let name = req_str(&req, "name", 100)?;
    let disabled = opt_bool(&req, "disabled", true)?;
    if !app
        .store
        .set_account_disabled(&name, disabled, now_s())
        .await?
    {
        return Err(not_found(format!("no account {name}")));
    }
    ok_json(StatusCode::OK, &json!({"success": true}))
}

/// Creates a user (argon2id on a blocking thread). Shared by the admin API and the CLI.
pub async fn create_user(
    app: &App,
    name: &str,
    email: &str,
    account: &str,
    password: &str,
) -> Result<User, ApiError> {
    if !name_ok(name) {
        return Err(bad_request(
            "`name` may hold only letters, digits, '_', '.', '-' and '@'",
        ));
    }
    if !email.contains('@') || email.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad_request("`email` must be an email address"));
    }
    if password.chars().count() < 8 {
        return Err(bad_request("`password` must be at least 8 characters"));
    }
    if app.store.account(account).await?.is_none() {
        return Err(bad_request(format!(
            "no account {account}: create it first"
        )));
    }
    let pw = password.to_string();
    let phc = tokio::task::spawn_blocking(move || auth::hash_password(&pw))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|e| {
            eprintln!("keyservice: {e}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal-error",
                "hashing failed",
            )
        })?;
    let u = User {
        name: name.to_string(),
        email: email.to_lowercase(),
        account: account.to_string(),
        password_hash: phc,
        disabled: false,
        created_at: now_s(),
    };
    app.store.create_user(&u).await?;
    Ok(u)
}

async fn admin_create_user(app: &App, c: &Call) -> ApiResult {
    let req = parse_object(&c.body, false)?;
    let u = create_user(
        app,
        &req_str(&req, "name", 100)?,
        &req_str(&req, "email", 320)?,
        &req_str(&req, "account", 100)?,
        &req_str(&req, "password", 1024)?,
    )
    .await?;
    ok_json(StatusCode::CREATED, &json!({"data": user_public(&u)}))
}

async fn admin_list_users(app: &App, c: &Call) -> ApiResult {
    let account = c
        .query
        .split('&')
        .find_map(|kv| kv.strip_prefix("account="))
        .map(str::to_string);
    let users = app.store.list_users(account.as_deref(), 10_000).await?;
    let data: Vec<Value> = users.iter().map(user_public).collect();
    ok_json(StatusCode::OK, &json!({"data": data}))
}

async fn admin_disable_user(app: &App, c: &Call) -> ApiResult {
    let req = parse_object(&c.body, false)?;
    let name = req_str(&req, "name", 100)?;
    let disabled = opt_bool(&req, "disabled", true)?;
    if !app
        .store
        .set_user_disabled(&name, disabled, now_s())
        .await?
    {
        return Err(not_found(format!("no user {name}")));
    }
    ok_json(StatusCode::OK, &json!({"success": true}))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use keygate::contract::parse_verify;
    use keygate::verdict::{Refusal as KgRefusal, Verdict};

    fn rec() -> KeyRecord {
        KeyRecord {
            id: "bk_1".into(),
            kind: Kind::Business,
            name: "n".into(),
            key_hash: sha256_hex(b"s"),
            hint: String::new(),
            user: None,
            subject: "bk_1".into(),
            account: "acme".into(),
            plan: "free".into(),
            scopes: vec!["read".into(), "write".into()],
            resources: BTreeMap::from([("aggregator".into(), vec!["a1".into()])]),
            ratelimit: Some(RateLimit {
                requests: 5,
                window_s: 60,
                burst: 5,
            }),
            created_at: 100,
            expires_at: Some(1_000),
            revoked_at: None,
            disabled: false,
            replaced_by: None,
            account_disabled: false,
            user_disabled: false,
        }
    }

    #[test]
    fn keygate_parses_every_verdict_the_service_writes() {
        let r = rec();
        let a = parse_verify(Some(200), &verdict_json(Some(&r), None, 990)).map_err(|e| e.as_str());
        let Ok(a) = a else {
            panic!("{a:?}");
        };
        let Verdict::Valid(id) = a.verdict else {
            panic!("not valid");
        };
        assert_eq!(
            (id.key_id.as_str(), id.account.as_str(), id.expires_at),
            ("bk_1", "acme", Some(1_000))
        );
        assert_eq!(a.ttl_hint_s, Some(10)); // never cached past the key's expiry
        let gone = parse_verify(Some(200), &verdict_json(Some(&r), None, 1_000)).map(|a| a.verdict);
        assert_eq!(gone, Ok(Verdict::Refused(KgRefusal::Expired)));
        let other_user =
            parse_verify(Some(200), &verdict_json(Some(&r), Some("bob"), 0)).map(|a| a.verdict);
        assert_eq!(other_user, Ok(Verdict::Refused(KgRefusal::Unknown)));
        let mut revoked = r.clone();
        revoked.revoked_at = Some(5);
        revoked.disabled = true;
        let v = parse_verify(Some(200), &verdict_json(Some(&revoked), None, 0)).map(|a| a.verdict);
        assert_eq!(v, Ok(Verdict::Refused(KgRefusal::Revoked)));
        let mut off = r.clone();
        off.account_disabled = true;
        let v = parse_verify(Some(200), &verdict_json(Some(&off), None, 0)).map(|a| a.verdict);
        assert_eq!(v, Ok(Verdict::Refused(KgRefusal::Disabled)));
    }

    #[test]
    fn the_wire_form_is_contract_v1() {
        let mut r = rec();
        r.expires_at = None;
        let v: Value = serde_json::from_slice(&verdict_json(Some(&r), None, 0)).unwrap_or_default();
        assert_eq!(
            v,
            json!({"contract": 1, "valid": true, "code": "VALID", "key_id": "bk_1", "subject": "bk_1",
                   "account": "acme", "plan": "free", "scopes": ["read", "write"], "expires_at": null,
                   "ratelimit": {"requests": 5, "window_s": 60, "burst": 5},
                   "resources": {"aggregator": ["a1"]}, "cache_ttl_s": 60})
        );
        let v: Value = serde_json::from_slice(&verdict_json(None, None, 0)).unwrap_or_default();
        assert_eq!(
            v,
            json!({"contract": 1, "valid": false, "code": "NOT_FOUND", "cache_ttl_s": 10})
        );
    }

    #[test]
    fn query_ints() {
        assert_eq!(query_int("", "since", -1, -1, 9).ok(), Some(-1));
        assert_eq!(query_int("since=5&limit=2", "limit", 0, 1, 9).ok(), Some(2));
        for bad in [
            "since=",
            "since=abc",
            "since=-2",
            "since=1.5",
            "since=99999999999999999999",
            "since=+1",
        ] {
            assert!(query_int(bad, "since", -1, -1, 1 << 62).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(routes_for("/v1/tokens/business/bk_1").len(), 1);
        assert!(routes_for("/v1/tokens/business/b k").is_empty());
        assert_eq!(
            routes_for("/v1/tokens/named/nk_1/rotate")[0].1,
            Action::RotateNamed
        );
        assert!(routes_for("/nowhere").is_empty());
    }
}
