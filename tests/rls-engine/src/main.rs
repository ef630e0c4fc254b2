//! A test engine for keygate's fleet mode: Envoy's rate-limit service API
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) served with `tonic`, counting
//! with the `limitador` library (in-memory storage). It only adapts the protocol: the limits file
//! is Limitador's own format, every count and every verdict is Limitador's.
//!
//! ```text
//! rls-engine --limits limits.yaml [--addr 127.0.0.1:8090] [--delay-ms N] [--error]
//!            [--rate-limit-headers] [--faults FILE]
//! ```
//!
//! A request's descriptors are bound, as in Limitador's server, to the CEL variable
//! `descriptors` (a list of maps from entry key to value), its domain is the namespace, and
//! `hits_addend` (0 means 1) is the delta. The answer carries one status per descriptor (the most
//! restrictive counter: its limit, what remains, the time until its window resets), as
//! envoyproxy/ratelimit fills them. With `--rate-limit-headers` it answers as limitador-server with
//! `--rate-limit-headers DRAFT_VERSION_03` does instead: no statuses, and the `X-RateLimit-*`
//! headers the library builds (`CheckResult::response_header`) in `response_headers_to_add`.
//! `--delay-ms` delays every answer and `--error` answers
//! `INTERNAL` (for the failure tests). Each call is logged on stdout (`call domain=... hits=N
//! code=OK|OVER_LIMIT remaining=R desc=key=value,...`), so the tests can count what reached the
//! engine and read the descriptor it was sent.
//!
//! `--faults FILE`: an engine that answers wrong, for the tests of keygate's bounds. The file is
//! read on every call (absent or empty: no fault), a YAML map of: `reset_s` (the reset every
//! answer names, in seconds: 0 as Limitador says in its window's last second, or huge),
//! `remaining_add` (added to what remains: more than the limit), `limit` (the limit named),
//! `over_limit: true` (every answer OVER_LIMIT), `delay_ms` (each answer that late), `plan` (only
//! descriptors of this plan are affected). The counting stays Limitador's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use limitador::limit::{Context, Limit};
use limitador::RateLimiter;
use tonic::{Request, Response, Status};

/// Faults read from `--faults FILE` on each call.
#[derive(Default)]
struct Faults {
    reset_s: Option<i64>,
    remaining_add: Option<u32>,
    limit: Option<u32>,
    over_limit: bool,
    delay_ms: Option<u64>,
    plan: Option<String>,
}

fn faults(path: Option<&str>, plan: Option<&str>) -> Faults {
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return Faults::default();
    };
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or(serde_yaml::Value::Null);
    let num = |k: &str| v.get(k).and_then(serde_yaml::Value::as_i64);
    let f = Faults {
        reset_s: num("reset_s"),
        remaining_add: num("remaining_add").and_then(|n| u32::try_from(n).ok()),
        limit: num("limit").and_then(|n| u32::try_from(n).ok()),
        over_limit: v.get("over_limit").and_then(serde_yaml::Value::as_bool) == Some(true),
        delay_ms: num("delay_ms").and_then(|n| u64::try_from(n).ok()),
        plan: v
            .get("plan")
            .and_then(serde_yaml::Value::as_str)
            .map(str::to_string),
    };
    match (&f.plan, plan) {
        (Some(want), Some(got)) if want != got => Faults::default(),
        (Some(_), None) => Faults::default(),
        _ => f,
    }
}

struct Engine {
    limiter: RateLimiter,
    delay: Duration,
    error: bool,
    faults: Option<String>,
    /// Answer as limitador-server does: no statuses, and (with `--rate-limit-headers`) the
    /// draft-03 `X-RateLimit-*` headers Limitador's library builds, in `response_headers_to_add`.
    limitador_style: bool,
}

fn unit_of(seconds: u64) -> (u32, Unit) {
    match seconds {
        1 => (1, Unit::Second),
        60 => (1, Unit::Minute),
        3600 => (1, Unit::Hour),
        86400 => (1, Unit::Day),
        _ => (0, Unit::Unknown),
    }
}

#[tonic::async_trait]
impl RateLimitService for Engine {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let req = request.into_inner();
        let plan = req
            .descriptors
            .first()
            .and_then(|d| d.entries.iter().find(|e| e.key == "plan"))
            .map(|e| e.value.clone());
        let f = faults(self.faults.as_deref(), plan.as_deref());
        if let Some(ms) = f.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if self.error {
            println!("call domain={} error", req.domain);
            return Err(Status::internal("rls-engine: --error"));
        }
        let hits = u64::from(req.hits_addend.max(1));
        let maps: Vec<HashMap<String, String>> = req
            .descriptors
            .iter()
            .map(|d| {
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect()
            })
            .collect();
        let mut ctx = Context::default();
        ctx.list_binding("descriptors".to_string(), maps);
        let namespace = req.domain.as_str().into();
        let mut result = self
            .limiter
            .check_rate_limited_and_update(&namespace, &ctx, hits)
            .map_err(|e| Status::internal(format!("limitador: {e}")))?;
        let limited = result.limited || f.over_limit;
        let code = if limited { Code::OverLimit } else { Code::Ok };
        // the most restrictive counter describes every descriptor's status
        result
            .counters
            .sort_by_key(|c| c.remaining().unwrap_or(c.max_value()));
        let status = result.counters.first().map(|c| {
            let (per_unit, unit) = unit_of(c.window().as_secs());
            let remaining = u32::try_from(c.remaining().unwrap_or(c.max_value()))
                .unwrap_or(u32::MAX)
                .saturating_add(f.remaining_add.unwrap_or(0));
            let reset = match f.reset_s {
                Some(s) => Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: s,
                    nanos: 0,
                }),
                None => c
                    .expires_in()
                    .map(|d| envoy_types::pb::google::protobuf::Duration {
                        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
                    }),
            };
            DescriptorStatus {
                code: code as i32,
                current_limit: Some(RateLimit {
                    name: format!("w={}", c.window().as_secs()),
                    requests_per_unit: match f.limit {
                        Some(l) => l,
                        None if per_unit == 0 => 0,
                        None => u32::try_from(c.max_value()).unwrap_or(u32::MAX),
                    },
                    unit: unit as i32,
                }),
                limit_remaining: remaining,
                duration_until_reset: reset,
                quota: None,
            }
        });
        let statuses: Vec<DescriptorStatus> = match status {
            Some(s) if !self.limitador_style => req.descriptors.iter().map(|_| s.clone()).collect(),
            _ => Vec::new(),
        };
        let response_headers_to_add = if self.limitador_style {
            result
                .response_header()
                .into_iter()
                .map(|(key, value)| {
                    // the faults reach limitador-server's headers too
                    let value = match (key.to_ascii_lowercase().as_str(), &f) {
                        (
                            "x-ratelimit-reset",
                            Faults {
                                reset_s: Some(s), ..
                            },
                        ) => s.to_string(),
                        (
                            "x-ratelimit-remaining",
                            Faults {
                                remaining_add: Some(a),
                                ..
                            },
                        ) => value
                            .parse::<u64>()
                            .map_or(value.clone(), |r| (r + u64::from(*a)).to_string()),
                        _ => value,
                    };
                    HeaderValue {
                        key,
                        value,
                        ..Default::default()
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let desc: Vec<String> = req
            .descriptors
            .iter()
            .flat_map(|d| d.entries.iter().map(|e| format!("{}={}", e.key, e.value)))
            .collect();
        println!(
            "call domain={} hits={} code={} remaining={} desc={}",
            req.domain,
            hits,
            if limited { "OVER_LIMIT" } else { "OK" },
            statuses
                .first()
                .map_or("-".to_string(), |s| s.limit_remaining.to_string()),
            desc.join(",")
        );
        Ok(Response::new(RateLimitResponse {
            overall_code: code as i32,
            statuses,
            response_headers_to_add,
            ..Default::default()
        }))
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let limits_path = arg(&args, "--limits")
        .ok_or("usage: rls-engine --limits FILE [--addr HOST:PORT] [--delay-ms N] [--error]")?;
    let addr: std::net::SocketAddr = arg(&args, "--addr")
        .unwrap_or_else(|| "127.0.0.1:8090".to_string())
        .parse()?;
    let delay = Duration::from_millis(arg(&args, "--delay-ms").map_or(Ok(0), |s| s.parse())?);
    let error = args.iter().any(|a| a == "--error");
    let limitador_style = args.iter().any(|a| a == "--rate-limit-headers");
    let faults = arg(&args, "--faults");
    let limits: Vec<Limit> = serde_yaml::from_str(&std::fs::read_to_string(&limits_path)?)?;
    let limiter = RateLimiter::new(10_000);
    for l in limits {
        limiter.add_limit(l);
    }
    let engine = Arc::new(Engine {
        limiter,
        delay,
        error,
        faults,
        limitador_style,
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("rls-engine listening on {}", listener.local_addr()?);
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::from_arc(engine))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
