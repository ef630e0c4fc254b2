//! `keygate-check [FILE...]`: checks keygate plugin configurations (JSON) with the same parser the
//! filter runs in `on_configure`. Prints warnings and `ok`, or the one-line refusal; exits 1 on a
//! refusal. Reads standard input when no file is given. Use it in CI before a config reaches Envoy.
//!
//! `keygate-check --key-service http://HOST:PORT [--valid-key KEY [--user USER]]
//! [--verify-path P] [--revocations-path P|none]`: checks a key service against contract v1
//! (`envoy/key-service-contract.md`) with keygate's own parser of its answers
//! (`keygate::conformance`). Prints one line per check; exits 1 when one fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use keygate::conformance::{self, Plan, Transport};

/// A plain HTTP/1.1 client (one request per connection), enough to speak to a key service.
struct Http {
    host: String,
    authority: String,
}

impl Transport for Http {
    fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u32, Vec<u8>), String> {
        let mut s =
            TcpStream::connect(&self.host).map_err(|e| format!("connect {}: {e}", self.host))?;
        let t = Some(Duration::from_secs(5));
        s.set_read_timeout(t).map_err(|e| e.to_string())?;
        s.set_write_timeout(t).map_err(|e| e.to_string())?;
        let body = body.unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nx-keygate-contract: 1\r\nConnection: close\r\n",
            self.authority
        );
        if !body.is_empty() {
            req.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        s.write_all(body).map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.take(8 << 20)
            .read_to_end(&mut raw)
            .map_err(|e| format!("read: {e}"))?;
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("no HTTP response")?;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let status: u32 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no status")?;
        let mut rest = raw[end + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            rest = dechunk(&rest).ok_or("bad chunked body")?;
        }
        Ok((status, rest))
    }
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = b.get(eol + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// A secret no service knows: SHA-256 of the time, the process id and a random hasher seed.
fn random_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    let seed = h.finish().to_le_bytes();
    format!(
        "kgc-{}",
        &keygate::hash::to_hex(&keygate::hash::sha256(&seed))[..32]
    )
}

fn key_service(args: &[String]) -> ExitCode {
    let mut url = None;
    let (mut valid, mut user) = (None, None);
    let mut verify_path = "/v1/keys/verify".to_string();
    let mut revocations: Option<String> = Some("/v1/keys/revocations".into());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned();
        match a.as_str() {
            "--key-service" => url = value(),
            "--valid-key" => valid = value(),
            "--user" => user = value(),
            "--verify-path" => verify_path = value().unwrap_or(verify_path),
            "--revocations-path" => revocations = value().filter(|v| v != "none"),
            other => {
                eprintln!("keygate-check: unknown option {other}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(host) = url
        .as_deref()
        .and_then(|u| u.strip_prefix("http://"))
        .map(|h| h.trim_end_matches('/').to_string())
    else {
        eprintln!("keygate-check: --key-service needs an http://HOST:PORT URL");
        return ExitCode::from(2);
    };
    let mut http = Http {
        authority: host.clone(),
        host,
    };
    let secret = random_secret();
    let plan = Plan {
        verify_path: &verify_path,
        revocations_path: revocations.as_deref(),
        unknown_secret: &secret,
        valid_key: valid.as_deref().map(|k| (k, user.as_deref())),
    };
    let checks = conformance::run(&mut http, &plan);
    let mut ok = true;
    for c in &checks {
        println!(
            "{} {}: {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        );
        ok &= c.ok;
    }
    if ok {
        println!(
            "key service: conforms to contract v1 ({} checks)",
            checks.len()
        );
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check(name: &str, bytes: &[u8]) -> bool {
    let mut warnings = Vec::new();
    match keygate::config::parse(bytes, &mut warnings) {
        Ok(cfg) => {
            for w in warnings {
                eprintln!("{name}: {w}");
            }
            println!("{name}: ok ({})", cfg.summary());
            true
        }
        Err(e) => {
            println!("{name}: {e}");
            false
        }
    }
}

fn main() -> ExitCode {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.first().is_some_and(|a| a.starts_with("--")) {
        return key_service(&files);
    }
    let mut ok = true;
    if files.is_empty() {
        let mut buf = Vec::new();
        if std::io::stdin().read_to_end(&mut buf).is_err() {
            eprintln!("keygate-check: cannot read standard input");
            return ExitCode::from(2);
        }
        ok = check("<stdin>", &buf);
    }
    for f in &files {
        match std::fs::read(f) {
            Ok(b) => ok &= check(f, &b),
            Err(e) => {
                eprintln!("keygate-check: {f}: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
