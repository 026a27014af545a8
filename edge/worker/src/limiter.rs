//! Rate-limit state on Cloudflare: a Durable Object per bucket of the core's table.
//!
//! The core decides which bucket a (tier, client) pair lives in only inside
//! [`Policy::decide`]. The Worker therefore decides once against a [`Probe`] store that holds
//! nothing and records which bucket the core touched. No bucket touched means the decision
//! needs no state (redirect, bad host, unlimited or untiered path) and is final. Otherwise the
//! request goes to the Durable Object named after that bucket, which runs the same decision
//! over its own copy of the bucket (a Durable Object is single-threaded, so its
//! compare-and-swap never conflicts), persists the result and answers with the instant it used
//! and the bucket as it was before. The Worker then replays the decision over exactly that
//! state ([`Replay`]): the core is deterministic, so it gets the object's verdict together with
//! the response plan (which the core does not serialise).
//!
//! One object per bucket: requests of one (tier, client) always meet in one object, so limits
//! are exact across isolates and locations, and the number of objects is bounded by
//! `Policy::bucket_count()` however many addresses an attacker uses.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use portcullis_core::{BucketStore, Loaded, Outcome, Policy, StoreError, Swap, Version};
use serde::{Deserialize, Serialize};
use worker::{
    DurableObject, Env, Method, Request, RequestInit, Response, Result, State, console_error, durable_object,
};

use crate::incoming::{Incoming, Recorded};
use crate::settings::{self, RATE_LIMITER_BINDING};

/// What the Worker sends to a bucket's object.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ask {
    pub index: u32,
    pub request: Incoming,
}

/// What the object answers: enough to replay its decision exactly.
#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    /// The instant (Unix ns) the object decided at.
    pub now: u64,
    /// The bucket before this request; `None` when it was empty.
    pub before: Option<Vec<u8>>,
    /// Set when the object could not reach its state; the policy's `on_store_error` applies.
    pub failure: Option<String>,
    /// The object's own outcome (`Outcome::as_str`), to check the replay against.
    pub outcome: Option<String>,
}

/// A store with nothing in it that records the bucket the core asked for.
#[derive(Debug, Default)]
pub struct Probe {
    touched: Cell<Option<u32>>,
    written: RefCell<Option<Vec<u8>>>,
}

impl Probe {
    pub fn touched(&self) -> Option<u32> {
        self.touched.get()
    }

    /// What the core wrote into the empty bucket.
    pub fn written(&self) -> Option<Vec<u8>> {
        self.written.borrow().clone()
    }
}

impl BucketStore for Probe {
    fn load(&self, index: u32) -> std::result::Result<Loaded, StoreError> {
        self.touched.set(Some(index));
        Ok(Loaded { bytes: None, version: Version(0) })
    }

    fn compare_and_swap(&self, _index: u32, _expected: Version, bytes: &[u8]) -> std::result::Result<Swap, StoreError> {
        *self.written.borrow_mut() = Some(bytes.to_vec());
        Ok(Swap::Written)
    }
}

/// One bucket as the object saw it, for replaying the object's decision in the Worker.
#[derive(Debug)]
pub struct Replay {
    index: u32,
    before: Option<Vec<u8>>,
    failure: Option<String>,
}

impl Replay {
    pub fn from_answer(index: u32, answer: &Answer) -> Self {
        Self { index, before: answer.before.clone(), failure: answer.failure.clone() }
    }

    /// The object could not be asked: every load fails and `on_store_error` decides.
    pub fn failed(index: u32, why: String) -> Self {
        Self { index, before: None, failure: Some(why) }
    }
}

impl BucketStore for Replay {
    fn load(&self, index: u32) -> std::result::Result<Loaded, StoreError> {
        if let Some(why) = &self.failure {
            return Err(StoreError(why.clone()));
        }
        if index != self.index {
            return Err(StoreError(format!("bucket {index} asked for, bucket {} replayed", self.index)));
        }
        Ok(Loaded { bytes: self.before.clone(), version: Version(1) })
    }

    fn compare_and_swap(
        &self,
        _index: u32,
        _expected: Version,
        _bytes: &[u8],
    ) -> std::result::Result<Swap, StoreError> {
        Ok(Swap::Written)
    }
}

/// The Durable Object's name for bucket `index`.
pub fn object_name(index: u32) -> String {
    format!("bucket-{index}")
}

/// The object's verdict, ready to replay.
pub struct Asked {
    pub replay: Replay,
    /// The instant the object decided at (`None`: it was not reached).
    pub now: Option<u64>,
    pub outcome: Option<String>,
}

/// Asks bucket `index`'s object to decide `incoming`, sending only the headers the core read.
pub async fn ask(env: &Env, index: u32, incoming: &Incoming, recorded: &Recorded<'_>) -> Asked {
    match ask_object(env, index, incoming.with_only(&recorded.asked())).await {
        Ok(answer) => {
            Asked { replay: Replay::from_answer(index, &answer), now: Some(answer.now), outcome: answer.outcome }
        }
        Err(err) => {
            console_error!("portcullis: rate-limit object {index} unreachable: {err}");
            Asked { replay: Replay::failed(index, err.to_string()), now: None, outcome: None }
        }
    }
}

async fn ask_object(env: &Env, index: u32, request: Incoming) -> Result<Answer> {
    let namespace = env.durable_object(RATE_LIMITER_BINDING)?;
    let stub = namespace.id_from_name(&object_name(index))?.get_stub()?;
    let body = serde_json::to_string(&Ask { index, request })?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(worker::wasm_bindgen::JsValue::from_str(&body)));
    let request = Request::new_with_init("https://rate-limiter.internal/decide", &init)?;
    let mut response = stub.fetch_with_request(request).await?;
    if response.status_code() != 200 {
        let text = response.text().await.unwrap_or_default();
        return Err(worker::Error::RustError(format!("status {}: {text}", response.status_code())));
    }
    response.json::<Answer>().await
}

/// Checks that the Worker's replay reached the object's outcome (it always should: the core is
/// deterministic). A mismatch is logged, never hidden.
pub fn check_replay(index: u32, object: Option<&str>, replayed: Outcome) {
    if let Some(object) = object
        && object != replayed.as_str()
    {
        console_error!("portcullis: bucket {index}: object decided {object}, replay {}", replayed.as_str());
    }
}

/// Bucket index → (version, bytes; `None` while empty).
type Buckets = HashMap<u32, (u32, Option<Vec<u8>>)>;

/// One bucket of the core's table per object: its bytes in memory and in the object's storage.
#[durable_object(fetch)]
pub struct RateLimiter {
    state: State,
    env: Env,
    /// index → (version, bytes); loaded from storage on first use.
    buckets: RefCell<Buckets>,
}

impl DurableObject for RateLimiter {
    fn new(state: State, env: Env) -> Self {
        Self { state, env, buckets: RefCell::new(HashMap::new()) }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let ask: Ask = match req.json().await {
            Ok(ask) => ask,
            Err(err) => return Response::error(format!("bad request: {err}"), 400),
        };
        let answer = self.decide(ask).await;
        Response::from_json(&answer)
    }
}

fn storage_key(index: u32) -> String {
    format!("bucket:{index}")
}

impl RateLimiter {
    async fn decide(&self, ask: Ask) -> Answer {
        let now = crate::now_nanos();
        let failed = |why: String| Answer { now, before: None, failure: Some(why), outcome: None };
        let settings = settings::load(&self.env);
        let settings = match settings.as_ref() {
            Ok(settings) => settings,
            Err(err) => return failed(format!("configuration: {err}")),
        };
        if let Err(err) = self.prepare(ask.index).await {
            console_error!("portcullis: rate-limit object: loading bucket {}: {err}", ask.index);
            return failed(format!("loading bucket {}: {err}", ask.index));
        }
        let (answer, written) = decide_here(&settings.policy, &self.buckets, &ask, now);
        if let Some((index, bytes)) = written {
            // The verdict already counts in memory; the write makes it survive eviction. Output
            // gates hold the answer back until the write is durable.
            if let Err(err) = self.state.storage().put(&storage_key(index), bytes).await {
                console_error!("portcullis: rate-limit object: persisting bucket {index}: {err}");
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
        self.buckets.borrow_mut().entry(index).or_insert((u32::from(stored.is_some()), stored));
        Ok(())
    }
}

/// Runs the core over the object's in-memory buckets. Returns the answer and the bucket to
/// persist, if the decision wrote one.
fn decide_here(policy: &Policy, buckets: &RefCell<Buckets>, ask: &Ask, now: u64) -> (Answer, Option<(u32, Vec<u8>)>) {
    let store = ObjectStore { buckets, before: RefCell::new(None), written: RefCell::new(None) };
    let headers = ask.request.headers.as_slice();
    let decision = policy.decide(&ask.request.request(headers), now, &store);
    let before = store.before.into_inner().flatten();
    (
        Answer { now, before, failure: None, outcome: Some(decision.outcome().as_str().to_owned()) },
        store.written.into_inner(),
    )
}

/// The object's buckets as a [`BucketStore`]. Only buckets loaded from storage are served;
/// anything else is a store error, so the policy's `on_store_error` applies, never a guess.
struct ObjectStore<'a> {
    buckets: &'a RefCell<Buckets>,
    /// The first load: the state this request started from.
    before: RefCell<Option<Option<Vec<u8>>>>,
    written: RefCell<Option<(u32, Vec<u8>)>>,
}

impl BucketStore for ObjectStore<'_> {
    fn load(&self, index: u32) -> std::result::Result<Loaded, StoreError> {
        let buckets = self.buckets.borrow();
        let (version, bytes) =
            buckets.get(&index).ok_or_else(|| StoreError(format!("bucket {index} is not held by this object")))?;
        self.before.borrow_mut().get_or_insert_with(|| bytes.clone());
        Ok(Loaded { bytes: bytes.clone(), version: Version(*version) })
    }

    fn compare_and_swap(&self, index: u32, expected: Version, bytes: &[u8]) -> std::result::Result<Swap, StoreError> {
        let mut buckets = self.buckets.borrow_mut();
        let entry =
            buckets.get_mut(&index).ok_or_else(|| StoreError(format!("bucket {index} is not held by this object")))?;
        if entry.0 != expected.0 {
            return Ok(Swap::Conflict);
        }
        *entry = (entry.0.wrapping_add(1).max(1), Some(bytes.to_vec()));
        *self.written.borrow_mut() = Some((index, bytes.to_vec()));
        Ok(Swap::Written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::Decision;

    const NOW: u64 = 1_700_000_000_000_000_000;

    fn incoming(path: &str, ip: &str) -> Incoming {
        Incoming {
            method: "POST".into(),
            https: true,
            authority: Some("localhost".into()),
            target: path.into(),
            headers: vec![("cf-connecting-ip".into(), ip.into()), ("cookie".into(), "secret".into())],
        }
    }

    fn probe(policy: &Policy, request: &Incoming) -> (Decision, Option<u32>, Vec<String>) {
        let probe = Probe::default();
        let recorded = Recorded::new(&request.headers);
        let decision = policy.decide(&request.request(&recorded), NOW, &probe);
        (decision, probe.touched(), recorded.asked())
    }

    #[test]
    fn stateless_decisions_touch_no_bucket() {
        let policy = Policy::from_json(b"{}").unwrap();
        let mut health = incoming("/api/v1/health", "192.0.2.1");
        health.method = "GET".into();
        assert_eq!(probe(&policy, &health).1, None);
        let mut plain = incoming("/api/v1/auth/login", "192.0.2.1");
        plain.https = false;
        assert_eq!(probe(&policy, &plain).1, None, "redirected before limiting");
    }

    #[test]
    fn the_object_and_the_replay_agree_and_count_exactly() {
        let policy = Policy::from_json(b"{}").unwrap();
        let buckets = RefCell::new(HashMap::new());
        let request = incoming("/api/v1/auth/login", "192.0.2.7");
        let (_, index, asked) = probe(&policy, &request);
        let index = index.unwrap();
        assert_eq!(asked, ["cf-connecting-ip"], "cookies never travel to the object");
        buckets.borrow_mut().insert(index, (0, None));
        let ask = Ask { index, request: request.with_only(&asked) };
        let mut statuses = Vec::new();
        for _ in 0..7 {
            let (answer, _) = decide_here(&policy, &buckets, &ask, NOW);
            let replay = Replay::from_answer(index, &answer);
            let decision = policy.decide(&request.request(&request.headers), answer.now, &replay);
            assert_eq!(Some(decision.outcome().as_str()), answer.outcome.as_deref());
            statuses.push(match decision {
                Decision::Forward(_) => 200,
                Decision::Respond(reply) => reply.status,
            });
        }
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    }

    #[test]
    fn a_template_tier_and_an_ipv6_prefix_share_one_bucket() {
        let policy = Policy::from_json(b"{}").unwrap();
        let mut a = incoming("/api/v1/jobs/1", "2001:db8:1:2::1");
        let mut b = incoming("/API/v1//jobs/other-id/", "2001:db8:1:2:ffff::9");
        a.method = "GET".into();
        b.method = "HEAD".into();
        assert_eq!(probe(&policy, &a).1, probe(&policy, &b).1);
        let mut c = a.clone();
        c.headers[0].1 = "2001:db8:1:3::1".into();
        assert_ne!(probe(&policy, &a).1, probe(&policy, &c).1);
    }

    #[test]
    fn an_unreachable_object_follows_on_store_error() {
        let deny = Policy::from_json(br#"{"limiter":{"on_store_error":"deny"}}"#).unwrap();
        let request = incoming("/api/v1/auth/login", "192.0.2.8");
        let replay = Replay::failed(0, "down".into());
        let (_, index, _) = probe(&deny, &request);
        let replay = Replay { index: index.unwrap(), ..replay };
        let decision = deny.decide(&request.request(&request.headers), NOW, &replay);
        assert_eq!(decision.outcome(), Outcome::StoreErrorDenied);
    }
}
