//! The running service: settings, shared state, the HTTP server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use tokio::sync::Semaphore;

use crate::auth::{self, Throttle};
use crate::model::{now_s, sha256_hex, Account, KeyRecord, Kind, User};
use crate::store::Store;

/// What an operator sets (command-line flags; see `main.rs`).
#[derive(Clone, Debug)]
pub struct Config {
    /// The dashboard's product name ("Event Staff API", …).
    pub product_name: String,
    /// Upper bound of a named token's lifetime, in days (90 for EventLyte's access tokens).
    pub max_named_lifetime_days: i64,
    /// Grace of a regenerated key when none is chosen, and the most that may be chosen.
    pub default_grace_s: i64,
    pub max_grace_s: i64,
    /// Keys that work (not revoked, not expired) one account may hold.
    pub max_keys_per_account: u64,
    pub session_ttl_s: i64,
    /// `Secure` on the session cookie (set it when the dashboard is served over HTTPS).
    pub secure_cookies: bool,
    /// The header whose last entry is the client's address (e.g. `x-forwarded-for` behind Envoy);
    /// the peer address when unset.
    pub client_ip_header: Option<String>,
    pub login_failures_per_email: u32,
    pub login_failures_per_client: u32,
    /// Revoked and expired keys, feed entries and sessions are deleted this long after they
    /// ended (at least 8 days: longer than keygate may hold a verdict, fresh or stale).
    pub retention_s: i64,
    /// The public URL of the API behind keygate, shown in the dashboard's examples.
    pub api_url: String,
    /// What the dashboard calls a business key and a named token ("API key", "access token", …).
    pub key_label: String,
    pub pat_label: String,
    /// Request history: the newest requests kept per key, and for how many days.
    pub history_per_key: usize,
    pub history_days: i64,
    /// Daily usage counts are kept this many days (billing).
    pub usage_days: i64,
    /// History records held in memory before they are stored (a full queue refuses exports).
    pub history_queue: usize,
    /// The token an export must carry in `x-keyservice-ingest-token` (none: any export).
    pub ingest_token: Option<String>,
    /// Key prefixes masked in stored paths and bodies (besides what keygate's filter masks).
    pub redact_prefixes: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            product_name: "API".into(),
            max_named_lifetime_days: 90,
            default_grace_s: 86_400,
            max_grace_s: 30 * 86_400,
            max_keys_per_account: 1_000,
            session_ttl_s: 8 * 3_600,
            secure_cookies: false,
            client_ip_header: None,
            login_failures_per_email: 10,
            login_failures_per_client: 100,
            retention_s: 30 * 86_400,
            api_url: "http://127.0.0.1:10000".into(),
            key_label: "API key".into(),
            pat_label: "personal access token".into(),
            history_per_key: 1_000,
            history_days: 30,
            usage_days: 400,
            history_queue: 10_000,
            ingest_token: None,
            redact_prefixes: crate::history::default_prefixes(),
        }
    }
}

/// Calls counted since start (exported at `GET /metrics`).
#[derive(Default)]
pub struct Metrics {
    verify: AtomicU64,
    revocations: AtomicU64,
}

impl Metrics {
    pub fn count_verify(&self) {
        self.verify.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_revocations(&self) {
        self.revocations.fetch_add(1, Ordering::Relaxed);
    }

    pub fn prometheus(&self) -> String {
        format!(
            "# TYPE keyservice_verify_calls_total counter\nkeyservice_verify_calls_total {}\n\
             # TYPE keyservice_revocation_calls_total counter\nkeyservice_revocation_calls_total {}\n",
            self.verify.load(Ordering::Relaxed),
            self.revocations.load(Ordering::Relaxed)
        )
    }
}

pub struct App {
    pub store: Arc<dyn Store>,
    /// SHA-256 hex of the admin token; `None`: no admin API.
    pub admin_token_hash: Option<String>,
    pub verbose: bool,
    pub cfg: Config,
    pub throttle: Mutex<Throttle>,
    /// argon2id runs on at most this many threads at once (a login flood cannot take the CPU).
    pub hash_slots: Semaphore,
    /// A hash of no one's password: an unknown email costs what a known one does.
    pub dummy_hash: String,
    pub metrics: Metrics,
    /// The request history's queue and counters (`crate::ingest`).
    pub history: Arc<crate::ingest::Sink>,
}

impl App {
    pub fn new(
        store: Arc<dyn Store>,
        admin_token: Option<&str>,
        verbose: bool,
        cfg: Config,
    ) -> Result<App, String> {
        let slots = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
        Ok(App {
            store,
            admin_token_hash: admin_token.map(|t| sha256_hex(t.as_bytes())),
            verbose,
            throttle: Mutex::new(Throttle::new(100_000, 900)),
            hash_slots: Semaphore::new(slots),
            dummy_hash: auth::hash_password(&auth::token()?)?,
            metrics: Metrics::default(),
            history: Arc::new(crate::ingest::Sink::new(
                cfg.history_queue,
                cfg.ingest_token.as_deref(),
                cfg.redact_prefixes.clone(),
            )),
            cfg,
        })
    }

    pub fn router(self: Arc<Self>) -> Router {
        crate::web::routes()
            .fallback(crate::api::handle)
            .with_state(self)
    }

    /// Creates (or restores) the demo accounts, users and keys, with well-known secrets: a demo
    /// key revoked or disabled earlier works again and the demo PAT's lifetime starts anew.
    pub async fn seed_demo(&self) -> Result<(), String> {
        let e = |e: crate::store::StoreError| e.to_string();
        let t = now_s();
        for (name, plan) in [("acme", "free"), ("globex", "professional")] {
            self.store
                .create_account(&Account {
                    name: name.into(),
                    plan: plan.into(),
                    disabled: false,
                    created_at: t,
                })
                .await
                .map_err(e)?;
        }
        for (name, email, account, pw) in [
            ("alice", "alice@example.com", "acme", "alice-password"),
            ("bob", "bob@example.com", "globex", "bob-password"),
        ] {
            if self.store.user_by_name(name).await.map_err(e)?.is_none() {
                let phc = auth::hash_password(pw)?;
                let u = User {
                    name: name.into(),
                    email: email.into(),
                    account: account.into(),
                    password_hash: phc,
                    disabled: false,
                    created_at: t,
                };
                match self.store.create_user(&u).await {
                    Ok(()) | Err(crate::store::StoreError::Conflict(_)) => {}
                    Err(x) => return Err(x.to_string()),
                }
            }
            self.store
                .set_user_disabled(name, false, t)
                .await
                .map_err(e)?;
        }
        let pat_expiry = t + 90 * 86_400;
        let demo = [
            DemoKey {
                id: "bk_demo_acme",
                kind: Kind::Business,
                name: "acme demo business key",
                secret: DEMO_ACME,
                user: None,
                account: "acme",
                plan: "free",
                resource: Some(("aggregator", "agg-acme-1")),
                expires_at: None,
            },
            DemoKey {
                id: "nk_demo_alice",
                kind: Kind::Named,
                name: "alice demo PAT",
                secret: DEMO_ALICE_PAT,
                user: Some("alice"),
                account: "acme",
                plan: "free",
                resource: None,
                expires_at: Some(pat_expiry),
            },
            DemoKey {
                id: "bk_demo_globex",
                kind: Kind::Business,
                name: "globex demo business key",
                secret: DEMO_GLOBEX,
                user: None,
                account: "globex",
                plan: "professional",
                resource: None,
                expires_at: None,
            },
        ];
        for DemoKey {
            id,
            kind,
            name,
            secret,
            user,
            account,
            plan,
            resource: res,
            expires_at,
        } in demo
        {
            let key_hash = sha256_hex(secret.as_bytes());
            let rec = KeyRecord {
                id: id.into(),
                kind,
                name: name.into(),
                key_hash: key_hash.clone(),
                hint: auth::hint(secret),
                user: user.map(str::to_string),
                subject: user.unwrap_or(id).into(),
                account: account.into(),
                plan: plan.into(),
                scopes: kind.default_scopes(),
                resources: res
                    .map(|(k, v)| [(k.to_string(), vec![v.to_string()])].into_iter().collect())
                    .unwrap_or_default(),
                ratelimit: None,
                created_at: t,
                expires_at,
                revoked_at: None,
                disabled: false,
                replaced_by: None,
                account_disabled: false,
                user_disabled: false,
            };
            self.store.insert_key(&rec, true).await.map_err(e)?;
            self.store
                .restore_key(id, &key_hash, expires_at)
                .await
                .map_err(e)?;
        }
        for account in ["acme", "globex"] {
            self.store
                .set_account_disabled(account, false, t)
                .await
                .map_err(e)?;
        }
        Ok(())
    }
}

struct DemoKey {
    id: &'static str,
    kind: Kind,
    name: &'static str,
    secret: &'static str,
    user: Option<&'static str>,
    account: &'static str,
    plan: &'static str,
    resource: Option<(&'static str, &'static str)>,
    expires_at: Option<i64>,
}

pub const DEMO_ACME: &str = "kgb_demo_acme_business_0001";
pub const DEMO_GLOBEX: &str = "kgb_demo_globex_business_0001";
pub const DEMO_ALICE_PAT: &str = "kgn_demo_alice_pat_0001";

/// Serves until SIGTERM or Ctrl-C; prints the "listening" line (with the port picked for `:0`).
pub async fn serve(app: Arc<App>, host: &str, port: u16) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let shown = match addr {
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        SocketAddr::V4(a) => a.to_string(),
    };
    eprintln!("keyservice listening on http://{shown}");
    // rotated keys enter the feed when their grace ends, even while no one polls it
    let ticker = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(std::time::Duration::from_secs(1));
            let mut purged_at = 0;
            let mut history_purged_at = 0;
            loop {
                t.tick().await;
                let now = now_s();
                if let Err(e) = app.store.promote_due(now).await {
                    eprintln!("keyservice: promoting rotated keys: {e}");
                }
                // notices refusals written by another process (the verify path's memory of
                // lookups is emptied when the feed moved)
                if let Err(e) = app.store.revocation_cursor().await {
                    eprintln!("keyservice: reading the feed's cursor: {e}");
                }
                if now - history_purged_at >= 60 {
                    history_purged_at = now;
                    let ms = now.saturating_mul(1000);
                    let before_ms = ms - app.cfg.history_days * 86_400_000;
                    let before_day = crate::history::day_of(ms) - app.cfg.usage_days;
                    if let Err(e) = app.store.purge_history(before_ms, before_day).await {
                        eprintln!("keyservice: purging old history: {e}");
                    }
                }
                if now - purged_at >= 3_600 {
                    purged_at = now;
                    if let Err(e) = app.store.purge(now - app.cfg.retention_s).await {
                        eprintln!("keyservice: purging ended keys: {e}");
                    }
                }
            }
        })
    };
    let writer = tokio::spawn(crate::ingest::writer(
        app.history.clone(),
        app.store.clone(),
        app.cfg.history_per_key,
    ));
    let router = app.router();
    let result = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await
    .map_err(|e| e.to_string());
    ticker.abort();
    writer.abort();
    result
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
