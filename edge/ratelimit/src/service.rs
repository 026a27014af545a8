//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over the Redis GCRA step.
//!
//! A descriptor names its tier in a `tier` entry; every other entry is the client's identity,
//! kept in Redis only as a keyed hash. Its rate is the descriptor's `limit` override when it
//! has one, else the policy's tier of that name; a descriptor with neither is unlimited (`OK`,
//! as Envoy's own service treats descriptors it has no rule for). All descriptors of a request
//! are checked in one script: when any is over its limit, the answer is `OVER_LIMIT` and none
//! is spent.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use portcullis_core::rate::{MAX_LIMIT, Rate};
use portcullis_core::{Gcra, Policy, RateLimitHeaders, Verdict};
use tonic::{Request, Response, Status};

use crate::descriptor::{TIER_KEY, identity_id};
use crate::metrics::{CodeLabel, Metrics, TierLabel};
use crate::proto::{
    Code, DescriptorStatus, Duration as ProtoDuration, HeaderValue, RateLimit, RateLimitDescriptor, RateLimitRequest,
    RateLimitResponse, Unit,
};
use crate::rls::rate_limit_service_server::RateLimitService;
use crate::store::{LimitKey, RedisStore};

/// The rate-limit headers this service adds to responses: the IETF ones and `Retry-After`
/// (Envoy's ratelimit filter writes its own `X-RateLimit-*` when asked to).
const HEADERS_TO_ADD: [&str; 3] = ["ratelimit-policy", "ratelimit", "retry-after"];

/// The service: the policy's tiers and key, the Redis store once connected, the metrics.
#[derive(Clone)]
pub struct RateLimiter {
    policy: Arc<Policy>,
    store: Arc<OnceLock<RedisStore>>,
    metrics: Arc<Metrics>,
}

/// One descriptor, checked: its limit's name and rate, and its Redis key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub name: String,
    pub rate: Rate,
    pub key: LimitKey,
}

impl RateLimiter {
    pub fn new(policy: Policy, store: Arc<OnceLock<RedisStore>>, metrics: Arc<Metrics>) -> Self {
        Self { policy: Arc::new(policy), store, metrics }
    }

    /// Every descriptor's limit (`None`: unlimited), or what is malformed, by field.
    pub fn plan(&self, request: &RateLimitRequest) -> Result<Vec<Option<Planned>>, String> {
        if request.domain.is_empty() {
            return Err("domain: must not be empty".into());
        }
        if request.descriptors.is_empty() {
            return Err("descriptors: at least one is required".into());
        }
        let cost = request.hits_addend.max(1);
        if cost > MAX_LIMIT {
            return Err(format!("hits_addend: {cost} is above {MAX_LIMIT}"));
        }
        request
            .descriptors
            .iter()
            .enumerate()
            .map(|(i, descriptor)| {
                self.plan_one(&request.domain, descriptor, cost).map_err(|e| format!("descriptors[{i}].{e}"))
            })
            .collect()
    }

    fn plan_one(&self, domain: &str, descriptor: &RateLimitDescriptor, cost: u32) -> Result<Option<Planned>, String> {
        if descriptor.entries.is_empty() {
            return Err("entries: at least one is required".into());
        }
        for (j, entry) in descriptor.entries.iter().enumerate() {
            if entry.key.is_empty() {
                return Err(format!("entries[{j}].key: must not be empty"));
            }
            if entry.value.is_empty() {
                return Err(format!("entries[{j}].value: must not be empty"));
            }
        }
        let tier = descriptor.entries.iter().find(|e| e.key == TIER_KEY).map(|e| e.value.as_str());
        let name = tier.unwrap_or("descriptor");
        let (rate, key_name) = match &descriptor.limit {
            Some(limit) => {
                let seconds = Unit::try_from(limit.unit).ok().and_then(Unit::seconds).ok_or_else(|| {
                    format!("limit.unit: {} is not SECOND, MINUTE, HOUR, DAY, MONTH or YEAR", limit.unit)
                })?;
                let rate = Rate::new(limit.requests_per_unit, seconds).ok_or_else(|| {
                    format!("limit.requests_per_unit: {} is not between 1 and {MAX_LIMIT}", limit.requests_per_unit)
                })?;
                (rate, format!("{name}@{}/{seconds}", rate.limit()))
            }
            None => match tier.and_then(|t| self.policy.tier_limit(t)) {
                Some(gcra) => (gcra.rate(), name.to_owned()),
                None => return Ok(None),
            },
        };
        let id = identity_id(&self.policy, domain, &descriptor.entries);
        Ok(Some(Planned { name: name.to_owned(), rate, key: LimitKey::new(id, &key_name, Gcra::new(rate), cost) }))
    }

    /// Answers a planned request from Redis.
    async fn decide(&self, planned: &[Option<Planned>]) -> Result<RateLimitResponse, Status> {
        let keys: Vec<LimitKey> = planned.iter().flatten().map(|p| p.key.clone()).collect();
        let verdicts = if keys.is_empty() {
            Vec::new()
        } else {
            let store = self.store.get().ok_or_else(|| {
                self.metrics.redis_errors.inc();
                Status::unavailable("Redis is not connected yet")
            })?;
            match store.step(&keys).await {
                Ok((verdicts, latency)) => {
                    self.metrics.observe_redis(latency);
                    verdicts
                }
                Err(err) => {
                    self.metrics.redis_errors.inc();
                    tracing::warn!(error = %err, "Redis step failed");
                    return Err(Status::unavailable(err.to_string()));
                }
            }
        };
        Ok(self.respond(planned, &verdicts))
    }

    fn respond(&self, planned: &[Option<Planned>], verdicts: &[Verdict]) -> RateLimitResponse {
        let mut verdicts = verdicts.iter();
        let mut statuses = Vec::with_capacity(planned.len());
        // The limit the client hears about: the first refused, else the one with least left.
        let mut headline: Option<(&Planned, Verdict)> = None;
        for plan in planned {
            let (Some(plan), Some(verdict)) = (plan, plan.as_ref().and_then(|_| verdicts.next())) else {
                statuses.push(DescriptorStatus { code: Code::Ok as i32, ..DescriptorStatus::default() });
                continue;
            };
            let until = if verdict.allowed { verdict.reset_after } else { verdict.retry_after };
            statuses.push(DescriptorStatus {
                code: if verdict.allowed { Code::Ok } else { Code::OverLimit } as i32,
                current_limit: Some(RateLimit {
                    requests_per_unit: plan.rate.limit(),
                    unit: Unit::of_period(plan.rate.period_secs()) as i32,
                    name: plan.name.clone(),
                }),
                limit_remaining: verdict.remaining,
                duration_until_reset: Some(ProtoDuration::from_nanos(until)),
            });
            if !verdict.allowed {
                self.metrics.over_limit.get_or_create(&TierLabel { tier: plan.name.clone() }).inc();
            }
            let better = match &headline {
                None => true,
                Some((_, best)) => best.allowed && (!verdict.allowed || verdict.remaining < best.remaining),
            };
            if better {
                headline = Some((plan, *verdict));
            }
        }
        let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
        let response_headers_to_add = headline.map_or_else(Vec::new, |(plan, verdict)| {
            let headers =
                RateLimitHeaders::for_verdict(&plan.name, plan.rate.limit(), plan.rate.period_secs(), &verdict);
            headers
                .iter()
                .filter(|(name, _)| HEADERS_TO_ADD.contains(name))
                .map(|(key, value)| HeaderValue { key: key.to_owned(), value: value.to_owned() })
                .collect()
        });
        let code = if over { Code::OverLimit } else { Code::Ok };
        self.metrics.decisions.get_or_create(&CodeLabel { code: if over { "over_limit" } else { "ok" } }).inc();
        RateLimitResponse {
            overall_code: code as i32,
            statuses,
            response_headers_to_add,
            ..RateLimitResponse::default()
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        let planned = self.plan(&request).map_err(|problem| {
            self.metrics.invalid.inc();
            Status::invalid_argument(problem)
        })?;
        self.decide(&planned).await.map(Response::new)
    }
}

/// Connects to Redis until it answers, then keeps the health service in step with it: a
/// failed ping marks the service NOT_SERVING (the client reconnects on its own meanwhile).
pub async fn keep_store(
    settings: crate::settings::Settings,
    store: Arc<OnceLock<RedisStore>>,
    health: tonic_health::server::HealthReporter,
    metrics: Arc<Metrics>,
) {
    use crate::rls::rate_limit_service_server::RateLimitServiceServer;
    // Until connected every call is answered UNAVAILABLE (the caller's fallback decides).
    let connected = RedisStore::connect_until_up(&settings.redis, settings.redis_timeout).await;
    let _ = store.set(connected.clone());
    let mut serving = None;
    loop {
        let up = connected.ping().await.is_ok();
        metrics.redis_up.set(i64::from(up));
        if serving != Some(up) {
            if up {
                health.set_serving::<RateLimitServiceServer<RateLimiter>>().await;
                health.set_service_status("", tonic_health::ServingStatus::Serving).await;
            } else {
                tracing::warn!("Redis does not answer; health is NOT_SERVING");
                health.set_not_serving::<RateLimitServiceServer<RateLimiter>>().await;
                health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            }
            serving = Some(up);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
