//! Rate-limit state on Cloudflare: a Durable Object per bucket of the core's table.
//!
//! The Worker decides in two phases. [`Policy::begin`](portcullis_core::Policy::begin) names
//! the bucket, the key's fingerprint in it and the tier's rate; the Worker sends those numbers
//! (nothing of the request) to the object named after the bucket, which runs the core's GCRA
//! step over its copy of the bucket, persists it and answers with the verdict; the Worker
//! finishes the decision with it. A Durable Object is single-threaded, so its step never races.
//!
//! One object per bucket: requests of one (tier, client) always meet in one object, so limits
//! are exact across isolates and locations, and the number of objects is bounded by
//! `Policy::bucket_count()` however many addresses an attacker uses.

use std::cell::RefCell;
use std::collections::HashMap;

use portcullis_core::limiter::table::Bucket;
use portcullis_core::rate::Rate;
use portcullis_core::{Acquire, Gcra, LimitCheck, StoreError, Verdict};
use serde::{Deserialize, Serialize};
use worker::{
    DurableObject, Env, Method, Request, RequestInit, Response, Result, State, console_error, durable_object,
};

use crate::settings::RATE_LIMITER_BINDING;

/// What the Worker sends to a bucket's object: one request of one key at one rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    pub index: u32,
    pub fingerprint: u64,
    pub limit: u32,
    pub period_secs: u32,
}

impl Ask {
    pub fn for_check(check: &LimitCheck) -> Self {
        let gcra = check.gcra();
        Self {
            index: check.slot().index,
            fingerprint: check.slot().fingerprint,
            limit: gcra.limit(),
            period_secs: gcra.period_secs(),
        }
    }
}

/// What the object answers: its verdict, or why it has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Verdict {
        allowed: bool,
        remaining: u32,
        reset_after_ns: u64,
        retry_after_ns: u64,
    },
    /// The object could not reach its state; the policy's `on_store_error` applies.
    Failed(String),
}

impl Answer {
    fn from_verdict(verdict: Verdict) -> Self {
        Self::Verdict {
            allowed: verdict.allowed,
            remaining: verdict.remaining,
            reset_after_ns: verdict.reset_after,
            retry_after_ns: verdict.retry_after,
        }
    }

    /// The core's view of this answer.
    pub fn acquire(self) -> Acquire {
        match self {
            Self::Verdict { allowed, remaining, reset_after_ns, retry_after_ns } => Acquire::from_verdict(Verdict {
                allowed,
                remaining,
                reset_after: reset_after_ns,
                retry_after: retry_after_ns,
            }),
            Self::Failed(why) => Acquire::StoreFailed(StoreError(why)),
        }
    }
}

/// The Durable Object's name for bucket `index`.
pub fn object_name(index: u32) -> String {
    format!("bucket-{index}")
}

/// Runs `check` in its bucket's object. An object that cannot be reached is a store failure:
/// the policy's `on_store_error` decides, never a guess.
pub async fn ask(env: &Env, check: &LimitCheck) -> Acquire {
    let ask = Ask::for_check(check);
    match ask_object(env, ask).await {
        Ok(answer) => answer.acquire(),
        Err(err) => {
            console_error!("portcullis: rate-limit object {}: {err}", ask.index);
            Acquire::StoreFailed(StoreError(format!("object {}: {err}", ask.index)))
        }
    }
}

async fn ask_object(env: &Env, ask: Ask) -> Result<Answer> {
    let namespace = env.durable_object(RATE_LIMITER_BINDING)?;
    let stub = namespace.id_from_name(&object_name(ask.index))?.get_stub()?;
    let body = serde_json::to_string(&ask)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(worker::wasm_bindgen::JsValue::from_str(&body)));
    let request = Request::new_with_init("https://rate-limiter.internal/step", &init)?;
    let mut response = stub.fetch_with_request(request).await?;
    if response.status_code() != 200 {
        let text = response.text().await.unwrap_or_default();
        return Err(worker::Error::RustError(format!("status {}: {text}", response.status_code())));
    }
    // Parsed here, not by the runtime's JSON (which reads numbers as doubles and would round a
    // 64-bit fingerprint).
    Ok(serde_json::from_str(&response.text().await?)?)
}

/// One bucket of the core's table per object: its bytes in memory and in the object's storage.
#[durable_object(fetch)]
pub struct RateLimiter {
    state: State,
    /// index → the bucket's bytes (`None` while empty); loaded from storage on first use.
    buckets: RefCell<HashMap<u32, Option<Vec<u8>>>>,
}

impl DurableObject for RateLimiter {
    fn new(state: State, _env: Env) -> Self {
        Self { state, buckets: RefCell::new(HashMap::new()) }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let ask = req.text().await.and_then(|text| Ok(serde_json::from_str::<Ask>(&text)?));
        let ask = match ask {
            Ok(ask) => ask,
            Err(err) => return Response::error(format!("bad request: {err}"), 400),
        };
        Response::ok(serde_json::to_string(&self.step(ask).await)?)
    }
}

fn storage_key(index: u32) -> String {
    format!("bucket:{index}")
}

impl RateLimiter {
    async fn step(&self, ask: Ask) -> Answer {
        if let Err(err) = self.prepare(ask.index).await {
            console_error!("portcullis: rate-limit object: loading bucket {}: {err}", ask.index);
            return Answer::Failed(format!("loading bucket {}: {err}", ask.index));
        }
        let (answer, written) = step_here(&self.buckets, ask, crate::now_nanos());
        if let Some(bytes) = written {
            // The verdict already counts in memory; the write makes it survive eviction. Output
            // gates hold the answer back until the write is durable.
            if let Err(err) = self.state.storage().put(&storage_key(ask.index), bytes).await {
                console_error!("portcullis: rate-limit object: persisting bucket {}: {err}", ask.index);
            }
        }
        answer
    }

    /// Loads bucket `index` from storage into memory the first time this object sees it.
    async fn prepare(&self, index: u32) -> Result<()> {
        if self.buckets.borrow().contains_key(&index) {
            return Ok(());
        }
        let stored: Option<Vec<u8>> = self.state.storage().get(&storage_key(index)).await?;
        // Input gates keep other events out while storage is read; `or_insert` keeps this
        // correct even if one got in.
        self.buckets.borrow_mut().entry(index).or_insert(stored);
        Ok(())
    }
}

/// The core's GCRA step over the object's in-memory copy of bucket `ask.index`. Returns the
/// answer and the bytes to persist when the step changed the bucket.
pub(crate) fn step_here(
    buckets: &RefCell<HashMap<u32, Option<Vec<u8>>>>,
    ask: Ask,
    now: u64,
) -> (Answer, Option<Vec<u8>>) {
    let Some(rate) = Rate::new(ask.limit, ask.period_secs) else {
        return (Answer::Failed(format!("{}/{} s is not a rate", ask.limit, ask.period_secs)), None);
    };
    if ask.fingerprint == 0 {
        return (Answer::Failed("fingerprint 0 marks an empty way".into()), None);
    }
    let mut buckets = buckets.borrow_mut();
    let Some(stored) = buckets.get_mut(&ask.index) else {
        return (Answer::Failed(format!("bucket {} is not held by this object", ask.index)), None);
    };
    let mut bucket = Bucket::decode(stored.as_deref());
    let admission = bucket.admit(ask.fingerprint, &Gcra::new(rate), now);
    let written = admission.changed.then(|| bucket.encode().to_vec());
    if let Some(bytes) = &written {
        *stored = Some(bytes.clone());
    }
    (Answer::from_verdict(admission.verdict), written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incoming::Incoming;
    use portcullis_core::{Begin, Decision, Outcome, Policy};

    const NOW: u64 = 1_700_000_000_000_000_000;

    fn incoming(method: &str, path: &str, ip: &str) -> Incoming {
        Incoming {
            method: method.into(),
            https: true,
            authority: Some("localhost".into()),
            target: path.into(),
            headers: vec![("cf-connecting-ip".into(), ip.into()), ("cookie".into(), "secret".into())],
        }
    }

    fn check(policy: &Policy, request: &Incoming) -> Option<LimitCheck> {
        match policy.begin(&request.request()) {
            Begin::Check(check) => Some(check),
            Begin::Decided(_) => None,
        }
    }

    #[test]
    fn stateless_decisions_ask_no_object() {
        let policy = Policy::from_json(b"{}").unwrap();
        assert_eq!(check(&policy, &incoming("GET", "/api/v1/health", "192.0.2.1")), None);
        let mut plain = incoming("POST", "/api/v1/auth/login", "192.0.2.1");
        plain.https = false;
        assert_eq!(check(&policy, &plain), None, "redirected before limiting");
    }

    #[test]
    fn the_object_counts_exactly_and_the_worker_finishes_with_its_verdict() {
        let policy = Policy::from_json(b"{}").unwrap();
        let request = incoming("POST", "/api/v1/auth/login", "192.0.2.7");
        let check = check(&policy, &request).unwrap();
        let ask = Ask::for_check(&check);
        assert_eq!((ask.limit, ask.period_secs), (5, 60));
        let wire = serde_json::to_string(&ask).unwrap();
        assert!(!wire.contains("secret") && !wire.contains("192.0.2.7"), "only numbers travel: {wire}");

        let buckets = RefCell::new(HashMap::from([(ask.index, None)]));
        let mut statuses = Vec::new();
        for _ in 0..7 {
            let (answer, _) = step_here(&buckets, ask, NOW);
            let answer: Answer = serde_json::from_str(&serde_json::to_string(&answer).unwrap()).unwrap();
            statuses.push(match policy.finish(&check, answer.acquire()) {
                Decision::Forward(_) => 200,
                Decision::Respond(reply) => reply.status,
            });
        }
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    }

    #[test]
    fn a_template_tier_and_an_ipv6_prefix_share_one_bucket() {
        let policy = Policy::from_json(b"{}").unwrap();
        let slot = |method: &str, path: &str, ip: &str| check(&policy, &incoming(method, path, ip)).unwrap().slot();
        assert_eq!(
            slot("GET", "/api/v1/jobs/1", "2001:db8:1:2::1"),
            slot("HEAD", "/API/v1//jobs/x/", "2001:db8:1:2:ffff::9")
        );
        assert_ne!(slot("GET", "/api/v1/jobs/1", "2001:db8:1:2::1"), slot("GET", "/api/v1/jobs/1", "2001:db8:1:3::1"));
    }

    #[test]
    fn an_unreachable_or_broken_object_follows_on_store_error() {
        let deny = Policy::from_json(br#"{"limiter":{"on_store_error":"deny"}}"#).unwrap();
        let check = check(&deny, &incoming("POST", "/api/v1/auth/login", "192.0.2.8")).unwrap();
        let decision = deny.finish(&check, Answer::Failed("down".into()).acquire());
        assert_eq!(decision.outcome(), Outcome::StoreErrorDenied);
        let empty = RefCell::new(HashMap::new());
        let (answer, written) = step_here(&empty, Ask::for_check(&check), NOW);
        assert!(matches!(answer, Answer::Failed(_)) && written.is_none(), "a bucket never loaded is no guess");
        let bad_rate = Ask { limit: 0, ..Ask::for_check(&check) };
        assert!(matches!(
            step_here(&RefCell::new(HashMap::from([(bad_rate.index, None)])), bad_rate, NOW).0,
            Answer::Failed(_)
        ));
    }
}
