//! The operator's admin API (`--admin-token`): keys, accounts, users.

use super::*;

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

pub(super) async fn admin_create_key(app: &App, c: &Call) -> ApiResult {
    let req = parse_object(&c.body, false)?;
    let rec = import_record(app, &req).await?;
    app.store.insert_key(&rec, false).await?;
    ok_json(StatusCode::CREATED, &json!({"data": public(&rec)}))
}

pub(super) async fn admin_revoke(app: &App, c: &Call) -> ApiResult {
    let id = req_str(&parse_object(&c.body, false)?, "id", 64)?;
    if app.store.key_by_id(&id).await?.is_none() {
        return Err(not_found(format!("no key {id}")));
    }
    let newly = app.store.revoke(&id, "revoked", now_s()).await?;
    ok_json(StatusCode::OK, &json!({"success": true, "revoked": newly}))
}

pub(super) async fn admin_disable(app: &App, c: &Call) -> ApiResult {
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
pub(super) async fn admin_update_key(app: &App, c: &Call) -> ApiResult {
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

pub(super) async fn admin_create_account(app: &App, c: &Call) -> ApiResult {
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

pub(super) async fn admin_list_accounts(app: &App) -> ApiResult {
    let a = app.store.list_accounts(10_000).await?;
    ok_json(StatusCode::OK, &json!({"data": a}))
}

pub(super) async fn admin_disable_account(app: &App, c: &Call) -> ApiResult {
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

pub(super) async fn admin_create_user(app: &App, c: &Call) -> ApiResult {
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

pub(super) async fn admin_list_users(app: &App, c: &Call) -> ApiResult {
    let account = c
        .query
        .split('&')
        .find_map(|kv| kv.strip_prefix("account="))
        .map(str::to_string);
    let users = app.store.list_users(account.as_deref(), 10_000).await?;
    let data: Vec<Value> = users.iter().map(user_public).collect();
    ok_json(StatusCode::OK, &json!({"data": data}))
}

pub(super) async fn admin_disable_user(app: &App, c: &Call) -> ApiResult {
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
