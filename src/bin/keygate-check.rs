//! `keygate-check [--strict] [FILE...]`: checks keygate plugin configurations with the same parser
//! the filter runs in `on_configure`: a keygate JSON configuration, or the keygate filters of an
//! Envoy configuration (YAML or JSON) or an Istio WasmPlugin. Prints warnings and `ok`, or the
//! one-line refusal; exits 1 on a refusal, and with `--strict` on any warning too. Reads standard
//! input when no file is given. Use it in CI before a config reaches Envoy (`--help`).
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

/// How a file's keygate configurations are reported: its name and, inside an Envoy config or
/// an Istio resource, where each one sits.
struct Found {
    place: String,
    json: Result<Vec<u8>, String>,
    /// keygate's excerpt filter (envoy/excerpt), checked with its own parser.
    excerpt: bool,
}

const USAGE: &str = "usage:
  keygate-check [--strict] [FILE...]
      Checks keygate configurations with the filter's own parser. A FILE may be a keygate
      configuration (JSON), or an Envoy configuration (YAML or JSON: a bootstrap, a listener,
      an LDS/xDS file, an Istio EnvoyFilter) whose keygate wasm filters are each checked, or an
      Istio WasmPlugin (its spec.pluginConfig); multi-document YAML is read whole. Without FILE,
      standard input. Exit 0 when all are accepted, 1 when one is refused (with --strict also
      when one draws a warning: unknown fields, rules that skip write methods), 2 on usage.
      --strict   warnings are errors (for CI)
  keygate-check --key-service http://HOST:PORT [--valid-key KEY [--user USER]]
                [--verify-path P] [--revocations-path P|none]
      Checks a running key service against contract v1 with keygate's own parser of its
      answers; one line per check; exit 1 when one fails.
  keygate-check --help";

/// Checks one keygate configuration; false when it is refused (or, strict, warned about).
fn check(place: &str, bytes: &[u8], strict: bool) -> bool {
    let mut warnings = Vec::new();
    match keygate::config::parse(bytes, &mut warnings) {
        Ok(cfg) => {
            for w in &warnings {
                eprintln!("{place}: {w}");
            }
            if strict && !warnings.is_empty() {
                println!(
                    "{place}: refused under --strict: {} warning(s)",
                    warnings.len()
                );
                return false;
            }
            println!("{place}: ok ({})", cfg.summary());
            true
        }
        Err(e) => {
            println!("{place}: {e}");
            false
        }
    }
}

/// The keygate configurations in a file: the file itself when it is one, else every keygate
/// filter of an Envoy configuration and every keygate WasmPlugin in it.
fn configurations(name: &str, bytes: &[u8]) -> Result<Vec<Found>, String> {
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let mut found = Vec::new();
        embedded(&doc, name, &mut found);
        if found.is_empty() {
            // a keygate configuration itself: the filter's parser sees the bytes as they are
            // (it refuses duplicate members, which a parsed value has lost)
            found.push(Found {
                place: name.to_string(),
                json: Ok(bytes.to_vec()),
                excerpt: false,
            });
        }
        return Ok(found);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "neither JSON nor UTF-8 YAML".to_string())?;
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| format!("YAML: {e}"))?;
    let mut found = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let place = if docs.len() > 1 {
            format!("{name}[doc {i}]")
        } else {
            name.to_string()
        };
        embedded(&yaml_to_json(d)?, &place, &mut found);
    }
    if found.is_empty() {
        return Err(
            "no keygate configuration in it (no keygate wasm filter, no WasmPlugin)".into(),
        );
    }
    Ok(found)
}

const WASM_FILTER: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";

/// Walks a document for keygate's configurations: wasm HTTP filters (their
/// `config.configuration`, a StringValue) and WasmPlugins (`spec.pluginConfig`).
fn embedded(v: &serde_json::Value, place: &str, out: &mut Vec<Found>) {
    use serde_json::Value;
    match v {
        Value::Object(o) => {
            let kind = o.get("kind").and_then(Value::as_str);
            if kind == Some("WasmPlugin") {
                let spec = o.get("spec");
                let json = spec
                    .and_then(|s| s.get("pluginConfig"))
                    .map_or(Ok(b"{}".to_vec()), |c| {
                        serde_json::to_vec(c).map_err(|e| e.to_string())
                    });
                let name = o
                    .get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                if is_keygate(spec.unwrap_or(&Value::Null)) {
                    out.push(Found {
                        place: format!("{place} > WasmPlugin {name}"),
                        json,
                        excerpt: is_excerpt(spec.unwrap_or(&Value::Null)),
                    });
                }
                return;
            }
            let ty = o.get("@type").and_then(Value::as_str).unwrap_or_default();
            if ty.ends_with(WASM_FILTER) {
                let config = o.get("config").unwrap_or(&Value::Null);
                if is_keygate(config) {
                    out.push(Found {
                        place: place.to_string(),
                        json: string_value(config.get("configuration")),
                        excerpt: is_excerpt(config),
                    });
                }
                return;
            }
            for child in o.values() {
                embedded(child, &named(place, child), out);
            }
        }
        Value::Array(a) => {
            for child in a {
                embedded(child, &named(place, child), out);
            }
        }
        _ => {}
    }
}

/// The place of a child: the names of the named objects (listeners, filters) on the way.
fn named(place: &str, child: &serde_json::Value) -> String {
    match child.get("name").and_then(|n| n.as_str()) {
        Some(n) => format!("{place} > {n}"),
        None => place.to_string(),
    }
}

/// Whether a wasm filter's config or a WasmPlugin's spec runs keygate: its module, plugin name
/// or root id says so.
fn is_keygate(v: &serde_json::Value) -> bool {
    let mut text = Vec::new();
    for path in [
        &["vm_config", "code", "local", "filename"][..],
        &["vm_config", "code", "remote", "http_uri", "uri"],
        &["name"],
        &["root_id"],
        &["url"],
        &["pluginName"],
    ] {
        let mut at = v;
        for p in path {
            at = at.get(p).unwrap_or(&serde_json::Value::Null);
        }
        if let Some(s) = at.as_str() {
            text.push(s.to_ascii_lowercase());
        }
    }
    text.iter().any(|t| t.contains("keygate"))
}

/// Whether it is keygate's excerpt filter (its module or root id names it).
fn is_excerpt(v: &serde_json::Value) -> bool {
    let s = |path: &[&str]| {
        let mut at = v;
        for p in path {
            at = at.get(p).unwrap_or(&serde_json::Value::Null);
        }
        at.as_str().unwrap_or_default().to_ascii_lowercase()
    };
    s(&["vm_config", "code", "local", "filename"]).contains("excerpt")
        || s(&["vm_config", "code", "remote", "http_uri", "uri"]).contains("excerpt")
        || s(&["url"]).contains("excerpt")
        || s(&["root_id"]) == "excerpt"
}

/// An excerpt filter's configuration, with its own parser.
fn check_excerpt(place: &str, bytes: &[u8]) -> bool {
    match keygate::excerpt::configure(bytes) {
        Ok(s) => {
            println!("{place}: ok (excerpt filter: {} bytes a body)", s.max_bytes);
            true
        }
        Err(e) => {
            println!("{place}: {e}");
            false
        }
    }
}

/// The JSON in a wasm filter's `configuration` (a `google.protobuf.StringValue`).
fn string_value(c: Option<&serde_json::Value>) -> Result<Vec<u8>, String> {
    let Some(c) = c else {
        return Ok(Vec::new()); // no configuration: the filter parses an empty one
    };
    let ty = c.get("@type").and_then(|t| t.as_str()).unwrap_or_default();
    if !ty.ends_with("google.protobuf.StringValue") {
        return Err(format!(
            "configuration is `{ty}`, not a google.protobuf.StringValue holding keygate's JSON"
        ));
    }
    match c.get("value") {
        Some(serde_json::Value::String(s)) => Ok(s.clone().into_bytes()),
        None => Ok(Vec::new()),
        Some(_) => Err("configuration.value is not a string".into()),
    }
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => match r.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            Some(n) => Value::Number(n),
            None => return Err(format!("YAML: the number {r} has no JSON form")),
        },
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(h) => {
            let mut o = serde_json::Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(format!("YAML: a mapping key {other:?} is not a string")),
                };
                o.insert(key, yaml_to_json(v)?);
            }
            Value::Object(o)
        }
        Yaml::Alias(_) | Yaml::BadValue => return Err("YAML: aliases are not supported".into()),
    })
}

fn check_file(name: &str, bytes: &[u8], strict: bool) -> bool {
    // YAML that Kubernetes (YAML 1.1) or Envoy (yaml-cpp) reads otherwise than this tool
    let mut ambiguous_ok = true;
    if serde_json::from_slice::<serde_json::Value>(bytes).is_err() {
        if let Ok(text) = std::str::from_utf8(bytes) {
            for (line, value, other) in yaml_ambiguities(text) {
                eprintln!("{name}: line {line}: `{value}` is {other} to Kubernetes (YAML 1.1, which decodes a WasmPlugin's pluginConfig), not what this check read (YAML 1.2): quote it, or write what you mean");
                ambiguous_ok = !strict;
            }
            if !ambiguous_ok {
                println!("{name}: refused under --strict: plain YAML scalars read two ways");
            }
        }
    }
    ambiguous_ok
        & match configurations(name, bytes) {
            Err(e) => {
                println!("{name}: {e}");
                false
            }
            Ok(found) => {
                let mut ok = true;
                for f in found {
                    ok &= match f.json {
                        Ok(json) if f.excerpt => check_excerpt(&f.place, &json),
                        Ok(json) => check(&f.place, &json, strict),
                        Err(e) => {
                            println!("{}: {e}", f.place);
                            false
                        }
                    };
                }
                ok
            }
        }
}

/// The plain scalars of a YAML text that this tool (yaml-rust2, YAML 1.2) reads otherwise than
/// Kubernetes (sigs.k8s.io/yaml: go-yaml, YAML 1.1), which decodes an Istio WasmPlugin's
/// `pluginConfig`: `(line, value, what YAML 1.1 makes of it)`.
/// `query_param: off` is the parameter `off` here and no query credential there; `window_s: 060`
/// is 60 here and 48 there.
fn yaml_ambiguities(text: &str) -> Vec<(usize, String, &'static str)> {
    use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
    use yaml_rust2::scanner::{Marker, TScalarStyle};
    struct Found(Vec<(usize, String, &'static str)>);
    impl MarkedEventReceiver for Found {
        fn on_event(&mut self, ev: Event, mark: Marker) {
            if let Event::Scalar(v, TScalarStyle::Plain, _, None) = ev {
                if let Some(other) = yaml11_reading(&v) {
                    self.0.push((mark.line(), v, other));
                }
            }
        }
    }
    let mut found = Found(Vec::new());
    // a text that does not parse is reported by `configurations`
    let _ = Parser::new_from_str(text).load(&mut found, true);
    found.0
}

/// What YAML 1.1 makes of a plain scalar that YAML 1.2 (this tool) reads as a string or as
/// another number, or `None` when both read it alike.
fn yaml11_reading(v: &str) -> Option<&'static str> {
    const BOOLS: [&str; 16] = [
        "y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "n", "N", "no", "No", "NO", "off", "Off",
        "OFF",
    ];
    if BOOLS.contains(&v) {
        return Some("a boolean");
    }
    if v == "Null" || v == "NULL" {
        return Some("null");
    }
    let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
    let all = |s: &str, f: fn(char) -> bool| !s.is_empty() && s.chars().all(f);
    if digits.len() > 1 && digits.starts_with('0') && all(digits, |c| c.is_ascii_digit()) {
        return Some("an octal number");
    }
    if let Some(rest) = digits.strip_prefix("0o") {
        if all(rest, |c| c.is_digit(8)) {
            return Some("a string");
        }
    }
    if let Some(rest) = digits.strip_prefix("0b") {
        if all(rest, |c| c == '0' || c == '1' || c == '_') {
            return Some("a binary number");
        }
    }
    if digits.contains('_')
        && all(digits, |c| {
            c.is_ascii_hexdigit() || matches!(c, '_' | '.' | 'x')
        })
    {
        return Some("a number");
    }
    if digits.contains(':')
        && digits.starts_with(|c: char| c.is_ascii_digit())
        && all(digits, |c| {
            c.is_ascii_digit() || matches!(c, ':' | '.' | '_')
        })
    {
        return Some("a base-60 number");
    }
    None
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--key-service") {
        return key_service(&args);
    }
    let strict = args.iter().any(|a| a == "--strict");
    let mut files = Vec::new();
    for a in &args {
        match a.as_str() {
            "--strict" => {}
            "-" => files.push(a.clone()),
            o if o.starts_with('-') => {
                eprintln!("keygate-check: unknown option {o}\n{USAGE}");
                return ExitCode::from(2);
            }
            f => files.push(f.to_string()),
        }
    }
    if files.is_empty() {
        files.push("-".into());
    }
    let mut ok = true;
    for f in &files {
        let read = if f == "-" {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map(|_| buf)
        } else {
            std::fs::read(f)
        };
        match read {
            Ok(b) => ok &= check_file(if f == "-" { "<stdin>" } else { f }, &b, strict),
            Err(e) => {
                eprintln!("keygate-check: {f}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
