//! The dashboard: server-rendered pages (askama templates, HTML-escaped by default) where the
//! API's customers log in, list their account's keys, generate one (shown once, with a copy
//! button), regenerate it with a grace period, revoke it, and manage their personal access
//! tokens for Basic.
//!
//! Web security: sessions are random 256-bit ids kept as SHA-256, in an `HttpOnly;
//! SameSite=Strict` cookie, issued anew at every login (no fixation) and dropped at logout; every
//! form carries the session's CSRF token and every POST must come from this origin (`Origin`
//! checked when the browser sends it); a CSP allows only this origin's script and style (no
//! inline script); every page is `no-store`; logins go through the same throttle and argon2id
//! check as the API.

use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Form, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use crate::api::{self, LoginError};
use crate::app::App;
use crate::auth;
use crate::model::{now_s, sha256_hex, KeyRecord, Kind, Session, State as KeyState, User};
use crate::store::{HistoryQuery, HistoryRow, KeyFilter, StatusFilter, UsageOf};

const SESSION_COOKIE: &str = "ks_session";
const LOGIN_COOKIE: &str = "ks_login";
/// Sessions one user may hold at once (older ones end).
const SESSIONS_PER_USER: usize = 10;
/// Keys shown per table.
const LIST_LIMIT: usize = 200;

const CSS: &str = include_str!("../static/app.css");
const JS: &str = include_str!("../static/app.js");

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/dashboard", get(index))
        .route("/dashboard/login", get(login_page).post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/keys", post(create))
        .route("/dashboard/keys/{id}/rotate", post(rotate))
        .route("/dashboard/keys/{id}/revoke", post(revoke))
        .route("/dashboard/usage", get(usage_page))
        .route("/dashboard/keys/{id}/history", get(history_page))
        .route("/dashboard/keys/{id}/history/{rid}", get(request_page))
        .route(
            "/dashboard/static/app.css",
            get(|| async { asset(CSS, "text/css") }),
        )
        .route(
            "/dashboard/static/app.js",
            get(|| async { asset(JS, "text/javascript") }),
        )
        .layer(DefaultBodyLimit::max(16 * 1024))
}

// --------------------------------------------------------------------------------------------
// Responses
// --------------------------------------------------------------------------------------------

fn secure_headers(r: &mut Response) {
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    // same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on its own POSTs
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::CACHE_CONTROL, "no-store");
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    secure_headers(&mut r);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    r
}

fn page(status: StatusCode, t: impl Template) -> Response {
    match t.render() {
        Ok(html) => {
            let mut r = (status, html).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            secure_headers(&mut r);
            r
        }
        Err(e) => {
            eprintln!("keyservice: template: {e}");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut r = (status, text).into_response();
    secure_headers(&mut r);
    r
}

fn see_other(to: &'static str) -> Response {
    let mut r = Redirect::to(to).into_response();
    secure_headers(&mut r);
    r
}

fn set_cookie(app: &App, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if app.cfg.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let v = format!(
        "{name}={value}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The value of cookie `name`, or `None` when it is absent or sent more than once: a second
/// cookie of that name (planted for a parent domain or another path) makes the request
/// ambiguous, and an ambiguous session is no session.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string());
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// A POST from another origin is refused whatever it carries (browsers send `Origin` on POST).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // not a browser's cross-site form (they all send Origin on POST)
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| !host.is_empty() && o == host)
}

fn tokens_equal(a: &str, b: &str) -> bool {
    // compare digests: timing says nothing about the token
    !a.is_empty() && sha256_hex(a.as_bytes()) == sha256_hex(b.as_bytes())
}

/// `2026-12-06 21:30 UTC` (civil date from unix seconds).
pub fn when(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

// --------------------------------------------------------------------------------------------
// Sessions
// --------------------------------------------------------------------------------------------

struct Signed {
    session: Session,
    user: User,
}

/// The signed-in user, or `None` (no cookie, unknown or expired session, user or account
/// disabled).
async fn signed_in(app: &App, headers: &HeaderMap) -> Option<Signed> {
    let id = cookie(headers, SESSION_COOKIE)?;
    if id.len() != 64 {
        return None;
    }
    let session = app
        .store
        .session(&sha256_hex(id.as_bytes()), now_s())
        .await
        .ok()??;
    let user = app.store.user_by_name(&session.user).await.ok()??;
    let account = app.store.account(&user.account).await.ok()?;
    if user.disabled || account.is_some_and(|a| a.disabled) {
        return None;
    }
    Some(Signed { session, user })
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: String,
}

/// A state-changing request: same origin, a live session, its CSRF token.
async fn guarded(app: &App, headers: &HeaderMap, csrf: &str) -> Result<Signed, Response> {
    if !same_origin(headers) {
        return Err(plain(StatusCode::FORBIDDEN, "cross-origin request refused"));
    }
    let Some(s) = signed_in(app, headers).await else {
        return Err(see_other("/dashboard/login"));
    };
    if !tokens_equal(csrf, &s.session.csrf) {
        return Err(plain(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong",
        ));
    }
    Ok(s)
}

// --------------------------------------------------------------------------------------------
// Pages
// --------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    product: &'a str,
    who: Option<String>,
    csrf: String,
    error: Option<String>,
    key_label: &'a str,
    pat_label: &'a str,
}

struct Row {
    id: String,
    name: String,
    hint: String,
    created: String,
    expires: String,
    state: String,
    live: bool,
    last_used: String,
}

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysPage<'a> {
    product: &'a str,
    who: Option<String>,
    csrf: String,
    account: String,
    user: String,
    api_url: &'a str,
    key_label: &'a str,
    key_label_title: String,
    pat_label: &'a str,
    business: Vec<Row>,
    named: Vec<Row>,
    graces: Vec<(i64, String)>,
    default_grace: i64,
    lifetimes: Vec<i64>,
    max_days: i64,
}

#[derive(Template)]
#[template(path = "secret.html")]
struct SecretPage<'a> {
    product: &'a str,
    who: Option<String>,
    csrf: String,
    label: &'a str,
    name: String,
    secret: String,
    old_until: Option<String>,
    basic_user: Option<String>,
    api_url: &'a str,
}

fn title_case(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn who(u: &User) -> Option<String> {
    Some(format!("{} ({})", u.email, u.account))
}

fn row(k: &KeyRecord, now: i64) -> Row {
    let state = k.state(now);
    let label = match (state, &k.replaced_by) {
        (KeyState::Valid, Some(_)) => "replaced: works until it expires".to_string(),
        (KeyState::Valid, None) => "active".to_string(),
        (KeyState::Revoked, Some(_)) => "replaced".to_string(),
        (s, _) => s.code().to_lowercase(),
    };
    Row {
        id: k.id.clone(),
        name: k.name.clone(),
        hint: if k.hint.is_empty() {
            "(imported)".into()
        } else {
            k.hint.clone()
        },
        created: when(k.created_at),
        expires: k.expires_at.map_or_else(|| "never".into(), when),
        state: label,
        live: state == KeyState::Valid && k.replaced_by.is_none(),
        last_used: "never".into(),
    }
}

fn grace_label(s: i64) -> String {
    match s {
        0 => "no longer (revoke now)".into(),
        s if s % 86_400 == 0 => format!("{} day{}", s / 86_400, if s == 86_400 { "" } else { "s" }),
        s if s % 3_600 == 0 => format!("{} hour{}", s / 3_600, if s == 3_600 { "" } else { "s" }),
        s => format!("{s} seconds"),
    }
}

async fn index(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(s) = signed_in(&app, &headers).await else {
        return see_other("/dashboard/login");
    };
    let now = now_s();
    let list = |kind, user| KeyFilter {
        account: &s.user.account,
        kind: Some(kind),
        user,
        include_revoked: true,
        limit: Some(LIST_LIMIT),
    };
    let business = app.store.list_keys(&list(Kind::Business, None)).await;
    let named = app
        .store
        .list_keys(&list(Kind::Named, Some(&s.user.name)))
        .await;
    let (Ok(business), Ok(named)) = (business, named) else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database failed; try again",
        );
    };
    let used = app
        .store
        .key_activity(&s.user.account, ACTIVITY_LIMIT)
        .await
        .unwrap_or_default();
    let last_used = |mut r: Row| {
        if let Some(a) = used.iter().find(|a| a.key_id == r.id) {
            r.last_used = when_ms(a.last_used_ms);
        }
        r
    };
    let cfg = &app.cfg;
    let mut graces: Vec<i64> = vec![0, 3_600, 86_400, 7 * 86_400, cfg.default_grace_s];
    graces.retain(|g| *g <= cfg.max_grace_s);
    graces.sort_unstable();
    graces.dedup();
    let lifetimes = [30, 60, 90, 180, 365]
        .into_iter()
        .filter(|d| *d <= cfg.max_named_lifetime_days)
        .collect();
    page(
        StatusCode::OK,
        KeysPage {
            product: &cfg.product_name,
            who: who(&s.user),
            csrf: s.session.csrf.clone(),
            account: s.user.account.clone(),
            user: s.user.name.clone(),
            api_url: &cfg.api_url,
            key_label: &cfg.key_label,
            key_label_title: title_case(&cfg.key_label),
            pat_label: &cfg.pat_label,
            business: business.iter().map(|k| last_used(row(k, now))).collect(),
            named: named.iter().map(|k| last_used(row(k, now))).collect(),
            graces: graces.into_iter().map(|g| (g, grace_label(g))).collect(),
            default_grace: cfg.default_grace_s,
            lifetimes,
            max_days: cfg.max_named_lifetime_days,
        },
    )
}

fn login_form(app: &App, error: Option<String>, status: StatusCode) -> Response {
    // a pre-session CSRF token, double-submitted (cookie + form field)
    let Ok(csrf) = auth::token() else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
    };
    let mut r = page(
        status,
        LoginPage {
            product: &app.cfg.product_name,
            who: None,
            csrf: csrf.clone(),
            error,
            key_label: &app.cfg.key_label,
            pat_label: &app.cfg.pat_label,
        },
    );
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(app, LOGIN_COOKIE, &csrf, 3_600),
    );
    r
}

async fn login_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if signed_in(&app, &headers).await.is_some() {
        return see_other("/dashboard");
    }
    login_form(&app, None, StatusCode::OK)
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: String,
    email: String,
    password: String,
}

async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return plain(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    let pre = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !tokens_equal(&f.csrf, &pre) {
        return login_form(
            &app,
            Some("Your login form expired; please try again.".into()),
            StatusCode::FORBIDDEN,
        );
    }
    if f.email.len() > 320 || f.password.len() > 1024 {
        return login_form(
            &app,
            Some("The email or password is incorrect.".into()),
            StatusCode::UNAUTHORIZED,
        );
    }
    let client = api::client_address(&app, &headers, Some(peer));
    let user = match api::check_password(&app, &f.email, &f.password, &client).await {
        Ok(u) => u,
        Err(LoginError::Invalid) => {
            return login_form(
                &app,
                Some("The email or password is incorrect.".into()),
                StatusCode::UNAUTHORIZED,
            )
        }
        Err(LoginError::Throttled(s)) => {
            let mut r = login_form(
                &app,
                Some(format!("Too many failed logins; try again in {s} seconds.")),
                StatusCode::TOO_MANY_REQUESTS,
            );
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        Err(LoginError::Busy | LoginError::Store(_)) => {
            return login_form(
                &app,
                Some("Please try again.".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    };
    // a fresh session id at every login: a session id known before it (fixation) is worthless
    let (Ok(id), Ok(csrf)) = (auth::token(), auth::token()) else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
    };
    let now = now_s();
    if let Some(old) = cookie(&headers, SESSION_COOKIE) {
        let _ = app.store.delete_session(&sha256_hex(old.as_bytes())).await;
    }
    let s = Session {
        id_hash: sha256_hex(id.as_bytes()),
        user: user.name.clone(),
        csrf,
        created_at: now,
        expires_at: now + app.cfg.session_ttl_s,
    };
    if app
        .store
        .create_session(&s, SESSIONS_PER_USER)
        .await
        .is_err()
    {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database failed; try again",
        );
    }
    let mut r = see_other("/dashboard");
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&app, SESSION_COOKIE, &id, app.cfg.session_ttl_s),
    );
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&app, LOGIN_COOKIE, "", 0));
    r
}

async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let s = match guarded(&app, &headers, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let _ = app.store.delete_session(&s.session.id_hash).await;
    let mut r = see_other("/dashboard/login");
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&app, SESSION_COOKIE, "", 0));
    r
}

#[derive(Deserialize)]
struct CreateForm {
    csrf: String,
    kind: String,
    name: String,
    lifetime_days: i64,
}

fn secret_page(
    app: &App,
    s: &Signed,
    rec: &KeyRecord,
    secret: String,
    old_until: Option<i64>,
) -> Response {
    let label = if rec.kind == Kind::Named {
        &app.cfg.pat_label
    } else {
        &app.cfg.key_label
    };
    page(
        StatusCode::OK,
        SecretPage {
            product: &app.cfg.product_name,
            who: who(&s.user),
            csrf: s.session.csrf.clone(),
            label,
            name: rec.name.clone(),
            secret,
            old_until: old_until.map(when),
            basic_user: rec.user.clone().filter(|_| rec.kind == Kind::Named),
            api_url: &app.cfg.api_url,
        },
    )
}

fn bad(text: &'static str) -> Response {
    plain(StatusCode::BAD_REQUEST, text)
}

async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): Form<CreateForm>,
) -> Response {
    let s = match guarded(&app, &headers, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let name = f.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return bad("a name of 1 to 100 characters, please");
    }
    let max = app.cfg.max_named_lifetime_days;
    let (kind, user, expires_at) = match f.kind.as_str() {
        "business" if (0..=3650).contains(&f.lifetime_days) => (
            Kind::Business,
            None,
            (f.lifetime_days > 0).then(|| now_s() + f.lifetime_days * api::DAY_S),
        ),
        "named" if (1..=max).contains(&f.lifetime_days) => (
            Kind::Named,
            Some(s.user.name.as_str()),
            Some(now_s() + f.lifetime_days * api::DAY_S),
        ),
        "business" | "named" => return bad("that lifetime is out of bounds"),
        _ => return bad("unknown kind of key"),
    };
    let plan = match app.store.account(&s.user.account).await {
        Ok(a) => a.map_or_else(|| "free".to_string(), |a| a.plan),
        Err(_) => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database failed; try again",
            )
        }
    };
    match api::new_key(&app, kind, name, &s.user.account, &plan, user, expires_at).await {
        Ok((rec, secret)) => secret_page(&app, &s, &rec, secret, None),
        Err(e) if e.status == StatusCode::CONFLICT => plain(
            StatusCode::CONFLICT,
            "this account holds as many keys as it may; revoke some first",
        ),
        Err(_) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the key could not be made; try again",
        ),
    }
}

/// A key the signed-in user may manage: a business key of their account, or their own named
/// token.
async fn mine(app: &App, s: &Signed, id: &str) -> Option<KeyRecord> {
    let k = app.store.key_by_id(id).await.ok()??;
    let ok = k.account == s.user.account
        && match k.kind {
            Kind::Business => true,
            Kind::Named => k.user.as_deref() == Some(s.user.name.as_str()),
            Kind::Personal => false,
        };
    ok.then_some(k)
}

#[derive(Deserialize)]
struct RotateForm {
    csrf: String,
    grace_s: i64,
}

async fn rotate(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<RotateForm>,
) -> Response {
    let s = match guarded(&app, &headers, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !(0..=app.cfg.max_grace_s).contains(&f.grace_s) {
        return bad("that grace period is out of bounds");
    }
    let Some(old) = mine(&app, &s, &id).await else {
        return plain(StatusCode::NOT_FOUND, "no such key");
    };
    match api::rotate_key(&app, &old, f.grace_s).await {
        Ok((rec, secret)) => {
            let until = (f.grace_s > 0).then(|| now_s() + f.grace_s);
            secret_page(&app, &s, &rec, secret, until)
        }
        Err(e) if e.status == StatusCode::CONFLICT => plain(
            StatusCode::CONFLICT,
            "only a key that works and was not regenerated already can be regenerated",
        ),
        Err(_) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the key could not be regenerated; try again",
        ),
    }
}

async fn revoke(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let s = match guarded(&app, &headers, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(k) = mine(&app, &s, &id).await else {
        return plain(StatusCode::NOT_FOUND, "no such key");
    };
    match app.store.revoke(&k.id, "revoked", now_s()).await {
        Ok(_) => see_other("/dashboard"),
        Err(_) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the key could not be revoked; try again",
        ),
    }
}

mod usage;
use usage::*;
