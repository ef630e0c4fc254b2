//! A test engine for keygate's fleet mode: Envoy's rate-limit service API
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) served with `tonic`, counting
//! with the `limitador` library (in-memory storage). It only adapts the protocol: the limits file
//! is Limitador's own format, every count and every verdict is Limitador's.
//!
//! ```text
//! rls-engine --limits limits.yaml [--addr 127.0.0.1:8090] [--delay-ms N] [--error]
//!            [--rate-limit-headers]
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
//! code=OK|OVER_LIMIT remaining=R`), so the tests can count what reached the engine.

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

struct Engine {
    limiter: RateLimiter,
    delay: Duration,
    error: bool,
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
        let code = if result.limited {
            Code::OverLimit
        } else {
            Code::Ok
        };
        // the most restrictive counter describes every descriptor's status
        result
            .counters
            .sort_by_key(|c| c.remaining().unwrap_or(c.max_value()));
        let status = result.counters.first().map(|c| {
            let (per_unit, unit) = unit_of(c.window().as_secs());
            DescriptorStatus {
                code: code as i32,
                current_limit: Some(RateLimit {
                    name: format!("w={}", c.window().as_secs()),
                    requests_per_unit: if per_unit == 0 {
                        0
                    } else {
                        u32::try_from(c.max_value()).unwrap_or(u32::MAX)
                    },
                    unit: unit as i32,
                }),
                limit_remaining: u32::try_from(c.remaining().unwrap_or(c.max_value()))
                    .unwrap_or(u32::MAX),
                duration_until_reset: c.expires_in().map(|d| {
                    envoy_types::pb::google::protobuf::Duration {
                        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
                    }
                }),
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
                .map(|(key, value)| HeaderValue {
                    key,
                    value,
                    ..Default::default()
                })
                .collect()
        } else {
            Vec::new()
        };
        println!(
            "call domain={} hits={} code={} remaining={}",
            req.domain,
            hits,
            if result.limited { "OVER_LIMIT" } else { "OK" },
            statuses
                .first()
                .map_or("-".to_string(), |s| s.limit_remaining.to_string())
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
    let limits: Vec<Limit> = serde_yaml::from_str(&std::fs::read_to_string(&limits_path)?)?;
    let limiter = RateLimiter::new(10_000);
    for l in limits {
        limiter.add_limit(l);
    }
    let engine = Arc::new(Engine {
        limiter,
        delay,
        error,
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
