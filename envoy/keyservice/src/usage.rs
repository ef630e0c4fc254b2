//! Usage per account, for the operator's billing: `GET /admin/usage` and `keyservice usage`.
//! Counts come from the request history's daily counts (every request made with a key, by
//! status class), kept `--usage-days`.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde::Serialize;

use crate::api::{bad_request, ApiError, Call};
use crate::app::App;
use crate::history::{self, CLASSES};
use crate::store::{Store, UsageOf, UsageRow};

/// Longest range one query may span, in days.
pub const MAX_RANGE_DAYS: i64 = 400;

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct AccountUsage {
    pub account: String,
    pub total: u64,
    /// Per class (`2xx`, `3xx`, `4xx`, `5xx`, `other`).
    pub classes: BTreeMap<&'static str, u64>,
    pub days: Vec<DayUsage>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct DayUsage {
    pub date: String,
    pub total: u64,
    pub classes: BTreeMap<&'static str, u64>,
}

fn classes(c: &[u64; 5]) -> BTreeMap<&'static str, u64> {
    CLASSES.iter().copied().zip(c.iter().copied()).collect()
}

/// Sums rows (per key) into accounts, then days.
pub fn per_account(rows: &[UsageRow]) -> Vec<AccountUsage> {
    let mut acc: BTreeMap<&str, BTreeMap<i64, [u64; 5]>> = BTreeMap::new();
    for r in rows {
        let d = acc
            .entry(r.account.as_str())
            .or_default()
            .entry(r.counts.day)
            .or_default();
        for (a, b) in d.iter_mut().zip(r.counts.counts) {
            *a += b;
        }
    }
    acc.into_iter()
        .map(|(account, days)| {
            let mut all = [0u64; 5];
            for c in days.values() {
                for (a, b) in all.iter_mut().zip(c) {
                    *a += b;
                }
            }
            AccountUsage {
                account: account.to_string(),
                total: all.iter().sum(),
                classes: classes(&all),
                days: days
                    .iter()
                    .map(|(d, c)| DayUsage {
                        date: history::date(*d),
                        total: c.iter().sum(),
                        classes: classes(c),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The day range of `from`/`to` (`YYYY-MM-DD`, both included; default: the last 30 days).
pub fn range(from: Option<&str>, to: Option<&str>, today: i64) -> Result<(i64, i64), String> {
    let day = |s: Option<&str>, default: i64, name: &str| match s {
        None | Some("") => Ok(default),
        Some(s) => {
            history::parse_date(s).ok_or_else(|| format!("`{name}` must be a date YYYY-MM-DD"))
        }
    };
    let to = day(to, today, "to")?;
    let from = day(from, to - 29, "from")?;
    if from > to {
        return Err("`from` is after `to`".into());
    }
    if to - from >= MAX_RANGE_DAYS {
        return Err(format!("at most {MAX_RANGE_DAYS} days at once"));
    }
    Ok((from, to))
}

pub async fn usage_of(
    store: &dyn Store,
    account: Option<&str>,
    from: i64,
    to: i64,
) -> crate::store::Result<Vec<AccountUsage>> {
    let of = account.map_or(UsageOf::All, UsageOf::Account);
    Ok(per_account(&store.usage(of, from, to).await?))
}

fn query_param<'a>(q: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// `GET /admin/usage?from=YYYY-MM-DD&to=YYYY-MM-DD[&account=A]`.
pub async fn admin_usage(app: &App, c: &Call) -> Result<axum::response::Response, ApiError> {
    let today = history::day_of(crate::model::now_s().saturating_mul(1000));
    let from = query_param(&c.query, "from");
    let to = query_param(&c.query, "to");
    let (from, to) = range(from.as_deref(), to.as_deref(), today).map_err(bad_request)?;
    let account = query_param(&c.query, "account");
    let data = usage_of(app.store.as_ref(), account.as_deref(), from, to).await?;
    let body =
        serde_json::json!({"from": history::date(from), "to": history::date(to), "data": data});
    Ok(crate::api::json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
        "application/json",
    ))
}

/// CSV for `keyservice usage`: one line per account and day.
pub fn csv(data: &[AccountUsage]) -> String {
    let mut s = format!("account,date,total,{}\n", CLASSES.join(","));
    for a in data {
        for d in &a.days {
            s.push_str(&format!("{},{},{}", csv_field(&a.account), d.date, d.total));
            for c in CLASSES {
                s.push_str(&format!(",{}", d.classes.get(c).copied().unwrap_or(0)));
            }
            s.push('\n');
        }
    }
    s
}

fn csv_field(s: &str) -> String {
    // a name starting with = + - @ is read as a formula by spreadsheets
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::history::DayCounts;

    fn row(key: &str, account: &str, day: i64, counts: [u64; 5]) -> UsageRow {
        UsageRow {
            key_id: key.into(),
            account: account.into(),
            counts: DayCounts { day, counts },
        }
    }

    #[test]
    fn keys_sum_into_accounts_and_days() {
        let u = per_account(&[
            row("k1", "acme", 10, [1, 0, 2, 0, 0]),
            row("k2", "acme", 10, [3, 0, 0, 1, 0]),
            row("k2", "acme", 11, [1, 0, 0, 0, 0]),
            row("k3", "globex", 11, [0, 0, 0, 0, 7]),
        ]);
        assert_eq!(u.len(), 2);
        assert_eq!((u[0].account.as_str(), u[0].total), ("acme", 8));
        assert_eq!(u[0].classes["2xx"], 5);
        assert_eq!(u[0].days.len(), 2);
        assert_eq!(u[0].days[0].total, 7);
        assert_eq!(u[1].classes["other"], 7);
        let text = csv(&u);
        assert!(text.starts_with("account,date,total,2xx,3xx,4xx,5xx,other\n"));
        assert!(text.contains("acme,1970-01-11,7,4,0,2,1,0\n"));
        assert_eq!(csv_field("=cmd,x"), "\"'=cmd,x\"");
    }

    #[test]
    fn ranges() {
        assert_eq!(range(None, None, 100), Ok((71, 100)));
        assert_eq!(
            range(Some("1970-01-02"), Some("1970-01-03"), 100),
            Ok((1, 2))
        );
        assert!(range(Some("1970-01-03"), Some("1970-01-02"), 100).is_err());
        assert!(range(Some("x"), None, 100).is_err());
        assert!(range(Some("1970-01-01"), Some("1972-01-01"), 1000).is_err());
    }
}
