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
use crate::history;
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

// --------------------------------------------------------------------------------------------
// Request history and usage
// --------------------------------------------------------------------------------------------

/// Keys an account used, as the history saw them (the usage page's bound).
const ACTIVITY_LIMIT: usize = 10_000;
/// Requests per page of a key's history.
const HISTORY_PAGE: usize = 100;
/// Days the usage charts show.
const CHART_DAYS: i64 = 30;

fn when_ms(ms: i64) -> String {
    when(ms.div_euclid(1000))
}

/// `2026-12-06 21:30:05.123`
fn when_precise(ms: i64) -> String {
    let s = ms.div_euclid(1000);
    let base = when(s);
    let date_hm = base.trim_end_matches(" UTC");
    format!(
        "{date_hm}:{:02}.{:03}",
        s.rem_euclid(60),
        ms.rem_euclid(1000)
    )
}

/// A key whose history the signed-in user may see: a business key of their account, their own
/// named or personal token, or a key the store does not hold (one of keygate's configuration)
/// that the history recorded under their account.
struct Visible {
    id: String,
    name: String,
}

async fn visible(app: &App, s: &Signed, id: &str) -> Result<Option<Visible>, ()> {
    match app.store.key_by_id(id).await.map_err(|_| ())? {
        Some(k) => {
            let ok = k.account == s.user.account
                && match k.kind {
                    Kind::Business => true,
                    Kind::Named | Kind::Personal => k.user.as_deref() == Some(s.user.name.as_str()),
                };
            Ok(ok.then(|| Visible {
                id: k.id.clone(),
                name: k.name.clone(),
            }))
        }
        None => {
            let used = app
                .store
                .key_activity(&s.user.account, ACTIVITY_LIMIT)
                .await
                .map_err(|_| ())?;
            Ok(used.iter().any(|a| a.key_id == id).then(|| Visible {
                id: id.to_string(),
                name: id.to_string(),
            }))
        }
    }
}

/// Every key of the account the user may see, with their last use: the store's (business keys,
/// their own tokens) and the ones only the history knows.
async fn visible_keys(app: &App, s: &Signed) -> Result<Vec<(Visible, Option<i64>)>, ()> {
    let used = app
        .store
        .key_activity(&s.user.account, ACTIVITY_LIMIT)
        .await
        .map_err(|_| ())?;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (kind, user) in [
        (Kind::Business, None),
        (Kind::Named, Some(s.user.name.as_str())),
        (Kind::Personal, Some(s.user.name.as_str())),
    ] {
        let keys = app
            .store
            .list_keys(&KeyFilter {
                account: &s.user.account,
                kind: Some(kind),
                user,
                include_revoked: true,
                limit: Some(LIST_LIMIT),
            })
            .await
            .map_err(|_| ())?;
        for k in keys {
            seen.insert(k.id.clone());
            let last = used
                .iter()
                .find(|a| a.key_id == k.id)
                .map(|a| a.last_used_ms);
            out.push((
                Visible {
                    name: if k.kind == Kind::Personal {
                        format!("{} (login token)", k.hint)
                    } else {
                        k.name.clone()
                    },
                    id: k.id,
                },
                last,
            ));
        }
    }
    for a in &used {
        if seen.contains(&a.key_id) {
            continue;
        }
        // in the history under this account: a key the store does not hold, or one of another
        // user (left out) or moved to another account (left out)
        if app
            .store
            .key_by_id(&a.key_id)
            .await
            .map_err(|_| ())?
            .is_none()
        {
            out.push((
                Visible {
                    id: a.key_id.clone(),
                    name: a.key_id.clone(),
                },
                Some(a.last_used_ms),
            ));
        }
    }
    Ok(out)
}

fn today() -> i64 {
    history::day_of(now_s().saturating_mul(1000))
}

struct UsageKeyRow {
    id: String,
    name: String,
    last_used: String,
    total: u64,
    counts: [u64; 5],
}

#[derive(Template)]
#[template(path = "usage.html")]
struct UsagePage<'a> {
    product: &'a str,
    who: Option<String>,
    csrf: String,
    account: String,
    from: String,
    to: String,
    chart: String,
    classes: [&'static str; 5],
    keys: Vec<UsageKeyRow>,
}

fn unavailable() -> Response {
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "the database failed; try again",
    )
}

async fn usage_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(s) = signed_in(&app, &headers).await else {
        return see_other("/dashboard/login");
    };
    let Ok(keys) = visible_keys(&app, &s).await else {
        return unavailable();
    };
    let (from, to) = (today() - CHART_DAYS + 1, today());
    let ids: Vec<String> = keys.iter().map(|(v, _)| v.id.clone()).collect();
    let Ok(rows) = app.store.usage(UsageOf::Keys(&ids), from, to).await else {
        return unavailable();
    };
    let per_key = |id: &str| {
        let mut c = [0u64; 5];
        for r in rows.iter().filter(|r| r.key_id == id) {
            for (a, b) in c.iter_mut().zip(r.counts.counts) {
                *a += b;
            }
        }
        c
    };
    let days: Vec<history::DayCounts> = rows.iter().map(|r| r.counts).collect();
    page(
        StatusCode::OK,
        UsagePage {
            product: &app.cfg.product_name,
            who: who(&s.user),
            csrf: s.session.csrf.clone(),
            account: s.user.account.clone(),
            from: history::date(from),
            to: history::date(to),
            chart: history::chart_svg(&history::fill_days(&days, from, to)),
            classes: history::CLASSES,
            keys: keys
                .iter()
                .map(|(v, last)| {
                    let counts = per_key(&v.id);
                    UsageKeyRow {
                        id: v.id.clone(),
                        name: v.name.clone(),
                        last_used: last.map_or_else(|| "never".into(), when_ms),
                        total: counts.iter().sum(),
                        counts,
                    }
                })
                .collect(),
        },
    )
}

struct RequestRow {
    id: i64,
    time: String,
    method: String,
    path: String,
    status: String,
    duration: String,
    upstream: String,
    bytes_in: i64,
    bytes_out: i64,
    decision: String,
    request_id: String,
}

fn request_row(r: &HistoryRow) -> RequestRow {
    let ms = |v: Option<i64>| v.map_or_else(|| "-".into(), |v| v.to_string());
    RequestRow {
        id: r.id,
        time: when_precise(r.record.at_ms),
        method: r.record.method.clone(),
        path: r.record.path.clone(),
        status: if r.record.status == 0 {
            "-".into()
        } else {
            r.record.status.to_string()
        },
        duration: ms(r.record.duration_ms),
        upstream: ms(r.record.upstream_ms),
        bytes_in: r.record.bytes_in,
        bytes_out: r.record.bytes_out,
        decision: r.record.decision.clone(),
        request_id: r.record.request_id.clone(),
    }
}

#[derive(Template)]
#[template(path = "history.html")]
struct HistoryPage<'a> {
    product: &'a str,
    who: Option<String>,
    csrf: String,
    id: String,
    name: String,
    last_used: String,
    per_key: usize,
    days: i64,
    chart: String,
    classes: [&'static str; 5],
    status: String,
    code: String,
    from: String,
    to: String,
    error: Option<String>,
    rows: Vec<RequestRow>,
    next: Option<String>,
}

/// The history page's filters, from its query string.
#[derive(Debug, Default, PartialEq, Eq)]
struct Filters {
    status: String,
    code: String,
    from: String,
    to: String,
    /// The next page starts after this row: `AT_MS.ID`.
    before: Option<(i64, i64)>,
}

fn filters(query: Option<&str>) -> Filters {
    let mut f = Filters::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let v: String = v.chars().take(40).collect();
        match &*k {
            "status" => f.status = v,
            "code" => f.code = v.trim().to_string(),
            "from" => f.from = v,
            "to" => f.to = v,
            "before" => {
                f.before = v
                    .split_once('.')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            }
            _ => {}
        }
    }
    f
}

/// The status filter and the time range (Unix ms) the filters name, or what is wrong.
fn resolve(f: &Filters, today: i64, oldest_ms: i64) -> Result<(StatusFilter, i64, i64), String> {
    let status = if !f.code.is_empty() {
        match f.code.parse::<u16>() {
            Ok(c) if (100..=599).contains(&c) => StatusFilter::Range(c, c),
            _ => return Err("a status code is three digits, 100 to 599".into()),
        }
    } else {
        match f.status.as_str() {
            "" => StatusFilter::Any,
            "other" => StatusFilter::Other,
            c => match history::class_range(c) {
                Some((lo, hi)) => StatusFilter::Range(lo, hi),
                None => return Err("unknown status class".into()),
            },
        }
    };
    let day = |s: &str, default: i64| {
        if s.is_empty() {
            Ok(default)
        } else {
            history::parse_date(s).ok_or_else(|| "dates are YYYY-MM-DD".to_string())
        }
    };
    let from = day(&f.from, 0)?;
    let to = day(&f.to, today)?;
    if from > to {
        return Err("the range starts after it ends".into());
    }
    let from_ms = from.saturating_mul(86_400_000).max(oldest_ms);
    let to_ms = (to + 1).saturating_mul(86_400_000);
    Ok((status, from_ms, to_ms))
}

async fn history_page(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(s) = signed_in(&app, &headers).await else {
        return see_other("/dashboard/login");
    };
    let v = match visible(&app, &s, &id).await {
        Ok(Some(v)) => v,
        Ok(None) => return plain(StatusCode::NOT_FOUND, "no such key"),
        Err(()) => return unavailable(),
    };
    let f = filters(query.as_deref());
    let now_ms = now_s().saturating_mul(1000);
    let oldest_ms = now_ms - app.cfg.history_days * 86_400_000;
    let (mut rows, mut error) = (Vec::new(), None);
    let mut next = None;
    match resolve(&f, today(), oldest_ms) {
        Err(e) => error = Some(e),
        Ok((status, from_ms, to_ms)) => {
            let q = HistoryQuery {
                key_id: &v.id,
                status,
                from_ms,
                to_ms,
                before: f.before,
                limit: HISTORY_PAGE,
            };
            let Ok(found) = app.store.history(&q).await else {
                return unavailable();
            };
            if found.len() == HISTORY_PAGE {
                if let Some(last) = found.last() {
                    let qs: String = form_urlencoded::Serializer::new(String::new())
                        .append_pair("status", &f.status)
                        .append_pair("code", &f.code)
                        .append_pair("from", &f.from)
                        .append_pair("to", &f.to)
                        .append_pair("before", &format!("{}.{}", last.record.at_ms, last.id))
                        .finish();
                    next = Some(format!("/dashboard/keys/{}/history?{qs}", v.id));
                }
            }
            rows = found.iter().map(request_row).collect();
        }
    }
    let (from, to) = (today() - CHART_DAYS + 1, today());
    let ids = [v.id.clone()];
    let Ok(usage) = app.store.usage(UsageOf::Keys(&ids), from, to).await else {
        return unavailable();
    };
    let days: Vec<history::DayCounts> = usage.iter().map(|r| r.counts).collect();
    let last_used = app
        .store
        .key_activity(&s.user.account, ACTIVITY_LIMIT)
        .await
        .unwrap_or_default()
        .iter()
        .find(|a| a.key_id == v.id)
        .map_or_else(|| "never".into(), |a| when_ms(a.last_used_ms));
    page(
        StatusCode::OK,
        HistoryPage {
            product: &app.cfg.product_name,
            who: who(&s.user),
            csrf: s.session.csrf.clone(),
            id: v.id,
            name: v.name,
            last_used,
            per_key: app.cfg.history_per_key,
            days: app.cfg.history_days,
            chart: history::chart_svg(&history::fill_days(&days, from, to)),
            classes: history::CLASSES,
            status: f.status,
            code: f.code,
            from: f.from,
            to: f.to,
            error,
            rows,
            next,
        },
    )
}

struct BodyView {
    title: &'static str,
    dom: &'static str,
    content_type: String,
    bytes: Option<u64>,
    text: String,
    truncated: bool,
    omitted: Option<String>,
}

#[derive(Template)]
#[template(path = "request.html")]
struct RequestPage<'a> {
    product: &'a str,
    who: Option<String>,
    csrf: String,
    id: String,
    name: String,
    r: RequestRow,
    bodies: Vec<BodyView>,
}

async fn request_page(
    State(app): State<Arc<App>>,
    Path((id, rid)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Response {
    let Some(s) = signed_in(&app, &headers).await else {
        return see_other("/dashboard/login");
    };
    let v = match visible(&app, &s, &id).await {
        Ok(Some(v)) => v,
        Ok(None) => return plain(StatusCode::NOT_FOUND, "no such key"),
        Err(()) => return unavailable(),
    };
    let row = match app.store.history_entry(&v.id, rid).await {
        Ok(Some(r)) => r,
        Ok(None) => return plain(StatusCode::NOT_FOUND, "no such request"),
        Err(_) => return unavailable(),
    };
    let view = |title, dom, e: &Option<history::Excerpt>| {
        e.as_ref().map(|e| BodyView {
            title,
            dom,
            content_type: if e.content_type.is_empty() {
                "no content type".into()
            } else {
                e.content_type.clone()
            },
            bytes: e.bytes,
            text: e.text.clone(),
            truncated: e.truncated,
            omitted: e.omitted.clone(),
        })
    };
    let bodies = [
        view("Request body", "req-body", &row.record.req_body),
        view("Response body", "resp-body", &row.record.resp_body),
    ]
    .into_iter()
    .flatten()
    .collect();
    page(
        StatusCode::OK,
        RequestPage {
            product: &app.cfg.product_name,
            who: who(&s.user),
            csrf: s.session.csrf.clone(),
            id: v.id,
            name: v.name,
            r: request_row(&row),
            bodies,
        },
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn history_filters() {
        let f = filters(Some(
            "status=4xx&from=2026-12-01&to=2026-12-06&before=1796592605123.77&x=1",
        ));
        assert_eq!(
            (f.status.as_str(), f.from.as_str(), f.to.as_str(), f.before),
            (
                "4xx",
                "2026-12-01",
                "2026-12-06",
                Some((1_796_592_605_123, 77))
            )
        );
        let day = history::parse_date("2026-12-06").unwrap();
        let (st, from, to) = resolve(&f, day, 0).unwrap();
        assert_eq!(st, StatusFilter::Range(400, 499));
        assert_eq!(to - from, 6 * 86_400_000);
        let code = Filters {
            code: "404".into(),
            status: "2xx".into(),
            ..Filters::default()
        };
        assert_eq!(
            resolve(&code, day, 0).unwrap().0,
            StatusFilter::Range(404, 404)
        );
        let other = Filters {
            status: "other".into(),
            ..Filters::default()
        };
        assert_eq!(resolve(&other, day, 0).unwrap().0, StatusFilter::Other);
        // never older than the history keeps
        assert_eq!(resolve(&other, day, 123).unwrap().1, 123);
        for bad in [
            Filters {
                code: "99".into(),
                ..Filters::default()
            },
            Filters {
                code: "abc".into(),
                ..Filters::default()
            },
            Filters {
                status: "9xx".into(),
                ..Filters::default()
            },
            Filters {
                from: "2026-13-01".into(),
                ..Filters::default()
            },
            Filters {
                from: "2026-12-07".into(),
                to: "2026-12-06".into(),
                ..Filters::default()
            },
        ] {
            assert!(resolve(&bad, day, 0).is_err(), "{bad:?}");
        }
        assert_eq!(when_precise(1_796_592_605_123), "2026-12-06 21:30:05.123");
    }

    #[test]
    fn dates() {
        assert_eq!(when(0), "1970-01-01 00:00 UTC");
        assert_eq!(when(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(when(1_796_592_600), "2026-12-06 21:30 UTC");
    }

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8081"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8081"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }

    #[test]
    fn a_cookie_sent_twice_is_no_cookie() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; ks_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, "ks_session").as_deref(), Some("abc"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("ks_session=planted"),
        );
        assert_eq!(cookie(&h, "ks_session"), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("ks_session=abc; ks_session=planted"),
        );
        assert_eq!(cookie(&h, "ks_session"), None);
        assert_eq!(cookie(&h, "other"), None);
    }

    #[test]
    fn grace_labels() {
        assert_eq!(grace_label(86_400), "1 day");
        assert_eq!(grace_label(7 * 86_400), "7 days");
        assert_eq!(grace_label(3_600), "1 hour");
        assert_eq!(grace_label(0), "no longer (revoke now)");
    }
}
