//! Contract v1: what keygate calls (verify, the revocation feed).

use super::*;

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

pub(super) async fn verify(app: &App, c: &Call) -> ApiResult {
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

pub(super) fn query_int(
    query: &str,
    name: &str,
    default: i64,
    lo: i64,
    hi: i64,
) -> Result<i64, ApiError> {
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

pub(super) async fn revocations(app: &App, c: &Call) -> ApiResult {
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
