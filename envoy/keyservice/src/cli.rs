//! The command line: `serve`, and the operator's administration straight on the database
//! (accounts, users, key imports) without the service running.

use std::io::{BufRead, Read};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::api::{self, ApiError};
use crate::app::{self, App, Config};
use crate::model::{now_s, Account};
use crate::store;

#[derive(Parser, Debug)]
#[command(
    name = "keyservice",
    version,
    about = "keygate's key service: contract v1, token API, admin API, dashboard"
)]
pub struct Cli {
    /// The database: an SQLite file (created if missing) or a postgres:// URL.
    #[arg(
        long,
        env = "KEYSERVICE_DB",
        global = true,
        default_value = "keys.sqlite"
    )]
    db: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve the API and the dashboard.
    Serve(Box<Serve>),
    /// Accounts: `add NAME [--plan P]`, `list`, `disable NAME`, `enable NAME`.
    Account {
        #[command(subcommand)]
        cmd: AccountCmd,
    },
    /// Users: `add NAME --email E --account A` (password on stdin), `list`, `disable`, `enable`.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Import keys from JSON lines (a file or `-` for stdin): each line the body of
    /// `POST /admin/keys`, with `key_hash` (hex SHA-256 from another system) or `key`.
    Import { file: String },
    /// Create (or restore) the demo accounts, users and keys.
    SeedDemo,
    /// Requests per account and day by status class (billing), as CSV: `--from YYYY-MM-DD`
    /// `--to YYYY-MM-DD` (default: the last 30 days), `--account A`.
    Usage {
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        account: Option<String>,
    },
}

#[derive(Args, Debug)]
struct Serve {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// TCP port (0: any free port; the "listening" line on stderr says which).
    #[arg(long, default_value_t = 8081)]
    port: u16,
    /// Create or restore the demo accounts, users and keys at start.
    #[arg(long)]
    seed_demo: bool,
    /// Enable the /admin API (header x-admin-token). Prefer the environment variable: a flag
    /// shows in the process list.
    #[arg(long, env = "KEYSERVICE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Log every request line (never a body or a header value) to stderr.
    #[arg(long)]
    verbose: bool,
    /// The dashboard's product name.
    #[arg(long, default_value = "API")]
    product_name: String,
    /// What the dashboard calls an account's key (a profile's wording: "API key", "access token").
    #[arg(long, default_value = "API key")]
    key_label: String,
    /// What the dashboard calls a user's named token for Basic.
    #[arg(long, default_value = "personal access token")]
    pat_label: String,
    /// The API's public URL (behind keygate), shown in the dashboard's examples.
    #[arg(long, default_value = "http://127.0.0.1:10000")]
    api_url: String,
    /// Longest lifetime of a named token, in days.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(i64).range(1..=3650))]
    max_lifetime_days: i64,
    /// How long a regenerated key's predecessor keeps working when no grace is chosen, seconds.
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(i64).range(0..=31_536_000))]
    default_grace_s: i64,
    /// The longest grace that may be chosen, seconds.
    #[arg(long, default_value_t = 2_592_000, value_parser = clap::value_parser!(i64).range(0..=31_536_000))]
    max_grace_s: i64,
    /// Keys that work (not revoked or expired) one account may hold.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_keys_per_account: u64,
    /// Days after which revoked and expired keys, feed entries and sessions are deleted.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(i64).range(8..=36_500))]
    retention_days: i64,
    /// Mark the session cookie Secure (serve the dashboard over HTTPS).
    #[arg(long)]
    secure_cookies: bool,
    /// The header whose last entry is the client's address for the login throttle (e.g.
    /// x-forwarded-for behind Envoy). Only when every request comes through that proxy.
    #[arg(long)]
    client_ip_header: Option<String>,
    /// Request history: the newest requests kept per key.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    history_per_key: u64,
    /// Request history: days a request is kept.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..=3650))]
    history_days: i64,
    /// Days the daily usage counts (billing) are kept.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(i64).range(1..=36_500))]
    usage_days: i64,
    /// History records held in memory before they are stored; a full queue refuses exports
    /// (counted at /metrics).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    history_queue: u64,
    /// The token Envoy's access logger (or a collector) must send in x-keyservice-ingest-token
    /// to POST /v1/logs. Prefer the environment variable.
    #[arg(long, env = "KEYSERVICE_INGEST_TOKEN", hide_env_values = true)]
    ingest_token: Option<String>,
    /// A prefix of your keys' secrets, masked in stored paths and bodies (repeatable; default:
    /// this service's kgb_, kgp_, kgn_).
    #[arg(long = "history-redact-prefix")]
    redact_prefixes: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum AccountCmd {
    Add {
        name: String,
        #[arg(long, default_value = "free")]
        plan: String,
    },
    List,
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// The password is read from stdin (one line), never from the command line.
    Add {
        name: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        account: String,
    },
    List {
        #[arg(long)]
        account: Option<String>,
    },
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyservice: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyservice: {e}");
            ExitCode::FAILURE
        }
    }
}

fn api_err(e: ApiError) -> String {
    e.detail
}

async fn run(cli: Cli) -> Result<(), String> {
    let store = store::open(&cli.db).await.map_err(|e| e.to_string())?;
    match cli.cmd {
        Cmd::Serve(s) => {
            if s.admin_token.as_deref() == Some("") {
                return Err("--admin-token must not be empty".into());
            }
            let cfg = Config {
                product_name: s.product_name,
                max_named_lifetime_days: s.max_lifetime_days,
                default_grace_s: s.default_grace_s.min(s.max_grace_s),
                max_grace_s: s.max_grace_s,
                max_keys_per_account: s.max_keys_per_account,
                secure_cookies: s.secure_cookies,
                client_ip_header: s.client_ip_header.map(|h| h.to_ascii_lowercase()),
                api_url: s.api_url,
                key_label: s.key_label,
                retention_s: s.retention_days * 86_400,
                pat_label: s.pat_label,
                history_per_key: s.history_per_key as usize,
                history_days: s.history_days,
                usage_days: s.usage_days,
                history_queue: s.history_queue as usize,
                ingest_token: s.ingest_token.filter(|t| !t.is_empty()),
                redact_prefixes: if s.redact_prefixes.is_empty() {
                    crate::history::default_prefixes()
                } else {
                    let mut p = crate::history::default_prefixes();
                    p.extend(s.redact_prefixes.into_iter().filter(|p| !p.is_empty()));
                    p
                },
                ..Config::default()
            };
            let app = Arc::new(App::new(store, s.admin_token.as_deref(), s.verbose, cfg)?);
            if s.seed_demo {
                app.seed_demo().await?;
            }
            app::serve(app, &s.host, s.port).await
        }
        cmd => {
            let app = App::new(store, None, false, Config::default())?;
            admin(&app, cmd).await
        }
    }
}

async fn admin(app: &App, cmd: Cmd) -> Result<(), String> {
    let s = &app.store;
    let e = |e: store::StoreError| e.to_string();
    match cmd {
        Cmd::Serve(_) => Ok(()),
        Cmd::SeedDemo => app.seed_demo().await,
        Cmd::Usage { from, to, account } => {
            let today = crate::history::day_of(now_s().saturating_mul(1000));
            let (from, to) = crate::usage::range(from.as_deref(), to.as_deref(), today)?;
            let data = crate::usage::usage_of(s.as_ref(), account.as_deref(), from, to)
                .await
                .map_err(e)?;
            print!("{}", crate::usage::csv(&data));
            Ok(())
        }
        Cmd::Account { cmd } => match cmd {
            AccountCmd::Add { name, plan } => {
                if !api::name_ok(&name) {
                    return Err(
                        "an account name holds letters, digits, '_', '.', '-' and '@'".into(),
                    );
                }
                let a = Account {
                    name: name.clone(),
                    plan,
                    disabled: false,
                    created_at: now_s(),
                };
                if s.create_account(&a).await.map_err(e)? {
                    println!("account {name} created");
                    Ok(())
                } else {
                    Err(format!("account {name} exists"))
                }
            }
            AccountCmd::List => {
                for a in s.list_accounts(usize::MAX >> 1).await.map_err(e)? {
                    println!(
                        "{}\t{}\t{}",
                        a.name,
                        a.plan,
                        if a.disabled { "disabled" } else { "active" }
                    );
                }
                Ok(())
            }
            AccountCmd::Disable { name } => toggle_account(app, &name, true).await,
            AccountCmd::Enable { name } => toggle_account(app, &name, false).await,
        },
        Cmd::User { cmd } => match cmd {
            UserCmd::Add {
                name,
                email,
                account,
            } => {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .map_err(|e| e.to_string())?;
                let password = line.trim_end_matches(['\r', '\n']);
                let u = api::create_user(app, &name, &email, &account, password)
                    .await
                    .map_err(api_err)?;
                println!("user {} <{}> created in {}", u.name, u.email, u.account);
                Ok(())
            }
            UserCmd::List { account } => {
                for u in s
                    .list_users(account.as_deref(), usize::MAX >> 1)
                    .await
                    .map_err(e)?
                {
                    println!(
                        "{}\t{}\t{}\t{}",
                        u.name,
                        u.email,
                        u.account,
                        if u.disabled { "disabled" } else { "active" }
                    );
                }
                Ok(())
            }
            UserCmd::Disable { name } => toggle_user(app, &name, true).await,
            UserCmd::Enable { name } => toggle_user(app, &name, false).await,
        },
        Cmd::Import { file } => import(app, &file).await,
    }
}

async fn toggle_account(app: &App, name: &str, disabled: bool) -> Result<(), String> {
    if app
        .store
        .set_account_disabled(name, disabled, now_s())
        .await
        .map_err(|e| e.to_string())?
    {
        println!(
            "account {name} {}",
            if disabled { "disabled" } else { "enabled" }
        );
        Ok(())
    } else {
        Err(format!("no account {name}"))
    }
}

async fn toggle_user(app: &App, name: &str, disabled: bool) -> Result<(), String> {
    if app
        .store
        .set_user_disabled(name, disabled, now_s())
        .await
        .map_err(|e| e.to_string())?
    {
        println!(
            "user {name} {}",
            if disabled { "disabled" } else { "enabled" }
        );
        Ok(())
    } else {
        Err(format!("no user {name}"))
    }
}

async fn import(app: &App, file: &str) -> Result<(), String> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
    } else {
        text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    }
    let (mut added, mut existing) = (0, 0);
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = |m: String| format!("line {}: {m}", i + 1);
        let obj = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(o)) => o,
            _ => return Err(at("not a JSON object".into())),
        };
        let rec = api::import_record(app, &obj)
            .await
            .map_err(|e| at(e.detail))?;
        if app
            .store
            .insert_key(&rec, true)
            .await
            .map_err(|e| at(e.to_string()))?
        {
            added += 1;
        } else {
            existing += 1;
        }
    }
    println!("{added} keys imported, {existing} already there (left as they were)");
    Ok(())
}
