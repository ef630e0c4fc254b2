//! `keygate-check [FILE...]`: checks keygate plugin configurations (JSON) with the same parser the
//! filter runs in `on_configure`. Prints warnings and `ok`, or the one-line refusal; exits 1 on a
//! refusal. Reads standard input when no file is given. Use it in CI before a config reaches Envoy.

use std::io::Read;
use std::process::ExitCode;

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
