//! The dashboard's request history and usage pages: usage per day and key, a key's history
//! filtered by status and time, one request with its bodies. An owner sees their own keys only.

use super::*;
use crate::history;

/// Keys an account used, as the history saw them (the usage page's bound).
pub(super) const ACTIVITY_LIMIT: usize = 10_000;
/// Requests per page of a key's history.
pub(super) const HISTORY_PAGE: usize = 100;
/// Days the usage charts show.
pub(super) const CHART_DAYS: i64 = 30;

pub(super) fn when_ms(ms: i64) -> String {
    when(ms.div_euclid(1000))
}

/// `2026-12-06 21:30:05.123`
pub(super) fn when_precise(ms: i64) -> String {
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
pub(super) struct Visible {
    id: String,
    name: String,
}

pub(super) async fn visible(app: &App, s: &Signed, id: &str) -> Result<Option<Visible>, ()> {
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
pub(super) async fn visible_keys(app: &App, s: &Signed) -> Result<Vec<(Visible, Option<i64>)>, ()> {
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

pub(super) fn today() -> i64 {
    history::day_of(now_s().saturating_mul(1000))
}

pub(super) struct UsageKeyRow {
    id: String,
    name: String,
    last_used: String,
    total: u64,
    counts: [u64; 5],
}

#[derive(Template)]
#[template(path = "usage.html")]
pub(super) struct UsagePage<'a> {
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

pub(super) fn unavailable() -> Response {
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "the database failed; try again",
    )
}

pub(super) async fn usage_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
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

pub(super) struct RequestRow {
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

pub(super) fn request_row(r: &HistoryRow) -> RequestRow {
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
pub(super) struct HistoryPage<'a> {
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
pub(super) struct Filters {
    pub(super) status: String,
    pub(super) code: String,
    pub(super) from: String,
    pub(super) to: String,
    /// The next page starts after this row: `AT_MS.ID`.
    pub(super) before: Option<(i64, i64)>,
}

pub(super) fn filters(query: Option<&str>) -> Filters {
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
pub(super) fn resolve(
    f: &Filters,
    today: i64,
    oldest_ms: i64,
) -> Result<(StatusFilter, i64, i64), String> {
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

pub(super) async fn history_page(
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

pub(super) struct BodyView {
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
pub(super) struct RequestPage<'a> {
    product: &'a str,
    who: Option<String>,
    csrf: String,
    id: String,
    name: String,
    r: RequestRow,
    bodies: Vec<BodyView>,
}

pub(super) async fn request_page(
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
