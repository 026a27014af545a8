//! The GCRA step in Redis: one Lua script per request (one round trip), on Redis' clock.
//!
//! Keys are `portcullis:{<id>}:<tier>`, where `<id>` is a keyed hash of the client (the policy's
//! `limiter.hash_key`): Redis never holds an address. The braces are a Redis Cluster hash tag,
//! so every tier of one client lives in one slot and a request's keys run in one script there.
//! A key lives exactly as long as it carries debt (its TTL is the time until its full burst is
//! back), so Redis' memory follows the active clients, not every client ever seen.

use std::time::{Duration, Instant};

use portcullis_core::{Gcra, Verdict};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;

const SCRIPT: &str = include_str!("gcra.lua");
const NANOS_PER_MICRO: u64 = 1_000;

/// One limit to check: the Redis key and the rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKey {
    key: String,
    tag: u128,
    gcra: Gcra,
    cost: u32,
}

impl LimitKey {
    /// The key of tier `tier` for the client whose keyed id is `id`, at `cost` requests.
    pub fn new(id: u128, tier: &str, gcra: Gcra, cost: u32) -> Self {
        Self { key: format!("portcullis:{{{id:032x}}}:{tier}"), tag: id, gcra, cost: cost.max(1) }
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

/// What went wrong talking to Redis.
#[derive(Debug)]
pub enum StoreError {
    /// Not connected yet, or the connection is being re-established.
    Unavailable(String),
    /// Redis did not answer within the timeout.
    Timeout(Duration),
    Redis(redis::RedisError),
    /// The script answered something it never returns.
    Malformed(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "Redis is unavailable: {why}"),
            Self::Timeout(after) => write!(f, "Redis did not answer within {} ms", after.as_millis()),
            Self::Redis(err) => write!(f, "Redis: {err}"),
            Self::Malformed(why) => write!(f, "Redis script answer: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Where the store connects: one Redis, or the seed nodes of a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Single(String),
    Cluster(Vec<String>),
}

impl Target {
    /// One URL is one Redis; several (comma-separated or repeated) are a cluster's seeds;
    /// `cluster` makes even one URL a cluster seed.
    pub fn from_urls(urls: &[String], cluster: bool) -> Result<Self, String> {
        let urls: Vec<String> =
            urls.iter().flat_map(|u| u.split(',')).map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect();
        for url in &urls {
            if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
                return Err(format!("{url:?} is not a redis://, rediss:// or unix:// URL"));
            }
        }
        match urls.as_slice() {
            [] => Err("no Redis URL given".into()),
            [one] if !cluster => Ok(Self::Single(one.clone())),
            _ => Ok(Self::Cluster(urls)),
        }
    }
}

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The GCRA step over Redis, shared by the rate-limit service and the origin.
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    script: redis::Script,
    timeout: Duration,
}

impl RedisStore {
    /// Connects (the first connection must succeed; later ones are re-established by the
    /// client on its own, so a Redis restart needs nothing restarted here). `timeout` bounds
    /// every step: a frozen Redis costs a caller at most that long.
    pub async fn connect(target: &Target, timeout: Duration) -> Result<Self, StoreError> {
        let connect = async {
            match target {
                Target::Single(url) => {
                    let client = redis::Client::open(url.as_str()).map_err(StoreError::Redis)?;
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
                        .set_response_timeout(Some(timeout))
                        .set_max_delay(Duration::from_secs(1));
                    let manager =
                        ConnectionManager::new_with_config(client, config).await.map_err(StoreError::Redis)?;
                    Ok(Connection::Single(manager))
                }
                Target::Cluster(urls) => {
                    let client = ClusterClientBuilder::new(urls.iter().map(String::as_str))
                        .connection_timeout(timeout.max(Duration::from_millis(500)))
                        .response_timeout(timeout)
                        .build()
                        .map_err(StoreError::Redis)?;
                    Ok(Connection::Cluster(client.get_async_connection().await.map_err(StoreError::Redis)?))
                }
            }
        };
        let connection = tokio::time::timeout(timeout.max(Duration::from_secs(2)), connect)
            .await
            .map_err(|_| StoreError::Unavailable(format!("no connection to {target:?}")))??;
        Ok(Self { connection, script: redis::Script::new(SCRIPT), timeout })
    }

    /// Connects, retrying every half second until Redis answers (a store that starts before its
    /// Redis, or while it restarts, comes up by itself).
    pub async fn connect_until_up(target: &Target, timeout: Duration) -> Self {
        loop {
            match Self::connect(target, timeout).await {
                Ok(store) => {
                    tracing::info!(redis = ?target, "connected to Redis");
                    return store;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot connect to Redis yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Runs the GCRA step for `keys` in one script (per Redis Cluster slot: keys of one
    /// client always share one). All or nothing within a script: when any key is over its
    /// limit none is spent. Returns a verdict per key, in order, and Redis' latency.
    pub async fn step(&self, keys: &[LimitKey]) -> Result<(Vec<Verdict>, Duration), StoreError> {
        let started = Instant::now();
        let mut verdicts = Vec::with_capacity(keys.len());
        let mut start = 0;
        while start < keys.len() {
            let tag = keys[start].tag;
            let end = keys[start..].iter().position(|k| k.tag != tag).map_or(keys.len(), |n| start + n);
            let group = &keys[start..end];
            let answer = tokio::time::timeout(self.timeout, self.invoke(group))
                .await
                .map_err(|_| StoreError::Timeout(self.timeout))??;
            verdicts.extend(parse_answer(&answer, group.len())?);
            start = end;
        }
        Ok((verdicts, started.elapsed()))
    }

    async fn invoke(&self, keys: &[LimitKey]) -> Result<Vec<i64>, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        for key in keys {
            let emission = key.gcra.emission().div_ceil(NANOS_PER_MICRO);
            // The window in whole emission intervals, so µs rounding never lengthens a burst.
            let window = emission * u64::from(key.gcra.limit());
            invocation.key(&key.key).arg(emission).arg(window).arg(key.cost);
        }
        match &self.connection {
            Connection::Single(manager) => run(&invocation, &mut manager.clone()).await,
            Connection::Cluster(cluster) => run(&invocation, &mut cluster.clone()).await,
        }
    }

    /// Whether Redis answers (for the health service).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let ping = async {
            match &self.connection {
                Connection::Single(manager) => {
                    redis::cmd("PING").query_async::<String>(&mut manager.clone()).await.map(drop)
                }
                Connection::Cluster(cluster) => {
                    redis::cmd("PING").query_async::<String>(&mut cluster.clone()).await.map(drop)
                }
            }
        };
        tokio::time::timeout(self.timeout, ping)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(StoreError::Redis)
    }
}

async fn run<C: ConnectionLike + Send>(
    invocation: &redis::ScriptInvocation<'_>,
    connection: &mut C,
) -> Result<Vec<i64>, StoreError> {
    // EVALSHA, and EVAL once when Redis does not know the script yet (after a restart too).
    invocation.invoke_async(connection).await.map_err(StoreError::Redis)
}

fn parse_answer(answer: &[i64], keys: usize) -> Result<Vec<Verdict>, StoreError> {
    if answer.len() != 1 + 4 * keys {
        return Err(StoreError::Malformed(format!("{} numbers for {keys} keys", answer.len())));
    }
    let nanos = |micros: i64| u64::try_from(micros).unwrap_or(0).saturating_mul(NANOS_PER_MICRO);
    Ok(answer[1..]
        .chunks_exact(4)
        .map(|four| Verdict {
            allowed: four[0] == 1,
            remaining: u32::try_from(four[1]).unwrap_or(0),
            reset_after: nanos(four[2]),
            retry_after: nanos(four[3]),
        })
        .collect())
}
