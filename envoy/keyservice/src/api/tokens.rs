//! Event Staff's token API: login, business keys, personal and named tokens, rotation.

use super::*;

pub(super) fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
}

/// The live personal token keygate verified for this request (401 / 403 otherwise).
pub(super) async fn caller(app: &App, c: &Call) -> Result<KeyRecord, ApiError> {
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

pub(super) async fn account_plan(app: &App, account: &str) -> Result<Option<String>, ApiError> {
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

pub(super) async fn login(app: &App, c: &Call) -> ApiResult {
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

pub(super) async fn list_keys(app: &App, c: &Call, kind: Kind) -> ApiResult {
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

pub(super) async fn create_business(app: &App, c: &Call) -> ApiResult {
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
pub(super) async fn owned(
    app: &App,
    me: &KeyRecord,
    kind: Kind,
    id: &str,
) -> Result<KeyRecord, ApiError> {
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

pub(super) async fn revoke_one(app: &App, c: &Call, kind: Kind, id: &str) -> ApiResult {
    let me = caller(app, c).await?;
    let rec = owned(app, &me, kind, id).await?;
    app.store.revoke(&rec.id, "revoked", now_s()).await?;
    ok_json(StatusCode::OK, &json!({"success": true}))
}

pub(super) async fn revoke_all(app: &App, c: &Call, kind: Kind) -> ApiResult {
    let me = caller(app, c).await?;
    let n = app
        .store
        .revoke_all(&me.account, kind, None, now_s())
        .await?;
    ok_json(StatusCode::OK, &json!({"success": true, "revoked": n}))
}

pub(super) async fn revoke_personal(app: &App, c: &Call) -> ApiResult {
    let me = caller(app, c).await?;
    app.store.revoke(&me.id, "revoked", now_s()).await?;
    ok_json(StatusCode::OK, &json!({"success": true}))
}

pub(super) async fn create_named(app: &App, c: &Call) -> ApiResult {
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

pub(super) async fn rotate(app: &App, c: &Call, kind: Kind, id: &str) -> ApiResult {
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
